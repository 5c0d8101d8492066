"""The Ray Serve config (``serveConfigV2``): one OpenAI app with one LLMConfig.

Everything that changes with replica counts and autoscaling lives here, because KubeRay applies
``serveConfigV2`` to the running cluster in place, while changes to ``rayClusterConfig`` either
start a second Ray cluster or (for replica fields) are not propagated at all. Within it, what
an edit should change on running replicas (bounds, delays, caps) is rendered as Serve's
per-deployment overrides (``applications[].deployments``), never inside the app's ``args``:
Serve restarts every replica of an application whose ``args`` changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from k2think_operator.api.spec import SOURCE_PATTERN, K2ThinkDeploymentSpec
from k2think_operator.api.speculative import VLLM_METHODS, SpeculativeDecodingSpec
from k2think_operator.plan.ingress_sizing import HEAD_RESOURCE, ingress_deployment_config
from k2think_operator.plan.planner import Plan
from k2think_operator.render.autoscaling import policy_config, server_cls
from k2think_operator.render.security import ingress_cls_config

APP_NAME = "llm"
#: Serve LLM's prefix of an LLM deployment's name (``build_llm_deployment``).
LLM_SERVER_PREFIX = "LLMServer:"
IMPORT_PATH = "ray.serve.llm:build_openai_app"
MODEL_MOUNT_ROOT = "/mnt/models"

#: Environment of every LLM replica process (``LLMConfig.runtime_env``, which Ray 2.60 gives the
#: replica actor and the engine workers: ``ray/llm/_internal/serve/core/configs/llm_config.py``).
#: ``VLLM_CONFIGURE_LOGGING=0``: by default vLLM runs ``logging.config.dictConfig`` when its engine
#: starts inside the replica (``vllm/logger.py``, ``configure_logging_if_needed``), which closes
#: every existing handler, Serve's per-replica ``MemoryHandler`` included. A restarted Serve
#: controller (a head crash under GCS fault tolerance, or a controller crash) then fails
#: ``is_allocated()`` on each replica it recovers (``ray/serve/_private/logging_utils.py``,
#: ``get_component_logger_file_path``: ``AttributeError`` on the closed handler) and replaces
#: every LLM replica, reloading the weights GCS FT was meant to keep (found on the chain test
#: ground, docs/serving-path.md). With 0 vLLM's loggers propagate to the handlers Ray set up.
#: Rendered here, not on the containers, so it reaches running clusters through
#: ``serveConfigV2`` in place instead of rebuilding every Ray cluster on an operator upgrade.
REPLICA_ENV_VARS: dict[str, str] = {"VLLM_CONFIGURE_LOGGING": "0"}


def model_source(spec: K2ThinkDeploymentSpec) -> str | dict[str, str]:
    """Translate the spec's source URI into what LLMConfig.model_loading_config accepts."""
    match = SOURCE_PATTERN.match(spec.model.resolved_source())
    if match is None:  # parse_spec has already refused this
        raise ValueError(f"bad model source {spec.model.resolved_source()!r}")
    scheme, rest = match.groups()
    if scheme == "hf":
        return rest
    if scheme in ("s3", "gs"):
        return {"bucket_uri": f"{scheme}://{rest}"}
    if scheme == "pvc":
        return f"{MODEL_MOUNT_ROOT}/{rest.strip('/')}"
    return rest  # file:///abs/path -> /abs/path


def _claim_of(source: str) -> str | None:
    match = SOURCE_PATTERN.match(source)
    if match is None or match.group(1) != "pvc":
        return None
    return match.group(2).strip("/").split("/", 1)[0]


def pvc_claims(spec: K2ThinkDeploymentSpec) -> list[str]:
    """Every claim the workers mount: the model's, then the draft's when it is another one (a
    draft on its own K2ThinkModelCache, or on a claim of its own), each at
    ``MODEL_MOUNT_ROOT/CLAIM``, read-only."""
    sources = [spec.model.resolved_source()]
    speculative = spec.engine.speculative_decoding
    if speculative is not None and speculative.draft is not None:
        sources.append(speculative.draft.resolved_source())
    claims: list[str] = []
    for claim in map(_claim_of, sources):
        if claim and claim not in claims:
            claims.append(claim)
    return claims


