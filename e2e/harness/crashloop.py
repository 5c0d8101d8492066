"""Crash-loop detection for the kubelet stand-in's pods: a wait fails at once with the cause.

Why home-made: a kubelet reports a crash loop in the pod's ``containerStatuses``
(``restartCount``, ``waiting.reason: CrashLoopBackOff``, ``lastState.terminated``), but KWOK owns
the status of the test ground's pods and the stand-in (``harness.raynodes``) runs the real
processes behind them, so only the stand-in sees a container exit. It keeps a ledger of exits in
the cluster's state directory (:data:`LEDGER`, one JSON object per line, appended), and a wait
that checks :func:`raise_if_crashlooping` in its probe stops with the container's exit code,
restart count and last log lines instead of timing out minutes later with "timed out waiting for
RUNNING" (a head whose ``ray`` is not on ``PATH`` crash-looped 327 times in one such wait).

A container is crash-looping when its last :data:`THRESHOLD` runs each ended within
:data:`QUICK_EXIT_S` of their start. The ledger is keyed by what a crash loop survives: the
namespace, the Ray cluster and group labels and the container name (under ``restartPolicy:
Never`` KubeRay replaces a failed pod by a new one with a new name, so per-pod counting would
never see the loop).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .polling import Aborted

#: The ledger file, in the cluster's state directory.
LEDGER = "container-exits.jsonl"
#: A run shorter than this counts as a crash (a Ray node that started and later died does not).
QUICK_EXIT_S = 30.0
#: Consecutive quick exits that make a crash loop.
THRESHOLD = 3
LOG_LINES = 15


@dataclass(frozen=True)
class Exit:
    """One ended container run, as the stand-in saw it."""

    key: str
    pod: str
    container: str
    code: int
    ran_seconds: float
    log: str
    at: float


class CrashLoop(Aborted):
    """A container the wait depends on keeps exiting right after it starts."""


def ledger_key(pod: Mapping[str, Any], container: str) -> str:
    """What identifies "the same container" across restarts and pod replacements."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    owner = labels.get("ray.io/cluster")
    group = labels.get("ray.io/group")
    who = f"{owner}/{group}" if owner and group else str(meta.get("name"))
    return f"{meta.get('namespace')}/{who}/{container}"


def record_exit(state_dir: Path, exit_: Exit) -> None:
    """Append one exit to the ledger (the stand-in calls this; one writer, appends only)."""
    with (state_dir / LEDGER).open("a") as out:
        out.write(json.dumps(exit_.__dict__) + "\n")


def read_ledger(state_dir: Path) -> list[Exit]:
    try:
        lines = (state_dir / LEDGER).read_text().splitlines()
    except FileNotFoundError:
        return []
    exits = []
    for line in lines:
        try:
            exits.append(Exit(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line being written right now
    return exits


def crash_loops(exits: Iterable[Exit], *, threshold: int = THRESHOLD) -> dict[str, list[Exit]]:
    """Keys whose last ``threshold`` exits were all quick (oldest first), with those exits."""
    by_key: dict[str, list[Exit]] = {}
    for e in exits:
        by_key.setdefault(e.key, []).append(e)
    looping = {}
    for key, runs in by_key.items():
        last = sorted(runs, key=lambda e: e.at)[-threshold:]
        if len(last) == threshold and all(e.ran_seconds < QUICK_EXIT_S for e in last):
            looping[key] = last
    return looping


def tail(path: str, lines: int = LOG_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def describe(key: str, runs: list[Exit], restarts: int) -> str:
    last = runs[-1]
    return (
        f"container {last.container} of pod {last.pod} ({key}) is crash-looping: "
        f"{restarts} exits, the last {len(runs)} within {QUICK_EXIT_S:.0f} s of their start, "
        f"last exit code {last.code}; last log lines ({last.log}):\n{tail(last.log)}"
    )


def raise_if_crashlooping(state_dir: Path, *, since: float = 0.0) -> None:
    """Raise :class:`CrashLoop` (an ``Aborted``: ``wait_for`` stops at once) when any container
    of the ground has been crash-looping, counting exits after ``since`` (``time.time()``)."""
    exits = [e for e in read_ledger(state_dir) if e.at >= since]
    looping = crash_loops(exits)
    if looping:
        key = sorted(looping)[0]
        restarts = sum(1 for e in exits if e.key == key)
        raise CrashLoop(describe(key, looping[key], restarts))
