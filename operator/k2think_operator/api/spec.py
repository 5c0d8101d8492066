"""The K2ThinkDeployment spec as typed models, and the semantic checks the CRD schema cannot do.

The CRD's OpenAPI schema and CEL rules refuse malformed objects at the API server; these models
refuse the same things again (so ``validate`` and ``plan`` work offline on a file) and add the
checks that need the catalog. Every error carries the field path the user has to edit.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from k2think_operator.api.autoscaling import AutoscalingPolicySpec

# DNS_LABEL, SOURCE_PATTERN and _Model are re-exported (``X as X``): modules import them from here.
from k2think_operator.api.base import DNS_LABEL as DNS_LABEL
from k2think_operator.api.base import REVISION_PATTERN, SOURCE_SCHEMA_PATTERN, source_problem
from k2think_operator.api.base import SOURCE_PATTERN as SOURCE_PATTERN
from k2think_operator.api.base import _Model as _Model
from k2think_operator.api.catalog import (
    ACCELERATORS,
    MODEL_PRESETS,
    Architecture,
    ModelPreset,
    accelerator_names,
    preset_names,
)
from k2think_operator.api.coordinates import K2THINK
from k2think_operator.api.owned import (
    CONDITIONAL_ENV,
    CREDENTIAL_ENV_PATTERN,
    CREDENTIAL_VALUE_PATTERN,
    CREDENTIALS_FIELD,
    ENGINE_ARG_KEY,
    PLANNED_ENGINE_ARGS,
    REFUSED_ENV,
    credential_in,
    engine_arg_problem,
    env_problem,
)
from k2think_operator.api.schema import Cel, IntOrString, cel
from k2think_operator.api.serving import RoutingSpec
from k2think_operator.api.speculative import SpeculativeDecodingSpec
from k2think_operator.api.upgrade import INCREMENTAL_UPGRADE, IncrementalUpgradeSpec

# Our API's coordinates live in ``apis.K2THINK``; these names stay for existing imports.
API_GROUP = K2THINK.group
API_VERSION = K2THINK.version
KIND = K2THINK.kind
PLURAL = K2THINK.plural

DEFAULT_RAY_IMAGE = "rayproject/ray-llm:2.60.0-py311-cu128"

__all__ = ["ENGINE_ARG_KEY", "PLANNED_ENGINE_ARGS"]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|K|M|G|T)?$"


def _quantity_text(value: object) -> object:
    """Kubernetes quantities may be written as YAML numbers; keep them as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[
    str,
    Field(pattern=QUANTITY_PATTERN),
    BeforeValidator(_quantity_text),
    IntOrString(description="A resource quantity."),
]

#: Memory needs a unit: Kubernetes reads a bare number as bytes, so ``memoryPerGpu: 64`` would
#: ask for 64 bytes. A unit is required rather than guessed (no silent "Gi").
MEMORY_PATTERN = r"^[0-9]+([.][0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)$"
MEMORY_MESSAGE = (
    "memory needs a unit (e.g. 64Gi): a bare number is bytes, m is thousandths of a byte; use "
    "Ki, Mi, Gi, Ti (or K, M, G, T)"
)


def _memory_text(value: object) -> object:
    text = _quantity_text(value)
    if (
        isinstance(text, str)
        and re.fullmatch(QUANTITY_PATTERN, text)
        and not re.fullmatch(MEMORY_PATTERN, text)
    ):
        raise ValueError(f"{text!r}: {MEMORY_MESSAGE}")
    return text


MemoryQuantity = Annotated[
    str,
    Field(pattern=QUANTITY_PATTERN),
    BeforeValidator(_memory_text),
    IntOrString(description="A memory quantity with a unit (e.g. 64Gi)."),
    # The schema's pattern already makes the string a quantity; a unit is then any of these
    # last letters. endsWith, not matches: the API server bounds neither branch of an
    # int-or-string, and a regex over an unbounded string exceeds its CEL cost budget.
    Cel(
        "type(self) == string && (self.endsWith('i') || self.endsWith('K') || "
        "self.endsWith('M') || self.endsWith('G') || self.endsWith('T'))",
        MEMORY_MESSAGE,
    ),
]

#: OpenAI model ids as vLLM serves them (e.g. LLM360/K2-Think, org/model:tag).
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: Label values (and so every field that ends up in one): 63 characters, this alphabet.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: Qualified names (label keys, taint keys): an optional DNS-subdomain prefix and a name.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
#: An image reference as the kubelet parses it (distribution's reference grammar): a registry
#: only when the first part has a dot, a port or is localhost; repository path lowercase; an
#: optional tag and digest. The API server admits any string; the kubelet then reports
#: InvalidImageName and the pod never starts.
IMAGE_PATTERN = (
    r"^((localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:[0-9]+)?/|[A-Za-z0-9-]+:[0-9]+/)?"
    r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*"
    r":[0-9a-fA-F]{32,})?$"
)
#: Ray images older than 2.52 have no token auth (KubeRay's authOptions need it).
#: (``[.]``, not a backslash: the pattern goes into CEL string literals as it is.)
OLD_RAY_IMAGE = (
    r"^(docker[.]io/)?rayproject/ray(-ml|-llm)?:([01][.]|2[.]([0-9]|[1-4][0-9]|5[01])[.])"
)
RAY_TOKEN_AUTH_MIN = "2.52"
#: One rule for every Secret name (Secrets are DNS subdomains).
SecretName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]

#: Bounds on lists and maps keep the API server's CEL cost estimates finite.
MAX_MAP_ENTRIES = 64


class FieldProblem(ValueError):
    """A validator's error about one field below the model it checks (``field``: its camelCase
    path relative to that model, e.g. ``initialReplicas``), so the message names what the user
    wrote rather than the object around it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SpecError(ValueError):
    """A spec that cannot be served as written. ``field`` is the path to edit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ArchitectureSpec(_Model):
    """Only for ``preset: custom``: the numbers the memory model needs."""

    family: str = Field(
        default="custom", description="Architecture family, informational (e.g. qwen2, llama)."
    )
    parameters_billions: float = Field(
        gt=0, le=2000, description="Total parameter count in billions (e.g. 32.8)."
    )
    layers: int = Field(ge=1, le=1024, description="Number of decoder layers (num_hidden_layers).")
    hidden_size: int = Field(ge=1, le=1048576, description="Hidden size (hidden_size).")
    attention_heads: int = Field(
        ge=1, le=65536, description="Attention heads (num_attention_heads)."
    )
    kv_heads: int = Field(ge=1, le=65536, description="Key/value heads (num_key_value_heads).")
    head_dim: int = Field(ge=1, le=65536, description="Dimension of one attention head (head_dim).")
    vocab_size: int = Field(ge=1, le=16777216, description="Vocabulary size (vocab_size).")
    max_position_embeddings: int = Field(
        ge=1,
        le=67108864,
        description="Longest context the model supports (max_position_embeddings).",
    )

    @model_validator(mode="after")
    @cel(
        "self.kvHeads <= self.attentionHeads && self.attentionHeads % self.kvHeads == 0",
        "attentionHeads must be a multiple of kvHeads",
    )
    def _kv_heads_le_heads(self) -> ArchitectureSpec:
        if self.kv_heads > self.attention_heads:
            raise ValueError(
                f"kvHeads={self.kv_heads} exceeds attentionHeads={self.attention_heads}"
            )
        if self.attention_heads % self.kv_heads:
            raise ValueError(
                f"attentionHeads={self.attention_heads} is not a multiple of "
                f"kvHeads={self.kv_heads}"
            )
        return self

    def to_architecture(self) -> Architecture:
        return Architecture(
            family=self.family,
            parameters_billions=self.parameters_billions,
            layers=self.layers,
            hidden_size=self.hidden_size,
            attention_heads=self.attention_heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
        )


