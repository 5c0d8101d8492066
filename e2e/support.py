"""Helpers the e2e suites and benchmarks share: run the operator, make namespaces, wait.

The operator runs as a real process (``k2think-operator run``) against the cluster's
kubeconfig, exactly as a user would run it outside a pod; tests talk to the API server with the
cluster's kubectl, so everything asserted here went through a real kube-apiserver.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness import Cluster, wait_for
from harness import holds_for as holds_for  # the tests import it from here
from harness import operator_process as harness_operator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "crds" / "examples"

T = TypeVar("T")

#: The slow resync period (``K2T_RESYNC_SECONDS``; 600 s by default) of every operator the suites
#: start, unless a test sets its own: short, so that a "nothing is rewritten" window spanning two
#: resync passes (:func:`no_fight_window`) is short too.
RESYNC_SECONDS = 3
#: What a window adds to its resync periods: the time one pass takes on a busy machine.
PASS_SLACK_SECONDS = 2.0

# Every operator process the suite started, in order: a failing test's report shows the logs of
# the ones it started (conftest.py), so a CI failure explains itself without the state directory.
STARTED: list[OperatorProcess] = []


class OperatorProcess(harness_operator.OperatorProcess):
    """The harness's operator runner, set up for the e2e suite: the cluster's kubeconfig, a fast
    retry, a short resync (:data:`RESYNC_SECONDS`), ``--verbose``, the log at ``log_path`` (``<state>/logs/<name>.log``), and listed in
    ``STARTED`` so a failing test's report carries its log."""

    def __init__(
        self,
        cluster: Cluster,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            args=[*args, "--verbose"],
            state_dir=log_path.parent.parent,
            name=log_path.stem,
            env={
                "KUBECONFIG": str(cluster.kubeconfig),
                "K2T_RETRY_SECONDS": "3",
                "K2T_RESYNC_SECONDS": str(RESYNC_SECONDS),
                **(env or {}),
            },
        )
        self.cluster = cluster

    @property
    def resync_seconds(self) -> float:
        return float(self.env["K2T_RESYNC_SECONDS"])

    def resync_passes(self) -> int:
        """Resync passes the operator has logged so far (``--verbose``)."""
        return self.log().count("resync: ")

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        STARTED.append(self)
        super().start(timeout)
        return self


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


@contextmanager
def kuberay_namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    """A fresh namespace that a KubeRay operator, started only for it, watches.

    On the way out the namespace is deleted, and waited for, while KubeRay still runs: KubeRay
    puts its own finalizer on every RayService, and the namespace controller deletes Pods first
    and everything else only once they are gone, so a namespace left behind after KubeRay stops
    stays Terminating for good and a later deletion of KubeRay's CRDs (``test_zz_kuberay_missing``)
    waits on it. The GCS fault tolerance's Redis clean-up finalizer is lifted by hand (what an
    admin does when Redis is gone): its clean-up Job never runs on KWOK.
    """
    name = unique_namespace(prefix)
    cluster.kubectl("create", "namespace", name)
    cluster.start_kuberay(watch_namespace=name)
    try:
        yield name
    finally:
        try:
            delete_namespace_and_wait(cluster, name)
        finally:
            cluster.stop_kuberay()


def delete_namespace_and_wait(cluster: Cluster, name: str, timeout: float = 180.0) -> None:
    """Delete ``name`` and poll until it is gone, lifting the RayClusters' finalizers whose
    clean-up Job KWOK never runs."""
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def gone() -> bool:
        proc = cluster.kubectl("get", "namespace", name, "-o", "name", check=False)
        if proc.returncode != 0:
            return True
        for rc in items(cluster, "rayclusters.ray.io", name):
            if rc["metadata"].get("deletionTimestamp") and rc["metadata"].get("finalizers"):
                cluster.kubectl(
                    "patch", "rayclusters.ray.io", rc["metadata"]["name"], "-n", name,
                    "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
        return False

    eventually(f"namespace {name} deleted", gone, timeout=timeout)


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


def no_fight_window(op: OperatorProcess, *, periods: int = 2) -> float:
    """Seconds a "nothing is rewritten" check must hold: ``periods`` (at least two) of the
    operator's resync periods plus one pass. Two, because a fight shows as a rewrite on the next
    full pass at the latest (a resync re-reads everything and applies on any drift), and the
    window may open just after one."""
    assert periods >= 2
    return periods * op.resync_seconds + PASS_SLACK_SECONDS


def holds_without_fight(what: str, probe: Callable[[], bool], op: OperatorProcess) -> None:
    """``probe`` holds over :func:`no_fight_window` and the operator really ran two resync
    passes meanwhile (counted in its log), so the window cannot be too short to see a fight."""
    passes = op.resync_passes()
    holds_for(what, probe, no_fight_window(op))
    ran = op.resync_passes() - passes
    assert ran >= 2, f"only {ran} resync pass(es) during the window of {what!r}"


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Bounded polling with a readable failure (never a bare sleep)."""
    return wait_for(what, probe, timeout=timeout, interval=0.2, max_interval=1.0)


def write_plugin_kubeconfig(cluster: Cluster, plugin: Path, path: Path) -> Path:
    """A kubeconfig for the local cluster whose only user authenticates through the exec
    credential plugin ``plugin`` (client-go's protocol, v1), written to ``path``."""
    raw = cluster.kubectl_json("config", "view", "--raw", "--minify")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": dict(raw["clusters"][0]["cluster"])}],
        "users": [
            {
                "name": "plugin",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": str(plugin),
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "plugin", "context": {"cluster": "local", "user": "plugin"}}],
        "current-context": "plugin",
    }
    path.write_text(yaml.safe_dump(config))
    return path
