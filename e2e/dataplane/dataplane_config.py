"""Where the data-plane suite gets its Serve config from.

``serve_config_for`` is the ONE place the suite builds a ``serveConfigV2``. Today it is a local
stand-in that produces the shape the operator's renderer produces for the CPU accelerator profile
(see operator/k2think_operator/render/serve_config.py); the issue wants it to become a call to the
operator's ``render`` of a K2ThinkDeployment that points at the tiny model with the CPU profile,
with the resulting string PUT unchanged. Swap the body, keep the signature.

Until then ``K2T_SERVE_CONFIG=operator`` makes it call the operator's renderer already (a
K2ThinkDeployment with a CPU pool, model ``file://<model_dir>``), so the renderer can be tried
against the real data plane at any time: ``K2T_SERVE_CONFIG=operator make test-dataplane``.
"""

from __future__ import annotations

import os
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
    if os.environ.get("K2T_SERVE_CONFIG", "local") == "operator":
        return _rendered_by_operator(
            model_dir,
            served_name,
            autoscaling={
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "initialReplicas": initial_replicas,
                "targetOngoingRequests": target_ongoing_requests,
                "upscaleDelaySeconds": upscale_delay_s,
                "downscaleDelaySeconds": downscale_delay_s,
            },
            max_ongoing_requests=max_ongoing_requests,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
        )
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


def _rendered_by_operator(
    model_dir: Path,
    served_name: str,
    *,
    autoscaling: dict[str, Any],
    max_ongoing_requests: int,
    max_model_len: int,
    gpu_memory_utilization: float,
) -> str:
    """``serveConfigV2`` exactly as the operator renders it for a CPU-pool K2ThinkDeployment."""
    import tiny_model as tm

    from k2think_operator.planner import plan_deployment
    from k2think_operator.render import build_children
    from k2think_operator.spec import parse_spec

    params = 2 * tm.TOKENIZER_VOCAB_SIZE * tm.HIDDEN_SIZE + tm.NUM_HIDDEN_LAYERS * (
        4 * tm.HIDDEN_SIZE**2 + 3 * tm.HIDDEN_SIZE * tm.INTERMEDIATE_SIZE
    )
    spec = parse_spec(
        {
            "model": {
                "preset": "custom",
                "source": f"file://{Path(model_dir).resolve()}",
                "servedModelName": served_name,
                "maxModelLen": max_model_len,
                "architecture": {
                    "family": "qwen2",
                    "parametersBillions": round(params / 1e9, 4),
                    "layers": tm.NUM_HIDDEN_LAYERS,
                    "hiddenSize": tm.HIDDEN_SIZE,
                    "attentionHeads": tm.NUM_ATTENTION_HEADS,
                    "kvHeads": tm.NUM_KEY_VALUE_HEADS,
                    "headDim": tm.HIDDEN_SIZE // tm.NUM_ATTENTION_HEADS,
                    "vocabSize": tm.TOKENIZER_VOCAB_SIZE,
                    "maxPositionEmbeddings": tm.MAX_POSITION_EMBEDDINGS,
                },
            },
            "pools": [{"name": "cpu", "gpuType": "CPU", "gpusPerNode": 1}],
            "autoscaling": autoscaling,
            "engine": {
                "gpuMemoryUtilization": gpu_memory_utilization,
                "maxNumSeqs": 16,
                "reasoningParser": "deepseek_r1",
            },
            "serving": {"maxOngoingRequests": max_ongoing_requests, "gracefulShutdownSeconds": 30},
        }
    )
    plan = plan_deployment(spec, "tiny")
    children = build_children(
        spec, plan, name="tiny", namespace="default", uid="00000000-0000-4000-8000-000000000001"
    )
    rayservice = next(c for c in children if c.get("kind") == "RayService")
    serve_config_v2: str = rayservice["spec"]["serveConfigV2"]
    return serve_config_v2