class ModelSpec(_Model):
    """Which model to serve and how it is loaded."""

    preset: str = Field(
        default="k2-think",
        description="k2-think (LLM360/K2-Think, 32B, Qwen2 architecture), k2-think-v2 "
        "(LLM360/K2-Think-V2, 70B, Llama architecture) or custom (give architecture and source).",
        json_schema_extra={"enum": [*preset_names(), "custom"]},
    )
    source: str | None = Field(
        default=None,
        max_length=1024,
        description="Where the weights come from: hf://ORG/NAME (Hugging Face), s3://BUCKET/PATH, "
        "gs://BUCKET/PATH, pvc://CLAIM/PATH (a PersistentVolumeClaim mounted read-only on the "
        "workers) or file:///PATH (a path already present in the image). Defaults to the "
        "preset's Hugging Face repository.",
        json_schema_extra={"pattern": SOURCE_SCHEMA_PATTERN},
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Model revision (branch, tag or commit) for hf:// sources.",
    )
    served_model_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=SERVED_NAME_PATTERN,
        description="The model name clients send in OpenAI requests. Defaults to the preset's "
        "Hugging Face id (e.g. LLM360/K2-Think), or the resource name for custom models. "
        "Letters, digits and . _ / : @ + - only (it is passed on to vLLM and appears in URLs).",
    )
    max_model_len: int = Field(
        default=32768,
        ge=256,
        le=1048576,
        description="Longest sequence (prompt plus output) one request may use, in tokens. "
        "Reasoning output is long: 32768 is a good default for K2-Think. The planner sizes KV "
        "cache so at least minConcurrentSequences such sequences fit a replica.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Weight dtype. auto uses the model's (bfloat16) or the accelerator "
        "profile's (float32 for CPU).",
    )
    architecture: ArchitectureSpec | None = Field(
        default=None,
        description="Shape of a custom model (preset custom only): the numbers the memory model "
        "needs, as in the model's config.json.",
    )
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Name of a Secret in this namespace whose keys become environment variables "
        "of the Ray pods (e.g. HF_TOKEN, AWS_ACCESS_KEY_ID).",
    )
    cache_ref: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="Name of a K2ThinkModelCache in this namespace to load the weights from. "
        "While the cache has no verified revision the deployment waits (condition CacheReady, "
        "no RayService); then workers mount the cache's claim read-only, load the newest "
        "verified revision from its local path with HF_HUB_OFFLINE=1, and switch to a new "
        "revision only once it is verified. Excludes source and revision (the cache has them); "
        "several deployments may share one cache.",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value != "custom" and value not in MODEL_PRESETS:
            known = ", ".join([*preset_names(), "custom"])
            raise ValueError(f"unknown preset {value!r}; known: {known}")
        return value

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, value: str | None) -> str | None:
        problem = None if value is None else source_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    @cel(
        "self.preset == 'custom' ? (has(self.architecture) && (has(self.source) || "
        "has(self.cacheRef))) "
        ": !has(self.architecture)",
        "preset custom needs architecture and source (or cacheRef); presets k2-think and k2-think-v2 do not "
        "take an architecture",
    )
    @cel(
        "!has(self.cacheRef) || (!has(self.source) && !has(self.revision))",
        "cacheRef excludes source and revision: the cache names the weights",
    )
    @cel(
        "!has(self.revision) || !has(self.source) || self.source.startsWith('hf://')",
        "revision applies only to hf:// sources; s3://, gs://, pvc:// and file:// name one set "
        "of files (put the revision in the path)",
        field_path=".revision",
    )
    def _architecture_only_for_custom(self) -> ModelSpec:
        if (
            self.revision is not None
            and self.source is not None
            and not self.source.startswith("hf://")
        ):
            raise FieldProblem(
                "revision",
                "revision applies only to hf:// sources; s3://, gs://, pvc:// and file:// name "
                "one set of files (put the revision in the path)",
            )
        if self.cache_ref is not None and (self.source is not None or self.revision is not None):
            raise ValueError("cacheRef excludes source and revision: the cache names the weights")
        if self.preset == "custom" and self.architecture is None:
            raise ValueError("preset custom needs an architecture block")
        if self.preset != "custom" and self.architecture is not None:
            raise ValueError(
                f"architecture is only allowed with preset custom; {self.preset} has its own"
            )
        if self.preset == "custom" and self.source is None and self.cache_ref is None:
            raise ValueError("preset custom needs a source (or a cacheRef)")
        return self

    @property
    def preset_info(self) -> ModelPreset | None:
        return MODEL_PRESETS.get(self.preset)

    def resolved_architecture(self) -> Architecture:
        if self.architecture is not None:
            return self.architecture.to_architecture()
        preset = MODEL_PRESETS[self.preset]
        return preset.architecture

    def resolved_source(self) -> str:
        if self.source is not None:
            return self.source
        return f"hf://{MODEL_PRESETS[self.preset].hf_id}"

    def resolved_served_name(self, fallback: str) -> str:
        if self.served_model_name:
            return self.served_model_name
        preset = self.preset_info
        return preset.hf_id if preset else fallback


