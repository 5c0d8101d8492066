"""Where the data-plane suite gets its Serve config from.

``serve_config_for`` is the ONE place the suite builds a ``serveConfigV2``. Today it is a local
stand-in that produces the shape the operator's renderer produces for the CPU accelerator profile
(see operator/k2think_operator/render/serve_config.py); the issue wants it to become a call to the
operator's ``render`` of a K2ThinkDeployment that points at the tiny model with the CPU profile,
with the resulting string PUT unchanged. Swap the body, keep the signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Serve application name the renderer uses.
APP_NAME = "llm"
#: Custom resource the renderer pins the OpenAI ingress to; the suite's Ray head advertises it.
HEAD_RESOURCE = "k2think_head"
HEAD_RESOURCE_CAPACITY = 1000


def serve_config_for(
    model_dir: Path,
    served_name: str,
    *,
    min_replicas: int = 1,
    max_replicas: int = 2,
    initial_replicas: int = 1,
    target_ongoing_requests: int = 2,
    upscale_delay_s: float = 5,
    downscale_delay_s: float = 10,
    max_ongoing_requests: int = 8,
    max_model_len: int = 2048,
    gpu_memory_utilization: float = 0.1,
) -> str:
    """The ``serveConfigV2`` YAML string for serving ``model_dir`` as ``served_name`` on CPU."""
    llm_config: dict[str, Any] = {
        "model_loading_config": {"model_id": served_name, "model_source": str(model_dir)},
        "engine_kwargs": {
            "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1,
            "max_model_len": max_model_len,
            # On vLLM's CPU backend this is the share of host RAM the worker plans with: the KV
            # cache gets (share x total RAM) minus the worker's own RSS.
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": "float32",
            "enforce_eager": True,
            "max_num_seqs": 16,
            "enable_prefix_caching": True,
            "reasoning_parser": "deepseek_r1",
        },
        "deployment_config": {
            "max_ongoing_requests": max_ongoing_requests,
            "graceful_shutdown_timeout_s": 30,
            "graceful_shutdown_wait_loop_s": 2,
            "autoscaling_config": {
                "min_replicas": min_replicas,
                "initial_replicas": initial_replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": target_ongoing_requests,
                "upscale_delay_s": upscale_delay_s,
                "downscale_delay_s": downscale_delay_s,
            },
        },
        "placement_group_config": {"bundles": [{"CPU": 1}], "strategy": "STRICT_PACK"},
        "accelerator_config": {"kind": "cpu"},
    }
    config = {
        # What a cluster needs; the suite pre-starts Serve on loopback and Serve keeps that.
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {
                "name": APP_NAME,
                "import_path": "ray.serve.llm:build_openai_app",
                "route_prefix": "/",
                "args": {
                    "llm_configs": [llm_config],
                    "ingress_deployment_config": {
                        "ray_actor_options": {"resources": {HEAD_RESOURCE: 1}},
                    },
                },
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False, width=1_000_000)
