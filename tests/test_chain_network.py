"""The chain ground's network plan (e2e/harness/netns.py) and its policy agent's command line
(e2e/harness/policyagent.py): the pure parts, checked without creating a namespace."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from harness import netns, policyagent


def test_nodes_are_numbered_in_name_order_from_one() -> None:
    nodes = netns.plan_nodes(["kwok-cpu-b-0", "kwok-head-0", "kwok-cpu-a-0", "kwok-head-0"])
    assert [(n.name, n.index) for n in nodes] == [
        ("kwok-cpu-a-0", 1),
        ("kwok-cpu-b-0", 2),
        ("kwok-head-0", 3),
    ]
    third = nodes[2]
    assert (third.ip, third.pod_cidr, third.gateway) == (
        "10.243.0.3",
        "10.244.3.0/24",
        "10.244.3.254",
    )
    assert (third.netns, third.uplink) == ("k2n-3", "k2u3")


def test_every_node_address_and_range_is_distinct_and_inside_the_plan() -> None:
    nodes = netns.plan_nodes([f"n{i:03d}" for i in range(netns.MAX_NODES)])
    wire = ipaddress.ip_network(netns.NODE_NETWORK)
    pods = ipaddress.ip_network(netns.POD_CIDR)
    assert len({n.ip for n in nodes}) == len({n.pod_cidr for n in nodes}) == netns.MAX_NODES
    for n in nodes:
        assert ipaddress.ip_address(n.ip) in wire and n.ip != netns.GROUND_IP
        assert ipaddress.ip_network(n.pod_cidr).subnet_of(pods)  # type: ignore[arg-type]
        assert ipaddress.ip_address(n.gateway) in ipaddress.ip_network(n.pod_cidr)
        assert len(n.uplink) <= 15  # IFNAMSIZ
    with pytest.raises(ValueError, match="holds"):
        netns.plan_nodes([f"n{i}" for i in range(netns.MAX_NODES + 1)])


def test_a_pod_address_names_its_node() -> None:
    assert netns.node_netns_for_ip("10.244.3.17") == "k2n-3"
    # KWOK's fallback range (a node without spec.podCIDR) belongs to no node: a clear error.
    kwok_first = str(ipaddress.ip_interface(netns.KWOK_CIDR).ip)
    with pytest.raises(ValueError, match="no node"):
        netns.node_netns_for_ip(kwok_first)
    with pytest.raises(ValueError, match="outside"):
        netns.node_netns_for_ip("10.243.0.1")


def test_the_node_manifest_carries_its_range_and_address() -> None:
    node = netns.plan_nodes(["kwok-head-0"])[0]
    assert netns.node_manifest_network(node) == {
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "10.243.0.1"},
                {"type": "Hostname", "address": "kwok-head-0"},
            ]
        },
    }


def test_only_the_grounds_own_devices_are_expected() -> None:
    assert netns.foreign_interfaces(["lo", "k2f0", "k2u1", "k2u12"]) == []
    assert netns.foreign_interfaces(["lo", "eth0", "k2f0"]) == ["eth0"]


def test_kube_router_runs_only_its_policy_controller() -> None:
    argv = policyagent.build_kube_router_argv(Path("/b/kube-router"), kubeconfig=Path("/k"))
    assert argv[0] == "/b/kube-router"
    for flag in (
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        "--kubeconfig=/k",
        "--service-cluster-ip-range=10.96.0.0/16",
    ):
        assert flag in argv


def test_kube_router_may_only_read_what_its_controller_watches() -> None:
    role, binding = policyagent.rbac_objects()
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"pods", "namespaces", "networkpolicies", "nodes"} <= resources
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": policyagent.USER}
    ]
