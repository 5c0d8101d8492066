"""What the deployment controller asks of the cluster, in its own words (``KubeApi``), and the
real answer on the runtime's generic client (``ClusterApi``).

The protocol is the seam the unit tests use (an in-memory stand-in, ``tests/test_reconcile.py``);
what the API server does with these calls is proven in e2e/ against a real one. Here the generic
errors get their meaning for a deployment: the RayService API not served is ``KubeRayMissing``
(a condition and a retry), Kueue's API not served means "no Kueue" (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from k2think_operator.api.coordinates import (
    APPLIED,
    K2THINK,
    KUEUE_LOCALQUEUE,
    KUEUE_WORKLOAD,
    MODELCACHE,
    PODS,
    RAYCLUSTER,
    RAYSERVICE,
    SECRETS,
)
from k2think_operator.api.kueue import JOB_UID_LABEL
from k2think_operator.runtime.events import Event
from k2think_operator.runtime.kube import (
    ApiNotServed,
    ApplyRejected,
    EventRecorder,
    Kube,
    KubeError,
)

__all__ = ["ApplyRejected", "ClusterApi", "KubeApi", "KubeRayMissing"]


class KubeRayMissing(KubeError):
    """The ray.io RayService API is not served: KubeRay's CRDs are not installed."""


def _kuberay_missing(error: ApiNotServed) -> KubeRayMissing:
    return KubeRayMissing(
        f"{error}; install KubeRay's CRDs ({RAYSERVICE.api_version}) and its operator"
    )


class KubeApi(Protocol):
    """What the deployment controller needs from the API."""

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None: ...

    async def list_deployments(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]: ...

    # Security objects (supporting.py): apply without reading, create a Secret only if absent.
    async def apply_namespaced(self, obj: Mapping[str, Any]) -> None: ...

    async def dry_run(self, obj: Mapping[str, Any]) -> None:
        """Server-side dry run (``dryRun=All``) of applying a child, or of creating a Pod;
        raises ``ApplyRejected`` with the server's message when it would be refused."""

    async def create_secret_if_absent(
        self, obj: Mapping[str, Any], generated: Mapping[str, str]
    ) -> bool: ...

    # Kueue: defaults for an API without it (fakes need not implement them).
    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        return None

    async def local_queue_target(self, namespace: str, name: str) -> str | None:
        return None

    async def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        return None

    # Spill-over (``spill.py``): the live RayCluster, and a JSON patch of it (defaults for
    # fakes without KubeRay clusters).
    async def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def patch_raycluster(
        self, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        return None

    # The model cache (``cache.py``): a default for fakes without caches.
    async def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    # Events about the deployment: a default for fakes that do not record them.
    async def post_event(self, obj: Mapping[str, Any], event: Event) -> None:
        return None

    async def close(self) -> None: ...


class ClusterApi(KubeApi):
    """``KubeApi`` on the runtime's generic client."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.events = EventRecorder(kube, kube.field_manager)

    async def post_event(self, obj: Mapping[str, Any], event: Event) -> None:
        self.events.record(obj, event)

    async def close(self) -> None:
        await self.events.close()
        await self.kube.close()

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(RAYSERVICE, namespace, name)
        except ApiNotServed as error:
            raise _kuberay_missing(error) from error

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply the RayService (or another kind we render)."""
        api = APPLIED[(obj["apiVersion"], obj["kind"])]
        try:
            return await self.kube.apply(api, obj)
        except ApiNotServed as error:
            if api == RAYSERVICE:
                raise _kuberay_missing(error) from error
            raise ApplyRejected(str(error)) from error

    async def apply_namespaced(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply a ConfigMap or NetworkPolicy we own (no read of the object)."""
        await self.apply(obj)

    async def dry_run(self, obj: Mapping[str, Any]) -> None:
        if obj.get("kind") == PODS.kind and obj.get("apiVersion") == PODS.api_version:
            # A Pod is created by KubeRay, never applied by us: dry-run the create.
            try:
                await self.kube.create(PODS, obj, dry_run=True)
            except ApiNotServed as error:
                raise ApplyRejected(str(error)) from error
            return
        api = APPLIED[(obj["apiVersion"], obj["kind"])]
        try:
            await self.kube.apply(api, obj, dry_run=True)
        except ApiNotServed as error:
            if api == RAYSERVICE:
                raise _kuberay_missing(error) from error
            raise ApplyRejected(str(error)) from error

    async def create_secret_if_absent(
        self, obj: Mapping[str, Any], generated: Mapping[str, str]
    ) -> bool:
        """Create a Secret with ``generated`` as its data unless one of that name exists.

        Only ``create`` is needed (the operator may never read a Secret): HTTP 409 means it is
        there already, and it is left alone, so a token is never rotated by a reconcile. True
        when this call created it. The values are never logged.
        """
        try:
            return await self.kube.create(SECRETS, {**dict(obj), "stringData": dict(generated)})
        except ApiNotServed as error:  # built-in APIs are always served
            raise ApplyRejected(str(error)) from error

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        return await self.kube.patch_status(K2THINK, namespace, name, status)

    async def list_deployments(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """K2ThinkDeployments in the given namespaces (all of them when empty)."""
        found: list[dict[str, Any]] = []
        for namespace in namespaces or (None,):
            found += await self.kube.list(K2THINK, namespace)
        return found

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        """Kueue Workloads of one RayService (by Kueue's job-uid label); None: no Kueue API."""
        try:
            return await self.kube.list(
                KUEUE_WORKLOAD, namespace, label_selector=f"{JOB_UID_LABEL}={job_uid}"
            )
        except ApiNotServed:
            return None

    async def local_queue_target(self, namespace: str, name: str) -> str | None:
        """The ClusterQueue a LocalQueue points at (None when it or Kueue's API is absent)."""
        try:
            found = await self.kube.get(KUEUE_LOCALQUEUE, namespace, name)
        except ApiNotServed:
            return None
        target = ((found or {}).get("spec") or {}).get("clusterQueue")
        return str(target) if target else None

    async def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Kueue's way to stop and restart a workload: ``spec.active`` (merge patch)."""
        await self.kube.merge_patch(KUEUE_WORKLOAD, namespace, name, {"spec": {"active": active}})

    async def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(RAYCLUSTER, namespace, name)
        except ApiNotServed as error:
            raise _kuberay_missing(error) from error

    async def patch_raycluster(
        self, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """JSON-patch a RayCluster (``spill.json_patch``: conditional on what was read)."""
        try:
            return await self.kube.json_patch(RAYCLUSTER, namespace, name, ops)
        except ApiNotServed as error:
            raise _kuberay_missing(error) from error

    async def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(MODELCACHE, namespace, name)
        except ApiNotServed:
            return None
