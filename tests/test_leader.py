"""Leader election (``k2think_operator.runtime.leader``) without a cluster: the decisions of the
algorithm, and that an API server that does not answer is a failed attempt (not an exception that
would escape the renew loop while kopf keeps running). Takeover on a real API server is proven in
``e2e/install/test_ha.py``.
"""

from __future__ import annotations

import socket

import pytest

from k2think_operator.app.config import OperatorConfig
from k2think_operator.cli import build_parser
from k2think_operator.runtime.credentials import Credentials
from k2think_operator.runtime.kube import RestClient
from k2think_operator.runtime.leader import (
    LeaseElector,
    build_lease_spec,
    held_by_another,
    micro_time,
)


def test_a_lease_is_anothers_until_its_duration_passed_since_it_was_seen_changing() -> None:
    spec = {"holderIdentity": "b", "leaseDurationSeconds": 15}
    assert held_by_another(spec, "a", observed_at=100.0, now=114.0)
    assert not held_by_another(spec, "a", observed_at=100.0, now=115.5)
    # Our own lease, or one released (no holder), is free to take.
    assert not held_by_another(spec, "b", observed_at=100.0, now=101.0)
    assert not held_by_another({"leaseDurationSeconds": 1}, "a", observed_at=100.0, now=100.1)


def test_renewing_keeps_the_acquire_time_and_taking_over_counts_a_transition() -> None:
    first = build_lease_spec({}, "a", 15, 1_000.0)
    assert first["holderIdentity"] == "a" and first["leaseTransitions"] == 0
    assert first["acquireTime"] == first["renewTime"] == micro_time(1_000.0)
    renewed = build_lease_spec(first, "a", 15, 1_002.0)
    assert renewed["acquireTime"] == micro_time(1_000.0)
    assert renewed["renewTime"] == micro_time(1_002.0) == "1970-01-01T00:16:42.000000Z"
    assert renewed["leaseTransitions"] == 0
    taken = build_lease_spec(renewed, "b", 15, 1_030.0)
    assert taken["acquireTime"] == micro_time(1_030.0) and taken["leaseTransitions"] == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_api_server_is_a_failed_attempt_not_an_exception() -> None:
    api = RestClient(Credentials(server=f"https://127.0.0.1:{_closed_port()}"))
    try:
        elector = LeaseElector(
            api,
            "k2think-operator",
            "ops",
            "replica-a",
            lease_duration=15,
            renew_deadline=10,
            retry_period=2,
        )
        assert await elector.try_acquire_or_renew() is False
        # The renew loop gives up after its deadline instead of raising (a lost lease).
        elector.renew_deadline, elector.retry_period = 0.3, 0.1
        await elector.renew_until_lost()
        await elector.release()  # logs, does not raise
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
