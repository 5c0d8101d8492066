"""An edit of the autoscaling settings reaches the running replicas without replacing them.

The operator renders a deployment's sizing (bounds, delays, target, ``max_ongoing_requests``,
graceful shutdown) as Serve's per-deployment overrides, not inside the application's ``args``,
because Serve hashes ``args`` into every deployment's code version and replaces every replica
of a changed one, reloading the weights (``deploy_utils.get_app_code_version``). Here the edit
goes the way KubeRay sends it (the whole ``serveConfigV2`` PUT to the dashboard): Serve must
report the new values for both deployments while the LLM and ingress replicas keep their IDs
and the model keeps answering; then the original config comes back the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from dataplane_config import APP_NAME, serve_config_for
from dataplane_support import (
    ServedApp,
    deployment,
    get_serve_status,
    poll,
    put_serve_config_v2,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(900)]

APPLY_TIMEOUT_S = 180.0


def _replica_ids(data: dict[str, Any], prefix: str) -> dict[str, str]:
    return {
        r["replica_id"]: r["state"] for r in deployment(data, APP_NAME, prefix).get("replicas", [])
    }


def _steady(dash: str) -> dict[str, Any] | None:
    """Serve's status once the app is RUNNING with one RUNNING replica of each deployment."""
    data = get_serve_status(dash)
    app = (data.get("applications") or {}).get(APP_NAME) or {}
    if app.get("status") != "RUNNING":
        return None
    for prefix in ("LLMServer", "ApiKeyOpenAiIngress"):
        if list(_replica_ids(data, prefix).values()) != ["RUNNING"]:
            return None
    return data


def _reported(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    config: dict[str, Any] = deployment(data, APP_NAME, prefix)["deployment_config"]
    return config


def _applied(dash: str, want_llm: dict[str, Any], want_ingress: dict[str, Any]) -> Any:
    def probe() -> dict[str, Any] | None:
        data = get_serve_status(dash)
        llm, ingress = _reported(data, "LLMServer"), _reported(data, "ApiKeyOpenAiIngress")
        for reported, want in ((llm, want_llm), (ingress, want_ingress)):
            auto = reported.get("autoscaling_config") or {}
            if any(auto.get(k) != v for k, v in want.get("autoscaling_config", {}).items()):
                return None
            if reported.get("max_ongoing_requests") != want["max_ongoing_requests"]:
                return None
        return data

    return poll(probe, timeout=APPLY_TIMEOUT_S, interval=2, what="Serve reporting the edit")


def _overrides(config_v2: str) -> dict[str, dict[str, Any]]:
    app = yaml.safe_load(config_v2)["applications"][0]
    return {
        ("llm" if d["name"].startswith("LLMServer:") else "ingress"): d for d in app["deployments"]
    }


def _args(config_v2: str) -> dict[str, Any]:
    args: dict[str, Any] = yaml.safe_load(config_v2)["applications"][0]["args"]
    return args


def _answers(app: ServedApp) -> None:
    client = openai.OpenAI(
        base_url=app.openai_base_url, api_key=app.api_key, timeout=120, max_retries=0
    )
    reply = client.chat.completions.create(
        model=app.served_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message is not None


def test_an_autoscaling_edit_keeps_the_running_replicas(
    served_app: ServedApp, cached_model_dir: Path, api_keys_dir: Path
) -> None:
    dash = served_app.head.dashboard_url
    before = poll(lambda: _steady(dash), timeout=600, interval=3, what="one replica of each")
    llm_ids = _replica_ids(before, "LLMServer")
    ingress_ids = _replica_ids(before, "ApiKeyOpenAiIngress")

    # What the operator renders after a user edits maxReplicas, both delays and the cap.
    edited = serve_config_for(
        cached_model_dir,
        served_app.served_name,
        api_keys_dir=api_keys_dir,
        max_replicas=3,
        upscale_delay_s=7,
        downscale_delay_s=25,
        max_ongoing_requests=12,
    )
    original = served_app.serve_config_v2
    assert _args(edited) == _args(original)  # the edit is overrides only
    want = _overrides(edited)
    assert want["llm"]["autoscaling_config"]["max_replicas"] == 3
    assert want != _overrides(original)

    response = put_serve_config_v2(dash, edited)
    assert response.status_code == 200, response.text
    _applied(dash, want["llm"], want["ingress"])
    after = poll(lambda: _steady(dash), timeout=APPLY_TIMEOUT_S, interval=2, what="RUNNING")
    assert _reported(after, "LLMServer")["autoscaling_config"]["max_replicas"] == 3
    assert _replica_ids(after, "LLMServer") == llm_ids, "the edit replaced the LLM replica"
    assert _replica_ids(after, "ApiKeyOpenAiIngress") == ingress_ids
    assert _reported(after, "LLMServer")["autoscaling_config"]["downscale_delay_s"] == 25
    _answers(served_app)

    # And back, the same way (the next tests expect the original settings).
    response = put_serve_config_v2(dash, original)
    assert response.status_code == 200, response.text
    back = _overrides(original)
    _applied(dash, back["llm"], back["ingress"])
    # Serve says DEPLOYING while it applies even a lightweight update; wait for RUNNING.
    restored = poll(lambda: _steady(dash), timeout=APPLY_TIMEOUT_S, interval=2, what="RUNNING")
    assert _replica_ids(restored, "LLMServer") == llm_ids
    assert _replica_ids(restored, "ApiKeyOpenAiIngress") == ingress_ids
    _answers(served_app)
