"""The latency-target policy (ray_modules/k2think_autoscaling.py) called the way Serve calls it.

Serve's controller resolves ``autoscaling_config.policy`` (a class: instantiated once with
``policy_kwargs``), wraps it in ``_apply_autoscaling_config`` (cold start, scaling factors,
upscale/downscale delays), calls it with an ``AutoscalingContext`` every control-loop tick and
bounds the result (``ray/serve/_private/autoscaling_state.py``, ``get_decision_num_replicas``).
These tests do exactly that with Ray 2.60's own classes and functions, with the policy config
as the operator renders it, beside Serve's default policy with the operator's target.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import ray.serve.autoscaling_policy as serve_policy
import yaml
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from k2think_operator.render.serve_config import effective_llm_deployment_options
from tests.conftest import ROOT, minimal_doc
from tests.test_render import rayservice_of

RAY_MODULES = ROOT / "operator" / "k2think_operator" / "ray_modules"
DEPLOYMENT = DeploymentID(name="LLMServer:k2-think", app_name="llm")


@pytest.fixture(autouse=True)
def ray_modules_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What the pods get from the ConfigMap mounted on PYTHONPATH."""
    monkeypatch.syspath_prepend(str(RAY_MODULES))
    yield
    for name in ("k2think_autoscaling", "k2think_engine_signals"):
        sys.modules.pop(name, None)


def policy_module() -> types.ModuleType:
    return importlib.import_module("k2think_autoscaling")


def rendered_autoscaling(mode: str, **policy: Any) -> dict[str, Any]:
    doc = minimal_doc(
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 8,
            "upscaleDelaySeconds": 30,
            "downscaleDelaySeconds": 600,
            "policy": {"mode": mode, **policy},
        }
    )
    serve = yaml.safe_load(rayservice_of(doc)["spec"]["serveConfigV2"])
    config: dict[str, Any] = effective_llm_deployment_options(serve)["autoscaling_config"]
    return config


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Serve's delay logic reads ``time.time()`` in ray/serve/autoscaling_policy.py."""
    fake = Clock()
    monkeypatch.setattr(serve_policy, "time", fake)
    return fake


class Controller:
    """One deployment's autoscaling state as Serve's controller keeps it."""

    def __init__(self, autoscaling_config: dict[str, Any], replicas: int) -> None:
        self.config = AutoscalingConfig.model_validate(autoscaling_config)
        self.policy = serve_policy._apply_autoscaling_config(
            _resolve_policy_callable(self.config.policy)
        )
        self.state: dict[str, Any] = {}
        self.target = replicas
        self.running = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(9)]

    def tick(
        self,
        clock: Clock,
        *,
        ongoing: float,
        queued: float = 0.0,
        kv: float | None = None,
        waiting: float = 0.0,
        running: float | None = None,
        ttft: float = 0.0,
    ) -> int:
        replicas = self.running[: self.target]
        metrics: dict[str, dict[ReplicaID, float]] = {}
        if kv is not None:
            per = running if running is not None else ongoing / self.target
            metrics = {
                "k2t_kv_cache_usage": dict.fromkeys(replicas, kv),
                "k2t_running_requests": dict.fromkeys(replicas, per),
                "k2t_waiting_requests": dict.fromkeys(replicas, waiting / self.target),
                "k2t_ttft_seconds": dict.fromkeys(replicas, ttft),
            }
        ctx = AutoscalingContext(
            deployment_id=DEPLOYMENT,
            deployment_name=DEPLOYMENT.name,
            app_name=DEPLOYMENT.app_name,
            current_num_replicas=self.target,
            target_num_replicas=self.target,
            running_replicas=replicas,
            total_num_requests=ongoing,
            total_queued_requests=queued,
            aggregated_metrics=metrics,
            raw_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=dict(self.state),
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=clock.now,
            config=self.config,
        )
        decision, self.state = self.policy(ctx)
        decision = math.ceil(decision)
        self.target = max(self.config.min_replicas, min(self.config.max_replicas, decision))
        return self.target


def run(controller: Controller, clock: Clock, seconds: float, **load: Any) -> int:
    """Serve's control loop for ``seconds`` (one tick per second) under a steady load."""
    for _ in range(int(seconds)):
        clock.now += 1
        controller.tick(clock, **load)
    return controller.target


