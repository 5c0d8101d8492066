"""Restart one control-plane process of a local harness cluster, for the chaos suite.

A process is stopped (SIGKILL of its group, as a crash or an OOM kill; or SIGTERM) and started
again with the exact argv of its pid record, so it comes back on the same ports, with the same
certificates and (for etcd) the same data directory. It returns once the process answers again
(etcd ``/health``, the apiserver ``/readyz``). Kept apart from ``cluster.py`` on purpose: only
the chaos tests need it, and the cluster module stays about bringing a cluster up and down.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import suppress
from pathlib import Path

from . import processes
from .cluster import Cluster, HarnessError, _http_status
from .kubeapi import wait_for

#: Record names of the processes this module knows how to wait for.
READY_PROBES = ("etcd", "kube-apiserver")


def _record(cluster: Cluster, name: str) -> dict[str, object]:
    if cluster.state_dir is None:
        raise HarnessError("only a local harness cluster can restart its processes")
    path = cluster.state_dir / "pids" / f"{name}.json"
    record: dict[str, object] = json.loads(path.read_text())
    return record


def _ready(cluster: Cluster, name: str) -> bool:
    if name == "etcd":
        return _http_status(f"http://127.0.0.1:{cluster.ports['etcd']}/health") == 200
    if name == "kube-apiserver":
        api = cluster.api
        assert api is not None
        try:
            return bool(api.request("GET", "/readyz", raw=True).strip() == "ok")
        except Exception:
            return False
    raise HarnessError(f"no readiness probe for {name}")


def stop_process(cluster: Cluster, name: str, *, kill: bool = True) -> None:
    """SIGKILL (default) or SIGTERM the recorded process group and wait until it is gone."""
    record = _record(cluster, name)
    pid = int(str(record["pid"]))
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    if not processes.wait_gone(pid, 30):
        raise HarnessError(f"{name} (pid {pid}) did not stop")
    proc = cluster.procs.get(name)
    if proc is not None and proc.popen is not None:
        with suppress(Exception):
            proc.popen.wait(5)


def start_process(cluster: Cluster, name: str, *, timeout: float = 120.0) -> None:
    """Start ``name`` again with its recorded argv and wait until it answers."""
    record = _record(cluster, name)
    argv = [str(a) for a in record["argv"]]  # type: ignore[attr-defined]
    assert cluster.state_dir is not None
    cluster.procs[name] = processes.start(name, argv, Path(cluster.state_dir))
    proc = cluster.procs[name]

    def answered() -> bool:
        if not proc.alive():
            raise HarnessError(f"{name} exited on restart:\n{proc.log_tail()}")
        return _ready(cluster, name)

    wait_for(f"{name} back after a restart", answered, timeout=timeout)


def restart_process(
    cluster: Cluster, name: str, *, kill: bool = True, timeout: float = 120.0
) -> float:
    """Stop and start ``name``; returns the seconds it was unavailable."""
    started = time.monotonic()
    stop_process(cluster, name, kill=kill)
    start_process(cluster, name, timeout=timeout)
    return time.monotonic() - started
