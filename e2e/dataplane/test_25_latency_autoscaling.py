"""The latency-target policy on real Ray: a full KV cache under the old target scales out with it.

One load, two Serve configs the operator renders (``spec.autoscaling.policy``), deployed in turn
through the dashboard's REST API as KubeRay does, on the suite's Ray head:

1. ``latencyTarget`` (KV-cache ceiling 0.5, first-token target out of reach so that only the KV
   cache can trigger it): two concurrent completions with long, distinct prompts fill the
   replica's small KV cache (``num_gpu_blocks_override``) while the ongoing requests (2) stay
   under ``targetOngoingRequests`` (3). The operator's ``LLMServer`` reports the engine's KV
   usage, the operator's policy in Serve's controller asks for a second replica, and it runs.
2. ``ongoingRequests`` (Serve's default policy, same target, same cache, same load): the KV
   cache fills as well (vLLM's own gauge through Ray's metrics export), and Serve keeps one
   replica (its target stays 1) for three times the time the first phase's policy took to
   decide, counted from the load's start (at least 60 s): what is asserted is the decision,
   not the new replica's start, which is most of the first phase's reaction time.

Then the suite's shared application is put back for the tests after this file.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from dataplane_config import APP_NAME, serve_config_for
from dataplane_support import (
    ServedApp,
    delete_serve_applications,
    deployment,
    get_serve_status,
    poll,
    put_serve_config_v2,
    wait_for_app,
)

from harness.polling import Aborted, holds_for

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(2400)]

DEPLOY_TIMEOUT_S = float(os.environ.get("K2T_DEPLOY_TIMEOUT_S", "600"))
UPSCALE_TIMEOUT_S = float(os.environ.get("K2T_UPSCALE_TIMEOUT_S", "600"))

#: vLLM's CPU block size is 128 tokens: 24 blocks = 3,072 tokens of KV cache per replica.
KV_BLOCKS = 24
BLOCK_TOKENS = 128
PROMPT_TOKENS = 1100
OUTPUT_TOKENS = 256
STREAMS = 2
TARGET_ONGOING = 3
KV_CEILING = 0.5
#: Two requests hold about 2 x (1100 + 256) tokens: ~88% of the cache, well over the ceiling.
assert STREAMS * (PROMPT_TOKENS + OUTPUT_TOKENS) / (KV_BLOCKS * BLOCK_TOKENS) > KV_CEILING + 0.2
assert STREAMS < TARGET_ONGOING


def _config(app: ServedApp, policy: dict[str, Any]) -> str:
    return serve_config_for(
        app.model_dir,
        app.served_name,
        min_replicas=1,
        max_replicas=2,
        initial_replicas=1,
        target_ongoing_requests=TARGET_ONGOING,
        upscale_delay_s=5,
        downscale_delay_s=600,
        policy=policy,
        engine_extra_args={"num_gpu_blocks_override": KV_BLOCKS},
    )


def _llm(data: dict[str, Any]) -> dict[str, Any]:
    return deployment(data, APP_NAME, "LLMServer")


def _running(data: dict[str, Any]) -> int:
    return sum(1 for r in _llm(data)["replicas"] if r["state"] == "RUNNING")


def _redeploy(app: ServedApp, serve_config_v2: str) -> dict[str, Any]:
    """Replace the suite's application: delete, wait until gone, put, wait RUNNING."""
    dash = app.head.dashboard_url
    # Serve shuts itself down when its last application goes (test_30_broken_config.py).
    assert delete_serve_applications(dash).status_code == 200
    poll(
        lambda: not get_serve_status(dash).get("applications"),
        timeout=DEPLOY_TIMEOUT_S,
        what="no Serve applications",
    )
    # Restart Serve on loopback before the PUT, or it would come up on the config's 0.0.0.0:8000.
    app.head.start_serve_on_loopback()
    response = put_serve_config_v2(dash, serve_config_v2)
    assert response.status_code == 200, response.text
    return wait_for_app(
        dash, APP_NAME, "RUNNING", timeout=DEPLOY_TIMEOUT_S, fail_on=("DEPLOY_FAILED",)
    )


