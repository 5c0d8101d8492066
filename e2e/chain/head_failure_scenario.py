"""DRAFT (not collected, not yet run): the head-failure proof of issue #15 on the chain ground.

To become ``test_30_head_failure.py`` once it has run green under ``make test-chain``. What it
proves, for one two-replica CPU deployment with and one without ``spec.ray.gcsFaultTolerance``:

1. with GCS FT (a password-protected ``redis-server`` from Debian, bound to the pod network's
   gateway inside the suite's own network namespace): two replicas serve (one per CPU pool);
   streams run through a worker's proxy; the head's Ray processes are SIGKILLed and the head pod
   deleted (what KubeRay does to a ``restartPolicy: Never`` head whose Ray container died);
   KubeRay starts a new head which reloads the GCS from Redis; every stream in flight either
   finishes or fails with a retryable error (connection error or 5xx), none hangs; new requests
   are served again within ``RECOVERY_S``; the worker Ray nodes and the replica actors are the
   same as before (no weight reload);
2. without it: the same fault replaces every worker Ray node and every replica actor (the reason
   for the GcsFaultToleranceOff warning).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from chain_support import (
    SERVED_NAME,
    Ground,
    Load,
    app_status,
    apply,
    chain_deployment,
    cluster_of,
    cpu_pool,
    pods,
    ray_nodes,
    serve_replicas,
    wait,
    worker_pods,
)

from harness import netns, raynodes
from harness.processes import free_port

RECOVERY_S = 300.0


@contextlib.contextmanager
def redis_on_gateway(state_dir: Path) -> Iterator[tuple[str, str]]:
    """``redis-server`` on the pod network's gateway (reachable from pod namespaces only)."""
    port = free_port()
    password = secrets.token_hex(16)
    work = state_dir / "redis"
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            netns.GATEWAY,
            "--port",
            str(port),
            "--requirepass",
            password,
            "--dir",
            str(work),
            "--save",
            "",
            "--appendonly",
            "yes",
        ],
        stdout=(work / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait(
            "redis-server to accept connections",
            lambda: raynodes.tcp_open(netns.GATEWAY, port),
            timeout=30,
        )
        yield f"{netns.GATEWAY}:{port}", password
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _deploy(g: Ground, ns: str, name: str, ft: dict[str, Any] | None) -> None:
    g.cluster.kubectl("create", "namespace", ns, check=False)
    doc = chain_deployment(
        name,
        ns,
        g.model_dir,
        pools=[{**cpu_pool("cpu-a"), "maxNodes": 1}, {**cpu_pool("cpu-b"), "maxNodes": 1}],
        autoscaling={"minReplicas": 2, "maxReplicas": 2, "idleTimeoutSeconds": 600},
    )
    if ft is not None:
        doc["spec"]["ray"]["gcsFaultTolerance"] = ft
    apply(g, doc)
    wait("the application RUNNING", lambda: app_status(g, ns, name) == "RUNNING", timeout=900)
    wait(
        "two RUNNING replicas",
        lambda: (
            len([r for r in serve_replicas(ns, cluster_of(g, ns)) if r["state"] == "RUNNING"]) == 2
        ),
        timeout=600,
    )


def _identity(g: Ground, ns: str) -> tuple[set[str], set[str]]:
    """(worker Ray node ids, replica actor ids)."""
    cluster = cluster_of(g, ns)
    nodes = {n["node_id"] for n in ray_nodes(ns, cluster) if not n.get("is_head_node")}
    actors = {r["actor_id"] for r in serve_replicas(ns, cluster) if r["state"] == "RUNNING"}
    return nodes, actors


def _kill_head(g: Ground, ns: str) -> str:
    (head,) = pods(g, ns, "ray.io/node-type=head")
    uid = head["metadata"]["uid"]
    for pid in raynodes.processes_with_marker(uid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    g.cluster.kubectl("delete", "pod", head["metadata"]["name"], "-n", ns, "--wait=false")
    return str(uid)


def _served(base: str) -> bool:
    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 4}
    with contextlib.suppress(httpx.HTTPError):
        return bool(httpx.post(f"{base}/v1/completions", json=body, timeout=60).status_code == 200)
    return False


def _retryable(error: str | None) -> bool:
    text = (error or "").lower()
    return any(k in text for k in ("connection", "503", "502", "500", "timeout", "reset"))


def run_with_gcs_ft(g: Ground) -> None:
    ns, name = "chain-ft", "ft"
    with redis_on_gateway(g.state_dir) as (address, password):
        g.cluster.kubectl("create", "namespace", ns, check=False)
        g.cluster.kubectl(
            "create", "secret", "generic", "redis", f"--from-literal=password={password}", "-n", ns
        )
        _deploy(
            g,
            ns,
            name,
            {"redisAddress": address, "passwordSecret": {"name": "redis", "key": "password"}},
        )
        before = _identity(g, ns)
        worker_ip = worker_pods(g, ns)[0]["status"]["podIP"]
        load = Load(f"http://{worker_ip}:8000", 2, max_tokens=256)
        _kill_head(g, ns)
        wait("a request served again", lambda: _served(f"http://{worker_ip}:8000"), RECOVERY_S)
        results = load.stop()
        assert all(r.ok or _retryable(r.error) for r in results), results
        wait("the same workers and replicas", lambda: _identity(g, ns) == before, RECOVERY_S)


def run_without_gcs_ft(g: Ground) -> None:
    ns, name = "chain-noft", "noft"
    _deploy(g, ns, name, None)
    before_nodes, before_actors = _identity(g, ns)
    _kill_head(g, ns)
    wait(
        "every worker node and replica replaced",
        lambda: (
            (now := _identity(g, ns))
            and len(now[1]) == 2
            and not now[0] & before_nodes
            and not now[1] & before_actors
        ),
        timeout=900,
    )
