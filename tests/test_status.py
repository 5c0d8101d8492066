"""Status calculation, table-driven (KubeRay style): observation in, conditions out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from k2think_operator.api.spec import parse_spec
from k2think_operator.deployment.status import (
    Observation,
    PodSummary,
    RayServiceView,
    build_status,
    next_capacity_check,
    read_rayservice,
    set_condition,
    status_patch,
    summarize_error,
)
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.runtime.conditions import without_nulls
from tests.conftest import minimal_doc
from tests.kuberay_view import rayservice_from_serve

T0 = "2026-11-28T00:00:00Z"
NOW = 1_800_000_000.0
T1 = "2026-11-28T00:05:00Z"
FIXTURES = Path(__file__).parent / "fixtures" / "serve_status"

PLAN = plan_deployment(parse_spec(minimal_doc()["spec"]), "demo")


def rs(app: str | None, ready: bool = False, **extra: Any) -> RayServiceView:
    return RayServiceView(
        ready=ready,
        ready_reason=extra.pop("ready_reason", ""),
        ready_message=extra.pop("ready_message", ""),
        upgrade_in_progress=extra.pop("upgrade", False),
        app_status=app,
        app_message=extra.pop("app_message", ""),
        **extra,
    )


def worker(name: str, ready: bool = True, **extra: Any) -> PodSummary:
    return PodSummary(name, "ray-worker", "h100", "Running" if ready else "Pending", ready, **extra)


def observe(**fields: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 2,
        "plan": PLAN,
        "name": "demo",
        "namespace": "ns",
        "now": NOW,
    }
    base.update(fields)
    return Observation(**base)


def conditions(obs: Observation) -> dict[str, tuple[str, str]]:
    status = build_status(obs, None, T0)
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


CASES = [
    (
        "no rayservice yet",
        observe(),
        {"Ready": ("False", "RayServiceNotFound"), "Progressing": ("True", "RayServiceNotFound")},
        "Deploying",
    ),
    (
        "cluster starting",
        observe(rayservice=rs(None, ready_message="Head pod not running")),
        {"Ready": ("False", "RayServiceNotReady"), "Progressing": ("True", "RayServiceNotReady")},
        "Deploying",
    ),
    (
        "application deploying",
        observe(rayservice=rs("DEPLOYING")),
        {"Ready": ("False", "ApplicationDeploying"), "Degraded": ("False", "AsExpected")},
        "Deploying",
    ),
    (
        "serving",
        observe(rayservice=rs("RUNNING", ready=True), pods=(worker("a"),)),
        {
            "Ready": ("True", "Serving"),
            "Progressing": ("False", "Converged"),
            "Degraded": ("False", "AsExpected"),
            "InvalidSpec": ("False", "SpecValid"),
            "CapacityBlocked": ("False", "Scheduled"),
        },
        "Serving",
    ),
    (
        "upgrade while serving",
        observe(rayservice=rs("RUNNING", ready=True, upgrade=True)),
        {"Ready": ("True", "Serving"), "Progressing": ("True", "UpgradeInProgress")},
        "Upgrading",
    ),
    (
        "deploy failed",
        observe(rayservice=rs("DEPLOY_FAILED", app_message="ValueError: bad engine arg")),
        {
            "Ready": ("False", "ApplicationDeployFailed"),
            "Degraded": ("True", "ApplicationDeployFailed"),
            "Progressing": ("False", "ApplicationDeployFailed"),
        },
        "Degraded",
    ),
    (
        "kuberay missing",
        observe(
            apply_error="the RayService API is not available", apply_error_reason="KubeRayMissing"
        ),
        {"Degraded": ("True", "KubeRayMissing"), "Progressing": ("False", "KubeRayMissing")},
        "Degraded",
    ),
    (
        "invalid spec keeps serving",
        observe(
            plan=None,
            spec_problems=("spec.parallelism.tensor: tensor=3 ...",),
            rayservice=rs("RUNNING", ready=True),
        ),
        {
            "InvalidSpec": ("True", "InvalidSpec"),
            "Ready": ("True", "Serving"),
            "Progressing": ("False", "InvalidSpec"),
        },
        "InvalidSpec",
    ),
    (
        "pods unschedulable",
        observe(
            rayservice=rs("DEPLOYING"),
            pods=(
                worker(
                    "a",
                    ready=False,
                    unschedulable_message="0/6 nodes are available: 6 Insufficient nvidia.com/gpu.",
                    unschedulable_since=NOW - 120,
                ),
            ),
        ),
        {"CapacityBlocked": ("True", "Unschedulable")},
        "CapacityBlocked",
    ),
    (
        "pending briefly is not blocked",
        observe(
            rayservice=rs("DEPLOYING"),
            pods=(
                worker(
                    "a",
                    ready=False,
                    unschedulable_message="Insufficient nvidia.com/gpu",
                    unschedulable_since=NOW - 5,
                ),
            ),
        ),
        {"CapacityBlocked": ("False", "Scheduled")},
        "Deploying",
    ),
    (
        "suspended",
        observe(suspended=True, rayservice=rs(None)),
        {"Ready": ("False", "Suspended"), "Progressing": ("False", "Suspended")},
        "Suspended",
    ),
]


@pytest.mark.parametrize(("title", "obs", "expected", "phase"), CASES, ids=[c[0] for c in CASES])
def test_conditions(
    title: str, obs: Observation, expected: dict[str, tuple[str, str]], phase: str
) -> None:
    got = conditions(obs)
    for kind, value in expected.items():
        assert got[kind] == value, (title, kind, got[kind])
    assert build_status(obs, None, T0)["phase"] == phase


def test_every_condition_carries_generation_and_message() -> None:
    status = build_status(observe(rayservice=rs("DEPLOYING")), None, T0)
    assert status["observedGeneration"] == 2
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "Progressing",
        "Degraded",
        "InvalidSpec",
        "CapacityBlocked",
        "SpillOver",
        "GcsFaultToleranceOff",
        "SecurityDowngraded",
    ]
    for cond in status["conditions"]:
        assert (
            cond["observedGeneration"] == 2 and cond["message"] and cond["lastTransitionTime"] == T0
        )


def test_transition_time_moves_only_on_flip() -> None:
    first = set_condition(
        [], {"type": "Ready", "status": "False", "reason": "A", "message": "a"}, T0
    )
    same = set_condition(
        first, {"type": "Ready", "status": "False", "reason": "B", "message": "b"}, T1
    )
    flipped = set_condition(
        same, {"type": "Ready", "status": "True", "reason": "C", "message": "c"}, T1
    )
    assert same[0]["lastTransitionTime"] == T0 and same[0]["reason"] == "B"
    assert flipped[0]["lastTransitionTime"] == T1


def test_unchanged_world_means_no_write() -> None:
    obs = observe(rayservice=rs("RUNNING", ready=True), pods=(worker("a"),))
    first = build_status(obs, None, T0)
    second = build_status(obs, first, T1)
    assert status_patch(first, second) is None
    assert status_patch(first, build_status(observe(rayservice=rs("DEPLOYING")), first, T1))


def test_the_stored_status_has_no_nulls_and_is_no_reason_to_write() -> None:
    """The API server keeps no null fields (merge-patch deletes them, the CRD's structural schema
    prunes them): the status read back must compare equal to the one that was written."""
    obs = observe(rayservice=rs("RUNNING", ready=True), pods=(worker("a"),))
    desired = build_status(obs, None, T0)
    assert any(pool.get("maxReplicas", 0) is None for pool in desired["plan"]["pools"])
    stored = without_nulls(desired)
    assert "maxReplicas" not in stored["plan"]["pools"][0]
    assert status_patch(stored, build_status(obs, stored, T1)) is None
    # A field that had a value and now has none is a change (the patch's null deletes it).
    capped = {
        **stored,
        "plan": {**stored["plan"], "pools": [{**stored["plan"]["pools"][0], "maxReplicas": 3}]},
    }
    assert status_patch(capped, build_status(obs, capped, T1)) is not None


def test_plan_survives_an_invalid_spec() -> None:
    good = build_status(observe(rayservice=rs("RUNNING", ready=True)), None, T0)
    bad = build_status(observe(plan=None, spec_problems=("x",)), good, T1)
    assert bad["plan"] == good["plan"]


def test_replica_counts_from_worker_pods() -> None:
    obs = observe(
        rayservice=rs("RUNNING", ready=True),
        pods=(
            worker("a"),
            worker("b"),
            worker("c", ready=False),
            PodSummary("h", "ray-head", None, "Running", True),
        ),
    )
    status = build_status(obs, None, T0)
    assert status["replicas"] == 3 and status["readyReplicas"] == 2
    deploying = build_status(observe(rayservice=rs("DEPLOYING"), pods=obs.pods), None, T0)
    assert deploying["readyReplicas"] == 0
    assert status["endpoint"] == "http://demo-serve-svc.ns.svc:8000/v1"
    assert status["selector"] == "app.kubernetes.io/instance=demo,app.kubernetes.io/name=k2think"


def test_read_rayservice_from_kuberay_status() -> None:
    obj = {
        "metadata": {"annotations": {"k2think.dev/cluster-hash": "abc"}},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"},
                {"type": "UpgradeInProgress", "status": "False"},
            ],
            "activeServiceStatus": {
                "rayClusterName": "demo-abcde",
                "applicationStatuses": {
                    "llm": {
                        "status": "RUNNING",
                        "serveDeploymentStatuses": {"LLMServer:k2": {"status": "HEALTHY"}},
                    }
                },
            },
        },
    }
    view = read_rayservice(obj)
    assert view is not None
    assert view.ready and view.app_status == "RUNNING" and not view.upgrade_in_progress
    assert view.active_cluster == "demo-abcde" and view.cluster_hash == "abc"
    assert read_rayservice(None) is None
    assert read_rayservice({"status": {}}) == RayServiceView(False, "", "", False, None, "")


EXPECTED_FROM_SAMPLES = {
    # sample: (Ready, Ready reason, Degraded, phase)
    "no_applications.json": ("False", "RayServiceNotReady", "False", "Deploying"),
    "deploying.json": ("False", "ApplicationDeploying", "False", "Deploying"),
    "updating.json": ("False", "ApplicationDeploying", "False", "Deploying"),
    "running.json": ("True", "Serving", "False", "Serving"),
    "upscaling.json": ("True", "Serving", "False", "Serving"),
    "running_two_replicas.json": ("True", "Serving", "False", "Serving"),
    "downscaling.json": ("True", "Serving", "False", "Serving"),
    "deploy_failed.json": ("False", "ApplicationDeployFailed", "True", "Degraded"),
    "update_failed.json": ("False", "ApplicationDeployFailed", "True", "Degraded"),
}


def test_every_captured_sample_has_an_expectation() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(EXPECTED_FROM_SAMPLES)


@pytest.mark.parametrize("sample", sorted(EXPECTED_FROM_SAMPLES))
def test_real_serve_status_samples(sample: str) -> None:
    """Real GET /api/serve/applications/ answers (captured by the data-plane suite), as KubeRay
    reports them in the RayService, through the operator's status logic."""
    serve = json.loads((FIXTURES / sample).read_text())
    view = read_rayservice(rayservice_from_serve(serve))
    status = build_status(observe(rayservice=view), None, T0)
    conds = {c["type"]: c for c in status["conditions"]}
    ready, reason, degraded, phase = EXPECTED_FROM_SAMPLES[sample]
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == (ready, reason)
    assert conds["Degraded"]["status"] == degraded
    assert status["phase"] == phase
    if degraded == "True":
        # The reason Ray gives (the bad model path) reaches the user's condition message.
        assert "'/nonexistent/k2-think-tiny'" in conds["Degraded"]["message"]
        assert len(conds["Degraded"]["message"]) < 1500


