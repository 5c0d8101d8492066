"""Speculative decoding: the typed field, what the planner counts, what vLLM would refuse."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from k2think_operator.api.catalog import GIB, QWEN25_7B_DRAFT
from k2think_operator.api.spec import InvalidSpec, SpecError, parse_spec
from k2think_operator.plan.planner import plan_deployment
from tests.conftest import minimal_doc
from tests.test_render import rayservice_of

DRAFT_ARCH = {
    "parametersBillions": 1.0,
    "layers": 1,
    "kvHeads": 8,
    "headDim": 128,
    "vocabSize": 152064,
    "maxPositionEmbeddings": 131072,
}
NGRAM = {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 4}
DRAFT_MODEL: dict[str, Any] = {
    "method": "draftModel",
    "numSpeculativeTokens": 4,
    "draft": {"preset": "qwen2.5-7b-instruct", "revision": "a09a354"},
}


def doc(speculative: dict[str, Any], **change: Any) -> dict[str, Any]:
    engine = {**change.pop("engine", {}), "speculativeDecoding": speculative}
    return minimal_doc(engine=engine, **change)


def engine_kwargs(document: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(rayservice_of(document)["spec"]["serveConfigV2"])
    kwargs: dict[str, Any] = config["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
    return kwargs


def plan_of(document: dict[str, Any]) -> Any:
    return plan_deployment(parse_spec(document["spec"]), "demo")


def test_ngram_renders_and_costs_no_memory() -> None:
    assert engine_kwargs(doc(NGRAM))["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_max": 4,
    }
    plain, ngram = plan_of(minimal_doc()), plan_of(doc(NGRAM))
    assert ngram.primary.kv_tokens_per_replica == plain.primary.kv_tokens_per_replica
    assert "speculative decoding ngram (no draft model, no GPU memory)" in ngram.explanation


def test_draft_model_is_counted_on_every_gpu() -> None:
    plain, drafted = plan_of(minimal_doc()), plan_of(doc(DRAFT_MODEL))
    assert drafted.tensor_parallel == plain.tensor_parallel
    tp = drafted.tensor_parallel
    weights = QWEN25_7B_DRAFT.architecture.parameters * 2 / tp / GIB  # bf16, draft TP = model's
    assert drafted.primary.draft_weights_gib_per_gpu == pytest.approx(weights)
    # Less KV memory (the draft's weights) and more KV bytes per token (the draft's layers).
    assert drafted.primary.kv_cache_gib_per_gpu == pytest.approx(
        plain.primary.kv_cache_gib_per_gpu - weights
    )
    model_kv = 2 * 64 * 8 * 128 * 2 / tp  # K2-Think: 64 layers, 8 KV heads, bf16
    draft_kv = 2 * 28 * 4 * 128 * 2 / tp
    expected = int(drafted.primary.kv_cache_gib_per_gpu * GIB // (model_kv + draft_kv))
    assert abs(drafted.primary.kv_tokens_per_replica - expected) <= 1
    assert drafted.primary.kv_tokens_per_replica < plain.primary.kv_tokens_per_replica
    assert f"{weights:.1f} GiB draft weights per GPU" in drafted.explanation
    assert "qwen2.5-7b-instruct" in drafted.explanation


def test_draft_renders_with_its_revision() -> None:
    assert engine_kwargs(doc(DRAFT_MODEL))["speculative_config"] == {
        "method": "draft_model",
        "num_speculative_tokens": 4,
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "revision": "a09a354",
    }


def test_eagle_head_at_tp1_and_pvc_source() -> None:
    speculative = {
        "method": "eagle3",
        "numSpeculativeTokens": 3,
        "draft": {
            "architecture": DRAFT_ARCH,
            "source": "pvc://weights/k2-eagle3",
            "tensorParallel": 1,
        },
    }
    document = doc(speculative, model={"preset": "k2-think", "source": "pvc://weights/k2"})
    assert engine_kwargs(document)["speculative_config"] == {
        "method": "eagle3",
        "num_speculative_tokens": 3,
        "model": "/mnt/models/weights/k2-eagle3",
        "draft_tensor_parallel_size": 1,
    }
    plan = plan_of(document)
    assert plan.primary.draft_weights_gib_per_gpu == pytest.approx(1e9 * 2 / GIB)


def test_a_draft_that_no_longer_fits_is_a_plan_error() -> None:
    """The draft's weights and KV push the layout below minConcurrentSequences: the planner
    refuses, where ignoring the draft would give a plan vLLM runs out of memory with."""
    pools = [{"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 2}]
    parallelism = {"tensor": 2, "pipeline": 1, "minConcurrentSequences": 8}
    plain = plan_of(minimal_doc(pools=pools, parallelism=parallelism))
    assert plain.primary.concurrent_sequences_per_replica == 9
    with pytest.raises(SpecError, match="GiB of draft weights") as info:
        plan_of(doc(DRAFT_MODEL, pools=pools, parallelism=parallelism))
    assert info.value.field == "spec.pools[0]"


@pytest.mark.parametrize(
    ("speculative", "change", "field", "fragment"),
    [
        (
            {
                **DRAFT_MODEL,
                "draft": {
                    "source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
                    "architecture": {**DRAFT_ARCH, "vocabSize": 151936},
                },
            },
            {},
            "spec.engine.speculativeDecoding.draft",
            "vLLM refuses a draftModel with another tokenizer",
        ),
        (
            DRAFT_MODEL,
            {
                "model": {"preset": "k2-think-v2"},
                "pools": [{"name": "h200", "gpuType": "H200-141GB"}],
            },
            "spec.engine.speculativeDecoding.draft",
            "(152064 tokens) is not the model's (250112)",
        ),
        (
            {**DRAFT_MODEL, "draft": {**DRAFT_MODEL["draft"], "tensorParallel": 2}},
            {"parallelism": {"tensor": 4}},
            "spec.engine.speculativeDecoding.draft.tensorParallel",
            "neither 1 nor the model's tensor=4",
        ),
        (
            DRAFT_MODEL,
            {"ray": {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]}},
            "spec.engine.speculativeDecoding.draft.source",
            "an hf:// draft cannot be downloaded",
        ),
    ],
)
def test_plan_refuses_what_vllm_refuses(
    speculative: dict[str, Any], change: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(SpecError) as info:
        plan_of(doc(speculative, **change))
    assert info.value.field == field
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("speculative", "field", "fragment"),
    [
        (
            {"method": "medusa", "numSpeculativeTokens": 2},
            "spec.engine.speculativeDecoding.method",
            "Input should be",
        ),
        (
            {"method": "eagle", "numSpeculativeTokens": 2},
            "spec.engine.speculativeDecoding",
            "needs draft",
        ),
        ({**NGRAM, "promptLookupMin": 5}, "spec.engine.speculativeDecoding", "vLLM refuses it"),
        (
            {**DRAFT_MODEL, "draft": {"source": "s3://bucket/draft", "architecture": DRAFT_ARCH}},
            "spec.engine.speculativeDecoding.draft.source",
            "not a bucket",
        ),
        (
            {**DRAFT_MODEL, "draft": {"preset": "qwen2.5-0.5b"}},
            "spec.engine.speculativeDecoding.draft.preset",
            "unknown draft preset",
        ),
        (
            {**NGRAM, "numSpeculativeTokens": 0},
            "spec.engine.speculativeDecoding.numSpeculativeTokens",
            "greater than or equal to 1",
        ),
    ],
)
def test_spec_refuses_with_the_field(
    speculative: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(doc(speculative)["spec"])
    assert any(p.field == field and fragment in p.message for p in info.value.problems), info.value


def test_extra_args_cannot_smuggle_it_in() -> None:
    with pytest.raises(InvalidSpec, match=r"use spec\.engine\.speculativeDecoding instead"):
        parse_spec(
            minimal_doc(engine={"extraArgs": {"speculative_config": {"method": "ngram"}}})["spec"]
        )


def test_a_cached_model_keeps_the_draft_off_the_hub() -> None:
    """Served from a K2ThinkModelCache the workers run offline: an hf:// draft is refused, a
    draft on the cache's claim is served from it."""
    from k2think_operator.deployment.cache import CacheView
    from k2think_operator.deployment.decide import decide

    view = CacheView("weights", "k2-cache", "LLM360--K2-Think/abc123", "abc123")
    cached = doc(DRAFT_MODEL, model={"preset": "k2-think", "cacheRef": "weights"})
    decision = decide(cached, cache=view)
    assert any("spec.engine.speculativeDecoding.draft.source" in p for p in decision.problems)
    on_claim = {
        **DRAFT_MODEL,
        "draft": {
            "source": "pvc://k2-cache/Qwen--Qwen2.5-7B-Instruct/def456",
            "architecture": {**DRAFT_ARCH, "parametersBillions": 7.62, "layers": 28},
        },
    }
    decision = decide(
        doc(on_claim, model={"preset": "k2-think", "cacheRef": "weights"}), cache=view
    )
    assert not decision.problems, decision.problems
    assert engine_kwargs_of(decision)["speculative_config"]["model"] == (
        "/mnt/models/k2-cache/Qwen--Qwen2.5-7B-Instruct/def456"
    )


