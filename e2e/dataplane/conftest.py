"""Fixtures of the data-plane suite (pytest marker ``dataplane``).

Run it with ``make test-dataplane``: that installs .venv-dataplane (e2e/dataplane/install.sh) and
runs this directory with it. One local Ray head serves the whole session; one Serve application
(the tiny K2-Think-shaped model on vLLM's CPU backend) is deployed once and shared by the tests in
file order: serving -> autoscaling -> broken configs -> shutdown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
_NEEDED = ("ray", "vllm", "openai", "httpx", "torch", "transformers", "tokenizers")
_missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]

if _missing:
    if os.environ.get("K2T_DATAPLANE_REQUIRED") == "1":
        raise pytest.UsageError(
            f"data-plane suite: {', '.join(_missing)} not importable from {sys.executable}; "
            "run e2e/dataplane/install.sh and use .venv-dataplane/bin/python"
        )
    # Collected from another venv (e.g. a plain `pytest e2e`): nothing here can run there.
    collect_ignore_glob = ["test_*.py"]
else:
    from dataplane_config import (
        APP_NAME,
        HEAD_RESOURCE,
        HEAD_RESOURCE_CAPACITY,
        INGRESS_MODULE_DIR,
        serve_config_for,
    )
    from dataplane_support import (
        OFFLINE_ENV,
        RayHead,
        ServedApp,
        capture_status,
        put_serve_config_v2,
        wait_for_app,
    )
    from tiny_model import build_tiny_k2think

SERVED_NAME = "k2-think-tiny"
#: The key the suite's endpoint accepts (a test value; real keys live only in a Secret).
API_KEY = "sk-k2t-dataplane-0f3c9a"

# Generous bounds: this is a behaviour test on 2 shared cores, not a benchmark.
DEPLOY_TIMEOUT_S = float(os.environ.get("K2T_DEPLOY_TIMEOUT_S", "600"))


@pytest.fixture(scope="session", autouse=True)
def _offline_env() -> Iterator[None]:
    """No model hub, no telemetry: for this process and everything it starts."""
    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_k2think(tmp_path_factory.mktemp("model") / "k2-think-tiny", seed=0)


@pytest.fixture(scope="session")
def cache_fill(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model filled into a model-cache directory by the real fill code path: the
    command the cache's Job runs (``python -m k2think_operator.cachefill``), from a ``file://``
    source, as a separate process. The suite's application serves from the result (offline)."""
    root = tmp_path_factory.mktemp("model-cache")
    report = root / "termination-log"
    subprocess.run(
        [
            sys.executable, "-m", "k2think_operator.cachefill",
            "--source", f"file://{tiny_model_dir}", "--revision", "r1",
            "--root", str(root), "--termination-log", str(report),
        ],
        check=True,
        timeout=300,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(report.read_text())
    result["root"] = str(root)
    return result


@pytest.fixture(scope="session")
def cached_model_dir(cache_fill: dict[str, Any]) -> Path:
    return Path(cache_fill["root"]) / str(cache_fill["path"])


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve_status")


@pytest.fixture(scope="session")
def ray_token() -> str:
    """The Ray token, made by the operator's own generator (what goes into <name>-ray-token)."""
    from k2think_operator.deployment.supporting import new_ray_token

    return new_ray_token()


@pytest.fixture(scope="session")
def api_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the kubelet mounts from the API-key Secret: one file per key."""
    directory = tmp_path_factory.mktemp("api-keys")
    (directory / "team-a").write_text(API_KEY + "\n")
    return directory


@pytest.fixture(scope="session")
def ray_head(ray_token: str) -> Iterator[RayHead]:
    """A local Ray head: dashboard on 127.0.0.1, 8 logical CPUs on 2 cores, Serve on loopback.

    Configured as KubeRay configures the operator's head pod: Ray token auth on (RAY_AUTH_MODE,
    RAY_AUTH_TOKEN) and the API-key ingress module on PYTHONPATH (the operator's ConfigMap,
    mounted at INGRESS_PYTHONPATH in a pod; here the operator's package data directory).
    """
    head = RayHead(
        num_cpus=8,
        resources={HEAD_RESOURCE: HEAD_RESOURCE_CAPACITY},
        auth_token=ray_token,
        env={"PYTHONPATH": str(INGRESS_MODULE_DIR)},
    )
    try:
        head.start()
        head.start_serve_on_loopback()
    except BaseException:
        head.stop()
        raise
    yield head
    leftovers = head.stop()
    head.cleanup_files()
    if leftovers:
        pytest.fail(f"stray processes after Ray shutdown: {[str(p) for p in leftovers]}")


@pytest.fixture(scope="session")
def served_app(
    ray_head: RayHead, cached_model_dir: Path, samples_dir: Path, api_keys_dir: Path
) -> ServedApp:
    """The tiny model deployed through the dashboard's Serve REST API and RUNNING, behind the
    operator's API-key ingress, served from its model-cache directory (what a deployment with
    spec.model.cacheRef loads) with the hub off (``OFFLINE_ENV``: HF_HUB_OFFLINE=1)."""
    serve_config_v2 = serve_config_for(cached_model_dir, SERVED_NAME, api_keys_dir=api_keys_dir)
    response = put_serve_config_v2(ray_head.dashboard_url, serve_config_v2)
    assert response.status_code == 200, response.text
    first: dict[str, Any] = {}

    def keep_first_deploying(data: dict[str, Any]) -> None:
        entry = (data.get("applications") or {}).get(APP_NAME)
        if not first and entry and entry["status"] == "DEPLOYING":
            first.update(data)
            capture_status("deploying", data, samples_dir)

    running = wait_for_app(
        ray_head.dashboard_url,
        APP_NAME,
        "RUNNING",
        timeout=DEPLOY_TIMEOUT_S,
        fail_on=("DEPLOY_FAILED", "UNHEALTHY"),
        on_sample=keep_first_deploying,
    )
    capture_status("running", running, samples_dir)
    return ServedApp(
        ray_head, APP_NAME, SERVED_NAME, cached_model_dir, serve_config_v2, running, API_KEY
    )
