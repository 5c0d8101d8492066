"""The chain on CPU, end to end, with real Ray processes behind KWOK's pods, and what it costs.

One CPU-profile K2ThinkDeployment (the tiny model) autoscaling 1..2 replicas over one CPU pool of
two nodes (``e2e/campus/chain.yaml``: ``cpu-a`` and ``cpu-b``, selected by their instance type),
each with room for one worker pod; tests in file order on one deployment:

1. the first replica runs on a worker pod of the pool and serves through the RayService's serve
   Service;
2. **the whole chain**: load -> Serve asks for a second replica -> Ray's autoscaler (v2) asks
   KubeRay for a worker pod -> the scheduler binds it to the pool's free node -> the kubelet
   stand-in starts its Ray node, which joins -> Serve places the replica there -> vLLM starts ->
   RUNNING; each step's time is recorded (``chain_scale_up_s``). In both scale-ups the load
   stops once Serve has asked for the replica (it holds it for its downscale delay), so vLLM
   starts on cores the load's streams do not share, as on a real node with its own;
3. **Serve alone, on a warm node**: ``pools[0].warmReplicas: 1`` (the live RayCluster's group
   keeps two worker pods), Serve scales in to one replica, and the emptied worker node stays
   joined and idle past ``idleTimeoutSeconds``; the same load again -> Serve places the second
   replica on that node, no pod is created (``serve_alone_scale_up_s``); the ratio of the two is
   ``chain_over_serve_ratio`` (issue #23, docs/benchmarks.md);
4. ``warmReplicas`` back to 0; Serve scales in, the streams in flight (also on the replica being removed)
   finish, and the autoscaler removes the idle worker pod and its Ray node;
5. the NetworkPolicies the operator rendered (on by default, nothing in this suite turns them
   off) are enforced by kube-router on every node: everything above ran through them; from a
   pod of another namespace the dashboard (8265), the GCS (6379) and the serve port (8000) are
   refused while the peers the policies admit reach the same ports; a namespace added to
   ``serveFrom`` gets 8000 (an answered completion), and still nothing else.

Spill-over to the next pool, ``CapacityBlocked`` and queueing with back-pressure are the GPU pools
module's (``test_10_gpu_pools.py``, the multipool shape with the defaults). Times of each step are
printed (``-rA``) and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chain_support import (
    CLIENT_POD,
    FIGURES,
    KUBERAY_LABELS,
    KUBERAY_NAMESPACE,
    SERVED_NAME,
    Ground,
    Load,
    app_status,
    apply,
    chain_deployment,
    client_netns,
    cluster_of,
    cpu_pool,
    epoch,
    k2t,
    node_pool,
    pods,
    ray_nodes,
    remove_sandbox,
    running_replicas,
    sandbox_pod,
    scheduled_at,
    serve_replica_log,
    serve_replicas,
    serve_url,
    set_downscale_delay,
    wait,
    worker_pods,
)

from harness.polling import holds_for
from support import condition

NS = "chain-cpu"
NAME = "tiny"
#: Both CPU nodes of the chain campus, and no other, have this instance type: one pool, two
#: nodes, room for one worker pod each.
CPU_INSTANCE_TYPE = "m7i.xlarge"
#: The autoscaler removes an idle worker after this long (scenario 4 waits for it), except the
#: pods a pool keeps warm (scenario 3: ``warmReplicas``).
IDLE_TIMEOUT_S = 30
#: The one pool, over both CPU nodes.
POOL: dict[str, Any] = {
    **cpu_pool("cpu"),
    "nodeSelector": {"node.kubernetes.io/instance-type": CPU_INSTANCE_TYPE},
}
# Long reasoning streams for the drain scenario: at this machine's ~60-100 tokens/s per stream
# they outlast Serve's scale-in decision (~40 s after the load stops) by a minute or more.
DRAIN_TOKENS = 10_000
#: The same load for both scale-ups: Serve's target of 2 ongoing requests asks for 2 replicas.
LOAD_CLIENTS = 4
LOAD_TOKENS = 600
TIMES: dict[str, float] = {}
#: Serve's downscale delay while the replicas must stay, and when Serve is to scale in
#: (scenarios 3 and 4 set it: a lightweight Serve update, the replicas stay).
HOLD_S = 600
DOWNSCALE_S = 10


@pytest.fixture(scope="module")
def deployed(ground: Ground) -> Iterator[Ground]:
    ground.cluster.kubectl("create", "namespace", NS, check=False)
    doc = chain_deployment(
        NAME,
        NS,
        ground.model_dir,
        pools=[POOL],
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 2,
            "targetOngoingRequests": 2,
            "upscaleDelaySeconds": 5,
            # Serve keeps a replica it asked for while its vLLM starts with the load stopped
            # (scenarios 2 and 3); DOWNSCALE_S when a scenario wants the scale-in.
            "downscaleDelaySeconds": HOLD_S,
            "idleTimeoutSeconds": IDLE_TIMEOUT_S,
        },
        graceful_shutdown=300,
    )
    apply(ground, doc)
    yield ground
    remove_sandbox(ground, NS, CLIENT_POD)
    timings: dict[str, Any] = {k: round(v, 1) for k, v in TIMES.items()}
    timings["scale_up_steps_since_load"] = {k: _since_load(v) for k, v in STEPS.items()}
    print("\nchain timings (s):", timings)
    # Kept with the run's state (K2T_E2E_KEEP=1) for docs/benchmarks.md.
    (ground.state_dir / "chain-timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    ground.cluster.kubectl("delete", "k2t", NAME, "-n", NS, "--wait=false", check=False)
    wait(
        "the CPU deployment's Ray pods to go",
        lambda: (
            not worker_pods(ground, NS)
            and not ground.cluster.kubectl_json("get", "pods", "-n", NS)["items"]
        ),
        timeout=300,
    )


def _running_in(g: Ground, pool: str) -> list[dict[str, Any]]:
    return [
        p
        for p in worker_pods(g, NS)
        if p.get("spec", {}).get("nodeName")
        and node_pool(g, p["spec"]["nodeName"]) == pool
        and p["status"].get("phase") == "Running"
    ]


def _running_workers(g: Ground) -> list[dict[str, Any]]:
    return _running_in(g, "cpu-a") + _running_in(g, "cpu-b")


def _running_replicas_on(g: Ground, pod_names: set[str]) -> list[dict[str, Any]]:
    return [
        r
        for r in serve_replicas(NS, cluster_of(g, NS))
        if r.get("state") == "RUNNING" and r.get("node_instance_id") in pod_names
    ]


def _running_replicas(g: Ground) -> list[dict[str, Any]]:
    return running_replicas(NS, cluster_of(g, NS))


def test_first_replica_serves_from_the_pool(deployed: Ground) -> None:
    g = deployed
    t0 = time.monotonic()
    wait(
        "KubeRay to report the Serve application RUNNING (read from the real dashboard)",
        lambda: app_status(g, NS, NAME) == "RUNNING",
        timeout=600,
    )
    TIMES["deploy_to_running"] = time.monotonic() - t0
    workers = worker_pods(g, NS)
    assert len(workers) == 1
    assert node_pool(g, workers[0]["spec"]["nodeName"]) in ("cpu-a", "cpu-b")
    wait(
        "the worker pod's Ray node in Ray's own node list (through the head Service)",
        lambda: (
            workers[0]["status"]["podIP"]
            in {n["node_ip"] for n in ray_nodes(NS, cluster_of(g, NS))}
        ),
        timeout=120,
    )
    assert _running_replicas_on(g, {workers[0]["metadata"]["name"]})

    ready = wait(
        "the K2ThinkDeployment to be Ready",
        lambda: (c := condition(k2t(g, NS, NAME), "Ready")) and c["status"] == "True" and c,
        timeout=120,
    )
    assert ready["reason"] == "Serving"

    from openai import OpenAI

    from harness import netns

    # From a pod of the deployment's namespace: what the rendered serve policy admits by default.
    with netns.inside(client_netns(g, NS)):
        client = OpenAI(base_url=f"{serve_url(NS, NAME)}/v1", api_key="none", timeout=120)
        reply = client.chat.completions.create(
            model=SERVED_NAME, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
        )
    message = reply.choices[0].message
    assert (message.content or getattr(message, "reasoning", None) or "") != ""


#: Each scale-up's steps, epoch seconds (scenarios 2 and 3), for the figures and the record.
STEPS: dict[str, dict[str, float]] = {}


def _scale_up(
    g: Ground, old_replicas: set[str], old_pods: set[str], timeout: float
) -> tuple[dict[str, Any], dict[str, float]]:
    """The load (LOAD_CLIENTS streams) until Serve has asked for a new replica, then poll until
    that replica is RUNNING.

    The load stops once Serve's decision is made (the replica's actor exists): Serve holds the
    replica for its downscale delay (HOLD_S), and its vLLM starts on cores the load's streams do
    not share (on this 2-core ground they would slow the start several-fold; a real node has its
    own). Each step is noted when first seen, by the clock of the component that took it where
    it keeps one (the API server's timestamps for the pod, Ray's for its node and the replica's
    actor): ``pod_created`` (the autoscaler's ask, through KubeRay), ``pod_bound`` (the
    scheduler), ``ray_node_started`` (the raylet of the replica's node), ``replica_started``
    (Serve's replica actor), ``replica_running`` (this poll, every 1-3 s)."""
    t_load = time.time()
    load: Load | None = Load(
        serve_url(NS, NAME), LOAD_CLIENTS, via=client_netns(g, NS), max_tokens=LOAD_TOKENS
    )
    results: list[Any] = []
    steps: dict[str, float] = {"load": t_load}
    new_pods: dict[str, dict[str, Any]] = {}

    def look() -> dict[str, Any] | None:
        nonlocal load
        for pod in worker_pods(g, NS):
            name = pod["metadata"]["name"]
            if name not in old_pods:
                new_pods[name] = pod
                created = epoch(pod["metadata"]["creationTimestamp"])
                steps["pod_created"] = min(steps.get("pod_created", created), created)
        for replica in serve_replicas(NS, cluster_of(g, NS)):
            if replica["replica_id"] in old_replicas:
                continue
            if replica.get("start_time_s"):
                steps.setdefault("replica_started", float(replica["start_time_s"]))
            if load is not None:  # Serve has decided: the load's work is done
                steps["load_stopped"] = time.time()
                results.extend(load.stop(abort=True))
                load = None
            if replica.get("state") == "RUNNING":
                steps["replica_running"] = time.time()
                return dict(replica)
        return None

    try:
        replica = wait("a new Serve replica RUNNING", look, timeout=timeout)
    finally:
        if load is not None:
            results.extend(load.stop(abort=True))
    assert results and not [r for r in results if not r.ok and not r.aborted], results[:3]
    # The replica's own node and pod (a worker pod KubeRay replaced on the way is not it).
    node = next(n for n in ray_nodes(NS, cluster_of(g, NS)) if n["node_ip"] == replica["node_ip"])
    steps["ray_node_started"] = node["start_time_ms"] / 1000
    pod = next(
        p for p in worker_pods(g, NS) if p["metadata"]["name"] == replica["node_instance_id"]
    )
    bound = scheduled_at(pod, "True")
    if pod["metadata"]["name"] in new_pods and bound is not None:
        steps["pod_bound"] = bound
    return replica, steps


def _since_load(steps: dict[str, float]) -> dict[str, float]:
    """Each step as seconds since the load started, in the order they happened."""
    return {
        k: round(v - steps["load"], 1)
        for k, v in sorted(steps.items(), key=lambda kv: kv[1])
        if k != "load"
    }


@pytest.mark.timeout(1500)
def test_a_replica_through_the_whole_chain_on_a_new_node(deployed: Ground) -> None:
    g = deployed
    wait("the Serve application RUNNING", lambda: app_status(g, NS, NAME) == "RUNNING", 600)
    old_pods = {p["metadata"]["name"] for p in worker_pods(g, NS)}
    old_replicas = {r["replica_id"] for r in serve_replicas(NS, cluster_of(g, NS))}
    assert len(old_pods) == 1 and len(old_replicas) == 1
    # vLLM's start on a loaded 2-core machine: ~90 s quiet, over 8 min seen at load 20.
    replica, steps = _scale_up(g, old_replicas, old_pods, timeout=1200)
    STEPS["chain"] = steps
    assert replica["node_instance_id"] not in old_pods, replica
    assert {"pod_created", "pod_bound", "ray_node_started"} <= steps.keys(), steps
    FIGURES["chain_scale_up_s"] = steps["replica_running"] - steps["load"]
    print("\nchain scale-up, s after the load started:", json.dumps(_since_load(steps)))
    # One pod on each of the pool's nodes, each with its replica.
    workers = _running_workers(g)
    assert sorted(node_pool(g, p["spec"]["nodeName"]) for p in workers) == ["cpu-a", "cpu-b"]
    assert len(_running_replicas(g)) == 2


def _set_warm_replicas(g: Ground, warm: int) -> None:
    """``spec.pools[0].warmReplicas``; returns once the live RayCluster's group carries the
    minimum (the operator's patch: KubeRay does not carry a minReplicas-only change)."""
    g.cluster.kubectl(
        "patch", "k2thinkdeployments.k2think.dev", NAME, "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"pools": [{**POOL, "warmReplicas": warm}]}}),
    )  # fmt: skip

    # The floor's pods count only with warm ones (render/rayservice.py, _worker_bounds): without
    # any, minReplicas is 0 and the floor's pods stay because Serve's replicas use them.
    wanted = 1 + warm if warm else 0

    def live_minimum() -> bool:
        cluster = g.cluster.kubectl_json("get", "raycluster", cluster_of(g, NS), "-n", NS)
        (group,) = [w for w in cluster["spec"]["workerGroupSpecs"] if w["groupName"] == "cpu"]
        return bool(group.get("minReplicas", 0) == wanted)

    wait(f"the live RayCluster's group minReplicas at {wanted}", live_minimum, 120)


@pytest.mark.timeout(1500)
def test_serve_alone_places_a_replica_on_a_warm_node(deployed: Ground) -> None:
    """``pools[].warmReplicas: 1``: the pool keeps a worker node beyond the floor's, joined and
    idle past ``idleTimeoutSeconds``; Serve's next replica lands there with no pod created."""
    g = deployed
    # Every worker pod there is (a Failed one KubeRay has not removed yet included): none may be
    # created from here on.
    pods_before = {p["metadata"]["name"] for p in worker_pods(g, NS)}
    running_before = {p["metadata"]["name"] for p in _running_workers(g)}
    assert len(running_before) == 2, pods_before
    _set_warm_replicas(g, 1)
    # No load: Serve scales in to its floor once the downscale delay is short.
    set_downscale_delay(g, NS, NAME, DOWNSCALE_S)
    wait(
        "Serve to scale in to one replica",
        lambda: len(serve_replicas(NS, cluster_of(g, NS))) == 1 and len(_running_replicas(g)) == 1,
        timeout=300,
    )
    (kept,) = _running_replicas(g)
    idle = running_before - {kept["node_instance_id"]}
    (idle_pod,) = [p for p in _running_workers(g) if p["metadata"]["name"] in idle]
    set_downscale_delay(g, NS, NAME, HOLD_S)
    # The emptied node stays a joined Ray node well past the idle timeout: the warm replica.
    holds_for(
        "the idle warm node joined",
        lambda: (
            idle_pod["status"]["podIP"] in {n["node_ip"] for n in ray_nodes(NS, cluster_of(g, NS))}
            and {p["metadata"]["name"] for p in _running_workers(g)} == running_before
        ),
        IDLE_TIMEOUT_S + 30,
        interval=3.0,
    )
    # Both delay edits were lightweight Serve updates: the replica kept is the one that ran.
    assert [r["replica_id"] for r in _running_replicas(g)] == [kept["replica_id"]]
    replica, steps = _scale_up(g, {kept["replica_id"]}, pods_before, timeout=1200)
    STEPS["serve_alone"] = steps
    # Serve alone: on the node that was already there, and the chain below Serve did nothing.
    assert replica["node_instance_id"] == idle_pod["metadata"]["name"], replica
    assert {p["metadata"]["name"] for p in worker_pods(g, NS)} <= pods_before
    assert "pod_created" not in steps, steps
    FIGURES["serve_alone_scale_up_s"] = steps["replica_running"] - steps["load"]
    if "chain_scale_up_s" in FIGURES:  # scenario 2 ran in this selection
        FIGURES["chain_over_serve_ratio"] = (
            FIGURES["chain_scale_up_s"] / FIGURES["serve_alone_scale_up_s"]
        )
    print("\nServe alone scale-up, s after the load started:", json.dumps(_since_load(steps)))
    assert len(_running_replicas(g)) == 2


def test_scale_in_drains_streams_and_removes_the_pod_and_its_ray_node(deployed: Ground) -> None:
    g = deployed
    url = serve_url(NS, NAME)
    t0 = time.monotonic()
    # Two long streams start one after the other on the idle fleet, which Serve holds at two
    # replicas (HOLD_S): Serve's router sends the second to the replica without a request, so
    # each replica holds one stream and either one Serve stops is draining one.
    assert len(_running_replicas(g)) == 2, "scenario 3 left fewer than two replicas"
    # Nothing kept warm any more: the node Serve empties goes after the idle timeout.
    _set_warm_replicas(g, 0)
    via = client_netns(g, NS)
    streams = [Load(url, 1, via=via, max_tokens=DRAIN_TOKENS, once=True)]
    wait("the first long stream's first token", streams[0].first_token.is_set, timeout=120)
    streams.append(Load(url, 1, via=via, max_tokens=DRAIN_TOKENS, once=True))
    wait("the second long stream's first token", streams[1].first_token.is_set, timeout=120)
    # Two ongoing requests against a target of 2 per replica: Serve's demand is one replica;
    # with the short downscale delay it stops one while both streams run.
    set_downscale_delay(g, NS, NAME, DOWNSCALE_S)
    stopping = wait(
        "Serve to stop a replica (scale-in) while the streams run",
        lambda: [
            r
            for r in serve_replicas(NS, cluster_of(g, NS))
            if r.get("state") == "STOPPING" and r.get("node_instance_id")
        ],
        timeout=240,
    )
    victim = stopping[0]
    assert all(t.is_alive() for s in streams for t in s.threads), "a stream ended before scale-in"
    wait(
        f"Serve to finish stopping replica {victim['replica_id']}",
        lambda: all(
            r.get("replica_id") != victim["replica_id"]
            for r in serve_replicas(NS, cluster_of(g, NS))
        ),
        timeout=600,
    )
    drained = [r for s in streams for r in s.stop(timeout=600)]
    assert len(drained) == 2 and all(r.ok and r.finish_reason == "length" for r in drained), drained
    assert all(r.tokens == DRAIN_TOKENS for r in drained), drained
    # Serve's own record on the replica it stopped: it waited for a request in flight, then
    # drained (ray/serve/_private/replica.py, _drain_ongoing_requests).
    log = serve_replica_log(g, NS, victim["node_instance_id"], victim["replica_id"])
    assert re.search(r"to shut down: [1-9]\d* ongoing requests", log), log[-3000:]
    assert "Drained ongoing requests" in log, log[-3000:]
    removed = victim["node_instance_id"]
    wait(
        f"the autoscaler to remove the idle worker pod {removed} and every pending pod",
        lambda: len(ws := worker_pods(g, NS)) == 1 and ws[0]["metadata"]["name"] != removed,
        timeout=480,
    )
    TIMES["load_stop_to_pod_gone"] = time.monotonic() - t0
    wait(
        "Ray to have the head and one worker node left",
        lambda: len(ray_nodes(NS, cluster_of(g, NS))) == 2,
        timeout=180,
    )
    # The pool's two nodes held both replicas: nothing was ever refused for capacity.
    blocked = condition(k2t(g, NS, NAME), "CapacityBlocked")
    assert blocked is None or blocked["status"] == "False", blocked


OUTSIDER_NS = "chain-outsider"
ADMITTED_NS = "chain-admitted"


def _pod_netns(pod: dict[str, Any]) -> Any:
    from harness import netns

    return netns.netns_path(netns.netns_name(pod["metadata"]["uid"]))


def _verdicts(where: Any, targets: dict[str, tuple[str, int]]) -> dict[str, str]:
    """``open``/``refused``/``timeout`` of a TCP connect to each target, from network namespace
    ``where`` (kube-router REJECTs what no policy admits: a refused connect, as from a port
    nothing listens on; the same port open from an admitted peer tells the two apart)."""
    import errno
    import socket

    from harness import netns

    out = {}
    with netns.inside(where):
        for label, (addr, port) in targets.items():
            with socket.socket() as sock:
                sock.settimeout(3)
                code = sock.connect_ex((addr, port))
            out[label] = (
                "open"
                if code == 0
                else "refused"
                if code == errno.ECONNREFUSED
                else f"timeout({errno.errorcode.get(code, code)})"
            )
    return out


def _completion(where: Any) -> int:
    """HTTP status of a small completion through the serve Service, sent from ``where``."""
    import httpx

    from harness import netns

    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 4}
    with netns.inside(where):
        return int(
            httpx.post(f"{serve_url(NS, NAME)}/v1/completions", json=body, timeout=60).status_code
        )


@pytest.mark.timeout(900)
def test_network_policies_refuse_other_namespaces_and_admit_serve_from(deployed: Ground) -> None:
    from harness import policyagent

    g = deployed
    wait("the Serve application RUNNING", lambda: app_status(g, NS, NAME) == "RUNNING", 600)
    policies = g.cluster.kubectl_json("get", "networkpolicies", "-n", NS)["items"]
    names = sorted(p["metadata"]["name"] for p in policies)
    assert names == [f"{NAME}-ray-internal", f"{NAME}-serve"], names
    head = pods(g, NS, "ray.io/node-type=head")[0]
    # A worker that runs a replica (Serve runs a proxy on 8000 only where replicas are), seen
    # listening from inside its own pod, where no policy applies.
    worker = wait(
        "a worker pod whose Serve proxy listens",
        lambda: next(
            (
                w
                for w in _running_in(g, "cpu-a") + _running_in(g, "cpu-b")
                if _running_replicas_on(g, {w["metadata"]["name"]})
                and _verdicts(_pod_netns(w), {"own": (w["status"]["podIP"], 8000)})["own"] == "open"
            ),
            None,
        ),
        timeout=300,
    )
    head_ip, worker_ip = head["status"]["podIP"], worker["status"]["podIP"]
    # The agent of the head's node has a chain for each policy that selects the head pod.
    head_node = next(n for n in g.nodes if n.name == head["spec"]["nodeName"])
    rules = policyagent.filter_rules(head_node)
    for name in names:
        assert f"run through nw policy {name}" in rules, name

    targets = {
        "dashboard": (head_ip, 8265),
        "gcs": (head_ip, 6379),
        "serve-head": (head_ip, 8000),
        "serve-worker": (worker_ip, 8000),
    }
    outsider = sandbox_pod(g.cluster, OUTSIDER_NS, "probe", {"app": "probe"})
    admitted = sandbox_pod(g.cluster, ADMITTED_NS, "probe", {"app": "probe"})
    try:
        _check_verdicts(g, targets, outsider, admitted, worker)
    finally:
        remove_sandbox(g, OUTSIDER_NS, "probe")
        remove_sandbox(g, ADMITTED_NS, "probe")


def _check_verdicts(
    g: Ground, targets: dict[str, tuple[str, int]], outsider: Any, admitted: Any, worker: Any
) -> None:
    kuberay = _pod_netns(
        pods(g, KUBERAY_NAMESPACE, ",".join(f"{k}={v}" for k, v in KUBERAY_LABELS.items()))[0]
    )
    seen = {
        "outsider": _verdicts(outsider, targets),
        "admitted (before serveFrom)": _verdicts(admitted, targets),
        "own namespace (client pod)": _verdicts(client_netns(g, NS), targets),
        "KubeRay's pod": _verdicts(kuberay, targets),
        "a worker of the deployment": _verdicts(_pod_netns(worker), targets),
    }
    print("\nNetworkPolicy verdicts (before serveFrom):", json.dumps(seen, indent=1))
    every_port_refused = dict.fromkeys(targets, "refused")
    serve_only = {**every_port_refused, "serve-head": "open", "serve-worker": "open"}
    assert seen["outsider"] == every_port_refused, seen
    assert seen["admitted (before serveFrom)"] == every_port_refused, seen
    # Each refused port is open to the peer the policies admit to it.
    assert seen["own namespace (client pod)"] == serve_only, seen
    assert seen["KubeRay's pod"] == {**serve_only, "dashboard": "open"}, seen
    assert set(seen["a worker of the deployment"].values()) == {"open"}, seen

    # serveFrom: the admitted namespace (and the deployment's own, kept) may call 8000.
    g.cluster.kubectl(
        "patch", "k2t", NAME, "-n", NS, "--type=merge", "-p",
        json.dumps({"spec": {"networkPolicy": {"serveFrom": [{"namespace": NS}, {"namespace": ADMITTED_NS}]}}}),
    )  # fmt: skip
    t0 = time.monotonic()
    wait(
        "a completion answered from the admitted namespace",
        lambda: _completion(admitted) == 200,
        timeout=180,
    )
    TIMES["serve_from_patch_to_admitted_completion"] = time.monotonic() - t0
    after = {
        "outsider": _verdicts(outsider, targets),
        "admitted": _verdicts(admitted, targets),
    }
    print("NetworkPolicy verdicts (serveFrom admits chain-admitted):", json.dumps(after, indent=1))
    assert after["outsider"] == every_port_refused, after
    assert after["admitted"] == serve_only, after
    assert _completion(client_netns(g, NS)) == 200
