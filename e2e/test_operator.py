"""The operator against a real API server: scenarios 1-8 of the control-plane issue.

One operator process (``--all-namespaces``) serves this module; each test works in a namespace
of its own. Where KubeRay must not touch a RayService's status (readiness written by hand), the
test's namespace is outside the KubeRay operator's watch.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import Cluster
from k2think_operator.api.schema_check import schema_errors
from k2think_operator.api.spec import parse_spec
from k2think_operator.cli import main as cli_main
from k2think_operator.deployment.controller import is_subset
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render import build_children
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION
from support import (
    ROOT,
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    holds_without_fight,
    items,
    load_example,
    merge_patch_rayservice,
    namespace,
    overwrite_serve_config,
    unique_namespace,
)

OURS = "app.kubernetes.io/managed-by=k2think-operator"


@pytest.fixture(scope="module")
def operator(cluster: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        cluster,
        ["--all-namespaces"],
        log_dir / "operator-scenarios.log",
        env={"K2T_UNSCHEDULABLE_GRACE_SECONDS": "5"},
    )
    op.start()
    yield op
    op.stop()


def rayservice(cluster: Cluster, name: str, ns: str) -> dict[str, Any] | None:
    return get(cluster, "rayservices.ray.io", name, ns)


def rayservice_serving(cluster: Cluster, name: str, ns: str, text: str) -> dict[str, Any] | None:
    """The RayService once its serveConfigV2 contains ``text``."""
    rs = rayservice(cluster, name, ns)
    return rs if rs is not None and text in rs["spec"]["serveConfigV2"] else None


def k2t(cluster: Cluster, name: str, ns: str) -> dict[str, Any] | None:
    return get(cluster, "k2thinkdeployments.k2think.dev", name, ns)


def wait_rayservice(cluster: Cluster, name: str, ns: str, timeout: float = 60) -> dict[str, Any]:
    return eventually(f"RayService {ns}/{name}", lambda: rayservice(cluster, name, ns), timeout)


def wait_observed(cluster: Cluster, name: str, ns: str, generation: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = k2t(cluster, name, ns)
        status = (obj or {}).get("status") or {}
        return obj if status.get("observedGeneration") == generation else None

    return eventually(f"{ns}/{name} observedGeneration={generation}", probe)


def rendered(obj: dict[str, Any]) -> dict[str, Any]:
    """What our renderer makes of the CR as the API server stores it (defaults included)."""
    spec = parse_spec(obj["spec"])
    meta = obj["metadata"]
    # The RayService comes first; the security objects follow (e2e/test_security.py).
    return build_children(
        spec,
        plan_deployment(spec, meta["name"]),
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
    )[0]


def paths_missing(desired: Any, stored: Any, path: str = "") -> list[str]:
    """Every leaf we rendered that the API server did not keep (pruned or altered)."""
    if isinstance(desired, dict):
        if not isinstance(stored, dict):
            return [path or "."]
        out: list[str] = []
        for key, value in desired.items():
            out += (
                paths_missing(value, stored[key], f"{path}.{key}")
                if key in stored
                else [f"{path}.{key}"]
            )
        return out
    if isinstance(desired, list):
        if not isinstance(stored, list) or len(stored) != len(desired):
            return [path]
        return [
            m for i, d in enumerate(desired) for m in paths_missing(d, stored[i], f"{path}[{i}]")
        ]
    return [] if desired == stored else [f"{path} ({desired!r} != {stored!r})"]


# --- 1. apply an example ------------------------------------------------------------------------


def test_example_becomes_a_rayservice_kuberay_keeps_every_field(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    rs = wait_rayservice(cluster, "k2think", ns)
    cr = wait_observed(cluster, "k2think", ns, 1)

    labels = rs["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "k2think"
    assert labels["app.kubernetes.io/instance"] == "k2think"
    assert labels["app.kubernetes.io/managed-by"] == "k2think-operator"
    (owner,) = rs["metadata"]["ownerReferences"]
    assert owner["kind"] == "K2ThinkDeployment" and owner["uid"] == cr["metadata"]["uid"]
    assert owner["controller"] is True

    # The real KubeRay CRD schema must keep everything we render: nothing pruned, nothing coerced.
    desired = rendered(cr)
    assert paths_missing(desired["spec"], rs["spec"]) == []
    assert is_subset(desired["metadata"]["labels"], rs["metadata"]["labels"])

    status = cr["status"]
    assert status["plan"]["tensorParallel"] == 4 and status["plan"]["pool"] == "h100"
    assert status["endpoint"] == f"http://k2think-serve-svc.{ns}.svc:8000/v1"
    ready = condition(cr, "Ready")
    assert ready is not None and ready["status"] == "False"
    progressing = condition(cr, "Progressing")
    assert progressing is not None and progressing["status"] == "True"
    shown = cluster.kubectl_json(
        "get", "rayservices.ray.io", "k2think", "-n", ns, "--show-managed-fields"
    )
    managers = {(m["manager"], m["operation"]) for m in shown["metadata"]["managedFields"]}
    assert ("k2think-operator", "Apply") in managers

    # The operator's own Prometheus endpoint reports this deployment.
    samples = {
        (sample.name, sample.labels.get("namespace"), sample.labels.get("name")): sample.value
        for family in text_string_to_metric_families(operator.metrics())
        for sample in family.samples
    }
    assert samples[("k2think_reconcile_total", ns, "k2think")] >= 1
    assert samples[("k2think_planned_gpus", ns, "k2think")] == 4
    assert samples[("k2think_desired_replicas", ns, "k2think")] == 1
    assert samples[("k2think_max_replicas", ns, "k2think")] == 8
    assert samples[("k2think_reconcile_duration_seconds_count", None, None)] >= 1


# --- 3. readiness -------------------------------------------------------------------------------


def write_rayservice_status(cluster: Cluster, name: str, ns: str, app_status: str) -> None:
    """Play KubeRay: write the RayService status through its status subresource."""
    ready = app_status == "RUNNING"
    patch = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "NonZeroServeEndpoints" if ready else "Initializing",
                    "message": "written by the e2e test",
                    "lastTransitionTime": "2026-11-28T00:00:00Z",
                }
            ],
            "activeServiceStatus": {
                "rayClusterName": f"{name}-abcde",
                "applicationStatuses": {
                    "llm": {
                        "status": app_status,
                        "message": "" if ready else "Deploying app 'llm'",
                        "serveDeploymentStatuses": {
                            "LLMServer:k2": {"status": "HEALTHY" if ready else "UPDATING"}
                        },
                    }
                },
            },
        }
    }
    merge_patch_rayservice(cluster, name, ns, patch, subresource="status")


def test_ready_follows_the_rayservice_and_kubectl_wait_returns(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    wait_rayservice(cluster, "k2think", ns)
    write_rayservice_status(cluster, "k2think", ns, "DEPLOYING")

    def deploying() -> bool:
        ready = condition(k2t(cluster, "k2think", ns), "Ready")
        return ready is not None and ready["reason"] == "ApplicationDeploying"

    eventually("Ready=False/ApplicationDeploying", deploying)
    write_rayservice_status(cluster, "k2think", ns, "RUNNING")
    waited = cluster.kubectl(
        "wait", "--for=condition=Ready", "k2t/k2think", "-n", ns, "--timeout=60s", timeout=90
    )
    assert "condition met" in waited.stdout
    cr = k2t(cluster, "k2think", ns)
    assert cr is not None and cr["status"]["phase"] == "Serving"
    assert condition(cr, "Progressing")["status"] == "False"  # type: ignore[index]

    write_rayservice_status(cluster, "k2think", ns, "DEPLOY_FAILED")

    def degraded() -> bool:
        cond = condition(k2t(cluster, "k2think", ns), "Degraded")
        return cond is not None and cond["status"] == "True"

    eventually("Degraded=True after DEPLOY_FAILED", degraded)


# --- 4. updates ---------------------------------------------------------------------------------


def spec_edit(cluster: Cluster, name: str, ns: str, patch: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "k2t", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": patch})
    )


def test_bounds_change_serve_config_in_place_tp_change_reshapes(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    before = wait_rayservice(cluster, "k2think", ns)
    wait_observed(cluster, "k2think", ns, 1)

    spec_edit(
        cluster, "k2think", ns, {"autoscaling": {"maxReplicas": 16, "targetOngoingRequests": 9}}
    )
    wait_observed(cluster, "k2think", ns, 2)
    after = eventually(
        "serveConfigV2 with the new bounds",
        lambda: rayservice_serving(cluster, "k2think", ns, "max_replicas: 16"),
    )
    assert "target_ongoing_requests: 9" in after["spec"]["serveConfigV2"]
    annotations = after["metadata"]["annotations"]
    assert (
        annotations[CLUSTER_HASH_ANNOTATION]
        == before["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    )

    def without_replicas(spec: dict[str, Any]) -> dict[str, Any]:
        cluster_config: dict[str, Any] = copy.deepcopy(spec["rayClusterConfig"])
        for group in cluster_config["workerGroupSpecs"]:
            for key in ("replicas", "minReplicas", "maxReplicas"):
                group.pop(key, None)
        return cluster_config

    assert without_replicas(after["spec"]) == without_replicas(before["spec"])

    spec_edit(cluster, "k2think", ns, {"parallelism": {"tensor": 8}})
    wait_observed(cluster, "k2think", ns, 3)
    reshaped = eventually(
        "worker pods of 8 GPUs",
        lambda: (
            (r := rayservice(cluster, "k2think", ns))
            and r["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
                "containers"
            ][0]["resources"]["limits"]["nvidia.com/gpu"]
            == "8"
            and r
        ),
    )
    assert (
        reshaped["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
        != annotations[CLUSTER_HASH_ANNOTATION]
    )
    assert "tensor_parallel_size: 8" in reshaped["spec"]["serveConfigV2"]
    cr = k2t(cluster, "k2think", ns)
    assert cr is not None and cr["status"]["plan"]["tensorParallel"] == 8


def test_kubectl_scale_drives_a_fixed_count_in_place(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    doc = load_example("k2think-v2.yaml", namespace=ns)  # fixed replicas: 2
    apply_doc(cluster, doc)
    before = wait_rayservice(cluster, "k2think-v2", ns)
    wait_observed(cluster, "k2think-v2", ns, 1)
    cluster.kubectl("scale", "k2t/k2think-v2", "-n", ns, "--replicas=3")
    after = eventually(
        "num_replicas 3 in serveConfigV2",
        lambda: rayservice_serving(cluster, "k2think-v2", ns, "num_replicas: 3"),
    )
    assert (
        after["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
        == before["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    )
    path = f"/apis/k2think.dev/v1alpha1/namespaces/{ns}/k2thinkdeployments/k2think-v2/scale"
    scale = json.loads(cluster.kubectl("get", "--raw", path).stdout)
    assert scale["spec"]["replicas"] == 3
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/instance=k2think-v2,app.kubernetes.io/name=k2think"
    )

    # An autoscaled deployment refuses a fixed count, with the CEL rule's message.
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    refused = cluster.kubectl("scale", "k2t/k2think", "-n", ns, "--replicas=3", check=False)
    assert refused.returncode != 0
    assert "replicas and autoscaling are mutually exclusive" in refused.stderr


# --- 5. bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parallelism": {"tensor": 0}}, "must be 'auto' or an integer from 1 to 64"),
        ({"pools": [{"name": "h100", "gpuType": "H900"}]}, 'Unsupported value: "H900"'),
        ({"replicas": 2}, "replicas and autoscaling are mutually exclusive"),
        (
            {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
            "minReplicas must not exceed maxReplicas",
        ),
    ],
)
def test_api_server_refuses_schema_and_cel_violations(
    cluster: Cluster, operator: OperatorProcess, ns: str, change: dict[str, Any], message: str
) -> None:
    doc = load_example("k2think.yaml", namespace=ns)
    doc["spec"].update(change)
    proc = apply_doc(cluster, doc, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert k2t(cluster, "k2think", ns) is None


def test_api_server_agrees_with_offline_cel_on_every_rule(cluster: Cluster, ns: str) -> None:
    """Each case of the offline CEL table (tests/test_cel_rules.py), sent to the real API server
    as a server-side dry run: the same verdict, the same field path, the same message."""
    from tests.conftest import minimal_doc
    from tests.test_cel_rules import ACCEPTED, VIOLATIONS

    def dry_run(change: dict[str, Any]) -> Any:
        doc = minimal_doc(**change)
        doc["metadata"] = {"name": "cel-probe", "namespace": ns}
        return cluster.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=e2e-user",
            "-f",
            "-",
            input=json.dumps(doc),
            check=False,
        )

    for change, path, _ in VIOLATIONS:
        proc = dry_run(change)
        offline = schema_errors(minimal_doc(**change))
        assert proc.returncode != 0, (change, proc.stdout)
        assert len(offline) == 1 and offline[0].field == path, offline
        assert f"{path}: Invalid value" in proc.stderr, proc.stderr
        assert offline[0].message in proc.stderr, (offline[0].message, proc.stderr)
    for change in ACCEPTED:
        proc = dry_run(change)
        assert proc.returncode == 0, (change, proc.stderr)
        assert schema_errors(minimal_doc(**change)) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            {"parallelism": {"tensor": 3}},
            "tensor=3 does not divide the 40 attention heads of k2-think",
        ),
        (
            {
                "pools": [{"name": "h100", "gpuType": "L40S-48GB", "gpusPerNode": 1}],
                "parallelism": {"pipeline": 1},
            },
            "k2-think does not fit pool h100",
        ),
    ],
)
def test_semantically_invalid_edit_leaves_rayservice_untouched(
    cluster: Cluster, operator: OperatorProcess, ns: str, change: dict[str, Any], fragment: str
) -> None:
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    wait_rayservice(cluster, "k2think", ns)
    wait_observed(cluster, "k2think", ns, 1)
    before = rayservice(cluster, "k2think", ns)
    assert before is not None

    doc = load_example("k2think.yaml", namespace=ns)
    doc["spec"].update(change)
    apply_doc(cluster, doc)
    cr = wait_observed(cluster, "k2think", ns, 2)
    invalid = condition(cr, "InvalidSpec")
    assert invalid is not None and invalid["status"] == "True"
    assert fragment in invalid["message"]
    assert cr["status"]["phase"] == "InvalidSpec"

    def warning_event() -> dict[str, Any] | None:
        events = items(cluster, "events", ns)
        for event in events:
            if (
                event.get("type") == "Warning"
                and event.get("reason") == "InvalidSpec"
                and event["involvedObject"].get("name") == "k2think"
            ):
                return event
        return None

    event = eventually("Warning event InvalidSpec", warning_event)
    assert fragment in event["message"]
    after = rayservice(cluster, "k2think", ns)
    assert after is not None
    assert after["spec"] == before["spec"]
    # Not once but over resync passes: a rejected spec never changes what is running.
    holds_without_fight(
        "the RayService untouched by the invalid edit",
        lambda: (
            (rayservice(cluster, "k2think", ns) or {}).get("metadata", {}).get("resourceVersion")
            == before["metadata"]["resourceVersion"]
        ),
        operator,
    )

    # Fixing the spec heals it.
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    healed = wait_observed(cluster, "k2think", ns, 3)
    assert condition(healed, "InvalidSpec")["status"] == "False"  # type: ignore[index]


# --- 7. drift -----------------------------------------------------------------------------------


def test_drift_is_repaired(cluster: Cluster, operator: OperatorProcess, ns: str) -> None:
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    original = wait_rayservice(cluster, "k2think", ns)
    wait_observed(cluster, "k2think", ns, 1)

    overwrite_serve_config(cluster, "k2think", ns, "applications: []\n")
    restored = eventually(
        "serveConfigV2 restored",
        lambda: (
            (r := rayservice(cluster, "k2think", ns))
            and r["spec"]["serveConfigV2"] == original["spec"]["serveConfigV2"]
            and r
        ),
    )
    assert restored["metadata"]["uid"] == original["metadata"]["uid"]

    cluster.kubectl("delete", "rayservices.ray.io", "k2think", "-n", ns, "--wait=true")
    recreated = eventually(
        "RayService recreated",
        lambda: (
            (r := rayservice(cluster, "k2think", ns))
            and r["metadata"]["uid"] != original["metadata"]["uid"]
            and r
        ),
    )
    assert recreated["spec"]["serveConfigV2"] == original["spec"]["serveConfigV2"]


# --- 8. restart ---------------------------------------------------------------------------------


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: Cluster, log_dir: Path, operator: OperatorProcess
) -> None:
    """Stop the module's operator, run a second one, SIGKILL it while it works, restart."""
    operator.stop()
    try:
        with namespace(cluster, "restart") as ns:
            docs = [load_example("k2think.yaml", namespace=ns, rename=f"k2t-{i}") for i in range(6)]
            for doc in docs:
                apply_doc(cluster, doc)
            victim = OperatorProcess(cluster, ["--all-namespaces"], log_dir / "operator-victim.log")
            victim.start()
            # Kill as soon as the first child appears: the others are mid-flight.
            eventually("first RayService", lambda: items(cluster, "rayservices.ray.io", ns) or None)
            victim.kill()
            survivor = OperatorProcess(
                cluster, ["--all-namespaces"], log_dir / "operator-survivor.log"
            )
            survivor.start()
            try:
                eventually(
                    "six RayServices",
                    lambda: len(items(cluster, "rayservices.ray.io", ns, OURS)) == 6,
                    timeout=90,
                )
                for doc in docs:
                    wait_observed(cluster, doc["metadata"]["name"], ns, 1)
                listed = items(cluster, "rayservices.ray.io", ns)
                assert sorted(r["metadata"]["name"] for r in listed) == [
                    f"k2t-{i}" for i in range(6)
                ]
                for r in listed:
                    assert len(r["metadata"]["ownerReferences"]) == 1
            finally:
                survivor.stop()
    finally:
        operator.start()


