"""A NetworkPolicy agent on every simulated node of the chain ground: kube-router's policy controller.

Why kube-router (``github.com/cloudnativelabs/kube-router/v2``, :data:`VERSION` in
``e2e/build/versions.env``): it builds from the Go module proxy with a plain ``go install``, and
its NetworkPolicy controller needs only what a network namespace has: ``iptables``
(``iptables-save``/``-restore``, Debian's nf_tables backend) and ``ipset``, both executed as
programs, plus ``br_netfilter``'s per-namespace ``bridge-nf-call-iptables`` for pod-to-pod
packets on one node's bridge. Its routing (BGP) and service proxy (IPVS) controllers are off:
the ground routes pod ranges itself (``harness.netns``) and resolves Services through
``/etc/hosts``. Calico's felix wants its datastore and a CNI plugin set up around it, Cilium
needs eBPF programs loaded into the kernel: neither fits a machine without a container runtime.
The proxy serves kube-router v2.1.0 only, and security flaws are reported against that
version: it is a test-ground component that enforces the rendered policies so the suite can
measure them, never a recommendation for a cluster (docs/security.md).

How it runs, as a DaemonSet pod with ``hostNetwork`` would: one process per node, started in the
node's network namespace with ``NODE_NAME`` set, authenticating as ``system:kube-router`` (a
client certificate from the harness CA, bound to :data:`RBAC_RULES`, what kube-router's own
manifests grant) against the apiserver's ``kubernetes`` Service address. It finds its node's
pods by ``status.hostIP`` (KWOK sets it to the node's ``InternalIP``, harness/netns.py) and
puts a firewall chain in front of each: packets routed in from other nodes (``FORWARD -d``),
bridged from pods of the same node (``-m physdev --physdev-is-bridged``) and sent by the node
itself (``OUTPUT``: always accepted, as for a kubelet's probes) go through the chains of the
NetworkPolicies that select the pod; whatever no policy admits is REJECTed.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import netns, processes
from .commands import SERVICE_CIDR
from .pki import issue_client_cert
from .polling import wait_for

USER = "system:kube-router"
CLIENT_STEM = "kube-router"
ROLE = "k2t-kube-router"
HEALTH_PORT = 20244  # kube-router's default, one per node namespace
#: Full resync besides the event-driven ones (pod, namespace and policy changes trigger a sync
#: at once); kube-router's default is 5 minutes.
SYNC_PERIOD = "1m"
RBAC_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [""],
        "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
]


def build_kube_router_argv(binary: Path, *, kubeconfig: Path) -> list[str]:
    """Only the policy controller: no BGP routing, no IPVS service proxy, no load balancer."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--health-port={HEALTH_PORT}",
        "--metrics-port=0",
        f"--iptables-sync-period={SYNC_PERIOD}",
        "--v=1",
    ]


def rbac_objects() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": ROLE},
            "rules": RBAC_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ROLE,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
    ]


def healthy(node: netns.NodeNet) -> bool:
    """kube-router's health endpoint on the node's address: 200 once its policy controller has
    run a full sync (it heartbeats at the start of every sync)."""
    try:
        url = f"http://{node.ip}:{HEALTH_PORT}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def filter_rules(node: netns.NodeNet) -> str:
    """The node's iptables filter table (``iptables-save``), for assertions and post-mortems."""
    return subprocess.run(
        ["ip", "netns", "exec", node.netns, "iptables-save", "-t", "filter"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


_JUMP = re.compile(
    r"-d (?P<ip>[0-9.]+)/32 .*rule to jump traffic destined to POD name:(?P<pod>\S+) "
    r"namespace: (?P<ns>\S+) "
)


def pods_by_ip(rules: str) -> dict[str, set[str]]:
    """``namespace/pod`` kube-router guards at each pod IP, from the comments of its jump rules
    in an ``iptables-save`` of the filter table (kube-router v2.1.0, ``netpol/pod.go``)."""
    found: dict[str, set[str]] = {}
    for match in _JUMP.finditer(rules):
        found.setdefault(match["ip"], set()).add(f"{match['ns']}/{match['pod']}")
    return found


def ip_ownership_report(nodes: Sequence[netns.NodeNet], api_pods: Sequence[Any]) -> str:
    """A post-mortem for a failed chain scenario: per node, which pod kube-router guards at each
    IP next to the pod the API server has there, with every disagreement marked. A wrong owner
    (the previous holder of a reused IP) would apply the other pod's NetworkPolicies."""
    live: dict[str, set[str]] = {}
    for pod in api_pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if ip and not (pod.get("spec") or {}).get("hostNetwork"):
            phase = status.get("phase")
            gone = " (deleting)" if meta.get("deletionTimestamp") else ""
            live.setdefault(ip, set()).add(
                f"{meta.get('namespace')}/{meta.get('name')} {phase}{gone}"
            )
    lines = []
    for node in nodes:
        try:
            guarded = pods_by_ip(filter_rules(node))
        except subprocess.CalledProcessError as exc:
            lines.append(f"{node.name}: iptables-save failed: {exc}")
            continue
        for ip in sorted(guarded, key=lambda a: tuple(int(x) for x in a.split("."))):
            api = sorted(live.get(ip, {"(no pod)"}))
            names = {a.split(" ")[0] for a in api}
            mark = "" if guarded[ip] == names else "  <-- differs"
            lines.append(f"{node.name} {ip}: kube-router {sorted(guarded[ip])}, API {api}{mark}")
    twice = {ip: sorted(owners) for ip, owners in live.items() if len(owners) > 1}
    if twice:
        lines.append(f"IPs held by more than one pod in the API: {twice}")
    return "\n".join(lines)


def start_agents(
    cluster: Any, nodes: Sequence[netns.NodeNet], binary: Path, *, timeout: float = 120.0
) -> list[processes.Proc]:
    """kube-router on each of ``nodes`` (``cluster``: a started ``harness.Cluster``); returns once
    every one answers its health check."""
    from .cluster import FIELD_MANAGER, write_kubeconfig

    api, sd = cluster.api, cluster.state_dir
    for obj in rbac_objects():
        kind = "clusterroles" if obj["kind"] == "ClusterRole" else "clusterrolebindings"
        path = f"/apis/rbac.authorization.k8s.io/v1/{kind}/{obj['metadata']['name']}"
        api.apply(path, obj, manager=FIELD_MANAGER)
    issue_client_cert(cluster.pki, CLIENT_STEM, USER)
    server = f"https://{netns.KUBERNETES_SERVICE_IP}:{cluster.ports['apiserver']}"
    kubeconfig = write_kubeconfig(
        sd / "kubeconfigs" / "kube-router", server, cluster.pki, CLIENT_STEM, "k2t-node"
    )
    argv = build_kube_router_argv(binary, kubeconfig=kubeconfig)
    procs = [
        processes.start(
            f"kube-router-{node.name}",
            argv,
            sd,
            env={"NODE_NAME": node.name},
            netns=netns.netns_path(node.netns),
        )
        for node in nodes
    ]

    def all_healthy() -> bool:
        for node, proc in zip(nodes, procs, strict=True):
            if not proc.alive():
                raise RuntimeError(
                    f"kube-router on {node.name} exited; last lines of {proc.log}:\n"
                    f"{proc.log_tail()}"
                )
        return all(healthy(node) for node in nodes)

    try:
        wait_for("kube-router healthy on every node", all_healthy, timeout=timeout)
    except BaseException:
        for p in procs:
            p.stop(10)
        raise
    return procs
