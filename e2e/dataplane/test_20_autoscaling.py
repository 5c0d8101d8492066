"""Serve autoscaling of the LLM deployment: 1 -> 2 replicas under sustained load, back to 1 after.

The config asks for min 1, max 2, a target of 2 ongoing requests per replica and short delays;
eight concurrent long completions keep the ongoing count well above target until the second
replica (a second vLLM engine) is RUNNING. Bounded polling with generous limits: this checks the
behaviour, not how fast two shared cores get there.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import openai
import pytest
from dataplane_support import (
    PollTimeout,
    ServedApp,
    capture_status,
    deployment,
    get_serve_status,
    poll,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(1800)]

CONCURRENCY = 8
UPSCALE_TIMEOUT_S = float(os.environ.get("K2T_UPSCALE_TIMEOUT_S", "600"))
DOWNSCALE_TIMEOUT_S = float(os.environ.get("K2T_DOWNSCALE_TIMEOUT_S", "300"))


def _llm(data: dict[str, Any], app: str) -> dict[str, Any]:
    return deployment(data, app, "LLMServer")


def _running(data: dict[str, Any], app: str) -> int:
    return sum(1 for r in _llm(data, app)["replicas"] if r["state"] == "RUNNING")


async def _load(app: ServedApp, stop: asyncio.Event, results: list[str]) -> None:
    client = openai.AsyncOpenAI(
        base_url=app.openai_base_url, api_key=app.api_key, timeout=300, max_retries=0
    )

    async def one_stream_of_requests() -> None:
        while not stop.is_set():
            try:
                completion = await client.chat.completions.create(
                    model=app.served_name,
                    messages=[{"role": "user", "content": "Count slowly, step by step."}],
                    max_tokens=192,
                    extra_body={"ignore_eos": True},
                )
                results.append(completion.choices[0].finish_reason or "none")
            except openai.APIError as exc:
                results.append(f"error: {exc!r}"[:300])

    try:
        await asyncio.gather(*(one_stream_of_requests() for _ in range(CONCURRENCY)))
    finally:
        await client.close()


def test_scales_out_under_load_and_back_in(served_app: ServedApp, samples_dir: Any) -> None:
    dash = served_app.head.dashboard_url
    app = served_app.app

    # Start from one replica (a previous run of the load may still be draining).
    poll(
        lambda: (lambda d: _llm(d, app)["target_num_replicas"] == 1 and _running(d, app) == 1)(
            get_serve_status(dash)
        ),
        timeout=DOWNSCALE_TIMEOUT_S,
        what="one LLM replica before the load",
    )

    results: list[str] = []
    seen_statuses: list[str] = []

    async def drive() -> dict[str, Any]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(served_app, stop, results))
        deadline = time.monotonic() + UPSCALE_TIMEOUT_S
        captured_upscaling = False
        try:
            while True:
                await asyncio.sleep(3)
                if load.done():  # surface a crash of the load generator
                    load.result()
                data = await asyncio.to_thread(get_serve_status, dash)
                llm = _llm(data, app)
                seen_statuses.append(llm["status"])
                if llm["status"] == "UPSCALING" and not captured_upscaling:
                    capture_status("upscaling", data, samples_dir)
                    captured_upscaling = True
                if _running(data, app) >= 2:
                    return data
                if time.monotonic() > deadline:
                    raise PollTimeout(
                        f"no second RUNNING replica within {UPSCALE_TIMEOUT_S:.0f}s; "
                        f"statuses seen {sorted(set(seen_statuses))}; "
                        f"replicas {[r['state'] for r in llm['replicas']]}; "
                        f"completions so far {len(results)}"
                    )
        finally:
            stop.set()
            await asyncio.wait_for(load, timeout=600)

    scaled_out = asyncio.run(drive())
    capture_status("running_two_replicas", scaled_out, samples_dir)
    llm = _llm(scaled_out, app)
    assert llm["target_num_replicas"] == 2
    assert _running(scaled_out, app) == 2
    assert "UPSCALING" in seen_statuses
    errors = [r for r in results if r.startswith("error")]
    assert not errors, errors[:5]
    assert len(results) >= CONCURRENCY

    # Load is over: after the downscale delay Serve goes back to one replica.
    downscaling: dict[str, Any] = {}

    def back_to_one() -> dict[str, Any] | None:
        data = get_serve_status(dash)
        llm = _llm(data, app)
        if llm["status"] == "DOWNSCALING" and not downscaling:
            downscaling.update(data)
            capture_status("downscaling", data, samples_dir)
        one = llm["target_num_replicas"] == 1 and [r["state"] for r in llm["replicas"]] == [
            "RUNNING"
        ]
        return data if one else None

    scaled_in = poll(back_to_one, timeout=DOWNSCALE_TIMEOUT_S, what="scale-in to one replica")
    assert _llm(scaled_in, app)["status"] == "HEALTHY"

    # And the remaining replica serves.
    client = openai.OpenAI(
        base_url=served_app.openai_base_url, api_key=served_app.api_key, timeout=120
    )
    completion = client.chat.completions.create(
        model=served_app.served_name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert completion.choices[0].finish_reason in ("length", "stop")
