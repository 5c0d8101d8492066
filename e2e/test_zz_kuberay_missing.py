"""KubeRay's CRDs missing is a condition and a retry, not a crash.

Runs last in the session (it removes the RayService CRD, which deletes every RayService of the
cluster, then puts KubeRay's CRDs back).
"""

from __future__ import annotations

from pathlib import Path

from harness import Cluster
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    load_example,
    namespace,
    overwrite_serve_config,
)

RAYSERVICE_CRD = "rayservices.ray.io"


def test_missing_kuberay_crd_is_reported_then_healed(cluster: Cluster, log_dir: Path) -> None:
    if not cluster.local:
        raise AssertionError("this test deletes a CRD: run it only on a harness cluster")
    op = OperatorProcess(cluster, ["--all-namespaces"], log_dir / "operator-nokuberay.log").start()
    try:
        with namespace(cluster, "no-kuberay") as ns:
            cluster.kubectl("delete", "crd", RAYSERVICE_CRD, "--wait=true", timeout=180)
            apply_doc(cluster, load_example("k2think.yaml", namespace=ns))

            def reported() -> bool:
                cond = condition(get(cluster, "k2t", "k2think", ns), "Degraded")
                return bool(
                    cond and cond["status"] == "True" and cond["reason"] == "KubeRayMissing"
                )

            eventually("Degraded=True/KubeRayMissing", reported, timeout=90)
            cr = get(cluster, "k2t", "k2think", ns)
            assert cr is not None and cr["status"]["phase"] == "Degraded"
            assert "install KubeRay" in (condition(cr, "Degraded") or {})["message"]
            assert op.proc is not None and op.proc.poll() is None, "the operator crashed"

            cluster.install_crds([])  # KubeRay's CRDs come back
            eventually(
                "RayService created once KubeRay is back",
                lambda: get(cluster, "rayservices.ray.io", "k2think", ns),
                timeout=120,
            )

            def healed() -> bool:
                cond = condition(get(cluster, "k2t", "k2think", ns), "Degraded")
                return bool(cond and cond["status"] == "False")

            eventually("Degraded cleared", healed, timeout=60)

            # The RayService watch itself must be alive again, not only the K2ThinkDeployment's
            # retries: a watcher that died while the CRD came back leaves kopf holding back every
            # handler. Drift is repaired only through that watch (the resync runs every 600 s).
            original = get(cluster, "rayservices.ray.io", "k2think", ns)
            assert original is not None
            overwrite_serve_config(cluster, "k2think", ns, "applications: []\n")
            eventually(
                "serveConfigV2 restored through the re-established RayService watch",
                lambda: (
                    (live := get(cluster, "rayservices.ray.io", "k2think", ns))
                    and live["spec"]["serveConfigV2"] == original["spec"]["serveConfigV2"]
                ),
                timeout=60,
            )
            assert op.proc is not None and op.proc.poll() is None, "the operator crashed"
    finally:
        op.stop()
        cluster.install_crds([])
