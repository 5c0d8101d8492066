"""Chaos with the real KubeRay and real Ray (issue #20): "Ready" under operator kills is what
KubeRay writes, not the test.

One deployment on the chain ground (one CPU pool, one replica). The operator is SIGKILLed at
random points of the way — right after the apply, once KubeRay has a RayCluster, and after an
edit that changes the Serve config in place — and restarted each time, as a crashed pod would
be. Nothing here writes a status: KubeRay probes the real Ray head's dashboard, writes the
RayService status, and the deployment must end ``Ready=True`` at its current generation with
exactly one RayService and one RayCluster, the Serve application RUNNING in KubeRay's status.
The seed is printed; ``K2T_CHAOS_SEED`` replays it.
"""

from __future__ import annotations

import os
import random
from typing import Any

from chain_support import (
    Ground,
    app_status,
    apply,
    chain_deployment,
    cpu_pool,
    k2t,
    pods,
    rayservice,
    wait,
)

from harness.polling import wait_for
from k2think_operator.deployment.decide import decide
from k2think_operator.render.meta import SPEC_HASH_ANNOTATION
from support import OperatorProcess

NS = "chain-chaos"
NAME = "chaos"


def _restart_operator(g: Ground, i: int) -> None:
    """SIGKILL the ground's operator and start another with the same settings."""
    old = g.operator
    assert old is not None, "the chaos test needs the ground's own operator process"
    old.kill()
    fresh = OperatorProcess(
        g.cluster,
        ["--all-namespaces"],
        g.state_dir / "logs" / f"operator-chaos-{i}.log",
        env={k: v for k, v in old.env.items() if k != "KUBECONFIG"},
    )
    g.operator = fresh.start()


def _ready(g: Ground) -> dict[str, Any] | None:
    cr = k2t(g, NS, NAME) or {}
    status = cr.get("status") or {}
    if status.get("observedGeneration") != (cr.get("metadata") or {}).get("generation"):
        return None
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return cr if ready and ready[0].get("status") == "True" else None


def test_operator_kills_end_ready_from_kuberays_own_status(ground: Ground) -> None:
    g = ground
    seed = int(os.environ.get("K2T_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"\nK2T_CHAOS_SEED={seed}")
    rng = random.Random(seed)
    g.cluster.kubectl("create", "namespace", NS, check=False)
    doc = chain_deployment(
        NAME,
        NS,
        g.model_dir,
        pools=[cpu_pool("cpu-a")],
        autoscaling={"minReplicas": 1, "maxReplicas": 1, "initialReplicas": 1},
    )
    kills = 0
    try:
        apply(g, doc)
        # 1. Right after the apply, or once the RayService exists: a first reconcile may be
        # half done either way.
        if rng.random() < 0.5:
            wait("the RayService", lambda: rayservice(g, NS, NAME), 120)
        _restart_operator(g, kills := kills + 1)
        # 2. KubeRay has built the RayCluster; the head is starting.
        wait("KubeRay's RayCluster", lambda: pods(g, NS, "ray.io/node-type=head"), 300)
        if rng.random() < 0.5:  # sometimes before, sometimes after the first status write
            wait("a status", lambda: (k2t(g, NS, NAME) or {}).get("status"), 120)
        _restart_operator(g, kills := kills + 1)
        # 3. An edit mid-flight (the Serve config changes in place), killed right after.
        doc["spec"]["serving"]["maxOngoingRequests"] = rng.choice([10, 12])
        apply(g, doc)
        if rng.random() < 0.5:
            wait(
                "the edit observed",
                lambda: (
                    ((k2t(g, NS, NAME) or {}).get("status") or {}).get("observedGeneration") == 2
                ),
                120,
            )
        _restart_operator(g, kills := kills + 1)

        cr = wait("Ready=True from KubeRay's status", lambda: _ready(g), 900)
        assert cr["metadata"]["generation"] == 2
        rs = rayservice(g, NS, NAME)
        assert rs is not None
        # KubeRay's own status, written by KubeRay: the application RUNNING, Ready.
        assert app_status(g, NS, NAME) == "RUNNING"
        rs_ready = [c for c in rs["status"].get("conditions") or [] if c["type"] == "Ready"]
        assert rs_ready and rs_ready[0]["status"] == "True", rs["status"]
        # Exactly one of everything, and the RayService is the render of the current spec.
        services = g.cluster.kubectl_json("get", "rayservices.ray.io", "-n", NS)["items"]
        clusters = g.cluster.kubectl_json("get", "rayclusters.ray.io", "-n", NS)["items"]
        assert len(services) == 1 and len(clusters) == 1, (services, clusters)
        want = decide(cr).children[0]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        assert rs["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == want
        edited = doc["spec"]["serving"]["maxOngoingRequests"]
        assert f"max_ongoing_requests: {edited}\n" in rs["spec"]["serveConfigV2"]
        assert g.operator is not None and g.operator.alive()
        print(f"chaos on the chain ground: {kills} operator kills, Ready from KubeRay")
    finally:
        g.cluster.kubectl("delete", "k2t", NAME, "-n", NS, "--wait=false", check=False)
        wait_for(
            "the chaos deployment's Ray pods to go",
            lambda: not pods(g, NS, "ray.io/node-type in (head,worker)"),
            timeout=300,
        )
