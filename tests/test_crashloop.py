"""Crash-loop detection of the test ground (e2e/harness/crashloop.py) and the private /tmp that
must not hide a checkout under /tmp (e2e/harness/netns.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from harness import crashloop, netns
from harness.polling import Aborted, NotYet, wait_for

HEAD = {
    "metadata": {
        "name": "k2t-raycluster-abc-head-x1",
        "namespace": "chain",
        "labels": {"ray.io/cluster": "k2t-raycluster-abc", "ray.io/group": "headgroup"},
    }
}


def _exit(state: Path, *, ran: float, at: float, code: int = 127, pod: str = "head-x1") -> None:
    log = state / f"{pod}.log"
    log.write_text("starting\nk2t-pod: 7: exec: ray: not found\n")
    crashloop.record_exit(
        state,
        crashloop.Exit(
            key=crashloop.ledger_key(HEAD, "ray-head"),
            pod=f"chain/{pod}",
            container="ray-head",
            code=code,
            ran_seconds=ran,
            log=str(log),
            at=at,
        ),
    )


def test_the_key_survives_a_pod_replaced_under_another_name() -> None:
    other = {"metadata": {**HEAD["metadata"], "name": "k2t-raycluster-abc-head-y2"}}
    assert crashloop.ledger_key(HEAD, "ray-head") == crashloop.ledger_key(other, "ray-head")
    assert crashloop.ledger_key(HEAD, "ray-head") == "chain/k2t-raycluster-abc/headgroup/ray-head"
    bare = {"metadata": {"name": "k2t-client", "namespace": "chain"}}
    assert crashloop.ledger_key(bare, "c") == "chain/k2t-client/c"


def test_three_quick_exits_make_a_crash_loop_that_aborts_a_wait_with_its_cause(
    tmp_path: Path,
) -> None:
    now = time.time()
    for i in range(3):
        _exit(tmp_path, ran=0.2, at=now + i)
    started = time.monotonic()

    def probe() -> None:
        crashloop.raise_if_crashlooping(tmp_path, since=now - 1)
        raise NotYet("not RUNNING")

    with pytest.raises(crashloop.CrashLoop) as caught:
        wait_for("RUNNING", probe, timeout=60)
    assert time.monotonic() - started < 5  # at once, not after the 60 s bound
    assert isinstance(caught.value, Aborted)
    message = str(caught.value)
    assert "ray-head" in message and "chain/head-x1" in message
    assert "3 exits" in message and "exit code 127" in message
    assert "ray: not found" in message  # the log's last lines


def test_no_crash_loop_below_the_threshold_or_after_a_long_run(tmp_path: Path) -> None:
    now = time.time()
    crashloop.raise_if_crashlooping(tmp_path)  # no ledger yet
    _exit(tmp_path, ran=0.2, at=now)
    _exit(tmp_path, ran=0.2, at=now + 1)
    crashloop.raise_if_crashlooping(tmp_path)  # two quick exits: not yet a loop
    _exit(tmp_path, ran=600.0, at=now + 2)  # a node that served and then died (a head crash)
    crashloop.raise_if_crashlooping(tmp_path)
    _exit(tmp_path, ran=0.2, at=now + 3)
    _exit(tmp_path, ran=0.2, at=now + 4)
    crashloop.raise_if_crashlooping(tmp_path)  # the long run broke the streak
    _exit(tmp_path, ran=0.2, at=now + 5)
    with pytest.raises(crashloop.CrashLoop):
        crashloop.raise_if_crashlooping(tmp_path)


def test_exits_before_the_wait_began_do_not_count(tmp_path: Path) -> None:
    now = time.time()
    for i in range(3):
        _exit(tmp_path, ran=0.1, at=now - 100 + i)
    crashloop.raise_if_crashlooping(tmp_path, since=now)
    with pytest.raises(crashloop.CrashLoop):
        crashloop.raise_if_crashlooping(tmp_path, since=now - 200)


def test_a_torn_ledger_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / crashloop.LEDGER).write_text('{"key": "a", "pod"\n')
    assert crashloop.read_ledger(tmp_path) == []


def test_paths_under_tmp_are_the_top_level_entries_holding_them(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    (tmp / "k2t-checkout" / ".venv-dataplane").mkdir(parents=True)
    (tmp / "k2t-checkout" / "e2e" / ".state").mkdir(parents=True)
    kept = netns.paths_under_tmp(
        [
            tmp / "k2t-checkout" / ".venv-dataplane",
            tmp / "k2t-checkout" / "e2e" / ".state",
            tmp_path / "elsewhere",
            tmp,
        ],
        tmp=tmp,
    )
    assert kept == (tmp.resolve() / "k2t-checkout",)


def test_a_pod_private_tmp_keeps_a_venv_under_tmp_visible(tmp_path: Path) -> None:
    """The real mount dance (root and a private mount namespace, as on the chain ground): the
    venv's program runs with the kept paths and is hidden without them."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.fail("this test needs `unshare --mount` (root), as the chain ground does")
    base = Path("/tmp") / f"k2t-unit-{tmp_path.name}"
    venv_bin = base / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    ray = venv_bin / "ray"
    ray.write_text("#!/bin/sh\necho ray here\n")
    ray.chmod(0o755)
    pod = base / "state" / "pods" / "ns_head"
    (pod / "tmp").mkdir(parents=True)
    try:
        results = {}
        for label, keep in (("kept", netns.paths_under_tmp([venv_bin])), ("hidden", ())):
            # Without nsenter (no pod network namespace here): the rest of the argv as is.
            argv = netns.in_pod_argv(Path("/unused"), pod, [str(ray)], keep=keep)
            assert argv[:3] == ["nsenter", "--net=/unused", "--"]
            results[label] = subprocess.run(argv[3:], capture_output=True, text=True)
        assert results["kept"].returncode == 0 and results["kept"].stdout == "ray here\n"
        assert results["hidden"].returncode == 127, results["hidden"]
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
