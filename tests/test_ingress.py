"""The OpenAI ingress: sized from the fleet, placed on the head or a CPU group, and accepted by
Ray Serve's own schemas (the whole LLMServingArgs, with vLLM importable, in the data-plane suite:
e2e/dataplane/test_05_ingress_contract.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

# Plain imports: ray[serve]==2.60.0 is a test requirement.
import ray.serve.config as serve_config_mod
import ray.serve.schema as serve_schema
import yaml
from ray.llm._internal.common.dict_utils import (
    maybe_apply_llm_deployment_config_defaults,
)

from k2think_operator.api.spec import INGRESS_GROUP, InvalidSpec, parse_spec
from k2think_operator.plan.ingress_sizing import (
    HEAD_RESOURCE,
    INGRESS_RESOURCE,
    SERVE_LLM_DEFAULT_INGRESS_OPTIONS,
    cpu_count,
    default_target,
    ingress_deployment_config,
)
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION
from k2think_operator.render.serve_config import effective_ingress_options
from tests.conftest import CPU_POOL, TINY_MODEL, minimal_doc
from tests.test_render import rayservice_of


def _plan(**spec: Any) -> Any:
    return plan_deployment(parse_spec(minimal_doc(**spec)["spec"]), "demo")


def _ingress_args(doc: dict[str, Any]) -> dict[str, Any]:
    """The ingress's options as Serve applies them (args' placement, the override's sizing)."""
    return effective_ingress_options(yaml.safe_load(rayservice_of(doc)["spec"]["serveConfigV2"]))


def test_small_fleet_stays_on_the_head() -> None:
    plan = _plan(
        model=TINY_MODEL,
        pools=[CPU_POOL],
        autoscaling={"maxReplicas": 2},
        serving={"maxOngoingRequests": 8},
    )
    ingress = plan.ingress
    assert ingress is not None
    assert ingress.placement == "head"
    assert ingress.fleet_streams == 2 * plan.max_ongoing_requests
    assert ingress.max_replicas == math.ceil(ingress.fleet_streams / default_target())
    assert "Ray head" in ingress.explanation


