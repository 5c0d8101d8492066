"""The K2ThinkDeployment CustomResourceDefinition, built in code.

One source for the schema: ``crds/``, the Helm chart and the offline ``validate`` command all
come from ``build_crd()``; a unit test fails when the committed YAML drifts from it. Every field
has a description (``kubectl explain`` is the first doc users read), bounds where they apply,
and CEL rules for what crosses fields, so the API server refuses bad objects with a message
before the operator ever sees them.
"""

from __future__ import annotations

from typing import Any

from k2think_operator.catalog import ACCELERATORS, MODEL_PRESETS
from k2think_operator.spec import (
    API_GROUP,
    API_VERSION,
    DEFAULT_RAY_IMAGE,
    KIND,
    PLANNED_ENGINE_ARGS,
    PLURAL,
    POOL_FALLBACK_DESCRIPTION,
    POOL_FALLBACK_SECONDS,
)

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SOURCE = r"^(hf|s3|gs|pvc|file)://.+$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|K|M|G|T)?$"


def _s(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _i(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def _n(description: str, **extra: Any) -> Schema:
    return {"type": "number", "description": description, **extra}


def _b(description: str, **extra: Any) -> Schema:
    return {"type": "boolean", "description": description, **extra}


def _o(description: str, properties: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "description": description, "properties": properties, **extra}


def _map(description: str, max_properties: int = 64) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
        "maxProperties": max_properties,
    }


def _quantity(description: str, **extra: Any) -> Schema:
    return {
        "description": description,
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY,
        **extra,
    }


def _degree(description: str) -> Schema:
    return {
        "description": description,
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "default": "auto",
        "x-kubernetes-validations": [
            {
                "rule": "type(self) == int ? (self >= 1 && self <= 64) : self == 'auto'",
                "message": "must be 'auto' or an integer from 1 to 64",
            }
        ],
    }


def _tolerations(description: str) -> Schema:
    return {
        "type": "array",
        "description": description,
        "maxItems": 32,
        "items": _o(
            "A Kubernetes toleration (core/v1 Toleration).",
            {
                "key": _s("Taint key the toleration applies to; empty matches all keys."),
                "operator": _s("Exists or Equal.", enum=["Exists", "Equal"]),
                "value": _s("Taint value to match with operator Equal."),
                "effect": _s(
                    "Taint effect to match; empty matches all.",
                    enum=["NoSchedule", "PreferNoSchedule", "NoExecute"],
                ),
                "tolerationSeconds": _i(
                    "For NoExecute: how long the pod stays bound after the taint appears.",
                    format="int64",
                ),
            },
        ),
    }


def _resources(description: str) -> Schema:
    quantities = {
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": _quantity("A resource quantity."),
    }
    return _o(
        description,
        {
            "requests": {**quantities, "description": "Minimum resources the pod asks for."},
            "limits": {**quantities, "description": "Maximum resources the pod may use."},
        },
    )


def model_schema() -> Schema:
    presets = [*sorted(MODEL_PRESETS), "custom"]
    architecture = _o(
        "Shape of a custom model (preset custom only): the numbers the memory model needs, as "
        "in the model's config.json.",
        {
            "family": _s(
                "Architecture family, informational (e.g. qwen2, llama).", default="custom"
            ),
            "parametersBillions": _n(
                "Total parameter count in billions (e.g. 32.8).",
                exclusiveMinimum=True,
                minimum=0,
                maximum=2000,
            ),
            "layers": _i("Number of decoder layers (num_hidden_layers).", minimum=1, maximum=1024),
            "hiddenSize": _i("Hidden size (hidden_size).", minimum=1),
            "attentionHeads": _i("Attention heads (num_attention_heads).", minimum=1),
            "kvHeads": _i("Key/value heads (num_key_value_heads).", minimum=1),
            "headDim": _i("Dimension of one attention head (head_dim).", minimum=1),
            "vocabSize": _i("Vocabulary size (vocab_size).", minimum=1),
            "maxPositionEmbeddings": _i(
                "Longest context the model supports (max_position_embeddings).", minimum=1
            ),
        },
        required=[
            "parametersBillions",
            "layers",
            "hiddenSize",
            "attentionHeads",
            "kvHeads",
            "headDim",
            "vocabSize",
            "maxPositionEmbeddings",
        ],
        **{
            "x-kubernetes-validations": [
                {
                    "rule": "self.kvHeads <= self.attentionHeads && "
                    "self.attentionHeads % self.kvHeads == 0",
                    "message": "attentionHeads must be a multiple of kvHeads",
                }
            ]
        },
    )
    return _o(
        "Which model to serve and how it is loaded.",
        {
            "preset": _s(
                "k2-think (LLM360/K2-Think, 32B, Qwen2 architecture), k2-think-v2 "
                "(LLM360/K2-Think-V2, 70B, Llama architecture) or custom (give architecture "
                "and source).",
                enum=presets,
                default="k2-think",
            ),
            "source": _s(
                "Where the weights come from: hf://ORG/NAME (Hugging Face), s3://BUCKET/PATH, "
                "gs://BUCKET/PATH, pvc://CLAIM/PATH (a PersistentVolumeClaim mounted read-only "
                "on the workers) or file:///PATH (a path already present in the image). "
                "Defaults to the preset's Hugging Face repository.",
                pattern=SOURCE,
                maxLength=1024,
            ),
            "revision": _s(
                "Model revision (branch, tag or commit) for hf:// sources.",
                minLength=1,
                maxLength=256,
            ),
            "servedModelName": _s(
                "The model name clients send in OpenAI requests. Defaults to the preset's "
                "Hugging Face id (e.g. LLM360/K2-Think), or the resource name for custom models.",
                minLength=1,
                maxLength=256,
            ),
            "maxModelLen": _i(
                "Longest sequence (prompt plus output) one request may use, in tokens. "
                "Reasoning output is long: 32768 is a good default for K2-Think. The planner "
                "sizes KV cache so at least minConcurrentSequences such sequences fit a replica.",
                minimum=256,
                maximum=1048576,
                default=32768,
            ),
            "dtype": _s(
                "Weight dtype. auto uses the model's (bfloat16) or the accelerator profile's "
                "(float32 for CPU).",
                enum=["auto", "bfloat16", "float16", "float32"],
                default="auto",
            ),
            "architecture": architecture,
            "credentialsSecret": _s(
                "Name of a Secret in this namespace whose keys become environment variables of "
                "the Ray pods (e.g. HF_TOKEN, AWS_ACCESS_KEY_ID).",
                pattern=DNS_LABEL,
                maxLength=253,
            ),
        },
        **{
            "x-kubernetes-validations": [
                {
                    "rule": "self.preset == 'custom' ? (has(self.architecture) && "
                    "has(self.source)) : !has(self.architecture)",
                    "message": "preset custom needs architecture and source; presets k2-think "
                    "and k2-think-v2 do not take an architecture",
                }
            ]
        },
    )


def pool_schema() -> Schema:
    return _o(
        "A GPU node pool replicas may run on. Order matters: the first pool is preferred and "
        "receives the replica floor first.",
        {
            "name": _s(
                "Pool name; also the Ray worker group name.", pattern=DNS_LABEL, maxLength=40
            ),
            "gpuType": _s(
                "Accelerator type of the pool's nodes (sets memory, bandwidth, the GPU resource "
                "name and Ray's accelerator_type). CPU is a development profile that runs vLLM's "
                "CPU backend.",
                enum=sorted(ACCELERATORS),
            ),
            "gpusPerNode": _i(
                "GPUs on one node of the pool. Tensor-parallel groups never span nodes.",
                minimum=1,
                maximum=64,
                default=8,
            ),
            "nodeSelector": _map("Node labels a worker pod of this pool requires."),
            "tolerations": _tolerations("Tolerations for the pool's taints (e.g. nvidia.com/gpu)."),
            "affinity": {
                "type": "object",
                "description": "Pod affinity for the pool's worker pods (core/v1 Affinity), "
                "e.g. to keep a deployment's replicas on one network block.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "maxNodes": _i(
                "Most nodes of this pool the deployment may use; bounds the worker group and "
                "the replicas placed here. Unset: only the autoscaling bounds limit it.",
                minimum=1,
            ),
            "gpuMemoryGiB": _n(
                "Override the usable memory per GPU the catalog assumes for gpuType (GiB).",
                exclusiveMinimum=True,
                minimum=0,
            ),
            "cpuPerGpu": _quantity(
                "CPU requested per GPU of a worker pod (tokenization, scheduling, NCCL).",
                default="8",
            ),
            "memoryPerGpu": _quantity(
                "Host memory requested per GPU of a worker pod (weight loading, CPU offload).",
                default="64Gi",
            ),
        },
        required=["name", "gpuType"],
    )


def parallelism_schema() -> Schema:
    return _o(
        "How one replica is split across GPUs. auto lets the planner choose; a number is "
        "checked against the model and the pools, never overridden.",
        {
            "tensor": _degree(
                "Tensor-parallel degree: GPUs one pipeline stage spans, inside one node. Must "
                "divide the attention heads; KV heads and TP must divide one another."
            ),
            "pipeline": _degree(
                "Pipeline-parallel degree: stages of a replica, placed on separate worker pods "
                "when a replica does not fit one node."
            ),
            "minConcurrentSequences": _i(
                "Full-context sequences one replica must hold in KV cache for a layout to be "
                "acceptable.",
                minimum=1,
                maximum=4096,
                default=1,
            ),
            "tpGainThreshold": _n(
                "A larger TP is chosen only when it raises full-context sequences per GPU by at "
                "least this fraction (0.25 = 25%): it doubles all-reduce traffic and halves the "
                "number of independently scalable replicas.",
                minimum=0,
                maximum=10,
                default=0.25,
            ),
        },
    )


def autoscaling_schema() -> Schema:
    return _o(
        "Ray Serve autoscaling of model replicas on ongoing requests (the right signal for LLM "
        "serving, unlike GPU utilisation). Mutually exclusive with replicas.",
        {
            "minReplicas": _i(
                "Fewest replicas; 0 allows scale to zero (the ingress stays up on the Ray head "
                "and wakes a replica on the first request, after a cold start).",
                minimum=0,
                maximum=10000,
                default=1,
            ),
            "maxReplicas": _i("Most replicas.", minimum=1, maximum=10000),
            "initialReplicas": _i(
                "Replicas at first deploy; defaults to max(minReplicas, 1).",
                minimum=0,
                maximum=10000,
            ),
            "targetOngoingRequests": _i(
                "Ongoing requests per replica Serve aims for. Default: twice the full-context "
                "concurrency of the plan, capped at engine.maxNumSeqs. (Serve LLM's own default "
                "of 1e9 never scales.)",
                minimum=1,
                maximum=100000,
            ),
            "upscaleDelaySeconds": _n(
                "How long demand must stay high before adding replicas.",
                minimum=0,
                maximum=3600,
                default=30,
            ),
            "downscaleDelaySeconds": _n(
                "How long demand must stay low before removing replicas; keep it long, reasoning "
                "replicas are expensive to bring back.",
                minimum=0,
                maximum=86400,
                default=600,
            ),
            "idleTimeoutSeconds": _i(
                "How long an idle Ray worker pod lives before the Ray autoscaler removes it and "
                "frees its GPUs.",
                minimum=0,
                maximum=86400,
                default=60,
            ),
            "poolFallbackSeconds": _i(
                POOL_FALLBACK_DESCRIPTION,
                minimum=30,
                maximum=86400,
                default=POOL_FALLBACK_SECONDS,
            ),
        },
        required=["maxReplicas"],
        **{
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                },
                {
                    "rule": "!has(self.initialReplicas) || (self.initialReplicas >= "
                    "self.minReplicas && self.initialReplicas <= self.maxReplicas)",
                    "message": "initialReplicas must lie within [minReplicas, maxReplicas]",
                },
            ]
        },
    )


