"""Helpers the e2e suites and benchmarks share: run the operator, make namespaces, wait.

The operator runs as a real process (``k2think-operator run``) against the cluster's
kubeconfig, exactly as a user would run it outside a pod; tests talk to the API server with the
cluster's kubectl, so everything asserted here went through a real kube-apiserver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness import Cluster, wait_for
from harness.processes import free_ports

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "crds" / "examples"
OPERATOR_BIN = Path(sys.executable).parent / "k2think-operator"

T = TypeVar("T")

# Every operator process the suite started, in order: a failing test's report shows the logs of
# the ones it started (conftest.py), so a CI failure explains itself without the state directory.
STARTED: list[OperatorProcess] = []


@dataclass
class OperatorProcess:
    """One ``k2think-operator run`` subprocess with its own ports and log file."""

    cluster: Cluster
    args: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    metrics_port: int = 0

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.health_port, self.metrics_port = free_ports(2)
        argv = [
            str(OPERATOR_BIN),
            "run",
            *self.args,
            "--health-host=127.0.0.1",
            f"--health-port={self.health_port}",
            f"--metrics-port={self.metrics_port}",
            "--verbose",
        ]
        env = {**self.cluster.env(), "K2T_RETRY_SECONDS": "3", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        STARTED.append(self)
        wait_for(f"operator /healthz ({self.log_path})", self._healthy, timeout=timeout)
        return self

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited; see {self.log_path}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or OOM-killed pod would stop."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running_operator(
    cluster: Cluster, *args: str, log_dir: Path, name: str = "operator"
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, args, log_dir / f"{name}.log").start()
    try:
        yield op
    finally:
        op.stop()


def unique_namespace(prefix: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in prefix.lower()).strip("-")[:40]
    return f"{clean}-{uuid.uuid4().hex[:6]}"


@contextmanager
def namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    name = unique_namespace(prefix)
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def load_example(name: str, *, namespace: str, rename: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    doc["metadata"]["namespace"] = namespace
    if rename:
        doc["metadata"]["name"] = rename
    return doc


def apply_doc(cluster: Cluster, doc: dict[str, Any], *, check: bool = True) -> Any:
    """``kubectl apply --server-side`` as a GitOps tool would."""
    return cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=e2e-user",
        "-f",
        "-",
        input=json.dumps(doc),
        check=check,
    )


def get(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        raise RuntimeError(proc.stderr)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def merge_patch_rayservice(
    cluster: Cluster, name: str, ns: str, patch: dict[str, Any], subresource: str | None = None
) -> None:
    """Change a RayService as someone else would: by hand, or as KubeRay writes its status."""
    extra = [f"--subresource={subresource}"] if subresource else []
    cluster.kubectl(
        "patch",
        "rayservices.ray.io",
        name,
        "-n",
        ns,
        *extra,
        "--type=merge",
        "-p",
        json.dumps(patch),
    )


def overwrite_serve_config(cluster: Cluster, name: str, ns: str, value: str) -> None:
    """Edit a field the operator owns on its RayService by hand (a drift to be repaired)."""
    merge_patch_rayservice(cluster, name, ns, {"spec": {"serveConfigV2": value}})


def items(cluster: Cluster, kind: str, ns: str, *selector: str) -> list[dict[str, Any]]:
    args = ["get", kind, "-n", ns]
    if selector:
        args += ["-l", ",".join(selector)]
    found: list[dict[str, Any]] = cluster.kubectl_json(*args)["items"]
    return found


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Bounded polling with a readable failure (never a bare sleep)."""
    return wait_for(what, probe, timeout=timeout, interval=0.2, max_interval=1.0)


def holds_for(what: str, probe: Callable[[], bool], seconds: float, interval: float = 0.5) -> None:
    """Assert something stays true over a bounded window, checking it every ``interval``.

    For negatives ("the other namespace gets nothing") after a positive control has shown the
    operator is live and fast: the window is several times its observed reaction time.
    """
    deadline = time.monotonic() + seconds
    while True:
        assert probe(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)
