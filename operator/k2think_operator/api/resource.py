"""The whole K2ThinkDeployment object as models: the spec (``spec.py``) and the status we write.

These models are the API: ``crd.py`` generates the CRD's OpenAPI schema from
``K2ThinkDeployment`` (see ``apischema.py``). The status models are not used to build the
status (``status.py`` builds plain dicts, the shape of a merge patch); a unit test validates
what ``status.py`` builds against them, so a status key the schema does not declare (which the
API server would prune, and status writes would never converge) fails a test.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from k2think_operator.api.schema import Int64
from k2think_operator.api.spec import K2ThinkDeploymentSpec, _Model


class Condition(_Model):
    """A condition in Kubernetes API conventions."""

    type: str = Field(
        description="Ready, Progressing, Degraded, InvalidSpec, CapacityBlocked, (under Kueue) "
        "Admitted, SpillOver and GcsFaultToleranceOff (informational), (with upgradeStrategy "
        "NewClusterWithIncrementalUpgrade) IncrementalUpgradeUnavailable, or (with "
        "spec.model.cacheRef, and on a K2ThinkModelCache) CacheReady."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(default=None, description="CamelCase reason.")
    message: str | None = Field(default=None, description="Human-readable detail.")
    observed_generation: Int64 | None = Field(
        default=None, description="Generation the condition was computed for."
    )
    last_transition_time: str | None = Field(
        default=None,
        description="When status last changed.",
        json_schema_extra={"format": "date-time"},
    )


class PlanPool(_Model):
    """The layout on one pool."""

    name: str | None = Field(default=None, description="Pool name.")
    gpu_type: str | None = Field(default=None, description="Accelerator type.")
    gpus_per_worker_pod: int | None = Field(
        default=None, description="GPUs one worker pod requests."
    )
    worker_pods_per_replica: int | None = Field(
        default=None, description="Worker pods one replica spans."
    )
    kv_tokens_per_replica: Int64 | None = Field(
        default=None, description="KV-cache tokens one replica holds."
    )
    concurrent_sequences_per_replica: int | None = Field(
        default=None, description="Full-context sequences one replica holds."
    )
    max_replicas: int | None = Field(
        default=None, description="Replicas the pool's maxNodes allow (absent: unbounded)."
    )


class IngressPlanStatus(_Model):
    """How the OpenAI ingress is sized and where it runs."""

    placement: str | None = Field(default=None, description="head or cpuGroup.")
    min_replicas: int | None = Field(default=None, description="Fewest ingress replicas.")
    max_replicas: int | None = Field(default=None, description="Most ingress replicas.")
    target_ongoing_requests: int | None = Field(
        default=None, description="Streams per ingress replica before Serve adds one."
    )
    max_ongoing_requests: int | None = Field(
        default=None, description="Streams one ingress replica takes at most."
    )
    fleet_streams: Int64 | None = Field(
        default=None, description="Model maxReplicas x their max ongoing requests."
    )
    explanation: str | None = Field(default=None, description="How it was sized and placed.")


class PlanStatus(_Model):
    """What the planner decided, and why."""

    pool: str | None = Field(default=None, description="Preferred pool.")
    gpu_type: str | None = Field(
        default=None, description="Accelerator type of the preferred pool."
    )
    tensor_parallel: int | None = Field(default=None, description="Tensor-parallel degree.")
    pipeline_parallel: int | None = Field(default=None, description="Pipeline-parallel degree.")
    gpus_per_replica: int | None = Field(
        default=None, description="GPUs per replica (tensor x pipeline)."
    )
    gpus_per_worker_pod: int | None = Field(
        default=None, description="GPUs one worker pod requests."
    )
    worker_pods_per_replica: int | None = Field(
        default=None, description="Worker pods one replica spans."
    )
    weights_gi_b_per_gpu: float | None = Field(
        default=None, alias="weightsGiBPerGpu", description="Weight memory per GPU."
    )
    kv_cache_gi_b_per_gpu: float | None = Field(
        default=None, alias="kvCacheGiBPerGpu", description="KV-cache memory per GPU."
    )
    kv_tokens_per_replica: Int64 | None = Field(
        default=None, description="KV-cache tokens per replica."
    )
    concurrent_sequences_per_replica: int | None = Field(
        default=None, description="Full-context sequences per replica."
    )
    max_model_len: int | None = Field(
        default=None, description="Context length the plan was sized for."
    )
    min_replicas: int | None = Field(default=None, description="Replica floor.")
    max_replicas: int | None = Field(
        default=None, description="Replica ceiling (after pool capacity)."
    )
    target_ongoing_requests: int | None = Field(
        default=None, description="Autoscaling target per replica."
    )
    max_gpus: int | None = Field(default=None, description="GPUs at the replica ceiling.")
    pools: list[PlanPool] | None = Field(default=None, description="Layout per pool.")
    explanation: str | None = Field(
        default=None, description="One line on how the layout was chosen."
    )
    ingress: IngressPlanStatus | None = Field(
        default=None, description="Sizing and placement of the OpenAI ingress."
    )


class PoolReplicas(_Model):
    """Replicas of one pool."""

    name: str = Field(description="Pool name.")
    running: int | None = Field(default=None, description="Replicas whose worker pods are Running.")
    pending: int | None = Field(
        default=None, description="Replicas whose worker pods are not Running yet."
    )


class QueueStatus(_Model):
    """Kueue's view of the deployment (only with spec.scheduling.queueName)."""

    state: str | None = Field(
        default=None,
        description="Queued, Admitted, Preempted, Evicted, Deactivated (or KueueMissing).",
    )
    local_queue: str | None = Field(
        default=None, description="The LocalQueue the deployment is queued in."
    )
    cluster_queue: str | None = Field(
        default=None, description="The ClusterQueue behind it (admitting it, once admitted)."
    )
    workload: str | None = Field(default=None, description="The Kueue Workload of the RayService.")
    message: str | None = Field(default=None, description="Kueue's last word on the workload.")


