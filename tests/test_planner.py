"""Planner tables: the memory model, layout choice, and errors that name the numbers."""

from __future__ import annotations

from typing import Any

import pytest

from k2think_operator.api.catalog import ACCELERATORS, GIB, K2_THINK, K2_THINK_V2
from k2think_operator.api.spec import parse_spec
from k2think_operator.plan.planner import (
    MemoryBudget,
    PlanError,
    evaluate_layout,
    kv_bytes_per_token,
    plan_deployment,
)
from tests.conftest import CPU_POOL, TINY_MODEL, minimal_doc


def plan_of(**spec: Any) -> Any:
    doc = minimal_doc(**spec)
    return plan_deployment(parse_spec(doc["spec"]), doc["metadata"]["name"])


def pool(gpu: str, gpus: int = 8, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "p", "gpuType": gpu, "gpusPerNode": gpus, **extra}]


def test_kv_bytes_per_token_matches_design_numbers() -> None:
    # 2 x 64 layers x 8 KV heads x 128 head dim x 2 bytes = 256 KiB per token for K2-Think.
    assert kv_bytes_per_token(K2_THINK.architecture, 2) == 256 * 1024
    assert kv_bytes_per_token(K2_THINK_V2.architecture, 2) == 320 * 1024
    assert kv_bytes_per_token(K2_THINK.architecture, 1) == 128 * 1024


def test_worked_example_of_the_design() -> None:
    """K2-Think on 80 GB H100 at 0.9: TP=1 cannot hold one 32k sequence; TP=2/4 grow fast."""
    h100 = ACCELERATORS["H100-80GB"]
    budget = MemoryBudget(
        arch=K2_THINK.architecture,
        accelerator=h100,
        memory_gib=h100.memory_gib,
        utilization=0.9,
        reserve_gib=h100.runtime_reserve_gib,
        dtype_bytes=2.0,
        kv_dtype_bytes=2.0,
        max_model_len=32768,
    )
    tp1 = evaluate_layout(budget, tensor=1, pipeline=1)
    tp2 = evaluate_layout(budget, tensor=2, pipeline=1)
    tp4 = evaluate_layout(budget, tensor=4, pipeline=1)
    assert tp1.concurrent_sequences == 0 and tp1.kv_tokens_per_replica < 32768
    assert 250_000 < tp2.kv_tokens_per_replica < 330_000
    assert 750_000 < tp4.kv_tokens_per_replica < 900_000
    assert abs(tp1.weights_gib_per_gpu - 32.76e9 * 2 / GIB) < 0.01


@pytest.mark.parametrize("max_len", [32768, 65536, 131072])
@pytest.mark.parametrize("utilization", [0.85, 0.9, 0.95])
@pytest.mark.parametrize("min_seqs", [1, 4])
def test_k2think_on_h100_never_gets_tp1(max_len: int, utilization: float, min_seqs: int) -> None:
    plan = plan_of(
        model={"preset": "k2-think", "maxModelLen": max_len},
        pools=pool("H100-80GB"),
        engine={"gpuMemoryUtilization": utilization},
        parallelism={"minConcurrentSequences": min_seqs},
    )
    assert plan.tensor_parallel > 1
    assert plan.primary.concurrent_sequences_per_replica >= min_seqs


@pytest.mark.parametrize(
    ("preset", "gpu", "max_len", "kv", "expected_tp"),
    [
        ("k2-think", "H100-80GB", 32768, "auto", 4),
        ("k2-think", "H200-141GB", 32768, "auto", 2),
        ("k2-think", "B200-180GB", 32768, "auto", 2),
        ("k2-think", "A100-40GB", 32768, "auto", 8),
        ("k2-think-v2", "H200-141GB", 131072, "auto", 8),
        ("k2-think-v2", "H200-141GB", 131072, "fp8", 4),
        ("k2-think-v2", "H100-80GB", 32768, "auto", 8),
        ("k2-think-v2", "MI300X-192GB", 131072, "auto", 4),
    ],
)
def test_layout_table(preset: str, gpu: str, max_len: int, kv: str, expected_tp: int) -> None:
    # AMD pools need a ROCm image (spec.vendor_problem); the image does not change the plan.
    image = {"image": "registry.example/ray-llm:rocm"} if gpu.startswith("MI") else {}
    plan = plan_of(
        model={"preset": preset, "maxModelLen": max_len},
        pools=pool(gpu),
        engine={"kvCacheDtype": kv},
        ray=image,
    )
    assert plan.tensor_parallel == expected_tp, plan.explanation
    assert plan.pipeline_parallel == 1
    assert plan.gpus_per_replica == expected_tp
    assert plan.primary.gpus_per_worker_pod == expected_tp
    assert plan.placement_strategy == "STRICT_PACK"