# --- 6 and 2. delete, and the real KubeRay operator ---------------------------------------------


@pytest.fixture(scope="module")
def kuberay_ns(cluster: Cluster) -> Iterator[str]:
    """A namespace the KubeRay operator (started only for it) watches."""
    name = unique_namespace("kuberay")
    cluster.kubectl("create", "namespace", name)
    cluster.start_kuberay(watch_namespace=name)
    try:
        yield name
    finally:
        cluster.stop_kuberay()
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_kuberay_builds_the_cluster_on_the_planned_pool_then_gc_removes_it(
    cluster: Cluster, operator: OperatorProcess, kuberay_ns: str
) -> None:
    ns = kuberay_ns
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    wait_rayservice(cluster, "k2think", ns)
    raycluster = eventually(
        "RayCluster created by KubeRay",
        lambda: next(iter(items(cluster, "rayclusters.ray.io", ns)), None),
        timeout=120,
    )
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}

    def scheduled_pods() -> list[dict[str, Any]] | None:
        pods = items(cluster, "pods", ns, "app.kubernetes.io/instance=k2think")
        workers = [
            p
            for p in pods
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == "ray-worker"
        ]
        heads = [
            p
            for p in pods
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == "ray-head"
        ]
        if not workers or not heads:
            return None
        if all(p["status"].get("phase") == "Running" and p["spec"].get("nodeName") for p in pods):
            return pods
        return None

    pods = eventually("head and worker pods Running on KWOK nodes", scheduled_pods, timeout=180)
    cr = k2t(cluster, "k2think", ns)
    assert cr is not None
    plan = cr["status"]["plan"]
    for pod in pods:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        node = nodes[pod["spec"]["nodeName"]]
        pool = node["metadata"]["labels"]["k2think.dev/pool"]
        if component == "ray-worker":
            assert pool == "h100", (pod["metadata"]["name"], pool)
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == str(plan["gpusPerWorkerPod"])
        else:
            assert pool == "cpu"
            assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get(
                "limits", {}
            )

    eventually(
        "status.replicas counts the worker pods",
        lambda: (k2t(cluster, "k2think", ns) or {}).get("status", {}).get("replicas") == 1,
    )

    # 6. Delete: the garbage collector removes the RayService, then KubeRay's children.
    delete_and_wait_for_pods_gone(cluster, "k2think", ns)
    eventually(
        "RayService collected", lambda: rayservice(cluster, "k2think", ns) is None, timeout=120
    )
    cluster_name = raycluster["metadata"]["name"]

    def raycluster_gone() -> bool:
        return get(cluster, "rayclusters.ray.io", cluster_name, ns) is None

    eventually("RayCluster collected", raycluster_gone, timeout=120)


