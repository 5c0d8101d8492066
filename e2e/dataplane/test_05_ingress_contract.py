"""The ingress the operator renders, as Ray Serve LLM builds it (vLLM importable here, unlike
.venv): LLMServingArgs accepts the whole ``args`` block, Ray's DEFAULT_INGRESS_OPTIONS are still
the never-scale defaults the operator overrides (tests/test_ingress.py keeps a copy), and
``build_openai_app`` ends up with our autoscaling bounds, target, cap and placement. No Ray
cluster is needed: building an application only binds deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from dataplane_config import INGRESS_MODULE_DIR, serve_config_for

pytestmark = [pytest.mark.dataplane]


@pytest.fixture(autouse=True)
def ray_modules_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's Ray-side modules (server subclass, API-key ingress, policy), where a pod
    has them: on PYTHONPATH (a ConfigMap there, INGRESS_MODULE_DIR here)."""
    monkeypatch.syspath_prepend(str(INGRESS_MODULE_DIR))


def _args(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = yaml.safe_load(serve_config_for(tmp_path / "model", "tiny", **overrides))
    args: dict[str, Any] = config["applications"][0]["args"]
    return args


def test_ray_defaults_are_what_the_operator_overrides() -> None:
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_INGRESS_OPTIONS

    from k2think_operator.plan.ingress_sizing import SERVE_LLM_DEFAULT_INGRESS_OPTIONS

    assert DEFAULT_INGRESS_OPTIONS == SERVE_LLM_DEFAULT_INGRESS_OPTIONS


def deployed_infos(config: dict[str, Any]) -> dict[str, Any]:
    """What Serve's controller deploys for the rendered application: the app built from its
    ``args`` as the build task builds it, each deployment's info as the controller makes it,
    then the application's ``deployments`` overrides applied by Serve's own
    ``override_deployment_info``. A name that matches no built deployment fails here as it would
    fail the deploy ("Deployment ... does not exist")."""
    from ray.serve._private.application_state import override_deployment_info
    from ray.serve._private.build_app import build_app
    from ray.serve._private.deploy_utils import deploy_args_to_deployment_info, get_deploy_args
    from ray.serve.schema import ServeApplicationSchema

    from k2think_operator.render.serve_config import IMPORT_PATH

    (app_config,) = config["applications"]
    assert app_config["import_path"] == IMPORT_PATH
    from ray.llm._internal.serve.core.ingress.builder import build_openai_app

    built = build_app(build_openai_app(app_config["args"]), name=app_config["name"])
    infos = {}
    for deployment in built.deployments:
        args = get_deploy_args(
            name=deployment._name,
            replica_config=deployment._replica_config,
            ingress=deployment.name == built.ingress_deployment_name,
            deployment_config=deployment._deployment_config,
            version="v1",
        )
        infos[deployment.name] = deploy_args_to_deployment_info(app_name=app_config["name"], **args)
    return dict(override_deployment_info(infos, ServeApplicationSchema.model_validate(app_config)))


def test_serve_deploys_the_rendered_options(tmp_path: Path) -> None:
    """Placement from ``args``, sizing from the overrides: both reach what Serve deploys."""
    from k2think_operator.render.serve_config import (
        effective_ingress_options,
        effective_llm_deployment_options,
    )

    config = yaml.safe_load(serve_config_for(tmp_path / "model", "tiny", max_replicas=2))
    infos = deployed_infos(config)
    assert set(infos) == {d["name"] for d in config["applications"][0]["deployments"]}
    for name, wanted in (
        ("LLMServer:tiny", effective_llm_deployment_options(config)),
        ("OpenAiIngress", effective_ingress_options(config)),
    ):
        deployed = infos[name].deployment_config
        auto = deployed.autoscaling_config
        assert auto is not None, name
        for key in ("min_replicas", "max_replicas", "target_ongoing_requests"):
            assert getattr(auto, key) == wanted["autoscaling_config"][key], (name, key)
        assert deployed.max_ongoing_requests == wanted["max_ongoing_requests"], name
    ingress_actor = infos["OpenAiIngress"].replica_config.ray_actor_options
    assert (
        ingress_actor["resources"]
        == effective_ingress_options(config)["ray_actor_options"]["resources"]
    )
    llm = infos["LLMServer:tiny"].deployment_config
    assert (
        llm.graceful_shutdown_timeout_s
        == effective_llm_deployment_options(config)["graceful_shutdown_timeout_s"]
    )


def test_a_fixed_count_clears_serve_llms_autoscaling_default(tmp_path: Path) -> None:
    from dataplane_config import fixed_serve_config_for

    config = yaml.safe_load(fixed_serve_config_for(tmp_path / "model", "tiny", replicas=2))
    deployed = deployed_infos(config)["LLMServer:tiny"].deployment_config
    assert deployed.autoscaling_config is None
    assert deployed.num_replicas == 2


def test_the_override_names_are_the_built_names_in_every_mode(
    tmp_path: Path, api_keys_dir: Path
) -> None:
    """The API-key ingress and the latencyTarget server subclass keep the names the overrides
    use (``llm_deployment_name``, ``ingress_deployment_name``)."""
    config = yaml.safe_load(
        serve_config_for(
            tmp_path / "model",
            "org/tiny.v1",
            api_keys_dir=api_keys_dir,
            policy={"mode": "latencyTarget"},
        )
    )
    infos = deployed_infos(config)
    assert set(infos) == {"LLMServer:org--tiny_v1", "ApiKeyOpenAiIngress"}
    policy = infos["LLMServer:org--tiny_v1"].deployment_config.autoscaling_config.policy
    assert policy.policy_function == "k2think_autoscaling:LatencyTargetPolicy"