def engine_schema() -> Schema:
    planned = sorted(PLANNED_ENGINE_ARGS)
    return _o(
        "vLLM engine settings.",
        {
            "gpuMemoryUtilization": _n(
                "Share of each GPU's memory vLLM may use for weights, activations and KV cache. "
                "Default 0.9 on GPUs, 0.1 of host memory for the CPU profile.",
                exclusiveMinimum=True,
                minimum=0,
                maximum=0.99,
            ),
            "maxNumSeqs": _i(
                "Most sequences vLLM batches at once per replica.",
                minimum=1,
                maximum=65536,
                default=256,
            ),
            "enablePrefixCaching": _b(
                "Reuse KV cache across requests sharing a prefix (system prompts, multi-turn).",
                default=True,
            ),
            "reasoningParser": _s(
                "vLLM reasoning parser that splits <think>...</think> into reasoning_content. "
                "Defaults to deepseek_r1 for the K2 Think presets; empty string disables.",
                maxLength=64,
            ),
            "kvCacheDtype": _s(
                "KV cache dtype; fp8 halves KV memory (the planner accounts for it).",
                enum=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
                default="auto",
            ),
            "runtimeReserveGiB": _n(
                "GiB per GPU the planner keeps free for activations, CUDA graphs and NCCL "
                "buffers. Default from the accelerator profile (4 GiB on GPUs).",
                minimum=0,
            ),
            "extraArgs": {
                "type": "object",
                "description": "Any other vLLM engine argument, passed through to engine_kwargs "
                "(e.g. enable_chunked_prefill, max_num_batched_tokens). Arguments the operator "
                "sets from typed fields ("
                + ", ".join(planned)
                + ") are refused: the InvalidSpec condition names the field to use instead.",
                "maxProperties": 64,
                # Values are free-form, which CEL cannot type; the operator checks the keys.
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    )


def ray_schema() -> Schema:
    return _o(
        "The Ray cluster KubeRay runs for this deployment.",
        {
            "image": _s(
                "Ray image with Ray Serve LLM and vLLM (used by head and workers).",
                default=DEFAULT_RAY_IMAGE,
                minLength=1,
            ),
            "imagePullPolicy": _s(
                "Image pull policy of the Ray containers.",
                enum=["Always", "IfNotPresent", "Never"],
                default="IfNotPresent",
            ),
            "head": _o(
                "The Ray head pod: GCS, dashboard, Serve controller and the OpenAI ingress. It "
                "never runs model replicas (num-gpus 0).",
                {
                    "resources": _resources(
                        "Head container resources; its CPUs bound the ingress replicas."
                    ),
                    "nodeSelector": _map("Node labels the head pod requires (a CPU pool)."),
                    "tolerations": _tolerations("Tolerations of the head pod."),
                },
            ),
            "env": {
                "type": "array",
                "description": "Extra environment variables of the Ray containers.",
                "maxItems": 64,
                "items": _o(
                    "A name/value environment variable.",
                    {
                        "name": _s("Variable name.", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
                        "value": _s("Variable value."),
                    },
                    required=["name", "value"],
                ),
            },
            "serviceAccountName": _s(
                "ServiceAccount of the Ray pods (e.g. for workload identity to s3/gs).",
                pattern=DNS_LABEL,
            ),
        },
    )


def serving_schema() -> Schema:
    return _o(
        "Request handling of the Serve deployment.",
        {
            "gracefulShutdownSeconds": _i(
                "How long a replica being removed keeps serving its in-flight requests; long "
                "reasoning streams need minutes. Worker pods get 30 s more to terminate.",
                minimum=0,
                maximum=86400,
                default=600,
            ),
            "maxOngoingRequests": _i(
                "Requests Serve sends one replica at once; beyond it, requests queue in the "
                "router where autoscaling sees them. Default: max(maxNumSeqs, 2 x target).",
                minimum=1,
            ),
            "maxQueuedRequests": _i(
                "Requests a caller may queue before Serve answers 503; -1 for no limit.",
                minimum=-1,
            ),
        },
    )


def spec_schema() -> Schema:
    return _o(
        "Desired state of a K2 Think serving fleet.",
        {
            "model": model_schema(),
            "pools": {
                "type": "array",
                "description": "GPU node pools, most preferred first. All pools of one "
                "deployment share one tensor/pipeline layout.",
                "minItems": 1,
                "maxItems": 8,
                "items": pool_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "x-kubernetes-validations": [
                    {
                        "rule": "self.all(p, p.gpuType == 'CPU') || "
                        "self.all(p, p.gpuType != 'CPU')",
                        "message": "pools may not mix the CPU profile with GPU types",
                    }
                ],
            },
            "parallelism": parallelism_schema(),
            "replicas": _i(
                "Fixed number of model replicas (each tensor x pipeline GPUs). Mutually "
                "exclusive with autoscaling; the scale subresource (kubectl scale, HPA, KEDA) "
                "writes it. Default 1 when neither is set.",
                minimum=0,
                maximum=10000,
            ),
            "autoscaling": autoscaling_schema(),
            "engine": engine_schema(),
            "ray": ray_schema(),
            "serving": serving_schema(),
            "upgradeStrategy": _s(
                "How KubeRay rolls out changes that need a new Ray cluster (image, layout, "
                "pools): NewCluster (zero downtime, temporarily needs the GPUs twice), "
                "NewClusterWithIncrementalUpgrade (needs Gateway API support in KubeRay) or "
                "None (the running cluster is kept; only Serve config changes apply).",
                enum=["NewCluster", "NewClusterWithIncrementalUpgrade", "None"],
                default="NewCluster",
            ),
            "suspend": _b(
                "Stop the Ray cluster and free its GPUs, keeping the resource and its plan.",
                default=False,
            ),
        },
        required=["pools"],
        **{
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.replicas) && has(self.autoscaling))",
                    "message": "replicas and autoscaling are mutually exclusive: set replicas for "
                    "a fixed count, or autoscaling bounds",
                }
            ]
        },
    )


