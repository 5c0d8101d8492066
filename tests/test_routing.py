"""The request router of the model deployment: which one, with which knobs, rendered how."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from k2think_operator.api.serving import PREFIX_AWARE_ROUTER_CLASS
from k2think_operator.api.spec import parse_spec
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.plan.routing import CHARS_PER_TOKEN, choose_router
from k2think_operator.render.serve_config import effective_llm_deployment_options
from tests.conftest import CPU_POOL, TINY_MODEL, minimal_doc
from tests.test_render import rayservice_of


def deployment_config(doc: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(rayservice_of(doc)["spec"]["serveConfigV2"])
    return effective_llm_deployment_options(config)


@pytest.mark.parametrize(
    ("change", "router", "why"),
    [
        ({}, "prefixAware", "default for k2-think"),
        ({"model": {"preset": "k2-think-v2"}}, "prefixAware", "default for k2-think-v2"),
        ({"model": TINY_MODEL, "pools": [CPU_POOL]}, "powerOfTwo", "default for custom models"),
        (
            {
                "model": TINY_MODEL,
                "pools": [CPU_POOL],
                "serving": {"routing": {"router": "prefixAware"}},
            },
            "prefixAware",
            "as requested",
        ),
        (
            {
                "model": TINY_MODEL,
                "pools": [CPU_POOL],
                "serving": {"routing": {"imbalancedThreshold": 2}},
            },
            "prefixAware",
            "prefix knobs set",
        ),
        ({"serving": {"routing": {"router": "powerOfTwo"}}}, "powerOfTwo", "as requested"),
        (
            {"engine": {"enablePrefixCaching": False}},
            "powerOfTwo",
            "engine.enablePrefixCaching is false",
        ),
    ],
)
def test_choose_router(change: dict[str, Any], router: str, why: str) -> None:
    assert choose_router(parse_spec(minimal_doc(**change)["spec"])) == (router, why)


def test_prefix_aware_defaults_come_from_the_plan() -> None:
    spec = parse_spec(minimal_doc()["spec"])
    plan = plan_deployment(spec, "demo")
    assert plan.routing is not None and plan.routing.prefix_aware
    assert plan.routing.imbalanced_threshold == max(1, plan.target_ongoing_requests // 2)
    assert plan.routing.prefix_memory_chars == plan.primary.kv_tokens_per_replica * CHARS_PER_TOKEN
    config = deployment_config(minimal_doc())["request_router_config"]
    assert config["request_router_class"] == PREFIX_AWARE_ROUTER_CLASS
    kwargs = config["request_router_kwargs"]
    assert kwargs["eviction_threshold_chars"] == plan.routing.prefix_memory_chars
    assert kwargs["eviction_target_chars"] == int(plan.routing.prefix_memory_chars * 0.9)
    assert kwargs["do_eviction"] is True


def test_knobs_are_rendered_as_given() -> None:
    routing = {
        "imbalancedThreshold": 0,
        "matchRateThreshold": 0.5,
        "prefixMemoryChars": 20000,
        "evictionIntervalSeconds": 3,
    }
    kwargs = deployment_config(minimal_doc(serving={"routing": routing}))["request_router_config"][
        "request_router_kwargs"
    ]
    assert kwargs == {
        "imbalanced_threshold": 0,
        "match_rate_threshold": 0.5,
        "do_eviction": True,
        "eviction_threshold_chars": 20000,
        "eviction_target_chars": 18000,
        "eviction_interval_secs": 3,
    }


def test_multipool_remembers_what_the_smallest_replica_holds() -> None:
    pools = [
        {"name": "big", "gpuType": "H200-141GB"},
        {"name": "small", "gpuType": "H100-80GB"},
    ]
    plan = plan_deployment(parse_spec(minimal_doc(pools=pools)["spec"]), "demo")
    smallest = min(p.kv_tokens_per_replica for p in plan.pools)
    assert plan.routing is not None
    assert plan.routing.prefix_memory_chars == smallest * CHARS_PER_TOKEN


def test_power_of_two_renders_serves_default() -> None:
    doc = minimal_doc(serving={"routing": {"router": "powerOfTwo"}})
    assert "request_router_config" not in deployment_config(doc)


def test_routing_is_a_serve_config_change_only() -> None:
    """Changing the router must not start a new Ray cluster: it lives in serveConfigV2."""
    before = rayservice_of(minimal_doc())
    after = rayservice_of(minimal_doc(serving={"routing": {"router": "powerOfTwo"}}))
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
