"""The operator's only Kubernetes API client: a thin REST client and a generic facade.

Writes are server-side apply with one field manager (so we never clobber fields other actors
own), create-if-absent, and merge patches; reads are gets and paged lists. Every failure comes
out as one of four errors, decided once here (``Kube._call``): ``ApiNotServed`` (the resource
type is not served: a CRD not installed), ``ApplyRejected`` (the API server refused the object:
validation, admission, RBAC — not worth hammering), ``TransientApiError`` (conflicts, timeouts,
5xx, no answer: worth retrying), and a 404 for one object, which is no error (``None``). What a
missing API or a refusal means for a deployment is the controllers' business.

Why not the generated ``kubernetes`` / ``kubernetes_asyncio`` clients: importing one loads every
generated model (~40 MiB of the operator's memory, and kopf imports it whenever it is installed);
the operator makes a dozen REST calls on plain JSON. Credentials: ``runtime/credentials.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import aiohttp

from k2think_operator.runtime.credentials import Credentials, load_credentials
from k2think_operator.runtime.events import Event, build_event
from k2think_operator.runtime.resources import EVENTS, Api, build_path

__all__ = [
    "NETWORK_ERRORS",
    "ApiError",
    "ApiNotServed",
    "ApplyRejected",
    "EventRecorder",
    "Kube",
    "KubeError",
    "RestClient",
    "TransientApiError",
    "build_path",
]

log = logging.getLogger(__name__)

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"
JSON_PATCH_CONTENT_TYPE = "application/json-patch+json"
JSON_CONTENT_TYPE = "application/json"
#: Items per page of a list (client-go's pager default is 500).
LIST_PAGE_SIZE = 500


class KubeError(Exception):
    """Base of the API errors the controllers map to conditions."""


class ApiNotServed(KubeError):
    """The resource type is not served (its CRD is not installed, or not yet)."""

    def __init__(self, api: Api, message: str) -> None:
        super().__init__(f"the {api.resource} API ({api.api_version}) is not served: {message}")
        self.api = api


class ApplyRejected(KubeError):
    """The API server refused the object (validation, admission, RBAC)."""


class TransientApiError(KubeError):
    """Conflicts, timeouts, 5xx, no answer: try again later."""


class ApiError(Exception):
    """A non-2xx answer of the API server: its HTTP status and its body (a ``Status`` object)."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def status_object(self) -> dict[str, Any]:
        """The body as a ``Status`` (empty when it is not one)."""
        try:
            parsed = json.loads(self.body) if self.body else {}
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def message(self) -> str:
        text = self.body.decode(errors="replace")
        status = self.status_object
        return str(status.get("message") or (text if not status else "") or self.reason)


NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def _object_missing(error: ApiError, api: Api) -> bool:
    """A 404 naming the object ("rayservices.ray.io "x" not found"), not a missing API.

    The API server answers a path it does not serve with 404 "the server could not find the
    requested resource"; an object that is not there with 404 and the object's kind and name.
    """
    if error.status != 404:
        return False
    details = error.status_object.get("details") or {}
    return bool(details.get("name")) or api.plural in error.message.lower()


def _classify(error: ApiError, api: Api, what: str) -> KubeError:
    if error.status == 404:
        return ApiNotServed(api, error.message)
    if error.status in (400, 403, 422):
        return ApplyRejected(f"the API server refused the {what}: {error.message}")
    return TransientApiError(f"{what}: HTTP {error.status}: {error.message}")


