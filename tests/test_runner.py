"""The supervisor around kopf: a failed kopf is restarted, a normal stop ends the process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any, cast

import kopf
import pytest

from k2think_operator.app.config import OperatorConfig
from k2think_operator.app.main import supervisor_settings
from k2think_operator.runtime import supervisor as runner


def settings(**config: Any) -> runner.SupervisorSettings:
    """The supervisor's settings as ``run`` builds them from the command line."""
    return supervisor_settings(OperatorConfig(**config))


async def test_failed_kopf_is_restarted_and_a_normal_stop_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []

    async def fake_operator(**kwargs: Any) -> None:
        calls.append(kwargs)
        if len(calls) < 3:
            raise RuntimeError("Watcher for rayservices.v1.ray.io has failed: 404")

    monkeypatch.setattr(kopf, "operator", fake_operator)
    monkeypatch.setattr(runner, "RESTART_BACKOFF_SECONDS", (0.01,))
    code = await runner.supervise(settings(all_namespaces=True))
    assert code == 0
    assert len(calls) == 3
    assert all(c["clusterwide"] and c["standalone"] for c in calls)


async def test_namespaces_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_operator(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(kopf, "operator", fake_operator)
    await runner.supervise(settings(namespaces=("a", "b")))
    assert seen["namespaces"] == ["a", "b"] and seen["clusterwide"] is False
    assert seen["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


@contextlib.contextmanager
def kopf_records() -> Iterator[list[logging.LogRecord]]:
    """Collect what kopf logs inside the block, as the supervisor's handler would see it."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logging.getLogger("kopf").addHandler(keep)
    try:
        yield records
    finally:
        logging.getLogger("kopf").removeHandler(keep)


async def _a_watcher_dies_in_kopf(resource: str) -> None:
    """Make kopf's own task guard log a dead watcher, exactly as its orchestrator does."""
    from kopf._cogs.aiokits import aiotasks
    from kopf._core.reactor import orchestration

    async def failing_watch() -> None:
        raise RuntimeError("('rayservices.ray.io not found', {'code': 404})")

    task = aiotasks.create_guarded_task(
        name=f"watcher for {resource}@None",
        coro=failing_watch(),
        cancellable=True,
        logger=orchestration.logger,
    )
    with pytest.raises(RuntimeError):
        await task


async def test_kopfs_dead_watcher_log_line_is_recognised() -> None:
    with kopf_records() as records:
        await _a_watcher_dies_in_kopf("rayservices.v1.ray.io")
    assert [runner.is_dead_watcher_record(r) for r in records] == [True]


@pytest.mark.parametrize(
    ("name", "level", "message", "dead"),
    [
        (
            "kopf._core.reactor.orchestration",
            logging.WARNING,
            "Watcher for pods.v1@None has finished unexpectedly.",
            True,
        ),
        (
            "kopf._core.reactor.orchestration",
            logging.DEBUG,
            "Watcher for pods.v1@None is cancelled.",
            False,
        ),
        ("kopf.objects", logging.ERROR, "Handler 'reconcile-create' failed temporarily: x", False),
        (
            "k2think_operator.deployment.controller",
            logging.ERROR,
            "Watcher for x has failed: y",
            False,
        ),
    ],
)
def test_only_kopfs_dead_watcher_lines_count(
    name: str, level: int, message: str, dead: bool
) -> None:
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    assert runner.is_dead_watcher_record(record) is dead


async def test_a_dead_watcher_stops_and_restarts_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf only logs a dead watcher and keeps running (nolar/kopf#1077); we must restart it."""
    runs: list[str] = []

    async def fake_operator(*, stop_flag: asyncio.Event, **_: Any) -> None:
        runs.append("started")
        if len(runs) == 1:
            await _a_watcher_dies_in_kopf("rayservices.v1.ray.io")
            await asyncio.wait_for(stop_flag.wait(), timeout=5)  # the supervisor asks it to stop
            runs.append("stopped by supervisor")
        # the second run returns normally, as kopf does on SIGTERM

    monkeypatch.setattr(kopf, "operator", fake_operator)
    monkeypatch.setattr(runner, "RESTART_BACKOFF_SECONDS", (0.01,))
    before = _restarts("dead-watcher")
    code = await runner.supervise(settings(all_namespaces=True))
    assert code == 0
    assert runs == ["started", "stopped by supervisor", "started"]
    assert _restarts("dead-watcher") == before + 1
    assert not any(isinstance(h, runner.KopfAlarm) for h in logging.getLogger("kopf").handlers)


def _restarts(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("k2think_kopf_restarts_total", {"reason": reason}) or 0.0


def _kopf_reports_unresolved(*selectors: tuple[str, str, str]) -> None:
    """Make kopf's own discovery code log its "Unresolved resources" line for ``selectors``."""
    from kopf._cogs.structs import references
    from kopf._core.reactor import observation

    observation._disable_mismatched_selectors(
        resources=set(),
        selectors=frozenset(references.Selector(g, v, p) for g, v, p in selectors),
    )


def test_kopfs_unresolved_line_names_our_apis() -> None:
    with kopf_records() as records:
        _kopf_reports_unresolved(("ray.io", "v1", "rayservices"), ("", "v1", "pods"))
    assert [runner.unresolved_apis(r, settings().watched) for r in records] == [
        (("ray.io", "v1", "rayservices"),)
    ]
    assert not runner.is_dead_watcher_record(records[0])


class DiscoveryThatComesBack:
    """Our Kube facade's discovery answer: RayServices absent twice, then served."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []
        self.closed = False

    async def api_served(self, group: str, version: str, plural: str) -> bool:
        self.asked.append((group, version, plural))
        return len(self.asked) > 2

    async def close(self) -> None:
        self.closed = True


async def test_an_api_kopf_gave_up_on_restarts_kopf_once_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's last discovery scan missed rayservices and it never rescans by itself."""
    discovery = DiscoveryThatComesBack()
    runs: list[str] = []

    async def connect() -> DiscoveryThatComesBack:
        return discovery

    async def fake_operator(*, stop_flag: asyncio.Event, **_: Any) -> None:
        runs.append("started")
        if len(runs) == 1:
            _kopf_reports_unresolved(("ray.io", "v1", "rayservices"))
            await asyncio.wait_for(stop_flag.wait(), timeout=5)
            runs.append("stopped by supervisor")

    monkeypatch.setattr(kopf, "operator", fake_operator)
    monkeypatch.setattr(runner, "RESTART_BACKOFF_SECONDS", (0.01,))
    monkeypatch.setattr(runner, "DISCOVERY_POLL_SECONDS", 0.01)
    before = _restarts("rescan")
    watching = dataclasses.replace(settings(all_namespaces=True), connect=cast(Any, connect))
    assert await runner.supervise(watching) == 0
    assert runs == ["started", "stopped by supervisor", "started"]
    assert discovery.asked == [("ray.io", "v1", "rayservices")] * 3 and discovery.closed
    assert _restarts("rescan") == before + 1


def test_kopf_identity_needs_no_user_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's uid 65532 has no passwd entry: kopf's own identity (getpass.getuser) raises
    there, so the supervisor names the process itself (the pod name and the pid)."""
    import getpass
    import os
    import pwd

    def no_entry(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME", "POD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(KeyError):
        getpass.getuser()  # what kopf would call
    monkeypatch.setenv("POD_NAME", "k2think-operator-abc-x1")
    assert runner.kopf_identity() == f"k2think-operator-abc-x1/{os.getpid()}"
    monkeypatch.setenv("POD_ID", "from-kopf-env")
    assert runner.kopf_identity().startswith("from-kopf-env/")
