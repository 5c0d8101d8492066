"""The chain suite's test ground and the helpers its scenarios share.

Everything runs inside the namespaces ``e2e/chain/run.sh`` created; see ``conftest.py``.

NetworkPolicies are enforced on this ground (kube-router on every simulated node,
``harness.policyagent``), so the suite reaches pods the way things reach them in a cluster whose
CNI enforces policies: KubeRay's operator from a pod of its own namespace (``kuberay-system``),
the suite's reads of Ray's dashboard from the node hosting the head (as ``kubectl port-forward``
does: :func:`http_json`), and its OpenAI clients from a client pod in the deployment's namespace
(:func:`client_netns`), which the rendered policies admit to the serve port by default.

Ray's token authentication is on, as for a user (the default of ``spec.ray.auth``): KubeRay's
``authOptions`` put the token into every Ray container, workers and the autoscaler join with it,
KubeRay calls the dashboard with it, and so do the suite's own dashboard reads
(:func:`http_json`, the token read from the deployment's Secret ``<name>-ray-token`` as a user
with access to it would) and its Ray drivers (:func:`ray_driver_env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import Cluster, crashloop, gateway, netns, policyagent, processes, raynodes
from harness.binaries import kube_router_binary
from harness.campus import load_campus
from harness.kubeapi import ApiError, KubeAPI
from harness.polling import wait_for
from harness.processes import Proc
from k2think_operator.api.spec import POOL_FALLBACK_SECONDS
from k2think_operator.app.config import OperatorConfig
from support import OperatorProcess, apply_doc

HERE = Path(__file__).resolve().parent
E2E = HERE.parent
CAMPUS = E2E / "campus" / "chain.yaml"
SERVED_NAME = "k2-think-tiny"
POOL_LABEL = "k2think.dev/pool"
#: Where KubeRay's operator runs as a pod, with the labels of its Helm chart (what the rendered
#: NetworkPolicies admit to the dashboard by default: ``api/spec.py``, ``KubeRayPeer``).
KUBERAY_NAMESPACE = "kuberay-system"
KUBERAY_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}
CLIENT_POD = "k2t-client"
#: The defaults a user gets (issue #23), read from the operator itself: Ray's give-up time for
#: a pod that does not join (``autoscaling.poolFallbackSeconds``) and the operator's grace
#: before a pod the scheduler refuses spills to the next pool. No scenario changes them.
POOL_FALLBACK_S = POOL_FALLBACK_SECONDS
UNSCHEDULABLE_GRACE_S = OperatorConfig().unschedulable_grace_seconds
#: What the chain costs, filled by the scenarios that measure it (the GPU pools module: the
#: spill; the CPU module: a scale-up through the whole chain against Serve alone) and printed
#: as one ``chain figures:`` line at the end of the run (conftest.py), also written to
#: ``chain-figures.json`` in the ground's state directory.
FIGURES: dict[str, float] = {
    "pool_fallback_s": POOL_FALLBACK_S,
    "unschedulable_grace_s": UNSCHEDULABLE_GRACE_S,
}

#: Environment every Ray container of the suite's deployments gets (through spec.ray.env, as a
#: user would set it): no model hub, no telemetry, and timeouts that 2 busy cores can meet.
RAY_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # KubeRay injects 5 s for both when absent; on 2 shared cores a GCS call can take longer.
    "RAY_GCS_SERVER_REQUEST_TIMEOUT_SECONDS": "30",
    "RAY_SERVE_KV_TIMEOUT_S": "30",
    # Ray's node health check: 10 s timeout x 5 failures by default; vLLM start-up starves it.
    "RAY_health_check_timeout_ms": "30000",
    "RAY_health_check_failure_threshold": "10",
    # vLLM-CPU's KV cache: an explicit 1 GiB (plenty for the tiny model: 4 KiB of KV per token,
    # 256k tokens) instead of a share of the host's memory, which also skips the warm-up
    # forward pass vLLM runs to size the cache (vllm/v1/worker/cpu_worker.py,
    # CPUWorker._should_warm_up_model): replicas start faster on 2 busy cores.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # vLLM-CPU pins each engine worker to cores it picks from the host ("auto": here core 0,
    # with core 1 "reserved"; vllm/utils/ompmultiprocessing.py). The simulated pods share the
    # host's 2 cores, so every replica would land on core 0 and a starting replica would be
    # starved by the serving one; a real pod has its own cores.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


@dataclass
class Ground:
    cluster: Cluster
    kubelet: Proc
    #: The operator as a host process; None when the suite installs it itself (e2e/userpath/
    #: runs the chart's pods from the image instead).
    operator: OperatorProcess | None
    model_dir: Path
    venv: Path
    nodes: list[netns.NodeNet]
    agents: list[Proc]

    @property
    def state_dir(self) -> Path:
        assert self.cluster.state_dir is not None
        return self.cluster.state_dir

    def stop(self) -> list[str]:
        """Stop operator, stand-in (which stops every pod) and cluster; report leftovers."""
        if self.operator is not None:
            with contextlib.suppress(Exception):
                self.operator.stop()
        self.cluster.stop_kuberay()
        self.kubelet.stop(timeout=180)
        left = raynodes.all_pod_processes()
        described = [_describe(pid) for pid in left]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for agent in self.agents:
            agent.stop()
        keep = bool(os.environ.get("K2T_E2E_KEEP"))
        self.cluster.stop(remove_state=not keep)
        for node in self.nodes:
            netns.remove_node(node)
        return described


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmd = "?"
    return f"{pid} {cmd[:150]}"


def start_ground(*, operator: bool = True, name: str = "chain") -> Ground:
    """The chain ground; ``operator=False`` leaves the operator out (a suite that installs it as
    pods, e2e/userpath/); ``name``: the cluster's (its state dir ``e2e/.state/<name>``)."""
    netns.setup_ground()
    venv = Path(os.environ.get("K2T_CHAIN_VENV", str(E2E.parent / ".venv-dataplane")))
    # Every node of the campus runs pods with real processes: each is a network namespace with
    # its own bridge, iptables and policy agent (harness/netns.py, harness/policyagent.py).
    nodes = netns.plan_nodes(load_campus(CAMPUS).node_names())
    for node in nodes:
        netns.add_node(node, nodes)
    cluster = Cluster.start(
        campus=CAMPUS,
        name=name,
        pod_cidr=netns.KWOK_CIDR,
        apiserver_bind="0.0.0.0",
        timeout=300,
        node_overlays={n.name: netns.node_manifest_network(n) for n in nodes},
    )
    kubelet: Proc | None = None
    agents: list[Proc] = []
    try:
        agents = policyagent.start_agents(cluster, nodes, kube_router_binary())
        sd = cluster.state_dir
        assert sd is not None
        kubelet = processes.start(
            "raynodes",
            [sys.executable, "-m", "harness.raynodes", "--state-dir", str(sd), "--venv", str(venv)],
            sd,
            env={"PYTHONPATH": str(E2E)},
        )
        CRASH_LEDGERS.append(sd)
        # KubeRay's incremental upgrade is on here as a platform team turns it on: the gate, the
        # Gateway API's CRDs (KubeRay creates a Gateway before the first cluster of such a
        # RayService) and the operator told so (test_50_incremental_upgrade.py).
        cluster.install_crds(gateway.gateway_api_crds(), kuberay=False)
        start_kuberay_pod(cluster)
        from tiny_model import build_tiny_k2think

        model_dir = build_tiny_k2think(sd / "model" / SERVED_NAME, seed=0)
        global _TOKEN_API
        _TOKEN_API = cluster.api
        op = None
        if operator:
            op = OperatorProcess(
                cluster,
                ["--all-namespaces"],
                sd / "logs" / "operator.log",
                # The CapacityBlocked grace (which also starts spill-over) is the default a user
                # gets, 60 s: the suite shows the defaults (issue #23).
                env={"K2T_RESYNC_SECONDS": "20", "K2T_KUBERAY_INCREMENTAL_UPGRADE": "true"},
            ).start()
    except BaseException:
        cluster.stop_kuberay()
        if kubelet is not None:
            kubelet.stop(timeout=120)
        for agent in agents:
            agent.stop()
        cluster.stop(remove_state=False)
        for node in nodes:
            netns.remove_node(node)
        raise
    return Ground(cluster, kubelet, op, model_dir, venv, nodes, agents)