# ------------------------------------------------------------------ the render Serve receives


def test_default_mode_renders_serve_default_policy() -> None:
    config = rendered_autoscaling("ongoingRequests")
    assert "policy" not in config
    assert AutoscalingConfig.model_validate(config).policy.is_default_policy_function()


def test_latency_mode_renders_the_policy_class_with_its_knobs() -> None:
    config = rendered_autoscaling("latencyTarget", ttftTargetSeconds=1.5, kvCacheCeiling=0.7)
    assert config["policy"] == {
        "policy_function": "k2think_autoscaling:LatencyTargetPolicy",
        "policy_kwargs": {
            "ttft_target_s": 1.5,
            "kv_cache_ceiling": 0.7,
            "scale_in_headroom": 0.2,
            "max_num_seqs": 256,
            "target_ongoing_requests": config["target_ongoing_requests"],
        },
    }
    parsed = AutoscalingConfig.model_validate(config)
    instance: Any = _resolve_policy_callable(parsed.policy)
    assert type(instance).__name__ == "LatencyTargetPolicy"
    assert instance.targets.kv_cache_ceiling == 0.7


# ------------------------------------------------------------------ Serve's loop, both policies

#: A replica whose KV cache is 95% full with two long streams, at the default mode's target.
KV_FULL = {"ongoing": 2.0, "kv": 0.95, "running": 2.0}


def test_kv_cache_full_under_the_old_target_scales_out_only_with_the_new_policy(
    clock: Clock,
) -> None:
    old = Controller({**rendered_autoscaling("ongoingRequests"), "target_ongoing_requests": 2}, 1)
    new_config = rendered_autoscaling("latencyTarget")
    new = Controller({**new_config, "target_ongoing_requests": 2}, 1)
    assert run(old, clock, 120, **KV_FULL) == 1
    assert run(new, clock, 29, **KV_FULL) == 1  # Serve's upscale delay holds it back
    assert run(new, clock, 2, **KV_FULL) == 2


def test_scale_in_waits_for_the_downscale_delay_and_keeps_headroom(clock: Clock) -> None:
    new = Controller(rendered_autoscaling("latencyTarget", kvCacheCeiling=0.8), 4)
    # 4 x 0.5 = 2.0 replica-loads: at ceiling 0.8 that is 2.5 replicas, with headroom 3.1 -> 4.
    assert run(new, clock, 700, ongoing=8, kv=0.5, running=2) == 4
    # 4 x 0.3 = 1.2: 1.875 with headroom -> 2 replicas, but only after 600 s.
    assert run(new, clock, 599, ongoing=8, kv=0.3, running=2) == 4
    assert run(new, clock, 2, ongoing=8, kv=0.3, running=2) == 2


def test_waiting_requests_add_capacity_even_below_the_ceiling(clock: Clock) -> None:
    new = Controller(rendered_autoscaling("latencyTarget", kvCacheCeiling=0.8), 2)
    # 2 x 0.6 = 1.2 loads from 8 running (0.15 each) + 8 waiting = 2.4 loads: 3 replicas at 0.8.
    assert run(new, clock, 31, ongoing=16, kv=0.6, running=4, waiting=8) == 3


def test_router_queue_counts_as_demand(clock: Clock) -> None:
    new = Controller(rendered_autoscaling("latencyTarget"), 1)
    assert run(new, clock, 31, ongoing=12, queued=8, kv=0.4, running=4) == 2


def test_slow_first_token_adds_one_replica_at_a_time(clock: Clock) -> None:
    new = Controller(rendered_autoscaling("latencyTarget", ttftTargetSeconds=2), 2)
    assert run(new, clock, 31, ongoing=4, kv=0.2, running=2, ttft=5.0) == 3
    assert run(new, clock, 31, ongoing=4, kv=0.2, running=2, ttft=1.0) == 3


def test_without_engine_reports_it_falls_back_to_ongoing_requests(clock: Clock) -> None:
    config = {**rendered_autoscaling("latencyTarget"), "target_ongoing_requests": 2}
    config["policy"]["policy_kwargs"]["target_ongoing_requests"] = 2
    new = Controller(config, 1)
    assert run(new, clock, 31, ongoing=6) == 3


