"""The operator's per-deployment gauges the dashboard and the alert rules read."""

from __future__ import annotations

from prometheus_client import REGISTRY

from k2think_operator.api.reasons import CONDITION_TYPES
from k2think_operator.api.spec import parse_spec
from k2think_operator.deployment import metrics
from k2think_operator.deployment.status import PodSummary
from k2think_operator.plan.planner import plan_deployment
from tests.conftest import minimal_doc

PLAN = plan_deployment(parse_spec(minimal_doc()["spec"]), "demo")  # h100, 4 GPUs per worker pod
MULTI = plan_deployment(
    parse_spec(
        minimal_doc(
            pools=[
                {"name": "h200", "gpuType": "H200-141GB", "gpusPerNode": 8},
                {"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8},
            ]
        )["spec"]
    ),
    "demo",
)


def value(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def worker(name: str, pool: str | None, node: str | None, phase: str = "Running") -> PodSummary:
    return PodSummary(name, "ray-worker", pool, phase, ready=phase == "Running", node=node)


def test_condition_values_one_per_type() -> None:
    status = {
        "conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "CapacityBlocked", "status": "True"},
            {"type": "InvalidSpec", "status": "Unknown"},
        ]
    }
    # Every condition type the operator reports has a series (0 when absent or not True).
    assert metrics.condition_values(status) == {
        **{condition: 0 for condition in CONDITION_TYPES},
        "CapacityBlocked": 1,
    }
    assert {"Ready", "Progressing", "Degraded", "InvalidSpec", "Admitted"} <= set(CONDITION_TYPES)


def test_application_status_is_one_hot_and_zero_when_unknown() -> None:
    assert metrics.application_status_values({"applicationStatus": "DEPLOY_FAILED"}) == {
        "NOT_STARTED": 0,
        "DEPLOYING": 0,
        "RUNNING": 0,
        "DEPLOY_FAILED": 1,
        "DELETING": 0,
        "UNHEALTHY": 0,
    }
    assert set(metrics.application_status_values({}).values()) == {0}


def test_serve_statuses_match_ray() -> None:
    from ray.serve.schema import ApplicationStatus

    assert set(metrics.SERVE_APPLICATION_STATUSES) == {s.value for s in ApplicationStatus}


def test_pool_gpus_counts_bound_and_pending_workers_per_planned_pool() -> None:
    pods = [
        worker("w1", "h100", "node-1"),
        worker("w2", "h100", None, phase="Pending"),
        worker("w3", "h100", "node-2", phase="Succeeded"),  # finished: holds nothing
        worker("w4", "elsewhere", "node-3"),  # not a planned pool
        PodSummary("head", "ray-head", None, "Running", ready=True, node="cpu-0"),
    ]
    assert metrics.pool_gpus(PLAN, pods) == {"h100": (4, 4)}
    assert metrics.pool_gpus(MULTI, []) == {"h200": (0, 0), "h100": (0, 0)}


def test_observe_exports_every_series_and_forget_removes_them() -> None:
    ns, name = "team-metrics", "demo"
    status = {
        "replicas": 2,
        "readyReplicas": 1,
        "applicationStatus": "RUNNING",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    pods = [worker("w1", "h100", "n1"), worker("w2", "h100", "n2")]
    metrics.observe_deployment(ns, name, PLAN, status, pods)
    base = {"namespace": ns, "name": name}
    assert value("k2think_reconcile_errors_total", **base) == 0
    assert value("k2think_replicas", **base) == 2
    assert value("k2think_ready_replicas", **base) == 1
    assert value("k2think_deployment_condition", **base, type="Ready") == 1
    assert value("k2think_deployment_condition", **base, type="CapacityBlocked") == 0
    assert value("k2think_serve_application_status", **base, status="RUNNING") == 1
    assert value("k2think_serve_application_status", **base, status="UNHEALTHY") == 0
    assert value("k2think_pool_gpus_in_use", **base, pool="h100") == 8
    assert value("k2think_pool_gpus_pending", **base, pool="h100") == 0
    info = {
        **base,
        "model": PLAN.model,
        "pool": "h100",
        "gpu_type": "H100-80GB",
        "tensor_parallel": str(PLAN.tensor_parallel),
        "pipeline_parallel": "1",
    }
    assert value("k2think_deployment_info", **info) == 1

    # The plan moves to other pools: the old info and pool series go, the new ones appear.
    metrics.observe_deployment(ns, name, MULTI, status, [])
    assert value("k2think_deployment_info", **info) is None
    assert value("k2think_pool_gpus_in_use", **base, pool="h100") == 0
    assert value("k2think_pool_gpus_in_use", **base, pool="h200") == 0
    metrics.observe_deployment(ns, name, PLAN, status, [])
    assert value("k2think_pool_gpus_in_use", **base, pool="h200") is None

    metrics.forget_deployment(ns, name)
    for metric, extra in [
        ("k2think_replicas", {}),
        ("k2think_deployment_condition", {"type": "Ready"}),
        ("k2think_serve_application_status", {"status": "RUNNING"}),
        ("k2think_pool_gpus_in_use", {"pool": "h100"}),
        ("k2think_deployment_info", {k: v for k, v in info.items() if k not in base}),
    ]:
        assert value(metric, **base, **extra) is None, metric
