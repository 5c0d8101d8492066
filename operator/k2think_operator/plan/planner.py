"""Lay a model onto node pools: tensor/pipeline degree, worker pod shape and KV-cache budget.

Everything here is pure arithmetic on the spec and the catalog, so the same answer comes out of
``k2think-operator plan`` on a laptop and out of the running operator.

The memory model (per replica, per GPU):

    weights      = params * bytes(dtype) / (TP * PP)
    usable       = memory * gpu_memory_utilization - weights - runtime_reserve
    kv/token     = 2 * layers * kv_heads * head_dim * bytes(kv dtype)   (whole model)
    kv tokens    = usable * TP * PP / kv/token
    concurrency  = kv tokens // max_model_len                           (full-context sequences)

How a layout is chosen: a candidate must fit at least ``minConcurrentSequences`` full-context
sequences, obey vLLM's divisibility rules and keep each tensor-parallel group inside one node.
Among those, the fewest pipeline stages win (pipeline parallelism costs a bubble and cross-node
traffic, so it is only used when no single-node layout fits). Then TP grows step by step while
each step buys at least ``tpGainThreshold`` (25%) more full-context sequences per GPU: doubling TP
always amortises the weights over more GPUs, but it also doubles all-reduce traffic and halves
the number of independently scalable replicas, so small gains are not worth it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from k2think_operator.api.catalog import (
    ACCELERATORS,
    DTYPE_BYTES,
    GIB,
    KV_CACHE_DTYPE_BYTES,
    Accelerator,
    Architecture,
)
from k2think_operator.api.spec import K2ThinkDeploymentSpec, PoolSpec, SpecError
from k2think_operator.plan.ingress_sizing import IngressPlan, plan_ingress
from k2think_operator.plan.routing import RoutingPlan, plan_routing
from k2think_operator.plan.speculative import Draft, check_draft, check_draft_parallel, draft_of

#: Automatic pipeline parallelism stops here: beyond 16 stages the pipeline bubble and the number
#: of nodes one replica depends on make the layout impractical; set it explicitly to go further.
MAX_AUTO_PIPELINE = 16


class PlanError(SpecError):
    """The spec is well-formed but cannot be laid onto the pools it names."""


@dataclass(frozen=True)
class Layout:
    """One (TP, PP) choice evaluated on one pool."""

    tensor: int
    pipeline: int
    weights_gib_per_gpu: float
    kv_gib_per_gpu: float
    kv_tokens_per_replica: int
    concurrent_sequences: int
    #: A speculative-decoding draft's weights on each GPU (speculative.py); 0 without one.
    draft_weights_gib_per_gpu: float = 0.0

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline

    @property
    def sequences_per_gpu(self) -> float:
        return self.concurrent_sequences / self.gpus


@dataclass(frozen=True)
class PoolPlan:
    """How replicas land on one pool."""

    name: str
    gpu_type: str
    gpus_per_node: int
    resource_name: str | None
    ray_accelerator_type: str | None
    gpus_per_worker_pod: int
    worker_pods_per_replica: int
    max_replicas: int | None
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_tokens_per_replica: int
    concurrent_sequences_per_replica: int
    memory_utilization: float
    min_replicas: int = 0
    fixed_replicas: int | None = None
    draft_weights_gib_per_gpu: float = 0.0
    #: spec.pools[].warmReplicas: replicas' worth of worker pods kept beyond the floor's.
    warm_replicas: int = 0


@dataclass(frozen=True)
class Plan:
    """The decision the operator acts on and reports in ``status.plan``."""

    model: str
    dtype: str
    kv_cache_dtype: str
    max_model_len: int
    tensor_parallel: int
    pipeline_parallel: int
    gpus_per_replica: int
    placement_strategy: str
    pools: tuple[PoolPlan, ...]
    autoscaling: bool
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    target_ongoing_requests: int
    max_ongoing_requests: int
    explanation: str
    cpu_profile: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: spec.ray.gcsFaultTolerance is set (fault_tolerance.py reports when it is not).
    gcs_fault_tolerance: bool = False
    #: Size and place of the OpenAI ingress (ingress.py); None only in hand-built test plans.
    ingress: IngressPlan | None = None
    #: The model deployment's request router (routing.py); None only in hand-built test plans.
    routing: RoutingPlan | None = None

    @property
    def primary(self) -> PoolPlan:
        return self.pools[0]

    @property
    def max_gpus(self) -> int:
        return self.max_replicas * self.gpus_per_replica

    def to_status(self) -> dict[str, object]:
        """The camelCase summary written to ``status.plan`` and printed by ``plan -o json``."""
        primary = self.primary
        return {
            "pool": primary.name,
            "gpuType": primary.gpu_type,
            "tensorParallel": self.tensor_parallel,
            "pipelineParallel": self.pipeline_parallel,
            "gpusPerReplica": self.gpus_per_replica,
            "gpusPerWorkerPod": primary.gpus_per_worker_pod,
            "workerPodsPerReplica": primary.worker_pods_per_replica,
            "weightsGiBPerGpu": round(primary.weights_gib_per_gpu, 2),
            "kvCacheGiBPerGpu": round(primary.kv_cache_gib_per_gpu, 2),
            "kvTokensPerReplica": primary.kv_tokens_per_replica,
            "concurrentSequencesPerReplica": primary.concurrent_sequences_per_replica,
            "maxModelLen": self.max_model_len,
            "minReplicas": self.min_replicas,
            "maxReplicas": self.max_replicas,
            "targetOngoingRequests": self.target_ongoing_requests,
            "maxGpus": self.max_gpus,
            "pools": [
                {
                    "name": p.name,
                    "gpuType": p.gpu_type,
                    "gpusPerWorkerPod": p.gpus_per_worker_pod,
                    "workerPodsPerReplica": p.worker_pods_per_replica,
                    "kvTokensPerReplica": p.kv_tokens_per_replica,
                    "concurrentSequencesPerReplica": p.concurrent_sequences_per_replica,
                    "maxReplicas": p.max_replicas,
                    **({"warmReplicas": p.warm_replicas} if p.warm_replicas else {}),
                }
                for p in self.pools
            ],
            "explanation": self.explanation,
            **({"ingress": self.ingress.to_status()} if self.ingress else {}),
        }


def model_dtype(spec: K2ThinkDeploymentSpec, accelerator: Accelerator) -> str:
    """The dtype vLLM will load weights in: the spec's, else the profile's, else the model's."""
    if spec.model.dtype != "auto":
        return spec.model.dtype
    if accelerator.default_dtype is not None:
        return accelerator.default_dtype
    preset = spec.model.preset_info
    return preset.default_dtype if preset else "bfloat16"


