"""One reconcile, in four steps: read -> decide -> apply -> status.

- read: the live RayService from kopf's index of our RayServices (``Reconciler.lookup``; no API
  read: the watch already holds it), or from our own last apply when that is newer than what
  the watch has delivered yet; the slow resync alone GETs it (a safety net must not trust the
  cache it backs up). The pods come from kopf's index too.
- decide: ``decide(body)`` parses, plans and renders (pure); ``decision_events`` says what to
  tell a human. The CLI calls the same ``decide``.
- apply: ``apply_children`` server-side applies what is missing or drifted (``needs_apply``),
  and returns an ``ApplyResult``.
- status: ``observe`` gathers the inputs, ``status.build_status`` computes the status (pure),
  ``write_status`` patches it only when it changed.

The kopf handlers call ``Reconciler.reconcile`` for create/update/resume, for drift of the
RayService and on a slow resync; pod events call ``refresh_status`` (the status step alone).
Nothing here can apply a spec that failed validation: an invalid spec renders no children, so it
only ever produces an ``InvalidSpec`` condition and a Warning event. ``DeploymentState`` is all
the operator remembers of a deployment between reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k2think_operator import metrics
from k2think_operator import reasons as r
from k2think_operator.apis import RAYSERVICE
from k2think_operator.cacheuse import CacheView, cache_view, waiting_message, with_cache_condition
from k2think_operator.compact import Packed, pack
from k2think_operator.config import DEFAULT_RECONCILE_CONCURRENCY, current_config
from k2think_operator.decision import Decision, decide, decision_events, is_subset, needs_apply
from k2think_operator.fault_tolerance import DEFAULT_GCS_FT_REPLICA_THRESHOLD, gcs_ft_risk
from k2think_operator.kube import (
    ApplyRejected,
    KubeApi,
    KubeError,
    KubeRayMissing,
    TransientApiError,
    emit_event,
)
from k2think_operator.queueing import (
    QueueView,
    queue_events,
    queue_status,
    read_queue,
    view_from_status,
    workload_activation,
)
from k2think_operator.render.meta import COMPONENT_LABEL, POOL_LABEL
from k2think_operator.status import (
    UNSCHEDULABLE_GRACE_SECONDS,
    Observation,
    PodSummary,
    build_status,
    next_capacity_check,
    read_rayservice,
    status_patch,
)
from k2think_operator.supporting import SupportingObjects

# decide and friends live in decision.py (pure); importing them from here keeps working.
__all__ = [
    "ApplyFailure",
    "ApplyResult",
    "Decision",
    "DeploymentState",
    "Outcome",
    "Reconciler",
    "apply_children",
    "decide",
    "decision_events",
    "is_subset",
    "needs_apply",
    "observe",
    "previous_apply_failure",
    "summarize_pod",
    "write_status",
]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a reconcile did, for the handler to turn into kopf's retry semantics."""

    status: dict[str, Any]
    applied: bool = False
    wrote_status: bool = False
    invalid: bool = False
    retry_reason: str | None = None
    events: list[tuple[bool, str, str]] = field(default_factory=list)


def summarize_pod(pod: Mapping[str, Any]) -> PodSummary:
    """Reduce a Pod to what status needs (kept small: it lives in a kopf index)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    unschedulable = None
    since: float | None = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = str(scheduled.get("message") or "Unschedulable")
        since = _epoch(scheduled.get("lastTransitionTime"))
    return PodSummary(
        name=str(meta.get("name")),
        component=str(labels.get(COMPONENT_LABEL) or labels.get("ray.io/node-type", "")),
        pool=labels.get(POOL_LABEL),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        unschedulable_message=unschedulable,
        unschedulable_since=since,
        node=(pod.get("spec") or {}).get("nodeName"),
    )


def _epoch(timestamp: Any) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp (None when absent or malformed)."""
    if not timestamp:
        return None
    try:
        return dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def observe(
    decision: Decision,
    body: Mapping[str, Any],
    rayservice: Mapping[str, Any] | None,
    pods: Iterable[PodSummary],
    failure: ApplyFailure | None,
    *,
    unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS,
    gcs_ft_replica_threshold: int = DEFAULT_GCS_FT_REPLICA_THRESHOLD,
    queue: QueueView | None = None,
) -> Observation:
    """Gather everything status is computed from, once."""
    spec = decision.spec
    suspended = spec.suspend if spec else bool((body.get("spec") or {}).get("suspend"))
    return Observation(
        generation=decision.generation,
        spec_problems=decision.problems,
        plan=decision.plan,
        apply_error=failure.message if failure else None,
        apply_error_reason=failure.reason if failure else "",
        rayservice=read_rayservice(rayservice),
        pods=tuple(pods),
        suspended=suspended,
        name=decision.name,
        namespace=decision.namespace,
        now=time.time(),
        unschedulable_grace=unschedulable_grace,
        gcs_ft_replica_threshold=gcs_ft_replica_threshold,
        queue=queue if spec is not None and spec.queued else None,
    )


