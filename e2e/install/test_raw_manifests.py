"""The raw manifests (generated from the chart by `make manifests`): `kubectl apply -f` and
`kubectl apply -k`, both server-side, install a working least-privileged operator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .tools import (
    CRD_NAME,
    MANIFESTS,
    ROOT,
    Tools,
    apply_example,
    assert_gitops_clean,
    assert_least_privilege,
    assert_reconciled,
    forbidden_lines,
    local_operator,
    unique,
)

pytestmark = pytest.mark.e2e

SYSTEM = "k2think-system"
NAME = "k2think-operator"


def test_kubectl_apply_manifests(
    tools: Tools, namespaces: Callable[[str], str], workdir: Path
) -> None:
    if tools.exists("namespace", SYSTEM):
        pytest.fail(
            f"namespace {SYSTEM} exists already: this test installs the raw manifests there"
        )
    try:
        # Without kustomize: the CRDs, then the operator (the kustomization is not an object).
        tools.kubectl(
            "apply",
            "--server-side",
            "-f",
            str(ROOT / "crds"),
            "-f",
            str(MANIFESTS / "operator.yaml"),
        )
        # With kustomize: the same objects, so nothing to change, and then the real apply.
        diff = tools.kubectl("diff", "--server-side", "-k", str(MANIFESTS), check=False)
        assert diff.returncode == 0, f"-k and -f disagree:\n{diff.stdout}{diff.stderr}"
        tools.kubectl("apply", "--server-side", "-k", str(MANIFESTS))
        assert tools.exists("crd", CRD_NAME)
        tools.kubectl(
            "rollout", "status", f"deployment/{NAME}", "-n", SYSTEM, "--timeout=120s", timeout=150
        )

        team = namespaces(unique("gitops"))
        kubeconfig = tools.sa_kubeconfig(SYSTEM, NAME, workdir / "sa.kubeconfig")
        assert_least_privilege(
            tools, kubeconfig, served=[team, SYSTEM], cluster_wide=True, crd_watch=True
        )
        with local_operator(kubeconfig, workdir) as operator:
            apply_example(tools, team)
            assert_reconciled(tools, team)
            assert_gitops_clean(tools, team)
            tools.kubectl("delete", "k2t", "k2think", "-n", team, "--timeout=60s")
        assert not forbidden_lines(operator.log()), forbidden_lines(operator.log())
    finally:
        # Never `kubectl delete -k manifests/` in a test: deleting the CRD deletes every
        # K2ThinkDeployment in the cluster.
        tools.kubectl(
            "delete",
            "-f",
            str(MANIFESTS / "operator.yaml"),
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