# ------------------------------------------------------------------------------ pods of the ground
def sandbox_pod(
    cluster: Cluster, ns: str, name: str, labels: dict[str, str], *, timeout: float = 120
) -> Path:
    """A pod that the kubelet stand-in gives a network namespace only (``raynodes.SANDBOX_LABEL``)
    on the head pool's node; returns the namespace's path once it is complete. Processes the
    harness runs in it (or threads it moves there, ``netns.inside``) are that pod to the rest of
    the cluster, NetworkPolicies included."""
    api = cluster.api
    assert api is not None
    with contextlib.suppress(ApiError):
        api.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    path = f"/api/v1/namespaces/{ns}/pods/{name}"
    if not api.exists(path):
        api.create(
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {**labels, raynodes.SANDBOX_LABEL: "true"},
                },
                "spec": {
                    "nodeSelector": {POOL_LABEL: "head"},
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": name, "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        )

    def ready() -> Path | None:
        pod = api.get(path)
        if not (pod.get("status") or {}).get("podIP"):
            return None
        name_ = netns.netns_name(pod["metadata"]["uid"])
        return netns.netns_path(name_) if netns.pod_network_ready(name_) else None

    found: Path = wait(f"the network namespace of pod {ns}/{name}", ready, timeout=timeout)
    return found


