"""GCS fault tolerance: the spec block, KubeRay's gcsFaultToleranceOptions, and the
GcsFaultToleranceOff condition and event (informational: never changes Ready or phase)."""

from __future__ import annotations

from typing import Any

import pytest

from k2think_operator.api import reasons as r
from k2think_operator.api.spec import InvalidSpec, parse_spec
from k2think_operator.deployment.status import Observation, build_status, phase
from k2think_operator.plan.fault_tolerance import gcs_ft_condition, gcs_ft_risk
from k2think_operator.plan.planner import plan_deployment
from tests.conftest import minimal_doc
from tests.test_render import rayservice_of

FT = {"redisAddress": "redis-ha.ray-system.svc:6379"}


def _plan(**spec: Any) -> Any:
    return plan_deployment(parse_spec(minimal_doc(**spec)["spec"]), "demo")


def test_options_render_as_kuberay_gcs_fault_tolerance_options() -> None:
    ft = {**FT, "passwordSecret": {"name": "redis-auth", "key": "password"}}
    cluster = rayservice_of(minimal_doc(ray={"gcsFaultTolerance": ft}))["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis-ha.ray-system.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
    }
    # KubeRay's validation refuses these when the options are set: we never render them.
    head = cluster["headGroupSpec"]
    assert "redis-password" not in head["rayStartParams"]
    env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
    assert not env & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"}


def test_no_options_without_the_block() -> None:
    cluster = rayservice_of(minimal_doc())["spec"]["rayClusterConfig"]
    assert "gcsFaultToleranceOptions" not in cluster


def test_fixed_storage_namespace_only_without_cluster_switchover() -> None:
    ft = {**FT, "externalStorageNamespace": "k2think-demo"}
    with pytest.raises(InvalidSpec, match="upgradeStrategy None"):
        parse_spec(minimal_doc(ray={"gcsFaultTolerance": ft})["spec"])
    doc = minimal_doc(ray={"gcsFaultTolerance": ft}, upgradeStrategy="None")
    options = rayservice_of(doc)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options["externalStorageNamespace"] == "k2think-demo"


@pytest.mark.parametrize("address", ["redis:6379", "redis://10.0.0.1:6379", "rediss://r.x:6380"])
def test_redis_addresses_accepted(address: str) -> None:
    parse_spec(minimal_doc(ray={"gcsFaultTolerance": {"redisAddress": address}})["spec"])


@pytest.mark.parametrize("address", ["redis", "http://redis:6379", "redis:port", ""])
def test_redis_addresses_refused(address: str) -> None:
    with pytest.raises(InvalidSpec, match="redisAddress"):
        parse_spec(minimal_doc(ray={"gcsFaultTolerance": {"redisAddress": address}})["spec"])


@pytest.mark.parametrize(
    ("spec", "threshold", "status", "reason"),
    [
        ({"autoscaling": {"maxReplicas": 8}}, 4, "True", r.ABOVE_REPLICA_THRESHOLD),
        ({"autoscaling": {"maxReplicas": 4}}, 4, "False", r.BELOW_REPLICA_THRESHOLD),
        ({"replicas": 5}, 4, "True", r.ABOVE_REPLICA_THRESHOLD),
        ({"replicas": 5}, 10, "False", r.BELOW_REPLICA_THRESHOLD),
        (
            {"autoscaling": {"maxReplicas": 64}, "ray": {"gcsFaultTolerance": FT}},
            4,
            "False",
            r.GCS_FT_CONFIGURED,
        ),
    ],
)
def test_condition(spec: dict[str, Any], threshold: int, status: str, reason: str) -> None:
    cond = gcs_ft_condition(_plan(**spec), 3, threshold)
    assert (cond["type"], cond["status"], cond["reason"]) == (
        r.GCS_FAULT_TOLERANCE_OFF,
        status,
        reason,
    )
    assert cond["observedGeneration"] == 3
    risk = gcs_ft_risk(_plan(**spec), threshold)
    assert (risk is not None) == (status == "True")


def test_the_warning_names_the_cost_and_the_fix() -> None:
    risk = gcs_ft_risk(_plan(autoscaling={"maxReplicas": 8}), 4)
    assert risk is not None
    assert "8 replicas" in risk and "spec.ray.gcsFaultTolerance" in risk


def test_condition_does_not_change_readiness_or_phase() -> None:
    plan = _plan(autoscaling={"maxReplicas": 100})
    status = build_status(
        Observation(generation=1, plan=plan, gcs_ft_replica_threshold=4), None, "now"
    )
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type[r.GCS_FAULT_TOLERANCE_OFF]["status"] == "True"
    without = [c for c in status["conditions"] if c["type"] != r.GCS_FAULT_TOLERANCE_OFF]
    assert status["phase"] == phase(without, False)
