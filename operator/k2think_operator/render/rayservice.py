"""Build the KubeRay RayService for one K2ThinkDeployment.

What goes into ``rayClusterConfig`` is only what a new Ray cluster genuinely needs (image, pod
shapes, pools, volumes). Replica counts and autoscaling bounds are carried by the Serve config,
which KubeRay updates in place; the worker groups' min/max are wide envelopes around them. The
reason: KubeRay neither rebuilds nor updates a running RayCluster when only worker replica fields
of a RayService change, so bounds kept there would silently go stale.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import yaml

from k2think_operator.api.coordinates import RAYSERVICE
from k2think_operator.api.kueue import kueue_annotations, kueue_labels
from k2think_operator.api.spec import (
    POOL_FALLBACK_SECONDS,
    K2ThinkDeploymentSpec,
    PoolSpec,
)
from k2think_operator.api.upgrade import INCREMENTAL_UPGRADE
from k2think_operator.plan.ingress_sizing import HEAD_RESOURCE, HEAD_RESOURCE_CAPACITY
from k2think_operator.plan.planner import Plan, PoolPlan
from k2think_operator.render.ingress_group import build_ingress_group, wants_ingress_group
from k2think_operator.render.meta import (
    AGENT_PORT_PARAMS,
    CLUSTER_HASH_ANNOTATION,
    COMPONENT_LABEL,
    POOL_LABEL,
    SERVE_PORT,
    SPEC_HASH_ANNOTATION,
    build_tolerations,
    build_user_env,
    cluster_hash,
    digest,
    owner_reference,
    standard_labels,
)
from k2think_operator.render.placement import worker_affinity
from k2think_operator.render.security import (
    add_api_keys,
    add_ingress_module,
    auth_options,
    autoscaler_options_security,
    autoscaler_token_volume,
    build_ingress_configmap,
    build_network_policies,
    build_token_secret,
    container_security_context,
    pod_security_context,
)
from k2think_operator.render.serve_config import (
    MODEL_MOUNT_ROOT,
    pvc_claims,
    render_serve_config,
)

#: Upper bound on worker pods per group when a pool has no maxNodes: KubeRay needs a number, and
#: the Serve autoscaling bounds are what actually limit replicas.
UNBOUNDED_WORKERS = 1000
SHM_VOLUME = "dshm"
MODEL_VOLUME = "models"

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def multiply_quantity(quantity: str, factor: int) -> str:
    """``"64Gi" * 4 -> "256Gi"``; keeps the unit so rendered YAML stays readable."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"cannot scale quantity {quantity!r}")
    number, unit = match.groups()
    value = Decimal(number) * factor
    text = format(value.normalize(), "f")
    return f"{text}{unit}"


def _add_env(container: dict[str, Any], spec: K2ThinkDeploymentSpec) -> None:
    """The user's variables and the credentials Secret, on every Ray container alike."""
    if spec.ray.env:
        container["env"] = build_user_env(spec.ray.env)
    if spec.model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]


def build_head_group(spec: K2ThinkDeploymentSpec, name: str) -> dict[str, Any]:
    head = spec.ray.head
    container: dict[str, Any] = {
        "name": "ray-head",
        "image": spec.ray.image,
        "imagePullPolicy": spec.ray.image_pull_policy,
        "resources": {k: dict(v) for k, v in head.resources.model_dump().items() if v},
        "ports": [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": SERVE_PORT, "name": "serve"},
            {"containerPort": 8080, "name": "metrics"},
        ],
    }
    _add_env(container, spec)
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = [{"mountPath": "/dev/shm", "name": SHM_VOLUME}]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
            autoscaler_token_volume(),
        ],
        "securityContext": pod_security_context(),
        # The Ray container runs Serve, the ingress and any job: no Kubernetes credentials.
        # The autoscaler sidecar gets the token through autoscalerOptions.volumeMounts.
        "automountServiceAccountToken": False,
    }
    add_ingress_module(pod_spec, container, spec, name)
    if spec.serving.api_keys_secret:
        add_api_keys(pod_spec, container, spec.serving.api_keys_secret)
    if head.node_selector:
        pod_spec["nodeSelector"] = dict(head.node_selector)
    if head.tolerations:
        pod_spec["tolerations"] = build_tolerations(head.tolerations)
    if spec.ray.service_account_name:
        pod_spec["serviceAccountName"] = spec.ray.service_account_name
    return {
        # The head never runs model replicas; it hosts the GCS, dashboard, Serve controller and
        # the OpenAI ingress (pinned here through a custom resource).
        # KubeRay refuses resource settings in both rayStartParams and the group's resources,
        # so all of them go in `resources` (it turns GPU into --num-gpus, the rest into
        # --resources, and the Ray autoscaler reads the same field).
        "rayStartParams": {"dashboard-host": "0.0.0.0", **AGENT_PORT_PARAMS},
        "resources": {"GPU": "0", HEAD_RESOURCE: str(HEAD_RESOURCE_CAPACITY)},
        "template": {
            "metadata": {
                "labels": {**standard_labels(name), COMPONENT_LABEL: "ray-head"},
            },
            "spec": pod_spec,
        },
    }


