"""The test ground's one way to wait (``e2e/harness/polling.py``) tells "not yet" from "wrong":
a probe whose assertion fails fails the wait at once, as does ``Aborted``; errors it was told to
retry are "not yet" and reported when time runs out."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "e2e"))

from harness.polling import Aborted, NotYet, WaitTimeoutError, holds_for, wait_for


def test_a_failed_assertion_in_the_probe_fails_at_once() -> None:
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        raise AssertionError("the replica count is 3, expected 2")

    with pytest.raises(AssertionError, match="expected 2") as failed:
        wait_for("replicas", probe, timeout=5)
    assert calls == 1 and not isinstance(failed.value, WaitTimeoutError)


def test_not_yet_is_retried_and_reported_on_timeout() -> None:
    def probe() -> bool:
        raise NotYet("pod is Pending")

    with pytest.raises(WaitTimeoutError, match="last error: pod is Pending"):
        wait_for("the pod", probe, timeout=0.3, interval=0.05)


def test_aborted_stops_the_wait_with_its_cause() -> None:
    def probe() -> bool:
        raise Aborted("head pod crash-looping: ray: command not found")

    with pytest.raises(Aborted, match="crash-looping"):
        wait_for("RUNNING", probe, timeout=5, retry_on=(Exception,))


def test_an_assertion_is_retried_only_when_asked() -> None:
    attempts = 0

    def probe() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise AssertionError("not yet")
        return True

    assert wait_for("x", probe, timeout=2, interval=0.01, retry_on=(AssertionError,))


def test_holds_for_fails_when_the_condition_breaks() -> None:
    values = iter([True, True, False])
    with pytest.raises(AssertionError, match="stopped holding"):
        holds_for("quiet", lambda: next(values), seconds=5, interval=0.01)