def delete_and_wait_for_pods_gone(cluster: Cluster, name: str, ns: str) -> None:
    """Delete a K2ThinkDeployment and wait until the garbage collector took its Ray pods."""
    cluster.kubectl("delete", "k2t", name, "-n", ns, "--wait=true", timeout=120)
    eventually(
        f"Ray pods of {name} gone",
        lambda: not items(cluster, "pods", ns, f"app.kubernetes.io/instance={name}"),
        timeout=120,
    )


def test_pods_waiting_for_gpus_surface_as_capacity_blocked(
    cluster: Cluster, operator: OperatorProcess, kuberay_ns: str
) -> None:
    """12 replicas of 4 GPUs on a pool of 32 GPUs: 4 worker pods cannot be scheduled."""
    ns = kuberay_ns
    doc = load_example("k2think.yaml", namespace=ns, rename="k2think-big")
    del doc["spec"]["autoscaling"]
    doc["spec"]["replicas"] = 12
    apply_doc(cluster, doc)

    def blocked() -> dict[str, Any] | None:
        # KubeRay creates the worker pods one by one and the scheduler refuses them one by one:
        # the condition turns True with the first refused pod and counts up to 4.
        cond = condition(k2t(cluster, "k2think-big", ns), "CapacityBlocked")
        blocked = cond and cond["status"] == "True" and "4 pod(s)" in cond["message"]
        return cond if blocked else None

    cond = eventually("CapacityBlocked=True for 4 pods", blocked, timeout=180)
    assert cond["reason"] == "Unschedulable"
    assert "4 pod(s) in h100 cannot be scheduled" in cond["message"]
    assert "nvidia.com/gpu" in cond["message"]  # the scheduler's own words
    cr = k2t(cluster, "k2think-big", ns)
    assert cr is not None and cr["status"]["phase"] == "CapacityBlocked"
    assert cr["status"]["replicas"] == 12 and cr["status"]["readyReplicas"] == 0

    delete_and_wait_for_pods_gone(cluster, "k2think-big", ns)


