"""The only module that talks to the Kubernetes API.

Writes are server-side apply with one field manager (so we never clobber fields other actors
own) and merge patches of our own status subresource. API errors are mapped to exceptions the
reconciler understands: ``KubeRayMissing`` (the RayService CRD is not installed: a condition and
a retry), ``ApplyRejected`` (the API server refused our object: a bug or an admission policy, not
worth hammering) and ``TransientApiError`` (everything worth retrying).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast

import aiohttp
import kopf
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from k2think_operator.apis import (
    APPLIED,
    JOBS,
    K2THINK,
    KUEUE_LOCALQUEUE,
    KUEUE_WORKLOAD,
    MODELCACHE,
    PODS,
    PVCS,
    RAYSERVICE,
    Api,
)
from k2think_operator.queueing import JOB_UID_LABEL
from k2think_operator.render.meta import FIELD_MANAGER

log = logging.getLogger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"


class KubeError(Exception):
    """Base of the API errors the reconciler maps to conditions."""


class KubeRayMissing(KubeError):
    """The ray.io RayService API is not served: KubeRay's CRDs are not installed."""


class ApplyRejected(KubeError):
    """The API server refused the object (validation, admission, RBAC)."""


class TransientApiError(KubeError):
    """Conflicts, timeouts, 5xx: try again later."""


def _message(error: ApiException) -> str:
    raw = error.body
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return text or str(error.reason)
    return str(parsed.get("message") or error.reason) if isinstance(parsed, dict) else text


def _classify(error: ApiException, what: str) -> KubeError:
    message = _message(error)
    if error.status == 404:
        return KubeRayMissing(
            f"the {what} API is not available: {message}; install KubeRay's CRDs "
            f"({RAYSERVICE.api_version}) and its operator"
        )
    if error.status in (400, 403, 422):
        return ApplyRejected(f"the API server refused the {what}: {message}")
    return TransientApiError(f"{what}: HTTP {error.status}: {message}")


_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError)


def _object_missing(error: ApiException, api: Api) -> bool:
    """A 404 naming the object ("rayservices.ray.io "x" not found"), not a missing API."""
    return error.status == 404 and api.plural in _message(error).lower()


class KubeApi(Protocol):
    """What the reconciler and the handlers need from the API; ``Kube`` is the real one, the
    unit tests' fakes are others (``tests/test_reconcile.py``)."""

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None: ...

    async def list_deployments(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]: ...

    # Security objects (supporting.py): apply without reading, create a Secret only if absent.
    async def apply_namespaced(self, obj: Mapping[str, Any]) -> None: ...

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

    # The model cache (``cacheuse``): a default for fakes without caches.
    async def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def close(self) -> None: ...


