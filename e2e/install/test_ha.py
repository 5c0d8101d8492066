"""High availability with the chart's defaults: two replicas, one Lease, one active reconciler.

The chart is installed on the local cluster (its pods run on KWOK nodes, which start no
containers), so the replicas themselves run here as ``k2think-operator run`` processes with the
arguments of the installed Deployment and a token of the chart's ServiceAccount: the Lease RBAC
the chart grants is exactly what they have. What is proven:

* only the lease holder reconciles; the standby serves /healthz and makes no API write;
* the standby's grant is least privilege: create leases, get/update only the operator's Lease;
* SIGKILL of the active replica: the standby takes the lease after it expires and reconciles an
  edit made while nobody was active (the time is printed and recorded in docs/operations.md);
* SIGTERM of the active replica releases the lease: the next standby takes over at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import wait_for
from harness.operator_process import OperatorProcess as LocalOperator
from k2think_operator.render.serve_config import effective_llm_deployment_options

from .tools import (
    CHART,
    Tools,
    apply_example,
    assert_reconciled,
    forbidden_lines,
    local_operator,
    unique,
)

pytestmark = pytest.mark.e2e

ACQUIRED = "acquired lease"


def _lease(tools: Tools, namespace: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = tools.kubectl_json("get", "lease", name, "-n", namespace)["spec"]
    return spec


def _holder(tools: Tools, namespace: str, name: str) -> str:
    return str(_lease(tools, namespace, name).get("holderIdentity") or "")


def _identity(op: LocalOperator) -> str | None:
    """The identity a replica logged when it started its election."""
    for line in op.log().splitlines():
        if "leader election: lease" in line and " as " in line:
            return str(line.split(" as ", 1)[1].split(" ", 1)[0])
    return None


def _writes(op: LocalOperator) -> list[str]:
    """Log lines of handlers kopf ran (every write the operator makes happens in one)."""
    return [line for line in op.log().splitlines() if "Handler '" in line]


def _max_replicas(tools: Tools, namespace: str) -> int | None:
    rs = tools.kubectl_json("get", "rayservice", "k2think", "-n", namespace)
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    value = effective_llm_deployment_options(serve)["autoscaling_config"]["max_replicas"]
    return int(value)


@pytest.fixture
def replicas(workdir: Path) -> Iterator[Callable[..., LocalOperator]]:
    """Start operator replicas (each its own log dir); all stopped afterwards."""
    with ExitStack() as stack:

        def start(kubeconfig: Path, name: str, extra: list[str]) -> LocalOperator:
            d = workdir / name
            d.mkdir()
            return stack.enter_context(local_operator(kubeconfig, d, extra=extra))

        yield start


def test_two_replicas_one_active_and_the_standby_takes_over(
    tools: Tools,
    namespaces: Callable[[str], str],
    workdir: Path,
    replicas: Callable[..., LocalOperator],
) -> None:
    release = unique("k2t-ha")
    system = namespaces(f"{release}-system")
    team = namespaces(unique("team"))
    sa = f"{release}-k2think-operator"
    tools.helm("install", release, str(CHART), "-n", system, "--wait", "--timeout", "180s")
    try:
        deployment = tools.kubectl_json("get", "deployment", sa, "-n", system)
        assert deployment["spec"]["replicas"] == 2
        assert deployment["status"].get("availableReplicas") == 2
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        election = [a for a in args if a.startswith("--leader-elect")]
        assert election == [
            "--leader-elect",
            f"--leader-elect-lease={sa}",
            f"--leader-elect-namespace={system}",
        ]

        kubeconfig = tools.sa_kubeconfig(system, sa, workdir / "sa.kubeconfig")
        # Least privilege of the Lease grant.
        assert tools.can_i(kubeconfig, "create", "leases.coordination.k8s.io", "-n", system)
        for verb in ("get", "update"):
            assert tools.can_i(kubeconfig, verb, f"leases.coordination.k8s.io/{sa}", "-n", system)
            assert not tools.can_i(
                kubeconfig, verb, "leases.coordination.k8s.io/kube-scheduler", "-n", system
            )
        for verb in ("delete", "list", "watch", "patch"):
            assert not tools.can_i(kubeconfig, verb, "leases.coordination.k8s.io", "-n", system)
        assert not tools.can_i(kubeconfig, "create", "leases.coordination.k8s.io", "-n", team)

        first = replicas(kubeconfig, "a", election)
        wait_for("replica a holds the lease", lambda: ACQUIRED in first.log(), timeout=60)
        second = replicas(kubeconfig, "b", election)  # /healthz answered: it stands by
        apply_example(tools, team)
        assert_reconciled(tools, team)
        assert _holder(tools, system, sa) == _identity(first)
        assert ACQUIRED not in second.log()
        assert not _writes(second), _writes(second)

        # SIGKILL the active replica, then edit while nobody is active.
        first.kill()  # SIGKILL of its process group
        killed = time.monotonic()
        tools.kubectl(
            "patch",
            "k2t",
            "k2think",
            "-n",
            team,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"autoscaling": {"maxReplicas": 3}}}),
        )
        wait_for(
            "the standby reconciles the edit",
            lambda: _max_replicas(tools, team) == 3,
            timeout=90,
        )
        takeover = time.monotonic() - killed
        assert _holder(tools, system, sa) == _identity(second)
        assert ACQUIRED in second.log()
        lease = _lease(tools, system, sa)
        print(
            f"\nHA: SIGKILL -> edit reconciled by the standby in {takeover:.1f} s "
            f"(leaseDurationSeconds={lease['leaseDurationSeconds']})"
        )

        # A replacement stands by; SIGTERM of the active one hands the lease over at once.
        third = replicas(kubeconfig, "c", election)
        assert ACQUIRED not in third.log()
        stopped = time.monotonic()
        second.stop(timeout=20)  # SIGTERM
        assert "released lease" in second.log(), second.log()[-2000:]
        wait_for("replica c holds the lease", lambda: ACQUIRED in third.log(), timeout=60)
        handover = time.monotonic() - stopped
        assert _holder(tools, system, sa) == _identity(third)
        tools.kubectl(
            "patch",
            "k2t",
            "k2think",
            "-n",
            team,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"autoscaling": {"maxReplicas": 4}}}),
        )
        wait_for("replica c reconciles", lambda: _max_replicas(tools, team) == 4, timeout=60)
        print(f"HA: SIGTERM -> lease handed over in {handover:.1f} s")
        for op in (first, second, third):
            assert not forbidden_lines(op.log()), forbidden_lines(op.log())
    finally:
        tools.helm("uninstall", release, "-n", system, "--wait", check=False)
