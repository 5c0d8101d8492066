"""The Helm chart: lint/template of every ci/ values set, schema strictness, determinism, drift,
and real installs (cluster and namespaced RBAC) that a least-privileged operator runs against."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tools import (
    CHART,
    CI_VALUES,
    CRD_NAME,
    ROOT,
    Tools,
    apply_example,
    assert_gitops_clean,
    assert_least_privilege,
    assert_reconciled,
    forbidden_lines,
    local_operator,
    lua_harness,
    unique,
)

pytestmark = pytest.mark.e2e

EXPECTED_RULES = [
    {
        "apiGroups": ["k2think.dev"],
        "resources": ["k2thinkdeployments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["k2think.dev"], "resources": ["k2thinkdeployments/status"], "verbs": ["patch"]},
    {
        "apiGroups": ["k2think.dev"],
        "resources": ["k2thinkdeployments/finalizers"],
        "verbs": ["update"],
    },
    {
        "apiGroups": ["k2think.dev"],
        "resources": ["k2thinkmodelcaches"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["k2think.dev"], "resources": ["k2thinkmodelcaches/status"], "verbs": ["patch"]},
    {
        "apiGroups": ["k2think.dev"],
        "resources": ["k2thinkmodelcaches/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create"]},
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayservices"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch"]},
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["create", "patch"],
    },
    {
        "apiGroups": ["kueue.x-k8s.io"],
        "resources": ["workloads"],
        "verbs": ["get", "list", "patch"],
    },
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues"], "verbs": ["get"]},
]
NS_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
CRD_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


# ------------------------------------------------------------------------------ offline


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_lint_and_template(helm_tools: Tools, values: Path) -> None:
    helm_tools.helm("lint", "--strict", str(CHART), "-f", str(values))
    objs = helm_tools.template("-f", str(values), namespace="ops")
    settings: dict[str, Any] = yaml.safe_load(values.read_text())
    watch = settings.get("watchNamespaces") or []
    scope = settings["rbac"]["scope"]
    observe = settings["rbac"].get("observeCluster", True)

    # The dashboard ConfigMap may go where the Grafana sidecar looks (metrics.dashboard.namespace).
    dashboard_ns = settings.get("metrics", {}).get("dashboard", {}).get("namespace")
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "k2think-operator", obj["metadata"]
        assert labels["app.kubernetes.io/instance"] == "t"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            allowed = ["ops", *watch, *([dashboard_ns] if dashboard_ns else [])]
            assert obj["metadata"]["namespace"] in allowed, obj["metadata"]

    (deployment,) = _by_kind(objs, "Deployment")
    spec = deployment["spec"]
    leader = settings.get("leaderElection", {}).get("enabled", True)
    if leader:
        # Two replicas, one Lease (docs/operations.md, "High availability").
        assert spec["replicas"] == settings.get("replicaCount", 2)
        assert spec["strategy"]["type"] == "RollingUpdate"
    else:
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "t-k2think-operator"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    args = container["args"]
    assert args[0] == "run"
    if watch:
        assert [a for a in args if a.startswith("--namespace=")] == [
            f"--namespace={ns}" for ns in dict.fromkeys(watch)
        ]
        assert "--all-namespaces" not in args
    else:
        assert "--all-namespaces" in args
    assert "--health-port=8080" in args and "--metrics-port=9090" in args
    assert f"--log-format={settings.get('operator', {}).get('logFormat', 'json')}" in args

    if leader:
        assert "--leader-elect" in args
        assert "--leader-elect-lease=t-k2think-operator" in args
        assert "--leader-elect-namespace=ops" in args
    cluster_roles = _by_kind(objs, "ClusterRole")
    election = [
        r for r in _by_kind(objs, "Role") if r["metadata"]["name"].endswith("-leader-election")
    ]
    roles = [r for r in _by_kind(objs, "Role") if r not in election]
    if leader:
        (lease_role,) = election
        assert lease_role["metadata"]["namespace"] == "ops"
        assert lease_role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["t-k2think-operator"],
                "verbs": ["get", "update"],
            },
        ]
    else:
        assert not election
    if scope == "cluster":
        assert not roles
        assert [b["metadata"]["name"] for b in _by_kind(objs, "RoleBinding")] == (
            ["t-k2think-operator-leader-election"] if leader else []
        )
        (role,) = cluster_roles
        assert role["rules"] == EXPECTED_RULES + ([CRD_RULE] if observe else [])
        (binding,) = _by_kind(objs, "ClusterRoleBinding")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "t-k2think-operator", "namespace": "ops"}
        ]
    else:
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(set(watch))
        assert all(r["rules"] == EXPECTED_RULES for r in roles)
        bindings = [
            b
            for b in _by_kind(objs, "RoleBinding")
            if not b["metadata"]["name"].endswith("-leader-election")
        ]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(set(watch))
        assert all(b["subjects"][0]["namespace"] == "ops" for b in bindings)
        # The only cluster-scoped grant is the optional read-only observation of CRDs/namespaces.
        assert [r["rules"] for r in cluster_roles] == ([[CRD_RULE, NS_RULE]] if observe else [])
    for role in cluster_roles + roles + election:
        for rule in role["rules"]:
            # Secrets: create only (the Ray token), never read.
            assert "secrets" not in rule["resources"] or rule["verbs"] == ["create"]
            assert "*" not in rule["verbs"]
            assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"]

    kinds = {o["kind"] for o in objs}
    assert {"ServiceAccount", "Deployment", "Service"} <= kinds
    if values.stem.startswith("everything"):
        assert {"ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
        assert {"PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus=1"], "bogus"),
        (["--set", "rbac.bogus=1"], "bogus"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "rbac.scope=everywhere"], "scope"),
        (["--set", "rbac.scope=namespaced"], "watchNamespaces"),
        (
            [
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set-json",
                "podDisruptionBudget.maxUnavailable=null",
            ],
            "set minAvailable or maxUnavailable",
        ),
        (
            ["--set", "metrics.service.enabled=false,metrics.serviceMonitor.enabled=true"],
            "metrics.service.enabled",
        ),
    ],
    ids=[
        "unknown-top-level",
        "unknown-nested",
        "enum",
        "scope",
        "namespaced-needs-namespaces",
        "pdb-neither",
        "servicemonitor-needs-service",
    ],
)
def test_bad_values_are_refused(helm_tools: Tools, args: list[str], message: str) -> None:
    proc = helm_tools.helm(
        "template", "t", str(CHART), "--kube-version", "1.30.0", *args, check=False
    )
    assert proc.returncode != 0, proc.stdout[:500]
    assert message in proc.stderr, proc.stderr


def test_template_is_deterministic(helm_tools: Tools) -> None:
    for values in [[], *(["-f", str(v)] for v in CI_VALUES)]:
        first = helm_tools.helm(
            "template", "t", str(CHART), "--kube-version", "1.30.0", *values
        ).stdout
        second = helm_tools.helm(
            "template", "t", str(CHART), "--kube-version", "1.30.0", *values
        ).stdout
        assert first == second


def test_chart_and_manifests_do_not_drift(helm_tools: Tools) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "charts" / "tools" / "chartgen.py"),
            "manifests",
            "--check",
            "--helm",
            str(helm_tools.bindir / "helm"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ on a cluster


def test_helm_install_cluster_mode(
    tools: Tools, namespaces: Callable[[str], str], workdir: Path
) -> None:
    release = unique("k2t-c")
    system = namespaces(f"{release}-system")
    team = namespaces(unique("team"))
    sa = f"{release}-k2think-operator"
    tools.helm("install", release, str(CHART), "-n", system, "--wait", "--timeout", "180s")
    try:
        # First install brought the CRD (unless the cluster had it already) and an operator pod
        # that the "restricted" Pod Security Standard admitted; --wait saw it Available.
        assert tools.exists("crd", CRD_NAME)
        deployment = tools.kubectl_json("get", "deployment", sa, "-n", system)
        assert deployment["status"].get("availableReplicas") == 2  # active + standby

        kubeconfig = tools.sa_kubeconfig(system, sa, workdir / "sa.kubeconfig")
        assert_least_privilege(
            tools, kubeconfig, served=[team, system], cluster_wide=True, crd_watch=True
        )
        with local_operator(kubeconfig, workdir) as operator:
            apply_example(tools, team)
            cr = assert_reconciled(tools, team)
            assert_gitops_clean(tools, team)
            assert_argocd_health(tools, team, cr)
        assert not forbidden_lines(operator.log()), forbidden_lines(operator.log())
    finally:
        tools.helm("uninstall", release, "-n", system, "--wait", check=False)
    # The CRD policy (docs/install.md): uninstalling the chart keeps the CRD, the user's
    # K2ThinkDeployments and what they serve; only the operator's own objects go.
    assert tools.exists("crd", CRD_NAME)
    assert tools.exists("k2t", "k2think", "-n", team)
    assert tools.exists("rayservice", "k2think", "-n", team)
    assert not tools.exists("clusterrole", sa)
    assert not tools.exists("deployment", sa, "-n", system)


def assert_argocd_health(tools: Tools, namespace: str, cr: dict[str, Any]) -> None:
    """The Argo CD health check on the live object: Progressing, then Healthy once KubeRay
    reports the RayService ready (written here through its status subresource)."""
    lua = shutil.which("lua5.4")
    if lua is None:
        return
    sep, harness = lua_harness()

    def health() -> str:
        obj = tools.kubectl_json("get", "k2t", "k2think", "-n", namespace)
        out = subprocess.run(
            [lua, "-"], input=harness(obj), capture_output=True, text=True, check=True, timeout=30
        ).stdout
        return str(out.partition(sep)[0])

    assert health() == "Progressing"
    from k2think_operator.render.serve_config import APP_NAME

    status = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "RayServiceReady",
                    "message": "ready",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
            "activeServiceStatus": {"applicationStatuses": {APP_NAME: {"status": "RUNNING"}}},
        }
    }
    tools.kubectl(
        "patch",
        "rayservice",
        "k2think",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    from harness import wait_for

    wait_for("Argo CD health Healthy", lambda: health() == "Healthy", timeout=60)


@pytest.mark.parametrize("observe", [True, False], ids=["observe-cluster", "strict"])
def test_helm_install_namespaced_mode(
    tools: Tools, namespaces: Callable[[str], str], workdir: Path, observe: bool
) -> None:
    """Roles in two namespaces only. ``strict``: not even the read-only cluster observation;
    the chart then runs the operator with --no-cluster-scan, which must need no such grant."""
    release = unique("k2t-n")
    system = namespaces(f"{release}-system")
    team_a, team_b, other = (namespaces(unique(p)) for p in ("team-a", "team-b", "other"))
    sa = f"{release}-k2think-operator"
    tools.helm(
        "install",
        release,
        str(CHART),
        "-n",
        system,
        "-f",
        str(CHART / "ci" / "namespaced-values.yaml"),
        "--set-json",
        f"watchNamespaces={json.dumps([team_a, team_b])}",
        "--set",
        f"rbac.observeCluster={str(observe).lower()}",
        "--wait",
        "--timeout",
        "180s",
    )
    try:
        assert tools.exists("role", sa, "-n", team_a) and tools.exists("role", sa, "-n", team_b)
        assert not tools.exists("role", sa, "-n", other)
        cluster_scoped = tools.kubectl_json(
            "get", "clusterroles", "-l", f"app.kubernetes.io/instance={release}"
        )["items"]
        assert [r["rules"] for r in cluster_scoped] == ([[CRD_RULE, NS_RULE]] if observe else [])

        kubeconfig = tools.sa_kubeconfig(system, sa, workdir / "sa.kubeconfig")
        assert_least_privilege(
            tools,
            kubeconfig,
            served=[team_a, team_b],
            unserved=[other, system],
            cluster_wide=False,
            crd_watch=observe,
            namespace_watch=observe,
        )
        deployment = tools.kubectl_json("get", "deployment", sa, "-n", system)
        chart_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert ("--no-cluster-scan" in chart_args) is (not observe)
        extra = [a for a in chart_args if a == "--no-cluster-scan"]
        with local_operator(kubeconfig, workdir, team_a, team_b, extra=extra) as operator:
            apply_example(tools, team_a)
            assert_reconciled(tools, team_a, timeout=150)
            # b and the unwatched namespace at once: when b is done, other would be too.
            apply_example(tools, team_b)
            apply_example(tools, other)
            assert_reconciled(tools, team_b)
            assert not tools.exists("rayservice", "k2think", "-n", other)
            untouched = tools.kubectl_json("get", "k2t", "k2think", "-n", other)
            assert "status" not in untouched
            assert not (untouched["metadata"].get("finalizers") or [])
            assert_gitops_clean(tools, team_a)
        assert not forbidden_lines(operator.log()), forbidden_lines(operator.log())
    finally:
        tools.helm("uninstall", release, "-n", system, "--wait", check=False)
    assert tools.exists("k2t", "k2think", "-n", team_a)
    assert not tools.exists("role", sa, "-n", team_a)
