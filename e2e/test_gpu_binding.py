"""The real kube-scheduler honours the GPU model binding the operator renders.

The defect: a pool declared ``A100-40GB`` with GPU tolerations and no nodeSelector was scheduled
onto an H100 node. Here the worker pod template the operator renders for such a pool is created
as a plain Pod on the small campus (H100 and H200 nodes labelled like GPU feature discovery does,
no A100): it stays Unschedulable because of node affinity, while the same template for an
H100-80GB pool lands on an H100 node.
"""

from __future__ import annotations

import json
from typing import Any

from harness import Cluster
from k2think_operator.api.spec import INGRESS_GROUP, parse_spec
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render import build_children
from support import eventually, get, namespace

TOLERATE_GPUS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def worker_pod(gpu_type: str, name: str, ns: str) -> dict[str, Any]:
    spec = parse_spec(
        {
            "model": {"preset": "k2-think", "maxModelLen": 8192},
            "pools": [{"name": "pool", "gpuType": gpu_type, "tolerations": TOLERATE_GPUS}],
            "parallelism": {"tensor": 8},
        }
    )
    # The RayService comes first (then the token Secret and NetworkPolicies, render/security.py);
    # beside the pool's group it carries the ingress CPU group (render/ingress_group.py).
    rs = build_children(spec, plan_deployment(spec, name), name=name, namespace=ns)[0]
    assert rs["kind"] == "RayService"
    (group,) = [
        g
        for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        if g["groupName"] != INGRESS_GROUP
    ]
    template = group["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def test_a100_pool_never_lands_on_h100_nodes_and_h100_pool_does(cluster: Cluster) -> None:
    with namespace(cluster, "gpu-binding") as ns:
        for gpu_type, name in (("A100-40GB", "a100-worker"), ("H100-80GB", "h100-worker")):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(worker_pod(gpu_type, name, ns)))

        def scheduled(name: str) -> dict[str, Any] | None:
            pod = get(cluster, "pod", name, ns)
            return pod if pod and pod["spec"].get("nodeName") else None

        placed = eventually("the H100 worker bound", lambda: scheduled("h100-worker"), 60)
        node = cluster.kubectl_json("get", "node", placed["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"

        def refused() -> str | None:
            pod = get(cluster, "pod", "a100-worker", ns) or {}
            for cond in (pod.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return str(cond.get("message"))
            return None

        message = eventually("the A100 worker refused by the scheduler", refused, 60)
        assert "node affinity" in message, message
        assert (get(cluster, "pod", "a100-worker", ns) or {})["spec"].get("nodeName") is None