def _condition_schema() -> Schema:
    return _o(
        "A condition in Kubernetes API conventions.",
        {
            "type": _s("Ready, Progressing, Degraded, InvalidSpec or CapacityBlocked."),
            "status": _s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": _s("CamelCase reason."),
            "message": _s("Human-readable detail."),
            "observedGeneration": _i("Generation the condition was computed for.", format="int64"),
            "lastTransitionTime": _s("When status last changed.", format="date-time"),
        },
        required=["type", "status"],
    )


def status_schema() -> Schema:
    plan_pool = _o(
        "The layout on one pool.",
        {
            "name": _s("Pool name."),
            "gpuType": _s("Accelerator type."),
            "gpusPerWorkerPod": _i("GPUs one worker pod requests."),
            "workerPodsPerReplica": _i("Worker pods one replica spans."),
            "kvTokensPerReplica": _i("KV-cache tokens one replica holds.", format="int64"),
            "concurrentSequencesPerReplica": _i("Full-context sequences one replica holds."),
            "maxReplicas": _i("Replicas the pool's maxNodes allow (absent: unbounded)."),
        },
    )
    plan = _o(
        "What the planner decided, and why.",
        {
            "pool": _s("Preferred pool."),
            "gpuType": _s("Accelerator type of the preferred pool."),
            "tensorParallel": _i("Tensor-parallel degree."),
            "pipelineParallel": _i("Pipeline-parallel degree."),
            "gpusPerReplica": _i("GPUs per replica (tensor x pipeline)."),
            "gpusPerWorkerPod": _i("GPUs one worker pod requests."),
            "workerPodsPerReplica": _i("Worker pods one replica spans."),
            "weightsGiBPerGpu": _n("Weight memory per GPU."),
            "kvCacheGiBPerGpu": _n("KV-cache memory per GPU."),
            "kvTokensPerReplica": _i("KV-cache tokens per replica.", format="int64"),
            "concurrentSequencesPerReplica": _i("Full-context sequences per replica."),
            "maxModelLen": _i("Context length the plan was sized for."),
            "minReplicas": _i("Replica floor."),
            "maxReplicas": _i("Replica ceiling (after pool capacity)."),
            "targetOngoingRequests": _i("Autoscaling target per replica."),
            "maxGpus": _i("GPUs at the replica ceiling."),
            "pools": {"type": "array", "description": "Layout per pool.", "items": plan_pool},
            "explanation": _s("One line on how the layout was chosen."),
        },
    )
    return _o(
        "Observed state, written by the operator.",
        {
            "observedGeneration": _i("Generation last reconciled.", format="int64"),
            "conditions": {
                "type": "array",
                "description": "Ready, Progressing, Degraded, InvalidSpec, CapacityBlocked.",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "phase": _s(
                "One-word summary for kubectl get: Deploying, Serving, Upgrading, Degraded, "
                "CapacityBlocked, InvalidSpec or Suspended. Conditions are the API."
            ),
            "replicas": _i("Model replicas with worker pods (scale subresource)."),
            "readyReplicas": _i("Replicas whose worker pods are ready while the app RUNNING."),
            "selector": _s("Label selector of the deployment's Ray pods (for HPA)."),
            "rayServiceName": _s("Name of the RayService the operator owns."),
            "endpoint": _s("OpenAI base URL inside the cluster."),
            "applicationStatus": _s("Ray Serve application status as KubeRay reports it."),
            "poolReplicas": {
                "type": "array",
                "description": "Model replicas per pool, from the worker pods that really run "
                "there (Running) and those still waiting (Pending: no room yet, or starting). "
                "The Ray autoscaler fills pools in spec order and spills over when one is full.",
                "items": _o(
                    "Replicas of one pool.",
                    {
                        "name": _s("Pool name."),
                        "running": _i("Replicas whose worker pods are Running."),
                        "pending": _i("Replicas whose worker pods are not Running yet."),
                    },
                    required=["name"],
                ),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
            "plan": plan,
        },
    )


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {
                "app.kubernetes.io/name": "k2think-operator",
                "app.kubernetes.io/part-of": "k2think",
            },
            # Deleting the CRD deletes every K2ThinkDeployment and, through owner references,
            # every RayService serving a model: GitOps tools must never prune it.
            "annotations": {
                "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",
                "kustomize.toolkit.fluxcd.io/prune": "disabled",
                "helm.sh/resource-policy": "keep",
            },
        },
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["k2t"],
                "categories": ["k2think", "ai"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.preset"},
                        {"name": "GPU", "type": "string", "jsonPath": ".status.plan.gpuType"},
                        {
                            "name": "TP",
                            "type": "integer",
                            "jsonPath": ".status.plan.tensorParallel",
                        },
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": _o(
                            "K2ThinkDeployment serves a K2 Think reasoning model on a KubeRay "
                            "RayService (Ray Serve LLM + vLLM), laid out on GPU node pools.",
                            {
                                "apiVersion": _s("API version of this object."),
                                "kind": _s("Kind of this object."),
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                            required=["spec"],
                        )
                    },
                }
            ],
        },
    }


def openapi_schema() -> Schema:
    """The version's openAPIV3Schema (for offline validation with jsonschema)."""
    schema: Schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