def kv_bytes_per_token(arch: Architecture, kv_dtype_bytes: float) -> float:
    """Whole-model KV bytes per token: keys and values for every layer and KV head."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * kv_dtype_bytes


def weight_bytes(arch: Architecture, dtype_bytes: float) -> float:
    return arch.parameters * dtype_bytes


def check_divisibility(arch: Architecture, tensor: int, pipeline: int, model: str) -> str | None:
    """vLLM's own rules for a TP/PP pair, as a message naming the numbers, or None."""
    if arch.attention_heads % tensor:
        return (
            f"tensor={tensor} does not divide the {arch.attention_heads} attention heads of {model}"
        )
    if arch.kv_heads % tensor and tensor % arch.kv_heads:
        return (
            f"tensor={tensor} and the {arch.kv_heads} KV heads of {model} do not divide one "
            "another (vLLM needs kv_heads % tensor == 0 or tensor % kv_heads == 0)"
        )
    if pipeline > arch.layers:
        return f"pipeline={pipeline} exceeds the {arch.layers} layers of {model}"
    return None


@dataclass(frozen=True)
class MemoryBudget:
    """What one replica's memory is made of on one pool: the model, the GPU and the engine's
    settings. Everything but the layout, which ``evaluate_layout`` varies."""

    arch: Architecture
    accelerator: Accelerator
    memory_gib: float
    utilization: float
    reserve_gib: float
    dtype_bytes: float
    kv_dtype_bytes: float
    max_model_len: int
    #: The speculative-decoding draft beside the model (speculative.py), or None.
    draft: Draft | None = None


