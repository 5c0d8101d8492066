"""Run ``k2think-operator run`` as a subprocess, as a user runs it outside a pod.

The one runner of the operator for the e2e suites, the install suite, the benchmark and the
demo: free loopback ports for /healthz and /metrics, a log file and pid record through
``processes.start`` (so ``harness down`` and the pid checks treat it like any other process),
and a bounded wait for /healthz that fails at once, with the log tail, if the process exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import processes
from .polling import wait_for


class OperatorExited(RuntimeError):
    """The operator process ended while we waited for it."""


def build_operator_argv(
    args: Sequence[str], *, health_port: int, metrics_port: int, python: str = sys.executable
) -> list[str]:
    """The command line: the interpreter itself is argv[0] (``-m k2think_operator.cli``), so the
    harness's check of /proc/<pid>/exe against the record holds (a console script's exe is the
    interpreter)."""
    return [
        python,
        "-m",
        "k2think_operator.cli",
        "run",
        *args,
        "--health-host=127.0.0.1",
        f"--health-port={health_port}",
        f"--metrics-port={metrics_port}",
    ]


def _get(url: str, timeout: float) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status), response.read().decode()


@dataclass
class OperatorProcess:
    """One operator process. ``args``: scope and flags after ``run`` (e.g. ``--all-namespaces``).

    Logs go to ``state_dir/logs/<name>.log``; ``env`` is added to this process's environment.
    """

    args: Sequence[str]
    state_dir: Path
    name: str = "k2think-operator"
    env: Mapping[str, str] = field(default_factory=dict)
    detach: bool = False
    proc: processes.Proc | None = None
    health_port: int = 0
    metrics_port: int = 0

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.health_port, self.metrics_port = processes.free_ports(2)
        argv = build_operator_argv(
            self.args, health_port=self.health_port, metrics_port=self.metrics_port
        )
        self.proc = processes.start(
            self.name, argv, self.state_dir, env=dict(self.env), detach=self.detach
        )
        try:
            wait_for(f"operator /healthz ({self.log_path})", self.healthy, timeout=timeout)
        except TimeoutError as exc:
            raise OperatorExited(f"{exc}\n{self.log_tail()}") from exc
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def healthy(self) -> bool:
        if not self.alive():
            raise OperatorExited(f"operator exited; see {self.log_path}:\n{self.log_tail()}")
        try:
            return _get(f"http://127.0.0.1:{self.health_port}/healthz", 2)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return _get(f"http://127.0.0.1:{self.metrics_port}/metrics", 5)[1]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or OOM-killed pod would stop."""
        if self.proc is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            processes.wait_gone(self.proc.pid, 10)
            if self.proc.popen is not None:
                self.proc.popen.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc is not None:
            self.proc.stop(timeout)