def test_cold_start_is_serves(clock: Clock) -> None:
    config = {**rendered_autoscaling("latencyTarget"), "min_replicas": 0}
    new = Controller(config, 0)
    assert new.tick(clock, ongoing=1, queued=1) == 1


# ------------------------------------------------------------------ decide(), table


def signals(**values: Any) -> Any:
    base = {
        "replicas": 2,
        "reporting": 2,
        "kv_usage_sum": 0.0,
        "running": 0.0,
        "waiting": 0.0,
        "router_queued": 0.0,
        "ttft_seconds": 0.0,
        "ongoing": 0.0,
    }
    return policy_module().Signals(**{**base, **values})


TARGETS = {
    "ttft_target_s": 2.0,
    "kv_cache_ceiling": 0.8,
    "scale_in_headroom": 0.2,
    "max_num_seqs": 16,
    "target_ongoing_requests": 4,
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, 0.0),  # idle: as few as the bounds allow
        ({"kv_usage_sum": 1.0, "running": 4}, 2.0),  # 1.0 / 0.8 = 1.25 -> not < 2 with headroom
        ({"kv_usage_sum": 1.8, "running": 4}, 2.25),  # over the ceiling
        ({"kv_usage_sum": 0.4, "running": 2, "waiting": 2}, 2.0),  # queued: hold
        ({"kv_usage_sum": 0.4, "running": 30, "waiting": 10}, 3.125),  # batch slots: 40/16/0.8
        ({"kv_usage_sum": 0.4, "running": 2, "ttft_seconds": 3}, 3.0),  # slow: one more
        ({"reporting": 1, "kv_usage_sum": 0.9, "running": 2}, 2.25),  # silent replica as full
        ({"reporting": 0, "ongoing": 12}, 3.0),  # nobody reports: ongoing / target
        ({"replicas": 0}, 0.0),
    ],
)
def test_decide(values: dict[str, Any], expected: float) -> None:
    module = policy_module()
    decision = module.decide(signals(**values), module.Targets(**TARGETS))
    assert decision.replicas == pytest.approx(expected)
    assert decision.reason


def test_reports_of_stopped_replicas_are_ignored() -> None:
    module = policy_module()
    live = ReplicaID(unique_id="live", deployment_id=DEPLOYMENT)
    gone = ReplicaID(unique_id="gone", deployment_id=DEPLOYMENT)
    ctx = types.SimpleNamespace(
        current_num_replicas=1,
        running_replicas=[live],
        aggregated_metrics={
            "k2t_kv_cache_usage": {live: 0.5, gone: 0.9},
            "k2t_running_requests": {live: 3, gone: 5},
            "k2t_waiting_requests": {live: 1, gone: 7},
            "k2t_ttft_seconds": {live: 0.4, gone: 9.0},
        },
        total_queued_requests=2,
        total_num_requests=6,
    )
    assert module.signals_of(ctx) == module.Signals(
        replicas=1,
        reporting=1,
        kv_usage_sum=0.5,
        running=3,
        waiting=1,
        router_queued=2,
        ttft_seconds=0.4,
        ongoing=6,
    )


# ------------------------------------------------------------------ the replica's reporter


class Stats(types.SimpleNamespace):
    pass


def test_engine_signals_follow_vllm_steps_and_forget_when_idle() -> None:
    signals_module = importlib.import_module("k2think_engine_signals")
    now = [100.0]
    signals_ = signals_module.EngineSignals(clock=lambda: now[0])
    assert signals_.snapshot() == {}  # no step yet: report nothing, the policy falls back

    calls: list[dict[str, Any]] = []
    manager = types.SimpleNamespace(record=lambda **kw: calls.append(kw))
    engine = types.SimpleNamespace(logger_manager=manager)
    assert signals_module.attach(engine, signals_)
    manager.record(
        scheduler_stats=Stats(kv_cache_usage=0.7, num_running_reqs=3, num_waiting_reqs=2),
        iteration_stats=Stats(time_to_first_tokens_iter=[0.5, 1.5]),
        engine_idx=0,
    )
    assert len(calls) == 1  # vLLM's own loggers still get every step
    assert signals_.snapshot() == {
        "k2t_kv_cache_usage": 0.7,
        "k2t_running_requests": 3.0,
        "k2t_waiting_requests": 2.0,
        "k2t_ttft_seconds": 1.5,
    }
    now[0] += 20  # no step for 20 s: idle engine, stale numbers dropped
    assert signals_.snapshot()["k2t_kv_cache_usage"] == 0.0
    now[0] += 20  # first tokens older than the window are forgotten
    assert signals_.snapshot()["k2t_ttft_seconds"] == 0.0


