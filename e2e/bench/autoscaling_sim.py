"""Trace-driven simulator: GPU-hours and time to first token of three ways to size a K2 Think fleet.

    .venv/bin/python e2e/bench/autoscaling_sim.py [--trace day|burst|both] [--seed 0]

Not a test: it asserts nothing and prints one table per trace, side by side in one run:
static peak provisioning, Serve's default policy with the operator's target (today's
``ongoingRequests`` mode) and the operator's latency-target policy (``latencyTarget``).

**The policies are Serve's own code.** Each tick builds Ray 2.60's ``AutoscalingContext`` and
calls the policy the way Serve's controller does (``ray/serve/_private/autoscaling_state.py``,
``get_decision_num_replicas``): ``_resolve_policy_callable`` (the class instantiated once with
the rendered ``policy_kwargs``), wrapped by ``_apply_autoscaling_config`` (cold start, scaling
factors, ``upscale_delay_s``/``downscale_delay_s`` measured on the clock, which is the
simulation's), the result rounded up and bounded. The autoscaling configs are the operator's
own render of the deployment below (``deployment.decide``), so target, delays, bounds and
policy knobs are what a cluster would get. Serve's metric smoothing is modelled: the policy
sees means over ``look_back_period_s`` (30 s) of the ongoing and queued requests and of each
replica's reports, as the controller aggregates them.

**The replica model** is built from the planner's numbers for K2-Think (bf16) on H100-80GB
(``plan.planner.plan_deployment``: TP=4, KV-cache tokens per replica, ``max_num_seqs``) and from
published hardware figures (docs/benchmarks.md cites them):

- prefill is compute-bound: ``2 x parameters`` FLOPs per prompt token at ``PREFILL_MFU`` of the
  H100's dense BF16 peak (989 TFLOPS per GPU, NVIDIA H100 datasheet) times TP;
- a decode step is memory-bound: it reads the weights and the batch's KV cache once, at
  ``DECODE_BW_EFFICIENCY`` of the HBM bandwidth in the operator's catalog (3.35 TB/s), plus a
  fixed per-step overhead; every running sequence gets one token per step;
- a prompt is admitted when vLLM's KV cache has room for it and the batch has a free slot
  (FIFO, like vLLM's scheduler); a running sequence that no longer fits is preempted and
  recomputed later, as vLLM V1 does; chunked prefill shares each second with decoding;
- a new replica serves ``REPLICA_START_S`` after Serve asks for it: the chain ground's measured
  "new worker pod -> new replica serving" (docs/benchmarks.md, head crash: 127 s) plus loading
  K2-Think's 65.5 GB from the model cache at ``CACHE_READ_GBPS``;
- a replica Serve stops takes no new request and keeps its GPUs until its streams finish (at
  most ``gracefulShutdownSeconds``, 600 s) plus the worker pod's idle timeout (60 s);
- Serve's router sends a request to the less busy of two random replicas
  (power of two choices) with room under ``max_ongoing_requests``; otherwise it queues.

**Traces** (seeded): a day of reasoning chat with a diurnal arrival rate (trough at 03:00, peak
at 15:00, ``PEAK_RATE`` requests/s) and a burst (baseline at 30% of the peak rate, then 20
minutes at the peak). Prompts are multi-turn histories (log-normal, median 2,000 tokens), outputs
are long-tailed reasoning (log-normal, median 3,000 tokens, capped by ``maxModelLen``).

Home-made because no simulator runs Serve's own policy functions against a vLLM replica model;
it is deliberately small (one-second steps, numpy over the active requests).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator" / "k2think_operator" / "ray_modules"))

import ray.serve.autoscaling_policy as serve_policy  # noqa: E402
from ray.serve._private.autoscaling_state import _resolve_policy_callable  # noqa: E402
from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402
from ray.serve.config import AutoscalingConfig, AutoscalingContext  # noqa: E402

from k2think_operator.api.catalog import ACCELERATORS, GIB, MODEL_PRESETS  # noqa: E402
from k2think_operator.api.spec import parse_spec  # noqa: E402
from k2think_operator.deployment.decide import decide  # noqa: E402
from k2think_operator.plan.planner import kv_bytes_per_token, plan_deployment  # noqa: E402
from k2think_operator.render.serve_config import effective_llm_deployment_options  # noqa: E402

# ------------------------------------------------------------------ hardware and model figures

#: NVIDIA H100 SXM datasheet: 989 TFLOPS dense BF16 per GPU.
H100_BF16_FLOPS = 989e12
#: Share of peak a long prefill reaches (assumption; published vLLM/SGLang prefill MFU 40-60%).
PREFILL_MFU = 0.5
#: Share of HBM bandwidth a decode step reaches (assumption; typical 60-80%).
DECODE_BW_EFFICIENCY = 0.7
#: Fixed cost per decode step (scheduling, sampling, kernel launches), seconds.
STEP_OVERHEAD_S = 0.004
#: Chain ground, docs/benchmarks.md "Head crash": kill -> new worker pod, Ray node, replica serving.
CHAIN_REPLICA_START_S = 127.0
#: K2-Think bf16 weights (docs/model-cache.md) read from the model cache's volume.
WEIGHTS_GB = 65.5
CACHE_READ_GBPS = 2.0
REPLICA_START_S = CHAIN_REPLICA_START_S + WEIGHTS_GB / CACHE_READ_GBPS
#: KubeRay/Ray: the worker pod lives this long once idle (autoscaling.idleTimeoutSeconds).
IDLE_TIMEOUT_S = 60.0
#: Serve's metrics window (AutoscalingConfig.look_back_period_s default).
LOOK_BACK_S = 30
#: The reporter's first-token window (k2think_engine_signals.TTFT_WINDOW_S).
TTFT_WINDOW_S = 30.0

PEAK_RATE = 6.0
TTFT_TARGET_S = 2.0
#: spec.autoscaling.policy overrides for the latencyTarget runs (--kv-cache-ceiling).
POLICY_OVERRIDES: dict[str, Any] = {}
DAY_S = 86_400

DEPLOYMENT = DeploymentID(name="LLMServer:k2-think", app_name="llm")


def deployment_doc(mode: str, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": "k2", "namespace": "campus", "uid": "sim", "generation": 1},
        "spec": {
            "model": {"preset": "k2-think"},
            "pools": [{"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8}],
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": max_replicas,
                "policy": {
                    "mode": mode,
                    "ttftTargetSeconds": TTFT_TARGET_S,
                    **(POLICY_OVERRIDES if mode == "latencyTarget" else {}),
                },
            },
        },
    }


def rendered(mode: str, max_replicas: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The autoscaling_config and deployment_config the operator renders for this deployment."""
    decision = decide(deployment_doc(mode, max_replicas))
    assert not decision.problems, decision.problems
    rayservice = next(c for c in decision.children if c.get("kind") == "RayService")
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    deployment_config = effective_llm_deployment_options(serve)
    return deployment_config["autoscaling_config"], deployment_config


