"""How requests reach the model replicas: the request router of the Serve LLM deployment.

Ray Serve LLM (Ray 2.60) picks a replica per request with the deployment's request router,
chosen in ``deployment_config.request_router_config`` (``ray/serve/config.py``,
``RequestRouterConfig``). Serve's default, power of two choices, spreads the turns of one
conversation over the replicas, so each turn re-computes the whole history that another
replica's vLLM prefix cache already holds; ``PrefixCacheAffinityRouter``
(``ray.serve.llm.request_router``) sends a request to the replica that saw the longest prefix of
it, as long as the replicas' loads stay within a threshold. The knobs below are the keyword
arguments of its ``initialize_state`` (``ray/llm/_internal/serve/routing_policies/prefix_aware``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from k2think_operator.api.base import _Model
from k2think_operator.api.schema import cel

Router = Literal["prefixAware", "powerOfTwo"]

#: The import path Serve resolves (``RequestRouterConfig.request_router_class``). powerOfTwo is
#: rendered as no ``request_router_config`` at all: it is Serve's default, whose class lives in a
#: private module (``ray.serve._private.request_router``) a Ray upgrade may move.
PREFIX_AWARE_ROUTER_CLASS = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"


class RoutingSpec(_Model):
    """Which replica serves a request (Ray Serve's request router of the model deployment)."""

    router: Router | None = Field(
        default=None,
        description="prefixAware: a request goes to the replica that already served the longest "
        "prefix of it (a conversation's earlier turns, a shared system prompt), so vLLM's "
        "prefix cache answers it instead of recomputing the history; falls back to "
        "powerOfTwo when replicas' loads differ by more than imbalancedThreshold. powerOfTwo: "
        "Serve's default, the less loaded of two random replicas. Default: prefixAware for the "
        "K2 presets (long multi-turn reasoning), or when a prefix knob below is set; "
        "powerOfTwo for custom models and when engine.enablePrefixCaching is false.",
    )
    imbalanced_threshold: int | None = Field(
        default=None,
        ge=0,
        le=100000,
        description="prefixAware only: how many more ongoing requests the busiest candidate "
        "replica may have than the idlest before the router stops following prefixes and "
        "balances load. Default: half the autoscaling target (targetOngoingRequests) per "
        "replica, at least 1.",
    )
    match_rate_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="prefixAware only: the share of a prompt's characters a replica must have "
        "seen for the prefix to decide; below it the request goes to the replica holding the "
        "least cached text. Default 0.1 (Ray's).",
    )
    prefix_memory_chars: int | None = Field(
        default=None,
        ge=1000,
        le=10**12,
        description="prefixAware only: characters of prompts the router remembers per replica; "
        "beyond it the least recently used are forgotten (down to 90%). Default: about what "
        "the replica's KV cache holds (the plan's kvTokensPerReplica x 4 characters), so the "
        "router does not route to a prefix vLLM has already evicted, and its memory stays "
        "bounded.",
    )
    eviction_interval_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="prefixAware only: how often the router checks prefixMemoryChars. Default 10.",
    )

    @model_validator(mode="after")
    @cel(
        "!has(self.router) || self.router != 'powerOfTwo' || (!has(self.imbalancedThreshold) && "
        "!has(self.matchRateThreshold) && !has(self.prefixMemoryChars) && "
        "!has(self.evictionIntervalSeconds))",
        "imbalancedThreshold, matchRateThreshold, prefixMemoryChars and evictionIntervalSeconds "
        "tune router prefixAware, not powerOfTwo",
    )
    def _knobs_need_prefix_aware(self) -> RoutingSpec:
        if self.router == "powerOfTwo" and self.prefix_knobs_set():
            raise ValueError(
                "imbalancedThreshold, matchRateThreshold, prefixMemoryChars and "
                "evictionIntervalSeconds tune router prefixAware, not powerOfTwo"
            )
        return self

    def prefix_knobs_set(self) -> bool:
        """A prefix-aware knob is set: the user asks for prefix-aware routing."""
        return any(
            value is not None
            for value in (
                self.imbalanced_threshold,
                self.match_rate_threshold,
                self.prefix_memory_chars,
                self.eviction_interval_seconds,
            )
        )