class Toleration(_Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(
        default=None,
        max_length=316,
        pattern=QUALIFIED_NAME,
        description="Taint key the toleration applies to; empty matches all keys.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: LabelValue | None = Field(
        default=None, description="Taint value to match with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
        json_schema_extra={"format": "int64"},
    )

    @model_validator(mode="after")
    @cel(
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "operator Exists matches every value: leave value empty (or use operator Equal)",
        field_path=".value",
    )
    @cel(
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds applies only to effect NoExecute",
        field_path=".tolerationSeconds",
    )
    @cel(
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "an empty key tolerates every taint and needs operator Exists",
        field_path=".operator",
    )
    def _kubernetes_rules(self) -> Toleration:
        """The API server's own Pod validation (``validateTolerations``), said at admission."""
        if self.operator == "Exists" and self.value:
            raise FieldProblem(
                "value", "operator Exists matches every value: leave value empty (or use Equal)"
            )
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise FieldProblem(
                "tolerationSeconds", "tolerationSeconds applies only to effect NoExecute"
            )
        if not self.key and self.operator != "Exists":
            raise FieldProblem(
                "operator", "an empty key tolerates every taint and needs operator Exists"
            )
        return self


MAX_TOLERATIONS = 32


class PoolSpec(_Model):
    """A GPU node pool replicas may run on. Order matters: the first pool is preferred and
    receives the replica floor first."""

    name: str = Field(
        pattern=DNS_LABEL, max_length=40, description="Pool name; also the Ray worker group name."
    )
    gpu_type: str = Field(
        description="Accelerator type of the pool's nodes (sets memory, bandwidth, the GPU "
        "resource name and Ray's accelerator_type). CPU is a development profile that runs "
        "vLLM's CPU backend.",
        json_schema_extra={"enum": [*accelerator_names()]},
    )
    gpus_per_node: int = Field(
        default=8,
        ge=1,
        le=64,
        description="GPUs on one node of the pool. Tensor-parallel groups never span nodes.",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Node labels a worker pod of this pool requires.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_TOLERATIONS,
        description="Tolerations for the pool's taints (e.g. nvidia.com/gpu).",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod affinity for the pool's worker pods (core/v1 Affinity), e.g. to keep a "
        "deployment's replicas on one network block.",
    )
    max_nodes: int | None = Field(
        default=None,
        ge=1,
        description="Most nodes of this pool the deployment may use; bounds the worker group and "
        "the replicas placed here. Unset: only the autoscaling bounds limit it.",
    )
    warm_replicas: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Room for this many replicas kept started in this pool beyond its share of "
        "the replica floor: worker pods with joined Ray nodes that the Ray autoscaler never "
        "removes, so a scale-up here pays only vLLM's start, not a new pod and Ray node "
        "(docs/autoscaling.md). They hold their GPUs while idle. Needs spec.autoscaling.",
    )
    gpu_memory_gi_b: float | None = Field(
        default=None,
        alias="gpuMemoryGiB",
        gt=0,
        le=4096,
        description="Override the usable memory per GPU the catalog assumes for gpuType (GiB).",
    )
    cpu_per_gpu: Quantity = Field(
        default="8",
        description="CPU requested per GPU of a worker pod (tokenization, scheduling, NCCL).",
    )
    memory_per_gpu: MemoryQuantity = Field(
        default="64Gi",
        description="Host memory requested per GPU of a worker pod (weight loading, CPU offload).",
    )

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        if value not in ACCELERATORS:
            known = ", ".join(sorted(ACCELERATORS))
            raise ValueError(f"unknown gpuType {value!r}; known: {known}")
        return value


Degree = Annotated[
    Annotated[int, Field(ge=1, le=64)] | Literal["auto"],
    IntOrString(),
    Cel(
        "type(self) == int ? (self >= 1 && self <= 64) : self == 'auto'",
        "must be 'auto' or an integer from 1 to 64",
    ),
]


class ParallelismSpec(_Model):
    """How one replica is split across GPUs."""

    tensor: Degree = Field(
        default="auto",
        description="Tensor-parallel degree: GPUs one pipeline stage spans, inside one node. Must "
        "divide the attention heads; KV heads and TP must divide one another.",
    )
    pipeline: Degree = Field(
        default="auto",
        description="Pipeline-parallel degree: stages of a replica, placed on separate worker "
        "pods when a replica does not fit one node.",
    )
    min_concurrent_sequences: int = Field(
        default=1,
        ge=1,
        le=4096,
        description="Full-context sequences one replica must hold in KV cache for a layout to be "
        "acceptable.",
    )
    tp_gain_threshold: float = Field(
        default=0.25,
        ge=0,
        le=10,
        description="A larger TP is chosen only when it raises full-context sequences per GPU by "
        "at least this fraction (0.25 = 25%): it doubles all-reduce traffic and halves the number "
        "of independently scalable replicas.",
    )


#: Default of ``autoscaling.poolFallbackSeconds`` (also used for fixed replica counts).
POOL_FALLBACK_SECONDS = 600
POOL_FALLBACK_DESCRIPTION = (
    "How long a new worker pod may take to become a running Ray node (waiting for room in its "
    "pool, pulling the image, starting Ray) before the Ray autoscaler gives it up and scales the "
    "next pool in spec order instead. Rendered as Ray autoscaler v2's "
    "RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S (Ray's default: one hour). Keep it above "
    "a pod's real start-up time on a node that has room."
)


class AutoscalingSpec(_Model):
    """Ray Serve autoscaling of model replicas on ongoing requests."""

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=10000,
        description="Fewest replicas; 0 allows scale to zero (the ingress stays up on the Ray "
        "head and wakes a replica on the first request, after a cold start).",
    )
    max_replicas: int = Field(ge=1, le=10000, description="Most replicas.")
    initial_replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Replicas at first deploy; defaults to max(minReplicas, 1).",
    )
    target_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Ongoing requests per replica Serve aims for. Default: twice the full-context "
        "concurrency of the plan, capped at engine.maxNumSeqs. (Serve LLM's own default of 1e9 "
        "never scales.)",
    )
    upscale_delay_seconds: float = Field(
        default=30,
        ge=0,
        le=3600,
        description="How long demand must stay high before adding replicas.",
    )
    downscale_delay_seconds: float = Field(
        default=600,
        ge=0,
        le=86400,
        description="How long demand must stay low before removing replicas; keep it long, "
        "reasoning replicas are expensive to bring back.",
    )
    idle_timeout_seconds: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="How long an idle Ray worker pod lives before the Ray autoscaler removes it "
        "and frees its GPUs.",
    )
    pool_fallback_seconds: int = Field(
        default=POOL_FALLBACK_SECONDS,
        ge=30,
        le=86400,
        description=POOL_FALLBACK_DESCRIPTION,
    )
    policy: AutoscalingPolicySpec = Field(
        default_factory=AutoscalingPolicySpec,
        description="Which signal Serve scales on: ongoing requests (default) or a latency "
        "target fed by the replicas' vLLM KV cache and queue (docs/autoscaling.md).",
    )

    @model_validator(mode="after")
    @cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")
    @cel(
        "!has(self.initialReplicas) || (self.initialReplicas >= self.minReplicas && "
        "self.initialReplicas <= self.maxReplicas)",
        "initialReplicas must lie within [minReplicas, maxReplicas]",
        field_path=".initialReplicas",
    )
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas={self.min_replicas} is greater than maxReplicas={self.max_replicas}"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise FieldProblem(
                "initialReplicas",
                f"initialReplicas={initial} is outside "
                f"[minReplicas={self.min_replicas}, maxReplicas={self.max_replicas}]",
            )
        return self


