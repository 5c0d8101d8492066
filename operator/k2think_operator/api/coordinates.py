"""Every Kubernetes API (group, version, kind, plural) the operator uses, named once.

kopf registrations, the API facade, the runner's discovery checks, the renderer and the CRD all
take their coordinates from here, so a version bump (KubeRay's ``ray.io/v1`` -> ``v2``, our
``v1alpha1`` -> ``v1beta1``) is one edit.
"""

from __future__ import annotations

from k2think_operator.runtime.resources import (
    CONFIGMAPS,
    JOBS,
    LEASES,
    NETWORKPOLICIES,
    PODS,
    PVCS,
    SECRETS,
    Api,
)

__all__ = [
    "APPLIED",
    "CONFIGMAPS",
    "JOBS",
    "K2THINK",
    "KUEUE_LOCALQUEUE",
    "KUEUE_WORKLOAD",
    "LEASES",
    "MODELCACHE",
    "NETWORKPOLICIES",
    "PODS",
    "PVCS",
    "RAYCLUSTER",
    "RAYSERVICE",
    "SECRETS",
    "WATCHED",
    "Api",
]

# Built-in kinds (Pods, Jobs, claims, Secrets, ConfigMaps, NetworkPolicies, Leases) are named in
# runtime/resources.py, which knows Kubernetes only; they are re-exported here so the domain
# finds every coordinate in one place.

#: Our own API (the CRD is generated from ``resource.K2ThinkDeployment``).
K2THINK = Api("k2think.dev", "v1alpha1", "K2ThinkDeployment", "k2thinkdeployments")
#: The model cache (``modelcache.K2ThinkModelCache``), filled once per campus by a Job.
MODELCACHE = Api("k2think.dev", "v1alpha1", "K2ThinkModelCache", "k2thinkmodelcaches")
#: KubeRay's RayService, the one child we render.
RAYSERVICE = Api("ray.io", "v1", "RayService", "rayservices")
#: Read and JSON-patched (a worker group's maxReplicas) for spill-over (deployment/spill.py).
RAYCLUSTER = Api("ray.io", "v1", "RayCluster", "rayclusters")

#: Kueue's Workloads and LocalQueues: read for a deployment queued through Kueue (queueing.py);
#: a Workload's spec.active is patched for spec.suspend. Not watched (no kopf handler).
KUEUE_WORKLOAD = Api("kueue.x-k8s.io", "v1beta2", "Workload", "workloads")
KUEUE_LOCALQUEUE = Api("kueue.x-k8s.io", "v1beta2", "LocalQueue", "localqueues")

#: Custom resources our handlers watch (the runner polls discovery for them).
WATCHED = (RAYSERVICE, K2THINK, MODELCACHE)

#: Children we apply, by (apiVersion, kind) of the rendered object.
APPLIED = {
    (api.api_version, api.kind): api for api in (RAYSERVICE, CONFIGMAPS, NETWORKPOLICIES, SECRETS)
}
