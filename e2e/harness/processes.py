"""Start and stop the control-plane processes, leaving nothing behind.

Every process is started in its own session (so its process group id equals its pid), logs to
``<state>/logs/<name>.log`` and is recorded in ``<state>/pids/<name>.json`` with its executable.
Stopping sends SIGTERM to the whole group, waits, then SIGKILLs it. A record is only acted on if
``/proc/<pid>/exe`` still is the recorded binary, so a recycled pid is never killed. Processes
owned by a Python process (not ``detach``) also get ``PR_SET_PDEATHSIG=SIGKILL``, so they die
with it even if it is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .polling import WaitTimeoutError, wait_for

_PR_SET_PDEATHSIG = 1


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (all held open until
    every one is picked, so they differ). The one port picker of the test ground."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free loopback port (``free_ports(1)``)."""
    return free_ports(1)[0]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_CLONE_NEWNET = 0x40000000


def _enter_netns(path: Path) -> None:
    """``setns(2)`` the (just forked, single-threaded) child into network namespace ``path``: the
    process then runs there as its own executable (a record names it, not a wrapper)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Proc:
    """One managed process (possibly started by another Python process: ``popen`` is None)."""

    name: str
    pid: int
    exe: str
    log: Path
    record: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _alive(self.pid) and self._ours()

    def _ours(self) -> bool:
        exe = _exe_of(self.pid)
        if exe is None:
            return False
        return os.path.realpath(exe.removesuffix(" (deleted)")) == os.path.realpath(self.exe)

    def poll(self) -> int | None:
        """Popen-style: None while the process runs, else its exit code (0 if unknown)."""
        if self.popen is not None:
            return self.popen.poll()
        return None if self.alive() else 0

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; remove the record."""
        if self.popen is None and not self._ours():
            self.record.unlink(missing_ok=True)
            return
        pgid = self.pid  # started with start_new_session: group id == pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)

        def exited() -> bool:
            if self.popen is not None:
                return self.popen.poll() is not None and not _group_alive(pgid)
            return not _alive(self.pid) and not _group_alive(pgid)

        try:
            wait_for(f"{self.name} to exit", exited, timeout=timeout, interval=0.05)
        except WaitTimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
            wait_gone(pgid, 5)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(1)
        self.record.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    """Whether any (non-zombie) process is still in group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def wait_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of group ``pgid`` exited within ``timeout``."""
    try:
        wait_for(
            f"process group {pgid} to exit",
            lambda: not _group_alive(pgid),
            timeout=timeout,
            interval=0.05,
        )
    except WaitTimeoutError:
        return False
    return True


def _child_setup(*, detach: bool, netns: Path | None) -> Callable[[], None] | None:
    if netns is None:
        return None if detach else _die_with_parent

    def setup() -> None:
        _enter_netns(netns)
        if not detach:
            _die_with_parent()

    return setup


def start(
    name: str,
    argv: Sequence[str],
    state_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    detach: bool = False,
    cwd: Path | None = None,
    netns: Path | None = None,
) -> Proc:
    """Start ``argv`` in its own session, logging to ``state_dir/logs/<name>.log``; with
    ``netns``, in that network namespace (a simulated node's or pod's, harness/netns.py)."""
    logs = state_dir / "logs"
    pids = state_dir / "pids"
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=_child_setup(detach=detach, netns=netns),
        )
    record = pids / f"{name}.json"
    exe = os.path.realpath(argv[0])
    record.write_text(
        json.dumps({"name": name, "pid": popen.pid, "exe": exe, "argv": list(argv)}, indent=1)
    )
    return Proc(name=name, pid=popen.pid, exe=exe, log=log, record=record, popen=popen)


def recorded(state_dir: Path) -> list[Proc]:
    """Processes recorded in ``state_dir/pids`` (by any Python process)."""
    out = []
    for rec in sorted((state_dir / "pids").glob("*.json")):
        try:
            data = json.loads(rec.read_text())
            out.append(
                Proc(
                    name=data["name"],
                    pid=int(data["pid"]),
                    exe=data["exe"],
                    log=state_dir / "logs" / f"{data['name']}.log",
                    record=rec,
                )
            )
        except (OSError, ValueError, KeyError):
            rec.unlink(missing_ok=True)
    return out
