"""What the operator owns in a Ray container and in vLLM's engine arguments: the user may not set
it through the free-form side doors (``spec.ray.env``, ``spec.engine.extraArgs``).

Why a list and not "whatever the render writes, computed at run time": the CRD's CEL rules need
the names as constants, and the API server refuses the write before anything renders. The unit
test ``tests/test_owned.py`` renders every shape of deployment and fails when the render (or
KubeRay, for the names it adds and lets a user's value win over: ``pod.go`` ``envVarExists``)
writes a name that is not in ``OWNED_ENV``, so the list cannot fall behind the render.

Credentials: a literal token in the CR is readable by everybody who may read the resource (and
lands in etcd unencrypted, in Argo CD's diff, in ``kubectl get -o yaml``). They belong in a
Secret, which ``spec.model.credentialsSecret`` (env vars from a Secret) or
``spec.serving.apiKeysSecret`` name; the messages say which.
"""

from __future__ import annotations

import re
from typing import Final

#: Set by Ray's token auth (KubeRay ``authOptions``): a user's value would win in KubeRay and
#: switch auth off (``RAY_AUTH_MODE=disabled``) or replace the token with a literal one.
RAY_AUTH_ENV: Final = frozenset(
    {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_K8S_TOKEN_AUTH"}
)
#: Device visibility: the device plugin and Ray give each worker its GPUs; a user's value would
#: hand a process GPUs another pod holds, or hide its own.
DEVICE_ENV: Final = frozenset(
    {
        "NVIDIA_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
        "AMD_VISIBLE_DEVICES",
        "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES",
        "RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES",
        "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES",
    }
)
#: What KubeRay writes into every Ray container (ray-operator ``controllers/ray/common/pod.go``
#: v1.6.2) to say who and where the node is; it keeps a user's value for several of them. Its
#: timeout defaults (``RAY_SERVE_KV_TIMEOUT_S``, ``RAY_GCS_SERVER_REQUEST_TIMEOUT_SECONDS``, ...)
#: are injected only when absent precisely so a user can set them: not listed.
KUBERAY_ENV: Final = frozenset(
    {
        "RAY_CLUSTER_NAME",
        "RAY_CLOUD_INSTANCE_ID",
        "RAY_NODE_TYPE_NAME",
        "FQ_RAY_IP",
        "RAY_IP",
        "RAY_PORT",
        "RAY_ADDRESS",
        "RAY_USAGE_STATS_KUBERAY_IN_USE",
        "RAY_USAGE_STATS_EXTRA_TAGS",
        "KUBERAY_GEN_RAY_START_CMD",
        "REDIS_PASSWORD",
        "RAY_REDIS_ADDRESS",
        "RAY_external_storage_namespace",
    }
)
#: What this operator's render writes (``render/``, ``deployment/cache.py``): the ingress
#: module's import path, the hub switched off for a cache, the pool fall-back timeout, vLLM's
#: logging in the replica's runtime_env.
RENDERED_ENV: Final = frozenset(
    {
        "PYTHONPATH",
        "HF_HUB_OFFLINE",
        "RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S",
        "VLLM_CONFIGURE_LOGGING",
    }
)
#: Every name the operator, KubeRay or Ray token auth may write into a Ray container.
OWNED_ENV: Final = RAY_AUTH_ENV | DEVICE_ENV | KUBERAY_ENV | RENDERED_ENV
#: Owned only with a field set: the operator switches the hub off for a deployment served from
#: a cache (``spec.model.cacheRef`` or ``spec.engine.speculativeDecoding.draft.cacheRef``);
#: without one, ``HF_HUB_OFFLINE=1`` is the user's own choice (an air-gapped cluster) and nothing
#: of the operator's depends on it (``K2ThinkDeploymentSpec._cross_field`` refuses it beside
#: either field).
CONDITIONAL_ENV: Final = frozenset({"HF_HUB_OFFLINE"})
#: What ``spec.ray.env`` may never set.
REFUSED_ENV: Final = OWNED_ENV - CONDITIONAL_ENV

#: Names whose value is a credential: a literal one in the CR is refused (the Secret fields take
#: it). ``HF_TOKEN`` and friends are read by the hub client from the environment; put them in the
#: Secret ``spec.model.credentialsSecret`` names.
CREDENTIAL_ENV_PATTERN: Final = (
    r"^(HF_TOKEN|HUGGING_FACE_HUB_TOKEN|HUGGINGFACE_HUB_TOKEN|HF_API_TOKEN|"
    r"AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|GOOGLE_API_KEY|OPENAI_API_KEY|"
    r".*_(TOKEN|SECRET|PASSWORD|API_KEY|SECRET_KEY|ACCESS_KEY))$"
)
#: Values that are credentials whatever their name: Hugging Face user tokens (``hf_`` and 30+
#: letters), AWS access key ids, GitHub tokens, private keys.
CREDENTIAL_VALUE_PATTERN: Final = r"(hf_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY)"
CREDENTIALS_FIELD: Final = "spec.model.credentialsSecret"

_CREDENTIAL_NAME = re.compile(CREDENTIAL_ENV_PATTERN)
_CREDENTIAL_VALUE = re.compile(CREDENTIAL_VALUE_PATTERN)


def env_problem(name: str) -> str | None:
    """Why ``spec.ray.env`` may not set ``name`` (None: it may)."""
    if name in RAY_AUTH_ENV:
        return f"{name} is set by Ray token auth; use spec.ray.auth (enabled, secretName) instead"
    if name in DEVICE_ENV:
        return (
            f"{name} is set by the device plugin and Ray for the GPUs a pod was given; setting "
            "it would break GPU isolation"
        )
    if name in REFUSED_ENV:
        return f"{name} is set by the operator or KubeRay; it may not be overridden"
    if _CREDENTIAL_NAME.match(name):
        return (
            f"{name} holds a credential: put it in a Secret and name the Secret in "
            f"{CREDENTIALS_FIELD} (its keys become environment variables)"
        )
    return None


def credential_in(value: str) -> bool:
    """True when ``value`` contains something that looks like a credential."""
    return _CREDENTIAL_VALUE.search(value) is not None


#: engine_kwargs the planner and the typed spec own; extraArgs may not set them (key: the
#: snake_case keyword vLLM's EngineArgs takes; value: the field to use instead).
PLANNED_ENGINE_ARGS: Final[dict[str, str]] = {
    "tensor_parallel_size": "spec.parallelism.tensor",
    "pipeline_parallel_size": "spec.parallelism.pipeline",
    "max_model_len": "spec.model.maxModelLen",
    "gpu_memory_utilization": "spec.engine.gpuMemoryUtilization",
    "dtype": "spec.model.dtype",
    "max_num_seqs": "spec.engine.maxNumSeqs",
    "enable_prefix_caching": "spec.engine.enablePrefixCaching",
    "reasoning_parser": "spec.engine.reasoningParser",
    "kv_cache_dtype": "spec.engine.kvCacheDtype",
    "revision": "spec.model.revision",
    "model": "spec.model.source",
    "served_model_name": "spec.model.servedModelName",
    "tokenizer_revision": "spec.model.revision",
    "code_revision": "spec.model.revision",
    "data_parallel_size": "spec.replicas or spec.autoscaling",
    "speculative_config": "spec.engine.speculativeDecoding",
}
#: Engine arguments that lower the isolation of the serving process: allowed, but loud
#: (``api/downgrades.py``).
DOWNGRADING_ENGINE_ARGS: Final = frozenset({"trust_remote_code"})
#: A vLLM EngineArgs keyword. ``\Z``, not ``$``: Python's ``$`` also matches before a final
#: newline, so ``"enforce_eager\n"`` would pass.
ENGINE_ARG_KEY: Final = re.compile(r"[a-z][a-z0-9_]*\Z")
#: Values that credentials for the hub would arrive as.
CREDENTIAL_ENGINE_ARGS: Final = frozenset({"hf_token", "token", "use_auth_token"})


def normalise_engine_arg(key: str) -> str:
    """The EngineArgs keyword a spelling means: whitespace and leading dashes dropped, camelCase
    and dashes turned into snake_case (``--Tensor-Parallel-Size\\n`` -> ``tensor_parallel_size``).
    """
    text = key.strip().lstrip("-").strip()
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", text)
    text = re.sub(r"[-\s.]+", "_", text)
    return text.lower()


def engine_arg_problem(key: str, value: object) -> str | None:
    """Why ``spec.engine.extraArgs`` may not hold ``key: value`` (None: it may).

    The owned-key check runs on the normalised key, so no spelling gets round it; a key that is
    not already the canonical keyword is refused with the canonical one as the hint, and the hint
    never names a key that would be refused next.
    """
    canonical = normalise_engine_arg(key)
    shown = key if key == canonical else f"{key!r} ({canonical})"
    if canonical in PLANNED_ENGINE_ARGS:
        return f"{shown} is set by the operator; use {PLANNED_ENGINE_ARGS[canonical]} instead"
    if canonical in CREDENTIAL_ENGINE_ARGS:
        return (
            f"{shown} would put a credential in the resource: put HF_TOKEN in a Secret and name "
            f"it in {CREDENTIALS_FIELD}"
        )
    if not ENGINE_ARG_KEY.match(key):
        if ENGINE_ARG_KEY.match(canonical):
            hint = f"use the snake_case keyword {canonical!r}"
        else:
            hint = "use a snake_case keyword such as 'enforce_eager'"
        return (
            f"{key!r} is not a vLLM engine argument name; {hint}, not a command-line flag or "
            "another spelling"
        )
    if isinstance(value, str) and credential_in(value):
        return (
            f"{key}: the value looks like a credential; put it in a Secret and name it in "
            f"{CREDENTIALS_FIELD}"
        )
    return None
