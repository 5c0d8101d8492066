"""Which request router the model deployment gets, with every knob resolved (pure).

The defaults come from the plan because the right values depend on it: prefix-aware routing is
worth it when one replica's prefix cache can hold conversations (the K2 presets: long
multi-turn reasoning), it should give way to load balancing at a fraction of the replica's
autoscaling target, and the router should remember about as many prompt characters per replica
as that replica's KV cache can hold: more would route to prefixes vLLM has already evicted,
and an unbounded memory would grow the router's prefix tree without end (Ray's own default
is no eviction at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k2think_operator.api.serving import PREFIX_AWARE_ROUTER_CLASS
from k2think_operator.api.spec import K2ThinkDeploymentSpec

#: Characters per token of English text and code for the BPE tokenizers of the K2 presets
#: (Qwen2, Llama): the router counts characters, vLLM's cache holds tokens.
CHARS_PER_TOKEN = 4
#: Ray's own default of PrefixCacheAffinityRouter.initialize_state.
DEFAULT_MATCH_RATE_THRESHOLD = 0.1
DEFAULT_EVICTION_INTERVAL_SECONDS = 10
#: Eviction brings a replica's remembered text down to this share of prefixMemoryChars.
EVICTION_TARGET_SHARE = 0.9


@dataclass(frozen=True)
class RoutingPlan:
    """The router and, for prefixAware, its resolved keyword arguments."""

    router: str
    why: str
    imbalanced_threshold: int = 0
    match_rate_threshold: float = DEFAULT_MATCH_RATE_THRESHOLD
    prefix_memory_chars: int = 0
    eviction_interval_seconds: int = DEFAULT_EVICTION_INTERVAL_SECONDS

    @property
    def prefix_aware(self) -> bool:
        return self.router == "prefixAware"

    def request_router_config(self) -> dict[str, Any] | None:
        """``deployment_config.request_router_config`` as Ray Serve's ``RequestRouterConfig``
        takes it; None for Serve's default (power of two choices)."""
        if not self.prefix_aware:
            return None
        return {
            "request_router_class": PREFIX_AWARE_ROUTER_CLASS,
            "request_router_kwargs": {
                "imbalanced_threshold": self.imbalanced_threshold,
                "match_rate_threshold": self.match_rate_threshold,
                "do_eviction": True,
                "eviction_threshold_chars": self.prefix_memory_chars,
                "eviction_target_chars": int(self.prefix_memory_chars * EVICTION_TARGET_SHARE),
                "eviction_interval_secs": self.eviction_interval_seconds,
            },
        }

    def describe(self) -> str:
        if not self.prefix_aware:
            return f"routing powerOfTwo ({self.why})"
        return (
            f"routing prefixAware ({self.why}): follows prefixes while loads differ by at most "
            f"{self.imbalanced_threshold} requests, remembers {self.prefix_memory_chars} "
            "characters per replica"
        )


def choose_router(spec: K2ThinkDeploymentSpec) -> tuple[str, str]:
    """The router and why: the spec's choice, else what the knobs and the model call for."""
    routing = spec.serving.routing
    if routing.router is not None:
        return routing.router, "as requested"
    if routing.prefix_knobs_set():
        return "prefixAware", "prefix knobs set"
    if not spec.engine.enable_prefix_caching:
        return "powerOfTwo", "engine.enablePrefixCaching is false"
    if spec.model.preset_info is not None:
        return "prefixAware", f"default for {spec.model.preset}"
    return "powerOfTwo", "default for custom models"


def plan_routing(
    spec: K2ThinkDeploymentSpec, target_ongoing_requests: int, kv_tokens_per_replica: int
) -> RoutingPlan:
    """Resolve the router and its knobs; ``kv_tokens_per_replica`` is the smallest replica's."""
    router, why = choose_router(spec)
    if router != "prefixAware":
        return RoutingPlan(router=router, why=why)
    routing = spec.serving.routing
    return RoutingPlan(
        router=router,
        why=why,
        imbalanced_threshold=(
            routing.imbalanced_threshold
            if routing.imbalanced_threshold is not None
            else max(1, target_ongoing_requests // 2)
        ),
        match_rate_threshold=(
            routing.match_rate_threshold
            if routing.match_rate_threshold is not None
            else DEFAULT_MATCH_RATE_THRESHOLD
        ),
        prefix_memory_chars=(
            routing.prefix_memory_chars
            if routing.prefix_memory_chars is not None
            else max(1000, kv_tokens_per_replica * CHARS_PER_TOKEN)
        ),
        eviction_interval_seconds=(
            routing.eviction_interval_seconds
            if routing.eviction_interval_seconds is not None
            else DEFAULT_EVICTION_INTERVAL_SECONDS
        ),
    )
