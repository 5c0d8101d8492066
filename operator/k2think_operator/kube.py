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
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast

import aiohttp
import kopf

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
JSON_CONTENT_TYPE = "application/json"

#: In-cluster credentials (client-go's ``rest.InClusterConfig`` reads the same files).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Projected service-account tokens rotate; client-go re-reads the file every minute too.
TOKEN_REREAD_SECONDS = 60.0


class KubeError(Exception):
    """Base of the API errors the reconciler maps to conditions."""


class KubeRayMissing(KubeError):
    """The ray.io RayService API is not served: KubeRay's CRDs are not installed."""


class ApplyRejected(KubeError):
    """The API server refused the object (validation, admission, RBAC)."""


class TransientApiError(KubeError):
    """Conflicts, timeouts, 5xx: try again later."""


class ApiError(Exception):
    """A non-2xx answer of the API server: its HTTP status and its body (a ``Status`` object)."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


def _message(error: ApiError) -> str:
    text = error.body.decode(errors="replace")
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return text or str(error.reason)
    return str(parsed.get("message") or error.reason) if isinstance(parsed, dict) else text


def _classify(error: ApiError, what: str) -> KubeError:
    message = _message(error)
    if error.status == 404:
        return KubeRayMissing(
            f"the {what} API is not available: {message}; install KubeRay's CRDs "
            f"({RAYSERVICE.api_version}) and its operator"
        )
    if error.status in (400, 403, 422):
        return ApplyRejected(f"the API server refused the {what}: {message}")
    return TransientApiError(f"{what}: HTTP {error.status}: {message}")


NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def _object_missing(error: ApiError, api: Api) -> bool:
    """A 404 naming the object ("rayservices.ray.io "x" not found"), not a missing API."""
    return error.status == 404 and api.plural in _message(error).lower()


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


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")


class _ServiceAccountToken:
    """The pod's bearer token, re-read once a minute (kubelet rotates projected tokens)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = ""
        self.read_at = -TOKEN_REREAD_SECONDS

    def headers(self) -> dict[str, str]:
        now = time.monotonic()
        if now - self.read_at >= TOKEN_REREAD_SECONDS:
            with open(self.path, encoding="utf-8") as f:
                self.token = f.read().strip()
            self.read_at = now
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class RestClient:
    """JSON over HTTP to the API server, on aiohttp (kopf's own HTTP library).

    Why not the generated ``kubernetes_asyncio`` client: importing it loads 866 modules (every
    generated model) for ~37 MiB of the operator's memory, and kopf imports it whenever it is
    installed (``kopf/_cogs/helpers/thirdparty.py``); the operator uses a dozen REST calls on
    plain JSON. Credentials come from the same places: in a pod the service account (as
    client-go's ``InClusterConfig``: ``KUBERNETES_SERVICE_HOST``/``_PORT``, the token file,
    ``ca.crt``), else the kubeconfig, read by kopf's own ``login_with_kubeconfig`` and turned into
    TLS and headers by ``kopf.ConnectionInfo``.
    """

    def __init__(
        self,
        server: str,
        ssl_context: ssl.SSLContext | None,
        headers: Callable[[], Mapping[str, str]],
        *,
        connections: int = 32,
        timeout: float = 60.0,
    ) -> None:
        self.server = server.rstrip("/")
        self._headers = headers
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ssl=ssl_context or False),
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": "k2think-operator", "Accept": JSON_CONTENT_TYPE},
        )

    @classmethod
    async def connect(cls, **options: Any) -> RestClient:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        if _in_cluster():
            host = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT_HTTPS") or os.environ.get(
                "KUBERNETES_SERVICE_PORT", "443"
            )
            host = f"[{host}]" if ":" in host else host
            context = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT_DIR}/ca.crt")
            token = _ServiceAccountToken(f"{SERVICE_ACCOUNT_DIR}/token")
            return cls(f"https://{host}:{port}", context, token.headers, **options)
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        if info is None:
            raise kopf.LoginError("no in-cluster service account and no kubeconfig")
        tls = info.as_ssl_context() if info.server.startswith("https") else None
        fixed = info.as_http_headers()
        return cls(info.server, tls, lambda: fixed, **options)

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON_CONTENT_TYPE,
    ) -> Any:
        """One call; the decoded JSON answer, or ``ApiError`` for a non-2xx status."""
        headers = dict(self._headers())
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        async with self._session.request(
            method, self.server + path, params=params, data=data, headers=headers
        ) as response:
            raw = await response.read()
            if not 200 <= response.status <= 299:
                raise ApiError(response.status, response.reason or "", raw)
        return json.loads(raw) if raw else None


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


