"""The input boundary (#22) on the real API server, KubeRay and the operator.

1. A child the API server refuses is refused before anything is applied: an admission policy
   (a built-in ValidatingAdmissionPolicy, so no webhook server is needed) denies the Pods of a
   head with 3 CPUs. Editing a running deployment to such a head is admitted (the CRD cannot
   know the cluster's policies), the operator's dry run of the Pod KubeRay would create is
   refused: ``Degraded``/``ChildRejected`` names the policy's message, the running RayService
   keeps its spec and generation, no Pod was created; reverting the edit clears it.
2. Downgrades are loud: token auth and NetworkPolicies off give ``SecurityDowngraded`` True, the
   ``Downgraded`` column of ``kubectl get k2t`` and Warning events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    items,
    load_example,
)

POLICY_MESSAGE = "e2e policy: a Ray head with 3 CPUs is not allowed in this namespace"


@pytest.fixture(scope="module")
def operator(cluster: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    # The Pod dry run is opt-in (chart value dryRunPods: it needs RBAC create on pods).
    op = OperatorProcess(
        cluster,
        ["--all-namespaces"],
        log_dir / "operator-boundary.log",
        env={"K2T_DRY_RUN_PODS": "1"},
    )
    op.start()
    yield op
    op.stop()


def _policy(name: str, ns: str) -> list[dict[str, Any]]:
    expression = (
        "object.spec.containers.all(c, !has(c.resources) || !has(c.resources.requests) || "
        "!('cpu' in c.resources.requests) || string(c.resources.requests['cpu']) != '3')"
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ]
                },
                "validations": [{"expression": expression, "message": POLICY_MESSAGE}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
                },
            },
        },
    ]


def _probe_pod(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "policy-probe", "namespace": ns},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "3"}}}
            ]
        },
    }


def _head(cpu: str) -> dict[str, Any]:
    return {
        "nodeSelector": {"k2think.dev/pool": "cpu"},
        "resources": {"requests": {"cpu": cpu, "memory": "16Gi"}, "limits": {"memory": "16Gi"}},
    }


def test_a_child_the_cluster_refuses_leaves_the_running_rayservice_untouched(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    name = f"k2t-e2e-{ns}"[:63]
    policy = {"apiVersion": "v1", "kind": "List", "items": _policy(name, ns)}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
    try:

        def policy_active() -> bool | None:
            proc = cluster.kubectl(
                "create",
                "--dry-run=server",
                "-f",
                "-",
                input=json.dumps(_probe_pod(ns)),
                check=False,
            )
            return True if proc.returncode != 0 and POLICY_MESSAGE in proc.stderr else None

        eventually("the admission policy in force", policy_active, timeout=60)

        doc = load_example("k2think.yaml", namespace=ns)
        apply_doc(cluster, doc)
        before = eventually("the RayService", lambda: get(cluster, "rayservice", "k2think", ns))
        eventually(
            "generation 1 observed",
            lambda: (
                ((get(cluster, "k2t", "k2think", ns) or {}).get("status") or {}).get(
                    "observedGeneration"
                )
                == 1
                or None
            ),
        )

        # KubeRay keeps writing the RayService's status; what we own is its spec (and the
        # generation, which only a spec change moves).
        before = get(cluster, "rayservice", "k2think", ns) or {}
        doc["spec"]["ray"]["head"] = _head("3")
        apply_doc(cluster, doc)  # the CRD admits it: it cannot know the namespace's policies

        def rejected() -> dict[str, Any] | None:
            cr = get(cluster, "k2t", "k2think", ns) or {}
            degraded = condition(cr, "Degraded") or {}
            if (cr.get("status") or {}).get("observedGeneration") != 2:
                return None
            return degraded if degraded.get("reason") == "ChildRejected" else None

        degraded = eventually("Degraded/ChildRejected", rejected, timeout=90)
        assert degraded["status"] == "True"
        assert POLICY_MESSAGE in degraded["message"], degraded
        assert "nothing was applied" in degraded["message"]
        after = get(cluster, "rayservice", "k2think", ns)
        assert after is not None
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"] == before["spec"]
        head = after["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
        assert head["containers"][0]["resources"]["requests"]["cpu"] == "4"
        assert not [
            p for p in items(cluster, "pods", ns) if p["metadata"]["name"].endswith("dryrn")
        ]

        doc["spec"]["ray"]["head"] = _head("4")
        apply_doc(cluster, doc)

        def healed() -> bool | None:
            cr = get(cluster, "k2t", "k2think", ns) or {}
            degraded = condition(cr, "Degraded") or {}
            generation = (cr.get("status") or {}).get("observedGeneration")
            return True if generation == 3 and degraded.get("reason") != "ChildRejected" else None

        eventually("the revert heals it", healed, timeout=90)
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            cluster.kubectl("delete", kind, name, "--wait=false", check=False)


def test_downgrades_show_in_a_condition_a_column_and_warning_events(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    doc = load_example("k2think.yaml", namespace=ns)
    doc["spec"]["ray"]["auth"] = {"enabled": False}
    doc["spec"]["networkPolicy"] = {"enabled": False}
    apply_doc(cluster, doc)

    def downgraded() -> dict[str, Any] | None:
        found = condition(get(cluster, "k2t", "k2think", ns), "SecurityDowngraded")
        return found if found and found.get("status") == "True" else None

    found = eventually("SecurityDowngraded True", downgraded, timeout=60)
    assert "auth.enabled is false" in found["message"]
    assert "networkPolicy.enabled is false" in found["message"]
    table = cluster.kubectl("get", "k2t", "k2think", "-n", ns).stdout
    header, row = table.strip().splitlines()[:2]
    column = header.index("DOWNGRADED")  # kubectl aligns each value under its header
    assert row[column:].split()[0] == "True", table

    def warned() -> set[str] | None:
        reasons = {
            str(e.get("reason"))
            for e in items(cluster, "events", ns)
            if e.get("type") == "Warning" and e["involvedObject"]["name"] == "k2think"
        }
        wanted = {"RayAuthDisabled", "SecurityDowngraded"}
        return reasons if wanted <= reasons else None

    eventually("the Warning events", warned, timeout=60)