def start_kuberay_pod(cluster: Cluster) -> None:
    """KubeRay's operator as a pod of ``kuberay-system`` with its chart's labels: the process runs
    in that pod's network namespace and reaches the apiserver at the ``kubernetes`` Service."""
    where = sandbox_pod(cluster, KUBERAY_NAMESPACE, "kuberay-operator", KUBERAY_LABELS)
    from harness.cluster import write_kubeconfig

    assert cluster.state_dir is not None
    server = f"https://{netns.KUBERNETES_SERVICE_IP}:{cluster.ports['apiserver']}"
    kubeconfig = write_kubeconfig(
        cluster.state_dir / "kubeconfigs" / "ray-operator-pod",
        server,
        cluster.pki,
        "admin",
        "k2t-pod",
    )
    cluster.start_kuberay(
        netns=where, kubeconfig=kubeconfig, extra_args=[gateway.INCREMENTAL_UPGRADE_GATE]
    )


def remove_sandbox(ground: Ground, ns: str, name: str, *, timeout: float = 120) -> None:
    """Delete a :func:`sandbox_pod` and wait until it is gone (the stand-in removes its network
    namespace)."""
    api = _api(ground)
    path = f"/api/v1/namespaces/{ns}/pods/{name}"
    with contextlib.suppress(ApiError):
        api.delete(path)
    wait(f"pod {ns}/{name} to go", lambda: not api.exists(path), timeout=timeout)
    if name == CLIENT_POD:
        _CLIENTS.pop(ns, None)


_CLIENTS: dict[str, Path] = {}


def client_netns(ground: Ground, ns: str) -> Path:
    """The network namespace of the suite's client pod in ``ns`` (made on first use): where its
    OpenAI clients run, a workload of the deployment's namespace (the rendered serve policy
    admits every pod of it by default)."""
    found = _CLIENTS.get(ns)
    if found is None or not found.exists():
        found = _CLIENTS[ns] = sandbox_pod(ground.cluster, ns, CLIENT_POD, {"app": CLIENT_POD})
    return found