CONFIGMAPS = Api("", "v1", "ConfigMap", "configmaps")
NETWORKPOLICIES = Api("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
SECRETS = Api("", "v1", "Secret", "secrets")
_APPLIED_NAMESPACED = {CONFIGMAPS.kind: CONFIGMAPS, NETWORKPOLICIES.kind: NETWORKPOLICIES}
_CREATED = {JOBS.kind: JOBS, PVCS.kind: PVCS}


class Kube:
    """A thin async facade over the API calls the operator makes (implements ``KubeApi``)."""

    def __init__(self, api: RestClient) -> None:
        self._api = api
        self._closed = False

    @classmethod
    async def connect(cls) -> Kube:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        return cls(await RestClient.connect())

    async def close(self) -> None:
        self._closed = True
        await self._api.close()

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Translate every failure of one API call into the reconciler's ``KubeError``s.

        Inside the block, catch ``ApiError`` only for the answers that are not errors
        (a 404 meaning "no such object") and re-raise the rest to this translation.
        """
        # kopf still runs handlers for a few seconds after its cleanup closed this client.
        if self._closed or self._api.closed:
            raise TransientApiError(f"{what}: the operator is stopping")
        try:
            yield
        except ApiError as error:
            raise _classify(error, what) from error
        except NETWORK_ERRORS as error:
            raise TransientApiError(f"{what}: no answer from the API server: {error!r}") from error

    async def _get(self, path: str, **params: str) -> Any:
        return await self._api.request("GET", path, params=params or None)

    async def api_served(self, group: str, version: str, plural: str) -> bool:
        """Whether discovery lists ``plural`` in ``group/version`` (a CRD installed and served)."""
        with self._call(f"{plural}.{group} discovery"):
            try:
                found = await self._get(f"/apis/{group}/{version}")
            except ApiError as error:
                if error.status == 404:
                    return False
                raise
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one namespaced custom object, taking ownership of its fields.

        Returns the object as the API server stored it (200 when it existed, 201 created).
        """
        api = APPLIED[(obj["apiVersion"], obj["kind"])]
        meta = obj["metadata"]
        with self._call(api.kind):
            stored = await self._apply(api, meta["namespace"], meta["name"], obj)
        return cast(dict[str, Any], stored)

    async def _apply(self, api: Api, namespace: str, name: str, obj: Mapping[str, Any]) -> Any:
        return await self._api.request(
            "PATCH",
            build_path(api, namespace, name),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type=APPLY_CONTENT_TYPE,
        )

    async def apply_namespaced(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply a ConfigMap or NetworkPolicy we own (no read of the object)."""
        kind = obj["kind"]
        meta = obj["metadata"]
        if kind not in _APPLIED_NAMESPACED:
            raise ValueError(f"apply_namespaced does not handle {kind}")
        with self._call(kind):
            try:
                await self._apply(_APPLIED_NAMESPACED[kind], meta["namespace"], meta["name"], obj)
            except ApiError as error:
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
                await self._api.request(
                    "POST",
                    build_path(SECRETS, meta["namespace"]),
                    params={"fieldManager": FIELD_MANAGER},
                    body=body,
                )
            except ApiError as error:
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
        with self._call(f"{K2THINK.kind} list"):
            objects: list[dict[str, Any]] = []
            for namespace in namespaces or (None,):
                found = await self._get(build_path(K2THINK, namespace))
                objects += [dict(item) for item in (found or {}).get("items") or []]
            return objects

    async def _get_object(
        self, api: Api, namespace: str, name: str, *, api_may_be_missing: bool = False
    ) -> dict[str, Any] | None:
        """One object; None for a 404 naming it. A 404 for the API itself is raised (KubeRay's
        CRDs missing is a condition), unless ``api_may_be_missing`` (then it is None too)."""
        try:
            return cast(dict[str, Any], await self._get(build_path(api, namespace, name)))
        except ApiError as error:
            if _object_missing(error, api) or (error.status == 404 and api_may_be_missing):
                return None
            raise

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._call(RAYSERVICE.kind):
            return await self._get_object(RAYSERVICE, namespace, name)

    # --- Kueue: read its Workloads and LocalQueues; (de)activate our own Workload -------------

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        """Kueue Workloads of one RayService (by Kueue's job-uid label); None: no Kueue API."""
        with self._call(f"{KUEUE_WORKLOAD.kind} list"):
            try:
                found = await self._get(
                    build_path(KUEUE_WORKLOAD, namespace),
                    labelSelector=f"{JOB_UID_LABEL}={job_uid}",
                )
            except ApiError as error:
                if error.status == 404:
                    return None
                raise
        return [dict(item) for item in (found or {}).get("items") or []]

    async def local_queue_target(self, namespace: str, name: str) -> str | None:
        """The ClusterQueue a LocalQueue points at (None when it or Kueue's API is absent)."""
        with self._call(KUEUE_LOCALQUEUE.kind):
            try:
                found = await self._get(build_path(KUEUE_LOCALQUEUE, namespace, name))
            except ApiError as error:
                if error.status == 404:
                    return None
                raise
        target = ((found or {}).get("spec") or {}).get("clusterQueue")
        return str(target) if target else None

    async def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Kueue's way to stop and restart a workload: ``spec.active`` (merge patch)."""
        with self._call(KUEUE_WORKLOAD.kind):
            await self._api.request(
                "PATCH",
                build_path(KUEUE_WORKLOAD, namespace, name),
                params={"fieldManager": FIELD_MANAGER},
                body={"spec": {"active": active}},
                content_type=MERGE_CONTENT_TYPE,
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
        with self._call(f"{api.kind} status"):
            try:
                result = await self._api.request(
                    "PATCH",
                    build_path(api, namespace, name, "status"),
                    params={"fieldManager": FIELD_MANAGER},
                    body={"status": dict(status)},
                    content_type=MERGE_CONTENT_TYPE,
                )
            except ApiError as error:
                if error.status != 404:
                    raise
                log.info("%s/%s is gone; status not written", namespace, name)
                return None
        stored = ((result or {}).get("metadata") or {}).get("resourceVersion")
        return str(stored) if stored else None

    # --- the model cache (cachecontrol.py) ----------------------------------------------------

    async def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._call(MODELCACHE.kind):
            return await self._get_object(MODELCACHE, namespace, name, api_may_be_missing=True)

    async def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._call(PVCS.kind):
            return await self._get_object(PVCS, namespace, name, api_may_be_missing=True)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._call(JOBS.kind):
            return await self._get_object(JOBS, namespace, name, api_may_be_missing=True)

    async def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The pods of a Job (the Job controller labels them ``job-name``)."""
        with self._call(f"{PODS.kind} list"):
            found = await self._get(build_path(PODS, namespace), labelSelector=f"job-name={job}")
        return [dict(item) for item in (found or {}).get("items") or []]

    async def create(self, obj: Mapping[str, Any]) -> None:
        """Create a claim or a Job; one that already exists is left as it is (both are
        immutable in the fields we set, and a Job's name says what it fills)."""
        api = _CREATED[obj["kind"]]
        with self._call(obj["kind"]):
            try:
                await self._api.request(
                    "POST",
                    build_path(api, obj["metadata"]["namespace"]),
                    params={"fieldManager": FIELD_MANAGER},
                    body=obj,
                )
            except ApiError as error:
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