def test_summarize_error_keeps_sentence_and_exception() -> None:
    message = (
        "The deployment failed to start 3 times. See logs. Error:\n"
        "\x1b[36mray::ServeReplica\x1b[39m (pid=1)\n"
        '  File "x.py", line 1, in f\n'
        "    raise RuntimeError('boom')\n"
        "RuntimeError: boom: '/models/missing'\n"
    )
    assert summarize_error(message) == (
        "The deployment failed to start 3 times. ... RuntimeError: boom: '/models/missing'"
    )
    assert summarize_error("") == ""
    assert summarize_error("one line") == "one line"


def test_next_capacity_check_counts_down_the_grace() -> None:
    waiting = worker("a", ready=False, unschedulable_message="x", unschedulable_since=NOW - 20)
    assert next_capacity_check(observe(pods=(waiting,))) == pytest.approx(40)
    late = worker("b", ready=False, unschedulable_message="x", unschedulable_since=NOW - 90)
    assert next_capacity_check(observe(pods=(late,))) is None
    assert next_capacity_check(observe(pods=(worker("c"),))) is None


def test_status_patch_removes_only_fields_we_own() -> None:
    current = {"phase": "Serving", "applicationStatus": "RUNNING", "someoneElse": 1}
    desired = {"phase": "Deploying"}
    assert status_patch(current, desired) == {"phase": "Deploying", "applicationStatus": None}
    assert status_patch({"phase": "Deploying", "someoneElse": 1}, desired) is None


