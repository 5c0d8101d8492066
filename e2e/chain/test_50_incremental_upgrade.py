"""KubeRay's incremental upgrade on the chain ground: real Ray, a real Gateway, step by step.

``upgradeStrategy: NewClusterWithIncrementalUpgrade`` as a platform team runs it: KubeRay v1.6.2
with its ``RayServiceIncrementalUpgrade`` gate on, the Gateway API's CRDs, Traefik as the
Gateway API implementation (in a pod's network namespace of ``k2t-gateway``, harness/gateway.py)
and the operator told the gate is on (chain_support.start_ground). One CPU-profile deployment of
two fixed replicas, ``maxSurgePercent: 50``, ``stepSizePercent: 50``:

1. Traefik accepts the Gateway and the HTTPRoute KubeRay writes (the conditions KubeRay waits
   for), and a completion sent to the Gateway's address is served by the Ray cluster behind it;
   the NetworkPolicies admit the gateway's namespace because ``serveFrom`` names it.
2. A change of the Ray pods' environment (a new Ray cluster, as an image bump is) while a client
   streams through the Gateway: KubeRay raises the new cluster's Serve ``target_capacity`` to 50,
   moves 50% of the traffic to it, lowers the old one's to 50, raises the new one's to 100, moves
   the rest, and retires the old cluster. Asserted from samples (the statuses and the route every
   second, each cluster's steps on whichever side of the status holds it; the replicas and pods
   every few seconds): each of those steps seen in order, in the RayService's status, in the
   HTTPRoute's weights and in the
   K2ThinkDeployment's ``status.upgrade``; the LLM replicas of both clusters together never more
   than ``(1 + maxSurge)`` of the fleet (3 of 2); every completion the client sent through the
   Gateway served; the new cluster serving through the Gateway at the end and the old one gone.

The worker pods of both clusters are sampled too and reported: a replica Serve removes leaves its
pod idle until the Ray autoscaler's ``idleTimeoutSeconds``, so the pods can briefly exceed the
replicas (docs/serving-path.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from chain_support import (
    CLIENT_POD,
    SERVED_NAME,
    Ground,
    Load,
    StreamResult,
    _api,
    apply,
    chain_deployment,
    client_netns,
    cpu_pool,
    k2t,
    pods,
    rayservice,
    remove_sandbox,
    sandbox_pod,
    serve_replicas,
    wait,
)

from harness import ApiError, gateway, netns
from harness.processes import Proc
from support import condition

NS = "chain-upgrade"
NAME = "upg"
GATEWAY_NS = "k2t-gateway"
GATEWAY_CLASS = "traefik"
REPLICAS = 2
MAX_SURGE = 50
STEP = 50
#: The fleet's replicas may reach this during the upgrade, no more: (1 + maxSurge) x fleet.
SURGE_CEILING = REPLICAS * (100 + MAX_SURGE) // 100
#: Two CPU pods per CPU node (2 CPUs: one replica's placement group and actor, 6Gi): room for
#: both clusters' replicas at the surge and a pod idling out beside them.
POOL: dict[str, Any] = {
    **cpu_pool("cpu"),
    "cpuPerGpu": "2",
    "memoryPerGpu": "6Gi",
    "nodeSelector": {"node.kubernetes.io/instance-type": "m7i.xlarge"},
}


@dataclass
class TraefikPod:
    ip: str
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{gateway.LISTENER_PORT}"


@pytest.fixture(scope="module")
def traefik(ground: Ground) -> Iterator[TraefikPod]:
    """Traefik as a pod of ``k2t-gateway`` (its network namespace, an admin kubeconfig reaching
    the API server at the ``kubernetes`` Service, as KubeRay's pod has), and its GatewayClass."""
    from harness.cluster import write_kubeconfig

    g = ground
    g.cluster.kubectl("apply", "-f", "-", input=json.dumps(gateway.gateway_class(GATEWAY_CLASS)))
    where = sandbox_pod(g.cluster, GATEWAY_NS, "traefik", {"app": "traefik"})
    pod = _api(g).get(f"/api/v1/namespaces/{GATEWAY_NS}/pods/traefik")
    ip = pod["status"]["podIP"]
    assert g.cluster.state_dir is not None
    kubeconfig = write_kubeconfig(
        g.cluster.state_dir / "kubeconfigs" / "traefik-pod",
        f"https://{netns.KUBERNETES_SERVICE_IP}:{g.cluster.ports['apiserver']}",
        g.cluster.pki,
        "admin",
        "k2t-pod",
    )
    proc = gateway.start_traefik(
        g.cluster.state_dir, netns=where, kubeconfig=kubeconfig, status_ip=ip
    )
    try:
        import httpx

        def pinged() -> bool:
            with netns.inside(where):
                try:
                    return bool(
                        httpx.get("http://127.0.0.1:8082/ping", timeout=3).status_code == 200
                    )
                except httpx.HTTPError:
                    return False

        wait("Traefik's ping", pinged, timeout=120)
        yield TraefikPod(ip, proc)
    finally:
        proc.stop(10)
        remove_sandbox(g, GATEWAY_NS, "traefik")


@pytest.fixture(scope="module")
def deployed(ground: Ground, traefik: TraefikPod) -> Iterator[Ground]:
    ground.cluster.kubectl("create", "namespace", NS, check=False)
    doc = chain_deployment(NAME, NS, ground.model_dir, pools=[POOL], autoscaling={})
    spec = doc["spec"]
    del spec["autoscaling"]
    spec["replicas"] = REPLICAS
    spec["upgradeStrategy"] = "NewClusterWithIncrementalUpgrade"
    spec["incrementalUpgrade"] = {
        "gatewayClassName": GATEWAY_CLASS,
        "maxSurgePercent": MAX_SURGE,
        "stepSizePercent": STEP,
        "intervalSeconds": 10,
    }
    # The Gateway's pods call the serve port: its namespace is one the policy admits.
    spec["networkPolicy"] = {"serveFrom": [{"namespace": NS}, {"namespace": GATEWAY_NS}]}
    apply(ground, doc)
    yield ground
    remove_sandbox(ground, NS, CLIENT_POD)
    ground.cluster.kubectl("delete", "k2t", NAME, "-n", NS, "--wait=false", check=False)
    wait(
        "the upgrade deployment's pods to go",
        lambda: not _api(ground).get(f"/api/v1/namespaces/{NS}/pods")["items"],
        timeout=300,
    )


def _active_cluster(g: Ground) -> str:
    rs = rayservice(g, NS, NAME)
    assert rs is not None, "no RayService"
    return str(rs["status"]["activeServiceStatus"]["rayClusterName"])


def _gateway_objects(g: Ground) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    api = _api(g)
    base = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}"
    found = []
    for path in (f"{base}/gateways/{NAME}-gateway", f"{base}/httproutes/{NAME}-httproute"):
        found.append(api.get(path) if api.exists(path) else None)
    return found[0], found[1]