def test_large_fleet_gets_a_cpu_group_that_scales() -> None:
    doc = minimal_doc(autoscaling={"minReplicas": 2, "maxReplicas": 100})
    plan = plan_deployment(parse_spec(doc["spec"]), "demo")
    assert plan.ingress is not None and plan.ingress.placement == "cpuGroup"
    assert plan.ingress.max_replicas == math.ceil(
        100 * plan.max_ongoing_requests / default_target()
    )
    groups = rayservice_of(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (group,) = [g for g in groups if g["groupName"] == INGRESS_GROUP]
    assert group["resources"] == {"GPU": "0", INGRESS_RESOURCE: "4"}
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= plan.ingress.max_pods
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    args = _ingress_args(doc)
    assert args["ray_actor_options"] == {"num_cpus": 1, "resources": {INGRESS_RESOURCE: 1}}


def test_head_placement_renders_no_ingress_group() -> None:
    doc = minimal_doc(serving={"ingress": {"placement": "head", "maxReplicas": 3}})
    groups = rayservice_of(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert INGRESS_GROUP not in [g["groupName"] for g in groups]
    args = _ingress_args(doc)
    assert args["ray_actor_options"]["resources"] == {HEAD_RESOURCE: 1}
    assert args["autoscaling_config"]["max_replicas"] == 3


@pytest.mark.parametrize(
    ("ingress", "expect"),
    [
        ({"minReplicas": 2, "maxReplicas": 5, "targetOngoingRequests": 7}, (2, 5, 7, 14)),
        ({"targetOngoingRequests": 1000}, (1, 2, 1000, 2000)),  # 4 x 256 streams
        ({"minReplicas": 0}, (0, None, None, None)),
    ],
)
def test_spec_overrides(ingress: dict[str, Any], expect: tuple[Any, ...]) -> None:
    plan = _plan(autoscaling={"maxReplicas": 4}, serving={"ingress": ingress})
    got = plan.ingress
    assert got is not None
    for want, have in zip(
        expect,
        (got.min_replicas, got.max_replicas, got.target_ongoing_requests, got.max_ongoing_requests),
        strict=True,
    ):
        assert want is None or want == have


def test_scale_to_zero_fleet_lets_the_ingress_go_to_zero() -> None:
    plan = _plan(autoscaling={"minReplicas": 0, "maxReplicas": 2})
    assert plan.ingress is not None and plan.ingress.min_replicas == 0
    assert plan.ingress.initial_replicas == 1


def test_plan_status_and_refusals() -> None:
    status = _plan(autoscaling={"maxReplicas": 8}).to_status()
    assert set(status["ingress"]) >= {"placement", "maxReplicas", "explanation"}
    with pytest.raises(InvalidSpec, match="ingress minReplicas"):
        parse_spec(minimal_doc(serving={"ingress": {"minReplicas": 3, "maxReplicas": 2}})["spec"])
    with pytest.raises(InvalidSpec, match="reserved"):
        parse_spec(minimal_doc(pools=[{"name": INGRESS_GROUP, "gpuType": "H100-80GB"}])["spec"])


@pytest.mark.parametrize(
    "doc",
    [
        minimal_doc(),
        minimal_doc(autoscaling={"minReplicas": 0, "maxReplicas": 3}),
        minimal_doc(autoscaling={"minReplicas": 2, "maxReplicas": 100}),
        minimal_doc(model=TINY_MODEL, pools=[CPU_POOL], autoscaling={"maxReplicas": 2}),
        minimal_doc(serving={"ingress": {"placement": "head", "minReplicas": 0}}),
    ],
)
def test_ray_accepts_the_merged_ingress_options(doc: dict[str, Any]) -> None:
    """Merged as build_openai_app merges them, then Serve's DeploymentSchema and
    AutoscalingConfig: the ingress no longer runs with Serve LLM's never-scale defaults."""
    options = maybe_apply_llm_deployment_config_defaults(
        SERVE_LLM_DEFAULT_INGRESS_OPTIONS, _ingress_args(doc)
    )
    schema = serve_schema.DeploymentSchema.model_validate({"name": "OpenAiIngress", **options})
    auto = serve_config_mod.AutoscalingConfig.model_validate(options["autoscaling_config"])
    assert auto.target_ongoing_requests is not None and auto.target_ongoing_requests < 1e9
    assert auto.min_replicas <= (auto.initial_replicas or 0) <= auto.max_replicas
    assert schema.max_ongoing_requests is not None and schema.max_ongoing_requests < 1e9


def test_ingress_config_is_what_the_plan_says() -> None:
    plan = _plan(autoscaling={"maxReplicas": 8})
    assert plan.ingress is not None
    assert _ingress_args(minimal_doc(autoscaling={"maxReplicas": 8})) == (
        ingress_deployment_config(plan.ingress)
    )


def _groups(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    groups = rayservice_of(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return {g["groupName"]: g for g in groups}


def test_moving_the_ingress_off_the_head_is_not_a_new_ray_cluster() -> None:
    """GPU pools, placement auto: the CPU group is always there (zero pods while the ingress fits
    the head), so growing the fleet moves the ingress by a Serve-config change alone."""
    small = minimal_doc(replicas=1, serving={"maxOngoingRequests": 8})
    large = minimal_doc(replicas=64)
    assert _plan(replicas=1, serving={"maxOngoingRequests": 8}).ingress.placement == "head"
    assert _plan(replicas=64).ingress.placement == "cpuGroup"
    assert _groups(small)[INGRESS_GROUP]["replicas"] == 0
    assert _groups(large)[INGRESS_GROUP]["replicas"] == 1
    hashes = {
        rayservice_of(d)["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION] for d in (small, large)
    }
    assert len(hashes) == 1


def test_cpu_profile_has_no_idle_ingress_group() -> None:
    """An idle CPU group could take a CPU-profile model replica's bundles: only when used."""
    doc = minimal_doc(
        model=TINY_MODEL,
        pools=[CPU_POOL],
        autoscaling={"maxReplicas": 2},
        serving={"maxOngoingRequests": 8},
    )
    assert INGRESS_GROUP not in _groups(doc)


def _pools(n: int) -> list[dict[str, Any]]:
    return [{"name": f"p{i}", "gpuType": "H100-80GB", "gpusPerNode": 8} for i in range(n)]


@pytest.mark.parametrize("pools", [1, 6])
def test_queued_ingress_group_fits_kueue(pools: int) -> None:
    """Under Kueue the ingress group is one more PodSet: head + pools + it <= 8."""
    doc = minimal_doc(replicas=64, scheduling={"queueName": "q"}, pools=_pools(pools))
    plan = plan_deployment(parse_spec(doc["spec"]), "demo")
    assert plan.ingress is not None and plan.ingress.placement == "cpuGroup"
    assert plan.ingress.warning is None
    groups = _groups(doc)
    assert INGRESS_GROUP in groups and 1 + len(groups) <= 8


def test_queued_with_seven_pools_keeps_the_ingress_on_the_head() -> None:
    """Kueue v0.17 refuses an 8th worker group (raycluster/common.go ValidateCreate): placement
    auto falls back to the head, capped at its spare CPUs, and the plan warns why."""
    doc = minimal_doc(replicas=64, scheduling={"queueName": "q"}, pools=_pools(7))
    plan = plan_deployment(parse_spec(doc["spec"]), "demo")
    ingress = plan.ingress
    assert ingress is not None and ingress.placement == "head"
    assert ingress.max_replicas == ingress.head_capacity
    assert "Kueue" in ingress.explanation and ingress.warning in plan.warnings
    groups = _groups(doc)
    assert INGRESS_GROUP not in groups and 1 + len(groups) == 8
    assert _ingress_args(doc)["ray_actor_options"]["resources"] == {HEAD_RESOURCE: 1}
    # Not queued: the same seven pools get the group (Kueue's limit does not apply).
    free = minimal_doc(replicas=64, pools=_pools(7))
    assert INGRESS_GROUP in _groups(free)


def test_explicit_cpu_group_beyond_kueue_is_refused() -> None:
    doc = minimal_doc(
        scheduling={"queueName": "q"},
        serving={"ingress": {"placement": "cpuGroup"}},
        pools=_pools(7),
    )
    with pytest.raises(InvalidSpec, match="at most 6 pools"):
        parse_spec(doc["spec"])


@pytest.mark.parametrize(
    ("text", "cpus"),
    [(None, 0), ("", 0), ("4", 4), ("3500m", 3), ("0.5", 0), ("1k", 1000), ("0Ki", 0),
     ("1Ki", 1024), ("2M", 2_000_000)],
)  # fmt: skip
def test_cpu_count_reads_every_suffix_the_schema_admits(text: str | None, cpus: int) -> None:
    """As the API server reads a quantity (hypothesis found "0Ki" crashing the planner)."""
    assert cpu_count(text) == cpus


def test_a_cpu_group_in_binary_units_is_planned() -> None:
    plan = _plan(serving={"ingress": {"placement": "cpuGroup", "cpuGroup": {"cpu": "0Ki"}}})
    assert plan.ingress is not None and plan.ingress.placement == "cpuGroup"
