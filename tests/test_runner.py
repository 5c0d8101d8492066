"""The supervisor around kopf: a failed kopf is restarted, a normal stop ends the process."""

from __future__ import annotations

from typing import Any

import pytest

from k2think_operator import runner
from k2think_operator.config import OperatorConfig


async def test_failed_kopf_is_restarted_and_a_normal_stop_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []

    async def fake_operator(**kwargs: Any) -> None:
        calls.append(kwargs)
        if len(calls) < 3:
            raise RuntimeError("Watcher for rayservices.v1.ray.io has failed: 404")

    monkeypatch.setattr(runner.kopf, "operator", fake_operator)
    monkeypatch.setattr(runner, "RESTART_BACKOFF_SECONDS", (0.01,))
    code = await runner.supervise(OperatorConfig(all_namespaces=True))
    assert code == 0
    assert len(calls) == 3
    assert all(c["clusterwide"] and c["standalone"] for c in calls)


async def test_namespaces_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_operator(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(runner.kopf, "operator", fake_operator)
    await runner.supervise(OperatorConfig(namespaces=("a", "b")))
    assert seen["namespaces"] == ["a", "b"] and seen["clusterwide"] is False
    assert seen["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
