"""What we render is what Ray Serve accepts: checked with Ray's own schemas (ray[serve]==2.60.0).

KubeRay stores serveConfigV2 as an opaque string, so nothing on the Kubernetes side would catch
a key Ray refuses; these tests are the offline half of that proof (the data-plane suite deploys
the same string for real on CPU).
"""

from __future__ import annotations

import inspect
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
from ray.llm._internal.serve.routing_policies.prefix_aware import (  # noqa: E402
    prefix_aware_router,
)
from ray.serve._private import constants as serve_constants  # noqa: E402
from ray.serve._private import deploy_utils  # noqa: E402

from k2think_operator.api.serving import PREFIX_AWARE_ROUTER_CLASS  # noqa: E402
from k2think_operator.render.serve_config import effective_llm_deployment_options  # noqa: E402

INTERNAL_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:"
    "PrefixCacheAffinityRouter"
)

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


def importable_offline(llm_config: dict[str, Any]) -> dict[str, Any]:
    """The LLM config with the public router path swapped for the class it re-exports.

    ``ray.serve.llm.request_router`` imports ``ray.serve.llm``, which needs vLLM (not in .venv);
    the public ``PrefixCacheAffinityRouter`` is an empty subclass of the internal one, so Ray's
    ``RequestRouterConfig`` (which imports the class) is checked here with the internal path
    and the data-plane suite checks the public path with vLLM importable.
    """
    deployment = dict(llm_config.get("deployment_config") or {})
    router = deployment.get("request_router_config")
    if router is not None:
        assert router["request_router_class"] == PREFIX_AWARE_ROUTER_CLASS
        deployment["request_router_config"] = {**router, "request_router_class": INTERNAL_ROUTER}
    return {**llm_config, "deployment_config": deployment}


def test_llm_config_accepts_it(serve_config: dict[str, Any]) -> None:
    """Ray's LLMConfig (extra keys rejected; its deployment_config through Serve's
    DeploymentConfig, request_router_config included). LLMServingArgs, the whole ``args``
    block, needs vLLM importable and is checked in the data-plane suite."""
    (raw,) = serve_config["applications"][0]["args"]["llm_configs"]
    # server_cls is imported by LLMConfig, and the operator's server subclasses Serve LLM's,
    # which needs vLLM: the data-plane suite deploys it (test_25_latency_autoscaling.py).
    raw = {k: v for k, v in raw.items() if k != "server_cls"}
    llm = llm_config_mod.LLMConfig.model_validate(importable_offline(raw))
    assert llm.engine_kwargs["tensor_parallel_size"] >= 1
    assert llm.model_id == raw["model_loading_config"]["model_id"]


def test_autoscaling_config_accepts_it(serve_config: dict[str, Any]) -> None:
    deployment = effective_llm_deployment_options(serve_config)
    if deployment.get("autoscaling_config") is None:
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


def test_router_kwargs_are_what_prefix_cache_affinity_router_takes() -> None:
    """Serve passes request_router_kwargs to the router's initialize_state by keyword, after
    the deployment is running: a misspelt knob would fail every handle there, not here."""
    rs = rayservice_of(CASES["k2think.yaml"])
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    deployment = config["applications"][0]["args"]["llm_configs"][0]["deployment_config"]
    kwargs = deployment["request_router_config"]["request_router_kwargs"]
    router_cls = prefix_aware_router.PrefixCacheAffinityRouter
    parameters = inspect.signature(router_cls.initialize_state).parameters
    assert set(kwargs) <= set(parameters) - {"self", "tree_actor"}
    # Every knob is said (Ray's defaults would route by prefix at any imbalance and never
    # forget a prompt).
    assert set(kwargs) == set(parameters) - {"self", "tree_actor"}
    assert kwargs["do_eviction"] is True
    assert kwargs["eviction_target_chars"] < kwargs["eviction_threshold_chars"]
    assert kwargs["imbalanced_threshold"] < float("inf")


def test_power_of_two_is_serves_default() -> None:
    """powerOfTwo renders no request_router_config: Serve's default router is power of two."""
    default = serve_constants.DEFAULT_REQUEST_ROUTER_PATH
    assert default.endswith(":PowerOfTwoChoicesRequestRouter")
    doc = minimal_doc(serving={"routing": {"router": "powerOfTwo"}})
    config = yaml.safe_load(rayservice_of(doc)["spec"]["serveConfigV2"])
    assert "request_router_config" not in effective_llm_deployment_options(config)
    assert serve_config_mod.RequestRouterConfig().request_router_class == default


