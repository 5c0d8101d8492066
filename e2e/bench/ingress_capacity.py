"""Ingress benchmark: CPU seconds the Serve LLM OpenAI ingress and the Serve proxy spend per
request and per thousand streamed tokens, from Ray's own per-actor process stats.

    flock /tmp/k2t-heavy.lock unshare -n bash -c 'ip link set lo up && \\
        .venv-dataplane/bin/python e2e/bench/ingress_capacity.py [--requests 40] [--tokens 256]'

(``make bench-ingress`` does exactly that.) One local Ray head (the data-plane suite's
``RayHead``), the tiny K2-Think-shaped model on vLLM's CPU backend, the Serve config the
operator renders for it (one model replica, the ingress as rendered). Two load phases through the
HTTP proxy on loopback, each at ``--concurrency`` streams:

  A. ``--requests`` streamed completions of 1 token: the per-request cost;
  B. ``--requests`` streamed completions of ``--tokens`` tokens (``ignore_eos``): per-request
     plus per-token cost.

CPU comes from the dashboard's ``/logical/actors`` (``processStats.cpuTimes``: the reporter
agent's psutil sample of each actor's worker process, refreshed every few seconds), read for
the ingress replica actor and the proxy actor before and after each phase (after waiting until
the sample has caught up with the phase's end, using /proc only as that sync point). Solving
``cpu = a * requests + b * tokens`` over the two phases gives ``a`` (CPU s per request) and
``b`` (CPU s per token); one ingress replica with one CPU then carries ``1 / b`` tokens/s of
long streams and ``1 / a`` requests/s of short ones. Prints one JSON document. A benchmark,
not a test: it asserts nothing about speed.

Caveat recorded with the figure (docs/benchmarks.md): the model replica shares the same two
cores, so the phases run at the token rate vLLM's CPU backend reaches here; Serve LLM batches
stream chunks every RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS (50 ms), so the per-token cost at a
GPU's per-stream rate is of the same order (a few tokens per chunk either way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

E2E = Path(__file__).resolve().parent.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(E2E / "dataplane"), str(ROOT / "operator")]

import httpx  # noqa: E402
from dataplane_config import (  # noqa: E402
    APP_NAME,
    HEAD_RESOURCE,
    HEAD_RESOURCE_CAPACITY,
    serve_config_for,
)
from dataplane_support import (  # noqa: E402
    OFFLINE_ENV,
    RayHead,
    dashboard_headers,
    put_serve_config_v2,
    wait_for_app,
)
from tiny_model import build_tiny_k2think  # noqa: E402

from harness.polling import wait_for  # noqa: E402

SERVED = "k2-think-tiny"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def actors(dashboard: str) -> list[dict[str, Any]]:
    response = httpx.get(dashboard + "/logical/actors", headers=dashboard_headers(), timeout=30)
    response.raise_for_status()
    data = response.json()["data"]["actors"]
    return [a for a in data.values() if a and a.get("state") == "ALIVE"]


def find(dashboard: str, marker: str) -> dict[str, Any]:
    """The one alive actor whose class name contains ``marker`` and has process stats."""

    def probe() -> dict[str, Any] | None:
        hits = [a for a in actors(dashboard) if marker in a.get("className", "") and a.get("pid")]
        hits = [a for a in hits if (a.get("processStats") or {}).get("cpuTimes")]
        return hits[0] if len(hits) == 1 else None

    found: dict[str, Any] = wait_for(f"actor {marker} with process stats", probe, timeout=120)
    return found


def ray_cpu(dashboard: str, actor_id: str) -> float:
    """user+system CPU seconds of an actor's process, as Ray's reporter agent last sampled."""
    for actor in actors(dashboard):
        if actor.get("actorId") == actor_id:
            times = (actor.get("processStats") or {}).get("cpuTimes") or {}
            return float(times.get("user", 0.0)) + float(times.get("system", 0.0))
    raise AssertionError(f"actor {actor_id} is gone")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def settled_cpu(dashboard: str, actor: dict[str, Any]) -> float:
    """Ray's sample once it has caught up with now (bounded wait; /proc is only the sync point)."""
    floor = proc_cpu(int(actor["pid"])) - 0.02

    def caught_up() -> float | None:
        value = ray_cpu(dashboard, actor["actorId"])
        return value if value >= floor else None

    settled: float = wait_for(
        "Ray's process stats to catch up", caught_up, timeout=60, done=lambda v: v is not None
    )
    return settled