class EngineSpec(_Model):
    """vLLM engine settings."""

    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=0.99,
        description="Share of each GPU's memory vLLM may use for weights, activations and KV "
        "cache. Default 0.9 on GPUs, 0.1 of host memory for the CPU profile.",
    )
    max_num_seqs: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Most sequences vLLM batches at once per replica.",
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="Reuse KV cache across requests sharing a prefix (system prompts, multi-turn).",
    )
    reasoning_parser: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9_]*$",
        description="vLLM reasoning parser that splits <think>...</think> into "
        "reasoning_content. Defaults to deepseek_r1 for the K2 Think presets; empty string "
        "disables.",
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        default="auto",
        description="KV cache dtype; fp8 halves KV memory (the planner accounts for it).",
    )
    runtime_reserve_gi_b: float | None = Field(
        default=None,
        alias="runtimeReserveGiB",
        ge=0,
        le=1024,
        description="GiB per GPU the planner keeps free for activations, CUDA graphs and NCCL "
        "buffers. Default from the accelerator profile (4 GiB on GPUs).",
    )
    speculative_decoding: SpeculativeDecodingSpec | None = Field(
        default=None,
        description="vLLM speculative decoding: ngram or suffix (no draft model), or a draft "
        "model / EAGLE head (draftModel, eagle, eagle3) whose weights and KV cache the planner "
        "counts on every GPU. Combinations vLLM refuses are refused here. Off by default.",
    )
    # Values are free-form (preserve-unknown-fields: CEL cannot type them); the keys are checked
    # by ``_no_planned_keys``.
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Any other vLLM engine argument, passed through to engine_kwargs (e.g. "
        "enable_chunked_prefill, max_num_batched_tokens). Arguments the operator sets from typed "
        "fields (" + ", ".join(sorted(PLANNED_ENGINE_ARGS)) + ") are refused: the InvalidSpec "
        "condition names the field to use instead.",
    )

    @field_validator("extra_args")
    @classmethod
    def _no_planned_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Owned keys in any spelling, non-keyword spellings, credentials (``api/owned.py``).

        Ray Serve LLM passes engine_kwargs to vLLM's EngineArgs by keyword: a flag spelling
        (``--enforce-eager``) would make every replica fail. Checked here and by the operator
        (InvalidSpec): the CRD cannot, CEL sees nothing inside a free-form map.
        """
        for key in sorted(value):
            problem = engine_arg_problem(key, value[key])
            if problem:
                raise ValueError(problem)
        return value


class ResourceRequirements(_Model):
    """Container resources (core/v1 ResourceRequirements)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Minimum resources the pod asks for."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Maximum resources the pod may use."
    )


class HeadSpec(_Model):
    """The Ray head pod."""

    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "4", "memory": "16Gi"}, limits={"memory": "16Gi"}
        ),
        description="Head container resources; its CPUs bound the ingress replicas.",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Node labels the head pod requires (a CPU pool).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=MAX_TOLERATIONS, description="Tolerations of the head pod."
    )


_OWNED_ENV_LIST = ", ".join(f"'{n}'" for n in sorted(REFUSED_ENV))


class EnvVar(_Model):
    """A name/value environment variable."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=256,
        description="Variable name. Names the operator, KubeRay or Ray token auth set, device "
        "visibility variables and credentials are refused (docs/security.md).",
    )
    value: str = Field(max_length=8192, description="Variable value (never a credential).")

    @model_validator(mode="after")
    @cel(
        f"!(self.name in [{_OWNED_ENV_LIST}])",
        "this variable is set by the operator, KubeRay or Ray token auth, or controls GPU "
        "visibility; it may not be set in spec.ray.env",
        field_path=".name",
    )
    @cel(
        f"!self.name.matches('{CREDENTIAL_ENV_PATTERN}')",
        f"this variable holds a credential: put it in a Secret and name the Secret in "
        f"{CREDENTIALS_FIELD}",
        field_path=".name",
    )
    @cel(
        f"!self.value.matches('{CREDENTIAL_VALUE_PATTERN}')",
        f"the value looks like a credential (a token or key): put it in a Secret and name the "
        f"Secret in {CREDENTIALS_FIELD}",
        field_path=".value",
    )
    def _not_owned(self) -> EnvVar:
        problem = env_problem(self.name)
        if problem:
            raise FieldProblem("name", problem)
        if credential_in(self.value):
            raise FieldProblem(
                "value",
                f"the value of {self.name} looks like a credential (a token or key): put it in "
                f"a Secret and name the Secret in {CREDENTIALS_FIELD}",
            )
        return self


class RayAuthSpec(_Model):
    """Ray token authentication (KubeRay ``authOptions``, Ray 2.52+)."""

    enabled: bool = Field(
        default=True,
        description="Require Ray's token on the dashboard (job submission, Serve REST API), the "
        "GCS and every Ray RPC. Turn it off only for clusters isolated otherwise; the operator "
        "then posts a Warning event (RayAuthDisabled).",
    )
    secret_name: SecretName | None = Field(
        default=None,
        description="Secret (key auth_token) holding the token. Default: the operator creates "
        "<name>-ray-token with a random token once and never rewrites it. Pointing this at a "
        "new Secret rotates the token through a new Ray cluster (zero-downtime upgrade).",
    )


class SecretKeyRef(_Model):
    """One key of a Secret in the deployment's namespace."""

    name: SecretName = Field(description="Secret name.")
    key: str = Field(
        pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key inside the Secret."
    )


class GcsFaultToleranceSpec(_Model):
    """Ray GCS fault tolerance: the head keeps its cluster state in an external Redis.

    Rendered as KubeRay's ``rayClusterConfig.gcsFaultToleranceOptions`` (KubeRay v1.6
    ``GcsFaultToleranceOptions``); see docs/serving-path.md for what survives a head failure."""

    redis_address: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^(rediss?://)?[^\s/]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
        description="Redis the Ray head stores its GCS tables in, HOST:PORT (or redis://HOST:PORT, "
        "rediss://HOST:PORT for TLS), e.g. redis-ha.ray-system.svc:6379. Use a highly available "
        "Redis (Sentinel or a managed service): while it is down a head failure is fatal again.",
    )
    password_secret: SecretKeyRef | None = Field(
        default=None,
        description="The Redis password, from a Secret in this namespace (KubeRay passes it to "
        "the head as REDIS_PASSWORD and to ray start as --redis-password).",
    )
    external_storage_namespace: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key prefix of this cluster's state in Redis. Default (recommended): the "
        "RayCluster's UID, unique per Ray cluster, so the old and the new cluster of an upgrade "
        "never share state and KubeRay's Redis clean-up job of the old one cannot delete the "
        "new one's. A fixed value is therefore only accepted with upgradeStrategy None.",
    )


