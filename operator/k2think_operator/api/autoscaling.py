"""``spec.autoscaling.policy``: which signal Serve scales the model replicas on.

Two modes (docs/autoscaling.md, "Scaling on what saturates a replica"):

- ``ongoingRequests`` (default): Serve's own policy, ongoing requests per replica against
  ``targetOngoingRequests``. Nothing extra is rendered.
- ``latencyTarget``: Serve calls the operator's policy (``ray_modules/k2think_autoscaling.py``,
  ``autoscaling_config.policy``), fed by what the replicas report of their vLLM engine (KV-cache
  usage, requests waiting in vLLM's queue, recent time to first token) and by the requests
  queued in Serve's router. The replicas run the operator's subclass of Serve LLM's server
  (``ray_modules/k2think_llm_server.py``) to report them.

A module of its own (the rest of the spec is in ``spec.py``) so that the policy's knobs stay in
one place; it shares the spec's base model through ``api/base.py`` (``spec.py`` imports this
module, so it cannot import ``spec.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from k2think_operator.api.base import _Model

PolicyMode = Literal["ongoingRequests", "latencyTarget"]

#: Defaults of the latencyTarget mode, shared with the renderer and the simulator.
DEFAULT_TTFT_TARGET_SECONDS = 2.0
DEFAULT_KV_CACHE_CEILING = 0.7
DEFAULT_SCALE_IN_HEADROOM = 0.2


class AutoscalingPolicySpec(_Model):
    """Which signal Serve scales the model replicas on (docs/autoscaling.md)."""

    mode: PolicyMode = Field(
        default="ongoingRequests",
        description="ongoingRequests (default): Serve's own policy, ongoing requests per "
        "replica against targetOngoingRequests. latencyTarget: the operator's Serve policy "
        "keeps each replica's vLLM KV cache under kvCacheCeiling, adds capacity for requests "
        "waiting in vLLM's queue or Serve's router, and adds a replica while the time to first "
        "token observed by the replicas exceeds ttftTargetSeconds. The delays, bounds and "
        "stream draining of scale-in are the same in both modes.",
    )
    ttft_target_seconds: float = Field(
        default=DEFAULT_TTFT_TARGET_SECONDS,
        ge=0.05,
        le=600,
        description="latencyTarget: the time to first token the fleet is sized for, in seconds. "
        "While the replicas report a slower first token (the slowest replica's worst in the "
        "last 30 s), the policy asks for one more replica.",
    )
    kv_cache_ceiling: float = Field(
        default=DEFAULT_KV_CACHE_CEILING,
        ge=0.1,
        le=1.0,
        description="latencyTarget: the share of a replica's vLLM KV cache the fleet may fill "
        "on average before a replica is added. Reasoning streams grow their KV cache as they "
        "decode; the room above the ceiling admits new requests at once instead of queueing "
        "them.",
    )
    scale_in_headroom: float = Field(
        default=DEFAULT_SCALE_IN_HEADROOM,
        ge=0.0,
        le=0.9,
        description="latencyTarget: a replica is removed only when the remaining ones would "
        "stay this far (as a share of kvCacheCeiling) under the ceiling, so the fleet does not "
        "flap between two sizes.",
    )