def _true(conditions: list[dict[str, Any]] | None, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions or [])


def _route_weights(route: dict[str, Any] | None) -> dict[str, int]:
    """Backend Service -> weight, from the HTTPRoute KubeRay writes."""
    if route is None:
        return {}
    (rule,) = route["spec"]["rules"]
    return {ref["name"]: int(ref.get("weight", 1)) for ref in rule.get("backendRefs") or []}


def _completion(url: str) -> int:
    import httpx

    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 4}
    return int(httpx.post(f"{url}/v1/completions", json=body, timeout=120).status_code)


def test_the_gateway_serves_the_ray_cluster(deployed: Ground, traefik: TraefikPod) -> None:
    g = deployed
    ready = wait(
        "the K2ThinkDeployment Ready",
        lambda: (c := condition(k2t(g, NS, NAME), "Ready")) and c["status"] == "True" and c,
        timeout=900,
    )
    assert ready["reason"] == "Serving"
    gone = condition(k2t(g, NS, NAME), "IncrementalUpgradeUnavailable")
    assert gone is not None and gone["status"] == "False", gone

    def accepted() -> tuple[dict[str, Any], dict[str, Any]] | None:
        gw, route = _gateway_objects(g)
        if gw is None or route is None:
            return None
        gw_conditions = (gw.get("status") or {}).get("conditions")
        gw_ok = _true(gw_conditions, "Accepted") and _true(gw_conditions, "Programmed")
        parents = (route.get("status") or {}).get("parents") or []
        route_ok = any(
            _true(p.get("conditions"), "Accepted") and _true(p.get("conditions"), "ResolvedRefs")
            for p in parents
        )
        return (gw, route) if gw_ok and route_ok else None

    gw, route = wait(
        "Traefik to accept KubeRay's Gateway and HTTPRoute (what KubeRay waits for)",
        accepted,
        timeout=180,
    )
    assert gw["spec"]["gatewayClassName"] == GATEWAY_CLASS
    # Traefik reports where it listens: what a client of the Gateway calls.
    assert traefik.ip in [a.get("value") for a in gw["status"].get("addresses") or []], gw["status"]
    active = _active_cluster(g)
    assert _route_weights(route) == {f"{active}-serve-svc": 100}
    with netns.inside(client_netns(g, NS)):
        status = wait(
            "a completion through the Gateway", lambda: _completion(traefik.url) == 200, 180
        )
    assert status


