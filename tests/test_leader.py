"""Leader election glue (``k2think_operator.leader``) without a cluster.

The election algorithm is kubernetes_asyncio's; what is ours is that an API server that does not
answer is a failed attempt (not an exception that would escape the renew loop while kopf keeps
running) and the command line that turns it on. Takeover on a real API server is proven in
``e2e/install/test_ha.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.leaderelectionrecord import LeaderElectionRecord

from k2think_operator.cli import build_parser
from k2think_operator.config import OperatorConfig
from k2think_operator.leader import _Lock


class Unreachable:
    """A CoordinationV1Api whose every call fails like a refused TCP connection."""

    calls = 0

    async def read_namespaced_lease(self, *_: Any, **__: Any) -> Any:
        Unreachable.calls += 1
        raise ConnectionRefusedError("connect to 127.0.0.1:6443 refused")

    async def replace_namespaced_lease(self, *_: Any, **__: Any) -> Any:
        raise ConnectionRefusedError("connect to 127.0.0.1:6443 refused")


async def _noop() -> None:
    return None


async def test_an_unreachable_api_server_is_a_failed_attempt_not_an_exception() -> None:
    api = client.ApiClient(client.Configuration())
    try:
        lock = _Lock("k2think-operator", "ops", "replica-a", api)
        lock.api_instance = Unreachable()  # type: ignore[assignment]
        found, error = await lock.get("k2think-operator", "ops")
        assert found is False
        assert json.loads(error.body)["code"] == 503
        election = LeaderElection(
            Config(
                lock,
                lease_duration=15,
                renew_deadline=10,
                retry_period=2,
                onstarted_leading=_noop,
                onstopped_leading=_noop,
            )
        )
        # Upstream would raise out of its renew loop here; with our lock it is a failed renewal.
        assert await election.try_acquire_or_renew() is False
        # A renewal whose write cannot reach the API server fails the same way.
        lock.lease_reference = client.V1Lease(
            metadata=client.V1ObjectMeta(name="k2think-operator"), spec=client.V1LeaseSpec()
        )
        now = "2026-12-01 20:00:00.000000"
        record = LeaderElectionRecord("replica-a", "15", now, now)
        assert await lock.update("k2think-operator", "ops", record) is False
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "-A"], (False, "k2think-operator", "")),
        (
            [
                "run",
                "-A",
                "--leader-elect",
                "--leader-elect-lease=op",
                "--leader-elect-namespace=ops",
            ],
            (True, "op", "ops"),
        ),
    ],
)
def test_leader_election_flags(argv: list[str], expected: tuple[bool, str, str]) -> None:
    args = build_parser().parse_args(argv)
    assert (
        args.leader_elect,
        args.leader_elect_lease,
        args.leader_elect_namespace or "",
    ) == expected


def test_lease_timings_are_whole_seconds_in_the_right_order() -> None:
    config = OperatorConfig()
    # The elector stores str(duration) in the Lease and parses it back with int().
    assert isinstance(config.lease_duration_seconds, int)
    assert config.lease_duration_seconds > config.lease_renew_deadline_seconds
    assert config.lease_renew_deadline_seconds > 1.2 * config.lease_retry_seconds
