"""Scenario 9: the watch scope. A namespace-restricted operator reconciles only its namespaces;
an all-namespaces operator reconciles everything. Each mode runs alone (two live operators
would both reconcile the shared namespaces)."""

from __future__ import annotations

from pathlib import Path

from harness import Cluster
from support import (
    OperatorProcess,
    apply_doc,
    eventually,
    get,
    holds_without_fight,
    load_example,
    namespace,
)


def _has_rayservice(cluster: Cluster, ns: str, name: str = "k2think") -> bool:
    return get(cluster, "rayservices.ray.io", name, ns) is not None


def _touched(cluster: Cluster, ns: str, name: str = "k2think") -> bool:
    obj = get(cluster, "k2thinkdeployments.k2think.dev", name, ns) or {}
    return bool(obj.get("status")) or _has_rayservice(cluster, ns, name)


def test_namespaced_operator_stays_in_its_namespaces(cluster: Cluster, log_dir: Path) -> None:
    with (
        namespace(cluster, "scope-a") as a,
        namespace(cluster, "scope-b") as b,
        namespace(cluster, "scope-out") as outside,
    ):
        for ns in (outside, a, b):
            apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
        op = OperatorProcess(
            cluster, ["--namespace", a, "--namespace", b], log_dir / "operator-scoped.log"
        ).start()
        try:
            eventually(
                "RayService in the first watched namespace", lambda: _has_rayservice(cluster, a)
            )
            eventually(
                "RayService in the second watched namespace", lambda: _has_rayservice(cluster, b)
            )
            # The operator has just shown it reacts within seconds; give it several times that.
            holds_without_fight(
                "the unwatched namespace stays untouched",
                lambda: not _touched(cluster, outside),
                op,
            )
        finally:
            op.stop()

        everywhere = OperatorProcess(
            cluster, ["--all-namespaces"], log_dir / "operator-clusterwide.log"
        ).start()
        try:
            eventually(
                "RayService in the formerly unwatched namespace",
                lambda: _has_rayservice(cluster, outside),
            )
        finally:
            everywhere.stop()
