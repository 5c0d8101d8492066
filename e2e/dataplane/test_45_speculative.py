"""Speculative decoding for real on CPU vLLM 0.32 (#24).

* vLLM's own configuration (``EngineArgs.create_engine_config`` -> ``SpeculativeConfig``) accepts
  the engine arguments the operator renders for ``speculativeDecoding: {method: ngram}``, and
  refuses what the operator refuses (ngram lookup bounds, a draft's tensor parallelism), so the
  operator's refusals are vLLM's, said earlier and with the field;
* suffix decoding needs the arctic-inference package, which this image (like the CPU build)
  lacks: vLLM refuses it at engine start (docs/serving-path.md says so);
* served with ngram (a draft-free method), the tiny model answers at temperature 0 exactly as
  without speculation, and vLLM's counters show accepted speculative tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from dataplane_config import APP_NAME, fixed_serve_config_for
from dataplane_support import RayHead, poll, put_serve_config_v2
from routing_workload import (
    ACCEPTED,
    DRAFTS,
    POWER_OF_TWO,
    chat_turn,
    delta,
    replica_counters,
    total,
    wait_for_router,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(1800)]

SERVED = "k2-think-tiny-spec"
NGRAM = {"method": "ngram", "numSpeculativeTokens": 4, "promptLookupMax": 4, "promptLookupMin": 2}
DEPLOY_TIMEOUT_S = float(os.environ.get("K2T_DEPLOY_TIMEOUT_S", "600"))
#: Prompts whose answers repeat what they quote (where prompt lookup finds its n-grams).
PROMPTS = [
    "Repeat after me: one two three four five six seven eight, one two three four five six "
    "seven eight, one two three four five six seven eight.",
    "Copy this list: alpha beta gamma delta, alpha beta gamma delta, alpha beta gamma delta.",
]


def rendered_engine_kwargs(model_dir: Path, speculative: dict[str, Any] | None) -> dict[str, Any]:
    config = fixed_serve_config_for(model_dir, SERVED, replicas=1, speculative=speculative)
    llm = yaml.safe_load(config)["applications"][0]["args"]["llm_configs"][0]
    kwargs: dict[str, Any] = llm["engine_kwargs"]
    return kwargs


def vllm_engine_config(model_dir: Path, kwargs: dict[str, Any]) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model_dir), **kwargs).create_engine_config()


def test_vllm_accepts_the_rendered_ngram_config(tiny_model_dir: Path) -> None:
    kwargs = rendered_engine_kwargs(tiny_model_dir, NGRAM)
    assert kwargs["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 4,
    }
    config = vllm_engine_config(tiny_model_dir, kwargs)
    spec = config.speculative_config
    assert (spec.method, spec.num_speculative_tokens) == ("ngram", 4)
    assert (spec.prompt_lookup_min, spec.prompt_lookup_max) == (2, 4)


@pytest.mark.parametrize(
    ("speculative_config", "vllm_says"),
    [
        (
            {
                "method": "ngram",
                "num_speculative_tokens": 4,
                "prompt_lookup_min": 5,
                "prompt_lookup_max": 3,
            },
            "prompt_lookup_min=5 must be <= prompt_lookup_max=3",
        ),
        (
            {"method": "draft_model", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2},
            "cannot be other value than 1 or target model tensor_parallel_size",
        ),
    ],
)
def test_vllm_refuses_what_the_operator_refuses(
    tiny_model_dir: Path, speculative_config: dict[str, Any], vllm_says: str
) -> None:
    """The same combinations, offline: the operator refuses them before anything runs (unit
    tests: tests/test_speculative.py), vLLM refuses them when the engine starts."""
    kwargs = rendered_engine_kwargs(tiny_model_dir, None)
    if speculative_config["method"] == "draft_model":
        speculative_config = {**speculative_config, "model": str(tiny_model_dir)}
    with pytest.raises(Exception, match=vllm_says.replace("(", r"\(").replace(")", r"\)")):
        vllm_engine_config(tiny_model_dir, {**kwargs, "speculative_config": speculative_config})


def test_suffix_needs_arctic_inference(tiny_model_dir: Path) -> None:
    kwargs = rendered_engine_kwargs(tiny_model_dir, {"method": "suffix"})
    assert kwargs["speculative_config"] == {"method": "suffix"}
    with pytest.raises(ImportError, match="Arctic Inference is required"):
        vllm_engine_config(tiny_model_dir, kwargs)


def test_ngram_serves_the_same_text_with_accepted_tokens(
    ray_head: RayHead, tiny_model_dir: Path
) -> None:
    plain = yaml.safe_load(fixed_serve_config_for(tiny_model_dir, SERVED, replicas=1))
    ngram = yaml.safe_load(
        fixed_serve_config_for(tiny_model_dir, SERVED, replicas=1, speculative=NGRAM)
    )
    (spec_app,) = ngram["applications"]
    spec_app.update(name="ngram", route_prefix="/ngram")
    both = {**plain, "applications": [*plain["applications"], spec_app]}
    response = put_serve_config_v2(ray_head.dashboard_url, yaml.safe_dump(both))
    assert response.status_code == 200, response.text
    for app in (APP_NAME, "ngram"):
        # Serve's default router: the plain config replaced whatever ran before (routing tests).
        wait_for_router(ray_head.dashboard_url, app, POWER_OF_TWO, 1, DEPLOY_TIMEOUT_S)
    metrics = f"http://127.0.0.1:{ray_head.metrics_port}/metrics"
    before = replica_counters(metrics)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        without = chat_turn(ray_head.serve_url + "/v1", SERVED, messages, max_tokens=48)
        with_spec = chat_turn(ray_head.serve_url + "/ngram/v1", SERVED, messages, max_tokens=48)
        assert with_spec.text == without.text, (prompt, without.text, with_spec.text)

    def accepted() -> dict[str, dict[str, float]] | None:
        gained = delta(before, replica_counters(metrics))
        return gained if total(gained, ACCEPTED) > 0 else None

    gained: dict[str, dict[str, float]] = poll(
        accepted, timeout=120, interval=2, what="accepted speculative tokens in vLLM's counters"
    )
    print(
        f"ngram: {total(gained, ACCEPTED):.0f} of {total(gained, DRAFTS):.0f} draft tokens accepted"
    )
