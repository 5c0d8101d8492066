"""``make demo``: a simulated GPU campus serving K2-Think through the operator.

Starts (or reuses) the local control plane (``make`` cluster name, ``default`` unless
``CLUSTER=`` says otherwise) with KWOK GPU pools and KubeRay's operator, runs k2think-operator as
a recorded process of that cluster (so ``make cluster-down`` stops it too), applies ``crds/examples/k2think.yaml`` and waits until KubeRay's
worker pods are scheduled on nodes of the planned pool. Then prints what runs and the plan, and
leaves everything running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

E2E = Path(__file__).resolve().parent
ROOT = E2E.parent
sys.path.insert(0, str(E2E))

from harness import (  # noqa: E402
    Cluster,
    processes,
    wait_for,
)
from harness.cluster import STATE_ROOT  # noqa: E402
from harness.operator_process import OperatorProcess  # noqa: E402

EXAMPLE = ROOT / "crds" / "examples" / "k2think.yaml"
NAMESPACE = "k2think-demo"


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def cluster_for(name: str, campus: str) -> Cluster:
    state = STATE_ROOT / name
    if (state / "cluster.json").exists() and all(p.alive() for p in processes.recorded(state)):
        say(f"reusing the running cluster in {state}")
        cluster = Cluster.attach(state)
        cluster.detached = True
        cluster.start_kuberay()
        return cluster
    return Cluster.start(campus=campus, kuberay=True, state_dir=state, detach=True, timeout=300)


def start_operator(cluster: Cluster) -> int:
    assert cluster.state_dir is not None
    existing = {p.name: p for p in processes.recorded(cluster.state_dir)}.get("k2think-operator")
    if existing is not None and existing.alive():
        say("k2think-operator already running")
        return int(cluster.ports.get("k2think-health", 0))
    op = OperatorProcess(
        args=["--all-namespaces"],
        state_dir=cluster.state_dir,
        env={"KUBECONFIG": str(cluster.kubeconfig)},
        detach=True,
    ).start(timeout=60)
    health, metrics = op.health_port, op.metrics_port
    say(f"k2think-operator running (health :{health}, metrics :{metrics}/metrics)")
    return health


def worker_pods_on_pool(cluster: Cluster, pool: str) -> list[dict[str, Any]] | None:
    pods = cluster.kubectl_json(
        "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=ray-worker"
    )["items"]
    if not pods:
        return None
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    for pod in pods:
        node = pod["spec"].get("nodeName")
        if not node or pod["status"].get("phase") != "Running":
            return None
        if nodes[node]["metadata"]["labels"].get("k2think.dev/pool") != pool:
            raise RuntimeError(f"{pod['metadata']['name']} landed on {node}, not pool {pool}")
    return list(pods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="default", help="cluster name (as make CLUSTER=...)")
    parser.add_argument("--campus", default=str(E2E / "campus" / "small.yaml"))
    args = parser.parse_args(argv)

    started = time.monotonic()
    cluster = cluster_for(args.name, args.campus)
    start_operator(cluster)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=demo", "-n", NAMESPACE, "-f", str(EXAMPLE)
    )
    say(f"applied {EXAMPLE.relative_to(ROOT)} in namespace {NAMESPACE}")
    wait_for(
        "the RayService",
        lambda: (
            cluster.kubectl("get", "rayservice", "k2think", "-n", NAMESPACE, check=False).returncode
            == 0
        ),
        timeout=120,
    )
    plan = wait_for(
        "the plan in status",
        lambda: (
            cluster.kubectl_json("get", "k2t", "k2think", "-n", NAMESPACE)
            .get("status", {})
            .get("plan")
        ),
        timeout=120,
    )
    pods = wait_for(
        f"KubeRay worker pods Running on pool {plan['pool']}",
        lambda: worker_pods_on_pool(cluster, plan["pool"]),
        timeout=300,
    )
    say(f"{len(pods)} worker pod(s) on pool {plan['pool']} after {time.monotonic() - started:.0f}s")
    print(
        cluster.kubectl(
            "get", "k2t,rayservice,raycluster,pods", "-n", NAMESPACE, "-o", "wide"
        ).stdout
    )
    print("plan:")
    print(json.dumps(plan, indent=2))
    print()
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    suffix = "" if args.name == "default" else f" CLUSTER={args.name}"
    print(f"# everything keeps running; stop it with: make cluster-down{suffix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