# ------------------------------------------------------------------------------ deployments
def tiny_architecture() -> dict[str, Any]:
    import tiny_model as tm

    params = 2 * tm.TOKENIZER_VOCAB_SIZE * tm.HIDDEN_SIZE + tm.NUM_HIDDEN_LAYERS * (
        4 * tm.HIDDEN_SIZE**2 + 3 * tm.HIDDEN_SIZE * tm.INTERMEDIATE_SIZE
    )
    return {
        "family": "qwen2",
        "parametersBillions": round(params / 1e9, 4),
        "layers": tm.NUM_HIDDEN_LAYERS,
        "hiddenSize": tm.HIDDEN_SIZE,
        "attentionHeads": tm.NUM_ATTENTION_HEADS,
        "kvHeads": tm.NUM_KEY_VALUE_HEADS,
        "headDim": tm.HIDDEN_SIZE // tm.NUM_ATTENTION_HEADS,
        "vocabSize": tm.TOKENIZER_VOCAB_SIZE,
        "maxPositionEmbeddings": tm.MAX_POSITION_EMBEDDINGS,
    }


def cpu_pool(name: str) -> dict[str, Any]:
    """A CPU-profile pool whose worker pod (3 CPUs: one replica's 2 plus room, 12Gi) fills one
    node of the chain campus."""
    return {
        "name": name,
        "gpuType": "CPU",
        "gpusPerNode": 1,
        "cpuPerGpu": "3",
        "memoryPerGpu": "12Gi",
        "nodeSelector": {POOL_LABEL: name},
    }


def chain_deployment(
    name: str,
    namespace: str,
    model_dir: Path,
    *,
    pools: list[dict[str, Any]],
    autoscaling: dict[str, Any],
    graceful_shutdown: int = 120,
) -> dict[str, Any]:
    """The suite's K2ThinkDeployment: Ray token auth and NetworkPolicies at their defaults (on)."""
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {
                "preset": "custom",
                "source": f"file://{model_dir}",
                "servedModelName": SERVED_NAME,
                # Long enough for the drain scenario's streams (test_10_cpu_chain.py).
                "maxModelLen": 16384,
                "architecture": tiny_architecture(),
            },
            "pools": pools,
            "autoscaling": autoscaling,
            "engine": {
                "gpuMemoryUtilization": 0.1,
                "maxNumSeqs": 16,
                "reasoningParser": "deepseek_r1",
                # vLLM's CPU engine without torch.compile: ~7 s less per replica start, the
                # same decoding speed for the tiny model (e2e/dataplane/dataplane_config.py).
                "extraArgs": {"enforce_eager": True},
            },
            "serving": {"maxOngoingRequests": 8, "gracefulShutdownSeconds": graceful_shutdown},
            "ray": {
                "head": {
                    "nodeSelector": {POOL_LABEL: "head"},
                    # One logical CPU: the OpenAI ingress fits, an LLM replica (2 CPUs) never
                    # does, so every replica needs a worker pod.
                    "resources": {
                        "limits": {"cpu": "1", "memory": "8Gi"},
                        "requests": {"cpu": "1", "memory": "8Gi"},
                    },
                },
                "env": [{"name": k, "value": v} for k, v in RAY_ENV.items()],
            },
        },
    }


def apply(ground: Ground, doc: dict[str, Any]) -> None:
    apply_doc(ground.cluster, doc)


# ------------------------------------------------------------------------------ observations
# Read through the harness's API client (one kept-alive connection), not kubectl: the scenarios
# poll for minutes, and a kubectl process per look costs CPU that a starting Ray node needs
# (Ray's raylet gives its agents a fixed 15 s to start).
def _api(ground: Ground) -> KubeAPI:
    api = ground.cluster.api
    assert api is not None
    return api


