"""The only module that talks to the Kubernetes API.

Writes are server-side apply with one field manager (so we never clobber fields other actors
own) and merge patches of our own status subresource. API errors are mapped to exceptions the
reconciler understands: ``KubeRayMissing`` (the RayService CRD is not installed: a condition and
a retry), ``ApplyRejected`` (the API server refused our object: a bug or an admission policy, not
worth hammering) and ``TransientApiError`` (everything worth retrying).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from k2think_operator.queueing import JOB_UID_LABEL
from k2think_operator.render.meta import FIELD_MANAGER
from k2think_operator.spec import API_GROUP, API_VERSION, PLURAL

log = logging.getLogger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
MERGE_CONTENT_TYPE = "application/merge-patch+json"


class KubeError(Exception):
    """Base of the API errors the reconciler maps to conditions."""


class KubeRayMissing(KubeError):
    """The ray.io RayService API is not served: KubeRay's CRDs are not installed."""


class ApplyRejected(KubeError):
    """The API server refused the object (validation, admission, RBAC)."""


class TransientApiError(KubeError):
    """Conflicts, timeouts, 5xx: try again later."""


_PLURALS = {("ray.io", "RayService"): "rayservices"}


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _message(error: ApiException) -> str:
    raw = error.body
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return text or str(error.reason)
    return str(parsed.get("message") or error.reason) if isinstance(parsed, dict) else text


def _classify(error: ApiException, kind: str) -> KubeError:
    message = _message(error)
    if error.status == 404:
        return KubeRayMissing(
            f"the {kind} API is not available: {message}; install KubeRay's CRDs "
            "(ray.io/v1) and its operator"
        )
    if error.status in (400, 403, 422):
        return ApplyRejected(f"the API server refused the {kind}: {message}")
    return TransientApiError(f"{kind}: HTTP {error.status}: {message}")


_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError)


def _unreachable(error: BaseException, kind: str) -> TransientApiError:
    return TransientApiError(f"{kind}: no answer from the API server: {error!r}")


class Kube:
    """A thin async facade over the API calls the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._closed = False
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    @classmethod
    async def connect(cls) -> Kube:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
        else:
            configuration = client.Configuration()
            await config.load_kube_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
        return cls(api)

    async def close(self) -> None:
        self._closed = True
        await self._api.close()

    def _check_open(self, kind: str) -> None:
        # kopf still runs handlers for a few seconds after its cleanup closed this client.
        if self._closed:
            raise TransientApiError(f"{kind}: the operator is stopping")

    async def api_served(self, group: str, version: str, plural: str) -> bool:
        """Whether discovery lists ``plural`` in ``group/version`` (a CRD installed and served)."""
        kind = f"{plural}.{group} discovery"
        self._check_open(kind)
        try:
            found = await self._custom.get_api_resources(group, version)
        except ApiException as error:
            if error.status == 404:
                return False
            raise _classify(error, kind) from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, kind) from error
        return any(resource.name == plural for resource in (found.resources or []))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one namespaced custom object, taking ownership of its fields."""
        group, version = _split_api_version(obj["apiVersion"])
        kind = obj["kind"]
        plural = _PLURALS[(group, kind)]
        meta = obj["metadata"]
        self._check_open(kind)
        try:
            result = await self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                group,
                version,
                meta["namespace"],
                plural,
                meta["name"],
                dict(obj),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_CONTENT_TYPE,
            )
        except ApiException as error:
            raise _classify(error, kind) from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, kind) from error
        if result is None:
            # The generated client only decodes HTTP 200; an apply that creates answers 201.
            return await self._get(group, version, meta["namespace"], plural, meta["name"])
        return dict(result)

    async def _get(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        self._check_open(plural)
        try:
            result = await self._custom.get_namespaced_custom_object(
                group, version, namespace, plural, name
            )
        except ApiException as error:
            raise _classify(error, plural) from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, plural) from error
        return dict(result)

    async def list_deployments(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """K2ThinkDeployments in the given namespaces (all of them when empty)."""
        self._check_open("K2ThinkDeployment list")
        try:
            if not namespaces:
                found = await self._custom.list_cluster_custom_object(
                    API_GROUP, API_VERSION, PLURAL
                )
                return [dict(item) for item in found.get("items", [])]
            objects: list[dict[str, Any]] = []
            for namespace in namespaces:
                found = await self._custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL
                )
                objects += [dict(item) for item in found.get("items", [])]
            return objects
        except ApiException as error:
            raise _classify(error, "K2ThinkDeployment list") from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, "K2ThinkDeployment list") from error

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check_open("RayService")
        try:
            result = await self._custom.get_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayservices", name
            )
        except ApiException as error:
            if error.status == 404 and "rayservices" in _message(error).lower():
                # "rayservices.ray.io "x" not found": the object is missing, the API is not.
                return None
            raise _classify(error, "RayService") from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, "RayService") from error
        return dict(result)

    # --- Kueue (read its Workloads and LocalQueues; (de)activate our own Workload) -----------

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        """Kueue Workloads of one RayService (by Kueue's job-uid label); None: no Kueue API."""
        kind = "Kueue Workload list"
        self._check_open(kind)
        try:
            found = await self._custom.list_namespaced_custom_object(
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                "workloads",
                label_selector=f"{JOB_UID_LABEL}={job_uid}",
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise _classify(error, kind) from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, kind) from error
        return [dict(item) for item in found.get("items", [])]

    async def local_queue_target(self, namespace: str, name: str) -> str | None:
        """The ClusterQueue a LocalQueue points at (None when it or Kueue's API is absent)."""
        kind = "Kueue LocalQueue"
        self._check_open(kind)
        try:
            found = await self._custom.get_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "localqueues", name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise _classify(error, kind) from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, kind) from error
        target = (found.get("spec") or {}).get("clusterQueue")
        return str(target) if target else None

    async def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Kueue's way to stop and restart a workload: ``spec.active`` (merge patch)."""
        kind = "Kueue Workload"
        self._check_open(kind)
        try:
            await self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                "workloads",
                name,
                {"spec": {"active": active}},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_CONTENT_TYPE,
            )
        except ApiException as error:
            raise _classify(error, kind) from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, kind) from error

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch ``status`` of a K2ThinkDeployment through the status subresource."""
        self._check_open("K2ThinkDeployment status")
        try:
            await self._custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
                API_GROUP,
                API_VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_CONTENT_TYPE,
            )
        except ApiException as error:
            if error.status == 404:
                log.info("%s/%s is gone; status not written", namespace, name)
                return
            raise _classify(error, "K2ThinkDeployment status") from error
        except _NETWORK_ERRORS as error:
            raise _unreachable(error, "K2ThinkDeployment status") from error


def emit_event(body: Mapping[str, Any], *, warning: bool, reason: str, message: str) -> None:
    """Post an Event about a K2ThinkDeployment (kopf queues and posts it)."""
    target = cast(kopf.Body, body)
    try:
        if warning:
            kopf.warn(target, reason=reason, message=message)
        else:
            kopf.info(target, reason=reason, message=message)
    except LookupError:
        # Outside a running operator (tests, tools) there is no event queue: log instead.
        log.log(logging.WARNING if warning else logging.INFO, "%s: %s", reason, message)