# --- apply: the only step that writes children -------------------------------------------------


@dataclass(frozen=True)
class ApplyFailure:
    """Why the child could not be written; shown as Degraded until it exists again."""

    reason: str  # one of reasons.APPLY_FAILURES
    message: str


@dataclass(frozen=True)
class ApplyResult:
    """What the apply step did: the child as it now is, and what went wrong."""

    live: Mapping[str, Any] | None
    applied: bool = False
    failure: ApplyFailure | None = None
    retry: str | None = None


async def apply_children(
    kube: KubeApi, decision: Decision, live: Mapping[str, Any] | None
) -> ApplyResult:
    """Server-side apply each child that is missing or differs from what we render.

    Nothing is written for an invalid spec: ``decision.children`` is empty then.
    """
    applied = False
    for child in decision.children:
        # The security objects went first (``SupportingObjects``); here only the RayService.
        if child.get("kind") != RAYSERVICE.kind or not needs_apply(child, live):
            continue
        try:
            live = await kube.apply(child)
        except KubeRayMissing as error:
            failure = ApplyFailure(r.KUBERAY_MISSING, str(error))
            return ApplyResult(live, applied, failure, retry=str(error))
        except ApplyRejected as error:
            failure = ApplyFailure(r.APPLY_REJECTED, str(error))
            return ApplyResult(live, applied, failure, retry=str(error))
        except TransientApiError as error:
            return ApplyResult(live, applied, retry=str(error))
        applied = True
        metrics.API_WRITES.labels("apply").inc()
    return ApplyResult(live, applied)


def previous_apply_failure(status: Mapping[str, Any]) -> ApplyFailure | None:
    """A still-standing apply failure from the last status (kept while the child is absent)."""
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == r.DEGRADED
            and cond.get("status") == "True"
            and cond.get("reason") in r.APPLY_FAILURES
        ):
            return ApplyFailure(str(cond.get("reason")), str(cond.get("message")))
    return None


# --- status: computed (pure), then written only when it changed --------------------------------


async def write_status(
    kube: KubeApi,
    decision: Decision,
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    on_failure: Callable[[], None] | None = None,
    on_written: Callable[[str | None, Mapping[str, Any]], None] | None = None,
) -> bool:
    """Merge-patch the status when it differs; True when it was written.

    ``on_failure`` runs when the write failed (e.g. a 503): the caller arms a retry, because
    nothing else would write this status before the next event or the slow resync.
    ``on_written`` gets the object's new resourceVersion (when the API returned it) and the
    status now stored, so the next reconcile does not take a body that predates this write
    for a status that still needs writing.
    """
    patch = status_patch(current, desired)
    if patch is None:
        return False
    try:
        version = await kube.patch_status(decision.namespace, decision.name, patch)
    except KubeError as error:
        log.warning("status of %s/%s not written: %s", decision.namespace, decision.name, error)
        metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
        if on_failure is not None:
            on_failure()
        return False
    metrics.API_WRITES.labels("status").inc()
    if on_written is not None:
        on_written(version, desired)
    return True


# --- what the watch has and what we wrote: pick the newer -------------------------------------


def resource_version(obj: Mapping[str, Any] | None) -> int:
    """An object's resourceVersion as a number; -1 when absent or not a number.

    The API calls resourceVersion opaque, but the etcd3 storage every kube-apiserver uses makes
    it etcd's modification revision, a number that only grows; the apiserver's own watch cache
    compares them as numbers (k8s.io/apiserver/pkg/storage/etcd3 ``APIObjectVersioner``). Used
    only to choose the newer of two copies of one object, never sent back.
    """
    try:
        return int(str(((obj or {}).get("metadata") or {}).get("resourceVersion")))
    except ValueError:
        return -1


