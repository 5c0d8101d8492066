"""The chain on CPU, end to end, with real Ray processes behind KWOK's pods.

One CPU-profile K2ThinkDeployment (the tiny model) autoscaling 1..3 over two CPU pools with room
for one worker pod each (``e2e/campus/chain.yaml``), tests in file order on one deployment:

1. the first replica runs in the first pool and serves through the RayService's serve Service;
2. load -> Serve asks for a second replica -> Ray's autoscaler asks the first pool's group, whose
   pod cannot be scheduled -> after the operator's CapacityBlocked grace (the default, 60 s) the
   operator caps that group's ``maxReplicas`` on the live RayCluster (``SpillOver``) -> the
   autoscaler removes the refused pod and scales the second pool's group at once (not after
   ``autoscaling.poolFallbackSeconds``, left at its default of 600 s) -> the pod lands there ->
   its Ray node joins -> the replica serves;
3. more load -> a third replica with every pool full -> ``CapacityBlocked`` with the scheduler's
   message, and clients only queue (no request fails);
4. load stops -> Serve scales in, the streams in flight (also on the replica being removed)
   finish, and the autoscaler removes the idle worker pod and its Ray node;
5. the NetworkPolicies the operator rendered (on by default, nothing in this suite turns them
   off) are enforced by kube-router on every node: everything above ran through them; from a
   pod of another namespace the dashboard (8265), the GCS (6379) and the serve port (8000) are
   refused while the peers the policies admit reach the same ports; a namespace added to
   ``serveFrom`` gets 8000 (an answered completion), and still nothing else.

Times of each step are printed (``-rA``) and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from chain_support import (
    CLIENT_POD,
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
    k2t,
    node_pool,
    pods,
    pool_of,
    ray_nodes,
    rayservice,
    remove_sandbox,
    sandbox_pod,
    serve_replica_log,
    serve_replicas,
    serve_url,
    wait,
    worker_pods,
)

from support import condition

NS = "chain-cpu"
NAME = "tiny"
# The defaults a user gets (issue #23): Ray's give-up time for a pod that does not join
# (``autoscaling.poolFallbackSeconds``) and the operator's grace before a refused pod spills.
FALLBACK_S = 600
GRACE_S = 60
# Long reasoning streams for the drain scenario: at this machine's ~60-100 tokens/s per stream
# they outlast Serve's scale-in decision (~40 s after the load stops) by a minute or more.
DRAIN_TOKENS = 10_000
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def deployed(ground: Ground) -> Iterator[Ground]:
    ground.cluster.kubectl("create", "namespace", NS, check=False)
    doc = chain_deployment(
        NAME,
        NS,
        ground.model_dir,
        pools=[cpu_pool("cpu-a"), cpu_pool("cpu-b")],
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetOngoingRequests": 2,
            "upscaleDelaySeconds": 5,
            "downscaleDelaySeconds": 10,
            # Long enough that a fresh worker is not removed before Serve places its replica.
            "idleTimeoutSeconds": 60,
        },
        graceful_shutdown=300,
    )
    apply(ground, doc)
    yield ground
    # Loads a selection (-k) left running: stop them before the deployment goes, or each client
    # would retry against a vanished endpoint in a tight loop.
    for load in LOAD.values():
        load.stop(timeout=60, abort=True)
    remove_sandbox(ground, NS, CLIENT_POD)
    timings = {k: round(v, 1) for k, v in TIMES.items()}
    print("\nchain timings (s):", timings)
    print("chain figures:", json.dumps({k: round(v, 1) for k, v in FIGURES.items()}))
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


def _pending(g: Ground) -> list[dict[str, Any]]:
    return [p for p in worker_pods(g, NS) if not p.get("spec", {}).get("nodeName")]


#: The chain's spill-over figures (issue #23), printed as one ``chain figures:`` line.
FIGURES: dict[str, float] = {"pool_fallback_s": FALLBACK_S, "unschedulable_grace_s": GRACE_S}
FIRST_POOL_UNSCHEDULABLE: dict[str, float] = {}


def _scheduled_at(pod: dict[str, Any], status: str) -> float | None:
    """When the pod's PodScheduled condition last became ``status`` (epoch seconds)."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == status:
            stamp = cond.get("lastTransitionTime")
            if stamp:
                return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