@dataclass(frozen=True)
class ReplicaModel:
    gpus: int
    kv_tokens: int
    max_num_seqs: int
    max_model_len: int
    prefill_tokens_per_s: float
    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    bandwidth: float

    def step_seconds(self, kv_tokens_in_batch: np.ndarray) -> np.ndarray:
        read = self.weight_bytes_per_gpu + kv_tokens_in_batch * self.kv_bytes_per_token_per_gpu
        result: np.ndarray = read / self.bandwidth + STEP_OVERHEAD_S
        return result


def replica_model() -> ReplicaModel:
    doc = deployment_doc("ongoingRequests", 64)
    spec = parse_spec(doc["spec"])
    plan = plan_deployment(spec, "k2")
    arch = MODEL_PRESETS["k2-think"].architecture
    accel = ACCELERATORS["H100-80GB"]
    tp = plan.gpus_per_replica
    return ReplicaModel(
        gpus=tp,
        kv_tokens=plan.primary.kv_tokens_per_replica,
        max_num_seqs=spec.engine.max_num_seqs,
        max_model_len=plan.max_model_len,
        prefill_tokens_per_s=PREFILL_MFU * H100_BF16_FLOPS * tp / (2 * arch.parameters),
        weight_bytes_per_gpu=plan.primary.weights_gib_per_gpu * GIB,
        kv_bytes_per_token_per_gpu=kv_bytes_per_token(arch, 2.0) / tp,
        bandwidth=accel.bandwidth_tb_s * 1e12 * DECODE_BW_EFFICIENCY,
    )


# ------------------------------------------------------------------ traces


@dataclass(frozen=True)
class Trace:
    name: str
    duration_s: int
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    peak_rate: float


