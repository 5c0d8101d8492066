"""The K2ThinkDeployment spec as typed models, and the semantic checks the CRD schema cannot do.

The CRD's OpenAPI schema and CEL rules refuse malformed objects at the API server; these models
refuse the same things again (so ``validate`` and ``plan`` work offline on a file) and add the
checks that need the catalog. Every error carries the field path the user has to edit.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from k2think_operator.catalog import ACCELERATORS, MODEL_PRESETS, Architecture, ModelPreset

API_GROUP = "k2think.dev"
API_VERSION = "v1alpha1"
KIND = "K2ThinkDeployment"
PLURAL = "k2thinkdeployments"

DEFAULT_RAY_IMAGE = "rayproject/ray-llm:2.60.0-py311-cu128"

#: engine_kwargs the planner and the typed spec own; extraArgs may not set them.
PLANNED_ENGINE_ARGS: dict[str, str] = {
    "tensor_parallel_size": "spec.parallelism.tensor",
    "pipeline_parallel_size": "spec.parallelism.pipeline",
    "max_model_len": "spec.model.maxModelLen",
    "gpu_memory_utilization": "spec.engine.gpuMemoryUtilization",
    "dtype": "spec.model.dtype",
    "max_num_seqs": "spec.engine.maxNumSeqs",
    "enable_prefix_caching": "spec.engine.enablePrefixCaching",
    "reasoning_parser": "spec.engine.reasoningParser",
    "kv_cache_dtype": "spec.engine.kvCacheDtype",
    "revision": "spec.model.revision",
    "model": "spec.model.source",
    "served_model_name": "spec.model.servedModelName",
}

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|K|M|G|T)?$"


def _quantity_text(value: object) -> object:
    """Kubernetes quantities may be written as YAML numbers; keep them as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


Quantity = Annotated[str, BeforeValidator(_quantity_text), Field(pattern=QUANTITY_PATTERN)]