def build_engine_kwargs(spec: K2ThinkDeploymentSpec, plan: Plan) -> dict[str, Any]:
    engine = spec.engine
    kwargs: dict[str, Any] = dict(engine.extra_args)
    kwargs.update(
        {
            "tensor_parallel_size": plan.tensor_parallel,
            "pipeline_parallel_size": plan.pipeline_parallel,
            "max_model_len": plan.max_model_len,
            "gpu_memory_utilization": plan.primary.memory_utilization,
            "dtype": plan.dtype,
            "max_num_seqs": engine.max_num_seqs,
            "enable_prefix_caching": engine.enable_prefix_caching,
        }
    )
    if engine.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = engine.kv_cache_dtype
    parser = _reasoning_parser(spec)
    if parser:
        kwargs["reasoning_parser"] = parser
    if spec.model.revision and spec.model.resolved_source().startswith("hf://"):
        kwargs["revision"] = spec.model.revision
    if plan.cpu_profile:
        kwargs["enforce_eager"] = True
    if engine.speculative_decoding is not None:
        kwargs["speculative_config"] = speculative_config(engine.speculative_decoding)
    return kwargs


def _reasoning_parser(spec: K2ThinkDeploymentSpec) -> str | None:
    if spec.engine.reasoning_parser is not None:
        return spec.engine.reasoning_parser or None  # "" switches it off
    preset = spec.model.preset_info
    return preset.reasoning_parser if preset else None


def draft_model_path(source: str) -> str:
    """The draft as vLLM's ``speculative_config.model`` reads it: a Hugging Face id or a path."""
    match = SOURCE_PATTERN.match(source)
    # DraftModelSpec refused anything else; a cacheRef's cache:// placeholder is resolved
    # before anything renders (deployment/decide.py waits for the cache).
    assert match is not None, f"draft source {source!r} is not resolved"
    scheme, rest = match.groups()
    if scheme == "hf":
        return rest
    if scheme == "pvc":
        return f"{MODEL_MOUNT_ROOT}/{rest.strip('/')}"
    return rest  # file:///abs/path -> /abs/path


def speculative_config(speculative: SpeculativeDecodingSpec) -> dict[str, Any]:
    """vLLM's ``speculative_config`` engine argument, as ``SpeculativeConfig`` takes it."""
    config: dict[str, Any] = {"method": VLLM_METHODS[speculative.method]}
    if speculative.num_speculative_tokens is not None:
        config["num_speculative_tokens"] = speculative.num_speculative_tokens
    if speculative.prompt_lookup_min is not None:
        config["prompt_lookup_min"] = speculative.prompt_lookup_min
    if speculative.prompt_lookup_max is not None:
        config["prompt_lookup_max"] = speculative.prompt_lookup_max
    draft = speculative.draft
    if draft is not None:
        source = draft.resolved_source()
        config["model"] = draft_model_path(source)
        if draft.revision is not None and source.startswith("hf://"):
            config["revision"] = draft.revision
        if draft.tensor_parallel is not None:
            config["draft_tensor_parallel_size"] = draft.tensor_parallel
    return config


def build_placement_group_config(plan: Plan) -> dict[str, Any]:
    """One bundle per engine worker; STRICT_PACK keeps a replica's TP group on one node."""
    device = "CPU" if plan.cpu_profile else "GPU"
    return {
        "bundles": [{device: 1} for _ in range(plan.gpus_per_replica)],
        "strategy": plan.placement_strategy,
    }


def build_llm_code_options(plan: Plan) -> dict[str, Any]:
    """What the LLM deployment must carry inside ``args`` (``LLMConfig.deployment_config``): only
    the request router, which Serve LLM's builder reads when it binds the deployment
    (``_maybe_setup_kv_aware_routing``) and which Serve folds into the code version anyway
    (``get_app_code_version`` hashes every deployment's ``request_router_config``). Everything
    else is an override in ``applications[].deployments`` (``build_llm_deployment_override``)."""
    router_config = plan.routing.request_router_config() if plan.routing else None
    return {"request_router_config": router_config} if router_config is not None else {}


