"""Speculative decoding in the plan: the draft's memory and the checks vLLM would fail (pure).

The memory model with a draft (per GPU, per replica laid out as TP x PP):

    draft weights = draft params * bytes(dtype) / draft TP        (draft TP: 1 or the model's)
    KV per token  = model KV/token / (TP * PP) + draft KV/token / draft TP

vLLM allocates the draft's KV cache beside the model's, one block table for both: every cached
token costs the draft's layers too. The draft is counted on every GPU of the replica (with
pipeline parallelism only the last stage runs it; counting it everywhere errs on the safe side).
"""

from __future__ import annotations

from dataclasses import dataclass

from k2think_operator.api.catalog import Architecture
from k2think_operator.api.spec import K2ThinkDeploymentSpec, SpecError

FIELD = "spec.engine.speculativeDecoding"


@dataclass(frozen=True)
class Draft:
    """What the memory model needs of a draft; ``tensor_parallel`` None: the model's TP."""

    architecture: Architecture
    tensor_parallel: int | None
    name: str


def draft_of(spec: K2ThinkDeploymentSpec) -> Draft | None:
    """The draft the planner must fit beside the model, or None (no draft, or a draft-free
    method)."""
    speculative = spec.engine.speculative_decoding
    if speculative is None or speculative.draft is None:
        return None
    draft = speculative.draft
    return Draft(
        architecture=draft.resolved_architecture(),
        tensor_parallel=draft.tensor_parallel,
        name=draft.preset or draft.resolved_source(),
    )


def check_draft(spec: K2ThinkDeploymentSpec, target: Architecture) -> None:
    """What vLLM refuses about a draft and the layout-free checks: raise SpecError naming the
    field."""
    speculative = spec.engine.speculative_decoding
    if speculative is None or speculative.draft is None:
        return
    draft = speculative.draft
    arch = draft.resolved_architecture()
    if speculative.method == "draftModel" and arch.vocab_size != target.vocab_size:
        # vllm/config/speculative.py, verify_equal_vocab_size_if_draft_model
        raise SpecError(
            f"{FIELD}.draft",
            f"the draft's vocabulary ({arch.vocab_size} tokens) is not the model's "
            f"({target.vocab_size}); vLLM refuses a draftModel with another tokenizer: use a "
            "draft of the same family, an EAGLE head (eagle, eagle3) or ngram",
        )
    source = draft.resolved_source()
    if source.startswith("cache://"):
        return  # a draft cacheRef: the cache's claim is known once it is served (decide.py)
    cached = spec.model.cache_ref is not None
    offline = cached or any(e.name == "HF_HUB_OFFLINE" and e.value == "1" for e in spec.ray.env)
    if source.startswith("hf://") and offline:
        # A deployment served from a K2ThinkModelCache runs with HF_HUB_OFFLINE=1
        # (deployment/cache.py): vLLM could not download the draft.
        raise SpecError(
            f"{FIELD}.draft.source",
            "the workers run with HF_HUB_OFFLINE=1 (spec.model.cacheRef, or spec.ray.env): an "
            "hf:// draft cannot be downloaded; fill a K2ThinkModelCache with it (draft.cacheRef), "
            "or put it on a claim (pvc://) or in the image (file://)",
        )
    # A pvc:// draft may be on the model's claim or on one of its own: the workers mount both
    # (render/serve_config.py, pvc_claims).


def check_draft_parallel(spec: K2ThinkDeploymentSpec, tensor: int) -> None:
    """vLLM runs a draft at TP 1 or at the model's TP (``_verify_and_get_draft_tp``)."""
    speculative = spec.engine.speculative_decoding
    if speculative is None or speculative.draft is None:
        return
    draft_tp = speculative.draft.tensor_parallel
    if draft_tp is not None and draft_tp not in (1, tensor):
        raise SpecError(
            f"{FIELD}.draft.tensorParallel",
            f"{draft_tp} is neither 1 nor the model's tensor={tensor}; vLLM accepts only these",
        )
