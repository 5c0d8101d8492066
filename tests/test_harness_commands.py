"""The test ground's command lines (e2e/harness/commands.py), checked without starting anything."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "e2e"))

from harness import commands
from harness.pki import Pki

BIN = Path("/bin-dir")
STATE = Path("/state")
PKI = Pki(dir=Path("/state/pki"))


def flags(argv: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in argv[1:] if "=" in a)


def test_etcd_listens_on_loopback_only_without_fsync() -> None:
    argv = commands.build_etcd_argv(BIN, STATE, 2379, 2380)
    assert argv[0] == "/bin-dir/etcd" and "--unsafe-no-fsync" in argv
    f = flags(argv)
    assert f["listen-client-urls"] == "http://127.0.0.1:2379"
    assert f["listen-peer-urls"] == f["initial-advertise-peer-urls"] == "http://127.0.0.1:2380"
    assert f["data-dir"] == "/state/etcd"


def test_apiserver_is_secure_on_loopback_with_rbac_and_our_pki() -> None:
    argv = commands.build_apiserver_argv(
        BIN, STATE, PKI, etcd_url="http://127.0.0.1:2379", port=6443
    )
    f = flags(argv)
    assert argv[0] == "/bin-dir/kube-apiserver"
    assert f["bind-address"] == f["advertise-address"] == "127.0.0.1"
    assert f["secure-port"] == "6443" and f["etcd-servers"] == "http://127.0.0.1:2379"
    assert f["authorization-mode"] == "Node,RBAC"
    assert f["client-ca-file"] == str(PKI.ca_cert)
    assert f["service-account-signing-key-file"] == str(PKI.sa_key)
    assert f["service-account-key-file"] == str(PKI.sa_pub)
    assert f["service-cluster-ip-range"] == commands.SERVICE_CIDR


def test_controllers_and_scheduler_run_without_leader_election_on_loopback() -> None:
    kc = Path("/state/kubeconfigs/x")
    for argv in (
        commands.build_controller_manager_argv(BIN, STATE, PKI, kubeconfig=kc, port=10257),
        commands.build_scheduler_argv(BIN, kubeconfig=kc, port=10259),
    ):
        f = flags(argv)
        assert f["leader-elect"] == "false" and f["bind-address"] == "127.0.0.1"
        assert f["kubeconfig"] == f["authentication-kubeconfig"] == str(kc)
    kcm = flags(commands.build_controller_manager_argv(BIN, STATE, PKI, kubeconfig=kc, port=1))
    assert kcm["cluster-signing-key-file"] == str(PKI.ca_key)


def test_kwok_manages_only_labelled_nodes_with_every_stage_file() -> None:
    stages = [Path("/s/node-initialize.yaml"), Path("/s/pod-ready.yaml")]
    argv = commands.build_kwok_argv(
        BIN, kubeconfig=Path("/kc"), node_label=("type", "kwok"), stages=stages
    )
    f = flags(argv)
    assert f["manage-all-nodes"] == "false"
    assert f["manage-nodes-with-label-selector"] == "type=kwok"
    assert f["cidr"].startswith("127.") and f["node-ip"] == "127.0.0.1"
    assert argv[-4:] == ["-c", "/s/node-initialize.yaml", "-c", "/s/pod-ready.yaml"]


def test_kuberay_binds_loopback_and_passes_extra_args_last() -> None:
    argv = commands.build_kuberay_argv(
        BIN, metrics_port=1, probe_port=2, watch_namespace="team-a", extra_args=["--x=y"]
    )
    f = flags(argv)
    assert f["metrics-addr"] == "127.0.0.1:1" and f["health-probe-bind-address"] == "127.0.0.1:2"
    assert f["watch-namespace"] == "team-a" and argv[-1] == "--x=y"
    assert "watch-namespace" not in flags(
        commands.build_kuberay_argv(BIN, metrics_port=1, probe_port=2)
    )


def test_operator_runs_from_this_interpreter_on_loopback_ports() -> None:
    from harness.operator_process import build_operator_argv

    argv = build_operator_argv(["--namespace=a"], health_port=1, metrics_port=2, python="/py")
    assert argv[:5] == ["/py", "-m", "k2think_operator.cli", "run", "--namespace=a"]
    f = flags(argv)
    assert f["health-host"] == "127.0.0.1" and f["health-port"] == "1" and f["metrics-port"] == "2"


def test_free_ports_are_distinct() -> None:
    from harness.processes import free_port, free_ports

    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(p > 0 for p in ports) and free_port() > 0


def test_wait_for_is_bounded_and_reports_the_last_error() -> None:
    import pytest

    from harness.polling import WaitTimeoutError, wait_for

    values = iter([None, False, 0, "done"])
    assert wait_for("x", lambda: next(values), timeout=5, interval=0.01) == 0
    truthy = iter([0, [], "done"])
    assert wait_for("y", lambda: next(truthy), timeout=5, interval=0.01, done=bool) == "done"

    def failing() -> None:
        raise ConnectionError("refused")

    with pytest.raises(WaitTimeoutError, match=r"waiting for z \(last error: refused\)"):
        wait_for("z", failing, timeout=0.05, interval=0.01)
    with pytest.raises(KeyError):  # not in retry_on: propagates at once
        empty: dict[str, int] = {}
        wait_for("k", lambda: empty["k"], timeout=5, retry_on=(ConnectionError,))
    assert issubclass(WaitTimeoutError, AssertionError) and issubclass(
        WaitTimeoutError, TimeoutError
    )
