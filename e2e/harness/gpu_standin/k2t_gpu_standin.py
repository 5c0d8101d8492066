"""A stand-in GPU platform for vLLM: vLLM's CPU platform that Ray schedules as GPUs.

Why home-made: the chain suite's GPU pods (``harness.raynodes``) have GPUs only as Ray's logical
resources (KubeRay's ``ray start --num-gpus N`` from the pod's ``nvidia.com/gpu`` limit), and the
operator renders a GPU pool's replica as Serve LLM's placement group of ``{"GPU": 1}`` bundles
(``render/serve_config.py``). Serve LLM then runs vLLM with the Ray executor
(``ray/llm/_internal/serve/engines/vllm/vllm_models.py``: a non-CPU accelerator means
``distributed_executor_backend="ray"``), which needs a platform whose ``ray_device_key`` names the
bundles' resource (``vllm/v1/executor/ray_utils.py``, ``initialize_ray_cluster``; the workers are
``ray.remote(num_gpus=1)`` in those bundles, ``ray_executor_v2.py``). vLLM's CPU platform has
``ray_device_key = ""`` ("does not support ray"). This platform is the CPU platform with
``ray_device_key = "GPU"``: each tensor-parallel worker holds one logical GPU of the placement
group Serve LLM asked for, and computes on the CPU (gloo, vLLM's CPU worker).

How it is found: vLLM's out-of-tree platform plugins (entry point group
``vllm.platform_plugins``, ``vllm/platforms/__init__.py``: an activated out-of-tree plugin wins
over the built-in CPU one). This directory holds the module and its ``dist-info`` (which
``importlib.metadata`` finds on ``sys.path``); the kubelet stand-in puts the directory on
``PYTHONPATH`` of GPU pods only (what a GPU node's image would bring: its vendor's vLLM
platform), so CPU pods keep vLLM's CPU platform.
"""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform  # type: ignore[import-not-found,unused-ignore]

QUALNAME = "k2t_gpu_standin.StandInGpuPlatform"


def register() -> str:
    """The plugin's entry point: always active where it is installed (GPU pods only)."""
    return QUALNAME


class StandInGpuPlatform(CpuPlatform):  # type: ignore[misc,unused-ignore]
    """vLLM's CPU platform; Ray places its workers on (logical) GPUs."""

    ray_device_key: str = "GPU"
