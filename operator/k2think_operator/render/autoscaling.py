"""What ``spec.autoscaling.policy`` renders into the Serve config (docs/autoscaling.md).

``ongoingRequests`` renders nothing here: Serve's default policy with the plan's
``target_ongoing_requests`` (serve_config.py). ``latencyTarget`` adds

- ``autoscaling_config.policy``: ``policy_function`` = the operator's policy class (Ray 2.60
  instantiates a class once with ``policy_kwargs``, ``ray/serve/_private/autoscaling_state.py``,
  ``_resolve_policy_callable``), and its knobs as ``policy_kwargs``;
- ``LLMConfig.server_cls``: Serve LLM's server subclass whose replicas report their vLLM
  engine's KV-cache usage, queue and first-token times (``record_autoscaling_stats``).

The three modules (the policy, the replica's server and its engine signals) are in ``ray_modules/`` and reach the Ray pods through the ConfigMap on PYTHONPATH
that already carries the API-key ingress (security.py).
"""

from __future__ import annotations

from typing import Any

from k2think_operator.api.spec import K2ThinkDeploymentSpec
from k2think_operator.plan.planner import Plan

POLICY_MODULE = "k2think_autoscaling"
POLICY_FUNCTION = f"{POLICY_MODULE}:LatencyTargetPolicy"
SERVER_MODULE = "k2think_llm_server"
SERVER_CLASS = f"{SERVER_MODULE}:LLMServer"
SIGNALS_MODULE = "k2think_engine_signals"
#: The modules the latencyTarget mode ships into the Ray pods.
MODULES = (POLICY_MODULE, SIGNALS_MODULE, SERVER_MODULE)


def latency_target(spec: K2ThinkDeploymentSpec) -> bool:
    return spec.autoscaling is not None and spec.autoscaling.policy.mode == "latencyTarget"


def ray_modules(spec: K2ThinkDeploymentSpec) -> tuple[str, ...]:
    return MODULES if latency_target(spec) else ()


def policy_config(spec: K2ThinkDeploymentSpec, plan: Plan) -> dict[str, Any] | None:
    """``autoscaling_config.policy`` for the latencyTarget mode (None: Serve's default)."""
    if spec.autoscaling is None or not latency_target(spec):
        return None
    policy = spec.autoscaling.policy
    return {
        "policy_function": POLICY_FUNCTION,
        "policy_kwargs": {
            "ttft_target_s": policy.ttft_target_seconds,
            "kv_cache_ceiling": policy.kv_cache_ceiling,
            "scale_in_headroom": policy.scale_in_headroom,
            "max_num_seqs": spec.engine.max_num_seqs,
            # The fallback while no replica reports yet: the same target as the default mode.
            "target_ongoing_requests": plan.target_ongoing_requests,
        },
    }


def server_cls(spec: K2ThinkDeploymentSpec) -> str | None:
    """``LLMConfig.server_cls`` for the latencyTarget mode (None: Serve LLM's own server)."""
    return SERVER_CLASS if latency_target(spec) else None