class UpgradeStatus(_Model):
    """KubeRay's incremental upgrade as it stands (upgradeStrategy
    NewClusterWithIncrementalUpgrade): present only while one runs."""

    active_cluster: str | None = Field(
        default=None, description="The Ray cluster serving before the upgrade."
    )
    pending_cluster: str | None = Field(
        default=None, description="The Ray cluster the upgrade grows."
    )
    active_target_capacity: int | None = Field(
        default=None, description="Serve target_capacity of the active cluster, in percent."
    )
    active_traffic_percent: int | None = Field(
        default=None, description="Share of the Gateway's traffic sent to the active cluster."
    )
    pending_target_capacity: int | None = Field(
        default=None, description="Serve target_capacity of the pending cluster, in percent."
    )
    pending_traffic_percent: int | None = Field(
        default=None, description="Share of the Gateway's traffic sent to the pending cluster."
    )
    last_traffic_migrated_time: str | None = Field(
        default=None,
        description="When KubeRay last moved traffic.",
        json_schema_extra={"format": "date-time"},
    )


class K2ThinkDeploymentStatus(_Model):
    """Observed state, written by the operator."""

    observed_generation: Int64 | None = Field(
        default=None, description="Generation last reconciled."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded, InvalidSpec, CapacityBlocked, "
        "GcsFaultToleranceOff, for a deployment queued through Kueue, Admitted (reasons "
        "Queued, Admitted, Preempted, Evicted, Deactivated), and with upgradeStrategy "
        "NewClusterWithIncrementalUpgrade IncrementalUpgradeUnavailable (True while the "
        "operator is told KubeRay's RayServiceIncrementalUpgrade gate is off).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: str | None = Field(
        default=None,
        description="One-word summary for kubectl get: Deploying, Serving, Upgrading, Degraded, "
        "CapacityBlocked, InvalidSpec, Suspended or (under Kueue) Queued, Preempted and "
        "Evicted. Conditions are the API.",
    )
    replicas: int | None = Field(
        default=None, description="Model replicas with worker pods (scale subresource)."
    )
    ready_replicas: int | None = Field(
        default=None, description="Replicas whose worker pods are ready while the app RUNNING."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the deployment's Ray pods (for HPA)."
    )
    ray_service_name: str | None = Field(
        default=None, description="Name of the RayService the operator owns."
    )
    endpoint: str | None = Field(default=None, description="OpenAI base URL inside the cluster.")
    application_status: str | None = Field(
        default=None, description="Ray Serve application status as KubeRay reports it."
    )
    pool_replicas: list[PoolReplicas] | None = Field(
        default=None,
        description="Model replicas per pool, from the worker pods that really run there "
        "(Running) and those still waiting (Pending: no room yet, or starting). The Ray "
        "autoscaler fills pools in spec order and spills over when one is full.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    plan: PlanStatus | None = Field(default=None, description="What the planner decided, and why.")
    queue: QueueStatus | None = Field(
        default=None, description="Kueue's view of the deployment (spec.scheduling.queueName)."
    )
    upgrade: UpgradeStatus | None = Field(
        default=None,
        description="KubeRay's incremental upgrade while one runs: each Ray cluster's capacity "
        "and share of the traffic.",
    )


class K2ThinkDeployment(_Model):
    """K2ThinkDeployment serves a K2 Think reasoning model on a KubeRay RayService (Ray Serve
    LLM + vLLM), laid out on GPU node pools."""

    api_version: str | None = Field(default=None, description="API version of this object.")
    kind: str | None = Field(default=None, description="Kind of this object.")
    # The API server validates metadata itself; a CRD schema may only say it is an object.
    metadata: Annotated[dict[str, Any], WithJsonSchema({"type": "object"})] = Field(
        default_factory=dict
    )
    spec: K2ThinkDeploymentSpec = Field(description="Desired state of a K2 Think serving fleet.")
    status: K2ThinkDeploymentStatus | None = Field(
        default=None, description="Observed state, written by the operator."
    )
