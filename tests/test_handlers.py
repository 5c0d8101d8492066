"""The kopf handler's translation of a reconcile's outcome into kopf's retry semantics.

kopf persists a retry's delay on the object, and that delay survives a restart of kopf; so what
the handler raises decides how long a deployment waits after any failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from k2think_operator import handlers
from k2think_operator.config import OperatorConfig, current_config, set_config
from k2think_operator.reconcile import Outcome

BODY = kopf.Body({"metadata": {"name": "k2think", "namespace": "ns"}, "spec": {}})


class FakeReconciler:
    def __init__(self, result: Outcome | BaseException) -> None:
        self.result = result

    async def reconcile(self, body: Any, pods: Any) -> Outcome:
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture(autouse=True)
def retry_seconds() -> Iterator[int]:
    before = current_config()
    set_config(OperatorConfig(retry_seconds=7))
    yield 7
    set_config(before)


def memo_with(result: Outcome | BaseException) -> kopf.Memo:
    memo = kopf.Memo()
    memo.reconciler = FakeReconciler(result)
    return memo


async def test_an_unexpected_error_is_retried_on_our_cadence_not_kopfs_minute() -> None:
    memo = memo_with(RuntimeError("Session is closed"))
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers._reconcile(memo, BODY, {})  # type: ignore[arg-type]
    assert raised.value.delay == 7
    assert "Session is closed" in str(raised.value)


async def test_a_retry_reason_is_a_temporary_error_with_the_configured_delay() -> None:
    memo = memo_with(Outcome(status={}, retry_reason="the RayService API is not available"))
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers._reconcile(memo, BODY, {})  # type: ignore[arg-type]
    assert raised.value.delay == 7


async def test_an_invalid_spec_is_permanent_until_the_spec_changes() -> None:
    memo = memo_with(Outcome(status={}, invalid=True))
    with pytest.raises(kopf.PermanentError):
        await handlers._reconcile(memo, BODY, {})  # type: ignore[arg-type]


async def test_a_clean_outcome_returns() -> None:
    await handlers._reconcile(memo_with(Outcome(status={})), BODY, {})  # type: ignore[arg-type]