def _requests(rate: np.ndarray, rng: np.random.Generator, max_len: int) -> tuple[np.ndarray, ...]:
    counts = rng.poisson(rate)
    arrival = np.repeat(np.arange(len(rate), dtype=np.float64), counts)
    arrival += rng.random(len(arrival))
    n = len(arrival)
    prompt = np.minimum(rng.lognormal(math.log(2000), 0.8, n), 24_000).astype(np.int64) + 16
    output = np.minimum(rng.lognormal(math.log(3000), 0.9, n), max_len - prompt).astype(np.int64)
    return arrival, prompt, np.maximum(output, 16)


def day_trace(rng: np.random.Generator, max_len: int) -> Trace:
    t = np.arange(DAY_S, dtype=np.float64)
    # Trough at 03:00 (10% of peak), peak at 15:00; a raised cosine over the day.
    phase = (t / 3600.0 - 15.0) / 24.0 * 2 * math.pi
    shape = 0.1 + 0.9 * ((1 + np.cos(phase)) / 2) ** 1.5
    arrival, prompt, output = _requests(PEAK_RATE * shape, rng, max_len)
    return Trace("day", DAY_S, arrival, prompt, output, PEAK_RATE)


def burst_trace(rng: np.random.Generator, max_len: int) -> Trace:
    duration = 3 * 3600
    rate = np.full(duration, 0.3 * PEAK_RATE)
    rate[3600 : 3600 + 1200] = PEAK_RATE
    arrival, prompt, output = _requests(rate, rng, max_len)
    return Trace("burst", duration, arrival, prompt, output, PEAK_RATE)


# ------------------------------------------------------------------ the fleet


@dataclass
class Replica:
    rid: int
    ready_at: float
    started_at: float
    stopping_since: float | None = None
    released_at: float | None = None
    waiting: deque[int] = field(default_factory=deque)
    prefill_free_at: float = 0.0
    history: deque[tuple[float, float, float, float]] = field(default_factory=deque)
    first_tokens: deque[tuple[float, float]] = field(default_factory=deque)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


@dataclass
class Result:
    policy: str
    gpu_hours: float
    within: float
    p99_ttft: float
    peak_replicas: int
    mean_replicas: float
    stream_tokens_per_s: float
    preemptions: int
    unfinished: int