def build_llm_deployment_override(
    spec: K2ThinkDeploymentSpec, plan: Plan, name: str
) -> dict[str, Any]:
    """The LLM deployment's Serve options as an override of the application's deployment.

    Why not in ``args``: Serve hashes an application's ``args`` into the code version of every
    deployment in it (``ray/serve/_private/deploy_utils.py``, ``get_app_code_version``), so any
    edit there (a new ``maxReplicas``, a longer ``downscaleDelaySeconds``) replaced every vLLM
    replica, reloading the weights. An override is a lightweight update: Serve applies replica
    bounds, delays, ``max_ongoing_requests`` and the graceful-shutdown options to the running
    replicas (``override_deployment_info`` in ``application_state.py``). A change of the
    autoscaling *policy* (mode, ``latencyTarget`` knobs) still restarts: Serve hashes deployment
    policies into the code version as well.
    """
    override: dict[str, Any] = {
        "name": llm_deployment_name(spec.model.resolved_served_name(name)),
        "max_ongoing_requests": plan.max_ongoing_requests,
        # Reasoning streams run for minutes: let a replica finish them before it goes away.
        "graceful_shutdown_timeout_s": spec.serving.graceful_shutdown_seconds,
        "graceful_shutdown_wait_loop_s": 2,
    }
    if spec.serving.max_queued_requests is not None:
        override["max_queued_requests"] = spec.serving.max_queued_requests
    if spec.autoscaling is None:
        # Serve LLM's builder gives every LLM deployment a never-scale autoscaling_config;
        # a fixed count must clear it (Serve refuses num_replicas beside an autoscaling_config).
        override["num_replicas"] = plan.initial_replicas
        override["autoscaling_config"] = None
        return override
    autoscaling = spec.autoscaling
    override["autoscaling_config"] = {
        "min_replicas": plan.min_replicas,
        "initial_replicas": plan.initial_replicas,
        "max_replicas": plan.max_replicas,
        # Serve LLM defaults this to 1e9, which means "never scale"; always say it.
        "target_ongoing_requests": plan.target_ongoing_requests,
        "upscale_delay_s": _number(autoscaling.upscale_delay_seconds),
        "downscale_delay_s": _number(autoscaling.downscale_delay_seconds),
    }
    policy = policy_config(spec, plan)
    if policy is not None:
        override["autoscaling_config"]["policy"] = policy
    return override


def llm_deployment_name(served_name: str) -> str:
    """The name Serve LLM gives the deployment of one model (``build_llm_deployment``: the server
    class's name, a colon, the model id with ``/`` and ``.`` replaced). Our latencyTarget
    server subclass keeps the class name ``LLMServer``, so the name is the same in every mode;
    the data-plane suite checks it against Ray's builder (test_05_ingress_contract.py)."""
    return LLM_SERVER_PREFIX + served_name.replace("/", "--").replace(".", "_")


def ingress_deployment_name(spec: K2ThinkDeploymentSpec) -> str:
    """The OpenAI ingress deployment's name: its class's (``serve.deployment`` of the class)."""
    ingress_cls = ingress_cls_config(spec)
    if ingress_cls is None:
        return "OpenAiIngress"
    path = str(ingress_cls["ingress_cls"])
    return path.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def effective_llm_deployment_options(serve_config: dict[str, Any]) -> dict[str, Any]:
    """The LLM deployment's options as Serve applies them: ``LLMConfig.deployment_config`` from
    ``args`` with the application's override of ``LLMServer:*`` over it (Serve's own order).
    For readers of a rendered config (tests, benchmarks) that want one dict."""
    (application,) = serve_config["applications"]
    (llm,) = application["args"]["llm_configs"]
    return _with_override(application, llm.get("deployment_config"), llm=True)


def effective_ingress_options(serve_config: dict[str, Any]) -> dict[str, Any]:
    """The ingress's options as Serve applies them: ``ingress_deployment_config`` with the
    application's override of the ingress over it."""
    (application,) = serve_config["applications"]
    return _with_override(
        application, application["args"].get("ingress_deployment_config"), llm=False
    )


def _with_override(
    application: dict[str, Any], code: dict[str, Any] | None, *, llm: bool
) -> dict[str, Any]:
    options = dict(code or {})
    for override in application.get("deployments") or []:
        if str(override["name"]).startswith(LLM_SERVER_PREFIX) == llm:
            options.update({k: v for k, v in override.items() if k != "name"})
    return options


def _number(value: float) -> int | float:
    """30.0 -> 30: the YAML reads as the user wrote it."""
    return int(value) if float(value).is_integer() else value


