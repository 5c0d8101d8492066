"""The command lines of the test ground's processes, as pure functions.

``Cluster`` (cluster.py) starts, waits for and stops processes; what each one is told lives here,
so a flag can be read, changed and unit-tested (``tests/test_harness_commands.py``) without
booting anything. Everything listens on loopback only: the network rule of these machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .pki import Pki

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
#: KWOK hands out pod IPs from here: loopback, so a dialled pod IP stays on this machine.
POD_CIDR = "127.200.0.0/16"
NODE_IP = "127.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def loopback_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def build_etcd_argv(bindir: Path, state_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = loopback_url(client_port), loopback_url(peer_port)
    return [
        str(bindir / "etcd"),
        "--name=k2t",
        f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=k2t={peer}",
        "--unsafe-no-fsync",  # a throw-away test store; fsync costs seconds per write here
        "--quota-backend-bytes=4294967296",
        "--log-level=warn",
    ]


def build_apiserver_argv(
    bindir: Path,
    state_dir: Path,
    pki: Pki,
    *,
    etcd_url: str,
    port: int,
    bind_address: str = NODE_IP,
) -> list[str]:
    return [
        str(bindir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={bind_address}",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={state_dir / 'apiserver'}",
        f"--tls-cert-file={pki.apiserver_cert}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def build_controller_manager_argv(
    bindir: Path, state_dir: Path, pki: Pki, *, kubeconfig: Path, port: int
) -> list[str]:
    return [
        str(bindir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={state_dir / 'controller-manager'}",
        "--leader-elect=false",
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        # KWOK heartbeats every 20-45 s; be lenient on a busy 2-core machine.
        "--node-monitor-grace-period=3m",
        # client-go's default 20 QPS makes 1000 nodes wait a minute for their not-ready
        # taint to be lifted; this is a test cluster, spend the CPU instead.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--profiling=false",
        "--v=1",
    ]


def build_scheduler_argv(
    bindir: Path, *, kubeconfig: Path, port: int, config: Path | None = None
) -> list[str]:
    """``config``: a KubeSchedulerConfiguration (harness/scheduling.py); with it the scheduler
    ignores its deprecated flags (kubeconfig, leader election, QPS), which the file repeats."""
    extra = [f"--config={config}"] if config is not None else []
    return [
        str(bindir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--profiling=false",
        "--v=1",
        *extra,
    ]


def build_kwok_argv(
    bindir: Path,
    *,
    kubeconfig: Path,
    node_label: tuple[str, str],
    stages: Iterable[Path],
    pod_cidr: str = POD_CIDR,
) -> list[str]:
    argv = [
        str(bindir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-label-selector={node_label[0]}={node_label[1]}",
        f"--cidr={pod_cidr}",
        f"--node-ip={NODE_IP}",
    ]
    for stage in stages:  # v0.8 has no built-in stages: node/pod lifecycles come from files
        argv += ["-c", str(stage)]
    return argv


def build_kuberay_argv(
    bindir: Path,
    *,
    metrics_port: int,
    probe_port: int,
    watch_namespace: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    argv = [
        str(bindir / "ray-operator"),
        f"--metrics-addr=127.0.0.1:{metrics_port}",
        f"--health-probe-bind-address=127.0.0.1:{probe_port}",
        "--enable-leader-election=false",
        "--log-stdout-encoder=console",
    ]
    if watch_namespace:
        argv.append(f"--watch-namespace={watch_namespace}")
    return argv + list(extra_args)
