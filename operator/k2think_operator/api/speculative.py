"""Speculative decoding as a typed field: ``spec.engine.speculativeDecoding``.

K2 Think's speed comes from speculative decoding: a cheap proposer guesses the next tokens and
the model checks them all in one forward pass. vLLM takes it as the engine argument
``speculative_config`` (``vllm/config/speculative.py``, ``SpeculativeConfig``). Typed here
because two things depend on it that ``engine.extraArgs`` cannot see: the planner must count a
draft model's weights and KV cache on every GPU (a plan that ignores them can run out of memory),
and the combinations vLLM refuses when the engine starts (minutes into a rollout, on every
replica) are refused here first, with the field to edit.

Methods:
- ``ngram`` (prompt lookup: proposes tokens that followed the same n-gram earlier in the
  prompt or output; no draft model, no memory): good for reasoning traces that quote and
  repeat.
- ``suffix`` (suffix decoding from Arctic Inference: a suffix tree over this request's and
  earlier requests' outputs; no draft model): needs the ``arctic-inference`` package in the
  Ray image, which vLLM checks when the engine starts.
- ``draftModel`` (a small model with the same tokenizer), ``eagle`` and ``eagle3`` (EAGLE draft
  heads trained for the target model): a ``draft`` the planner accounts for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from k2think_operator.api.base import (
    DNS_LABEL,
    REVISION_PATTERN,
    SOURCE_SCHEMA_PATTERN,
    _Model,
    source_problem,
)
from k2think_operator.api.catalog import (
    DRAFT_PRESETS,
    Architecture,
    DraftPreset,
    draft_preset_names,
)
from k2think_operator.api.schema import cel

SpeculativeMethod = Literal["ngram", "suffix", "draftModel", "eagle", "eagle3"]
#: Our method names -> vLLM's ``SpeculativeConfig.method``.
VLLM_METHODS: dict[str, str] = {
    "ngram": "ngram",
    "suffix": "suffix",
    "draftModel": "draft_model",
    "eagle": "eagle",
    "eagle3": "eagle3",
}
DRAFT_METHODS = ("draftModel", "eagle", "eagle3")


class DraftArchitectureSpec(_Model):
    """The numbers of a custom draft the memory model needs (from its config.json)."""

    parameters_billions: float = Field(
        gt=0, le=200, description="Parameters of the draft in billions (an EAGLE head: ~0.5-2)."
    )
    layers: int = Field(ge=1, le=256, description="Decoder layers of the draft (EAGLE: 1).")
    kv_heads: int = Field(ge=1, le=1024, description="KV heads (num_key_value_heads).")
    head_dim: int = Field(ge=1, le=4096, description="Dimension of one attention head.")
    vocab_size: int = Field(
        ge=1,
        description="Vocabulary size; a draftModel must have the target's (vLLM refuses "
        "otherwise).",
    )
    max_position_embeddings: int = Field(ge=1, description="Longest context the draft supports.")


class DraftModelSpec(_Model):
    """The draft of draftModel, eagle or eagle3: where its weights come from and its shape."""

    preset: str | None = Field(
        default=None,
        description="A draft from the operator's catalog (docs/serving-path.md lists them and "
        "the targets they fit); gives the source and the architecture.",
        json_schema_extra={"enum": list(draft_preset_names())},
    )
    source: str | None = Field(
        default=None,
        max_length=1024,
        description="Where the draft's weights come from: hf://ORG/NAME (with revision), "
        "pvc://CLAIM/PATH on the claim of spec.model.source, or file:///PATH in the image. "
        "Default: the preset's Hugging Face repository.",
        json_schema_extra={"pattern": SOURCE_SCHEMA_PATTERN},
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Revision (branch, tag or commit) of an hf:// draft; pin it like the model's.",
    )
    cache_ref: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="Name of a K2ThinkModelCache in this namespace holding the draft's weights, "
        "as spec.model.cacheRef holds the model's: the deployment waits until the cache has a "
        "verified revision (CacheReady), workers mount its claim read-only and load the draft "
        "from its local path. Excludes source and revision (the cache has them).",
    )
    architecture: DraftArchitectureSpec | None = Field(
        default=None,
        description="Shape of a draft that is not a preset (required then).",
    )
    tensor_parallel: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Tensor-parallel degree of the draft: 1, or the model's (the default); "
        "vLLM accepts nothing else.",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in DRAFT_PRESETS:
            raise ValueError(
                f"unknown draft preset {value!r}; known: {', '.join(draft_preset_names())}"
            )
        return value

    @field_validator("source")
    @classmethod
    def _loadable_source(cls, value: str | None) -> str | None:
        problem = None if value is None else source_problem(value)
        if problem:
            raise ValueError(problem)
        if value is not None and value.startswith(("s3://", "gs://")):
            # Serve LLM downloads only the main model from a bucket (model_loading_config);
            # vLLM's draft loader reads a local path or a Hugging Face id.
            raise ValueError(
                f"{value!r}: a draft loads from hf://, pvc:// or file://, not a bucket (Ray "
                "Serve LLM downloads only the main model from s3/gs)"
            )
        return value

    @model_validator(mode="after")
    @cel(
        "has(self.preset) != has(self.architecture)",
        "a draft is either a preset or has an architecture (and a source)",
    )
    @cel(
        "has(self.preset) || has(self.source) || has(self.cacheRef)",
        "a draft without a preset needs a source (or a cacheRef)",
    )
    @cel(
        "!has(self.cacheRef) || (!has(self.source) && !has(self.revision))",
        "draft cacheRef excludes source and revision: the cache names the weights",
    )
    def _preset_or_custom(self) -> DraftModelSpec:
        if (self.preset is None) == (self.architecture is None):
            raise ValueError("a draft is either a preset or has an architecture (and a source)")
        if self.preset is None and self.source is None and self.cache_ref is None:
            raise ValueError("a draft without a preset needs a source (or a cacheRef)")
        if self.cache_ref is not None and (self.source is not None or self.revision is not None):
            raise ValueError(
                "draft cacheRef excludes source and revision: the cache names the weights"
            )
        return self

    @property
    def preset_info(self) -> DraftPreset | None:
        return DRAFT_PRESETS.get(self.preset) if self.preset else None

    def resolved_source(self) -> str:
        """Where vLLM loads the draft from. A cacheRef is resolved by the deployment controller
        (``deployment/cache.py``, ``serve_draft_from_cache``) into the cache's ``pvc://`` path;
        until then this is the ``cache://NAME`` placeholder, which nothing renders."""
        if self.source is not None:
            return self.source
        if self.cache_ref is not None:
            return f"cache://{self.cache_ref}"
        preset = self.preset_info
        assert preset is not None  # _preset_or_custom
        return f"hf://{preset.hf_id}"

    def resolved_architecture(self) -> Architecture:
        preset = self.preset_info
        if preset is not None:
            return preset.architecture
        arch = self.architecture
        assert arch is not None  # _preset_or_custom
        return Architecture(
            family="draft",
            parameters_billions=arch.parameters_billions,
            layers=arch.layers,
            hidden_size=0,
            attention_heads=arch.kv_heads,
            kv_heads=arch.kv_heads,
            head_dim=arch.head_dim,
            vocab_size=arch.vocab_size,
            max_position_embeddings=arch.max_position_embeddings,
        )