def build_llm_config(spec: K2ThinkDeploymentSpec, plan: Plan, name: str) -> dict[str, Any]:
    llm_config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": spec.model.resolved_served_name(name),
            "model_source": model_source(spec),
        },
        "engine_kwargs": build_engine_kwargs(spec, plan),
        "placement_group_config": build_placement_group_config(plan),
        "runtime_env": {"env_vars": dict(REPLICA_ENV_VARS)},
    }
    code_options = build_llm_code_options(plan)
    if code_options:
        llm_config["deployment_config"] = code_options
    accelerator_types = {p.ray_accelerator_type for p in plan.pools}
    if len(accelerator_types) == 1 and None not in accelerator_types:
        # Only when every pool has the same GPU: Ray then pins replicas to that type.
        llm_config["accelerator_type"] = accelerator_types.pop()
    if plan.cpu_profile:
        llm_config["accelerator_config"] = {"kind": "cpu"}
    server = server_cls(spec)
    if server is not None:
        llm_config["server_cls"] = server
    return llm_config


def build_serve_config(spec: K2ThinkDeploymentSpec, plan: Plan, name: str) -> dict[str, Any]:
    # Both LLMServingArgs fields are honoured together by Ray 2.60's build_openai_app
    # (ray/llm/_internal/serve/core/ingress/builder.py): ingress_cls_config picks the class
    # (the API-key subclass of OpenAiIngress, security.py), whose inherited
    # get_deployment_options() gives the defaults our ingress_deployment_config (placement,
    # ingress_sizing.py) is merged over; its sizing is an override like the LLM's.
    ingress_code, ingress_override = _ingress_options(spec, plan)
    args: dict[str, Any] = {
        "llm_configs": [build_llm_config(spec, plan, name)],
        "ingress_deployment_config": ingress_code,
    }
    ingress_cls = ingress_cls_config(spec)
    if ingress_cls is not None:
        args["ingress_cls_config"] = ingress_cls
    return {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {
                "name": APP_NAME,
                "import_path": IMPORT_PATH,
                "route_prefix": "/",
                "args": args,
                "deployments": [
                    override
                    for override in (
                        build_llm_deployment_override(spec, plan, name),
                        ingress_override,
                    )
                    if len(override) > 1
                ],
            }
        ],
    }


def _ingress_options(
    spec: K2ThinkDeploymentSpec, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ingress's options split as the LLM's are: placement (actor options, which restart
    the ingress anyway) in ``args``, its sizing (bounds, target, cap: they follow the fleet's
    ``maxReplicas``) as an override, so a resize is a lightweight update for both deployments."""
    if plan.ingress is None:  # hand-built plans of tests: the head, as before
        options: dict[str, Any] = {"ray_actor_options": {"resources": {HEAD_RESOURCE: 1}}}
    else:
        options = dict(ingress_deployment_config(plan.ingress))
    override: dict[str, Any] = {"name": ingress_deployment_name(spec)}
    for key in ("autoscaling_config", "max_ongoing_requests"):
        if key in options:
            override[key] = options.pop(key)
    return options, override


#: libyaml's emitter (PyYAML's wheels bundle it) under PyYAML's own safe representer: a tenth of
#: the CPU of the pure-Python emitter, which was 14% of the operator's CPU in a burst of 1,000
#: new deployments (issue #20). None without libyaml.
_C_SAFE_DUMPER: type[yaml.SafeDumper] | None = getattr(yaml, "CSafeDumper", None)
#: Mapping keys both emitters write alike. They differ on an empty key, a key past ~122 bytes
#: (PyYAML counts the implicit ``!!str`` tag and characters, libyaml bytes) and on keys with
#: control or non-ASCII characters (simple or explicit ``?`` key): the text must not change
#: with the emitter, or every RayService whose config has such a key would be re-applied.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./-]{1,100}")


def _plain_keys(value: Any) -> bool:
    """Every mapping key in ``value`` matches ``_PLAIN_KEY``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str) or not _PLAIN_KEY.fullmatch(key):
                    return False
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return True


def dump_yaml(value: Mapping[str, Any]) -> str:
    """Deterministic YAML: sorted keys, block style, no line folding.

    The same text from either emitter (``tests/test_render.py`` compares them): libyaml's when
    every key is plain, PyYAML's otherwise.
    """
    dumper = _C_SAFE_DUMPER if _C_SAFE_DUMPER and _plain_keys(value) else yaml.SafeDumper
    text: str = yaml.dump(
        value, Dumper=dumper, sort_keys=True, default_flow_style=False, width=1_000_000
    )
    return text


def render_serve_config(spec: K2ThinkDeploymentSpec, plan: Plan, name: str) -> str:
    return dump_yaml(build_serve_config(spec, plan, name))