class RaySpec(_Model):
    """The Ray cluster KubeRay runs for this deployment."""

    image: str = Field(
        default=DEFAULT_RAY_IMAGE,
        min_length=1,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Ray image with Ray Serve LLM and vLLM (used by head and workers): an image "
        "reference the kubelet can pull (lowercase repository, optional tag and digest). Ray "
        f"token auth (auth.enabled) needs Ray {RAY_TOKEN_AUTH_MIN} or newer.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy of the Ray containers."
    )
    head: HeadSpec = Field(
        default_factory=HeadSpec,
        description="The Ray head pod: GCS, dashboard, Serve controller and the OpenAI ingress. "
        "It never runs model replicas (num-gpus 0).",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables of the Ray containers.",
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="ServiceAccount of the Ray pods (e.g. for workload identity to s3/gs).",
    )
    auth: RayAuthSpec = Field(
        default_factory=RayAuthSpec,
        description="Ray token authentication; on by default.",
    )
    worker_service_account_token: bool = Field(
        default=False,
        description="Mount the ServiceAccount token into worker pods. Off by default: code run "
        "on a worker (a Serve replica, a job) then holds no Kubernetes credentials. Workload "
        "identity webhooks (IRSA, GKE) inject their own projected token and need no change.",
    )
    gcs_fault_tolerance: GcsFaultToleranceSpec | None = Field(
        default=None,
        description="Keep the Ray head's cluster state (GCS) in an external Redis, so a head "
        "failure restarts only the head: model replicas on the workers keep their weights and "
        "keep streaming. Without it a head failure restarts every replica. The operator "
        "reports GcsFaultToleranceOff when a deployment of more replicas than its threshold "
        "runs without it.",
    )

    @model_validator(mode="after")
    @cel(
        "(has(self.auth) && has(self.auth.enabled) && !self.auth.enabled) || "
        f"!self.image.matches('{OLD_RAY_IMAGE}')",
        f"Ray token auth needs Ray {RAY_TOKEN_AUTH_MIN} or newer: use a newer image (or turn "
        "auth off, which is loud)",
        field_path=".image",
    )
    def _image_supports_auth(self) -> RaySpec:
        if self.auth.enabled and re.match(OLD_RAY_IMAGE, self.image):
            raise FieldProblem(
                "image",
                f"{self.image} is older than Ray {RAY_TOKEN_AUTH_MIN}, which token auth "
                f"(spec.ray.auth.enabled) needs: use e.g. {DEFAULT_RAY_IMAGE}",
            )
        return self


#: Worker group name of the ingress CPU pods (ingress.py); pools may not take it.
INGRESS_GROUP = "k2t-ingress"


class IngressGroupSpec(_Model):
    """The CPU worker pods that host ingress replicas when they do not fit the head."""

    cpu: Quantity = Field(
        default="4",
        description="CPUs of one ingress pod (requests = limits); it hosts one ingress replica "
        "per CPU.",
    )
    memory: MemoryQuantity = Field(default="8Gi", description="Memory of one ingress pod.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Node labels the ingress pods require (a CPU pool).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_TOLERATIONS,
        description="Tolerations of the ingress pods.",
    )


class IngressSpec(_Model):
    """Ray Serve LLM's OpenAI ingress: every streamed token passes it. Unset fields are sized
    by the planner from the fleet (status.plan.ingress says how)."""

    min_replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Fewest ingress replicas. Default 1 (0 when the model scales to zero).",
    )
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Most ingress replicas. Default: the fleet's streams (model maxReplicas x "
        "max ongoing requests) over targetOngoingRequests.",
    )
    target_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Streams one ingress replica (one CPU) carries before Serve adds one. "
        "Default from the measured ingress CPU cost per request and per token "
        "(docs/benchmarks.md).",
    )
    placement: Literal["auto", "head", "cpuGroup"] = Field(
        default="auto",
        description="Where ingress replicas run: head (the Ray head pod, bounded by its CPUs), "
        "cpuGroup (a CPU worker group the Ray autoscaler scales) or auto (the head while "
        "maxReplicas fits its spare CPUs, else cpuGroup). Changing where it runs reshapes the "
        "Ray cluster (a new cluster under upgradeStrategy NewCluster).",
    )
    cpu_group: IngressGroupSpec = Field(
        default_factory=IngressGroupSpec,
        description="The CPU worker pods of placement cpuGroup.",
    )

    @model_validator(mode="after")
    @cel(
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        "ingress minReplicas must not exceed maxReplicas",
    )
    def _bounds(self) -> IngressSpec:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError(f"ingress minReplicas={low} is greater than maxReplicas={high}")
        return self


class ServePeer(_Model):
    """Who may call the serve port: pods in a namespace, optionally only those with labels."""

    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace of the callers; default the deployment's own namespace.",
    )
    pod_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Only pods with all these labels; empty means every pod of the namespace.",
    )


class KubeRayPeer(_Model):
    """Where KubeRay's operator runs: it calls the dashboard (8265) and the serve health check."""

    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace of KubeRay's operator; default any namespace (narrow it).",
    )
    pod_labels: dict[str, LabelValue] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"},
        max_length=16,
        description="Labels of KubeRay's operator pods (its Helm chart's default). May not be "
        "empty: an empty selector would admit every pod (of every namespace, without "
        "namespace) to the dashboard and the serve port.",
    )

    @model_validator(mode="after")
    @cel(
        "!has(self.podLabels) || size(self.podLabels) > 0",
        "an empty podLabels selector admits every pod to the Ray dashboard (8265) and the serve "
        "port: name KubeRay's operator pod labels (e.g. app.kubernetes.io/name: kuberay-operator)",
        field_path=".podLabels",
    )
    def _selects_something(self) -> KubeRayPeer:
        if not self.pod_labels:
            raise FieldProblem(
                "podLabels",
                "an empty podLabels selector admits every pod to the Ray dashboard (8265) and "
                "the serve port: name KubeRay's operator pod labels (e.g. "
                "app.kubernetes.io/name: kuberay-operator)",
            )
        return self