SOURCE_PATTERN = re.compile(r"^(hf|s3|gs|pvc|file)://(.+)$")
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class SpecError(ValueError):
    """A spec that cannot be served as written. ``field`` is the path to edit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class ArchitectureSpec(_Model):
    """Only for ``preset: custom``: the numbers the memory model needs."""

    family: str = "custom"
    parameters_billions: float = Field(gt=0, le=2000)
    layers: int = Field(ge=1, le=1024)
    hidden_size: int = Field(ge=1)
    attention_heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    max_position_embeddings: int = Field(ge=1)

    @model_validator(mode="after")
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
    preset: Literal["k2-think", "k2-think-v2", "custom"] = "k2-think"
    source: str | None = None
    revision: str | None = Field(default=None, min_length=1, max_length=256)
    served_model_name: str | None = Field(default=None, min_length=1, max_length=256)
    max_model_len: int = Field(default=32768, ge=256, le=1048576)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    architecture: ArchitectureSpec | None = None
    credentials_secret: str | None = Field(default=None, pattern=DNS_LABEL, max_length=253)

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = SOURCE_PATTERN.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a model source; use hf://ORG/NAME, s3://BUCKET/PATH, "
                "gs://BUCKET/PATH, pvc://CLAIM/PATH or file:///ABSOLUTE/PATH"
            )
        scheme, rest = match.groups()
        if scheme == "pvc" and "/" not in rest.strip("/"):
            raise ValueError(f"{value!r}: a pvc source needs a claim and a path, pvc://CLAIM/PATH")
        if scheme == "file" and not rest.startswith("/"):
            raise ValueError(f"{value!r}: a file source needs an absolute path, file:///PATH")
        return value

    @model_validator(mode="after")
    def _architecture_only_for_custom(self) -> ModelSpec:
        if self.preset == "custom" and self.architecture is None:
            raise ValueError("preset custom needs an architecture block")
        if self.preset != "custom" and self.architecture is not None:
            raise ValueError(
                f"architecture is only allowed with preset custom; {self.preset} has its own"
            )
        if self.preset == "custom" and self.source is None:
            raise ValueError("preset custom needs a source")
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
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PoolSpec(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    gpu_type: str
    gpus_per_node: int = Field(default=8, ge=1, le=64)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    max_nodes: int | None = Field(default=None, ge=1)
    gpu_memory_gi_b: float | None = Field(default=None, alias="gpuMemoryGiB", gt=0)
    cpu_per_gpu: Quantity = "8"
    memory_per_gpu: Quantity = "64Gi"

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        if value not in ACCELERATORS:
            known = ", ".join(sorted(ACCELERATORS))
            raise ValueError(f"unknown gpuType {value!r}; known: {known}")
        return value


Degree = Annotated[int, Field(ge=1, le=64)] | Literal["auto"]


class ParallelismSpec(_Model):
    tensor: Degree = "auto"
    pipeline: Degree = "auto"
    min_concurrent_sequences: int = Field(default=1, ge=1, le=4096)
    tp_gain_threshold: float = Field(default=0.25, ge=0, le=10)


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
    min_replicas: int = Field(default=1, ge=0, le=10000)
    max_replicas: int = Field(ge=1, le=10000)
    initial_replicas: int | None = Field(default=None, ge=0, le=10000)
    target_ongoing_requests: int | None = Field(default=None, ge=1, le=100000)
    upscale_delay_seconds: float = Field(default=30, ge=0, le=3600)
    downscale_delay_seconds: float = Field(default=600, ge=0, le=86400)
    idle_timeout_seconds: int = Field(default=60, ge=0, le=86400)
    pool_fallback_seconds: int = Field(
        default=POOL_FALLBACK_SECONDS,
        ge=30,
        le=86400,
        description=POOL_FALLBACK_DESCRIPTION,
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas={self.min_replicas} is greater than maxReplicas={self.max_replicas}"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initialReplicas={initial} is outside "
                f"[minReplicas={self.min_replicas}, maxReplicas={self.max_replicas}]"
            )
        return self


class EngineSpec(_Model):
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=0.99)
    max_num_seqs: int = Field(default=256, ge=1, le=65536)
    enable_prefix_caching: bool = True
    reasoning_parser: str | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    runtime_reserve_gi_b: float | None = Field(default=None, alias="runtimeReserveGiB", ge=0)
    extra_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("extra_args")
    @classmethod
    def _no_planned_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in sorted(value):
            if key in PLANNED_ENGINE_ARGS:
                raise ValueError(
                    f"{key} is set by the operator; use {PLANNED_ENGINE_ARGS[key]} instead"
                )
        return value


class ResourceRequirements(_Model):
    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=16)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=16)


class HeadSpec(_Model):
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "4", "memory": "16Gi"}, limits={"memory": "16Gi"}
        )
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class EnvVar(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str


class RaySpec(_Model):
    image: str = DEFAULT_RAY_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    head: HeadSpec = Field(default_factory=HeadSpec)
    env: list[EnvVar] = Field(default_factory=list)
    service_account_name: str | None = Field(default=None, pattern=DNS_LABEL)


class ServingSpec(_Model):
    graceful_shutdown_seconds: int = Field(default=600, ge=0, le=86400)
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = Field(default=None, ge=-1)


class K2ThinkDeploymentSpec(_Model):
    model: ModelSpec = Field(default_factory=ModelSpec)
    pools: list[PoolSpec] = Field(min_length=1, max_length=8)
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    replicas: int | None = Field(default=None, ge=0, le=10000)
    autoscaling: AutoscalingSpec | None = None
    engine: EngineSpec = Field(default_factory=EngineSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    upgrade_strategy: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"] = (
        "NewCluster"
    )
    suspend: bool = False

    @model_validator(mode="after")
    def _cross_field(self) -> K2ThinkDeploymentSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(
                "replicas and autoscaling are mutually exclusive: set replicas for a fixed "
                "count, or autoscaling bounds"
            )
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        kinds = {ACCELERATORS[p.gpu_type].is_cpu for p in self.pools}
        if len(kinds) > 1:
            raise ValueError("pools mix the CPU profile with GPU types; use one or the other")
        return self

    @property
    def fixed_replicas(self) -> int:
        """Replica count when autoscaling is off (1 when neither is set)."""
        return 1 if self.replicas is None else self.replicas


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "literal[", "constrained-", "int", "str")):
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