def test_engine_without_statistics_is_reported_not_attached() -> None:
    signals_module = importlib.import_module("k2think_engine_signals")
    engine = types.SimpleNamespace(logger_manager=None)
    assert not signals_module.attach(engine, signals_module.EngineSignals())


def test_policy_and_reporter_agree_on_metric_names() -> None:
    signals_module = importlib.import_module("k2think_engine_signals")
    names = (
        signals_module.KV_CACHE_USAGE,
        signals_module.WAITING_REQUESTS,
        signals_module.RUNNING_REQUESTS,
        signals_module.TTFT_SECONDS,
    )
    assert names == policy_module().METRICS


# ------------------------------------------------------------------ what reaches the Ray pods


def test_latency_mode_ships_its_modules_to_every_ray_pod() -> None:
    from tests.test_security import children, of_kind, pod_specs

    doc = minimal_doc(
        autoscaling={"minReplicas": 1, "maxReplicas": 4, "policy": {"mode": "latencyTarget"}}
    )
    items = children(doc)
    (configmap,) = of_kind(items, "ConfigMap")
    modules = ("k2think_autoscaling", "k2think_engine_signals", "k2think_llm_server")
    assert configmap["data"] == {f"{m}.py": (RAY_MODULES / f"{m}.py").read_text() for m in modules}
    serve = yaml.safe_load(items[0]["spec"]["serveConfigV2"])
    (llm,) = serve["applications"][0]["args"]["llm_configs"]
    assert llm["server_cls"] == "k2think_llm_server:LLMServer"
    assert "ingress_cls_config" not in serve["applications"][0]["args"]  # no API keys asked
    for pod in pod_specs(items):
        (container,) = pod["containers"]
        assert {"name": "PYTHONPATH", "value": "/opt/k2think/python"} in container["env"]


def test_default_mode_ships_nothing_and_renders_the_stock_server() -> None:
    from tests.test_security import children, of_kind

    items = children(minimal_doc(autoscaling={"minReplicas": 1, "maxReplicas": 4}))
    assert of_kind(items, "ConfigMap") == []
    serve = yaml.safe_load(items[0]["spec"]["serveConfigV2"])
    assert "server_cls" not in serve["applications"][0]["args"]["llm_configs"][0]


def test_with_api_keys_both_ship_in_one_configmap() -> None:
    from tests.test_security import children, of_kind

    doc = minimal_doc(
        autoscaling={"minReplicas": 1, "maxReplicas": 4, "policy": {"mode": "latencyTarget"}},
        serving={"apiKeysSecret": "keys"},
    )
    (configmap,) = of_kind(children(doc), "ConfigMap")
    assert sorted(configmap["data"]) == [
        "k2think_api_key_ingress.py",
        "k2think_autoscaling.py",
        "k2think_engine_signals.py",
        "k2think_llm_server.py",
    ]


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"mode": "gpuUtilisation"}, "spec.autoscaling.policy.mode"),
        ({"kvCacheCeiling": 1.5}, "spec.autoscaling.policy.kvCacheCeiling"),
        ({"ttftTargetSeconds": 0}, "spec.autoscaling.policy.ttftTargetSeconds"),
        ({"scaleInHeadroom": 1}, "spec.autoscaling.policy.scaleInHeadroom"),
        ({"ttftTarget": 2}, "spec.autoscaling.policy.ttftTarget"),
    ],
)
def test_bad_policy_values_name_the_field(policy: dict[str, Any], field: str) -> None:
    from k2think_operator.api.spec import InvalidSpec, parse_spec

    doc = minimal_doc(autoscaling={"minReplicas": 1, "maxReplicas": 4, "policy": policy})
    with pytest.raises(InvalidSpec, match=field.replace(".", r"\.")):
        parse_spec(doc["spec"])