class NetworkPolicySpec(_Model):
    """NetworkPolicies around the Ray pods (owned by this resource)."""

    enabled: bool = Field(
        default=True,
        description="Render NetworkPolicies around the Ray pods. They take effect only with a "
        "policy-enforcing CNI (Calico, Cilium, ...).",
    )
    serve_from: list[ServePeer] = Field(
        default_factory=list,
        max_length=16,
        description="Who may reach the OpenAI endpoint (port 8000). Empty: every pod of the "
        "deployment's namespace.",
    )
    monitoring_namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace whose pods may scrape Ray's metrics port (8080); none if unset.",
    )
    kuberay: KubeRayPeer = Field(
        default_factory=KubeRayPeer,
        description="KubeRay's operator pods, the only callers of the dashboard from outside.",
    )


class ServingSpec(_Model):
    """Request handling of the Serve deployment."""

    graceful_shutdown_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="How long a replica being removed keeps serving its in-flight requests; long "
        "reasoning streams need minutes. Worker pods get 30 s more to terminate.",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests Serve sends one replica at once; beyond it, requests queue in the "
        "router where autoscaling sees them. Default: max(maxNumSeqs, 2 x target).",
    )
    max_queued_requests: (
        Annotated[
            int,
            Cel(
                "self == -1 || self >= 1",
                "maxQueuedRequests must be -1 (no limit) or at least 1 (Serve refuses 0)",
            ),
        ]
        | None
    ) = Field(
        default=None,
        ge=-1,
        description="Requests a caller may queue before Serve answers 503; -1 for no limit, else "
        "at least 1 (Serve refuses 0).",
    )

    @field_validator("max_queued_requests")
    @classmethod
    def _serve_queue_bound(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError(
                "maxQueuedRequests must be -1 (no limit) or at least 1 (Serve refuses 0)"
            )
        return value

    ingress: IngressSpec = Field(
        default_factory=IngressSpec,
        description="Sizing and placement of the OpenAI ingress deployment (every token "
        "passes it); sized from the fleet by default.",
    )
    api_keys_secret: SecretName | None = Field(
        default=None,
        description="Secret whose values are the API keys the OpenAI endpoint accepts (one "
        "key per data entry, as `Authorization: Bearer <key>`); without a valid key a request "
        "gets 401. Edits of the Secret are picked up without a restart.",
    )
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec,
        description="Which replica serves a request: prefix-aware routing keeps a "
        "conversation on the replica whose vLLM prefix cache holds its history "
        "(docs/serving-path.md).",
    )


#: Kueue admits one workload of at most 8 PodSets: the Ray head and 7 worker groups (one per pool)
#: (sigs.k8s.io/kueue v0.17 pkg/controller/jobs/raycluster/common.go, ValidateCreate).
KUEUE_MAX_WORKER_GROUPS = 7
#: Kueue names the head's PodSet "head" and refuses a worker group of that name (same function).
KUEUE_RESERVED_GROUP = "head"
QUEUE_NAME_DESCRIPTION = (
    "Kueue LocalQueue (in this namespace) the deployment is admitted through. The RayService "
    "gets the label kueue.x-k8s.io/queue-name and waits, suspended, until Kueue admits it as "
    "one workload (head and every worker group, all or nothing) against the ClusterQueue's "
    "quota; the Admitted condition says where it stands. Changing it re-queues the deployment "
    "only while it is suspended (Kueue keeps the queue of a running workload)."
)
PRIORITY_CLASS_DESCRIPTION = (
    "Kueue WorkloadPriorityClass of the deployment (label kueue.x-k8s.io/priority-class): "
    "decides the order in the queue and which workloads Kueue preempts for it. A preempted "
    "deployment is suspended as a whole and queued again."
)


class SchedulingSpec(_Model):
    """Admission through Kueue (docs/scheduling.md)."""

    queue_name: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63, description=QUEUE_NAME_DESCRIPTION
    )
    priority_class_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        # It becomes a label value (kueue.x-k8s.io/priority-class): 63 characters at most.
        max_length=63,
        description=PRIORITY_CLASS_DESCRIPTION,
    )

    @model_validator(mode="after")
    @cel(
        "!has(self.priorityClassName) || has(self.queueName)",
        "priorityClassName needs queueName: Kueue only orders and preempts the workloads it queues",
    )
    def _priority_needs_queue(self) -> SchedulingSpec:
        if self.priority_class_name is not None and self.queue_name is None:
            raise ValueError(
                "spec.scheduling.priorityClassName needs spec.scheduling.queueName: Kueue only "
                "orders and preempts the workloads it queues"
            )
        return self