class Kube:
    """A thin async facade over the API calls the operator makes (implements ``KubeApi``)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._closed = False
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._networking = client.NetworkingV1Api(api)
        self._batch = client.BatchV1Api(api)

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

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Translate every failure of one API call into the reconciler's ``KubeError``s.

        Inside the block, catch ``ApiException`` only for the answers that are not errors
        (a 404 meaning "no such object") and re-raise the rest to this translation.
        """
        # kopf still runs handlers for a few seconds after its cleanup closed this client.
        if self._closed:
            raise TransientApiError(f"{what}: the operator is stopping")
        try:
            yield
        except ApiException as error:
            raise _classify(error, what) from error
        except _NETWORK_ERRORS as error:
            raise TransientApiError(f"{what}: no answer from the API server: {error!r}") from error

    async def api_served(self, group: str, version: str, plural: str) -> bool:
        """Whether discovery lists ``plural`` in ``group/version`` (a CRD installed and served)."""
        with self._call(f"{plural}.{group} discovery"):
            try:
                found = await self._custom.get_api_resources(group, version)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
        return any(resource.name == plural for resource in (found.resources or []))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one namespaced custom object, taking ownership of its fields.

        Returns the object as the API server stored it. The generated client decodes only an
        HTTP 200 answer (``response_types_map`` of ``patch_namespaced_custom_object``), and an
        apply that creates answers 201 with the same object: the body is read here instead
        of asking for it again with a GET.
        """
        api = APPLIED[(obj["apiVersion"], obj["kind"])]
        meta = obj["metadata"]
        with self._call(api.kind):
            response = await self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                api.group,
                api.version,
                meta["namespace"],
                api.plural,
                meta["name"],
                dict(obj),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY_CONTENT_TYPE,
                _preload_content=False,
            )
            data = await response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=cast(Any, RESTResponse(response, data)))
        return cast(dict[str, Any], json.loads(data))

    async def apply_namespaced(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply a ConfigMap or NetworkPolicy we own (no read of the object)."""
        kind = obj["kind"]
        meta = obj["metadata"]
        options: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY_CONTENT_TYPE,
        }
        with self._call(kind):
            try:
                if kind == "ConfigMap":
                    await self._core.patch_namespaced_config_map(
                        meta["name"], meta["namespace"], dict(obj), **options
                    )
                elif kind == "NetworkPolicy":
                    await self._networking.patch_namespaced_network_policy(
                        meta["name"], meta["namespace"], dict(obj), **options
                    )
                else:
                    raise ValueError(f"apply_namespaced does not handle {kind}")
            except ApiException as error:
                if error.status == 404:  # built-in APIs are always served: not KubeRayMissing
                    raise ApplyRejected(
                        f"the API server refused the {kind}: {_message(error)}"
                    ) from error
                raise

    async def create_secret_if_absent(
        self, obj: Mapping[str, Any], generated: Mapping[str, str]
    ) -> bool:
        """Create a Secret with ``generated`` as its data unless one of that name exists.

        Only ``create`` is needed (the operator may never read a Secret): HTTP 409 means it is
        there already, and it is left alone, so a token is never rotated by a reconcile.
        True when this call created it. The values are never logged.
        """
        meta = obj["metadata"]
        body = {**dict(obj), "stringData": dict(generated)}
        with self._call("Secret"):
            try:
                await self._core.create_namespaced_secret(
                    meta["namespace"], cast(Any, body), field_manager=FIELD_MANAGER
                )
            except ApiException as error:
                if error.status == 409:
                    return False
                if error.status == 404:
                    raise ApplyRejected(
                        f"the API server refused the Secret: {_message(error)}"
                    ) from error
                raise
        return True

    async def list_deployments(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """K2ThinkDeployments in the given namespaces (all of them when empty)."""
        group, version, plural = K2THINK.gvp
        with self._call(f"{K2THINK.kind} list"):
            if not namespaces:
                found = await self._custom.list_cluster_custom_object(group, version, plural)
                return [dict(item) for item in found.get("items", [])]
            objects: list[dict[str, Any]] = []
            for namespace in namespaces:
                found = await self._custom.list_namespaced_custom_object(
                    group, version, namespace, plural
                )
                objects += [dict(item) for item in found.get("items", [])]
            return objects

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        group, version, plural = RAYSERVICE.gvp
        with self._call(RAYSERVICE.kind):
            try:
                result = await self._custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name
                )
            except ApiException as error:
                if _object_missing(error, RAYSERVICE):
                    return None
                raise
        return dict(result)

    # --- Kueue: read its Workloads and LocalQueues; (de)activate our own Workload -------------

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        """Kueue Workloads of one RayService (by Kueue's job-uid label); None: no Kueue API."""
        group, version, plural = KUEUE_WORKLOAD.gvp
        with self._call(f"{KUEUE_WORKLOAD.kind} list"):
            try:
                found = await self._custom.list_namespaced_custom_object(
                    group, version, namespace, plural, label_selector=f"{JOB_UID_LABEL}={job_uid}"
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return [dict(item) for item in found.get("items", [])]

    async def local_queue_target(self, namespace: str, name: str) -> str | None:
        """The ClusterQueue a LocalQueue points at (None when it or Kueue's API is absent)."""
        group, version, plural = KUEUE_LOCALQUEUE.gvp
        with self._call(KUEUE_LOCALQUEUE.kind):
            try:
                found = await self._custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        target = (found.get("spec") or {}).get("clusterQueue")
        return str(target) if target else None

    async def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Kueue's way to stop and restart a workload: ``spec.active`` (merge patch)."""
        group, version, plural = KUEUE_WORKLOAD.gvp
        with self._call(KUEUE_WORKLOAD.kind):
            await self._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                group,
                version,
                namespace,
                plural,
                name,
                {"spec": {"active": active}},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_CONTENT_TYPE,
            )

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        """Merge-patch ``status`` of a K2ThinkDeployment through the status subresource.

        Returns the object's new resourceVersion (None when it is gone).
        """
        return await self._patch_status(K2THINK, namespace, name, status)

    async def _patch_status(
        self, api: Api, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        """Merge-patch ``status`` of one of our resources; an object already gone is no error."""
        group, version, plural = api.gvp
        with self._call(f"{api.kind} status"):
            try:
                result = await self._custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    {"status": dict(status)},
                    field_manager=FIELD_MANAGER,
                    _content_type=MERGE_CONTENT_TYPE,
                )
            except ApiException as error:
                if error.status != 404:
                    raise
                log.info("%s/%s is gone; status not written", namespace, name)
                return None
        stored = ((result or {}).get("metadata") or {}).get("resourceVersion")
        return str(stored) if stored else None

    # --- the model cache (cachecontrol.py) ----------------------------------------------------

    def _plain(self, obj: Any) -> dict[str, Any]:
        """A generated client model as the API's JSON (camelCase keys), like custom objects."""
        return cast(dict[str, Any], self._api.sanitize_for_serialization(obj))

    async def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        group, version, plural = MODELCACHE.gvp
        with self._call(MODELCACHE.kind):
            try:
                result = await self._custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return dict(result)

    async def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._call(PVCS.kind):
            try:
                found = await self._core.read_namespaced_persistent_volume_claim(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return self._plain(found)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._call(JOBS.kind):
            try:
                found = await self._batch.read_namespaced_job(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        return self._plain(found)

    async def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods of a Job (the Job controller labels them ``job-name``)."""
        with self._call(f"{PODS.kind} list"):
            found = await self._core.list_namespaced_pod(
                namespace, label_selector=f"job-name={job}"
            )
        return [self._plain(item) for item in found.items or []]

    async def create(self, obj: Mapping[str, Any]) -> None:
        """Create a claim or a Job; one that already exists is left as it is (both are
        immutable in the fields we set, and a Job's name says what it fills)."""
        namespace = obj["metadata"]["namespace"]
        with self._call(obj["kind"]):
            try:
                if obj["kind"] == JOBS.kind:
                    await self._batch.create_namespaced_job(
                        namespace,
                        dict(obj),  # type: ignore[arg-type]  # a dict body is sent as JSON
                        field_manager=FIELD_MANAGER,
                    )
                else:
                    await self._core.create_namespaced_persistent_volume_claim(
                        namespace,
                        dict(obj),  # type: ignore[arg-type]  # a dict body is sent as JSON
                        field_manager=FIELD_MANAGER,
                    )
            except ApiException as error:
                if error.status != 409:
                    raise

    async def patch_cache_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch ``status`` of a K2ThinkModelCache through the status subresource."""
        await self._patch_status(MODELCACHE, namespace, name, status)


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