def _worker_pod_resources(pool: PoolSpec, pool_plan: PoolPlan) -> dict[str, Any]:
    gpus = pool_plan.gpus_per_worker_pod
    amounts = {
        "cpu": multiply_quantity(pool.cpu_per_gpu, gpus),
        "memory": multiply_quantity(pool.memory_per_gpu, gpus),
    }
    if pool_plan.resource_name is not None:
        amounts[pool_plan.resource_name] = str(gpus)
    # Requests equal limits: the scheduler must see exactly what the plan needs.
    return {"limits": dict(amounts), "requests": dict(amounts)}


def _worker_bounds(
    plan: Plan, pool_plan: PoolPlan, *, incremental: bool = False
) -> tuple[int, int, int]:
    """(replicas, minReplicas, maxReplicas) in worker pods for one group.

    ``incremental`` (``upgradeStrategy: NewClusterWithIncrementalUpgrade``): KubeRay builds the
    new cluster of an upgrade from this template, ``replicas`` included, so a floor or a fixed
    count there would start the whole fleet's pods beside the old cluster's at once: the GPUs
    twice, which the strategy exists to avoid. The new cluster starts with the warm pods only;
    the Ray autoscaler adds the rest as Serve's ``target_capacity`` grows step by step."""
    pods = pool_plan.worker_pods_per_replica
    capacity = pool_plan.max_replicas
    maximum = (
        capacity * pods
        if capacity is not None
        else max(UNBOUNDED_WORKERS, plan.max_replicas * pods)
    )
    initial = pool_plan.min_replicas * pods
    if not plan.autoscaling and pool_plan.fixed_replicas is not None:
        initial = pool_plan.fixed_replicas * pods
    # Warm replicas: the autoscaler keeps the floor's pods and the warm ones (its
    # min_worker_nodes for the group) and starts them with the cluster. Without any, 0: the
    # floor's pods stay because Serve's replicas use them, and leave when a pool spills.
    minimum = 0
    if pool_plan.warm_replicas:
        minimum = min(maximum, (pool_plan.min_replicas + pool_plan.warm_replicas) * pods)
    if incremental:
        return minimum, minimum, maximum
    return max(initial, minimum), minimum, maximum