#: A RayService in KubeRay v1.6.2's incremental upgrade (``NewClusterWithIncrementalUpgrade``):
#: the pending cluster at 40% capacity with 30% of the traffic (rayservice_types.go).
INCREMENTAL_RAYSERVICE: dict[str, Any] = {
    "status": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"},
            {
                "type": "UpgradeInProgress",
                "status": "True",
                "reason": "BothActivePendingClustersExist",
            },
        ],
        "activeServiceStatus": {
            "rayClusterName": "demo-old",
            "targetCapacity": 60,
            "trafficRoutedPercent": 70,
            "applicationStatuses": {"llm": {"status": "RUNNING"}},
        },
        "pendingServiceStatus": {
            "rayClusterName": "demo-new",
            "targetCapacity": 40,
            "trafficRoutedPercent": 30,
            "lastTrafficMigratedTime": "2026-12-06T10:00:00Z",
            "applicationStatuses": {"llm": {"status": "RUNNING"}},
        },
    }
}


def test_an_incremental_upgrade_reports_each_clusters_capacity_and_traffic() -> None:
    view = read_rayservice(INCREMENTAL_RAYSERVICE)
    assert view is not None and view.incremental
    status = build_status(observe(rayservice=view), None, T0)
    assert status["upgrade"] == {
        "activeCluster": "demo-old",
        "pendingCluster": "demo-new",
        "activeTargetCapacity": 60,
        "activeTrafficPercent": 70,
        "pendingTargetCapacity": 40,
        "pendingTrafficPercent": 30,
        "lastTrafficMigratedTime": "2026-12-06T10:00:00Z",
    }
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "UpgradeInProgress"
    assert "demo-new at 40% capacity with 30% of the traffic" in progressing["message"]
    assert "demo-old at 60% capacity with 70%" in progressing["message"]
    # Done: KubeRay drops the pending cluster; status.upgrade goes with a merge patch's null.
    done = build_status(observe(rayservice=rs("RUNNING", ready=True)), status, T1)
    assert "upgrade" not in done
    patch = status_patch(status, done)
    assert patch is not None and patch["upgrade"] is None


def test_a_new_cluster_upgrade_reports_no_capacity() -> None:
    """NewCluster: KubeRay sets no target capacity, so no status.upgrade, the plain message."""
    obj = json.loads(json.dumps(INCREMENTAL_RAYSERVICE))
    for side in ("activeServiceStatus", "pendingServiceStatus"):
        for key in ("targetCapacity", "trafficRoutedPercent", "lastTrafficMigratedTime"):
            obj["status"][side].pop(key, None)
    view = read_rayservice(obj)
    assert view is not None and view.upgrade_in_progress and not view.incremental
    status = build_status(observe(rayservice=view), None, T0)
    assert "upgrade" not in status
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["message"] == "KubeRay is preparing Ray cluster demo-new"