def test_larger_tp_must_earn_its_keep() -> None:
    strict = plan_of(pools=pool("H100-80GB"), parallelism={"tpGainThreshold": 0})
    lenient = plan_of(pools=pool("H100-80GB"), parallelism={"tpGainThreshold": 5})
    assert strict.tensor_parallel == 8  # every step improves per-GPU concurrency a little
    assert lenient.tensor_parallel == 2  # the smallest layout that fits


def test_fp8_kv_cache_doubles_tokens() -> None:
    auto = plan_of(pools=pool("H100-80GB"), parallelism={"tensor": 4})
    fp8 = plan_of(
        pools=pool("H100-80GB"), parallelism={"tensor": 4}, engine={"kvCacheDtype": "fp8"}
    )
    assert fp8.primary.kv_tokens_per_replica == pytest.approx(
        2 * auto.primary.kv_tokens_per_replica, rel=1e-6
    )


def test_explicit_tp_is_checked_not_overridden() -> None:
    plan = plan_of(pools=pool("H100-80GB"), parallelism={"tensor": 8})
    assert plan.tensor_parallel == 8
    assert "as requested" in plan.explanation


@pytest.mark.parametrize(
    ("parallelism", "pools", "field", "message"),
    [
        (
            {"tensor": 3},
            pool("H100-80GB"),
            "spec.parallelism.tensor",
            "tensor=3 does not divide the 40 attention heads of k2-think",
        ),
        (
            {"tensor": 16},
            pool("H100-80GB", 16),
            "spec.parallelism.tensor",
            "tensor=16 does not divide the 40 attention heads of k2-think",
        ),
        (
            {"tensor": 8},
            pool("H100-80GB", 4),
            "spec.parallelism.tensor",
            "tensor=8 needs more GPUs than a node of pool p has (4)",
        ),
        (
            {"tensor": 1, "pipeline": 1},
            pool("H100-80GB"),
            "spec.pools[0]",
            "k2-think does not fit pool p (8 x H100-80GB",
        ),
    ],
)
def test_impossible_requests_name_the_numbers(
    parallelism: dict[str, Any], pools: list[dict[str, Any]], field: str, message: str
) -> None:
    with pytest.raises(PlanError) as info:
        plan_of(pools=pools, parallelism=parallelism)
    assert info.value.field == field
    assert message in info.value.message


def test_no_fit_message_names_memory_numbers() -> None:
    with pytest.raises(PlanError) as info:
        plan_of(pools=pool("L40S-48GB", 1), parallelism={"pipeline": 1})
    text = info.value.message
    assert "GiB/GPU for KV cache" in text and "61.0 GiB of weights" in text
    assert "1 x L40S-48GB" in text


def test_pipeline_only_when_a_node_is_too_small() -> None:
    plan = plan_of(pools=pool("H100-80GB", 1))
    assert plan.tensor_parallel == 1
    assert plan.pipeline_parallel == 2  # the fewest stages that fit
    assert plan.primary.worker_pods_per_replica == 2
    assert plan.primary.gpus_per_worker_pod == 1
    assert plan.placement_strategy == "PACK"


def test_max_model_len_beyond_model() -> None:
    with pytest.raises(PlanError) as info:
        plan_of(model={"preset": "k2-think", "maxModelLen": 262144})
    assert info.value.field == "spec.model.maxModelLen"
    assert "exceeds the 131072 positions" in info.value.message


