"""Every Kubernetes API (group, version, kind, plural) the operator uses, named once.

kopf registrations, the API facade, the runner's discovery checks, the renderer and the CRD all
take their coordinates from here, so a version bump (KubeRay's ``ray.io/v1`` -> ``v2``, our
``v1alpha1`` -> ``v1beta1``) is one edit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Api:
    """One resource type: where it is served and what its objects are called."""

    group: str  # "" for the core API
    version: str
    kind: str
    plural: str

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of an object (``v1`` for core, else ``group/version``)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``plural.group``: the CRD name, and how error messages name the API."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def gvp(self) -> tuple[str, str, str]:
        """(group, version, plural), the order kopf's decorators and the client take."""
        return self.group, self.version, self.plural


#: Our own API (the CRD is generated from ``resource.K2ThinkDeployment``).
K2THINK = Api("k2think.dev", "v1alpha1", "K2ThinkDeployment", "k2thinkdeployments")
#: KubeRay's RayService, the one child we render.
RAYSERVICE = Api("ray.io", "v1", "RayService", "rayservices")
#: Core pods: the Ray pods KubeRay creates for a RayService (read only, for status).
PODS = Api("", "v1", "Pod", "pods")

#: Kueue's Workloads and LocalQueues: read for a deployment queued through Kueue (queueing.py);
#: a Workload's spec.active is patched for spec.suspend. Not watched (no kopf handler).
KUEUE_WORKLOAD = Api("kueue.x-k8s.io", "v1beta2", "Workload", "workloads")
KUEUE_LOCALQUEUE = Api("kueue.x-k8s.io", "v1beta2", "LocalQueue", "localqueues")

#: Custom resources our handlers watch (the runner polls discovery for them).
WATCHED = (RAYSERVICE, K2THINK)

#: Children we apply, by (apiVersion, kind) of the rendered object.
APPLIED = {(RAYSERVICE.api_version, RAYSERVICE.kind): RAYSERVICE}
