"""The CPU worker group that hosts OpenAI ingress replicas when they outgrow the Ray head.

It advertises ``k2think_ingress`` (one unit per CPU), which only ingress replicas ask for, and
starts at the pods the ingress floor needs; the Ray autoscaler adds pods as Serve adds ingress
replicas and removes idle ones after ``idleTimeoutSeconds``, like the GPU groups.
"""

from __future__ import annotations

import math
from typing import Any

from k2think_operator.api.spec import INGRESS_GROUP, K2ThinkDeploymentSpec
from k2think_operator.plan.ingress_sizing import INGRESS_RESOURCE, IngressPlan, cpu_count
from k2think_operator.plan.planner import Plan
from k2think_operator.render.meta import (
    AGENT_PORT_PARAMS,
    COMPONENT_LABEL,
    POOL_LABEL,
    build_tolerations,
    build_user_env,
    standard_labels,
)
from k2think_operator.render.security import (
    add_api_keys,
    add_ingress_module,
    container_security_context,
    pod_security_context,
)

INGRESS_COMPONENT = "ray-ingress"
#: Same envelope as rayservice.UNBOUNDED_WORKERS (not imported: rayservice imports this module).
UNBOUNDED_WORKERS = 1000
SHM_VOLUME = "dshm"


def wants_ingress_group(spec: K2ThinkDeploymentSpec, plan: Plan) -> bool:
    """Whether the RayCluster carries the ingress CPU group.

    With ``placement: auto`` on GPU pools the group is always there (zero pods until ingress
    replicas ask for ``k2think_ingress``), so moving the ingress between head and group as
    maxReplicas changes is a Serve-config change KubeRay applies in place, never a new Ray
    cluster. GPU replicas cannot land on it (GPU 0). On the CPU profile an idle CPU group could
    take model replicas' CPU bundles, and under Kueue every group is one of at most 8 PodSets of
    the workload (spec.KUEUE_MAX_WORKER_GROUPS), so there it exists only while the ingress is
    placed on it.
    """
    ingress = plan.ingress
    if ingress is None or spec.serving.ingress.placement == "head":
        return False
    return ingress.placement == "cpuGroup" or not (plan.cpu_profile or spec.queued)


def build_ingress_group(
    spec: K2ThinkDeploymentSpec, ingress: IngressPlan | None, name: str
) -> dict[str, Any]:
    assert ingress is not None  # wants_ingress_group said so
    group = spec.serving.ingress.cpu_group
    amounts = {"cpu": group.cpu, "memory": group.memory}
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": spec.ray.image,
        "imagePullPolicy": spec.ray.image_pull_policy,
        "resources": {"limits": dict(amounts), "requests": dict(amounts)},
        # Ray's object store on this node, as on every Ray pod (rayservice.SHM_VOLUME).
        "volumeMounts": [{"mountPath": "/dev/shm", "name": SHM_VOLUME}],
    }
    if spec.ray.env:
        container["env"] = build_user_env(spec.ray.env)
    container["securityContext"] = container_security_context()
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}],
        # Serve drains an ingress replica's streams like a model replica's.
        "terminationGracePeriodSeconds": spec.serving.graceful_shutdown_seconds + 30,
        "securityContext": pod_security_context(),
    }
    if not spec.ray.worker_service_account_token:
        pod_spec["automountServiceAccountToken"] = False
    # The API-key ingress class (security.py) runs here: its module, and the keys it checks.
    add_ingress_module(pod_spec, container, spec, name)
    if spec.serving.api_keys_secret:
        add_api_keys(pod_spec, container, spec.serving.api_keys_secret)
    if group.node_selector:
        pod_spec["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        pod_spec["tolerations"] = build_tolerations(group.tolerations)
    if spec.ray.service_account_name:
        pod_spec["serviceAccountName"] = spec.ray.service_account_name
    return {
        "groupName": INGRESS_GROUP,
        "replicas": (
            math.ceil(ingress.min_replicas / ingress.replicas_per_pod)
            if ingress.placement == "cpuGroup"
            else 0
        ),
        "minReplicas": 0,
        # A wide envelope, as for the GPU groups: KubeRay does not propagate group bounds to a
        # running cluster, so the Serve autoscaling bounds of the ingress are the real limit.
        "maxReplicas": max(UNBOUNDED_WORKERS, ingress.max_pods),
        "rayStartParams": dict(AGENT_PORT_PARAMS),
        # GPU 0: KubeRay/Ray must never count this pod for model replicas.
        "resources": {"GPU": "0", INGRESS_RESOURCE: str(max(1, cpu_count(group.cpu)))},
        "template": {
            "metadata": {
                "labels": {
                    **standard_labels(name),
                    COMPONENT_LABEL: INGRESS_COMPONENT,
                    POOL_LABEL: INGRESS_GROUP,
                },
            },
            "spec": pod_spec,
        },
    }