def test_deployment_config_rejects_a_router_ray_cannot_import() -> None:
    """Guard: Ray's DeploymentConfig imports the router class, so a wrong path fails here."""
    rs = rayservice_of(CASES["k2think.yaml"])
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    llm = importable_offline(config["applications"][0]["args"]["llm_configs"][0])
    llm["deployment_config"]["request_router_config"]["request_router_class"] = (
        "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router:NoSuchRouter"
    )
    with pytest.raises(Exception, match="Invalid deployment config"):
        llm_config_mod.LLMConfig.model_validate(llm)


def _code_version(doc: dict[str, Any]) -> str:
    """What Serve's controller hashes into the version of every deployment of the app: a new
    value replaces every replica (``deploy_utils.get_app_code_version``, Ray's own function)."""
    config = yaml.safe_load(rayservice_of(doc)["spec"]["serveConfigV2"])
    (app,) = serve_schema.ServeDeploySchema.model_validate(config).applications
    return str(deploy_utils.get_app_code_version(app))


BASE_AUTOSCALING = {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 16}


@pytest.mark.parametrize(
    "edit",
    [
        {"autoscaling": {**BASE_AUTOSCALING, "maxReplicas": 16}},
        {"autoscaling": {**BASE_AUTOSCALING, "minReplicas": 2}},
        {"autoscaling": {**BASE_AUTOSCALING, "downscaleDelaySeconds": 60}},
        {"autoscaling": {**BASE_AUTOSCALING, "upscaleDelaySeconds": 5}},
        {"autoscaling": BASE_AUTOSCALING, "serving": {"maxOngoingRequests": 64}},
        {"autoscaling": BASE_AUTOSCALING, "serving": {"maxQueuedRequests": 100}},
        {"autoscaling": BASE_AUTOSCALING, "serving": {"gracefulShutdownSeconds": 900}},
    ],
)
def test_sizing_edits_keep_serves_code_version(edit: dict[str, Any]) -> None:
    """An edit of bounds, delays, target or caps is a lightweight Serve update: the replicas
    (and their loaded weights) stay. Rendered inside ``args`` it replaced all of them."""
    base = minimal_doc(autoscaling=BASE_AUTOSCALING)
    edited = minimal_doc(**edit)
    assert (
        rayservice_of(base)["spec"]["serveConfigV2"]
        != rayservice_of(edited)["spec"]["serveConfigV2"]
    )
    assert _code_version(base) == _code_version(edited)


def test_a_target_edit_keeps_the_code_version_unless_the_router_follows_it() -> None:
    """The prefix-aware router's default imbalance threshold is half the target, and Serve
    hashes router kwargs: a target edit then restarts (docs/autoscaling.md says so); with the
    threshold set in the spec it does not."""
    pinned = {"routing": {"router": "prefixAware", "imbalancedThreshold": 8}}
    before = minimal_doc(autoscaling=BASE_AUTOSCALING, serving=pinned)
    after = minimal_doc(
        autoscaling={**BASE_AUTOSCALING, "targetOngoingRequests": 24}, serving=pinned
    )
    assert _code_version(before) == _code_version(after)
    default = {"routing": {"router": "prefixAware"}}
    assert _code_version(minimal_doc(autoscaling=BASE_AUTOSCALING, serving=default)) != (
        _code_version(
            minimal_doc(
                autoscaling={**BASE_AUTOSCALING, "targetOngoingRequests": 24}, serving=default
            )
        )
    )


def test_fixed_count_edits_keep_serves_code_version() -> None:
    assert _code_version(minimal_doc(replicas=1)) == _code_version(minimal_doc(replicas=3))


def test_what_serve_hashes_still_restarts() -> None:
    """Guard that the check has teeth: an engine change and a change of the autoscaling policy
    (Serve hashes deployment policies into the code version too) are new code versions."""
    base = minimal_doc(autoscaling=BASE_AUTOSCALING)
    assert _code_version(base) != _code_version(
        minimal_doc(autoscaling=BASE_AUTOSCALING, engine={"maxNumSeqs": 64})
    )
    latency = {**BASE_AUTOSCALING, "policy": {"mode": "latencyTarget"}}
    assert _code_version(base) != _code_version(minimal_doc(autoscaling=latency))
