"""Bounded polling: the one way the test ground and the suites wait (never a bare sleep).

Standard library only, so every suite (the control-plane e2e, the install suite, the data plane
in its own venv) and the harness share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class WaitTimeoutError(TimeoutError, AssertionError):
    """A bounded wait ran out; the message names what was awaited and the last thing seen.

    An ``AssertionError`` too, so a test that times out reads as a failed check.
    """


class NotYet(Exception):
    """A probe's way to say "not yet, because ..." (the reason is reported on timeout)."""


class Aborted(Exception):
    """A probe's way to say "this will never happen": the wait fails at once with the cause
    (a pod it waits on crash-looping, a process that exited)."""


def _not_none_or_false(result: Any) -> bool:
    return result is not None and result is not False


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    max_interval: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    done: Callable[[Any], bool] = _not_none_or_false,
) -> T:
    """Call ``probe`` until ``done(result)`` (default: not None/False); bounded by ``timeout``.

    Exceptions of the ``retry_on`` types count as "not yet" (the last one is reported on
    timeout); others propagate at once. A failed assertion inside the probe is a failure, never
    "not yet" (unless ``retry_on`` names ``AssertionError`` itself): a probe that checks
    something wrong must not read as one that waits. ``Aborted`` always propagates. The interval
    grows by half each round up to ``max_interval``.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last: Any = None
    while True:
        try:
            last = probe()
            if done(last):
                return cast(T, last)
        except retry_on as exc:
            if isinstance(exc, Aborted) or (
                isinstance(exc, AssertionError) and AssertionError not in retry_on
            ):
                raise
            last_error = exc
        if time.monotonic() >= deadline:
            if last_error is not None:
                detail = f" (last error: {last_error})"
            elif last is not None:
                detail = f" (last: {last!r})"
            else:
                detail = ""
            raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, max_interval)


def holds_for(what: str, probe: Callable[[], bool], seconds: float, interval: float = 0.5) -> None:
    """Assert something stays true over a bounded window, checking it every ``interval``.

    For negatives ("the other namespace gets nothing") after a positive control has shown the
    system is live and fast: the window is several times its observed reaction time.
    """
    deadline = time.monotonic() + seconds
    while True:
        assert probe(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)