class Fleet:
    """Requests, replicas and Serve's control loop over one trace, one-second steps."""

    def __init__(
        self,
        trace: Trace,
        model: ReplicaModel,
        deployment_config: dict[str, Any],
        autoscaling: dict[str, Any] | None,
        static_replicas: int | None,
        seed: int,
    ) -> None:
        self.trace = trace
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.max_ongoing = int(deployment_config["max_ongoing_requests"])
        self.grace_s = float(deployment_config["graceful_shutdown_timeout_s"])
        n = len(trace.arrival)
        self.prompt = trace.prompt.astype(np.float64)
        self.output = trace.output.astype(np.float64)
        self.generated = np.zeros(n)
        self.first_token = np.full(n, np.nan)
        self.finished = np.full(n, np.nan)
        self.replica_of = np.full(n, -1, dtype=np.int64)
        self.recompute = np.zeros(n)  # tokens to prefill again after a preemption
        self.running: np.ndarray = np.empty(0, dtype=np.int64)
        self.router: deque[int] = deque()
        self.ongoing: list[int] = []
        self.replicas: list[Replica] = []
        self.preemptions = 0
        self.clock = Clock()
        self.replica_seconds = 0.0
        self.ongoing_history: deque[tuple[float, float]] = deque()
        self.static = static_replicas
        self.config: AutoscalingConfig | None = None
        self.policy: Any = None
        self.policy_state: dict[str, Any] = {}
        initial = static_replicas or 1
        if autoscaling is not None:
            self.config = AutoscalingConfig.model_validate(autoscaling)
            self.policy = serve_policy._apply_autoscaling_config(
                _resolve_policy_callable(self.config.policy)
            )
            initial = self.config.initial_replicas or self.config.min_replicas
        self.target = initial
        for _ in range(initial):
            self._start(ready_at=0.0)

    # -------------------------------------------------------------- replicas

    def _start(self, ready_at: float) -> None:
        self.replicas.append(Replica(len(self.replicas), ready_at, self.clock.now))
        self.ongoing.append(0)

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas if r.stopping_since is None]

    def _serving(self, now: float) -> list[Replica]:
        return [r for r in self._live() if r.ready_at <= now]

    def _scale_to(self, target: int, now: float) -> None:
        live = self._live()
        for _ in range(target - len(live)):
            self._start(ready_at=now + REPLICA_START_S)
        if target < len(live):
            # Starting replicas go first, then those with the fewest ongoing requests.
            order = sorted(live, key=lambda r: (r.ready_at <= now, self.ongoing[r.rid]))
            for replica in order[: len(live) - target]:
                replica.stopping_since = now
                if replica.ready_at > now or self.ongoing[replica.rid] == 0:
                    replica.released_at = now

    # -------------------------------------------------------------- one second

    def _arrivals(self, lo: int, hi: int) -> None:
        self.router.extend(range(lo, hi))

    def _route(self, now: float) -> None:
        serving = self._serving(now)
        if not serving:
            return
        while self.router:
            open_ = [r for r in serving if self.ongoing[r.rid] < self.max_ongoing]
            if not open_:
                return
            if len(open_) == 1:
                choice = open_[0]
            else:
                a, b = self.rng.choice(len(open_), 2, replace=False)
                ra, rb = open_[int(a)], open_[int(b)]
                choice = ra if self.ongoing[ra.rid] <= self.ongoing[rb.rid] else rb
            request = self.router.popleft()
            self.replica_of[request] = choice.rid
            self.ongoing[choice.rid] += 1
            choice.waiting.append(request)

    def _kv_per_replica(self) -> np.ndarray:
        idx = self.running
        tokens = self.prompt[idx] + self.generated[idx]
        return np.bincount(self.replica_of[idx], weights=tokens, minlength=len(self.replicas))

    def _admit(self, now: float, kv: np.ndarray, count: np.ndarray) -> None:
        admitted: list[int] = []
        for replica in self.replicas:
            if replica.released_at is not None or replica.ready_at > now:
                continue
            free = self.model.kv_tokens - kv[replica.rid]
            slots = self.model.max_num_seqs - count[replica.rid]
            start = max(now, replica.prefill_free_at)
            while replica.waiting and slots > 0:
                request = replica.waiting[0]
                need = self.prompt[request] + self.generated[request]
                if need > free:
                    break
                replica.waiting.popleft()
                free -= need
                slots -= 1
                prefill = (self.prompt[request] + self.recompute[request]) / (
                    self.model.prefill_tokens_per_s
                )
                start += prefill
                if np.isnan(self.first_token[request]):
                    self.first_token[request] = start
                    replica.first_tokens.append((start, start - self.trace.arrival[request]))
                self.recompute[request] = 0.0
                admitted.append(request)
            replica.prefill_free_at = start
        if admitted:
            self.running = np.concatenate([self.running, np.array(admitted, dtype=np.int64)])

    def _decode(self, now: float, kv: np.ndarray) -> None:
        idx = self.running
        if len(idx) == 0:
            return
        replicas = self.replica_of[idx]
        busy = np.array(
            [min(1.0, max(0.0, r.prefill_free_at - now)) for r in self.replicas], dtype=np.float64
        )
        step = self.model.step_seconds(kv)
        tokens_per_s = (1.0 - busy) / step
        # A sequence decodes from its first token on (it may come later in this second).
        since = np.clip(now + 1.0 - np.nan_to_num(self.first_token[idx], nan=now + 1.0), 0, 1)
        self.generated[idx] += tokens_per_s[replicas] * since
        done = self.generated[idx] >= self.output[idx]
        self.finished[idx[done]] = now + 1.0
        for request in idx[done]:
            self.ongoing[int(self.replica_of[request])] -= 1
        self.running = idx[~done]

    def _preempt(self, kv: np.ndarray) -> None:
        over = np.nonzero(kv > self.model.kv_tokens)[0]
        for rid in over:
            replica = self.replicas[int(rid)]
            mine = self.running[self.replica_of[self.running] == rid]
            excess = kv[rid] - self.model.kv_tokens
            victims: list[int] = []
            for request in mine[::-1]:  # the newest first, as vLLM V1
                if excess <= 0:
                    break
                victims.append(int(request))
                excess -= self.prompt[request] + self.generated[request]
                self.recompute[request] = self.generated[request]
                replica.waiting.appendleft(int(request))
            self.preemptions += len(victims)
            self.running = self.running[~np.isin(self.running, victims)]

    def _release(self, now: float) -> None:
        for replica in self.replicas:
            if replica.stopping_since is None or replica.released_at is not None:
                continue
            drained = self.ongoing[replica.rid] == 0
            if drained or now - replica.stopping_since >= self.grace_s:
                replica.released_at = now
                if not drained:  # Serve kills what is left after the grace period
                    self.running = self.running[self.replica_of[self.running] != replica.rid]
                    self.ongoing[replica.rid] = 0

    def _account(self, now: float) -> None:
        for replica in self.replicas:
            released = replica.released_at
            if released is None or now < released + IDLE_TIMEOUT_S:
                self.replica_seconds += 1.0

    # -------------------------------------------------------------- Serve's control loop

    def _observe(self, now: float, kv: np.ndarray) -> None:
        count = np.bincount(self.replica_of[self.running], minlength=len(self.replicas))
        ongoing = sum(self.ongoing[r.rid] for r in self._live()) + len(self.router)
        self.ongoing_history.append((float(ongoing), float(len(self.router))))
        while len(self.ongoing_history) > LOOK_BACK_S:
            self.ongoing_history.popleft()
        for replica in self._serving(now):
            while replica.first_tokens and now - replica.first_tokens[0][0] > TTFT_WINDOW_S:
                replica.first_tokens.popleft()
            worst = max((t for _, t in replica.first_tokens), default=0.0)
            replica.history.append(
                (
                    kv[replica.rid] / self.model.kv_tokens,
                    float(count[replica.rid]),
                    float(len(replica.waiting)),
                    worst,
                )
            )
            while len(replica.history) > LOOK_BACK_S:
                replica.history.popleft()

    def _decide(self, now: float) -> None:
        assert self.config is not None
        serving = self._serving(now)
        ids = {r.rid: ReplicaID(unique_id=f"r{r.rid}", deployment_id=DEPLOYMENT) for r in serving}
        metrics: dict[str, dict[ReplicaID, float]] = {
            "k2t_kv_cache_usage": {},
            "k2t_running_requests": {},
            "k2t_waiting_requests": {},
            "k2t_ttft_seconds": {},
        }
        for replica in serving:
            if not replica.history:
                continue
            mean = np.mean(np.array(replica.history), axis=0)
            rid = ids[replica.rid]
            metrics["k2t_kv_cache_usage"][rid] = float(mean[0])
            metrics["k2t_running_requests"][rid] = float(mean[1])
            metrics["k2t_waiting_requests"][rid] = float(mean[2])
            metrics["k2t_ttft_seconds"][rid] = float(mean[3])
        history = np.array(self.ongoing_history) if self.ongoing_history else np.zeros((1, 2))
        total, queued = np.mean(history, axis=0)
        ctx = AutoscalingContext(
            deployment_id=DEPLOYMENT,
            deployment_name=DEPLOYMENT.name,
            app_name=DEPLOYMENT.app_name,
            current_num_replicas=len(serving),
            target_num_replicas=self.target,
            running_replicas=list(ids.values()),
            total_num_requests=float(total),
            total_queued_requests=float(queued),
            aggregated_metrics=metrics,
            raw_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=dict(self.policy_state),
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=now,
            config=self.config,
        )
        decision, self.policy_state = self.policy(ctx)
        decision = math.ceil(decision)
        self.target = max(self.config.min_replicas, min(self.config.max_replicas, decision))
        self._scale_to(self.target, now)

    # -------------------------------------------------------------- run

    def run(self, policy_name: str) -> Result:
        # Serve's delay logic reads time.time() of its module: the simulation's clock instead.
        vars(serve_policy)["time"] = self.clock
        arrivals = np.searchsorted(self.trace.arrival, np.arange(self.trace.duration_s + 1))
        peak = 0
        replica_count = 0.0
        tail = self.trace.duration_s + 3600  # let the last streams finish
        for second in range(tail):
            now = float(second)
            self.clock.now = now
            if second < self.trace.duration_s:
                self._arrivals(int(arrivals[second]), int(arrivals[second + 1]))
            self._route(now)
            kv = self._kv_per_replica()
            count = np.bincount(self.replica_of[self.running], minlength=len(self.replicas))
            self._admit(now, kv, count)
            kv = self._kv_per_replica()
            self._decode(now, kv)
            kv = self._kv_per_replica()
            self._preempt(kv)
            self._release(now)
            self._observe(now, kv)
            if self.config is not None:
                self._decide(now)
            self._account(now)
            if second < self.trace.duration_s:
                live = len(self._live())
                peak = max(peak, live)
                replica_count += live
            elif (
                not self.router
                and len(self.running) == 0
                and all(not r.waiting for r in self.replicas)
            ):
                break
        ttft = self.first_token - self.trace.arrival
        served = ~np.isnan(ttft)
        within = float(np.mean(np.where(served, ttft <= TTFT_TARGET_S, False)))
        return Result(
            policy=policy_name,
            gpu_hours=self.replica_seconds * self.model.gpus / 3600.0,
            within=within,
            p99_ttft=float(np.nanpercentile(ttft, 99)) if served.any() else math.inf,
            peak_replicas=peak,
            mean_replicas=replica_count / self.trace.duration_s,
            stream_tokens_per_s=float(
                np.nanmedian(self.output / (self.finished - self.first_token))
            ),
            preemptions=self.preemptions,
            unfinished=int(np.sum(self.generated < self.output)),
        )