def _get_or_none(ground: Ground, path: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = _api(ground).get(path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return found


def pods(ground: Ground, ns: str, *selector: str) -> list[dict[str, Any]]:
    query = {"labelSelector": ",".join(selector)} if selector else {}
    found: list[dict[str, Any]] = _api(ground).get(f"/api/v1/namespaces/{ns}/pods", **query)[
        "items"
    ]
    return found


def worker_pods(ground: Ground, ns: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(ground, ns, "ray.io/node-type=worker")
        if not p["metadata"].get("deletionTimestamp")
    ]


def pool_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get(POOL_LABEL, ""))


_NODE_POOLS: dict[str, str] = {}


def node_pool(ground: Ground, node: str) -> str:
    """The pool label of a node (the campus's nodes never change it, so it is looked up once)."""
    if node not in _NODE_POOLS:
        obj = _api(ground).get(f"/api/v1/nodes/{node}")
        _NODE_POOLS[node] = str(obj["metadata"]["labels"].get(POOL_LABEL, ""))
    return _NODE_POOLS[node]


def head_service(ground: Ground, ns: str, name: str) -> str:
    return f"{name}-head-svc.{ns}.svc.cluster.local"


def serve_url(ns: str, name: str) -> str:
    return f"http://{name}-serve-svc.{ns}.svc.cluster.local:8000"


def dashboard(ns: str, name: str) -> str:
    """The Ray dashboard through a head Service: the RayService's own (``<rayservice>-head-svc``,
    created once it is Ready) or, given a RayCluster's name, that cluster's."""
    return f"http://{name}-head-svc.{ns}.svc.cluster.local:8265"


_TOKEN_API: KubeAPI | None = None


def ray_token(ns: str, service: str = "") -> str | None:
    """The Ray token of the deployment in ``ns`` (its Secret ``<name>-ray-token``, key
    ``auth_token``): the one whose name prefixes ``service`` (a head Service of its RayService or
    RayCluster), else the only one in the namespace; None when none exists (auth off)."""
    import base64

    if _TOKEN_API is None:
        return None
    secrets = [
        s
        for s in _TOKEN_API.get(f"/api/v1/namespaces/{ns}/secrets")["items"]
        if s["metadata"]["name"].endswith("-ray-token") and "auth_token" in (s.get("data") or {})
    ]
    named = [s for s in secrets if service.startswith(s["metadata"]["name"][: -len("-ray-token")])]
    chosen = named or secrets
    if not chosen:
        return None
    return base64.b64decode(chosen[0]["data"]["auth_token"]).decode()


def http_json(url: str, timeout: float = 10.0, *, token: bool = True) -> Any:
    """GET ``url`` from the node that hosts the pod behind its host name (a head Service): how
    ``kubectl port-forward`` reaches a pod, and what kube-router admits whatever the policies
    say (its node's own traffic). From anywhere else the rendered policies refuse the dashboard
    to all but KubeRay's pods. With Ray's token (``x-ray-authorization``, as KubeRay sends it)
    when the deployment has one and ``token``."""
    host = urllib.parse.urlsplit(url).hostname or ""
    headers = {}
    parts = host.split(".")
    secret = ray_token(parts[1], parts[0]) if token and len(parts) > 2 else None
    if secret:
        headers["x-ray-authorization"] = f"Bearer {secret}"
    node = netns.from_node_of(socket.gethostbyname(host))
    request = urllib.request.Request(url, headers=headers)
    with node, urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def ray_driver_env(ns: str) -> dict[str, str]:
    """What a Ray driver run in a pod of ``ns`` needs to join its cluster: KubeRay's token env
    (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), or auth explicitly off when the deployment
    has none (Ray 2.60 turns token auth on when ``~/.ray/auth_token`` exists)."""
    secret = ray_token(ns)
    if secret is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secret}


def cluster_of(ground: Ground, ns: str) -> str:
    """The RayCluster behind the deployment (its head Service exists from the start)."""
    heads = pods(ground, ns, "ray.io/node-type=head")
    return str(heads[0]["metadata"]["labels"]["ray.io/cluster"]) if heads else ""


def ray_nodes(ns: str, name: str) -> list[dict[str, Any]]:
    """Ray's own view of its nodes (the dashboard's state API), alive ones only."""
    data = http_json(f"{dashboard(ns, name)}/api/v0/nodes?limit=100&detail=true")
    result = data["data"]["result"]["result"]
    return [n for n in result if n.get("state") == "ALIVE"]