def evaluate_layout(budget: MemoryBudget, tensor: int, pipeline: int) -> Layout:
    """Memory budget of one replica laid out as tensor x pipeline GPUs of one type."""
    gpus = tensor * pipeline
    weights_per_gpu = weight_bytes(budget.arch, budget.dtype_bytes) / gpus
    memory = budget.memory_gib * GIB * budget.utilization
    # KV bytes one cached token costs on one GPU: the model's share, plus the draft's.
    per_token_per_gpu = kv_bytes_per_token(budget.arch, budget.kv_dtype_bytes) / gpus
    draft_per_gpu = 0.0
    if budget.draft is not None:
        draft_tp = budget.draft.tensor_parallel or tensor
        draft_per_gpu = weight_bytes(budget.draft.architecture, budget.dtype_bytes) / draft_tp
        per_token_per_gpu += (
            kv_bytes_per_token(budget.draft.architecture, budget.kv_dtype_bytes) / draft_tp
        )
    if budget.accelerator.is_cpu:
        # vLLM's CPU backend sizes the KV cache as a share of host memory, beside the weights.
        kv_per_gpu = memory
    else:
        kv_per_gpu = memory - weights_per_gpu - draft_per_gpu - budget.reserve_gib * GIB
    kv_tokens = max(0, math.floor(kv_per_gpu / per_token_per_gpu))
    return Layout(
        tensor=tensor,
        pipeline=pipeline,
        weights_gib_per_gpu=weights_per_gpu / GIB,
        kv_gib_per_gpu=max(0.0, kv_per_gpu / GIB),
        kv_tokens_per_replica=kv_tokens,
        concurrent_sequences=kv_tokens // budget.max_model_len,
        draft_weights_gib_per_gpu=draft_per_gpu / GIB,
    )


def _degrees(limit: int) -> list[int]:
    """Powers of two up to ``limit`` (plus the limit): the degrees vLLM deployments use."""
    values = {1 << i for i in range(0, 7) if (1 << i) <= limit}
    values.add(limit)
    return sorted(values)


@dataclass(frozen=True)
class Rejection:
    """Why one candidate layout was ruled out: ``divisibility``, ``node`` or ``memory``."""

    kind: str
    message: str


@dataclass(frozen=True)
class Precision:
    """The weights' dtype and the bytes of a weight and of a KV-cache element."""

    dtype: str
    dtype_bytes: float
    kv_dtype_bytes: float


def plan_precision(spec: K2ThinkDeploymentSpec, first: Accelerator) -> Precision:
    dtype = model_dtype(spec, first)
    dtype_bytes = DTYPE_BYTES[dtype]
    kv_override = KV_CACHE_DTYPE_BYTES[spec.engine.kv_cache_dtype]
    return Precision(dtype, dtype_bytes, dtype_bytes if kv_override is None else kv_override)


@dataclass(frozen=True)
class _PoolContext:
    pool: PoolSpec
    budget: MemoryBudget

    @property
    def accelerator(self) -> Accelerator:
        return self.budget.accelerator


def _pool_context(
    spec: K2ThinkDeploymentSpec, pool: PoolSpec, precision: Precision
) -> _PoolContext:
    accelerator = ACCELERATORS[pool.gpu_type]
    utilization = spec.engine.gpu_memory_utilization or accelerator.default_memory_utilization
    reserve = spec.engine.runtime_reserve_gi_b
    return _PoolContext(
        pool=pool,
        budget=MemoryBudget(
            arch=spec.model.resolved_architecture(),
            accelerator=accelerator,
            memory_gib=pool.gpu_memory_gi_b or accelerator.memory_gib,
            utilization=utilization,
            reserve_gib=accelerator.runtime_reserve_gib if reserve is None else reserve,
            dtype_bytes=precision.dtype_bytes,
            kv_dtype_bytes=precision.kv_dtype_bytes,
            max_model_len=spec.model.max_model_len,
            draft=draft_of(spec),
        ),
    )


def _candidates(spec: K2ThinkDeploymentSpec, gpus_per_node: int) -> list[tuple[int, int]]:
    """(TP, PP) pairs to consider: the user's fixed values, or every sensible degree."""
    par = spec.parallelism
    tensors = [par.tensor] if isinstance(par.tensor, int) else _degrees(gpus_per_node)
    pipelines = [par.pipeline] if isinstance(par.pipeline, int) else _degrees(MAX_AUTO_PIPELINE)
    return [(t, p) for p in pipelines for t in tensors]