def test_suspend_frees_the_gpus_in_place_and_resume_brings_them_back(
    cluster: Cluster, operator: OperatorProcess, kuberay_ns: str
) -> None:
    ns, name = kuberay_ns, "k2think-suspend"
    selector = f"app.kubernetes.io/instance={name}"
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns, rename=name))

    def running_pods() -> list[dict[str, Any]] | None:
        pods = items(cluster, "pods", ns, selector)
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) >= 2 and len(running) == len(pods) else None

    eventually("head and worker Running", running_pods, timeout=180)

    def clusters_of_this_deployment() -> list[dict[str, Any]]:
        return [
            c
            for c in items(cluster, "rayclusters.ray.io", ns)
            if any(o["name"] == name for o in c["metadata"].get("ownerReferences") or [])
        ]

    (before,) = clusters_of_this_deployment()
    spec_edit(cluster, name, ns, {"suspend": True})
    eventually("all Ray pods gone", lambda: not items(cluster, "pods", ns, selector), timeout=120)
    eventually(
        "phase Suspended",
        lambda: (k2t(cluster, name, ns) or {}).get("status", {}).get("phase") == "Suspended",
    )
    # KubeRay suspended the running cluster in place: no second cluster was built.
    (during,) = clusters_of_this_deployment()
    assert during["metadata"]["uid"] == before["metadata"]["uid"]

    spec_edit(cluster, name, ns, {"suspend": False})
    eventually("pods back after resume", running_pods, timeout=180)
    (after,) = clusters_of_this_deployment()
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    delete_and_wait_for_pods_gone(cluster, name, ns)


def test_example_files_are_what_users_apply() -> None:
    """The examples the tests above apply are the published files users apply: ``load_example``
    changes only the namespace, each file passes the offline ``validate`` users run first, and
    the README points users at it."""
    readme = (ROOT / "README.md").read_text()
    for name in ("k2think.yaml", "k2think-v2.yaml", "k2think-multipool.yaml"):
        path = ROOT / "crds" / "examples" / name
        published = yaml.safe_load(path.read_text())
        applied = load_example(name, namespace="users-namespace")
        assert applied["kind"] == published["kind"] == "K2ThinkDeployment"
        assert {k: v for k, v in applied.items() if k != "metadata"} == {
            k: v for k, v in published.items() if k != "metadata"
        }
        assert applied["metadata"] == {**published["metadata"], "namespace": "users-namespace"}
        out, err = io.StringIO(), io.StringIO()
        assert cli_main(["validate", "-f", str(path)], out, err) == 0, err.getvalue()
        assert f"crds/examples/{name}" in readme
