"""What we render is what Ray Serve accepts: checked with Ray's own schemas (ray[serve]==2.60.0).

KubeRay stores serveConfigV2 as an opaque string, so nothing on the Kubernetes side would catch
a key Ray refuses; these tests are the offline half of that proof (the data-plane suite deploys
the same string for real on CPU).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import yaml

from tests.conftest import CPU_POOL, ROOT, TINY_MODEL, load_example, minimal_doc
from tests.test_render import rayservice_of

pytestmark = pytest.mark.contract

warnings.filterwarnings("ignore", category=DeprecationWarning)

# Plain imports: ray[serve]==2.60.0 is a test requirement, a missing Ray must fail, not skip.
import ray.serve.config as serve_config_mod  # noqa: E402
import ray.serve.schema as serve_schema  # noqa: E402
from ray.llm._internal.serve.core.configs import llm_config as llm_config_mod  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "k2think.yaml": load_example("k2think.yaml"),
    "k2think-v2.yaml": load_example("k2think-v2.yaml"),
    "k2think-multipool.yaml": load_example("k2think-multipool.yaml"),
    "pipeline": minimal_doc(pools=[{"name": "p", "gpuType": "H100-80GB", "gpusPerNode": 1}]),
    "scale-to-zero": minimal_doc(autoscaling={"minReplicas": 0, "maxReplicas": 3}),
    "s3-fp8": minimal_doc(
        model={"preset": "k2-think", "source": "s3://bucket/k2"}, engine={"kvCacheDtype": "fp8"}
    ),
    "cpu-profile": minimal_doc(
        model=TINY_MODEL,
        pools=[CPU_POOL],
        autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetOngoingRequests": 2},
    ),
    "latency-target": minimal_doc(
        autoscaling={"minReplicas": 1, "maxReplicas": 4, "policy": {"mode": "latencyTarget"}},
        serving={"apiKeysSecret": "keys"},
    ),
    "mi300x": minimal_doc(
        model={"preset": "k2-think-v2", "maxModelLen": 131072},
        pools=[{"name": "amd", "gpuType": "MI300X-192GB"}],
        ray={"image": "registry.example/ray-llm:2.60.0-py311-rocm"},
    ),
}


@pytest.fixture(autouse=True)
def ray_modules_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's Ray-side modules, as the pods get them (ConfigMap on PYTHONPATH): Ray
    imports the autoscaling policy by path when it parses ``autoscaling_config``."""
    monkeypatch.syspath_prepend(str(ROOT / "operator" / "k2think_operator" / "ray_modules"))


@pytest.fixture(params=sorted(CASES))
def serve_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    rs = rayservice_of(CASES[request.param])
    config: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return config


def test_serve_deploy_schema_accepts_it(serve_config: dict[str, Any]) -> None:
    schema = serve_schema.ServeDeploySchema.model_validate(serve_config)
    (app,) = schema.applications
    assert app.import_path == "ray.serve.llm:build_openai_app"


def test_llm_config_accepts_it(serve_config: dict[str, Any]) -> None:
    """Ray's LLMConfig (extra keys rejected). LLMServingArgs, the whole ``args`` block, needs
    vLLM importable and is checked in the data-plane suite."""
    (raw,) = serve_config["applications"][0]["args"]["llm_configs"]
    # server_cls is imported by LLMConfig, and the operator's server subclasses Serve LLM's,
    # which needs vLLM: the data-plane suite deploys it (test_25_latency_autoscaling.py).
    raw = {k: v for k, v in raw.items() if k != "server_cls"}
    llm = llm_config_mod.LLMConfig.model_validate(raw)
    assert llm.engine_kwargs["tensor_parallel_size"] >= 1
    assert llm.model_id == raw["model_loading_config"]["model_id"]


def test_autoscaling_config_accepts_it(serve_config: dict[str, Any]) -> None:
    deployment = serve_config["applications"][0]["args"]["llm_configs"][0]["deployment_config"]
    if "autoscaling_config" not in deployment:
        assert deployment["num_replicas"] >= 0
        return
    auto = serve_config_mod.AutoscalingConfig.model_validate(deployment["autoscaling_config"])
    assert auto.target_ongoing_requests is not None and auto.target_ongoing_requests < 1e9
    assert auto.min_replicas <= (auto.initial_replicas or auto.min_replicas) <= auto.max_replicas


def test_llm_config_rejects_what_ray_rejects() -> None:
    """Guard that the contract check has teeth: an unknown key must fail."""
    rs = rayservice_of(CASES["k2think.yaml"])
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    llm = config["applications"][0]["args"]["llm_configs"][0]
    llm["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):
        llm_config_mod.LLMConfig.model_validate(llm)
    bad_auto = {"min_replicas": 3, "max_replicas": 1}
    with pytest.raises(Exception, match="max_replicas"):
        serve_config_mod.AutoscalingConfig.model_validate(bad_auto)
