"""GPU pools: the placement group of one K2-Think replica on H100 (TP=4, the operator's rendered
bundles) makes Ray's autoscaler scale the H100 group; the pod lands on an H100 node and its Ray
node joins with 4 (logical) GPUs and the ``accelerator_type:H100`` resource; when the demand
goes, the idle pod is removed. The GPUs are simulated: Ray counts them, nothing computes on them.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from chain_support import (
    PG_DRIVER,
    POOL_LABEL,
    RAY_ENV,
    Ground,
    apply,
    driver_line,
    node_pool,
    pods,
    ray_driver_env,
    ray_nodes,
    rayservice,
    replica_bundles,
    wait,
    worker_pods,
)

from harness import raynodes

NS = "chain-gpu"
NAME = "k2think"


def test_a_tp4_replica_demand_scales_the_h100_group(ground: Ground) -> None:
    g = ground
    g.cluster.kubectl("create", "namespace", NS, check=False)
    apply(
        g,
        {
            "apiVersion": "k2think.dev/v1alpha1",
            "kind": "K2ThinkDeployment",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {
                "model": {"preset": "k2-think", "maxModelLen": 32768},
                "pools": [
                    {
                        "name": "h100",
                        "gpuType": "H100-80GB",
                        "gpusPerNode": 8,
                        "nodeSelector": {POOL_LABEL: "h100"},
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                    }
                ],
                # No replica until asked: K2-Think itself never runs here, only its demand.
                "autoscaling": {
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "initialReplicas": 0,
                    "idleTimeoutSeconds": 20,
                },
                "ray": {
                    "head": {
                        "nodeSelector": {POOL_LABEL: "head"},
                        "resources": {"limits": {"cpu": "1", "memory": "8Gi"}},
                    },
                    "env": [{"name": k, "value": v} for k, v in RAY_ENV.items()],
                },
            },
        },
    )
    head = wait(
        "the head pod's Ray node to be up",
        lambda: (
            (hs := pods(g, NS, "ray.io/node-type=head"))
            and hs[0]["status"].get("podIP")
            and _alive(hs[0])
            and hs[0]
        ),
        timeout=300,
    )
    assert not h100_pods(g)
    rs = rayservice(g, NS, NAME)
    assert rs is not None
    bundles, strategy = replica_bundles(rs["spec"]["serveConfigV2"])
    assert len(bundles) == 4 and strategy == "STRICT_PACK"

    t0 = time.monotonic()
    assert g.cluster.state_dir is not None
    driver = subprocess.Popen(
        raynodes.exec_argv(
            g.cluster.state_dir,
            head,
            [str(g.venv / "bin" / "python"), "-c", PG_DRIVER, json.dumps(bundles), strategy, "420"],
        ),
        # The driver joins with the cluster's Ray token (auth is on, the default).
        env={
            **raynodes.exec_env(g.venv, head),
            "RAY_SCHEDULER_EVENTS": "0",
            **ray_driver_env(NS),
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None and driver.stdin is not None
        placed = driver_line(driver.stdout)
        assert placed.get("ready"), placed
        elapsed = time.monotonic() - t0
        workers = h100_pods(g)
        assert len(workers) == 1
        pod = workers[0]
        assert pod["metadata"]["labels"]["ray.io/group"] == "h100"
        assert node_pool(g, pod["spec"]["nodeName"]) == "h100"
        nodes = {n["node_id"]: n for n in ray_nodes(NS, _cluster(head))}
        (node_id,) = placed["nodes"]
        node = nodes[node_id]
        assert node["node_ip"] == pod["status"]["podIP"]
        assert node["resources_total"]["GPU"] == 4
        assert node["resources_total"]["accelerator_type:H100"] == 1
        print(f"\nH100 replica demand -> placement group ready: {elapsed:.1f}s")
        driver.stdin.close()
        assert driver_line(driver.stdout).get("removed")
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait(30)
    wait("the idle H100 pod to be removed", lambda: not h100_pods(g), timeout=300)
    g.cluster.kubectl("delete", "k2t", NAME, "-n", NS, "--wait=false")
    wait(
        "the GPU deployment's pods to go",
        lambda: not g.cluster.kubectl_json("get", "pods", "-n", NS)["items"],
        timeout=300,
    )


def h100_pods(g: Ground) -> list[dict[str, Any]]:
    """The deployment's worker pods of the H100 group: its ingress group (`k2t-ingress`, a CPU
    worker pod Serve's OpenAI ingress scales onto) lives beside them and is not under test."""
    return [p for p in worker_pods(g, NS) if p["metadata"]["labels"].get("ray.io/group") == "h100"]


def _cluster(head: dict[str, Any]) -> str:
    """The RayCluster's name: its head Service exists before the RayService is Ready (this
    deployment's Serve app cannot start: K2-Think's weights are not here)."""
    return str(head["metadata"]["labels"]["ray.io/cluster"])


def _alive(head: dict[str, Any]) -> bool:
    try:
        return bool(ray_nodes(NS, _cluster(head)))
    except OSError:
        return False