class RestClient:
    """JSON over HTTP to the API server, on aiohttp (kopf's own HTTP library)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        connections: int = 32,
        timeout: float = 60.0,
    ) -> None:
        self.credentials = credentials
        self.server = credentials.server.rstrip("/")
        context = credentials.ssl_context()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ssl=context or False),
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"User-Agent": "k2think-operator", "Accept": JSON_CONTENT_TYPE},
        )

    @classmethod
    async def connect(cls, **options: Any) -> RestClient:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        return cls(load_credentials(), **options)

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
        """One call; the decoded JSON answer, or ``ApiError`` for a non-2xx status.

        A 401 with renewable credentials (an exec plugin, a rotated token file) is tried once
        more with fresh ones, as client-go does.
        """
        data = None
        headers: dict[str, str] = {}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            auth = await self.credentials.headers(renew=attempt > 0)
            async with self._session.request(
                method, self.server + path, params=params, data=data, headers={**headers, **auth}
            ) as response:
                raw = await response.read()
                status, reason = response.status, response.reason or ""
            if status == 401 and attempt == 0 and self.credentials.renewable:
                continue
            if not 200 <= status <= 299:
                raise ApiError(status, reason, raw)
            return json.loads(raw) if raw else None
        raise AssertionError("unreachable")


class Kube:
    """Generic calls on any resource type (``Api``), with one error translation."""

    def __init__(self, api: RestClient, field_manager: str) -> None:
        self._api = api
        self.field_manager = field_manager
        self._closed = False

    @classmethod
    async def connect(cls, field_manager: str) -> Kube:
        return cls(await RestClient.connect(), field_manager)

    @property
    def rest(self) -> RestClient:
        return self._api

    async def close(self) -> None:
        self._closed = True
        await self._api.close()

    @contextlib.contextmanager
    def _call(self, api: Api, what: str = "") -> Iterator[None]:
        """Translate every failure of one API call into a ``KubeError``.

        Inside the block, catch ``ApiError`` only for the answers that are not errors (a 404
        meaning "no such object", a 409 meaning "already there") and re-raise the rest.
        """
        what = what or api.kind
        # kopf may still run a handler for a few seconds after shutdown closed this client.
        if self._closed or self._api.closed:
            raise TransientApiError(f"{what}: the operator is stopping")
        try:
            yield
        except ApiError as error:
            raise _classify(error, api, what) from error
        except NETWORK_ERRORS as error:
            raise TransientApiError(f"{what}: no answer from the API server: {error!r}") from error

    async def api_served(self, group: str, version: str, plural: str) -> bool:
        """Whether discovery lists ``plural`` in ``group/version`` (a CRD installed and served)."""
        api = Api(group, version, "", plural)
        with self._call(api, f"{plural}.{group} discovery"):
            try:
                found = await self._api.request("GET", f"/apis/{group}/{version}")
            except ApiError as error:
                if error.status == 404:
                    return False
                raise
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])

    async def get(self, api: Api, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object; None when it does not exist (``ApiNotServed`` when its type is not)."""
        with self._call(api):
            try:
                found = await self._api.request("GET", build_path(api, namespace, name))
            except ApiError as error:
                if _object_missing(error, api):
                    return None
                raise
        return cast(dict[str, Any], found)

    async def list(
        self,
        api: Api,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> list[dict[str, Any]]:
        """Every object of a collection, in pages of ``page_size`` (``limit``/``continue``).

        Why pages: an unpaged list of a campus's objects is one response the API server builds
        and the operator parses whole. client-go's pager is followed: when the server has
        compacted away the list's snapshot (410 Gone on a ``continue``), the list starts again
        from the beginning, once.
        """
        path = build_path(api, namespace)
        with self._call(api, f"{api.kind} list"):
            for attempt in (0, 1):
                items: list[dict[str, Any]] = []
                params = {"limit": str(page_size)}
                if label_selector:
                    params["labelSelector"] = label_selector
                try:
                    while True:
                        page = await self._api.request("GET", path, params=params) or {}
                        items += [dict(item) for item in page.get("items") or []]
                        token = (page.get("metadata") or {}).get("continue")
                        if not token:
                            return items
                        params = {**params, "continue": str(token)}
                except ApiError as error:
                    if error.status == 410 and attempt == 0:
                        log.info("list of %s: the snapshot expired; listing again", api.resource)
                        continue
                    raise
        raise AssertionError("unreachable")

    async def apply(
        self, api: Api, obj: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply one namespaced object, taking ownership of the fields it sets.

        Returns the object as the API server stored it (or would: ``dry_run``).
        """
        meta = obj["metadata"]
        params = {"fieldManager": self.field_manager, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        with self._call(api):
            stored = await self._api.request(
                "PATCH",
                build_path(api, meta.get("namespace"), meta["name"]),
                params=params,
                body=obj,
                content_type=APPLY_CONTENT_TYPE,
            )
        return cast(dict[str, Any], stored)

    async def create(self, api: Api, obj: Mapping[str, Any], *, dry_run: bool = False) -> bool:
        """Create an object unless one of that name exists (409: left as it is).

        True when this call created it (or would: ``dry_run``).
        """
        params = {"fieldManager": self.field_manager}
        if dry_run:
            params["dryRun"] = "All"
        with self._call(api):
            try:
                await self._api.request(
                    "POST",
                    build_path(api, obj["metadata"].get("namespace")),
                    params=params,
                    body=obj,
                )
            except ApiError as error:
                if error.status == 409:
                    return False
                raise
        return True

    async def merge_patch(
        self,
        api: Api,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str = "",
    ) -> dict[str, Any] | None:
        """A JSON merge patch of one object (or its subresource); None when it is gone."""
        with self._call(api, f"{api.kind} {subresource}".strip()):
            try:
                result = await self._api.request(
                    "PATCH",
                    build_path(api, namespace, name, subresource),
                    params={"fieldManager": self.field_manager},
                    body=dict(patch),
                    content_type=MERGE_CONTENT_TYPE,
                )
            except ApiError as error:
                if not _object_missing(error, api):
                    raise
                log.info("%s %s/%s is gone; not patched", api.kind, namespace, name)
                return None
        return cast(dict[str, Any], result or {})

    async def json_patch(
        self, api: Api, namespace: str | None, name: str, ops: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any] | None:
        """A JSON patch (RFC 6902) of one object; None when it is gone.

        Why a JSON patch: its ``test`` operations make a write conditional on the values it
        read, field by field, where a merge patch or an apply would overwrite a concurrent
        writer's value. A failed ``test`` (HTTP 422) is ``TransientApiError``: the object moved
        since it was read, decide again.
        """
        with self._call(api, f"{api.kind} JSON patch"):
            try:
                result = await self._api.request(
                    "PATCH",
                    build_path(api, namespace, name),
                    params={"fieldManager": self.field_manager},
                    body=[dict(op) for op in ops],
                    content_type=JSON_PATCH_CONTENT_TYPE,
                )
            except ApiError as error:
                if _object_missing(error, api):
                    log.info("%s %s/%s is gone; not patched", api.kind, namespace, name)
                    return None
                if error.status == 422:
                    raise TransientApiError(
                        f"{api.kind} {namespace}/{name} changed since it was read: {error.message}"
                    ) from error
                raise
        return cast(dict[str, Any], result or {})

    async def patch_status(
        self, api: Api, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        """Merge-patch ``status`` through the status subresource; the object's new
        resourceVersion (None when the object is gone)."""
        result = await self.merge_patch(
            api, namespace, name, {"status": dict(status)}, subresource="status"
        )
        if result is None:
            return None
        stored = (result.get("metadata") or {}).get("resourceVersion")
        return str(stored) if stored else None


#: Events waiting to be posted, at most (client-go's broadcaster queues 1,000 and drops beyond).
MAX_QUEUED_EVENTS = 10_000

#: How long an Event may wait for the controllers to be idle before it is posted anyway (a
#: burst of 2,000 new deployments took 73 s on 2 busy cores; a human sees the conditions at once).
MAX_EVENT_HOLD_SECONDS = 120.0
#: How often a held Event looks whether the controllers are idle.
EVENT_HOLD_POLL_SECONDS = 0.25
#: Idle means no reconcile for this long: in a burst the queue empties between two inputs for a
#: few milliseconds at a time (the operator keeps up with the user's apply), and an Event posted
#: in such a gap competes with the next input for the API server.
EVENT_QUIET_SECONDS = 1.0
#: Events are held only when at least this many wait: a burst of new objects, not the handful
#: a steady state tells (those are posted at once, however busy the controllers are).
EVENT_BURST = 50

#: What an Event needs of the object it is about: apiVersion, kind, name, namespace, uid.
InvolvedObject = tuple[str, str, str, str, str]


class EventRecorder:
    """Posts Events about objects off the reconcile: ``record`` queues, one task posts them one at
    a time in the order recorded, best effort (a failed post is logged, never retried into a
    reconcile's failure).

    Why not a POST inside the reconcile: Events were a third of the operator's API calls in a
    burst of new deployments, and each one the reconcile awaited held a worker and took API
    server CPU from the children and the user's own apply (docs/benchmarks.md, issue #20). Posted
    from one task, as client-go's recorder does from its broadcaster's goroutine, they never take
    more than one request's share of the API server and finish after the burst instead of inside
    it. The queue holds only what an Event needs of its object (not the object), and is bounded:
    beyond ``max_queued`` an Event is dropped with a warning, as client-go drops them.

    In a burst, Events also yield to the reconciles (:meth:`yield_to`): while at least ``burst``
    Events wait and the controllers have work (the operator also counts a reconcile finished
    less than ``EVENT_QUIET_SECONDS`` ago), an Event waits, up to ``max_hold`` seconds after it
    was recorded. Outside a burst an Event is posted at once: a steady state with many
    deployments always has some reconcile running, and ``kubectl describe`` should not lag it.
    In a burst of new deployments each Event is an etcd write like a child object's, and the API
    server's CPU is what the burst is bound by: posted inside it, the 2-3 Events per new
    deployment slowed the children and the user's own apply (docs/benchmarks.md, issue #20);
    held, they are posted right after.
    """

    def __init__(
        self,
        kube: Kube,
        component: str,
        *,
        max_queued: int = MAX_QUEUED_EVENTS,
        max_hold: float = MAX_EVENT_HOLD_SECONDS,
        burst: int = EVENT_BURST,
    ) -> None:
        self.kube = kube
        self.component = component
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self.max_queued = max_queued
        self.max_hold = max_hold
        self.burst = burst
        self.dropped = 0
        # (object, Event, wall-clock time, monotonic time) per Event: the smallest a queued one
        # can be, since a burst holds thousands (the timestamp is formatted when posted).
        self._queue: asyncio.Queue[tuple[InvolvedObject, Event, float, float]] = asyncio.Queue(
            max_queued
        )
        self._poster: asyncio.Task[None] | None = None
        self._busy: Callable[[], bool] = lambda: False

    def yield_to(self, busy: Callable[[], bool]) -> None:
        """Hold Events while ``busy()`` says the controllers have reconciles to run."""
        self._busy = busy

    def record(self, obj: Mapping[str, Any], event: Event) -> None:
        """Queue an Event about ``obj``, stamped now; it is posted soon after, in order."""
        meta = obj.get("metadata") or {}
        # Interned: a burst's queued Events share one copy of each kind, apiVersion, namespace.
        involved: InvolvedObject = (
            sys.intern(str(obj.get("apiVersion") or "")),
            sys.intern(str(obj.get("kind") or "")),
            str(meta.get("name") or ""),
            sys.intern(str(meta.get("namespace") or "default")),
            str(meta.get("uid") or ""),
        )
        if self._poster is None or self._poster.done():
            self._poster = asyncio.get_running_loop().create_task(self._post_queued())
        # The same message for many objects (a warning about the same plan) is kept once.
        event = Event(event.reason, sys.intern(event.message), event.warning)
        try:
            self._queue.put_nowait((involved, event, time.time(), time.monotonic()))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "event %s about %s dropped: %d queued", event.reason, involved, self.max_queued
            )

    async def _post_queued(self) -> None:
        while True:
            involved, event, at, recorded = await self._queue.get()
            try:
                while (
                    self._queue.qsize() + 1 >= self.burst
                    and self._busy()
                    and time.monotonic() - recorded < self.max_hold
                ):
                    await asyncio.sleep(EVENT_HOLD_POLL_SECONDS)
                await self._post(involved, event, at)
            finally:
                self._queue.task_done()

    async def _post(self, involved: InvolvedObject, event: Event, at: float) -> None:
        api_version, kind, name, namespace, uid = involved
        now = dt.datetime.fromtimestamp(int(at), dt.UTC).isoformat().replace("+00:00", "Z")
        obj = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
        }
        body = build_event(obj, event, component=self.component, instance=self.instance, now=now)
        try:
            await self.kube.create(EVENTS, body)
        except KubeError as error:
            log.warning("event %s about %s not posted: %s", event.reason, involved, error)
        except Exception:  # the poster outlives any one Event
            log.exception("event %s about %s not posted", event.reason, involved)

    async def flush(self) -> None:
        """Until every Event recorded so far is posted (or given up)."""
        if self._poster is not None and not self._poster.done():
            await self._queue.join()

    async def close(self, timeout: float = 10.0) -> None:
        """Post what is queued (for at most ``timeout`` seconds), then stop the poster."""
        if self._poster is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        self._poster.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poster
        self._poster = None
