"""The latency-target autoscaling policy for Ray Serve (runs in Serve's controller, not the operator).

Serve's default policy scales on ongoing requests per replica. For reasoning traffic that signal
lags what saturates a vLLM replica: a replica with a handful of ten-thousand-token streams has a
full KV cache long before its ongoing-request count reaches a target sized for short requests,
and new requests then wait in vLLM's queue (time to first token grows) while Serve sees nothing
wrong. This policy scales on the saturating resources instead:

- **KV cache**: the fleet's summed KV-cache usage over ``kv_cache_ceiling`` is the number of
  replicas that keeps every replica under the ceiling on average (the room above the ceiling is
  what admits a new request at once; running streams keep growing into it);
- **batch slots**: running plus waiting sequences over ``max_num_seqs`` (times the ceiling), for
  many short requests that fill vLLM's batch before its KV cache;
- **queue**: requests waiting in vLLM's queue and in Serve's router are demand not served yet;
  each is counted at the KV share an average running request holds;
- **time to first token**: while the slowest replica's worst first token of the last 30 s is
  over ``ttft_target_s``, at least one more replica (a feedback term for what the others miss).

Scale-in needs the remaining replicas to stay ``scale_in_headroom`` under the ceiling, nothing
queued and the first token within target. The delays, bounds, scaling factors and cold start are
Serve's own: Serve wraps this policy in ``_apply_autoscaling_config``
(``ray/serve/autoscaling_policy.py``) exactly as it wraps its default. Scale-in drains streams as
before (``graceful_shutdown_timeout_s``).

The inputs come from the replicas' ``record_autoscaling_stats`` (``k2think_llm_server.py``, the
operator's subclass of Serve LLM's server), which Serve aggregates over ``look_back_period_s``
into ``AutoscalingContext.aggregated_metrics``, and from the context's router queue. While no
replica reports (a replica starting, an older replica class) the policy falls back to Serve's
own ongoing-requests rule with ``target_ongoing_requests``.

Ray imports this module by path (``autoscaling_config.policy.policy_function``) when the app is
built and cloudpickles it by value to the controller, and instantiates the class once with
``policy_kwargs`` (``ray/serve/_private/autoscaling_state.py``, ``_resolve_policy_callable``). It
is self-contained (standard library only) for that reason, and the operator ships it into the
Ray pods in a ConfigMap, like the API-key ingress. The decision itself is ``decide``, a pure
function of ``Signals``, so unit tests and the simulator (``e2e/bench/autoscaling_sim.py``) call
the same code Serve calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Metric names the replicas report (k2think_llm_server.py) and this policy reads.
KV_CACHE_USAGE = "k2t_kv_cache_usage"
WAITING_REQUESTS = "k2t_waiting_requests"
RUNNING_REQUESTS = "k2t_running_requests"
TTFT_SECONDS = "k2t_ttft_seconds"
METRICS = (KV_CACHE_USAGE, WAITING_REQUESTS, RUNNING_REQUESTS, TTFT_SECONDS)


@dataclass(frozen=True)
class Signals:
    """What the policy decides from, one value per signal for the whole deployment."""

    #: Replicas running (Serve's ``current_num_replicas``).
    replicas: int
    #: Replicas whose engine reported (a starting replica has not yet).
    reporting: int
    #: KV-cache usage (0..1) summed over the reporting replicas.
    kv_usage_sum: float
    #: Sequences in vLLM's running batches, summed.
    running: float
    #: Requests in vLLM's waiting queues, summed.
    waiting: float
    #: Requests Serve's routers hold (no replica had room).
    router_queued: float
    #: The worst recent time to first token among the replicas, seconds (0: none measured).
    ttft_seconds: float
    #: Ongoing requests (Serve's ``total_num_requests``), for the fallback.
    ongoing: float


@dataclass(frozen=True)
class Targets:
    """The spec's knobs (``spec.autoscaling.policy``) and the plan's numbers."""

    ttft_target_s: float
    kv_cache_ceiling: float
    scale_in_headroom: float
    max_num_seqs: int
    target_ongoing_requests: float


@dataclass(frozen=True)
class Decision:
    replicas: float
    reason: str


def decide(signals: Signals, targets: Targets) -> Decision:
    """Desired replicas (a float: Serve rounds up after its scaling factors) and why."""
    n = signals.replicas
    if n <= 0:
        # Serve's cold-start path answers first when requests wait; otherwise stay at zero.
        return Decision(0.0, "no running replica")
    if signals.reporting == 0:
        desired = signals.ongoing / max(targets.target_ongoing_requests, 1e-9)
        return Decision(desired, "no engine signals yet: ongoing requests / target")

    # Replicas that do not report yet (just started) are assumed as full as the others.
    scale = n / signals.reporting
    kv = signals.kv_usage_sum * scale
    running = signals.running * scale
    queued = signals.waiting * scale + signals.router_queued
    ceiling = targets.kv_cache_ceiling
    # KV share one running request holds on average; with nothing running (all queued), a
    # queued request is assumed to need one batch slot's share of the ceiling.
    per_request = kv / running if running > 0 else ceiling / max(targets.max_num_seqs, 1)
    demand_kv = kv + queued * per_request
    demand_seqs = (running + queued) / max(targets.max_num_seqs, 1)
    need = max(demand_kv, demand_seqs) / ceiling
    slow = signals.ttft_seconds > targets.ttft_target_s

    if slow and need <= n:
        return Decision(
            float(n + 1),
            f"first token {signals.ttft_seconds:.2f}s > target {targets.ttft_target_s:g}s",
        )
    if need > n:
        return Decision(
            need,
            f"KV {demand_kv:.2f} / seqs {demand_seqs:.2f} replica-loads over ceiling {ceiling:g}",
        )
    if queued > 0 or slow:
        return Decision(float(n), "requests queued: hold")
    low = max(demand_kv, demand_seqs) / (ceiling * (1.0 - targets.scale_in_headroom))
    if math.ceil(low) < n:
        return Decision(low, f"KV {demand_kv:.2f} replica-loads fit fewer replicas")
    return Decision(float(n), "within target")


def _sum(values: dict[Any, float] | None) -> float:
    return float(sum(values.values())) if values else 0.0


def signals_of(ctx: Any) -> Signals:
    """``Signals`` from Serve's ``AutoscalingContext`` (ray/serve/config.py)."""
    metrics: dict[str, dict[Any, float]] = ctx.aggregated_metrics or {}
    kv = metrics.get(KV_CACHE_USAGE) or {}
    running_replicas = set(ctx.running_replicas or ())
    # Reports of replicas that stopped can linger for a look-back period: count running ones.
    kv = {r: v for r, v in kv.items() if not running_replicas or r in running_replicas}
    ttft = metrics.get(TTFT_SECONDS) or {}
    queued = ctx.total_queued_requests
    return Signals(
        replicas=int(ctx.current_num_replicas),
        reporting=len(kv),
        kv_usage_sum=_sum(kv),
        running=_sum({r: v for r, v in (metrics.get(RUNNING_REQUESTS) or {}).items() if r in kv}),
        waiting=_sum({r: v for r, v in (metrics.get(WAITING_REQUESTS) or {}).items() if r in kv}),
        router_queued=float(queued or 0.0),
        ttft_seconds=max((v for r, v in ttft.items() if r in kv), default=0.0),
        ongoing=float(ctx.total_num_requests or 0.0),
    )


class LatencyTargetPolicy:
    """Serve's ``policy_function`` (a class: Serve instantiates it once with ``policy_kwargs``)."""

    def __init__(
        self,
        *,
        ttft_target_s: float,
        kv_cache_ceiling: float,
        scale_in_headroom: float,
        max_num_seqs: int,
        target_ongoing_requests: float,
    ) -> None:
        self.targets = Targets(
            ttft_target_s=ttft_target_s,
            kv_cache_ceiling=kv_cache_ceiling,
            scale_in_headroom=scale_in_headroom,
            max_num_seqs=max_num_seqs,
            target_ongoing_requests=target_ongoing_requests,
        )

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        signals = signals_of(ctx)
        decision = decide(signals, self.targets)
        # The state is Serve's per-deployment policy_state: what the last decision saw, for
        # `serve status`-style debugging (Serve merges its own delay counters into it).
        state = {
            "k2t_reason": decision.reason,
            "k2t_desired": round(decision.replicas, 3),
            "k2t_kv_usage_sum": round(signals.kv_usage_sum, 3),
            "k2t_queued": signals.waiting + signals.router_queued,
            "k2t_ttft_seconds": round(signals.ttft_seconds, 3),
        }
        return decision.replicas, state
