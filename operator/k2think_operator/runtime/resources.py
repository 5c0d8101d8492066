"""How a resource type is named to the API server, and the built-in kinds any controller uses.

The operator's own kinds and the other projects' (KubeRay, Kueue) are named in
``api/coordinates.py`` with this type; this module knows only Kubernetes itself.
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
        """(group, version, plural), the order kopf's decorators take."""
        return self.group, self.version, self.plural


def build_path(
    api: Api, namespace: str | None = None, name: str | None = None, subresource: str = ""
) -> str:
    """The REST path of a collection or an object (``/api/v1/...`` for the core group)."""
    parts = ["/api", api.version] if not api.group else ["/apis", api.group, api.version]
    if namespace:
        parts += ["namespaces", namespace]
    parts.append(api.plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


PODS = Api("", "v1", "Pod", "pods")
SECRETS = Api("", "v1", "Secret", "secrets")
CONFIGMAPS = Api("", "v1", "ConfigMap", "configmaps")
PVCS = Api("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
JOBS = Api("batch", "v1", "Job", "jobs")
NETWORKPOLICIES = Api("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
LEASES = Api("coordination.k8s.io", "v1", "Lease", "leases")
EVENTS = Api("", "v1", "Event", "events")

#: Built-in kinds by (apiVersion, kind): what ``Kube.apply`` can find for an object.
BUILT_IN = {
    (api.api_version, api.kind): api
    for api in (PODS, SECRETS, CONFIGMAPS, PVCS, JOBS, NETWORKPOLICIES, LEASES, EVENTS)
}
