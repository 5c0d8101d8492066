"""Size and place Ray Serve LLM's OpenAI ingress deployment (pure, table-tested).

Every streamed token passes the ingress (``ray.serve.llm:build_openai_app``'s ``OpenAiIngress``).
Ray Serve LLM 2.60 gives it ``max_ongoing_requests`` and ``target_ongoing_requests`` of 1e9
(``ray/llm/_internal/serve/core/ingress/ingress.py``, ``DEFAULT_INGRESS_OPTIONS``): one replica
that never scales, however large the fleet behind it. ``build_openai_app`` deep-merges the
``ingress_deployment_config`` we render over those defaults
(``ray/llm/_internal/common/dict_utils.py``, ``maybe_apply_llm_deployment_config_defaults``), so
we say min/max replicas, the target and the per-replica cap explicitly.

Sizing, from the measured cost of one ingress replica (docs/benchmarks.md, "Ingress capacity";
``e2e/bench/ingress_capacity.py``):

    cpu per stream   = a * r / T + b * r          (a: CPU s per request, b: CPU s per token,
                                                   r: tokens/s of one stream, T: tokens a stream)
    target           = floor(UTILISATION / cpu per stream)   streams one 1-CPU replica carries
    fleet streams    = max model replicas * their max_ongoing_requests
    max replicas     = ceil(fleet streams / target)

Placement: on the Ray head (a slice of the ``k2think_head`` custom resource, as before) while
``max replicas`` fits the head's CPUs beside the GCS, dashboard and Serve controller; otherwise
on a CPU worker group of the RayCluster (``INGRESS_GROUP``) that the Ray autoscaler grows and
shrinks with the ingress replicas, so the streaming path scales with the fleet instead of
saturating one process on one pod.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from k2think_operator.api.k8s_rules import quantity
from k2think_operator.api.spec import INGRESS_GROUP, KUEUE_MAX_WORKER_GROUPS, K2ThinkDeploymentSpec

#: Ray Serve LLM 2.60's ``DEFAULT_INGRESS_OPTIONS`` (core/ingress/ingress.py), which our
#: options are merged over; the data-plane suite checks this copy against the real one (that
#: module needs vLLM to import).
SERVE_LLM_DEFAULT_INGRESS_OPTIONS: dict[str, object] = {
    "max_ongoing_requests": int(1e9),
    "autoscaling_config": {"target_ongoing_requests": int(1e9)},
}
#: CPU seconds one ingress replica spends per request (fixed part) and per streamed token,
#: measured: docs/benchmarks.md, "Ingress capacity" (``make bench-ingress``,
#: e2e/bench/ingress_capacity.py, 2026-12-01): Ray's per-actor CPU of the
#: ``ServeReplica:llm:OpenAiIngress`` actor over 40 one-token and 40 256-token streams at 8
#: concurrent, solved for both; measured 0.02097 s per request and 0.2824 ms per token at ~46
#: tokens/s per stream (one SSE chunk per token), i.e. ~48 requests/s or ~3 500 tokens/s per CPU.
#: Rounded here; spec.serving.ingress overrides the target per deployment.
INGRESS_CPU_SECONDS_PER_REQUEST = 0.021
INGRESS_CPU_SECONDS_PER_TOKEN = 0.00028
#: Tokens/s one reasoning stream receives from a GPU replica under batching (vLLM decode of a
#: 32B-70B model on H100/H200-class GPUs at full batch), and its typical length in tokens.
STREAM_TOKENS_PER_SECOND = 40
STREAM_TOKENS = 2000
#: Share of the replica's CPU the target aims at: headroom for bursts and the upscale delay.
UTILISATION = 0.7
#: CPUs of the head kept for the GCS, dashboard, Serve controller and proxy.
HEAD_RESERVED_CPUS = 1
#: Ray custom resources the ingress replicas ask for: only the head, or only the ingress group,
#: advertises them, so an ingress replica never lands on (or keeps alive) a GPU worker.
HEAD_RESOURCE = "k2think_head"
HEAD_RESOURCE_CAPACITY = 1000
INGRESS_RESOURCE = "k2think_ingress"
#: Each ingress replica asks for one CPU (Ray Serve's default, said explicitly).
CPUS_PER_INGRESS_REPLICA = 1


@dataclass(frozen=True)
class IngressPlan:
    """How the OpenAI ingress deployment is sized and where it runs."""

    placement: str  # "head" | "cpuGroup"
    min_replicas: int
    initial_replicas: int
    max_replicas: int
    target_ongoing_requests: int
    max_ongoing_requests: int
    fleet_streams: int
    head_capacity: int
    replicas_per_pod: int
    max_pods: int
    explanation: str
    #: Something the user should act on (a PlanWarning), e.g. the Kueue fallback to the head.
    warning: str | None = None

    def to_status(self) -> dict[str, object]:
        return {
            "placement": self.placement,
            "minReplicas": self.min_replicas,
            "maxReplicas": self.max_replicas,
            "targetOngoingRequests": self.target_ongoing_requests,
            "maxOngoingRequests": self.max_ongoing_requests,
            "fleetStreams": self.fleet_streams,
            "explanation": self.explanation,
        }


def default_target() -> int:
    """Streams one ingress replica (one CPU) carries at ``UTILISATION``."""
    rate = STREAM_TOKENS_PER_SECOND
    per_stream = INGRESS_CPU_SECONDS_PER_REQUEST * rate / STREAM_TOKENS
    per_stream += INGRESS_CPU_SECONDS_PER_TOKEN * rate
    return max(1, math.floor(UTILISATION / per_stream))


def cpu_count(text: str | None) -> int:
    """Whole CPUs of a Kubernetes quantity; 0 when unset. Every suffix the schema admits is
    read as the API server reads it ("3500m" is 3, "1k" 1000, "0Ki" 0): a property test found
    "0Ki" crashing the planner when only "m" was handled."""
    if not text:
        return 0
    value = quantity(text)
    if value is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return int(value)


def head_cpus(spec: K2ThinkDeploymentSpec) -> int:
    """CPUs Ray sees on the head: KubeRay uses the CPU limit, else the request."""
    resources = spec.ray.head.resources
    return cpu_count(resources.limits.get("cpu") or resources.requests.get("cpu"))


def kueue_has_room_for_group(spec: K2ThinkDeploymentSpec) -> bool:
    """Whether one more worker group still fits Kueue's workload.

    Kueue admits a RayService as one workload of at most 8 PodSets: the head plus at most 7
    worker groups (sigs.k8s.io/kueue v0.17.0 pkg/controller/jobs/raycluster/common.go,
    ``ValidateCreate``: ``len(WorkerGroupSpecs) > 7`` is refused by its webhook; PodSets are
    ``MaxItems=8`` in apis/kueue/v1beta2/workload_types.go). One worker group per pool, so the
    ingress group fits only beside at most 6 pools. Not queued: no limit.
    """
    return not spec.queued or len(spec.pools) + 1 <= KUEUE_MAX_WORKER_GROUPS


def plan_ingress(
    spec: K2ThinkDeploymentSpec,
    *,
    model_min_replicas: int,
    model_max_replicas: int,
    model_max_ongoing: int,
) -> IngressPlan:
    """Bounds, target and placement of the ingress for a fleet of the given size."""
    wanted = spec.serving.ingress
    target = wanted.target_ongoing_requests or default_target()
    fleet = model_max_replicas * model_max_ongoing
    needed = max(1, math.ceil(fleet / target))
    maximum = wanted.max_replicas or needed
    # Serve LLM's own rule: the ingress may go to zero only when every model does.
    floor = 0 if model_min_replicas == 0 else 1
    minimum = wanted.min_replicas if wanted.min_replicas is not None else min(floor, maximum)
    minimum = min(minimum, maximum)
    head_capacity = max(1, head_cpus(spec) - HEAD_RESERVED_CPUS)
    warning: str | None = None
    if wanted.placement == "auto":
        placement = "head" if maximum <= head_capacity else "cpuGroup"
        why = (
            f"fits the head's {head_capacity} spare CPU(s)"
            if placement == "head"
            else f"more than the head's {head_capacity} spare CPU(s): CPU worker group "
            f"{INGRESS_GROUP} scales with it"
        )
        if placement == "cpuGroup" and not kueue_has_room_for_group(spec):
            # spec.py refuses an explicit cpuGroup here; auto falls back to the head, whose CPUs
            # bound the replicas (more would stay pending), and says so.
            placement = "head"
            warning = (
                f"the ingress needs {maximum} replicas, more than the head's {head_capacity} "
                f"spare CPU(s), but under Kueue the {len(spec.pools)} pools leave no room for "
                f"the {INGRESS_GROUP} worker group (Kueue admits at most "
                f"{KUEUE_MAX_WORKER_GROUPS} worker groups): it stays on the head with at most "
                f"{head_capacity} replicas; use at most {KUEUE_MAX_WORKER_GROUPS - 1} pools or "
                "a larger head (spec.ray.head.resources) to carry the fleet's streams"
            )
            maximum = min(maximum, head_capacity)
            minimum = min(minimum, maximum)
            why = (
                f"Kueue admits at most {KUEUE_MAX_WORKER_GROUPS} worker groups and the "
                f"{len(spec.pools)} pools leave no room for {INGRESS_GROUP}; capped at the "
                f"head's {head_capacity} spare CPU(s)"
            )
    else:
        placement = wanted.placement
        why = "as requested (spec.serving.ingress.placement)"
    per_pod = max(1, cpu_count(wanted.cpu_group.cpu) // CPUS_PER_INGRESS_REPLICA)
    sizing = (
        "as requested"
        if wanted.max_replicas
        else f"{model_max_replicas} model replicas x {model_max_ongoing} max ongoing = "
        f"{fleet} streams / {target} per ingress replica"
    )
    explanation = (
        f"ingress {minimum}..{maximum} replicas ({sizing}), scale at {target} ongoing "
        f"requests per replica; on the {'Ray head' if placement == 'head' else 'CPU group'} "
        f"({why})"
    )
    return IngressPlan(
        placement=placement,
        min_replicas=minimum,
        initial_replicas=max(minimum, 1),
        max_replicas=maximum,
        target_ongoing_requests=target,
        max_ongoing_requests=2 * target,
        fleet_streams=fleet,
        head_capacity=head_capacity,
        replicas_per_pod=per_pod,
        max_pods=math.ceil(maximum / per_pod),
        explanation=explanation,
        warning=warning,
    )


def ingress_deployment_config(plan: IngressPlan) -> dict[str, object]:
    """``ingress_deployment_config`` of LLMServingArgs (Serve deployment options)."""
    resource = HEAD_RESOURCE if plan.placement == "head" else INGRESS_RESOURCE
    return {
        "autoscaling_config": {
            "min_replicas": plan.min_replicas,
            "initial_replicas": plan.initial_replicas,
            "max_replicas": plan.max_replicas,
            "target_ongoing_requests": plan.target_ongoing_requests,
        },
        # Beyond this a replica takes no more streams; the rest wait in the proxy's queue where
        # autoscaling sees them (Serve LLM's default of 1e9 would pile them onto one process).
        "max_ongoing_requests": plan.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": CPUS_PER_INGRESS_REPLICA,
            "resources": {resource: 1},
        },
    }
