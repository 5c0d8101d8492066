"""The serving path at campus scale against the real API server and KubeRay v1.6.2 (KWOK pods):

* GCS fault tolerance: what we render as ``gcsFaultToleranceOptions`` is kept by the API server
  and turned by KubeRay into the head's Redis address, the password from our Secret and the
  workers' reconnect timeout (controllers/ray/common/pod.go); the deployment says
  ``GcsFaultToleranceOff=False`` (Configured);
* without it, a deployment above the threshold gets ``GcsFaultToleranceOff=True`` and one
  Warning event, and stays un-degraded;
* the ingress: status.plan.ingress says where it runs, and KubeRay schedules the ingress CPU
  group's pod on the CPU pool.

No Redis is dialled here: KWOK's pods run nothing (the address is loopback all the same); the
head-failure behaviour itself is proven on the chain ground (e2e/chain/test_30_head_failure.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    items,
    kuberay_namespace,
    load_example,
    namespace,
)

REDIS = "127.0.0.1:6379"


@pytest.fixture(scope="module")
def operator(cluster: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        cluster,
        ["--all-namespaces"],
        log_dir / "operator-serving-path.log",
        env={"K2T_GCS_FT_REPLICA_THRESHOLD": "4"},
    )
    op.start()
    yield op
    op.stop()


@pytest.fixture
def kuberay_ns(cluster: Cluster) -> Iterator[str]:
    # With GCS FT, KubeRay puts a Redis clean-up finalizer on the RayCluster whose Job KWOK never
    # runs: kuberay_namespace lifts it while deleting the namespace.
    with kuberay_namespace(cluster, "ft") as name:
        yield name


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {e["name"]: e for e in container.get("env") or []}


def _k2t(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    return get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns)


def test_kuberay_turns_gcs_fault_tolerance_into_redis_settings(
    cluster: Cluster, operator: OperatorProcess, kuberay_ns: str
) -> None:
    ns = kuberay_ns
    cluster.kubectl(
        "create", "secret", "generic", "redis-auth", "--from-literal=password=s3cret", "-n", ns
    )
    doc = load_example("k2think.yaml", namespace=ns)
    doc["spec"]["ray"]["gcsFaultTolerance"] = {
        "redisAddress": REDIS,
        "passwordSecret": {"name": "redis-auth", "key": "password"},
    }
    apply_doc(cluster, doc)
    rs = eventually(
        "the RayService with gcsFaultToleranceOptions",
        lambda: get(cluster, "rayservices.ray.io", "k2think", ns),
    )
    assert rs["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {
        "redisAddress": REDIS,
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
    }

    def pods_of(kind: str) -> list[dict[str, Any]] | None:
        found = items(cluster, "pods", ns, f"ray.io/node-type={kind}")
        return found or None

    head = eventually("KubeRay's head pod", lambda: pods_of("head"), timeout=180)[0]
    assert head["metadata"]["annotations"]["ray.io/ft-enabled"] == "true"
    env = _env(head)
    assert env["RAY_REDIS_ADDRESS"]["value"] == REDIS
    assert env["REDIS_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis-auth", "key": "password"}
    }
    # Default storage namespace: the RayCluster's UID (unique per cluster of an upgrade).
    raycluster = items(cluster, "rayclusters.ray.io", ns)[0]
    assert env["RAY_external_storage_namespace"]["value"] == raycluster["metadata"]["uid"]

    workers = eventually("KubeRay's worker pods", lambda: pods_of("worker"), timeout=180)
    gpu_workers = [
        w
        for w in workers
        if w["metadata"]["labels"].get("app.kubernetes.io/component") == "ray-worker"
    ]
    assert gpu_workers
    for worker in gpu_workers:
        assert _env(worker)["RAY_gcs_rpc_server_reconnect_timeout_s"]["value"] == "600"

    cond = eventually(
        "GcsFaultToleranceOff=False (Configured)",
        lambda: (
            (c := condition(_k2t(cluster, ns), "GcsFaultToleranceOff"))
            and c["status"] == "False"
            and c
        ),
    )
    assert cond["reason"] == "Configured"

    # The ingress: sized for 8 replicas, on the CPU group; KubeRay's pod lands on the CPU pool.
    plan = (_k2t(cluster, ns) or {})["status"]["plan"]
    assert plan["ingress"]["placement"] == "cpuGroup"
    ingress_pods = [
        w
        for w in workers
        if w["metadata"]["labels"].get("app.kubernetes.io/component") == "ray-ingress"
    ]
    assert ingress_pods, [w["metadata"]["labels"] for w in workers]
    _ingress_pod_is_a_ray_pod_of_the_policies(cluster, ns, head, gpu_workers, ingress_pods[0])

    def ingress_node_pool() -> str | None:
        pods = items(cluster, "pods", ns, "app.kubernetes.io/component=ray-ingress")
        nodes = [p["spec"].get("nodeName") for p in pods]
        if not nodes or not all(nodes):
            return None
        node = cluster.kubectl_json("get", "node", nodes[0])
        return str(node["metadata"]["labels"].get("k2think.dev/pool"))

    assert eventually("the ingress pod scheduled", ingress_node_pool, timeout=120) == "cpu"


def _selected(selector: dict[str, Any], pod: dict[str, Any]) -> bool:
    """matchLabels of a podSelector (the only form our policies use) against a pod's labels."""
    assert set(selector) <= {"matchLabels"}, selector
    labels = pod["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _ingress_pod_is_a_ray_pod_of_the_policies(
    cluster: Cluster,
    ns: str,
    head: dict[str, Any],
    gpu_workers: list[dict[str, Any]],
    ingress_pod: dict[str, Any],
) -> None:
    """Ray token auth and NetworkPolicies are on (the defaults since #16). This test ground has
    no CNI enforcing policies, so what is checked is what the policies say, as the API server
    stored them: every policy of the deployment selects the ingress pod (it takes the same
    rules as the head and workers: serve traffic on 8000 from callers, metrics, KubeRay's
    calls), and the rule "any port from the deployment's own Ray pods" has the head, the GPU
    workers and the ingress pod on both ends, so the ingress replicas reach the GCS and the
    model replicas and the head's proxy reaches them. KubeRay gives its container the token."""
    policies = {p["metadata"]["name"]: p for p in items(cluster, "networkpolicies", ns)}
    assert {"k2think-ray-internal", "k2think-serve"} <= set(policies), sorted(policies)
    for name, policy in policies.items():
        assert _selected(policy["spec"]["podSelector"], ingress_pod), name
    (own,) = [
        rule for rule in policies["k2think-ray-internal"]["spec"]["ingress"] if "ports" not in rule
    ]
    (peer,) = own["from"]
    assert set(peer) == {"podSelector"}, peer  # this namespace, every port
    for pod in [head, *gpu_workers, ingress_pod]:
        assert _selected(peer["podSelector"], pod), pod["metadata"]["name"]
        assert _selected(policies["k2think-ray-internal"]["spec"]["podSelector"], pod)
    (serve_rule,) = policies["k2think-serve"]["spec"]["ingress"]
    assert serve_rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    env = _env(ingress_pod)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "k2think-ray-token"


def test_a_large_fleet_without_it_is_warned_about(
    cluster: Cluster, operator: OperatorProcess, request: pytest.FixtureRequest
) -> None:
    with namespace(cluster, request.node.name) as ns:
        apply_doc(cluster, load_example("k2think.yaml", namespace=ns))  # maxReplicas 8 > 4
        cond = eventually(
            "GcsFaultToleranceOff=True",
            lambda: (
                (c := condition(_k2t(cluster, ns), "GcsFaultToleranceOff"))
                and c["status"] == "True"
                and c
            ),
        )
        assert cond["reason"] == "AboveReplicaThreshold"
        assert "spec.ray.gcsFaultTolerance" in cond["message"]

        def warning() -> list[dict[str, Any]] | None:
            events = items(cluster, "events", ns)
            hits = [
                e
                for e in events
                if e.get("reason") == "GcsFaultToleranceOff" and e.get("type") == "Warning"
            ]
            return hits or None

        (event,) = eventually("one Warning event GcsFaultToleranceOff", warning)
        assert "8 replicas" in event["message"]
        degraded = condition(_k2t(cluster, ns), "Degraded")
        assert degraded is not None and degraded["status"] == "False"
