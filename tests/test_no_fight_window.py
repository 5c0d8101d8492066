"""The e2e suites' "nothing is rewritten" windows (``e2e/support.py``): at least two of the
operator's resync periods, and a check that fails when fewer than two resync passes ran inside
it (a window too short to see a fight must not pass). The operator here is a stand-in object
with a log file the test writes, as the real one writes its ``resync:`` debug lines."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "e2e"))

import support


class LoggingOperator:
    """What ``holds_without_fight`` reads of an operator: its resync period and its log."""

    def __init__(self, log: Path, resync_seconds: float) -> None:
        self.log_path = log
        self.resync_seconds = resync_seconds
        log.write_text("")

    def log(self) -> str:
        return self.log_path.read_text()

    def resync_passes(self) -> int:
        return self.log().count("resync: ")


def _resync_every(op: LoggingOperator, period: float, stop: threading.Event) -> None:
    while not stop.wait(period):
        with op.log_path.open("a") as out:
            out.write("DEBUG resync: 1 K2ThinkDeployment(s) listed\n")


def test_the_window_spans_two_resync_periods_and_one_pass() -> None:
    op: Any = SimpleNamespace(resync_seconds=3.0)
    assert support.no_fight_window(op) == 2 * 3.0 + support.PASS_SLACK_SECONDS
    assert support.no_fight_window(op, periods=3) == 3 * 3.0 + support.PASS_SLACK_SECONDS
    with pytest.raises(AssertionError):
        support.no_fight_window(op, periods=1)


@pytest.mark.parametrize(("period", "passes"), [(0.3, True), (5.0, False)])
def test_a_window_without_two_resync_passes_fails(
    tmp_path: Path, period: float, passes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(support, "PASS_SLACK_SECONDS", 0.3)
    op = LoggingOperator(tmp_path / "operator.log", resync_seconds=0.3)
    stop = threading.Event()
    writer = threading.Thread(target=_resync_every, args=(op, period, stop), daemon=True)
    writer.start()
    try:
        started = time.monotonic()
        if passes:
            support.holds_without_fight("nothing moves", lambda: True, op)  # type: ignore[arg-type]
        else:  # the operator's resync never came: the window proves nothing
            with pytest.raises(AssertionError, match="resync pass"):
                support.holds_without_fight("nothing moves", lambda: True, op)  # type: ignore[arg-type]
        assert time.monotonic() - started >= support.no_fight_window(op)  # type: ignore[arg-type]
    finally:
        stop.set()
        writer.join()


def test_a_rewrite_inside_the_window_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "PASS_SLACK_SECONDS", 0.3)
    op = LoggingOperator(tmp_path / "operator.log", resync_seconds=0.3)
    version = {"rv": 1}
    timer = threading.Timer(0.4, lambda: version.update(rv=2))
    timer.start()
    with pytest.raises(AssertionError, match="stopped holding"):
        support.holds_without_fight("untouched", lambda: version["rv"] == 1, op)  # type: ignore[arg-type]
    timer.cancel()
