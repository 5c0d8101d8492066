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
from dataplane_config import serve_config_for

pytestmark = [pytest.mark.dataplane]


def _args(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = yaml.safe_load(serve_config_for(tmp_path / "model", "tiny", **overrides))
    args: dict[str, Any] = config["applications"][0]["args"]
    return args


def test_ray_defaults_are_what_the_operator_overrides() -> None:
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_INGRESS_OPTIONS

    from k2think_operator.plan.ingress_sizing import SERVE_LLM_DEFAULT_INGRESS_OPTIONS

    assert DEFAULT_INGRESS_OPTIONS == SERVE_LLM_DEFAULT_INGRESS_OPTIONS


def test_build_openai_app_takes_the_rendered_ingress_options(tmp_path: Path) -> None:
    from ray.llm._internal.serve.core.ingress.builder import LLMServingArgs, build_openai_app

    args = _args(tmp_path, max_replicas=2)
    wanted = args["ingress_deployment_config"]
    assert LLMServingArgs.model_validate(args).ingress_deployment_config == wanted
    ingress = build_openai_app(args)._bound_deployment
    auto = ingress._deployment_config.autoscaling_config
    assert auto is not None
    assert auto.min_replicas == wanted["autoscaling_config"]["min_replicas"]
    assert auto.max_replicas == wanted["autoscaling_config"]["max_replicas"]
    assert auto.target_ongoing_requests == wanted["autoscaling_config"]["target_ongoing_requests"]
    assert ingress._deployment_config.max_ongoing_requests == wanted["max_ongoing_requests"]
    assert ingress.ray_actor_options == wanted["ray_actor_options"]
