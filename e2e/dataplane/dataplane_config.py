"""Where the data-plane suite gets its Serve config from: the operator itself.

``serve_config_for`` writes a K2ThinkDeployment (a custom qwen2 model at ``file://<model_dir>``
on one pool with the CPU accelerator profile), runs it through the operator's own decision path
(``reconcile.decide``: parse, plan, render, exactly what the running operator applies) and
returns the rendered RayService's ``serveConfigV2`` string, which the tests PUT unchanged to the
Ray dashboard as KubeRay does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Serve application name the renderer uses.
APP_NAME = "llm"
#: Custom resource the renderer pins the OpenAI ingress to; the suite's Ray head advertises it.
HEAD_RESOURCE = "k2think_head"
HEAD_RESOURCE_CAPACITY = 1000
#: ``spec.engine.extraArgs`` every config of the suite carries: vLLM's CPU engine without
#: torch.compile (eager, as vLLM's CPU docs run it). The compile cost ~7 s of every replica's
#: start here (measured: engine init 18-19 s compiled, 11-12 s eager; the tiny model's decoding
#: speed is the same either way), and nothing the suite proves depends on it.
EAGER_ENGINE: dict[str, Any] = {"enforce_eager": True}
#: Where the operator's package keeps the Ray-side API-key ingress module it ships in a ConfigMap
#: (mounted on PYTHONPATH in a pod; the suite puts this directory there instead).
INGRESS_MODULE_DIR = (
    Path(__file__).resolve().parents[2] / "operator" / "k2think_operator" / "ray_modules"
)


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
    api_keys_dir: Path | None = None,
    policy: dict[str, Any] | None = None,
    engine_extra_args: dict[str, Any] | None = None,
    max_num_seqs: int = 16,
) -> str:
    """The ``serveConfigV2`` YAML string for serving ``model_dir`` as ``served_name`` on CPU.

    With ``api_keys_dir`` the deployment names an API-key Secret (``spec.serving.apiKeysSecret``)
    and the one path that differs from a pod is swapped: the directory the kubelet would mount
    the Secret at becomes ``api_keys_dir`` (the suite cannot write /etc on a shared machine).
    ``policy`` is ``spec.autoscaling.policy``; ``engine_extra_args`` is ``spec.engine.extraArgs``.
    """
    autoscaling: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "initialReplicas": initial_replicas,
        "targetOngoingRequests": target_ongoing_requests,
        "upscaleDelaySeconds": upscale_delay_s,
        "downscaleDelaySeconds": downscale_delay_s,
    }
    if policy is not None:
        autoscaling["policy"] = policy
    rendered = _rendered_by_operator(
        model_dir,
        served_name,
        autoscaling=autoscaling,
        max_ongoing_requests=max_ongoing_requests,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        api_keys=api_keys_dir is not None,
        engine_extra_args=engine_extra_args,
        max_num_seqs=max_num_seqs,
    )
    if api_keys_dir is None:
        return rendered
    from k2think_operator.render.security import API_KEYS_DIR

    assert API_KEYS_DIR in rendered
    return rendered.replace(API_KEYS_DIR, str(api_keys_dir))


def fixed_serve_config_for(
    model_dir: Path,
    served_name: str,
    *,
    replicas: int,
    routing: dict[str, Any] | None = None,
    speculative: dict[str, Any] | None = None,
    max_ongoing_requests: int = 8,
    max_model_len: int = 2048,
    gpu_memory_utilization: float = 0.1,
) -> str:
    """``serveConfigV2`` for a fixed replica count, with ``spec.serving.routing`` and
    ``spec.engine.speculativeDecoding`` as given (the routing and decoding proofs, #24)."""
    extra: dict[str, Any] = {}
    if routing is not None:
        extra["serving"] = {"routing": routing}
    if speculative is not None:
        extra["engine"] = {"speculativeDecoding": speculative}
    return _rendered_by_operator(
        model_dir,
        served_name,
        autoscaling=None,
        replicas=replicas,
        max_ongoing_requests=max_ongoing_requests,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        extra=extra,
    )


def _rendered_by_operator(
    model_dir: Path,
    served_name: str,
    *,
    autoscaling: dict[str, Any] | None,
    max_ongoing_requests: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    api_keys: bool = False,
    engine_extra_args: dict[str, Any] | None = None,
    max_num_seqs: int = 16,
    replicas: int | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """``serveConfigV2`` exactly as the operator renders it for a CPU-pool K2ThinkDeployment."""
    import tiny_model as tm

    from k2think_operator.deployment.controller import decide

    params = 2 * tm.TOKENIZER_VOCAB_SIZE * tm.HIDDEN_SIZE + tm.NUM_HIDDEN_LAYERS * (
        4 * tm.HIDDEN_SIZE**2 + 3 * tm.HIDDEN_SIZE * tm.INTERMEDIATE_SIZE
    )
    spec: dict[str, Any] = {
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
        "engine": {
            "gpuMemoryUtilization": gpu_memory_utilization,
            "maxNumSeqs": max_num_seqs,
            "reasoningParser": "deepseek_r1",
            "extraArgs": {**EAGER_ENGINE, **(engine_extra_args or {})},
        },
        "serving": {"maxOngoingRequests": max_ongoing_requests, "gracefulShutdownSeconds": 30},
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    if replicas is not None:
        spec["replicas"] = replicas
    for key, value in (extra or {}).items():
        spec[key] = {**spec.get(key, {}), **value}
    if api_keys:
        spec["serving"]["apiKeysSecret"] = "tiny-api-keys"
    document = {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {
            "name": "tiny",
            "namespace": "default",
            "uid": "00000000-0000-4000-8000-000000000001",
            "generation": 1,
        },
        "spec": spec,
    }
    decision = decide(document)
    assert not decision.problems, decision.problems
    rayservice = next(c for c in decision.children if c.get("kind") == "RayService")
    serve_config_v2: str = rayservice["spec"]["serveConfigV2"]
    return serve_config_v2