def one_stream(base: str, max_tokens: int) -> tuple[int, int]:
    """(tokens, SSE chunks) of one streamed completion."""
    body = {
        "model": SERVED,
        "prompt": "Think step by step: what is 17 times 23?",
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = chunks = 0
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            usage = data.get("usage")
            if usage:
                tokens = int(usage.get("completion_tokens") or 0)
            if data.get("choices"):
                chunks += 1
    # Usage is the count vLLM reports; without it, chunks (>= 1 token each) bound it from below.
    return tokens or chunks, chunks


def phase(
    head: RayHead, watched: dict[str, dict[str, Any]], n: int, max_tokens: int, concurrency: int
) -> dict[str, Any]:
    before = {k: settled_cpu(head.dashboard_url, a) for k, a in watched.items()}
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        streams = list(pool.map(lambda _: one_stream(head.serve_url, max_tokens), range(n)))
    seconds = time.monotonic() - started
    after = {k: settled_cpu(head.dashboard_url, a) for k, a in watched.items()}
    tokens = sum(t for t, _ in streams)
    return {
        "requests": n,
        "max_tokens": max_tokens,
        "tokens": tokens,
        "sse_chunks": sum(c for _, c in streams),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        # What one stream received: Serve LLM sends a stream's tokens in batches every 50 ms, so
        # this says how many tokens one ingress hop carried (compare 40 tokens/s on a GPU).
        "tokens_per_second_per_stream": round(tokens / seconds / min(concurrency, n), 1),
        "cpu_seconds": {k: round(after[k] - before[k], 3) for k in watched},
    }


def solve(short: dict[str, Any], long: dict[str, Any], who: str) -> dict[str, float]:
    """cpu = a*requests + b*tokens from the two phases -> (a, b)."""
    r1, t1, c1 = short["requests"], short["tokens"], short["cpu_seconds"][who]
    r2, t2, c2 = long["requests"], long["tokens"], long["cpu_seconds"][who]
    det = r1 * t2 - r2 * t1
    b = (r1 * c2 - r2 * c1) / det
    a = (c1 - b * t1) / r1
    return {
        "cpu_s_per_request": round(a, 5),
        "cpu_s_per_1k_tokens": round(b * 1000, 4),
        "requests_per_s_per_cpu": round(1 / a, 1) if a > 0 else float("inf"),
        "tokens_per_s_per_cpu": round(1 / b) if b > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    work = Path(tempfile.mkdtemp(prefix="k2t-bench-ingress-"))
    model = build_tiny_k2think(work / "k2-think-tiny", seed=0)
    head = RayHead(num_cpus=8, resources={HEAD_RESOURCE: HEAD_RESOURCE_CAPACITY})
    try:
        try:
            # Generous: on 2 shared cores a head can take minutes to bring its dashboard up.
            head.start(timeout=600)
            head.start_serve_on_loopback(timeout=600)
        except BaseException:
            print(head.log_tail(), file=sys.stderr)
            raise
        config = serve_config_for(
            model,
            SERVED,
            min_replicas=1,
            max_replicas=1,
            initial_replicas=1,
            target_ongoing_requests=args.concurrency,
            max_ongoing_requests=4 * args.concurrency,
        )
        response = put_serve_config_v2(head.dashboard_url, config)
        assert response.status_code == 200, response.text
        wait_for_app(head.dashboard_url, APP_NAME, "RUNNING", timeout=900)
        watched = {
            "ingress": find(head.dashboard_url, "OpenAiIngress"),
            "proxy": find(head.dashboard_url, "ProxyActor"),
        }
        for _ in range(3):  # warm-up: tokenizer, code paths, connections
            one_stream(head.serve_url, 8)
        short = phase(head, watched, args.requests, 1, args.concurrency)
        long = phase(head, watched, args.requests, args.tokens, args.concurrency)
        result = {
            "method": "dashboard /logical/actors processStats.cpuTimes (user+system) deltas",
            "concurrency": args.concurrency,
            "phases": {"short": short, "long": long},
            "ingress": solve(short, long, "ingress"),
            "proxy": solve(short, long, "proxy"),
            "ingress_class": watched["ingress"]["className"],
            "proxy_class": watched["proxy"]["className"],
        }
        print(json.dumps(result, indent=2, sort_keys=True))
    finally:
        leftovers = head.stop()
        head.cleanup_files()
        if leftovers:
            print(f"stray processes after Ray shutdown: {leftovers}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