def newer(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The copy with the higher resourceVersion (``a`` on a tie or when neither has one)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if resource_version(b) > resource_version(a) else a


# --- per-deployment memory and the sequence -----------------------------------------------------


@dataclass
class DeploymentState:
    """What the operator keeps of one deployment between reconciles (nothing else is kept)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The latest body and pods seen, for the resync loop (``pods=None``) and delayed re-checks.
    body: Mapping[str, Any] | None = None
    pods: tuple[PodSummary, ...] = ()
    #: The armed CapacityBlocked re-check, if any.
    recheck: asyncio.TimerHandle | None = None
    #: The armed retry of a status write that failed, if any.
    status_retry: asyncio.TimerHandle | None = None
    #: The armed retry of a reconcile that failed or must wait (``Outcome.retry_reason``).
    retry: asyncio.TimerHandle | None = None
    #: The generation last reconciled in this process (events of the same generation, e.g. our
    #: own status writes coming back, need no reconcile).
    generation: int | None = None
    #: The RayService as our last apply returned it, until the watch delivers that version
    #: (packed, as the index keeps it: ``compact.pack``).
    applied: Packed | None = None
    #: The resourceVersion and status of our last status write (the next event's body may
    #: predate it).
    written: tuple[int, Mapping[str, Any]] | None = None
    #: Last message told per once-only event reason (see ``Reconciler._unannounced``).
    announced: dict[str, str] = field(default_factory=dict)
    #: The cache revision last seen for ``spec.model.cacheRef`` and why there was none
    #: (pod events refresh status without reading the cache again).
    cache: tuple[CacheView | None, str | None] = (None, None)
    #: Kueue's last view of a queued deployment (pod events refresh status without API reads)
    #: and the armed look at Kueue while it waits (``Reconciler._schedule_queue_recheck``).
    queue: QueueView | None = None
    queue_recheck: asyncio.TimerHandle | None = None

    def remember(self, body: Mapping[str, Any], pods: Iterable[PodSummary] | None) -> None:
        self.body = body
        if pods is not None:
            self.pods = tuple(pods)

    def unseen_write(self, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The status of our last write when ``body`` predates it; else None, and the copy is
        dropped (the body includes it: one copy is enough)."""
        if self.written is None:
            return None
        version, stored = self.written
        if resource_version(body) < version:
            return stored
        self.written = None
        return None


class Reconciler:
    """Runs read -> decide -> apply -> status for one deployment at a time.

    Holds the API facade and one ``DeploymentState`` per deployment; every decision is made by
    the pure functions above from what is passed in.
    """

    def __init__(
        self,
        kube: KubeApi,
        *,
        unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS,
        status_retry_seconds: float = 5.0,
        gcs_ft_replica_threshold: int = DEFAULT_GCS_FT_REPLICA_THRESHOLD,
        concurrency: int = DEFAULT_RECONCILE_CONCURRENCY,
    ) -> None:
        self.kube = kube
        # A burst of events (a thousand deployments applied at once, the initial listing at
        # start-up) would otherwise render every deployment at once and hold all of their
        # decisions, children and API connections in memory while they wait for the API
        # server: the operator's peak memory. A few at a time keep the API server just as
        # busy (docs/benchmarks.md, "Memory").
        self._slots = asyncio.Semaphore(max(1, concurrency))
        #: Deployments with a request waiting for a slot, and why (``request``).
        self._requests: dict[tuple[str, str], set[str]] = {}
        self._work: dict[tuple[str, str], Callable[[frozenset[str]], Awaitable[None]]] = {}
        self._running: set[tuple[str, str]] = set()
        self._requested: set[asyncio.Task[None]] = set()
        self.unschedulable_grace = unschedulable_grace
        self.status_retry_seconds = status_retry_seconds
        self.gcs_ft_replica_threshold = gcs_ft_replica_threshold
        self._states: dict[tuple[str, str], DeploymentState] = {}
        self._background: set[asyncio.Task[Outcome]] = set()
        self.supporting = SupportingObjects(kube)
        #: Where the live RayService of (namespace, name) is found without an API call (the
        #: handlers point it at kopf's index); None: read it from the API.
        self.lookup: Callable[[tuple[str, str]], Mapping[str, Any] | None] | None = None

    def _state(self, decision: Decision) -> DeploymentState:
        return self._states.setdefault((decision.namespace, decision.name), DeploymentState())

    def forget(self, namespace: str, name: str) -> None:
        state = self._states.pop((namespace, name), None)
        self.supporting.forget(namespace, name)
        for timer in (
            (state.recheck, state.queue_recheck, state.status_retry, state.retry)
            if state is not None
            else ()
        ):
            if timer is not None:
                timer.cancel()

    async def reconcile(
        self,
        body: Mapping[str, Any],
        pods: Iterable[PodSummary] | None = (),
        *,
        resync: bool = False,
        slot_held: bool = False,
    ) -> Outcome:
        """Converge the children of one K2ThinkDeployment and write its status.

        ``pods=None`` reuses the pods last seen for this object (the resync loop has no index).
        ``resync``: the slow safety net: read the RayService from the API and re-apply the
        supporting objects, trusting no cache.
        A reconcile that must be retried (``Outcome.retry_reason``, or one that raised) is run
        again after ``status_retry_seconds`` with the latest body seen; an invalid spec waits
        for the next change of the spec.
        """
        async with self._slot(slot_held):  # a slot, then the deployment's lock (never reversed)
            started = time.monotonic()
            try:
                view, waiting = await self._cache_of(body)
            except TransientApiError as error:
                return Outcome(status=dict(body.get("status") or {}), retry_reason=str(error))
            decision = decide(body, view, waiting)
            state = self._state(decision)
            state.remember(body, pods)
            state.cache = (view, waiting)
            async with state.lock:
                try:
                    outcome = await self._converge(body, decision, state, resync=resync)
                except Exception:
                    metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
                    self._schedule_retry(state)
                    raise
                finally:
                    metrics.RECONCILE_TOTAL.labels(decision.namespace, decision.name).inc()
                    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
                state.generation = decision.generation
        if outcome.retry_reason:
            metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
            self._schedule_retry(state)
        return outcome

    def seen(self, body: Mapping[str, Any]) -> bool:
        """Remember ``body``; True when its generation was already reconciled in this process.

        The handler of K2ThinkDeployment events calls it: an event of a generation already
        reconciled (our own status write coming back, a label edit) needs no reconcile, only
        the newer body for the timers.
        """
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name")))
        state = self._states.get(key)
        if state is None:
            return False
        state.remember(body, None)
        state.unseen_write(body)
        return state.generation is not None and state.generation == int(meta.get("generation") or 0)

    def _slot(self, held: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """One of the ``concurrency`` slots (nothing when the caller holds one already)."""
        return contextlib.nullcontext() if held else self._slots

    def request(
        self,
        key: tuple[str, str],
        reason: str,
        work: Callable[[frozenset[str]], Awaitable[None]],
    ) -> None:
        """Run ``work`` for a deployment in the background once a slot is free.

        The kopf handlers return at once instead of awaiting the reconcile: a handler that
        waits for a slot keeps kopf's whole event body (managedFields included) and its
        per-object worker alive, and in a burst of a thousand deployments those are most of
        the operator's memory. A request waiting for its slot holds only the key; while it
        waits, further requests for the deployment join it (their reasons are merged), and
        ``work`` reads the latest bodies from the indexes when it runs, holding the slot
        (pass ``slot_held=True`` to ``reconcile``/``refresh_status``). One deployment's
        requests run one after the other, as kopf ran its handlers for one object: a request
        made while one runs starts when it ends.
        """
        self._work[key] = work
        waiting = self._requests.get(key)
        if waiting is not None:
            waiting.add(reason)
            return
        self._requests[key] = {reason}
        if key not in self._running:
            self._start(key)

    def _start(self, key: tuple[str, str]) -> None:
        async def run() -> None:
            async with self._slots:
                reasons = frozenset(self._requests.pop(key, ()))
                work = self._work.pop(key)
                self._running.add(key)
                try:
                    await work(reasons)
                except Exception:
                    log.exception("reconcile of %s/%s failed", *key)
                finally:
                    self._running.discard(key)
            if key in self._requests:  # asked for while it ran
                self._start(key)

        task = asyncio.get_running_loop().create_task(run())
        self._requested.add(task)
        task.add_done_callback(self._requested.discard)

    async def cancel_requests(self) -> None:
        """Drop the requests not done yet (kopf is stopping; the next start lists everything)."""
        for task in list(self._requested):
            task.cancel()
        await asyncio.gather(*list(self._requested), return_exceptions=True)
        self._requests.clear()
        self._work.clear()

    async def settle(self) -> None:
        """Wait until no request is waiting or running (tests, shutdown)."""
        while self._requested:
            await asyncio.gather(*list(self._requested), return_exceptions=True)

    async def _converge(
        self,
        body: Mapping[str, Any],
        decision: Decision,
        state: DeploymentState,
        *,
        resync: bool = False,
    ) -> Outcome:
        current = self._current_status(body, state)
        # read
        try:
            live = await self._read_live(decision, state, read=resync)
        except TransientApiError as error:
            # We learned nothing about the child: leave status as it is rather than report a
            # serving deployment as "RayService not found" because one GET failed.
            return Outcome(status=current, invalid=bool(decision.problems), retry_reason=str(error))
        except KubeRayMissing as error:
            failure = ApplyFailure(r.KUBERAY_MISSING, str(error))
            result = ApplyResult(None, failure=failure, retry=str(error))
            events: list[tuple[bool, str, str]] = []
        else:
            # decide (what to tell), then apply
            events = decision_events(decision, current, live)
            if decision.plan is not None:
                risk = gcs_ft_risk(decision.plan, self.gcs_ft_replica_threshold)
                if risk is not None:
                    events.append((True, r.EVENT_GCS_FAULT_TOLERANCE_OFF, risk))
            # Token Secret, ingress ConfigMap, NetworkPolicies: before the pods that need them.
            blocked = await self._converge_supporting(decision, live, events, resync=resync)
            result = blocked or await apply_children(self.kube, decision, live)
            if result.applied and result.live is not None:
                state.applied = pack(result.live)
            if result.applied:
                verb = r.EVENT_UPDATED if live is not None else r.EVENT_CREATED
                events.append((False, verb, f"applied RayService {decision.name}"))
            if decision.spec is not None and decision.spec.queued:
                queue_retry, news = await self._observe_queue(decision, result.live, current, state)
                events += news
                if queue_retry and not result.retry:
                    result = ApplyResult(result.live, result.applied, result.failure, queue_retry)
        # status
        status = self._desired_status(decision, body, current, result.live, state, result.failure)
        wrote = await self._write_status(decision, current, status, state)
        events = self._unannounced(state, events)
        for warning, reason, message in events:
            emit_event(body, warning=warning, reason=reason, message=message)
        return Outcome(
            status=status,
            applied=result.applied,
            wrote_status=wrote,
            invalid=bool(decision.problems),
            retry_reason=result.retry,
            events=events,
        )

    async def _converge_supporting(
        self,
        decision: Decision,
        live: Mapping[str, Any] | None,
        events: list[tuple[bool, str, str]],
        *,
        resync: bool,
    ) -> ApplyResult | None:
        """Apply the security objects; an ApplyResult holding the RayService back on failure."""
        if decision.problems:
            return None
        try:
            events += await self.supporting.converge(decision.children, force=resync)
        except (ApplyRejected, KubeRayMissing) as error:
            failure = ApplyFailure(r.APPLY_REJECTED, str(error))
            return ApplyResult(live, failure=failure, retry=str(error))
        except TransientApiError as error:
            return ApplyResult(live, retry=str(error))
        return None

    async def refresh_status(
        self,
        body: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        pods: Iterable[PodSummary],
        *,
        slot_held: bool = False,
    ) -> bool:
        """Recompute status from observed children only (no apply); True if it was written."""
        key = (
            str((body.get("metadata") or {}).get("namespace") or "default"),
            str((body.get("metadata") or {}).get("name")),
        )
        async with self._slot(slot_held):
            cached = self._states[key].cache if key in self._states else (None, None)
            decision = decide(body, *cached)
            state = self._state(decision)
            state.remember(body, pods)
            async with state.lock:
                current = self._current_status(body, state)
                rayservice = newer(rayservice, state.applied)
                # A still-standing apply failure stays visible while the child is absent.
                failure = previous_apply_failure(current) if rayservice is None else None
                status = self._desired_status(decision, body, current, rayservice, state, failure)
                return await self._write_status(decision, current, status, state)

    async def _read_live(
        self, decision: Decision, state: DeploymentState, *, read: bool
    ) -> Mapping[str, Any] | None:
        """The live RayService: from the watch's index (or our newer last apply), or a GET.

        ``read``: GET it (the resync's safety net, or no index to look in).
        """
        key = (decision.namespace, decision.name)
        if read or self.lookup is None:
            live = await self.kube.get_rayservice(*key)
            state.applied = None
            return live
        watched = self.lookup(key)
        if state.applied is not None and resource_version(watched) >= resource_version(
            state.applied
        ):
            state.applied = None  # the watch caught up: one copy is enough
        return newer(watched, state.applied)

    async def _write_status(
        self,
        decision: Decision,
        current: Mapping[str, Any],
        status: Mapping[str, Any],
        state: DeploymentState,
    ) -> bool:
        """``write_status``, remembering what was written and retrying a failed write."""
        return await write_status(
            self.kube,
            decision,
            current,
            status,
            lambda: self._schedule_status_retry(state),
            lambda version, stored: self._written(state, version, stored),
        )

    @staticmethod
    def _current_status(body: Mapping[str, Any], state: DeploymentState) -> dict[str, Any]:
        """The status as stored: the body's, unless our last write is newer than the body."""
        stored = state.unseen_write(body)
        return dict(stored if stored is not None else body.get("status") or {})

    @staticmethod
    def _written(state: DeploymentState, version: str | None, stored: Mapping[str, Any]) -> None:
        number = resource_version({"metadata": {"resourceVersion": version}})
        state.written = (number, dict(stored)) if number >= 0 else None

    async def _cache_of(self, body: Mapping[str, Any]) -> tuple[CacheView | None, str | None]:
        """The verified revision of the cache ``spec.model.cacheRef`` names, or why there is
        none (a deployment without cacheRef: neither)."""
        ref = ((body.get("spec") or {}).get("model") or {}).get("cacheRef")
        if not ref:
            return None, None
        namespace = str((body.get("metadata") or {}).get("namespace") or "default")
        cache = await self.kube.get_modelcache(namespace, str(ref))
        view = cache_view(cache)
        return view, (None if view is not None else waiting_message(str(ref), cache))

    def _desired_status(
        self,
        decision: Decision,
        body: Mapping[str, Any],
        current: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        state: DeploymentState,
        failure: ApplyFailure | None,
    ) -> dict[str, Any]:
        """Observe, compute the status, and arm the capacity re-check (one path for both).

        ``current`` is the status as stored (``_current_status``: our last write when the body
        predates it), so conditions keep their lastTransitionTime and an unchanged status is
        not written again.
        """
        observation = observe(
            decision,
            body,
            rayservice,
            state.pods,
            failure,
            unschedulable_grace=self.unschedulable_grace,
            gcs_ft_replica_threshold=self.gcs_ft_replica_threshold,
            queue=state.queue or view_from_status(current.get("queue")),
        )
        self._schedule_recheck(observation, state)
        status = build_status(observation, current, now_rfc3339())
        status = with_cache_condition(status, decision, now_rfc3339())
        metrics.observe_deployment(
            decision.namespace, decision.name, decision.plan, status, observation.pods
        )
        return status

    @staticmethod
    def _unannounced(
        state: DeploymentState, events: list[tuple[bool, str, str]]
    ) -> list[tuple[bool, str, str]]:
        """Drop a decision event already told for this object.

        Event handlers reconcile with the body from an index, whose status may predate our last
        write, so "the plan changed" can look true twice for one change.
        """
        fresh: list[tuple[bool, str, str]] = []
        for event in events:
            _, reason, message = event
            if reason in r.ANNOUNCED_ONCE:
                if state.announced.get(reason) == message:
                    continue
                state.announced[reason] = message
            fresh.append(event)
        return fresh

    def _schedule_recheck(self, observation: Observation, state: DeploymentState) -> None:
        """Re-evaluate status when a waiting pod crosses the CapacityBlocked grace period.

        A pod the scheduler keeps refusing may never change again, so no event would come.
        """
        delay = next_capacity_check(observation)
        if delay is None or state.recheck is not None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            state.recheck = None
            self._reconcile_latest(state)

        state.recheck = loop.call_later(delay + 1.0, fire)

    # --- Kueue (queueing.py): read its verdict, (de)activate for spec.suspend ------------------

    async def _observe_queue(
        self,
        decision: Decision,
        live: Mapping[str, Any] | None,
        current: Mapping[str, Any],
        state: DeploymentState,
    ) -> tuple[str | None, list[tuple[bool, str, str]]]:
        """Read Kueue's Workload(s) of the RayService; (de)activate them for spec.suspend.

        Returns a retry reason when the API failed (the last view is kept meanwhile) and the
        Events Kueue's verdict is worth (compared with the last view this process saw: the
        body's status may predate our own last write).
        """
        spec = decision.spec
        assert spec is not None and spec.scheduling.queue_name is not None
        queue_name = spec.scheduling.queue_name
        uid = ((live or {}).get("metadata") or {}).get("uid")
        try:
            target = await self.kube.local_queue_target(decision.namespace, queue_name)
            workloads = await self.kube.list_workloads(decision.namespace, uid) if uid else []
        except KubeError as error:
            return str(error), []
        if workloads is None:
            view = QueueView(
                r.KUEUE_MISSING,
                "the kueue.x-k8s.io Workload API is not served: install Kueue, or remove "
                "spec.scheduling.queueName",
                queue_name,
            )
        else:
            view = read_queue(queue_name, workloads, target)
        change = workload_activation(view, spec.suspend)
        if change is not None:
            try:
                await self.kube.set_workload_active(decision.namespace, change[0], change[1])
            except KubeError as error:
                return str(error), []
            metrics.API_WRITES.labels("workload").inc()
        previous = queue_status(state.queue) if state.queue else current.get("queue")
        state.queue = view
        self._schedule_queue_recheck(view, state)
        return None, queue_events(previous, view)

    def _schedule_queue_recheck(self, view: QueueView, state: DeploymentState) -> None:
        """Look at Kueue again while the deployment waits for it.

        Kueue's verdicts that matter (admission, preemption) also toggle the RayService's
        suspend, which wakes us; its reasons while queued (quota messages) change only the
        Workload, which the operator does not watch (so it needs no watch on Kueue's API).
        """
        if view.admitted or state.queue_recheck is not None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            state.queue_recheck = None
            self._reconcile_latest(state)

        state.queue_recheck = loop.call_later(current_config().queue_recheck_seconds, fire)

    def _reconcile_latest(self, state: DeploymentState) -> None:
        """Start a reconcile of the latest body the handlers saw, as a tracked background task
        (what every timer of this class does when it fires)."""
        if state.body is not None:
            task = asyncio.get_running_loop().create_task(self.reconcile(state.body, None))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _schedule_retry(self, state: DeploymentState) -> None:
        """Reconcile again after ``status_retry_seconds`` (a failed or waiting reconcile).

        Our own timer rather than kopf's retries of a raised TemporaryError: those need kopf's
        progress stored on the object (a patch per reconcile, and a backoff that outlived a
        restart), and event handlers are not retried by kopf at all.
        """
        if state.retry is not None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            state.retry = None
            self._reconcile_latest(state)

        state.retry = loop.call_later(self.status_retry_seconds, fire)

    def _schedule_status_retry(self, state: DeploymentState) -> None:
        """Reconcile again soon after a status write failed (e.g. a 503 from the API server).

        Without it the status stayed stale until the next event or the slow resync: event
        handlers are not retried by kopf, and the reconcile that failed to write had nothing
        else to retry. The retry reconciles the latest body the handlers saw, so it writes what
        is true then, not what was true when the write failed.
        """
        if state.status_retry is not None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            state.status_retry = None
            self._reconcile_latest(state)

        state.status_retry = loop.call_later(self.status_retry_seconds, fire)
