"""Spill-over on the real API server, the real KubeRay operator and the real scheduler, with KWOK
GPU nodes (docs/autoscaling.md, "When the preferred pool is full"; deployment/spill.py).

The multipool example's shape on nodes of its own: the preferred pool has one node with room for
one worker pod (2 GPUs: the example plans TP=2), the overflow pool one, and the replica floor of
2 lands on the preferred pool. The scheduler binds one worker pod and refuses the other; past the grace the operator caps
the preferred group's ``maxReplicas`` on the live RayCluster at the one pod it holds. KubeRay
sees the change (its RayCluster status catches up with the new generation) and keeps it: no new
cluster, the RayService untouched, the bound pod not deleted although ``replicas`` is above the
cap (with in-tree autoscaling only Ray's autoscaler deletes workers). A second node in the pool
lets the refused pod bind: the pool changed, the cap is lifted to the RayService's value.

Ray's autoscaler is not running here (KWOK pods run nothing): what it does with the cap is shown
by the chain suite (e2e/chain/) and pinned offline in tests/test_autoscaler_chain.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import Cluster, WaitTimeoutError
from harness.campus import parse_campus
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    holds_for,
    items,
    kuberay_namespace,
    load_example,
)

NAME = "k2think-multipool"
GRACE_S = 5
CAPS_ANNOTATION = "k2think.dev/spill-caps"


def campus(suffix: str, preferred_nodes: int) -> Any:
    """KWOK nodes of two pools of this test's own (no other test's pods can land there)."""

    def pool(name: str, product: str, count: int) -> dict[str, Any]:
        return {
            "name": f"spill-{suffix}-{name}",
            "count": count,
            # One worker pod's worth (the example plans TP=2: 2 GPUs per worker pod).
            "gpus": 2,
            "gpuProduct": product,
            "resources": {"cpu": "192", "memory": "2048Gi", "pods": "110"},
        }

    return parse_campus(
        {
            "name": f"spill-{suffix}",
            "pools": [
                pool("h200", "NVIDIA-H200", preferred_nodes),
                pool("h100", "NVIDIA-H100-80GB-HBM3", 1),
            ],
        }
    )


def groups(obj: dict[str, Any] | None, where: str = "spec") -> dict[str, dict[str, Any]]:
    spec = (obj or {}).get("spec") or {}
    if where == "rayservice":
        spec = spec.get("rayClusterConfig") or {}
    return {g["groupName"]: g for g in spec.get("workerGroupSpecs") or []}


def test_a_full_pool_is_capped_on_the_live_raycluster_kept_by_kuberay_then_lifted(
    cluster: Cluster, log_dir: Path
) -> None:
    nodes: list[str] = []
    try:
        with kuberay_namespace(cluster, "spill") as ns:
            suffix = ns.rsplit("-", 1)[-1]
            nodes = campus(suffix, preferred_nodes=2).node_names()
            cluster.create_nodes(campus(suffix, preferred_nodes=1))
            op = OperatorProcess(
                cluster,
                ["--namespace", ns],
                log_dir / "operator-spill.log",
                env={"K2T_UNSCHEDULABLE_GRACE_SECONDS": str(GRACE_S)},
            ).start()
            try:
                doc = load_example(f"{NAME}.yaml", namespace=ns)
                for pool in doc["spec"]["pools"]:
                    pool.pop("maxNodes", None)
                    pool["nodeSelector"] = {"k2think.dev/pool": f"spill-{suffix}-{pool['name']}"}
                apply_doc(cluster, doc)
                _capped_kept_lifted(cluster, ns, suffix)
            finally:
                op.stop()
    finally:
        # After the namespace is gone: KWOK ends the Pods only while their nodes exist.
        if nodes:
            cluster.kubectl("delete", "node", *nodes, "--wait=false", check=False)


def _capped_kept_lifted(cluster: Cluster, ns: str, suffix: str) -> None:
    def raycluster() -> dict[str, Any] | None:
        found = items(cluster, "rayclusters.ray.io", ns)
        return found[0] if len(found) == 1 else None

    def workers(pool: str) -> list[dict[str, Any]]:
        return items(cluster, "pods", ns, f"k2think.dev/pool={pool},ray.io/node-type=worker")

    def capped() -> dict[str, Any] | None:
        rc = raycluster()
        return rc if groups(rc)["h200"].get("maxReplicas") == 1 else None

    plan = eventually(
        "the deployment's plan in its status",
        lambda: (
            (get(cluster, "k2thinkdeployments.k2think.dev", NAME, ns) or {}).get("status") or {}
        ).get("plan"),
        timeout=60,
    )
    assert plan["gpusPerWorkerPod"] == 2, plan  # one worker pod per node of this campus
    try:
        rc = eventually("the preferred group capped at its one bound worker", capped, timeout=120)
    except WaitTimeoutError as error:
        raise AssertionError(f"{error}\n{_dump(cluster, ns)}") from error
    name = rc["metadata"]["name"]
    record = json.loads(rc["metadata"]["annotations"][CAPS_ANNOTATION])
    assert record["h200"]["cap"] == 1, record
    assert groups(rc)["h200"]["replicas"] == 2  # the autoscaler's field, left alone
    bound = [p["metadata"]["name"] for p in workers("h200") if p["spec"].get("nodeName")]
    assert len(bound) == 1, bound
    rs = get(cluster, "rayservices.ray.io", NAME, ns)
    rendered = groups(rs, "rayservice")["h200"]["maxReplicas"]
    assert rendered > 1  # the RayService keeps what the spec says

    obj = get(cluster, "k2thinkdeployments.k2think.dev", NAME, ns)
    spill = condition(obj, "SpillOver")
    assert spill is not None and spill["status"] == "True", spill
    assert spill["message"] == "pool h200 is full at 1 worker pod(s): new replicas go to h100"
    # Events are posted after the reconcile that recorded them (docs/operations.md).
    told = eventually(
        "the SpilledOver event", lambda: _told(cluster, ns, "SpilledOver"), timeout=90
    )
    assert "new replicas go to h100" in told[0], told

    # KubeRay reconciled the RayCluster after the cap (its status caught up with the new
    # generation) and kept it: same cluster, cap in place, the bound pod not deleted.
    generation = int(rc["metadata"]["generation"])
    eventually(
        "KubeRay observed the capped RayCluster",
        lambda: (
            int(((raycluster() or {}).get("status") or {}).get("observedGeneration") or 0)
            >= generation
        ),
        timeout=60,
    )

    def kept() -> bool:
        now = raycluster()
        status = (get(cluster, "rayservices.ray.io", NAME, ns) or {}).get("status") or {}
        # KWOK pods run no Ray, so KubeRay keeps preparing this one cluster (it stays "pending"):
        # what must not appear is a second one.
        clusters = {
            str((status.get(side) or {}).get("rayClusterName") or "")
            for side in ("activeServiceStatus", "pendingServiceStatus")
        } - {""}
        names = {p["metadata"]["name"] for p in workers("h200") if p["spec"].get("nodeName")}
        seen = (
            None if now is None else (now["metadata"]["name"], groups(now)["h200"]["maxReplicas"]),
            sorted(clusters),
            sorted(names),
        )
        ok = seen[0] == (name, 1) and clusters == {name} and set(bound) <= names
        assert ok, f"not kept: {seen} (expected {name!r} capped at 1, {bound} bound)"
        return True

    holds_for("the cap, the cluster and the bound worker", kept, seconds=20)

    # Capacity returns: a second node in the preferred pool; the refused pod binds there, the
    # pool changed, and the cap is lifted to the RayService's value.
    cluster.create_nodes(campus(suffix, preferred_nodes=2))

    def lifted() -> dict[str, Any] | None:
        rc = raycluster()
        return rc if groups(rc)["h200"].get("maxReplicas") == rendered else None

    rc = eventually("the cap lifted once the pool holds two workers", lifted, timeout=120)
    assert CAPS_ANNOTATION not in (rc["metadata"].get("annotations") or {})
    assert rc["metadata"]["name"] == name
    eventually(
        "SpillOver=False",
        lambda: (
            (
                condition(get(cluster, "k2thinkdeployments.k2think.dev", NAME, ns), "SpillOver")
                or {}
            ).get("status")
            == "False"
        ),
        timeout=60,
    )
    told = eventually(
        "the SpillLifted event", lambda: _told(cluster, ns, "SpillLifted"), timeout=90
    )
    assert "holds 2 bound worker pod(s), capped at 1" in told[0], told


def _told(cluster: Cluster, ns: str, reason: str) -> list[str] | None:
    """The messages of the namespace's Events of ``reason``, or None while there is none."""
    return [e["message"] for e in items(cluster, "events", ns) if e.get("reason") == reason] or None


def _dump(cluster: Cluster, ns: str) -> str:
    """What a failed wait saw: the RayService's status, the groups' bounds, the worker pods."""
    rs = get(cluster, "rayservices.ray.io", NAME, ns) or {}
    lines = [f"RayService status: {json.dumps(rs.get('status'))[:1500]}"]
    for rc in items(cluster, "rayclusters.ray.io", ns):
        bounds = {
            g["groupName"]: (g.get("replicas"), g.get("maxReplicas"))
            for g in rc["spec"]["workerGroupSpecs"]
        }
        lines.append(f"RayCluster {rc['metadata']['name']}: {bounds}")
    for pod in items(cluster, "pods", ns):
        conds = {
            c["type"]: (c["status"], c.get("reason")) for c in pod["status"].get("conditions") or []
        }
        lines.append(
            f"pod {pod['metadata']['name']} {pod['metadata'].get('labels')} node={pod['spec'].get('nodeName')} {conds}"
        )
    obj = get(cluster, "k2thinkdeployments.k2think.dev", NAME, ns) or {}
    lines.append(f"conditions: {json.dumps((obj.get('status') or {}).get('conditions'))[:2000]}")
    return "\n".join(lines)