def simulate(
    trace: Trace, model: ReplicaModel, policy: str, seed: int, replicas: int = 64
) -> Result:
    mode = "latencyTarget" if policy == "latencyTarget" else "ongoingRequests"
    autoscaling, deployment_config = rendered(mode, replicas)
    if policy == "static":
        fleet = Fleet(trace, model, deployment_config, None, replicas, seed)
    else:
        fleet = Fleet(trace, model, deployment_config, autoscaling, None, seed)
    return fleet.run(policy if policy != "static" else f"static x{replicas}")


def smallest_static(trace: Trace, model: ReplicaModel, seed: int, hint: int) -> Result:
    """Static peak provisioning: the fewest fixed replicas that meet the target for 99%."""
    best: Result | None = None
    n = max(1, hint)
    while True:
        result = simulate(trace, model, "static", seed, n)
        if result.within >= 0.99:
            best = result
            if n == 1:
                return best
            n -= 1
        elif best is not None:
            return best
        else:
            n += 1


def table(trace: Trace, results: list[Result], static_gpu_hours: float) -> str:
    lines = [
        f"trace {trace.name}: {len(trace.arrival):,} requests over {trace.duration_s / 3600:.0f} h,"
        f" peak {trace.peak_rate:g} req/s; TTFT target {TTFT_TARGET_S:g} s",
        "| policy | GPU-hours | of static | within TTFT target | p99 TTFT | replicas peak / mean"
        " | median stream tokens/s | preemptions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.policy} | {r.gpu_hours:,.0f} | {100 * r.gpu_hours / static_gpu_hours:.0f}% | "
            f"{100 * r.within:.2f}% | {r.p99_ttft:.2f} s | {r.peak_replicas} / "
            f"{r.mean_replicas:.1f} | {r.stream_tokens_per_s:.0f} | {r.preemptions:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", choices=("day", "burst", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-ceiling", type=float, help="latencyTarget's kvCacheCeiling")
    args = parser.parse_args(argv)
    if args.kv_cache_ceiling is not None:
        POLICY_OVERRIDES["kvCacheCeiling"] = args.kv_cache_ceiling
    model = replica_model()
    print(
        f"replica: TP={model.gpus} H100-80GB, {model.kv_tokens:,} KV tokens, "
        f"max_num_seqs {model.max_num_seqs}, prefill {model.prefill_tokens_per_s:,.0f} tok/s, "
        f"decode step {1000 * float(model.step_seconds(np.array([0.0]))[0]):.1f} ms empty / "
        f"{1000 * float(model.step_seconds(np.array([float(model.kv_tokens)]))[0]):.1f} ms full"
        f" KV, start {REPLICA_START_S:.0f} s"
    )
    started = time.monotonic()
    traces = []
    rng = np.random.default_rng(args.seed)
    if args.trace in ("day", "both"):
        traces.append(day_trace(rng, model.max_model_len))
    if args.trace in ("burst", "both"):
        traces.append(burst_trace(rng, model.max_model_len))
    for trace in traces:
        default = simulate(trace, model, "ongoingRequests", args.seed)
        latency = simulate(trace, model, "latencyTarget", args.seed)
        static = smallest_static(trace, model, args.seed, max(latency.peak_replicas, 1))
        print(table(trace, [static, default, latency], static.gpu_hours))
    print(
        f"wall {time.monotonic() - started:.0f} s, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
