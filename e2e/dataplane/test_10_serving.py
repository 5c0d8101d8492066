"""The OpenAI endpoint Ray Serve LLM + vLLM (CPU) serves from the config, driven by real clients.

The official ``openai`` client does the talking; raw HTTP (httpx) checks what the client hides:
the SSE framing of a stream and the status codes of malformed requests.
"""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import openai
import pytest
from dataplane_support import (
    ServedApp,
    app_status,
    deployment,
    get_serve_status,
    operator_condition,
    operator_status,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(1200)]

MESSAGES = [{"role": "user", "content": "Is 7 a prime number?"}]


def _client(app: ServedApp) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=app.openai_base_url, api_key=app.api_key, timeout=120, max_retries=0
    )


def _text_of(message: Any) -> str:
    """Answer text, or reasoning text: the deepseek_r1 parser moves everything before
    ``</think>`` into ``reasoning``, and a random model seldom closes the block."""
    extra = getattr(message, "model_extra", None) or {}
    return (message.content or "") + (
        extra.get("reasoning") or extra.get("reasoning_content") or ""
    )


def test_application_is_running_with_one_llm_replica(served_app: ServedApp) -> None:
    data = served_app.running_status
    assert app_status(data, served_app.app) == "RUNNING"
    llm = deployment(data, served_app.app, "LLMServer")
    assert llm["status"] == "HEALTHY"
    assert [r["state"] for r in llm["replicas"]] == ["RUNNING"]
    # The config went in as rendered: Serve echoes it back.
    deployed = data["applications"][served_app.app]["deployed_app_config"]
    assert deployed["import_path"] == "ray.serve.llm:build_openai_app"
    # ... and Serve kept its loopback HTTP options despite the config's 0.0.0.0:8000.
    assert data["http_options"]["host"] == "127.0.0.1"


def test_operator_reads_the_live_status_as_serving(served_app: ServedApp) -> None:
    live = get_serve_status(served_app.head.dashboard_url)
    ready = operator_condition(live, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert operator_condition(live, "Degraded")["status"] == "False"
    assert operator_status(live)["phase"] == "Serving"


def test_rendered_args_pass_rays_own_llm_serving_args(
    served_app: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With vLLM importable (only here), Ray's LLMServingArgs checks the whole ``args`` block,
    including the API-key ingress class (importable from the ConfigMap's path in a pod)."""
    import yaml
    from dataplane_config import INGRESS_MODULE_DIR
    from ray.llm._internal.serve.core.ingress.builder import LLMServingArgs

    monkeypatch.syspath_prepend(str(INGRESS_MODULE_DIR))
    config = yaml.safe_load(served_app.serve_config_v2)
    parsed = LLMServingArgs.model_validate(config["applications"][0]["args"])
    # llm_configs is typed str | dict | LLMConfig; validation made each an LLMConfig.
    assert [cast(Any, c).model_id for c in parsed.llm_configs] == [served_app.served_name]
    ingress = cast(Any, parsed.ingress_cls_config).ingress_cls  # validated into the class
    assert ingress.__name__ == "ApiKeyOpenAiIngress"


def test_models_lists_the_served_name(served_app: ServedApp) -> None:
    models = _client(served_app).models.list()
    assert [m.id for m in models.data] == [served_app.served_name]
    raw = httpx.get(
        served_app.openai_base_url + "/models", headers=served_app.auth_headers, timeout=30
    )
    assert raw.status_code == 200
    assert raw.json()["data"][0]["id"] == served_app.served_name


def test_chat_completion_returns_text(served_app: ServedApp) -> None:
    completion = _client(served_app).chat.completions.create(
        model=served_app.served_name, messages=MESSAGES, max_tokens=24, temperature=0.0
    )
    choice = completion.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert _text_of(choice.message).strip()
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    # The chat template opened the reasoning block: user turn + "<|im_start|>assistant\n<think>\n".
    assert completion.usage.prompt_tokens >= 8


def test_streamed_completion_with_the_client(served_app: ServedApp) -> None:
    stream = _client(served_app).chat.completions.create(
        model=served_app.served_name, messages=MESSAGES, max_tokens=16, stream=True
    )
    pieces = []
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        pieces.append(_text_of(delta))
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces).strip()
    assert finish in ("length", "stop")


def test_stream_is_sse_ending_with_done(served_app: ServedApp) -> None:
    body = {"model": served_app.served_name, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    events = []
    with httpx.stream(
        "POST",
        served_app.openai_base_url + "/chat/completions",
        json=body,
        headers=served_app.auth_headers,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: "), line
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        pytest.param(None, b"{not json", id="invalid-json"),
        pytest.param({"model": "MODEL", "messages": "not a list"}, None, id="messages-not-a-list"),
        pytest.param({"model": "MODEL"}, None, id="messages-missing"),
        pytest.param(
            {"model": "MODEL", "messages": MESSAGES, "max_tokens": -5},
            None,
            id="negative-max-tokens",
        ),
        pytest.param(
            {"model": "MODEL", "messages": MESSAGES, "max_tokens": 100_000},
            None,
            id="longer-than-max-model-len",
        ),
        pytest.param({"model": "no-such-model", "messages": MESSAGES}, None, id="unknown-model"),
    ],
)
def test_malformed_request_gets_4xx_and_server_keeps_serving(
    served_app: ServedApp, body: dict[str, Any] | None, raw: bytes | None
) -> None:
    url = served_app.openai_base_url + "/chat/completions"
    if body is not None:
        payload = json.dumps(body).replace('"MODEL"', json.dumps(served_app.served_name))
        raw = payload.encode()
    response = httpx.post(
        url,
        content=raw,
        headers={"Content-Type": "application/json", **served_app.auth_headers},
        timeout=60,
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    error = response.json()
    message = error.get("error", {}).get("message") or error.get("message") or error.get("detail")
    assert message, error

    # Still serving, and still healthy.
    completion = _client(served_app).chat.completions.create(
        model=served_app.served_name, messages=MESSAGES, max_tokens=4
    )
    assert completion.choices[0].finish_reason in ("length", "stop")
    status = get_serve_status(served_app.head.dashboard_url)
    assert app_status(status, served_app.app) == "RUNNING"


def test_client_surfaces_4xx_as_typed_error(served_app: ServedApp) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _client(served_app).chat.completions.create(
            model=served_app.served_name, messages=MESSAGES, max_tokens=-1
        )
    assert 400 <= info.value.status_code < 500