def engine_kwargs_of(decision: Any) -> dict[str, Any]:
    (rayservice,) = [c for c in decision.children if c["kind"] == "RayService"]
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    kwargs: dict[str, Any] = config["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
    return kwargs


def _worker_volumes(decision: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    (rayservice,) = [c for c in decision.children if c["kind"] == "RayService"]
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    pod = group["template"]["spec"]
    return pod["volumes"], pod["containers"][0]["volumeMounts"]


def test_a_draft_on_its_own_claim_is_mounted_beside_the_model() -> None:
    from k2think_operator.deployment.decide import decide

    speculative = {
        **DRAFT_MODEL,
        "draft": {"source": "pvc://drafts/qwen", "architecture": DRAFT_ARCH},
    }
    decision = decide(doc(speculative, model={"preset": "k2-think", "source": "pvc://weights/k2"}))
    assert not decision.problems, decision.problems
    volumes, mounts = _worker_volumes(decision)
    claims = {
        v["name"]: v["persistentVolumeClaim"] for v in volumes if "persistentVolumeClaim" in v
    }
    assert claims == {
        "models": {"claimName": "weights", "readOnly": True},
        "models-1": {"claimName": "drafts", "readOnly": True},
    }
    assert {m["mountPath"]: m["readOnly"] for m in mounts if m["name"].startswith("models")} == {
        "/mnt/models/weights": True,
        "/mnt/models/drafts": True,
    }
    assert engine_kwargs_of(decision)["speculative_config"]["model"] == "/mnt/models/drafts/qwen"


DRAFT_CACHED: dict[str, Any] = {
    **DRAFT_MODEL,
    "draft": {"preset": "qwen2.5-7b-instruct", "cacheRef": "draft-weights"},
}


def test_a_draft_from_its_own_cache_waits_for_it_then_loads_from_its_claim() -> None:
    """The draft's K2ThinkModelCache is used as the model's: nothing is rendered until it has a
    verified revision; then its claim is mounted read-only, the draft loads from the local path,
    and the hub is off."""
    from k2think_operator.deployment.cache import CacheView, with_cache_condition
    from k2think_operator.deployment.decide import decide

    model_view = CacheView("weights", "k2-cache", "LLM360--K2-Think/abc123", "abc123")
    cached = doc(DRAFT_CACHED, model={"preset": "k2-think", "cacheRef": "weights"})
    waiting = decide(cached, model_view, None, None, "K2ThinkModelCache draft-weights is filling")
    assert waiting.children == () and not waiting.problems
    assert waiting.waiting_for_cache == "K2ThinkModelCache draft-weights is filling"
    assert decide(cached).waiting_for_cache == "K2ThinkModelCache weights is not ready"

    draft_view = CacheView(
        "draft-weights",
        "draft-cache",
        "Qwen--Qwen2.5-7B-Instruct/def456",
        "def456",
        source="hf://Qwen/Qwen2.5-7B-Instruct",
    )
    served = decide(cached, model_view, None, draft_view)
    assert not served.problems, served.problems
    assert served.draft_cache == draft_view
    assert engine_kwargs_of(served)["speculative_config"]["model"] == (
        "/mnt/models/draft-cache/Qwen--Qwen2.5-7B-Instruct/def456"
    )
    volumes, _ = _worker_volumes(served)
    assert [
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    ] == [
        "k2-cache",
        "draft-cache",
    ]
    # The plan counts the preset's draft, wherever its weights come from.
    assert served.plan is not None and served.plan.primary.draft_weights_gib_per_gpu > 0
    status = with_cache_condition(
        {}, waiting=None, served=model_view, draft_served=draft_view, generation=1, now="t"
    )
    (cond,) = status["conditions"]
    assert cond["status"] == "True"
    assert cond["message"] == (
        "serving revision abc123 of K2ThinkModelCache weights from k2-cache:/LLM360--K2-Think/"
        "abc123; the draft from revision def456 of K2ThinkModelCache draft-weights from "
        "draft-cache:/Qwen--Qwen2.5-7B-Instruct/def456"
    )


def test_a_draft_cache_of_another_model_is_refused_with_the_field() -> None:
    from k2think_operator.deployment.cache import CacheView
    from k2think_operator.deployment.decide import decide

    other = CacheView(
        "draft-weights", "draft-cache", "Qwen--Qwen2.5-0.5B/1", "1", source="hf://Qwen/Qwen2.5-0.5B"
    )
    decision = decide(doc(DRAFT_CACHED), None, None, other)
    assert decision.children == ()
    (problem,) = decision.problems
    assert problem.startswith("spec.engine.speculativeDecoding.draft.cacheRef: ")
    assert "holds Qwen/Qwen2.5-0.5B, not Qwen/Qwen2.5-7B-Instruct" in problem


@pytest.mark.parametrize("extra", [{"source": "hf://Qwen/Qwen2.5-7B-Instruct"}, {"revision": "x"}])
def test_a_draft_cache_ref_excludes_source_and_revision(extra: dict[str, Any]) -> None:
    bad = {**DRAFT_CACHED, "draft": {**DRAFT_CACHED["draft"], **extra}}
    with pytest.raises(InvalidSpec, match="draft cacheRef excludes source and revision"):
        parse_spec(doc(bad)["spec"])


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_draft_cache_ref_refuses_the_users_hf_hub_offline(value: str) -> None:
    """With the draft's cache the operator sets HF_HUB_OFFLINE=1 on every Ray container, as for
    the model's: a user's own value would be replaced without a word, so it is refused with the
    field path (the CRD's CEL rule says the same, tests/test_cel_rules.py)."""
    env = {"ray": {"env": [{"name": "HF_HUB_OFFLINE", "value": value}]}}
    with pytest.raises(InvalidSpec) as info:
        parse_spec(doc(DRAFT_CACHED, **env)["spec"])
    fragment = "with engine.speculativeDecoding.draft.cacheRef the operator sets HF_HUB_OFFLINE=1"
    assert any(p.field == "spec.ray.env" and fragment in p.message for p in info.value.problems), (
        info.value
    )
    # Without a cache it stays the user's own choice (an air-gapped cluster).
    parse_spec(doc(DRAFT_MODEL, model={"preset": "k2-think"})["spec"])
