"""upgradeStrategy NewClusterWithIncrementalUpgrade on the real KubeRay v1.6.2 (its
``RayServiceIncrementalUpgrade`` feature gate on, as a platform team turns it on):

* the RayService the operator renders (``decide``: what it applies) passes KubeRay's validation
  (``ValidateRayServiceSpec`` -> ``ValidateClusterUpgradeOptions``) and KubeRay creates its Ray
  cluster;
* the same RayService without ``clusterUpgradeOptions`` (what the operator rendered before
  #24) is refused by KubeRay: Ready=False ``ValidationFailed``, "ClusterUpgradeOptions are
  required for NewClusterWithIncrementalUpgrade", no Ray cluster;
* the running operator, not told that KubeRay's gate is on (its default, like KubeRay's), says
  so on such a deployment: ``IncrementalUpgradeUnavailable=True`` (``KubeRayFeatureGateOff``).

With the gate on, KubeRay creates the RayService's Gateway (of our ``gatewayClassName``) before
the first Ray cluster: the Gateway API CRDs must be installed (found here: without them KubeRay's
reconcile stops at the Gateway and no Ray cluster ever comes). They come from the Go module cache
(``GATEWAY_API_VERSION`` in e2e/build/versions.env).

What is not proven here: traffic moving through an HTTPRoute (the KWOK ground runs no Ray, so no
cluster becomes ready to receive traffic, and no Gateway API implementation runs on this ground:
docs/serving-path.md).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster
from harness.gateway import INCREMENTAL_UPGRADE_GATE as GATE
from harness.gateway import gateway_api_crds
from k2think_operator.deployment.decide import decide
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    items,
    namespace,
    unique_namespace,
)


@pytest.fixture
def gated_ns(cluster: Cluster) -> Iterator[str]:
    """A namespace watched by KubeRay with the incremental-upgrade gate on."""
    name = unique_namespace("incr")
    cluster.kubectl("create", "namespace", name)
    cluster.install_crds(gateway_api_crds(), kuberay=False)
    cluster.start_kuberay(watch_namespace=name, extra_args=[GATE])
    try:
        yield name
    finally:
        # KubeRay's finalizers on the RayServices go while KubeRay still runs.
        cluster.kubectl(
            "delete", "rayservices.ray.io", "--all", "-n", name, "--wait=false", check=False
        )
        try:
            eventually(
                "the RayServices gone",
                lambda: not items(cluster, "rayservices.ray.io", name) or None,
                timeout=120,
            )
        finally:
            cluster.stop_kuberay()
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def incremental_deployment(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"preset": "k2-think"},
            "pools": [{"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8}],
            "upgradeStrategy": "NewClusterWithIncrementalUpgrade",
            "incrementalUpgrade": {"gatewayClassName": "envoy-gateway"},
        },
    }


def rendered_rayservice(ns: str, name: str) -> dict[str, Any]:
    """The RayService the operator applies for an incremental-upgrade deployment."""
    decision = decide(incremental_deployment(ns, name))
    assert not decision.problems, decision.problems
    (rayservice,) = [c for c in decision.children if c["kind"] == "RayService"]
    return copy.deepcopy(rayservice)


def ray_cluster_of(cluster: Cluster, ns: str, service: str) -> dict[str, Any] | None:
    for rc in items(cluster, "rayclusters.ray.io", ns):
        owners = rc["metadata"].get("ownerReferences") or []
        if any(o.get("kind") == "RayService" and o.get("name") == service for o in owners):
            return rc
    return None


def test_kuberay_accepts_the_rendered_incremental_upgrade(cluster: Cluster, gated_ns: str) -> None:
    ns = gated_ns
    rendered = rendered_rayservice(ns, "incr")
    assert rendered["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]["gatewayClassName"] == (
        "envoy-gateway"
    )
    apply_doc(cluster, rendered)
    stored = eventually("the RayService", lambda: get(cluster, "rayservices.ray.io", "incr", ns))
    # The API server keeps every option (KubeRay's CRD schema: all four are known fields).
    assert stored["spec"]["upgradeStrategy"] == rendered["spec"]["upgradeStrategy"]

    def cluster_or_refusal() -> dict[str, Any] | None:
        rc = ray_cluster_of(cluster, ns, "incr")
        if rc is not None:
            return rc
        ready = condition(get(cluster, "rayservices.ray.io", "incr", ns), "Ready")
        assert ready is None or ready.get("reason") != "ValidationFailed", ready
        return None

    rc = eventually("KubeRay's Ray cluster for the RayService", cluster_or_refusal, timeout=120)
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    # KubeRay's own Gateway for the upgrade, of the class we rendered.
    gateways = [
        g
        for g in items(cluster, "gateways.gateway.networking.k8s.io", ns)
        if any(o.get("name") == "incr" for o in g["metadata"].get("ownerReferences") or [])
    ]
    assert [g["spec"]["gatewayClassName"] for g in gateways] == ["envoy-gateway"]

    # Negative control, same KubeRay: without clusterUpgradeOptions KubeRay refuses it.
    bare = rendered_rayservice(ns, "bare")
    del bare["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]
    apply_doc(cluster, bare)

    def refused() -> dict[str, Any] | None:
        cond = condition(get(cluster, "rayservices.ray.io", "bare", ns), "Ready")
        return cond if cond and cond.get("reason") == "ValidationFailed" else None

    cond = eventually("KubeRay's ValidationFailed on the bare RayService", refused, timeout=120)
    assert (
        "ClusterUpgradeOptions are required for NewClusterWithIncrementalUpgrade" in cond["message"]
    )
    assert ray_cluster_of(cluster, ns, "bare") is None


def test_the_operator_says_when_kuberay_lacks_the_gate(cluster: Cluster, log_dir: Path) -> None:
    with namespace(cluster, "incr-op") as ns:
        op = OperatorProcess(cluster, [f"--namespace={ns}"], log_dir / "operator-upgrade.log")
        op.start()
        try:
            apply_doc(cluster, incremental_deployment(ns, "incr"))

            def unavailable() -> dict[str, Any] | None:
                k2t = get(cluster, "k2thinkdeployments.k2think.dev", "incr", ns)
                return condition(k2t, "IncrementalUpgradeUnavailable")

            cond = eventually("the IncrementalUpgradeUnavailable condition", unavailable)
            assert (cond["status"], cond["reason"]) == ("True", "KubeRayFeatureGateOff")
            assert "not rolled out" in cond["message"]
            rs = eventually(
                "the operator's RayService", lambda: get(cluster, "rayservices.ray.io", "incr", ns)
            )
            options = rs["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]
            assert options["gatewayClassName"] == "envoy-gateway"
        finally:
            cluster.kubectl("delete", "k2t", "--all", "-n", ns, "--wait=false", check=False)
            op.stop()