@dataclass
class Samples:
    """What the upgrade looked like, every few seconds."""

    rayservice: list[dict[str, Any]] = field(default_factory=list)
    #: When each ``rayservice`` sample was read (``time.monotonic()``, the clients' clock).
    at: list[float] = field(default_factory=list)
    weights: list[dict[str, int]] = field(default_factory=list)
    upgrade_status: list[dict[str, Any]] = field(default_factory=list)
    replicas: list[dict[str, int]] = field(default_factory=list)
    pods: list[int] = field(default_factory=list)
    #: Every Ray pod's address seen -> its name (Traefik's access log names backends by address).
    pod_at: dict[str, str] = field(default_factory=dict)

    def steps(self, cluster: str, key: str) -> list[int]:
        """The distinct values of ``<key>`` for Ray cluster ``cluster`` in the order they came,
        whichever side (``active`` or ``pending``) of the RayService's status held it: the new
        cluster's last steps can be seen only once it is promoted (KubeRay may move the last
        traffic, take the old cluster to 0 and promote within a few seconds, less than a look)."""
        seen: list[int] = []
        for status in self.rayservice:
            for name, found in _by_cluster(status):
                value = found.get(key)
                if name == cluster and value is not None and (not seen or seen[-1] != value):
                    seen.append(int(value))
        return seen