class SpeculativeDecodingSpec(_Model):
    """vLLM speculative decoding (``speculative_config``)."""

    method: SpeculativeMethod = Field(
        description="ngram (prompt lookup, no draft), suffix (suffix decoding, no draft; needs "
        "arctic-inference in the Ray image), draftModel (a small model sharing the tokenizer), "
        "eagle or eagle3 (EAGLE draft heads trained for the model). The three last need draft.",
    )
    num_speculative_tokens: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Tokens proposed per step and checked in one forward pass (2-5 is typical). "
        "Required except for suffix, where it is the most proposed (default 24, vLLM's tree "
        "depth).",
    )
    prompt_lookup_min: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="ngram only: the shortest n-gram looked up in the prompt (vLLM default 5).",
    )
    prompt_lookup_max: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="ngram only: the longest n-gram looked up (vLLM default 5); not below "
        "promptLookupMin.",
    )
    draft: DraftModelSpec | None = Field(
        default=None,
        description="The draft model or EAGLE head of draftModel, eagle and eagle3; the planner "
        "counts its weights and KV cache on every GPU.",
    )

    @model_validator(mode="after")
    @cel(
        "(self.method == 'draftModel' || self.method == 'eagle' || self.method == 'eagle3') == "
        "has(self.draft)",
        "methods draftModel, eagle and eagle3 need draft; ngram and suffix take none",
    )
    @cel(
        "self.method == 'suffix' || has(self.numSpeculativeTokens)",
        "numSpeculativeTokens is required (except for suffix)",
    )
    @cel(
        "self.method == 'ngram' || (!has(self.promptLookupMin) && !has(self.promptLookupMax))",
        "promptLookupMin and promptLookupMax are for method ngram",
    )
    @cel(
        "!has(self.promptLookupMin) || !has(self.promptLookupMax) || "
        "self.promptLookupMin <= self.promptLookupMax",
        "promptLookupMin must not exceed promptLookupMax (vLLM refuses it)",
    )
    def _method_fields(self) -> SpeculativeDecodingSpec:
        needs_draft = self.method in DRAFT_METHODS
        if needs_draft and self.draft is None:
            raise ValueError(f"method {self.method} needs draft (the draft model or EAGLE head)")
        if not needs_draft and self.draft is not None:
            raise ValueError(
                f"method {self.method} takes no draft; use draftModel, eagle or eagle3"
            )
        if self.method != "suffix" and self.num_speculative_tokens is None:
            raise ValueError("numSpeculativeTokens is required (except for suffix)")
        lookup = (self.prompt_lookup_min, self.prompt_lookup_max)
        if self.method != "ngram" and lookup != (None, None):
            raise ValueError("promptLookupMin and promptLookupMax are for method ngram")
        low, high = lookup
        if low is not None and high is not None and low > high:
            raise ValueError(
                f"promptLookupMin={low} exceeds promptLookupMax={high} (vLLM refuses it)"
            )
        return self
