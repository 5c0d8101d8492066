"""Multi-turn chat traffic and vLLM's per-replica counters, for the routing proof
(test_40_routing.py) and the routing benchmark (e2e/bench/routing.py).

vLLM's engine metrics reach Ray's metrics export port (Ray Serve LLM's ``log_engine_metrics``,
on by default) as ``ray_vllm_*`` series labelled with the Serve replica (``ReplicaId``, vLLM's
``v1/metrics/ray_wrappers.py``). Counting them per replica before and after a phase says where
the phase's requests went and how many prompt tokens vLLM's prefix cache answered there: no
instrumentation of our own in the request path.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from dataplane_support import deployment, get_serve_status, poll
from prometheus_client.parser import text_string_to_metric_families

#: The counters read per replica (names as Ray exports vLLM's ``vllm:*`` counters).
REQUESTS = "ray_vllm_request_success"
PREFIX_HITS = "ray_vllm_prefix_cache_hits"
PREFIX_QUERIES = "ray_vllm_prefix_cache_queries"
ACCEPTED = "ray_vllm_spec_decode_num_accepted_tokens"
DRAFTS = "ray_vllm_spec_decode_num_draft_tokens"
COUNTERS = (REQUESTS, PREFIX_HITS, PREFIX_QUERIES, ACCEPTED, DRAFTS)

#: The class names Serve reports in a deployment's request_router_config.
PREFIX_AWARE = "PrefixCacheAffinityRouter"
POWER_OF_TWO = "PowerOfTwoChoicesRequestRouter"

_WORDS = [
    "reason",
    "step",
    "proof",
    "lemma",
    "graph",
    "prime",
    "sum",
    "bound",
    "limit",
    "vector",
    "matrix",
    "integral",
    "series",
    "triangle",
    "circle",
    "angle",
    "root",
    "factor",
    "divisor",
    "modulo",
    "parity",
    "induction",
    "case",
    "contradiction",
]


def long_text(seed: int, words: int) -> str:
    """Deterministic filler text: one seed, one text (a conversation's own history)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(words))


@dataclass
class Conversation:
    """A chat whose every turn resends the whole history (what reasoning clients do)."""

    system: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def next_turn(self, question: str) -> list[dict[str, str]]:
        self.messages.append({"role": "user", "content": question})
        return [{"role": "system", "content": self.system}, *self.messages]

    def answered(self, answer: str) -> None:
        self.messages.append({"role": "assistant", "content": answer})


@dataclass(frozen=True)
class Turn:
    ttft_s: float
    text: str


def chat_turn(
    base_url: str, model: str, messages: list[dict[str, str]], max_tokens: int, timeout: float = 300
) -> Turn:
    """One streamed chat completion at temperature 0: time to the first token, and the text."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    start = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or delta.get("reasoning") or ""
                if piece and first is None:
                    first = time.perf_counter()
                parts.append(piece)
    end = time.perf_counter()
    return Turn(ttft_s=(first or end) - start, text="".join(parts))


def replica_counters(metrics_url: str) -> dict[str, dict[str, float]]:
    """``{ReplicaId: {counter: value}}`` from Ray's metrics export port (summed over labels)."""
    text = httpx.get(metrics_url, timeout=30).text
    result: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = sample.name.removesuffix("_total")
            replica = sample.labels.get("ReplicaId", "")
            if base not in COUNTERS or base == sample.name or not replica:
                continue
            slot = result.setdefault(replica, dict.fromkeys(COUNTERS, 0.0))
            slot[base] += sample.value
    return result


def delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per replica, what each counter gained between two readings."""
    out: dict[str, dict[str, float]] = {}
    for replica, values in after.items():
        old = before.get(replica, {})
        out[replica] = {k: v - old.get(k, 0.0) for k, v in values.items()}
    return out


def total(counters: dict[str, dict[str, float]], name: str) -> float:
    return sum(v.get(name, 0.0) for v in counters.values())


def percentile(values: Iterable[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def wait_for_router(
    dashboard_url: str, app: str, router: str, replicas: int, timeout: float
) -> dict[str, Any]:
    """Wait until Serve runs ``app``'s LLM deployment with ``router`` (a class name, as Serve's
    status reports the deployed request_router_config) and ``replicas`` RUNNING replicas.

    Serve's own status is the proof that the router the operator rendered is the one running;
    waiting on it (not only on the app's RUNNING) also skips the moment right after a PUT when
    the previous version still reports RUNNING.
    """

    def probe() -> dict[str, Any] | None:
        data = get_serve_status(dashboard_url)
        entry = (data.get("applications") or {}).get(app)
        if entry is None or entry["status"] != "RUNNING":
            if entry is not None and entry["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise AssertionError(f"{app} went {entry['status']}: {entry.get('message')}")
            return None
        llm = deployment(data, app, "LLMServer")
        deployed = (llm.get("deployment_config") or {}).get("request_router_config") or {}
        running = [r for r in llm.get("replicas") or [] if r["state"] == "RUNNING"]
        if not str(deployed.get("request_router_class", "")).endswith(router):
            return None
        return data if len(running) == replicas and len(llm["replicas"]) == replicas else None

    result: dict[str, Any] = poll(probe, timeout=timeout, interval=3, what=f"{app} on {router}")
    return result