def _by_cluster(status: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(Ray cluster, its part of the status) for each side of a RayService's status that names
    a cluster."""
    for side in ("active", "pending"):
        found = status.get(f"{side}ServiceStatus") or {}
        if found.get("rayClusterName"):
            yield str(found["rayClusterName"]), found


def _in_order(seen: list[int], wanted: list[int]) -> bool:
    """``wanted`` is a subsequence of ``seen``."""
    values = iter(seen)
    return all(any(v == w for v in values) for w in wanted)


def _first_seen(samples: Samples) -> dict[tuple[str, str, int], int]:
    """(Ray cluster, key, value) -> index of the first sample whose RayService status showed it."""
    out: dict[tuple[str, str, int], int] = {}
    for index, status in enumerate(samples.rayservice):
        for name, found in _by_cluster(status):
            for key in ("targetCapacity", "trafficRoutedPercent"):
                value = found.get(key)
                if value is not None:
                    out.setdefault((name, key, int(value)), index)
    return out


def _surge_violations(samples: Samples) -> list[dict[str, Any]]:
    """Samples where both clusters were in play and KubeRay's invariants did not hold: the two
    capacities at most 100 + maxSurge, the new cluster's traffic never beyond its capacity, the
    two traffic shares summing to 100."""
    bad = []
    for status in samples.rayservice:
        active = status.get("activeServiceStatus") or {}
        pending = status.get("pendingServiceStatus") or {}
        if not pending.get("rayClusterName") or pending.get("targetCapacity") is None:
            continue
        capacity = int(active.get("targetCapacity", 100)) + int(pending["targetCapacity"])
        traffic = int(pending.get("trafficRoutedPercent", 0))
        if (
            capacity > 100 + MAX_SURGE
            or traffic > int(pending["targetCapacity"])
            or int(active.get("trafficRoutedPercent", 100)) + traffic != 100
        ):
            bad.append({"active": active, "pending": pending})
    return bad


#: A request counts as crossing a step when it was in flight within this many seconds of the
#: sample that first showed the step (samples are a second apart; the client sends about every
#: 1.5 s, longer when a stream slows down).
STEP_COVER_S = 6.0


def _in_flight_near(results: list[StreamResult], at: float, within: float) -> bool:
    return any(r.started <= at + within and r.ended >= at - within for r in results)


def _explain_failures(
    failed: list[StreamResult], samples: Samples, traefik: TraefikPod
) -> dict[str, Any]:
    """What a failed request met, for the report: its times on the wall clock, the RayService's
    status around them, and Traefik's own account of every request it could not serve (which
    pod, of which cluster, and how long it waited)."""
    wall = time.time() - time.monotonic()

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t + wall, UTC).strftime("%H:%M:%S.%f")[:-3]

    statuses = []
    for r in failed:
        near = [
            (samples.at[i], status)
            for i, status in enumerate(samples.rayservice)
            if r.started - 5 <= samples.at[i] <= r.ended + 5
        ]
        for at, status in near[:: max(1, len(near) // 6)]:
            statuses.append(
                {
                    "at": stamp(at),
                    **{
                        side: {
                            k: (status.get(f"{side}ServiceStatus") or {}).get(k)
                            for k in ("rayClusterName", "targetCapacity", "trafficRoutedPercent")
                        }
                        for side in ("active", "pending")
                    },
                }
            )
    refused = [
        {
            "at": line.at.strftime("%H:%M:%S"),
            "status": line.status,
            "backend": line.backend,
            "pod": samples.pod_at.get(urlsplit(line.backend).hostname or "", "?"),
            "ms": line.duration_ms,
        }
        for line in gateway.parse_access_log(traefik.proc.log.read_text(errors="replace"))
        if line.status >= 500
    ]
    return {
        "failed": [
            {
                "started": stamp(r.started),
                "ended": stamp(r.ended),
                "status": r.status,
                "error": r.error,
            }
            for r in failed
        ],
        "rayservice_around_them": statuses,
        "traefik_5xx": refused,
    }


def _llm_replicas(ns: str, cluster: str) -> int:
    try:
        replicas = serve_replicas(ns, cluster)
    except OSError:  # a cluster's dashboard not up yet, or gone
        return 0
    return len([r for r in replicas if r.get("state") in ("RUNNING", "STARTING", "UPDATING")])


@pytest.mark.timeout(2400)
def test_a_new_ray_cluster_takes_over_step_by_step(deployed: Ground, traefik: TraefikPod) -> None:
    g = deployed
    with netns.inside(client_netns(g, NS)):
        # Scenario 1's proof, again: without a route the client below would only spin on 404s.
        assert _completion(traefik.url) == 200, "the Gateway does not serve the deployment"
    before = _active_cluster(g)
    # One chat user: a short stream, then a second's think time. Requests keep flowing across
    # every step (asserted below) while the old cluster's replica does not decode all the time
    # on the 2 cores the new cluster's replicas start on.
    client = Load(traefik.url, 1, via=client_netns(g, NS), max_tokens=32, pause=1.0)
    samples = Samples()
    t0 = time.monotonic()
    # A change of every Ray pod's template (as an image bump is): a new Ray cluster.
    env = [
        *chain_deployment(NAME, NS, g.model_dir, pools=[POOL], autoscaling={})["spec"]["ray"]["env"]
    ]
    env.append({"name": "K2T_UPGRADE_MARK", "value": "2"})
    g.cluster.kubectl(
        "patch", "k2t", NAME, "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"ray": {"env": env}}}),
    )  # fmt: skip

    # The RayService's status, the HTTPRoute's weights and status.upgrade (cheap reads) every
    # second on a thread of their own, so that the slower looks below (Serve's replicas through
    # each cluster's dashboard, which may be starting) never make a step KubeRay holds for a
    # few seconds go unseen; one lock keeps the samples in the order they were read.
    lock = threading.Lock()

    def look_at_status() -> dict[str, Any]:
        with lock:
            status: dict[str, Any] = (rayservice(g, NS, NAME) or {}).get("status") or {}
            samples.rayservice.append(status)
            samples.at.append(time.monotonic())
            samples.weights.append(_route_weights(_gateway_objects(g)[1]))
            samples.upgrade_status.append(
                dict((k2t(g, NS, NAME) or {}).get("status", {}).get("upgrade") or {})
            )
            return status

    done_looking = threading.Event()

    def look_every_second() -> None:
        while not done_looking.wait(1.0):
            try:
                look_at_status()
            except (ApiError, OSError):  # the next look tells
                continue

    looker = threading.Thread(target=look_every_second, daemon=True)
    looker.start()

    def sample() -> bool:
        status = look_at_status()
        clusters = {
            str(s["rayClusterName"])
            for s in (
                status.get("activeServiceStatus") or {},
                status.get("pendingServiceStatus") or {},
            )
            if s.get("rayClusterName")
        }
        samples.replicas.append({c: _llm_replicas(NS, c) for c in sorted(clusters)})
        ray_pods = pods(g, NS, "ray.io/node-type")
        for p in ray_pods:
            if p["status"].get("podIP"):
                samples.pod_at[p["status"]["podIP"]] = p["metadata"]["name"]
        samples.pods.append(
            len(
                [
                    p
                    for p in ray_pods
                    if p["metadata"]["labels"].get("ray.io/node-type") == "worker"
                    and p["status"].get("phase") not in ("Succeeded", "Failed")
                ]
            )
        )
        active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
        return bool(
            active
            and active != before
            and not status.get("pendingServiceStatus", {}).get("rayClusterName")
        )

    try:
        wait("the new Ray cluster to serve alone (the upgrade done)", sample, timeout=1800)
    finally:
        done_looking.set()
        looker.join(timeout=30)
        results = client.stop(timeout=300)
    took = time.monotonic() - t0
    after = _active_cluster(g)
    peak_replicas = max(sum(r.values()) for r in samples.replicas)
    report = {
        "took_s": round(took),
        "new_target_capacity": samples.steps(after, "targetCapacity"),
        "new_traffic": samples.steps(after, "trafficRoutedPercent"),
        "old_target_capacity": samples.steps(before, "targetCapacity"),
        "peak_llm_replicas": peak_replicas,
        "peak_worker_pods": max(samples.pods),
        "requests": len(results),
    }
    print("\nincremental upgrade:", json.dumps(report))
    # KubeRay's steps, in order (a sample may miss a value KubeRay held for less than one look,
    # never the order): the new cluster's capacity up by maxSurge, the traffic by stepSize up
    # to that capacity, the old cluster's capacity down by maxSurge.
    assert _in_order(samples.steps(after, "targetCapacity"), [50, 100]), report
    assert _in_order(samples.steps(after, "trafficRoutedPercent"), [50, 100]), report
    # The old cluster's capacity only went down, by maxSurge (KubeRay promotes the new cluster
    # in the same reconcile that takes the old one to 0, so 0 itself may never be seen).
    old = samples.steps(before, "targetCapacity")
    assert 50 in old and old == sorted(old, reverse=True), report
    # Interleaved as the surge requires (a sample can show two steps at once): the old cluster
    # down to 50 no earlier than the new one had 50% of the traffic, the new one to 100 no
    # earlier than that; and in every sample KubeRay's invariants held.
    first = _first_seen(samples)
    assert (
        first[(after, "trafficRoutedPercent", 50)]
        <= first[(before, "targetCapacity", 50)]
        <= first[(after, "targetCapacity", 100)]
    ), first
    assert not _surge_violations(samples), _surge_violations(samples)[:3]
    # The route's weights went the same way, two backends summing to 100 while both served.
    split = [w for w in samples.weights if len(w) == 2]
    assert split and all(sum(w.values()) == 100 for w in split), samples.weights
    assert any(sorted(w.values()) == [50, 50] for w in split), samples.weights
    # The operator's status said where it stood.
    assert any(s.get("pendingTargetCapacity") == 50 for s in samples.upgrade_status), (
        samples.upgrade_status
    )
    # Never more replicas than the surge allows.
    assert peak_replicas <= SURGE_CEILING, samples.replicas
    # Every completion sent through the Gateway meanwhile was served, and requests were in
    # flight at every step KubeRay took (a client that stopped early would prove nothing).
    failed = [r for r in results if not r.ok]
    assert results and not failed, _explain_failures(failed, samples, traefik)
    promoted = next(
        i
        for i, status in enumerate(samples.rayservice)
        if (status.get("activeServiceStatus") or {}).get("rayClusterName") == after
    )
    steps = {
        "new cluster 50% of the traffic": first[(after, "trafficRoutedPercent", 50)],
        "old cluster capacity 50": first[(before, "targetCapacity", 50)],
        "new cluster capacity 100": first[(after, "targetCapacity", 100)],
        "new cluster promoted": promoted,
    }
    uncovered = {
        step: round(samples.at[i] - t0)
        for step, i in steps.items()
        if not _in_flight_near(results, samples.at[i], STEP_COVER_S)
    }
    assert not uncovered, f"no request within {STEP_COVER_S} s of {uncovered} (s after start)"
    # The end: the new cluster alone behind the Gateway, the old one gone, status.upgrade gone.
    assert after != before
    # KubeRay rewrites the HTTPRoute after the promotion: for a reconcile or two it may still
    # list the old cluster's Service at weight 0.
    wait(
        "the HTTPRoute to send everything to the new cluster alone",
        lambda: _route_weights(_gateway_objects(g)[1]) == {f"{after}-serve-svc": 100},
        timeout=60,
    )
    wait(
        f"the old Ray cluster {before} deleted",
        lambda: not _api(g).exists(f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/{before}"),
        timeout=300,
    )
    done = wait(
        "the deployment Ready with no upgrade in its status",
        lambda: (
            (d := k2t(g, NS, NAME))
            and "upgrade" not in d["status"]
            and (condition(d, "Ready") or {}).get("status") == "True"
            and d
        ),
        timeout=180,
    )
    assert done
    with netns.inside(client_netns(g, NS)):
        assert _completion(traefik.url) == 200
