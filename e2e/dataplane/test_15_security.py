"""The locks the operator renders hold on real Ray (issue #16).

The session's head runs as KubeRay runs the operator's head pod with ``authOptions.mode: token``
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from the Secret), and the served app is the operator's
render for a deployment with ``spec.serving.apiKeysSecret`` (the API-key ingress, keys in a
directory as the kubelet mounts a Secret). Each lock is shown both ways: refused without the
credential, accepted with it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from dataplane_support import SERVE_API, RayHead, ServedApp, poll

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(1200)]

WRONG = "Bearer not-the-token"
JOB_MARKER = "k2t-job-ran-with-the-token"
MESSAGES = [{"role": "user", "content": "Is 7 a prime number?"}]


def _ray_headers(token: str) -> dict[str, str]:
    # What KubeRay's dashboard client sends (dashboard_httpclient.go).
    return {"x-ray-authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------ the dashboard


def test_dashboard_refuses_calls_without_the_token(served_app: ServedApp, ray_token: str) -> None:
    url = served_app.head.dashboard_url + SERVE_API
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": WRONG}, timeout=30).status_code == 403
    assert httpx.get(url, headers={"x-ray-authorization": WRONG}, timeout=30).status_code == 403
    # KubeRay's way to deploy serveConfigV2, without the token: refused, nothing changes.
    put = httpx.put(url, json={"applications": []}, timeout=30)
    assert put.status_code == 401
    accepted = httpx.get(url, headers=_ray_headers(ray_token), timeout=30)
    assert accepted.status_code == 200
    assert accepted.json()["applications"][served_app.app]["status"] == "RUNNING"
    # A standard Authorization header carries the token too (Ray's CLI and SDK send that).
    bearer = httpx.get(url, headers={"Authorization": f"Bearer {ray_token}"}, timeout=30)
    assert bearer.status_code == 200


def test_job_submission_needs_the_token(served_app: ServedApp, ray_token: str) -> None:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = served_app.head.dashboard_url + "/api/jobs/"
    body = {"entrypoint": "python -c \"print('should never run')\""}
    assert httpx.post(jobs, json=body, timeout=30).status_code == 401
    assert (
        httpx.post(jobs, json=body, headers={"Authorization": WRONG}, timeout=30).status_code == 403
    )
    listed = httpx.get(jobs, headers=_ray_headers(ray_token), timeout=30)
    assert listed.status_code == 200
    # The refused ones never existed (the list also holds drivers such as `serve start`'s).
    assert [j for j in listed.json() if j.get("submission_id")] == []

    # Without the cluster's token Ray's own client is refused: "Missing" on a clean machine,
    # "Invalid" where any local ray.init() has left a token of its own in ~/.ray/auth_token,
    # which Ray's client then sends (ray/_private/authentication/authentication_token_setup.py).
    with pytest.raises(AuthenticationError, match=r"(Missing|Invalid) authentication token"):
        JobSubmissionClient(served_app.head.dashboard_url)
    # The token goes in the standard Authorization header: Ray's client adds its own
    # Authorization header (from ~/.ray/auth_token or RAY_AUTH_TOKEN) unless the caller sent one,
    # and the dashboard reads Authorization before X-Ray-Authorization
    # (ray/_private/authentication/http_token_authentication.py), so a stray local token would
    # shadow KubeRay's header here: CI met exactly that.
    client = JobSubmissionClient(
        served_app.head.dashboard_url, headers={"Authorization": f"Bearer {ray_token}"}
    )
    job_id = client.submit_job(entrypoint=f"python -c \"print('{JOB_MARKER}')\"")

    def finished() -> JobStatus | None:
        status = client.get_job_status(job_id)
        return status if status.is_terminal() else None

    status = poll(finished, timeout=300, interval=2.0, what=f"job {job_id} to finish")
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)
    assert JOB_MARKER in client.get_job_logs(job_id)


# ------------------------------------------------------------------------------ the GCS


def _connect(head: RayHead, token: str) -> subprocess.CompletedProcess[str]:
    """A driver process joining the cluster through the GCS, holding ``token``."""
    env = head.process_env()
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = token
    script = (
        "import ray\n"
        f"ray.init(address={head.gcs_address!r}, logging_level='ERROR')\n"
        "print('joined', ray.cluster_resources().get('CPU'))\n"
    )
    return subprocess.run(
        [str(head.bin_dir / "python"), "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=str(head.temp_dir),
    )


def test_gcs_refuses_a_driver_with_a_wrong_token(served_app: ServedApp, ray_token: str) -> None:
    refused = _connect(served_app.head, "not-the-token")
    assert refused.returncode != 0, refused.stdout
    assert "joined" not in refused.stdout
    output = (refused.stdout + refused.stderr).lower()
    assert "auth" in output or "unauthenticated" in output, output[-3000:]
    joined = _connect(served_app.head, ray_token)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "joined" in joined.stdout


# ------------------------------------------------------------------------------ the endpoint


def test_chat_completion_needs_an_api_key(served_app: ServedApp) -> None:
    base = served_app.openai_base_url
    body = {"model": served_app.served_name, "messages": MESSAGES, "max_tokens": 4}
    missing = httpx.post(base + "/chat/completions", json=body, timeout=60)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(base + "/models", timeout=60).status_code == 401
    wrong = httpx.post(
        base + "/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-not-a-key"},
        timeout=60,
    )
    assert wrong.status_code == 401

    # OpenAI's own client: AuthenticationError without a valid key, an answer with one.
    stranger = openai.OpenAI(base_url=base, api_key="sk-not-a-key", timeout=120, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(
            model=served_app.served_name, messages=MESSAGES, max_tokens=4
        )
    client = openai.OpenAI(base_url=base, api_key=served_app.api_key, timeout=120, max_retries=0)
    answer = client.chat.completions.create(
        model=served_app.served_name, messages=MESSAGES, max_tokens=4
    )
    assert answer.choices and answer.usage is not None and answer.usage.completion_tokens > 0


def test_api_keys_rotate_without_a_restart(served_app: ServedApp, api_keys_dir: Path) -> None:
    """Adding a key to the Secret (a file in the mounted directory) is enough; so is removing one."""
    base = served_app.openai_base_url + "/models"
    new_key = "sk-k2t-rotated-7d1e2b"
    (api_keys_dir / "team-b").write_text(new_key)
    try:
        poll(
            lambda: (
                httpx.get(
                    base, headers={"Authorization": f"Bearer {new_key}"}, timeout=30
                ).status_code
                == 200
            ),
            timeout=120,
            what="the new key to be accepted",
        )
    finally:
        (api_keys_dir / "team-b").unlink()
    poll(
        lambda: (
            httpx.get(base, headers={"Authorization": f"Bearer {new_key}"}, timeout=30).status_code
            == 401
        ),
        timeout=120,
        what="the removed key to be refused",
    )
    assert httpx.get(base, headers=served_app.auth_headers, timeout=30).status_code == 200


def test_api_keys_never_reach_the_logs(served_app: ServedApp) -> None:
    head = served_app.head
    assert head.temp_dir is not None
    leaked: list[str] = []
    for root, _, files in os.walk(head.temp_dir):
        for name in files:
            path = Path(root) / name
            try:
                text = path.read_bytes()
            except OSError:
                continue
            for secret in (served_app.api_key, "sk-not-a-key", "sk-k2t-rotated-7d1e2b"):
                if secret.encode() in text:
                    leaked.append(f"{secret[:6]}... in {path}")
    if head.log_path is not None and served_app.api_key in head.log_tail(10**7):
        leaked.append(f"key in {head.log_path}")
    assert leaked == []
