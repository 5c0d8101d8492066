"""Routing benchmark: time to first token and vLLM prefix-cache hit rate of a multi-turn chat
workload, prefix-aware routing vs power of two choices, side by side in one run.

    flock /tmp/k2t-heavy.lock unshare -n bash -c 'ip link set lo up && \\
        .venv-dataplane/bin/python e2e/bench/routing.py [--conversations 4] [--turns 4]'

(``make bench-routing`` does exactly that.) One local Ray head (the data-plane suite's
``RayHead``), the tiny K2-Think-shaped model on vLLM's CPU backend, two replicas, the Serve
config the operator renders with ``spec.serving.routing.router`` set to each router in turn.
Each phase runs the same shape of workload with its own texts (so no phase finds the other's
prompts in a cache): ``--conversations`` chats, each with its own long system prompt, advanced
one turn at a time in round-robin (turn 1 of every chat, then turn 2, ...), every turn resending
the whole history as reasoning clients do. Time to first token is measured on the client
(streamed, temperature 0); the prefix-cache hit rate is vLLM's own (prefix_cache_hits /
prefix_cache_queries, in prompt tokens, summed over the replicas from Ray's metrics port).
Prints one JSON document; a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

E2E = Path(__file__).resolve().parent.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(E2E / "dataplane"), str(ROOT / "operator")]

from dataplane_config import (  # noqa: E402
    APP_NAME,
    HEAD_RESOURCE,
    HEAD_RESOURCE_CAPACITY,
    fixed_serve_config_for,
)
from dataplane_support import (  # noqa: E402
    OFFLINE_ENV,
    RayHead,
    poll,
    put_serve_config_v2,
)
from routing_workload import (  # noqa: E402
    POWER_OF_TWO,
    PREFIX_AWARE,
    PREFIX_HITS,
    PREFIX_QUERIES,
    REQUESTS,
    Conversation,
    chat_turn,
    delta,
    long_text,
    percentile,
    replica_counters,
    total,
    wait_for_router,
)
from tiny_model import build_tiny_k2think  # noqa: E402

SERVED = "k2-think-tiny"


def deploy(head: RayHead, model: Path, router: str) -> None:
    config = fixed_serve_config_for(model, SERVED, replicas=2, routing={"router": router})
    response = put_serve_config_v2(head.dashboard_url, config)
    assert response.status_code == 200, response.text
    wait_for_router(
        head.dashboard_url,
        APP_NAME,
        PREFIX_AWARE if router == "prefixAware" else POWER_OF_TWO,
        2,
        timeout=900,
    )


def phase(head: RayHead, router: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    metrics = f"http://127.0.0.1:{head.metrics_port}/metrics"
    base = head.serve_url + "/v1"
    # Warm-up on a text of its own: first-request costs (tokenizer, code paths) out of the way.
    # vLLM's counters reach Ray's metrics port a few seconds late: wait until the warm-up is
    # counted, so it is not counted in the phase.
    start = total(replica_counters(metrics), REQUESTS)
    chat_turn(base, SERVED, Conversation(long_text(seed * 1000, 40)).next_turn("hi"), 4)
    before: dict[str, dict[str, float]] = poll(
        lambda: c if total(c := replica_counters(metrics), REQUESTS) > start else None,
        timeout=120,
        interval=2,
        what="the warm-up request in vLLM's counters",
    )
    chats = [
        Conversation(long_text(seed * 1000 + c + 1, args.system_words))
        for c in range(args.conversations)
    ]
    first_turn: list[float] = []
    later_turns: list[float] = []
    for turn in range(args.turns):
        for c, chat in enumerate(chats):
            question = f"turn {turn} of chat {c}: " + long_text(seed * 7919 + turn * 31 + c, 12)
            result = chat_turn(base, SERVED, chat.next_turn(question), args.max_tokens)
            chat.answered(result.text)
            (first_turn if turn == 0 else later_turns).append(result.ttft_s)
    sent = args.conversations * args.turns

    def counted() -> dict[str, dict[str, float]] | None:
        gained = delta(before, replica_counters(metrics))
        return gained if total(gained, REQUESTS) >= sent else None

    gained: dict[str, dict[str, float]] = poll(
        counted, timeout=180, interval=2, what="the phase's requests in vLLM's counters"
    )
    hits, queries = total(gained, PREFIX_HITS), total(gained, PREFIX_QUERIES)
    return {
        "router": router,
        "requests": sent,
        "requests_per_replica": sorted(int(v[REQUESTS]) for v in gained.values()),
        "prefix_cache_hit_rate": round(hits / queries, 3) if queries else None,
        "prefix_cache_hit_tokens": int(hits),
        "prefix_cache_query_tokens": int(queries),
        "ttft_s_turn1_median": round(statistics.median(first_turn), 4),
        "ttft_s_later_median": round(statistics.median(later_turns), 4),
        "ttft_s_later_p90": round(percentile(later_turns, 0.9), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=120)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    work = Path(tempfile.mkdtemp(prefix="k2t-bench-routing-"))
    model = build_tiny_k2think(work / "k2-think-tiny", seed=0)
    head = RayHead(num_cpus=8, resources={HEAD_RESOURCE: HEAD_RESOURCE_CAPACITY})
    results: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        try:
            head.start(timeout=600)
            head.start_serve_on_loopback(timeout=600)
        except BaseException:
            print(head.log_tail(), file=sys.stderr)
            raise
        for seed, router in enumerate(("prefixAware", "powerOfTwo"), start=1):
            deploy(head, model, router)
            results.append(phase(head, router, args, seed))
    finally:
        leftovers = head.stop()
        head.cleanup_files()
        if leftovers:
            print(f"stray processes after Ray shutdown: {leftovers}", file=sys.stderr)
    aware, two = results
    report = {
        "workload": vars(args),
        "phases": results,
        "ttft_later_turns_ratio_powerOfTwo_over_prefixAware": round(
            two["ttft_s_later_median"] / aware["ttft_s_later_median"], 2
        ),
        "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
