"""Smoke test of the harness itself: a real control plane with KWOK GPU pools and KubeRay.

Always starts its own cluster (state dir e2e/.state/harness-smoke), whatever KUBECONFIG says,
and checks at the end that no process of it is left.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import POOL_LABEL, Cluster, HarnessError, load_campus, parse_campus, wait_for
from harness.campus import CampusError

pytestmark = pytest.mark.e2e

NS = "harness-smoke"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.start(name="harness-smoke", kuberay=True, timeout=300)
    try:
        c.kubectl("create", "namespace", NS)
        yield c
    finally:
        c.close()


def _pod_json(cluster: Cluster, name: str) -> dict[str, Any]:
    out: dict[str, Any] = cluster.kubectl_json("-n", NS, "get", "pod", name)
    return out


def _node_pool(cluster: Cluster, node: str) -> str:
    labels: dict[str, str] = cluster.kubectl_json("get", "node", node)["metadata"]["labels"]
    return labels[POOL_LABEL]


def test_campus_nodes(cluster: Cluster) -> None:
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        by_pool.setdefault(n["metadata"]["labels"][POOL_LABEL], []).append(n)
    assert {k: len(v) for k, v in by_pool.items()} == {"cpu": 2, "h100": 4, "h200": 2}
    for n in by_pool["h100"]:
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert n["spec"]["taints"] == [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        ]
    assert all("taints" not in n["spec"] for n in by_pool["cpu"])
    assert all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in nodes
    )


def test_gpu_pod_is_scheduled_on_its_pool_and_runs(cluster: Cluster) -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-8", "namespace": NS},
        "spec": {
            "nodeSelector": {POOL_LABEL: "h100"},
            "tolerations": [GPU_TOLERATION],
            "containers": [
                {
                    "name": "main",
                    "image": "example.invalid/never-pulled:1",
                    "resources": {
                        "requests": {"nvidia.com/gpu": "8", "cpu": "4"},
                        "limits": {"nvidia.com/gpu": "8"},
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    running = wait_for(
        "pod gpu-8 Running",
        lambda: (p := _pod_json(cluster, "gpu-8"))["status"].get("phase") == "Running" and p,
        timeout=60,
    )
    assert _node_pool(cluster, running["spec"]["nodeName"]) == "h100"
    # KWOK's fake pod and host IPs are loopback: nothing ever dials a private range
    assert running["status"]["podIP"].startswith("127.")
    assert running["status"]["hostIP"] == "127.0.0.1"
    # A second 8-GPU pod cannot share the node: the scheduler counts the extended resource.
    pod["metadata"]["name"] = "gpu-8-b"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    second = wait_for(
        "pod gpu-8-b Running",
        lambda: (p := _pod_json(cluster, "gpu-8-b"))["status"].get("phase") == "Running" and p,
        timeout=60,
    )
    assert second["spec"]["nodeName"] != running["spec"]["nodeName"]
    # Without the toleration a GPU pod stays Pending (the pools are tainted).
    pod["metadata"]["name"] = "gpu-untolerated"
    pod["spec"]["tolerations"] = []
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    unsched = wait_for(
        "pod gpu-untolerated to be marked unschedulable",
        lambda: next(
            (
                c
                for c in _pod_json(cluster, "gpu-untolerated")["status"].get("conditions", [])
                if c["type"] == "PodScheduled" and c["status"] == "False"
            ),
            None,
        ),
        timeout=60,
    )
    assert unsched["reason"] == "Unschedulable"


def test_garbage_collector_cascades(cluster: Cluster) -> None:
    cluster.kubectl("-n", NS, "create", "configmap", "owner")
    uid = cluster.kubectl_json("-n", NS, "get", "configmap", "owner")["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": NS,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(child))
    cluster.kubectl("-n", NS, "delete", "configmap", "owner", "--wait=true")
    wait_for(
        "the garbage collector to delete the child",
        lambda: cluster.kubectl("-n", NS, "get", "configmap", "child", check=False).returncode != 0,
        timeout=60,
    )


def test_token_request_for_a_service_account(cluster: Cluster) -> None:
    cluster.kubectl("-n", NS, "create", "serviceaccount", "robot")
    kc = cluster.service_account_kubeconfig(NS, "robot")
    proc = subprocess.run(
        [str(cluster.bindir / "kubectl"), f"--kubeconfig={kc}", "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    who = json.loads(proc.stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{NS}:robot"
    # RBAC is on: the ServiceAccount may not list nodes
    denied = subprocess.run(
        [str(cluster.bindir / "kubectl"), f"--kubeconfig={kc}", "get", "nodes"],
        capture_output=True,
        text=True,
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr


WORKER_RES = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8"}
RAYCLUSTER = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "smoke", "namespace": NS},
    "spec": {
        "rayVersion": "2.60.0",
        "headGroupSpec": {
            "rayStartParams": {},
            "template": {
                "spec": {
                    "nodeSelector": {POOL_LABEL: "cpu"},
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": "rayproject/ray:2.60.0",
                            "resources": {
                                "requests": {"cpu": "2", "memory": "8Gi"},
                                "limits": {"cpu": "2", "memory": "8Gi"},
                            },
                        }
                    ],
                }
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": 2,
                "minReplicas": 0,
                "maxReplicas": 4,
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "nodeSelector": {POOL_LABEL: "h200"},
                        "tolerations": [GPU_TOLERATION],
                        "containers": [
                            {
                                "name": "ray-worker",
                                "image": "rayproject/ray:2.60.0",
                                "resources": {
                                    "requests": {
                                        "cpu": "16",
                                        "memory": "64Gi",
                                        "nvidia.com/gpu": "8",
                                    },
                                    "limits": {
                                        "cpu": "16",
                                        "memory": "64Gi",
                                        "nvidia.com/gpu": "8",
                                    },
                                },
                            }
                        ],
                    }
                },
            }
        ],
    },
}


def test_kuberay_creates_pods_that_get_scheduled(cluster: Cluster) -> None:
    assert cluster.kuberay_running()
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(RAYCLUSTER))

    def placed() -> list[dict[str, Any]] | None:
        pods = cluster.kubectl_json("-n", NS, "get", "pods", "-l", "ray.io/cluster=smoke")
        items: list[dict[str, Any]] = pods["items"]
        if len(items) == 3 and all(p["status"].get("phase") == "Running" for p in items):
            return items
        return None

    pods = wait_for("KubeRay's head and 2 workers Running", placed, timeout=120)
    for p in pods:
        pool = _node_pool(cluster, p["spec"]["nodeName"])
        kind = p["metadata"]["labels"]["ray.io/node-type"]
        assert pool == ("cpu" if kind == "head" else "h200"), (p["metadata"]["name"], pool)
    # Two 8-GPU workers on a 2-node h200 pool: one per node.
    workers = [p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "worker"]
    assert len({p["spec"]["nodeName"] for p in workers}) == 2


def test_kuberay_stop_and_start(cluster: Cluster) -> None:
    cluster.stop_kuberay()
    assert not cluster.kuberay_running()
    cluster.start_kuberay()
    assert cluster.kuberay_running()


def test_stop_leaves_no_process(cluster: Cluster) -> None:
    assert cluster.state_dir is not None
    state = cluster.state_dir
    pids = [p.pid for p in cluster.procs.values()]
    assert len(pids) == 6, sorted(cluster.procs)
    t0 = time.monotonic()
    cluster.close()
    elapsed = time.monotonic() - t0
    assert not state.exists()
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not left, left
    # nothing running from the bin dir mentions this cluster's state dir
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert str(state) not in cmd, cmd
    assert elapsed < 60


# ------------------------------------------------------------------ offline checks (no cluster)
@pytest.mark.parametrize("path", ["small.yaml", "campus-large.yaml"])
def test_campus_files_parse(path: str) -> None:
    campus = load_campus(Path(__file__).parent / "campus" / path)
    names = campus.node_names()
    assert len(names) == len(set(names)) == campus.node_count
    assert {p.name for p in campus.pools} >= {"cpu", "h100", "h200"}


def test_campus_rejects_unknown_keys() -> None:
    with pytest.raises(CampusError, match="unknown keys"):
        parse_campus({"pools": [{"name": "x", "count": 1, "gpu": 8}]})


def test_refuses_unknown_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kc = tmp_path / "config"
    kc.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "p", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "prod-eu", "context": {"cluster": "p", "user": "u"}}],
                "current-context": "prod-eu",
            }
        )
    )
    monkeypatch.delenv("K2T_E2E_ALLOW_CONTEXT", raising=False)
    with pytest.raises(HarnessError, match="refusing"):
        Cluster.connect(kc)
    monkeypatch.setenv("K2T_E2E_ALLOW_CONTEXT", "prod-eu")
    assert Cluster.connect(kc).context == "prod-eu"
