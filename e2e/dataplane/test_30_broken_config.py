"""A config that Kubernetes would store happily but that cannot deploy: a model path that is not
there. Serve must report DEPLOY_FAILED with the reason, both as an update of the running app and as
a fresh deploy; the captured JSON feeds the operator's status logic (tests/fixtures/serve_status).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from dataplane_config import serve_config_for
from dataplane_support import (
    ServedApp,
    capture_status,
    delete_serve_applications,
    deployment,
    get_serve_status,
    operator_condition,
    poll,
    put_serve_config_v2,
    wait_for_app,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(1800)]

MISSING_MODEL = Path("/nonexistent/k2-think-tiny")
FAIL_TIMEOUT_S = float(os.environ.get("K2T_FAIL_TIMEOUT_S", "600"))


def _assert_failed_for_the_model_path(data: dict[str, Any], app: str) -> None:
    entry = data["applications"][app]
    assert entry["status"] == "DEPLOY_FAILED"
    llm = deployment(data, app, "LLMServer")
    assert llm["status"] == "DEPLOY_FAILED"
    assert llm["status_trigger"] == "REPLICA_STARTUP_FAILED"
    # The reason names the bad source (vLLM takes a path that does not exist for a hub repo id).
    assert str(MISSING_MODEL) in llm["message"]


def test_update_to_a_missing_model_fails_to_deploy(served_app: ServedApp, samples_dir: Any) -> None:
    dash = served_app.head.dashboard_url
    broken = serve_config_for(MISSING_MODEL, served_app.served_name)
    response = put_serve_config_v2(dash, broken)
    assert response.status_code == 200, response.text  # accepted: the failure comes later

    first: dict[str, Any] = {}

    def keep_updating(data: dict[str, Any]) -> None:
        entry = (data.get("applications") or {}).get(served_app.app)
        if not first and entry and entry["status"] == "DEPLOYING":
            first.update(data)
            capture_status("updating", data, samples_dir)

    failed = wait_for_app(
        dash, served_app.app, "DEPLOY_FAILED", timeout=FAIL_TIMEOUT_S, on_sample=keep_updating
    )
    capture_status("update_failed", failed, samples_dir)
    _assert_failed_for_the_model_path(failed, served_app.app)
    # The operator's status logic on what Ray really reported.
    if first:
        ready = operator_condition(first, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "ApplicationDeploying")
    degraded = operator_condition(failed, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplicationDeployFailed")
    assert str(MISSING_MODEL) in degraded["message"]
    assert operator_condition(failed, "Ready")["status"] == "False"


def test_fresh_deploy_of_a_missing_model_fails(served_app: ServedApp, samples_dir: Any) -> None:
    dash = served_app.head.dashboard_url
    # Remove everything; Serve shuts itself down when its last application goes.
    assert delete_serve_applications(dash).status_code == 200
    empty = poll(
        lambda: (lambda d: d if not d.get("applications") else None)(get_serve_status(dash)),
        timeout=300,
        what="no Serve applications",
    )
    capture_status("no_applications", empty, samples_dir)
    # Restart Serve on loopback before the PUT, or it would come up on the config's 0.0.0.0:8000.
    served_app.head.start_serve_on_loopback()

    response = put_serve_config_v2(dash, serve_config_for(MISSING_MODEL, served_app.served_name))
    assert response.status_code == 200, response.text
    failed = wait_for_app(dash, served_app.app, "DEPLOY_FAILED", timeout=FAIL_TIMEOUT_S)
    capture_status("deploy_failed", failed, samples_dir)
    _assert_failed_for_the_model_path(failed, served_app.app)


def test_invalid_serve_config_is_refused_at_put(served_app: ServedApp) -> None:
    """Outer-schema errors come back at once as 400 (ServeDeploySchema), nothing deploys."""
    dash = served_app.head.dashboard_url
    bad = "applications:\n- name: llm\n  import_path: ray.serve.llm:build_openai_app\n  route_prefix: 7\n  bogus_key: 1\n"
    response = put_serve_config_v2(dash, bad)
    assert response.status_code == 400
    assert "bogus_key" in response.text or "route_prefix" in response.text