def build_worker_group(
    spec: K2ThinkDeploymentSpec, plan: Plan, pool: PoolSpec, pool_plan: PoolPlan, name: str
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": spec.ray.image,
        "imagePullPolicy": spec.ray.image_pull_policy,
        "resources": _worker_pod_resources(pool, pool_plan),
        "volumeMounts": [{"mountPath": "/dev/shm", "name": SHM_VOLUME}],
    }
    volumes: list[dict[str, Any]] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]
    for index, claim in enumerate(pvc_claims(spec)):
        # The first claim keeps the volume name it always had (a running RayCluster's pod
        # template does not change); a draft on another claim gets "models-1".
        volume = MODEL_VOLUME if index == 0 else f"{MODEL_VOLUME}-{index}"
        container["volumeMounts"].append(
            {"mountPath": f"{MODEL_MOUNT_ROOT}/{claim}", "name": volume, "readOnly": True}
        )
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    _add_env(container, spec)
    container["securityContext"] = container_security_context()

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        # Serve drains a replica for gracefulShutdownSeconds; the pod must outlive that.
        "terminationGracePeriodSeconds": spec.serving.graceful_shutdown_seconds + 30,
        "securityContext": pod_security_context(),
    }
    if not spec.ray.worker_service_account_token:
        pod_spec["automountServiceAccountToken"] = False
    add_ingress_module(pod_spec, container, spec, name)
    if pool.node_selector:
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod_spec["tolerations"] = build_tolerations(pool.tolerations)
    affinity = worker_affinity(pool)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.ray.service_account_name:
        pod_spec["serviceAccountName"] = spec.ray.service_account_name

    replicas, minimum, maximum = _worker_bounds(
        plan, pool_plan, incremental=spec.upgrade_strategy == INCREMENTAL_UPGRADE
    )
    group: dict[str, Any] = {
        "groupName": pool.name,
        "replicas": replicas,
        "minReplicas": minimum,
        "maxReplicas": maximum,
        "rayStartParams": dict(AGENT_PORT_PARAMS),
        "template": {
            "metadata": {
                "labels": {
                    **standard_labels(name),
                    COMPONENT_LABEL: "ray-worker",
                    POOL_LABEL: pool.name,
                },
            },
            "spec": pod_spec,
        },
    }
    if pool_plan.ray_accelerator_type is not None:
        # Ray detects `accelerator_type:<X>` on the node itself, but the autoscaler only knows
        # what a group offers from its spec: without this, replicas pinned to a GPU type could
        # never trigger a scale-up.
        group["resources"] = {f"accelerator_type:{pool_plan.ray_accelerator_type}": "1"}
    return group


#: Ray autoscaler v2's give-up time for a launched node that is not running Ray yet
#: (``ray/autoscaler/v2/instance_manager/config.py``, ``InstanceReconcileConfig``).
ALLOCATE_TIMEOUT_ENV = "RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S"


def build_autoscaler_options(spec: K2ThinkDeploymentSpec) -> dict[str, Any]:
    """Ray autoscaler v2, with a give-up time that lets a full pool spill to the next one.

    v2 because it keeps the order of ``workerGroupSpecs`` when groups score equally (its
    ``ResourceDemandScheduler`` sorts stably; v1 breaks ties by group name), maps pods to Ray
    nodes by name, and gives up on a pod that does not become a Ray node: after
    ``RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S`` it terminates the instance and marks
    its group unavailable, so the next pool wins the tie. Ray's default for that is an hour
    (a Pending pod in a full pool blocks scale-up that long); we render
    ``autoscaling.poolFallbackSeconds``. docs/autoscaling.md has the whole chain.
    """
    autoscaling = spec.autoscaling
    fallback = autoscaling.pool_fallback_seconds if autoscaling else POOL_FALLBACK_SECONDS
    return {
        "version": "v2",
        "upscalingMode": "Default",
        "idleTimeoutSeconds": autoscaling.idle_timeout_seconds if autoscaling else 60,
        "env": [{"name": ALLOCATE_TIMEOUT_ENV, "value": str(fallback)}],
    }


def build_ray_cluster_config(spec: K2ThinkDeploymentSpec, plan: Plan, name: str) -> dict[str, Any]:
    pools_by_name = {p.name: p for p in spec.pools}
    config: dict[str, Any] = {
        "rayVersion": _ray_version(spec.ray.image),
        # On even for a fixed replica count: Serve's num_replicas is then the only knob, and the
        # Ray autoscaler turns replicas into worker pods (KubeRay does not propagate replica
        # edits of a RayService to its running cluster).
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {**build_autoscaler_options(spec), **autoscaler_options_security()},
        "headGroupSpec": build_head_group(spec, name),
        "workerGroupSpecs": [
            build_worker_group(spec, plan, pools_by_name[p.name], p, name) for p in plan.pools
        ],
    }
    if wants_ingress_group(spec, plan):
        config["workerGroupSpecs"].append(build_ingress_group(spec, plan.ingress, name))
    auth = auth_options(spec, name)
    if auth is not None:
        config["authOptions"] = auth
    options = gcs_fault_tolerance_options(spec)
    if options is not None:
        config["gcsFaultToleranceOptions"] = options
    # Always explicit: a suspended RayCluster resumes only on `suspend: false`, not on an absent
    # field (KubeRay v1.6), and KubeRay toggles it in place on the running cluster.
    # Under Kueue the field is Kueue's (it suspends until admission and on preemption): leaving
    # it out keeps it out of our apply and our drift check (queueing.py).
    if not spec.queued:
        config["suspend"] = spec.suspend
    return config