def rayservice(ground: Ground, ns: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(ground, f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{name}")


def k2t(ground: Ground, ns: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(
        ground, f"/apis/k2think.dev/v1alpha1/namespaces/{ns}/k2thinkdeployments/{name}"
    )


def app_status(ground: Ground, ns: str, name: str) -> str | None:
    rs = rayservice(ground, ns, name) or {}
    apps = ((rs.get("status") or {}).get("activeServiceStatus") or {}).get(
        "applicationStatuses"
    ) or {}
    app = apps.get("llm") or {}
    return app.get("status")


#: State directories of the running ground: every :func:`wait` reads their crash ledgers.
CRASH_LEDGERS: list[Path] = []


def wait(what: str, probe: Any, timeout: float) -> Any:
    """Bounded polling until ``probe`` returns something truthy (``wait_for`` alone would take
    an empty list for an answer), which is returned. Every 1-3 s: the chain's steps take tens of
    seconds, and each look costs the busy machine some CPU. A container of the ground that
    crash-loops meanwhile ends the wait at once with its exit code and log (harness.crashloop)."""
    since = time.time()

    def look() -> Any:
        for state_dir in CRASH_LEDGERS:
            crashloop.raise_if_crashlooping(state_dir, since=since)
        return probe() or None

    return wait_for(what, look, timeout=timeout, interval=1.0, max_interval=3.0)


def stamp() -> float:
    return time.monotonic()


# ------------------------------------------------------------------------------ load
@dataclass
class StreamResult:
    ok: bool
    # vLLM's own count (``usage.completion_tokens`` of the stream's last chunk) once the stream
    # ends; SSE chunks until then. Not the chunk count: when vLLM's output loop falls behind (busy
    # cores) it sends several tokens in one chunk, so chunks undercount (8,810 chunks for a full
    # 10,000-token stream in one CI run).
    tokens: int
    finish_reason: str | None
    error: str | None
    started: float
    ended: float
    # Closed by the client itself (``Load.stop(abort=True)``): neither served nor failed.
    aborted: bool = False
    #: The HTTP status of a refused request (the client's ``APIStatusError``), else None.
    status: int | None = None
    #: When the first token arrived (``time.monotonic()``), None if none did.
    first_token_at: float | None = None


class Load:
    """``clients`` threads, each streaming chat completions through the serve Service with the
    official ``openai`` client until stopped (or once, with ``once=True``), from the network
    namespace ``via`` (a client pod's: :func:`client_netns`).

    ``stop(abort=True)`` closes the streams in flight from the client side instead of waiting
    for them: Serve's proxy sees the disconnect and cancels the request, so Serve's count of
    ongoing requests drops at once rather than over the last requests' remaining tokens.

    ``together=True`` holds every client's first request until all clients are ready to send
    (a barrier): starting threads one by one spreads a burst over seconds, long enough on a
    busy machine for the first requests to finish before the last are sent (a CI run's burst
    never filled Serve's queue that way).

    ``pause``: each client's think time between the end of one stream and its next request, as
    a chat user has (0: back to back). A paced client keeps requests flowing across a change
    without keeping a replica decoding all the time, which on 2 shared cores slows every
    replica that starts meanwhile."""

    def __init__(
        self,
        base_url: str,
        clients: int,
        *,
        via: Path,
        max_tokens: int,
        once: bool = False,
        api_key: str = "none",
        together: bool = False,
        pause: float = 0.0,
    ) -> None:
        import threading

        self.base_url = base_url
        self.api_key = api_key
        self.via = via
        self.max_tokens = max_tokens
        self.once = once
        self.pause = pause
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        # Set when any stream has received its first token (the request is on a replica).
        self.first_token = threading.Event()
        #: Streams that have received their first token so far (each request on a replica).
        self.first_tokens = 0
        self.results: list[StreamResult] = []
        self._lock = threading.Lock()
        # Bounded: a client that cannot get ready breaks the barrier and the rest send anyway.
        self._gate = threading.Barrier(clients, timeout=120) if together else None
        self.threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(clients)
        ]
        for t in self.threads:
            t.start()

    def _one(self, client: Any) -> StreamResult:
        started = time.monotonic()
        tokens, finish, first_at = 0, None, None
        try:
            stream = client.chat.completions.create(
                model=SERVED_NAME,
                messages=[{"role": "user", "content": "Think step by step about autoscaling."}],
                max_tokens=self.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                if chunk.choices:
                    tokens += 1
                    if first_at is None:
                        first_at = time.monotonic()
                        with self._lock:
                            self.first_tokens += 1
                    self.first_token.set()
                    finish = chunk.choices[0].finish_reason or finish
                if self.abort_event.is_set() and finish is None:
                    stream.close()
                    return StreamResult(
                        False, tokens, None, None, started, time.monotonic(), aborted=True,
                        first_token_at=first_at,
                    )  # fmt: skip
            return StreamResult(
                finish is not None, tokens, finish, None, started, time.monotonic(),
                first_token_at=first_at,
            )  # fmt: skip
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            response = getattr(exc, "response", None)
            body = getattr(response, "text", "") if response is not None else ""
            error = repr(exc) + (f" body={body[:300]!r}" if body else "")
            if exc.__cause__ is not None:  # the transport's own error (reset, EOF, ...)
                error += f" from {exc.__cause__!r}"
            return StreamResult(
                False, tokens, finish, error, started, time.monotonic(), status=status,
                first_token_at=first_at,
            )  # fmt: skip

    def _run(self) -> None:
        import contextlib
        import threading

        from openai import OpenAI  # before the gate: the import lock would serialise it

        # One client per simulated user, as an application holds one: its connections are
        # pooled and closed with it, not left to the garbage collector request after request.
        client = OpenAI(
            base_url=f"{self.base_url}/v1", api_key=self.api_key, timeout=900, max_retries=0
        )
        with netns.inside(self.via), client:
            # The first request only: a looping client's next one goes at once.
            if self._gate is not None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    self._gate.wait()
            while True:
                result = self._one(client)
                with self._lock:
                    self.results.append(result)
                if self.once or self.stop_event.wait(self.pause):
                    return

    def stop(self, timeout: float = 900, *, abort: bool = False) -> list[StreamResult]:
        self.stop_event.set()
        if abort:
            self.abort_event.set()
        for t in self.threads:
            t.join(timeout)
        return list(self.results)

    def failures(self) -> list[StreamResult]:
        with self._lock:
            return [r for r in self.results if not r.ok and not r.aborted]


def serve_deployments(ns: str, name: str) -> dict[str, Any]:
    """The ``llm`` application's deployments as Serve reports them (name -> details)."""
    data = http_json(f"{dashboard(ns, name)}/api/serve/applications/")
    app = (data.get("applications") or {}).get("llm") or {}
    return dict(app.get("deployments") or {})


def serve_replicas(ns: str, name: str, deployment: str = "LLMServer") -> list[dict[str, Any]]:
    """Replicas of a deployment of the app (the LLM one by default, ``OpenAiIngress`` for the
    ingress) as Serve reports them (state, node IP)."""
    for dname, dep in serve_deployments(ns, name).items():
        if dname.startswith(deployment):
            return list(dep.get("replicas") or [])
    return []


def running_replicas(ns: str, name: str, deployment: str = "LLMServer") -> list[dict[str, Any]]:
    return [r for r in serve_replicas(ns, name, deployment) if r.get("state") == "RUNNING"]


def llm_deployment_config(ns: str, name: str) -> dict[str, Any]:
    """The LLM deployment's config as Ray's Serve reports it (not as rendered)."""
    deployments = serve_deployments(ns, name)
    (found,) = [d for d in deployments if d.startswith("LLMServer")]
    config: dict[str, Any] = deployments[found]["deployment_config"]
    return config


def set_downscale_delay(g: Ground, ns: str, name: str, seconds: float) -> None:
    """Patch ``spec.autoscaling.downscaleDelaySeconds`` and return once Serve itself reports it
    (the operator renders it as an override of the LLM deployment, KubeRay PUTs the serve config,
    Serve applies it to the running replicas: docs/autoscaling.md). No replica may start for it:
    an edit of the delays is a lightweight update, where a new code version would replace every
    replica (callers edit with no load that could make Serve scale out meanwhile)."""
    cluster = cluster_of(g, ns)
    before = {r["replica_id"] for r in serve_replicas(ns, cluster)}
    g.cluster.kubectl(
        "patch", "k2thinkdeployments.k2think.dev", name, "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"autoscaling": {"downscaleDelaySeconds": seconds}}}),
    )  # fmt: skip
    wait(
        f"Serve to report a downscale delay of {seconds} s",
        lambda: (
            (llm_deployment_config(ns, cluster).get("autoscaling_config") or {}).get(
                "downscale_delay_s"
            )
            == seconds
        ),
        timeout=180,
    )
    started = {r["replica_id"] for r in serve_replicas(ns, cluster)} - before
    assert not started, f"the delay edit started replicas {started} (had {before})"


def epoch(stamp: str) -> float:
    """An API server timestamp (RFC 3339, ``Z``) as epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def scheduled_at(pod: dict[str, Any], status: str) -> float | None:
    """When the pod's PodScheduled condition last became ``status`` (epoch seconds, the API
    server's own timestamp)."""
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == status:
            stamp = cond.get("lastTransitionTime")
            if stamp:
                return epoch(stamp)
    return None


def serve_replica_log(ground: Ground, ns: str, pod: str, replica_id: str) -> str:
    """A Serve replica's own log file (what ``kubectl logs`` of the pod's Ray session would
    show): in the pod's ``/tmp/ray`` while the pod runs, under ``ray-logs/`` once the stand-in
    kept it at the pod's removal (harness/raynodes.py)."""
    base = raynodes.pod_dir(ground.state_dir, ns, pod)
    found = sorted(base.glob(f"tmp/ray/session_*/logs/serve/replica_*_{replica_id}.log")) + sorted(
        base.glob(f"ray-logs/session_*/serve/replica_*_{replica_id}.log")
    )
    return "".join(p.read_text(errors="replace") for p in found)


def serve_logs(ground: Ground, ns: str, pod: str) -> str:
    """Every Serve log file of a pod's Ray session (replicas, proxy, controller), read as
    :func:`serve_replica_log` reads one replica's."""
    base = raynodes.pod_dir(ground.state_dir, ns, pod)
    found = sorted(base.glob("tmp/ray/session_*/logs/serve/*.log")) + sorted(
        base.glob("ray-logs/session_*/serve/*.log")
    )
    return "".join(p.read_text(errors="replace") for p in found)


def replica_bundles(serve_config_v2: str) -> tuple[list[dict[str, float]], str]:
    """The placement group Serve LLM asks for one replica of the rendered config: our bundles,
    the replica actor's own CPU merged into the first, ``accelerator_type:<X>: 0.001`` on each
    when the config pins a GPU type (Ray's ``LLMServer.get_deployment_options``)."""
    import yaml

    serve = yaml.safe_load(serve_config_v2)
    llm = serve["applications"][0]["args"]["llm_configs"][0]
    pg = llm["placement_group_config"]
    bundles = [dict(b) for b in pg["bundles"]]
    if llm.get("accelerator_type"):
        for b in bundles:
            b[f"accelerator_type:{llm['accelerator_type']}"] = 0.001
    bundles[0]["CPU"] = bundles[0].get("CPU", 0) + 1
    return bundles, str(pg["strategy"])


#: A Ray driver run inside the head pod (``kubectl exec`` style): holds one placement group
#: until its stdin closes, printing where Ray placed it.
PG_DRIVER = """
import json, sys
import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
bundles, strategy = json.loads(sys.argv[1]), sys.argv[2]
pg = placement_group(bundles, strategy=strategy, name="k2think-replica-probe")
ready = pg.wait(timeout_seconds=int(sys.argv[3]))
table = placement_group_table(pg)
print("K2T " + json.dumps({"ready": ready, "nodes": sorted(set(table["bundles_to_node_id"].values()))}), flush=True)
sys.stdin.read()
remove_placement_group(pg)
print("K2T " + json.dumps({"removed": True}), flush=True)
"""


def driver_line(stream: Any) -> dict[str, Any]:
    """The next ``K2T {json}`` line of the driver (Ray also prints autoscaler events there)."""
    for line in stream:
        if line.startswith("K2T "):
            result: dict[str, Any] = json.loads(line[4:])
            return result
    return {}