def test_min_concurrency_rules_out_small_layouts() -> None:
    loose = plan_of(pools=pool("H200-141GB"), parallelism={"tpGainThreshold": 10})
    tight = plan_of(
        pools=pool("H200-141GB"),
        parallelism={"tpGainThreshold": 10, "minConcurrentSequences": 10},
    )
    assert loose.tensor_parallel == 1
    assert tight.tensor_parallel == 2
    assert tight.primary.concurrent_sequences_per_replica >= 10


def test_multipool_shares_one_layout_and_fills_preferred_pool_first() -> None:
    plan = plan_of(
        pools=[
            {"name": "h200", "gpuType": "H200-141GB", "maxNodes": 1},
            {"name": "h100", "gpuType": "H100-80GB", "maxNodes": 2},
        ],
        autoscaling={"minReplicas": 6, "maxReplicas": 20},
    )
    assert plan.tensor_parallel == 2  # H100 cannot run TP=1, so both pools use TP=2
    h200, h100 = plan.pools
    assert h200.max_replicas == 4 and h100.max_replicas == 8
    assert h200.min_replicas == 4 and h100.min_replicas == 2
    assert plan.max_replicas == 12
    assert any("maxReplicas=20 exceeds the 12 replicas" in w for w in plan.warnings)


def test_replica_floor_beyond_capacity_is_an_error() -> None:
    with pytest.raises(PlanError) as info:
        plan_of(pools=pool("H100-80GB", maxNodes=1), replicas=3)
    assert info.value.field == "spec.replicas"
    assert "3 replicas of 4 GPUs need 12 GPUs" in info.value.message


def test_default_target_is_explicit_and_bounded() -> None:
    plan = plan_of(pools=pool("H100-80GB"), autoscaling={"maxReplicas": 4})
    seqs = plan.primary.concurrent_sequences_per_replica
    assert plan.target_ongoing_requests == min(256, 2 * seqs)
    small = plan_of(
        pools=pool("H100-80GB"), autoscaling={"maxReplicas": 4}, engine={"maxNumSeqs": 8}
    )
    assert small.target_ongoing_requests == 8


def test_cpu_profile() -> None:
    plan = plan_of(model=TINY_MODEL, pools=[CPU_POOL])
    assert plan.cpu_profile
    assert plan.dtype == "float32"
    assert plan.tensor_parallel == 1 and plan.pipeline_parallel == 1
    assert plan.primary.resource_name is None
    assert plan.primary.memory_utilization == pytest.approx(0.1)


def test_plan_status_is_camel_case_and_complete() -> None:
    status = plan_of(pools=pool("H100-80GB")).to_status()
    for key in (
        "pool",
        "tensorParallel",
        "pipelineParallel",
        "gpusPerReplica",
        "gpusPerWorkerPod",
        "workerPodsPerReplica",
        "weightsGiBPerGpu",
        "kvCacheGiBPerGpu",
        "kvTokensPerReplica",
        "concurrentSequencesPerReplica",
        "explanation",
    ):
        assert key in status


WARM_POOLS = [
    {"name": "h200", "gpuType": "H200-141GB", "gpusPerNode": 8, "maxNodes": 2, "warmReplicas": 1},
    {"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8},
]


def test_warm_replicas_are_planned_per_pool_and_reported() -> None:
    plan = plan_of(pools=WARM_POOLS, autoscaling={"minReplicas": 1, "maxReplicas": 8})
    assert [(p.name, p.min_replicas, p.warm_replicas) for p in plan.pools] == [
        ("h200", 1, 1),
        ("h100", 0, 0),
    ]
    reported = plan.to_status()["pools"]
    assert reported[0]["warmReplicas"] == 1
    assert "warmReplicas" not in reported[1]  # nothing said where there are none


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"replicas": 1},
            "they need spec.autoscaling",
        ),
        (
            # maxNodes 2 on 8-GPU nodes holds 2 replicas of TP=8: floor 2 + 1 warm do not fit.
            {"autoscaling": {"minReplicas": 2, "maxReplicas": 8}},
            "2 of the floor and 1 warm do not fit",
        ),
    ],
)
def test_warm_replicas_that_cannot_help_are_refused_with_the_field(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(PlanError) as info:
        plan_of(pools=WARM_POOLS, parallelism={"tensor": 8}, **spec)
    assert info.value.field == "spec.pools[0].warmReplicas"
    assert message in info.value.message