def _note_unschedulable(g: Ground) -> bool:
    """Remember when the scheduler first refused a cpu-a worker pod (its own timestamp)."""
    for pod in _pending(g):
        if pool_of(pod) == "cpu-a":
            since = _scheduled_at(pod, "False")
            if since is not None:
                FIRST_POOL_UNSCHEDULABLE.setdefault("since", since)
                return True
    return False


def _since_unschedulable(g: Ground, overflow: dict[str, Any]) -> float:
    """The first pool's pod refused -> the overflow pool's pod bound, by the API's timestamps."""
    bound = _scheduled_at(overflow, "True")
    assert bound is not None and "since" in FIRST_POOL_UNSCHEDULABLE
    return bound - FIRST_POOL_UNSCHEDULABLE["since"]


def _running_replicas_on(g: Ground, pod_names: set[str]) -> list[dict[str, Any]]:
    return [
        r
        for r in serve_replicas(NS, cluster_of(g, NS))
        if r.get("state") == "RUNNING" and r.get("node_instance_id") in pod_names
    ]


def test_first_replica_serves_from_the_first_pool(deployed: Ground) -> None:
    g = deployed
    t0 = time.monotonic()
    wait(
        "KubeRay to report the Serve application RUNNING (read from the real dashboard)",
        lambda: app_status(g, NS, NAME) == "RUNNING",
        timeout=600,
    )
    TIMES["deploy_to_running"] = time.monotonic() - t0
    workers = worker_pods(g, NS)
    assert [node_pool(g, p["spec"]["nodeName"]) for p in workers] == ["cpu-a"]
    wait(
        "the cpu-a pod's Ray node in Ray's own node list (through the head Service)",
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


LOAD: dict[str, Load] = {}


# Its bounded waits add up to more than the suite's default 900 s per test (the overflow
# replica's vLLM start alone may take many minutes on a loaded machine).
@pytest.mark.timeout(1800)
def test_load_spills_over_to_the_second_pool_when_the_first_is_full(deployed: Ground) -> None:
    g = deployed
    url = serve_url(NS, NAME)
    t0 = time.monotonic()
    # Four clients with long streams: Serve's target of 2 ongoing requests asks for 2 replicas.
    LOAD["base"] = Load(url, 4, via=client_netns(g, NS), max_tokens=600)
    # Ray's autoscaler asks the first pool first (spec order): its pod cannot be scheduled.
    wait(
        "a worker pod of group cpu-a that the scheduler cannot place (the first pool is full)",
        lambda: _note_unschedulable(g),
        timeout=240,
    )
    TIMES["load_to_first_pool_pending"] = time.monotonic() - t0
    t_pending = time.monotonic()
    # Past the grace the operator caps the cpu-a group at the one pod it holds; the autoscaler
    # removes the refused pod and scales cpu-b at once. The bound is far below FALLBACK_S: Ray's
    # own give-up cannot be what moves the replica.
    spill = wait(
        "SpillOver=True: the cpu-a group capped on the live RayCluster",
        lambda: (c := condition(k2t(g, NS, NAME), "SpillOver")) and c["status"] == "True" and c,
        timeout=GRACE_S + 120,
    )
    assert spill["message"] == "pool cpu-a is full at 1 worker pod(s): new replicas go to cpu-b"
    raycluster = g.cluster.kubectl_json("get", "raycluster", cluster_of(g, NS), "-n", NS)
    by_group = {w["groupName"]: w for w in raycluster["spec"]["workerGroupSpecs"]}
    assert by_group["cpu-a"]["maxReplicas"] == 1
    rendered = rayservice(g, NS, NAME)
    assert rendered is not None
    assert {
        w["groupName"]: w["maxReplicas"]
        for w in rendered["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    }["cpu-a"] > 1  # the RayService is left as the spec says
    overflow = wait(
        "a worker pod of cpu-b bound to a node",
        lambda: [
            p for p in worker_pods(g, NS) if pool_of(p) == "cpu-b" and p["spec"].get("nodeName")
        ],
        timeout=GRACE_S + 240,
    )
    FIGURES["first_pool_full_to_overflow_pod_bound_s"] = _since_unschedulable(g, overflow[0])
    wait(
        "a worker pod Running in pool cpu-b",
        lambda: _running_in(g, "cpu-b"),
        timeout=240,
    )
    TIMES["first_pool_pending_to_overflow_pod_running"] = time.monotonic() - t_pending
    # Any Running cpu-b pod: KubeRay replaces a worker pod whose Ray failed to start (on this
    # busy machine Ray's raylet can give up on its slow-starting agents: ray#65983), so allow a
    # few attempts.
    wait(
        "a cpu-b pod's Ray node to join the cluster",
        lambda: (
            {p["status"]["podIP"] for p in _running_in(g, "cpu-b")}
            & {n["node_ip"] for n in ray_nodes(NS, cluster_of(g, NS))}
        ),
        timeout=420,
    )
    wait(
        "a Serve replica RUNNING on a cpu-b pod",
        lambda: _running_replicas_on(g, {p["metadata"]["name"] for p in _running_in(g, "cpu-b")}),
        # vLLM's start on a loaded 2-core machine: 90 s quiet, over 8 min seen at load 20.
        timeout=900,
    )
    TIMES["load_to_second_replica_serving"] = time.monotonic() - t0
    TIMES["first_pool_full_to_overflow_replica_serving"] = time.monotonic() - t_pending
    FIGURES["first_pool_full_to_overflow_serving_s"] = (
        time.time() - FIRST_POOL_UNSCHEDULABLE["since"]
    )
    # The first pool still has exactly its one pod: the refused pod is gone (the autoscaler
    # terminated it for the group's max, long before any give-up).
    wait(
        "the refused cpu-a pod to be removed",
        lambda: (
            not any(p["metadata"]["labels"].get("ray.io/group") == "cpu-a" for p in _pending(g))
        ),
        timeout=120,
    )
    assert len(_running_in(g, "cpu-a")) == 1
    assert not LOAD["base"].failures(), LOAD["base"].failures()[:3]


def test_every_pool_full_is_capacity_blocked_and_clients_only_queue(deployed: Ground) -> None:
    g = deployed
    url = serve_url(NS, NAME)
    t0 = time.monotonic()
    # Eight more clients: Serve wants a third replica; both pools have no room left.
    LOAD["more"] = Load(url, 8, via=client_netns(g, NS), max_tokens=300)
    blocked = wait(
        "CapacityBlocked=True on the K2ThinkDeployment",
        lambda: (
            (c := condition(k2t(g, NS, NAME), "CapacityBlocked")) and c["status"] == "True" and c
        ),
        timeout=300,
    )
    TIMES["third_replica_demand_to_capacity_blocked"] = time.monotonic() - t0
    assert "cannot be scheduled" in blocked["message"]
    assert "Insufficient cpu" in blocked["message"] or "didn't match" in blocked["message"], (
        blocked["message"]
    )
    # Requests queue in Serve meanwhile: none has failed.
    assert not LOAD["more"].failures(), LOAD["more"].failures()[:3]
    assert not LOAD["base"].failures(), LOAD["base"].failures()[:3]


def test_scale_in_drains_streams_and_removes_the_pod_and_its_ray_node(deployed: Ground) -> None:
    g = deployed
    url = serve_url(NS, NAME)
    t0 = time.monotonic()
    # The load's clients hang up (Serve cancels their requests at once, instead of finishing up
    # to 600 tokens each while Serve's demand already falls); then two long streams start one
    # after the other on the idle fleet: Serve's router sends the second to the replica without
    # a request, so each replica holds one stream and either one Serve stops is draining one.
    results = LOAD.pop("more").stop(abort=True) + LOAD.pop("base").stop(abort=True)
    assert results and not [r for r in results if not r.ok and not r.aborted], results
    via = client_netns(g, NS)
    streams = [Load(url, 1, via=via, max_tokens=DRAIN_TOKENS, once=True)]
    wait("the first long stream's first token", streams[0].first_token.is_set, timeout=120)
    streams.append(Load(url, 1, via=via, max_tokens=DRAIN_TOKENS, once=True))
    wait("the second long stream's first token", streams[1].first_token.is_set, timeout=120)
    # Two ongoing requests against a target of 2 per replica: Serve's demand is one replica
    # once its 30 s look-back window has forgotten the load, then 10 s of downscale delay.
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
    wait(
        "CapacityBlocked to clear",
        lambda: (c := condition(k2t(g, NS, NAME), "CapacityBlocked")) and c["status"] == "False",
        timeout=120,
    )


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