def gcs_fault_tolerance_options(spec: K2ThinkDeploymentSpec) -> dict[str, Any] | None:
    """KubeRay v1.6 ``GcsFaultToleranceOptions`` (apis/ray/v1/raycluster_types.go).

    KubeRay does the rest (controllers/ray/common/pod.go ``initTemplateAnnotations``): the head
    gets RAY_REDIS_ADDRESS, REDIS_PASSWORD from the Secret, ``--redis-password`` and
    RAY_external_storage_namespace (the RayCluster's UID unless set); the workers get
    RAY_gcs_rpc_server_reconnect_timeout_s=600 so their raylets wait for a restarted head
    instead of exiting after Ray's default 60 s; a finalizer runs a Redis clean-up job when the
    RayCluster is deleted. Setting any of those by hand is refused by KubeRay's validation.
    """
    ft = spec.ray.gcs_fault_tolerance
    if ft is None:
        return None
    options: dict[str, Any] = {"redisAddress": ft.redis_address}
    if ft.password_secret is not None:
        options["redisPassword"] = {
            "valueFrom": {
                "secretKeyRef": {"name": ft.password_secret.name, "key": ft.password_secret.key}
            }
        }
    if ft.external_storage_namespace is not None:
        options["externalStorageNamespace"] = ft.external_storage_namespace
    return options


def _ray_version(image: str) -> str:
    match = re.search(r":(\d+\.\d+\.\d+)", image)
    return match.group(1) if match else "2.60.0"


def build_rayservice(
    spec: K2ThinkDeploymentSpec,
    plan: Plan,
    *,
    name: str,
    namespace: str,
    uid: str | None = None,
) -> dict[str, Any]:
    """The desired RayService. ``uid`` adds the owner reference (absent in offline renders)."""
    cluster_config = build_ray_cluster_config(spec, plan, name)
    upgrade: dict[str, Any] = {"type": spec.upgrade_strategy}
    if spec.incremental_upgrade is not None:
        upgrade["clusterUpgradeOptions"] = spec.incremental_upgrade.cluster_upgrade_options()
    body: dict[str, Any] = {
        "upgradeStrategy": upgrade,
        "serveConfigV2": render_serve_config(spec, plan, name),
        "rayClusterConfig": cluster_config,
    }
    queue, priority = spec.scheduling.queue_name, spec.scheduling.priority_class_name
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**standard_labels(name), **kueue_labels(queue, priority)},
        "annotations": {
            SPEC_HASH_ANNOTATION: digest(body),
            CLUSTER_HASH_ANNOTATION: cluster_hash(cluster_config),
            **kueue_annotations(queue),
        },
    }
    if uid is not None:
        metadata["ownerReferences"] = [owner_reference(name, uid)]
    return {
        "apiVersion": RAYSERVICE.api_version,
        "kind": RAYSERVICE.kind,
        "metadata": metadata,
        "spec": body,
    }


def build_children(
    spec: K2ThinkDeploymentSpec,
    plan: Plan,
    *,
    name: str,
    namespace: str,
    uid: str | None = None,
) -> list[dict[str, Any]]:
    """Every object the operator owns for one K2ThinkDeployment; the RayService comes first.

    The reconciler creates the token Secret and the ingress ConfigMap before it applies the
    RayService (the Ray pods and KubeRay's dashboard client need them from the start).
    """
    children = [build_rayservice(spec, plan, name=name, namespace=namespace, uid=uid)]
    for extra in (
        build_token_secret(spec, name=name, namespace=namespace, uid=uid),
        build_ingress_configmap(spec, name=name, namespace=namespace, uid=uid),
    ):
        if extra is not None:
            children.append(extra)
    children += build_network_policies(spec, name=name, namespace=namespace, uid=uid)
    return children


class _BlockDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (serveConfigV2) as readable ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def render_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML with sorted keys: same input, same bytes."""
    return yaml.dump_all(
        manifests,
        Dumper=_BlockDumper,
        sort_keys=True,
        default_flow_style=False,
        width=1_000_000,
        explicit_start=True,
    )
