"""Prefix-aware routing for real (#24): two replicas of the tiny model behind Ray Serve LLM.

With ``spec.serving.routing.router: prefixAware`` (the operator's render: Ray Serve LLM's
``PrefixCacheAffinityRouter`` with the plan's knobs) requests that share a long prefix all land on
one replica, and that replica's vLLM prefix-cache hit counter shows the shared prefix answered
from cache. With ``powerOfTwo`` (Serve's default) the same kind of requests spread over both
replicas. Where each request went is read from vLLM's own per-replica counters on Ray's metrics
export port (routing_workload.py), not from anything of ours in the request path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dataplane_config import APP_NAME, fixed_serve_config_for
from dataplane_support import RayHead, poll, put_serve_config_v2
from routing_workload import (
    POWER_OF_TWO,
    PREFIX_AWARE,
    PREFIX_HITS,
    REQUESTS,
    Conversation,
    chat_turn,
    delta,
    long_text,
    replica_counters,
    total,
    wait_for_router,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(1800)]

SERVED = "k2-think-tiny-routing"
DEPLOY_TIMEOUT_S = float(os.environ.get("K2T_DEPLOY_TIMEOUT_S", "600"))
#: ~1,500 characters of shared system prompt: hundreds of tokens, many KV blocks.
PREFIX_WORDS = 220


def deploy(head: RayHead, model_dir: Path, router: str) -> dict[str, Any]:
    config = fixed_serve_config_for(model_dir, SERVED, replicas=2, routing={"router": router})
    llm = yaml.safe_load(config)["applications"][0]["args"]["llm_configs"][0]
    router_config = (llm.get("deployment_config") or {}).get("request_router_config")
    if router == "prefixAware":
        assert router_config is not None
        assert router_config["request_router_class"].endswith(":PrefixCacheAffinityRouter")
    else:
        assert router_config is None  # Serve's default: power of two choices
    response = put_serve_config_v2(head.dashboard_url, config)
    assert response.status_code == 200, response.text
    running_router = PREFIX_AWARE if router == "prefixAware" else POWER_OF_TWO
    return wait_for_router(head.dashboard_url, APP_NAME, running_router, 2, DEPLOY_TIMEOUT_S)


def metrics_url(head: RayHead) -> str:
    return f"http://127.0.0.1:{head.metrics_port}/metrics"


def send_shared_prefix(head: RayHead, seed: int, count: int) -> dict[str, dict[str, float]]:
    """``count`` chats sharing one long system prompt; what each replica's counters gained."""
    before = replica_counters(metrics_url(head))
    system = long_text(seed, PREFIX_WORDS)
    for i in range(count):
        messages = Conversation(system).next_turn(f"question {i}: what follows?")
        chat_turn(head.serve_url + "/v1", SERVED, messages, max_tokens=4)

    def all_counted() -> dict[str, dict[str, float]] | None:
        gained = delta(before, replica_counters(metrics_url(head)))
        return gained if total(gained, REQUESTS) >= count else None

    # Ray's metrics agent exports what the replicas report every few seconds.
    gained: dict[str, dict[str, float]] = poll(
        all_counted, timeout=120, interval=2, what=f"{count} requests in vLLM's counters"
    )
    return gained


@pytest.fixture(scope="module")
def head(ray_head: RayHead) -> Iterator[RayHead]:
    yield ray_head


def test_prefix_aware_keeps_a_shared_prefix_on_one_replica(
    head: RayHead, tiny_model_dir: Path
) -> None:
    deploy(head, tiny_model_dir, "prefixAware")
    gained = send_shared_prefix(head, seed=1, count=6)
    by_replica = {r: v[REQUESTS] for r, v in gained.items()}
    assert sorted(by_replica.values(), reverse=True)[0] == 6, by_replica
    (hot,) = [r for r, n in by_replica.items() if n == 6]
    # Every request after the first found the shared prompt in that replica's prefix cache.
    assert gained[hot][PREFIX_HITS] > 0, gained
    print(f"prefixAware: requests per replica {by_replica}; prefix-cache hit tokens "
          f"{ {r: v[PREFIX_HITS] for r, v in gained.items()} }")  # fmt: skip


def test_power_of_two_spreads_a_shared_prefix(head: RayHead, tiny_model_dir: Path) -> None:
    deploy(head, tiny_model_dir, "powerOfTwo")
    gained = send_shared_prefix(head, seed=2, count=16)
    by_replica = {r: v[REQUESTS] for r, v in gained.items() if v[REQUESTS] > 0}
    # Two random replicas per request and equal (empty) queues: all 16 on one replica would
    # happen with probability 2 x 2^-16.
    assert len(by_replica) == 2, by_replica
    print(f"powerOfTwo: requests per replica {by_replica}")