def kv_usage_from_ray_metrics(metrics_port: int, replicas: set[str]) -> float:
    """The highest ``ray_vllm_kv_cache_usage_perc`` (vLLM's gauge, through Ray's metrics export)
    among ``replicas`` (Serve replica ids: series of earlier replicas may linger)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    values = [
        float(m.group(2))
        for m in re.finditer(r"^ray_vllm_kv_cache_usage_perc\{([^}]*)\} ([0-9.eE+-]+)$", text, re.M)
        if any(f'ReplicaId="{replica}"' in m.group(1) for replica in replicas)
    ]
    return max(values, default=0.0)


def _replica_ids(data: dict[str, Any]) -> set[str]:
    return {str(r["replica_id"]) for r in _llm(data)["replicas"]}


async def _load(app: ServedApp, stop: asyncio.Event, results: list[str]) -> None:
    """``STREAMS`` clients, each sending one long distinct prompt after the other."""
    client = openai.AsyncOpenAI(
        base_url=app.openai_base_url, api_key=app.api_key, timeout=600, max_retries=0
    )
    rng = random.Random(25)

    async def one_client() -> None:
        while not stop.is_set():
            # Distinct token ids per request: no prefix-cache sharing between requests.
            prompt = [rng.randrange(10, 2000) for _ in range(PROMPT_TOKENS)]
            try:
                completion = await client.completions.create(
                    model=app.served_name,
                    prompt=prompt,
                    max_tokens=OUTPUT_TOKENS,
                    extra_body={"ignore_eos": True},
                )
                results.append(completion.choices[0].finish_reason or "none")
            except openai.APIError as exc:
                # Fail the test at once (``_under_load`` surfaces it), not after the poll's limit.
                raise AssertionError(f"a completion failed: {exc!r}"[:500]) from exc

    try:
        await asyncio.gather(*(one_client() for _ in range(STREAMS)))
    finally:
        await client.close()


def _under_load(app: ServedApp, body: Callable[[threading.Event], Any]) -> tuple[Any, list[str]]:
    """Run ``body`` (blocking, in a thread) while the load runs; stop the load after it.

    ``body`` gets an event set when the load has ended (failed): its probes raise ``Aborted``
    then, so a failed completion ends the test at once instead of at the poll's limit."""
    results: list[str] = []
    ended = threading.Event()

    async def drive() -> Any:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(app, stop, results))
        load.add_done_callback(lambda _: ended.set())
        try:
            work = asyncio.create_task(asyncio.to_thread(body, ended))
            done, _ = await asyncio.wait({work, load}, return_when=asyncio.FIRST_COMPLETED)
            if load in done:
                load.result()  # a crashed load generator fails the test here
            return await work
        finally:
            stop.set()
            await asyncio.wait_for(load, timeout=900)

    return asyncio.run(drive()), results


def test_kv_cache_full_scales_out_under_latency_target_and_not_under_ongoing_requests(
    served_app: ServedApp,
) -> None:
    dash = served_app.head.dashboard_url
    metrics_port = served_app.head.metrics_port
    latency = {"mode": "latencyTarget", "kvCacheCeiling": KV_CEILING, "ttftTargetSeconds": 600}
    assert "k2think_llm_server:LLMServer" in _config(served_app, latency)
    try:
        # 1. latencyTarget: the KV cache fills, the policy scales out.
        deployed = _redeploy(served_app, _config(served_app, latency))
        assert _llm(deployed)["target_num_replicas"] == 1
        seen_kv: list[float] = []
        decided: list[float] = []  # when Serve's target first said two replicas

        def scaled_out(ended: threading.Event) -> dict[str, Any] | None:
            if ended.is_set():
                raise Aborted("the load ended before the scale-out")
            data = get_serve_status(dash)
            seen_kv.append(kv_usage_from_ray_metrics(metrics_port, _replica_ids(data)))
            if not decided and _llm(data)["target_num_replicas"] >= 2:
                decided.append(time.monotonic() - started)
            return data if _running(data) >= 2 else None

        started = time.monotonic()
        data, results = _under_load(
            served_app,
            lambda ended: poll(
                lambda: scaled_out(ended), timeout=UPSCALE_TIMEOUT_S, interval=3, what="2nd replica"
            ),
        )
        reaction_s = time.monotonic() - started
        assert _llm(data)["target_num_replicas"] == 2
        decision_s = decided[0] if decided else reaction_s
        assert max(seen_kv) > KV_CEILING, seen_kv
        assert not [r for r in results if r.startswith("error")], results[:5]

        # 2. ongoingRequests: same cache, same load, the KV cache fills, Serve keeps one replica.
        _redeploy(served_app, _config(served_app, {"mode": "ongoingRequests"}))
        # From the moment the KV cache is over the ceiling: three times what the operator's
        # policy took to decide from the load's start (which includes filling the cache), and
        # at least 60 s (two of Serve's 30 s look-back windows).
        window_s = max(60.0, 3 * decision_s)
        full: list[float] = []

        def kv_now() -> float:
            return kv_usage_from_ray_metrics(metrics_port, _replica_ids(get_serve_status(dash)))

        def stays_at_one_while_full(ended: threading.Event) -> None:
            def full_now() -> bool:
                if ended.is_set():
                    raise Aborted("the load ended")
                return kv_now() > KV_CEILING

            poll(
                full_now,
                timeout=UPSCALE_TIMEOUT_S,
                interval=3,
                what="KV cache over the ceiling under the default policy",
            )

            def one_replica() -> bool:
                assert not ended.is_set(), "the load ended"
                data = get_serve_status(dash)
                full.append(kv_usage_from_ray_metrics(metrics_port, _replica_ids(data)))
                llm = _llm(data)
                return llm["target_num_replicas"] == 1 and len(llm["replicas"]) == 1

            holds_for("one replica under the default policy", one_replica, window_s, interval=3)

        _, results = _under_load(served_app, stays_at_one_while_full)
        assert max(full) > KV_CEILING, full
        assert not [r for r in results if r.startswith("error")], results[:5]
        print(
            f"latencyTarget: 2 replicas decided {decision_s:.0f}s and the 2nd RUNNING "
            f"{reaction_s:.0f}s after the load started "
            f"(KV usage seen up to {max(seen_kv):.2f}); ongoingRequests: 1 replica for "
            f"{window_s:.0f}s with KV usage up to {max(full):.2f}"
        )
    finally:
        # The suite's shared application, for the tests after this file.
        _redeploy(served_app, served_app.serve_config_v2)