def _choose(layouts: list[Layout], threshold: float) -> Layout:
    """The fewest pipeline stages that fit, then grow TP while each step earns its keep.

    Layouts are walked in ascending TP; a step to the next TP is taken only when it raises the
    full-context sequences per GPU by ``threshold``; the walk stops at the first step that does
    not, so the choice never jumps over a layout that was not worth it.
    """
    fewest_stages = min(lay.pipeline for lay in layouts)
    ladder = sorted(
        (lay for lay in layouts if lay.pipeline == fewest_stages), key=lambda x: x.tensor
    )
    best = ladder[0]
    for layout in ladder[1:]:
        if layout.sequences_per_gpu < best.sequences_per_gpu * (1 + threshold):
            break
        best = layout
    return best


def _fit_on_pool(
    spec: K2ThinkDeploymentSpec, ctx: _PoolContext, model_name: str
) -> tuple[list[Layout], list[Rejection]]:
    """Every feasible layout on one pool, plus why each rejected candidate failed."""
    arch = ctx.budget.arch
    feasible: list[Layout] = []
    reasons: list[Rejection] = []
    need = spec.parallelism.min_concurrent_sequences
    for tensor, pipeline in _candidates(spec, ctx.pool.gpus_per_node):
        problem = check_divisibility(arch, tensor, pipeline, model_name)
        if problem:
            reasons.append(Rejection("divisibility", problem))
            continue
        if tensor > ctx.pool.gpus_per_node:
            reasons.append(
                Rejection(
                    "node",
                    f"tensor={tensor} needs more GPUs than a node of pool {ctx.pool.name} has "
                    f"({ctx.pool.gpus_per_node}); tensor-parallel groups stay inside one node, "
                    "use pipeline parallelism across nodes",
                )
            )
            continue
        layout = evaluate_layout(ctx.budget, tensor, pipeline)
        if layout.concurrent_sequences < need:
            reasons.append(
                Rejection(
                    "memory",
                    f"tensor={tensor} pipeline={pipeline} leaves {layout.kv_gib_per_gpu:.1f} "
                    f"GiB/GPU for KV cache after {layout.weights_gib_per_gpu:.1f} GiB of weights"
                    f"{_draft_note(layout)}: "
                    f"{layout.kv_tokens_per_replica} tokens, {layout.concurrent_sequences} "
                    f"sequence(s) of {spec.model.max_model_len} tokens, below "
                    f"minConcurrentSequences={need}",
                )
            )
            continue
        feasible.append(layout)
    return feasible, reasons