class K2ThinkDeploymentSpec(_Model):
    """Desired state of a K2 Think serving fleet."""

    model: ModelSpec = Field(
        default_factory=ModelSpec, description="Which model to serve and how it is loaded."
    )
    pools: list[PoolSpec] = Field(
        min_length=1,
        max_length=8,
        description="GPU node pools, most preferred first. All pools of one deployment share one "
        "tensor/pipeline layout.",
        # Unique names, as a list-map the API server enforces (``_cross_field`` offline).
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec,
        description="How one replica is split across GPUs. auto lets the planner choose; a number "
        "is checked against the model and the pools, never overridden.",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Fixed number of model replicas (each tensor x pipeline GPUs). Mutually "
        "exclusive with autoscaling; the scale subresource (kubectl scale, HPA, KEDA) writes it. "
        "Default 1 when neither is set.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="Ray Serve autoscaling of model replicas on ongoing requests (the right "
        "signal for LLM serving, unlike GPU utilisation). Mutually exclusive with replicas.",
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    ray: RaySpec = Field(
        default_factory=RaySpec, description="The Ray cluster KubeRay runs for this deployment."
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description="Request handling of the Serve deployment."
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description="NetworkPolicies around the Ray pods (owned by this resource).",
    )
    upgrade_strategy: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"] = Field(
        default="NewCluster",
        description="How KubeRay rolls out changes that need a new Ray cluster (image, layout, "
        "pools): NewCluster (zero downtime, temporarily needs the GPUs twice), "
        "NewClusterWithIncrementalUpgrade (the new cluster grows step by step while traffic "
        "moves to it through a Gateway: needs incrementalUpgrade, the Gateway API and KubeRay's "
        "RayServiceIncrementalUpgrade feature gate) or None (the running cluster is kept; only "
        "Serve config changes apply).",
    )
    incremental_upgrade: IncrementalUpgradeSpec | None = Field(
        default=None,
        description="Steps of upgradeStrategy NewClusterWithIncrementalUpgrade, rendered as "
        "KubeRay's clusterUpgradeOptions (required with that strategy, refused with the "
        "others). The condition IncrementalUpgradeUnavailable says when the operator is told "
        "KubeRay's feature gate is off (K2T_KUBERAY_INCREMENTAL_UPGRADE).",
    )
    suspend: bool = Field(
        default=False,
        description="Stop the Ray cluster and free its GPUs, keeping the resource and its plan. "
        "Under Kueue (scheduling.queueName) the operator deactivates the deployment's Workload "
        "instead, which gives its quota back.",
    )
    scheduling: SchedulingSpec = Field(
        default_factory=lambda: SchedulingSpec(),
        description="Fleet scheduling: admission through Kueue (docs/scheduling.md). Without "
        "queueName the deployment is not queued and runs as soon as it is applied.",
    )

    @property
    def queued(self) -> bool:
        """Admitted through Kueue (spec.scheduling.queueName set)."""
        return self.scheduling.queue_name is not None

    @model_validator(mode="after")
    @cel(
        f"!has(self.scheduling) || !has(self.scheduling.queueName) || "
        f"size(self.pools) <= {KUEUE_MAX_WORKER_GROUPS}",
        f"with scheduling.queueName at most {KUEUE_MAX_WORKER_GROUPS} pools: Kueue admits at "
        "most 8 PodSets (the head and one worker group per pool)",
    )
    @cel(
        f"!has(self.scheduling) || !has(self.scheduling.queueName) || "
        f"self.pools.all(p, p.name != '{KUEUE_RESERVED_GROUP}')",
        f"with scheduling.queueName no pool may be named '{KUEUE_RESERVED_GROUP}': Kueue "
        "reserves it for the Ray head",
    )
    @cel(
        f"!has(self.scheduling) || !has(self.scheduling.queueName) || !has(self.serving) || "
        f"!has(self.serving.ingress) || !has(self.serving.ingress.placement) || "
        f"self.serving.ingress.placement != 'cpuGroup' || "
        f"size(self.pools) < {KUEUE_MAX_WORKER_GROUPS}",
        f"with scheduling.queueName and serving.ingress.placement cpuGroup at most "
        f"{KUEUE_MAX_WORKER_GROUPS - 1} pools: the ingress group is one more of Kueue's "
        f"{KUEUE_MAX_WORKER_GROUPS} worker groups",
    )
    def _kueue_limits(self) -> K2ThinkDeploymentSpec:
        if not self.queued:
            return self
        if len(self.pools) > KUEUE_MAX_WORKER_GROUPS:
            raise ValueError(
                f"with spec.scheduling.queueName at most {KUEUE_MAX_WORKER_GROUPS} pools: Kueue "
                f"admits a RayService as one workload of at most 8 PodSets (the head and one "
                f"worker group per pool); this spec has {len(self.pools)} pools"
            )
        if (
            self.serving.ingress.placement == "cpuGroup"
            and len(self.pools) + 1 > KUEUE_MAX_WORKER_GROUPS
        ):
            raise ValueError(
                f"with spec.scheduling.queueName and spec.serving.ingress.placement cpuGroup at "
                f"most {KUEUE_MAX_WORKER_GROUPS - 1} pools: the ingress group "
                f"({INGRESS_GROUP}) is one more worker group and Kueue admits at most "
                f"{KUEUE_MAX_WORKER_GROUPS} (8 PodSets with the head); this spec has "
                f"{len(self.pools)} pools (placement auto keeps the ingress on the head instead)"
            )
        if any(p.name == KUEUE_RESERVED_GROUP for p in self.pools):
            raise ValueError(
                f"with spec.scheduling.queueName no pool may be named {KUEUE_RESERVED_GROUP!r}: "
                "Kueue reserves that name for the Ray head's PodSet"
            )
        return self

    @model_validator(mode="after")
    @cel(
        "!(has(self.replicas) && has(self.autoscaling))",
        "replicas and autoscaling are mutually exclusive: set replicas for a fixed count, or "
        "autoscaling bounds",
    )
    @cel(
        "self.all(p, p.gpuType == 'CPU') || self.all(p, p.gpuType != 'CPU')",
        "pools may not mix the CPU profile with GPU types",
        on="pools",
    )
    @cel(
        "!has(self.ray) || !has(self.ray.gcsFaultTolerance) || "
        "!has(self.ray.gcsFaultTolerance.externalStorageNamespace) || "
        "self.upgradeStrategy == 'None'",
        "ray.gcsFaultTolerance.externalStorageNamespace needs upgradeStrategy None: the old and "
        "the new Ray cluster of an upgrade would share one Redis namespace",
    )
    @cel(
        "!has(self.serving) || !has(self.serving.apiKeysSecret) || !has(self.ray) || "
        "!has(self.ray.auth) || !has(self.ray.auth.secretName) || "
        "self.serving.apiKeysSecret != self.ray.auth.secretName",
        "serving.apiKeysSecret may not name the Ray token Secret (ray.auth.secretName): the "
        "cluster's token would become a client API key",
        field_path=".serving.apiKeysSecret",
    )
    @cel(
        "!has(self.serving) || !has(self.serving.apiKeysSecret) || !has(self.model) || "
        "!has(self.model.credentialsSecret) || "
        "self.serving.apiKeysSecret != self.model.credentialsSecret",
        "serving.apiKeysSecret may not name the credentials Secret (model.credentialsSecret): "
        "its hub or cloud credentials would become client API keys",
        field_path=".serving.apiKeysSecret",
    )
    @cel(
        "!has(self.model) || !has(self.model.cacheRef) || !has(self.ray) || !has(self.ray.env) "
        "|| !self.ray.env.exists(e, e.name == 'HF_HUB_OFFLINE')",
        "with model.cacheRef the operator sets HF_HUB_OFFLINE=1 (the cache's verified revision, "
        "never the hub): remove it from ray.env",
        field_path=".ray.env",
    )
    @cel(
        "!has(self.engine) || !has(self.engine.speculativeDecoding) || "
        "!has(self.engine.speculativeDecoding.draft) || "
        "!has(self.engine.speculativeDecoding.draft.cacheRef) || !has(self.ray) || "
        "!has(self.ray.env) || !self.ray.env.exists(e, e.name == 'HF_HUB_OFFLINE')",
        "with engine.speculativeDecoding.draft.cacheRef the operator sets HF_HUB_OFFLINE=1 (the "
        "cache's verified revision, never the hub): remove it from ray.env",
        field_path=".ray.env",
    )
    def _cross_field(self) -> K2ThinkDeploymentSpec:
        # Either cache makes the operator set the variable on every Ray container (the model's
        # and the draft's weights load from the claim, never the hub): a user's value would be
        # silently replaced, so it is refused, for the draft's cache as for the model's.
        speculative = self.engine.speculative_decoding
        draft = speculative.draft if speculative is not None else None
        caches = {
            "model.cacheRef": self.model.cache_ref,
            "engine.speculativeDecoding.draft.cacheRef": draft.cache_ref if draft else None,
        }
        for name in CONDITIONAL_ENV:
            if not any(e.name == name for e in self.ray.env):
                continue
            for field, ref in caches.items():
                if ref is not None:
                    raise FieldProblem(
                        "ray.env",
                        f"with {field} the operator sets {name}=1 (the cache's verified "
                        "revision, never the hub): remove it from ray.env",
                    )
        keys = self.serving.api_keys_secret
        if keys is not None and keys == self.ray.auth.secret_name:
            raise FieldProblem(
                "serving.apiKeysSecret",
                "serving.apiKeysSecret may not name the Ray token Secret (ray.auth.secretName): "
                "the cluster's token would become a client API key",
            )
        if keys is not None and keys == self.model.credentials_secret:
            raise FieldProblem(
                "serving.apiKeysSecret",
                "serving.apiKeysSecret may not name the credentials Secret "
                "(model.credentialsSecret): its hub or cloud credentials would become client "
                "API keys",
            )
        ft = self.ray.gcs_fault_tolerance
        if (
            ft is not None
            and ft.external_storage_namespace is not None
            and self.upgrade_strategy != "None"
        ):
            raise ValueError(
                "ray.gcsFaultTolerance.externalStorageNamespace needs upgradeStrategy None: the "
                "old and the new Ray cluster of an upgrade would share one Redis namespace (and "
                "KubeRay's clean-up of the old one deletes it); leave it unset to use the "
                "RayCluster's UID"
            )
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(
                "replicas and autoscaling are mutually exclusive: set replicas for a fixed "
                "count, or autoscaling bounds"
            )
        names = [p.name for p in self.pools]
        if INGRESS_GROUP in names:
            raise ValueError(f"pool name {INGRESS_GROUP} is reserved for the ingress CPU group")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        kinds = {ACCELERATORS[p.gpu_type].is_cpu for p in self.pools}
        if len(kinds) > 1:
            raise ValueError("pools mix the CPU profile with GPU types; use one or the other")
        problem = vendor_problem(self.pools, self.ray.image)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    @cel(
        "!has(self.serving) || !has(self.serving.routing) || !has(self.serving.routing.router) || "
        "self.serving.routing.router != 'prefixAware' || !has(self.engine) || "
        "!has(self.engine.enablePrefixCaching) || self.engine.enablePrefixCaching",
        "serving.routing.router prefixAware needs engine.enablePrefixCaching: without vLLM's "
        "prefix cache there is nothing to route to",
    )
    def _routing_needs_prefix_cache(self) -> K2ThinkDeploymentSpec:
        routing = self.serving.routing
        if routing.router == "prefixAware" and not self.engine.enable_prefix_caching:
            raise ValueError(
                "serving.routing.router prefixAware needs engine.enablePrefixCaching: without "
                "vLLM's prefix cache there is nothing to route to"
            )
        return self

    @model_validator(mode="after")
    @cel(
        "(has(self.upgradeStrategy) && self.upgradeStrategy == "
        "'NewClusterWithIncrementalUpgrade') == has(self.incrementalUpgrade)",
        "upgradeStrategy NewClusterWithIncrementalUpgrade needs incrementalUpgrade (at least "
        "gatewayClassName), and incrementalUpgrade is only for that strategy",
    )
    def _incremental_upgrade_options(self) -> K2ThinkDeploymentSpec:
        incremental = self.upgrade_strategy == INCREMENTAL_UPGRADE
        if incremental and self.incremental_upgrade is None:
            raise ValueError(
                "upgradeStrategy NewClusterWithIncrementalUpgrade needs incrementalUpgrade (at "
                "least gatewayClassName): KubeRay refuses the RayService without "
                "clusterUpgradeOptions"
            )
        if not incremental and self.incremental_upgrade is not None:
            raise ValueError(
                f"incrementalUpgrade is only for upgradeStrategy "
                f"NewClusterWithIncrementalUpgrade, not {self.upgrade_strategy}"
            )
        return self

    @property
    def fixed_replicas(self) -> int:
        """Replica count when autoscaling is off (1 when neither is set)."""
        return 1 if self.replicas is None else self.replicas


def vendor_problem(pools: list[PoolSpec], image: str) -> str | None:
    """Why these pools cannot share one Ray image, or None.

    One K2ThinkDeployment renders one ``spec.ray.image`` for every pool, and a Ray/vLLM image is
    built for one GPU stack (CUDA or ROCm): a B200 pool and an MI300X pool in one deployment would
    run the CUDA build on AMD boards. Refusing is simpler and safer than per-pool images (which
    would also need per-pool engine builds and a cross-vendor tensor/pipeline layout vLLM does not
    offer); the fix is one deployment per vendor.
    """
    vendors: dict[str, list[str]] = {}
    for pool in pools:
        accelerator = ACCELERATORS[pool.gpu_type]
        if not accelerator.is_cpu:
            vendors.setdefault(accelerator.vendor, []).append(f"{pool.name} ({pool.gpu_type})")
    if len(vendors) > 1:
        listed = "; ".join(f"{v}: {', '.join(names)}" for v, names in sorted(vendors.items()))
        return (
            f"pools mix GPU vendors ({listed}); one deployment runs one Ray image, built for "
            "either CUDA or ROCm: split them into one K2ThinkDeployment per vendor"
        )
    if "amd.com" in vendors and image == DEFAULT_RAY_IMAGE:
        return (
            f"AMD pools ({', '.join(vendors['amd.com'])}) need a ROCm build of Ray and vLLM; "
            f"the default spec.ray.image {DEFAULT_RAY_IMAGE} is a CUDA build: set spec.ray.image"
        )
    return None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("int", "str") or part.startswith(("function-", "literal[", "constrained-")):
            # pydantic's union branch tags, not fields (a field may start with "int"/"str":
            # spec.incrementalUpgrade.intervalSeconds)
            continue
        else:
            path += f".{part}"
    return path


def format_validation_error(error: ValidationError) -> list[SpecError]:
    """Turn pydantic's report into one SpecError per problem, with camelCase field paths."""
    problems: list[SpecError] = []
    seen: set[str] = set()
    for item in error.errors(include_url=False):
        field = _field_path(tuple(item["loc"]))
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblem):
            field = f"{field}.{cause.field}"
        message = str(item["msg"]).removeprefix("Value error, ")
        key = f"{field}: {message}"
        if key in seen:
            continue
        seen.add(key)
        problems.append(SpecError(field, message))
    return problems


class InvalidSpec(ValueError):
    """All problems found in one spec, so the user fixes them in one round."""

    def __init__(self, problems: list[SpecError]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def parse_spec(raw: dict[str, Any]) -> K2ThinkDeploymentSpec:
    """Parse ``.spec`` of a K2ThinkDeployment; raises InvalidSpec naming every bad field."""
    try:
        return K2ThinkDeploymentSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(format_validation_error(error)) from None