def _pool_replica_capacity(
    pool: PoolSpec, gpus_per_worker_pod: int, pods_per_replica: int
) -> int | None:
    if pool.max_nodes is None:
        return None
    pods = pool.max_nodes * (pool.gpus_per_node // gpus_per_worker_pod)
    return pods // pods_per_replica


def _worker_shape(tensor: int, pipeline: int, gpus_per_node: int) -> tuple[int, int]:
    """GPUs per worker pod and pods per replica.

    A replica that fits a node gets one pod holding all its GPUs, so its placement group packs
    strictly onto one node (NVLink). A pipeline-parallel replica that does not fit gets one pod
    per pipeline stage, each holding one whole tensor-parallel group.
    """
    gpus = tensor * pipeline
    if gpus <= gpus_per_node:
        return gpus, 1
    return tensor, pipeline


def _default_target(concurrency: int, max_num_seqs: int) -> int:
    """Ongoing requests per replica before Serve adds one.

    Reasoning requests rarely all run to the full context, so a replica can hold about twice its
    full-context concurrency in flight; never more than vLLM's batch limit, never below 1.
    Serve LLM's own default (1e9) would mean "never scale".
    """
    return max(1, min(max_num_seqs, 2 * concurrency))


@dataclass(frozen=True)
class ReplicaBounds:
    """How many replicas, and when Serve adds one."""

    autoscaling: bool
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    target_ongoing_requests: int
    warnings: tuple[str, ...] = ()


def plan_deployment(spec: K2ThinkDeploymentSpec, name: str = "k2think") -> Plan:
    """Choose the layout and replica bounds for a spec, or raise PlanError naming the numbers."""
    model_name = spec.model.preset if spec.model.preset != "custom" else f"model {name}"
    first = ACCELERATORS[spec.pools[0].gpu_type]
    precision = plan_precision(spec, first)
    check_context_length(spec, model_name)
    _as_plan_error(check_draft, spec, spec.model.resolved_architecture())
    contexts = [_pool_context(spec, pool, precision) for pool in spec.pools]
    chosen, per_pool = plan_layout(spec, contexts, model_name)
    _as_plan_error(check_draft_parallel, spec, chosen.tensor)
    pools = plan_pools(contexts, per_pool, chosen)
    bounds = plan_replicas(spec, pools, chosen)
    pools = _distribute(
        pools,
        bounds.min_replicas,
        bounds.initial_replicas if not bounds.autoscaling else bounds.min_replicas,
        bounds.autoscaling,
    )
    pools = plan_warm_replicas(spec, pools, bounds.autoscaling)
    target = bounds.target_ongoing_requests
    max_ongoing = spec.serving.max_ongoing_requests or max(spec.engine.max_num_seqs, 2 * target)
    ingress = plan_ingress(
        spec,
        model_min_replicas=bounds.min_replicas,
        model_max_replicas=bounds.max_replicas,
        model_max_ongoing=max_ongoing,
    )
    warnings = bounds.warnings + ((ingress.warning,) if ingress.warning else ())
    routing = plan_routing(spec, target, min(p.kv_tokens_per_replica for p in pools))
    return Plan(
        model=model_name,
        dtype=precision.dtype,
        kv_cache_dtype=spec.engine.kv_cache_dtype,
        max_model_len=spec.model.max_model_len,
        tensor_parallel=chosen.tensor,
        pipeline_parallel=chosen.pipeline,
        gpus_per_replica=chosen.gpus,
        placement_strategy="STRICT_PACK" if pools[0].worker_pods_per_replica == 1 else "PACK",
        pools=tuple(pools),
        autoscaling=bounds.autoscaling,
        min_replicas=bounds.min_replicas,
        max_replicas=bounds.max_replicas,
        initial_replicas=bounds.initial_replicas,
        target_ongoing_requests=target,
        max_ongoing_requests=max_ongoing,
        explanation=_explain(spec, chosen, pools[0], model_name, precision.dtype, target),
        cpu_profile=first.is_cpu,
        warnings=warnings,
        gcs_fault_tolerance=spec.ray.gcs_fault_tolerance is not None,
        ingress=ingress,
        routing=routing,
    )


def _as_plan_error(check: Callable[..., None], *args: object) -> None:
    """Run a check of speculative.py (which cannot import PlanError) as a plan check."""
    try:
        check(*args)
    except PlanError:
        raise
    except SpecError as error:
        raise PlanError(error.field, error.message) from None


def check_context_length(spec: K2ThinkDeploymentSpec, model_name: str) -> None:
    arch = spec.model.resolved_architecture()
    max_len = spec.model.max_model_len
    if max_len > arch.max_position_embeddings:
        raise PlanError(
            "spec.model.maxModelLen",
            f"{max_len} exceeds the {arch.max_position_embeddings} positions {model_name} supports",
        )


def plan_layout(
    spec: K2ThinkDeploymentSpec, contexts: Sequence[_PoolContext], model_name: str
) -> tuple[Layout, dict[str, dict[tuple[int, int], Layout]]]:
    """The one (TP, PP) layout every pool can run, chosen on the first pool; and each pool's
    feasible layouts."""
    per_pool: dict[str, dict[tuple[int, int], Layout]] = {}
    for index, ctx in enumerate(contexts):
        feasible, reasons = _fit_on_pool(spec, ctx, model_name)
        if not feasible:
            raise PlanError(
                _error_field(spec, index, reasons), _no_fit_message(ctx, model_name, reasons)
            )
        per_pool[ctx.pool.name] = {(lay.tensor, lay.pipeline): lay for lay in feasible}
    # One vLLM deployment needs one layout: keep the (TP, PP) pairs every pool can run.
    common = set.intersection(*(set(layouts) for layouts in per_pool.values()))
    if not common:
        names = ", ".join(ctx.pool.name for ctx in contexts)
        raise PlanError(
            "spec.pools",
            f"no tensor/pipeline layout of {model_name} is feasible on every pool ({names}); "
            "pools of one K2ThinkDeployment share one layout, split them into separate "
            "deployments or set spec.parallelism explicitly",
        )
    primary = per_pool[contexts[0].pool.name]
    chosen = _choose([primary[key] for key in sorted(common)], spec.parallelism.tp_gain_threshold)
    return chosen, per_pool


def plan_pools(
    contexts: Sequence[_PoolContext],
    per_pool: Mapping[str, Mapping[tuple[int, int], Layout]],
    chosen: Layout,
) -> list[PoolPlan]:
    """Each pool's worker shape and memory figures at the chosen layout."""
    pools: list[PoolPlan] = []
    for ctx in contexts:
        layout = per_pool[ctx.pool.name][(chosen.tensor, chosen.pipeline)]
        pod_gpus, pods_per_replica = _worker_shape(
            chosen.tensor, chosen.pipeline, ctx.pool.gpus_per_node
        )
        pools.append(
            PoolPlan(
                name=ctx.pool.name,
                gpu_type=ctx.pool.gpu_type,
                gpus_per_node=ctx.pool.gpus_per_node,
                resource_name=ctx.accelerator.resource_name,
                ray_accelerator_type=ctx.accelerator.ray_accelerator_type,
                gpus_per_worker_pod=pod_gpus,
                worker_pods_per_replica=pods_per_replica,
                max_replicas=_pool_replica_capacity(ctx.pool, pod_gpus, pods_per_replica),
                weights_gib_per_gpu=layout.weights_gib_per_gpu,
                kv_cache_gib_per_gpu=layout.kv_gib_per_gpu,
                kv_tokens_per_replica=layout.kv_tokens_per_replica,
                concurrent_sequences_per_replica=layout.concurrent_sequences,
                memory_utilization=ctx.budget.utilization,
                draft_weights_gib_per_gpu=layout.draft_weights_gib_per_gpu,
            )
        )
    return pools


def plan_replicas(
    spec: K2ThinkDeploymentSpec, pools: Sequence[PoolPlan], chosen: Layout
) -> ReplicaBounds:
    """The replica floor, ceiling and start, and the autoscaling target; capped by the pools'
    maxNodes (a floor they cannot hold is an error, a ceiling above them a warning)."""
    default_target = _default_target(
        pools[0].concurrent_sequences_per_replica, spec.engine.max_num_seqs
    )
    if spec.autoscaling is not None:
        scaling = spec.autoscaling
        min_r, max_r = scaling.min_replicas, scaling.max_replicas
        initial = (
            scaling.initial_replicas if scaling.initial_replicas is not None else max(min_r, 1)
        )
        target = scaling.target_ongoing_requests or default_target
    else:
        min_r = max_r = initial = spec.fixed_replicas
        target = default_target
    autoscaling = spec.autoscaling is not None
    capacity = [p.max_replicas for p in pools]
    warnings: list[str] = []
    if all(c is not None for c in capacity):
        total = sum(c for c in capacity if c is not None)
        if max(min_r, initial) > total:
            raise PlanError(
                "spec.autoscaling.minReplicas" if autoscaling else "spec.replicas",
                f"{max(min_r, initial)} replicas of {chosen.gpus} GPUs need "
                f"{max(min_r, initial) * chosen.gpus} GPUs but the pools' maxNodes allow "
                f"{total} replicas",
            )
        if max_r > total:
            warnings.append(
                f"maxReplicas={max_r} exceeds the {total} replicas the pools' maxNodes allow; "
                f"scaling stops at {total}"
            )
            max_r = total
            initial = min(initial, total)
    return ReplicaBounds(autoscaling, min_r, max_r, initial, target, tuple(warnings))


def _distribute(
    pools: list[PoolPlan], min_replicas: int, fixed: int, autoscaling: bool
) -> list[PoolPlan]:
    """Put the replica floor on the preferred (first) pools first, up to their capacity."""
    remaining = min_replicas if autoscaling else fixed
    result: list[PoolPlan] = []
    for index, pool in enumerate(pools):
        last = index == len(pools) - 1
        room = remaining if pool.max_replicas is None or last else min(remaining, pool.max_replicas)
        remaining -= room
        pinned = None if autoscaling else room
        result.append(replace(pool, min_replicas=room, fixed_replicas=pinned))
    return result


def plan_warm_replicas(
    spec: K2ThinkDeploymentSpec, pools: Sequence[PoolPlan], autoscaling: bool
) -> list[PoolPlan]:
    """Each pool's warm replicas (``spec.pools[].warmReplicas``), checked against what can use
    them: only a fleet that grows has a scale-up to speed up, and the pool's maxNodes must hold
    the floor placed there and the warm ones together."""
    result: list[PoolPlan] = []
    for index, (pool_spec, pool) in enumerate(zip(spec.pools, pools, strict=True)):
        warm = pool_spec.warm_replicas
        field = f"spec.pools[{index}].warmReplicas"
        if warm and not autoscaling:
            raise PlanError(
                field,
                "warm replicas keep worker pods started for scale-ups: they need spec.autoscaling "
                "(with spec.replicas the fleet never grows, and the pods would idle)",
            )
        if warm and pool.max_replicas is not None and pool.min_replicas + warm > pool.max_replicas:
            raise PlanError(
                field,
                f"pool {pool.name} holds {pool.max_replicas} replica(s) within its maxNodes: "
                f"{pool.min_replicas} of the floor and {warm} warm do not fit",
            )
        result.append(replace(pool, warm_replicas=warm))
    return result


def _error_field(spec: K2ThinkDeploymentSpec, index: int, reasons: list[Rejection]) -> str:
    """Point at the field the user most likely has to change."""
    shape = [r for r in reasons if r.kind in ("divisibility", "node")]
    if shape and len(shape) == len(reasons):
        about_pipeline = shape[0].message.startswith("pipeline=")
        if isinstance(spec.parallelism.pipeline, int) and about_pipeline:
            return "spec.parallelism.pipeline"
        if isinstance(spec.parallelism.tensor, int):
            return "spec.parallelism.tensor"
    return f"spec.pools[{index}]"


def _no_fit_message(ctx: _PoolContext, model_name: str, reasons: list[Rejection]) -> str:
    shape = [r for r in reasons if r.kind in ("divisibility", "node")]
    if shape and len(shape) == len(reasons):
        return shape[0].message
    memory = [r for r in reasons if r.kind == "memory"]
    # The last memory rejection is the largest layout tried: the closest miss.
    detail = memory[-1].message if memory else "no candidate layout"
    return (
        f"{model_name} does not fit pool {ctx.pool.name} ({ctx.pool.gpus_per_node} x "
        f"{ctx.pool.gpu_type}, {ctx.budget.memory_gib:g} GiB each at {ctx.budget.utilization:g} utilisation): "
        f"best candidate {detail}; lower spec.model.maxModelLen, use a larger GPU, or allow "
        "pipeline parallelism"
    )


def _draft_weights(layout: Layout) -> str:
    if not layout.draft_weights_gib_per_gpu:
        return ""
    return f"{layout.draft_weights_gib_per_gpu:.1f} GiB draft weights + "


def _draft_note(layout: Layout) -> str:
    if not layout.draft_weights_gib_per_gpu:
        return ""
    return f" and {layout.draft_weights_gib_per_gpu:.1f} GiB of draft weights"


def _speculation(spec: K2ThinkDeploymentSpec, chosen: Layout) -> str:
    """The plan's sentence on speculative decoding: what it costs per GPU, if anything."""
    speculative = spec.engine.speculative_decoding
    if speculative is None:
        return ""
    draft = draft_of(spec)
    if draft is None:
        return f"; speculative decoding {speculative.method} (no draft model, no GPU memory)"
    draft_tp = draft.tensor_parallel or chosen.tensor
    return (
        f"; speculative decoding {speculative.method} with draft {draft.name} (TP={draft_tp}): "
        f"{chosen.draft_weights_gib_per_gpu:.1f} GiB draft weights per GPU, and its KV cache "
        "is counted in every cached token above"
    )


def _explain(
    spec: K2ThinkDeploymentSpec,
    chosen: Layout,
    pool: PoolPlan,
    model_name: str,
    dtype: str,
    target: int,
) -> str:
    how = (
        "as requested"
        if isinstance(spec.parallelism.tensor, int)
        else "smallest layout whose per-GPU concurrency a larger one does not beat by "
        f"{spec.parallelism.tp_gain_threshold:.0%}"
    )
    return (
        f"{model_name} ({dtype}) on {pool.gpu_type} pool {pool.name}: TP={chosen.tensor} "
        f"PP={chosen.pipeline} ({how}); {chosen.weights_gib_per_gpu:.1f} GiB weights + "
        f"{_draft_weights(chosen)}"
        f"{chosen.kv_gib_per_gpu:.1f} GiB KV cache per GPU = {chosen.kv_tokens_per_replica} "
        f"tokens, {chosen.concurrent_sequences} concurrent {spec.model.max_model_len}-token "
        f"sequences per replica; scale at {target} ongoing requests per replica"
        f"{_speculation(spec, chosen)}"
    )
