"""The deployment controller: one reconcile of a K2ThinkDeployment, in four steps:
read -> decide -> apply -> status, run by the runtime's work queue (``runtime/controller.py``).

- ``reconcile(key)`` is what the runtime calls. It takes the deployment, its RayService and its
  pods from the watches' indexes (``Sources``: no API read), and looks at what changed since the
  last pass: a new generation, a RayService that moved (KubeRay's status, or drift), a failed
  pass, Kueue or the cache to look at again, the slow resync — then the whole sequence
  (``converge``); only its pods (or a grace period ending) — the status step alone
  (``refresh_status``); nothing — nothing at all (our own status write coming back as an event).
  It returns when to look again (``Result.requeue_after``: a pending pod crossing the
  CapacityBlocked grace, Kueue while it queues) or raises ``RetryLater`` (the runtime backs off).
- read: the live RayService from the index, or from our own last apply when that is newer than
  what the watch has delivered yet; the slow resync alone GETs it (a safety net must not trust
  the cache it backs up).
- decide: ``decide(body)`` parses, plans and renders (pure); ``decision_events`` says what to
  tell a human. The CLI calls the same ``decide``.
- apply: ``apply_children`` server-side applies what is missing or drifted (``needs_apply``).
- status: ``observe`` gathers the inputs, ``status.build_status`` computes the status (pure),
  ``write_status`` patches it only when it changed.

Nothing here can apply a spec that failed validation: an invalid spec renders no children, so it
only ever produces an ``InvalidSpec`` condition and a Warning event. ``DeploymentState`` is all
the operator remembers of a deployment between reconciles; it holds no timer (the runtime's
queue does, one per key).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from k2think_operator.api import reasons as r
from k2think_operator.api.coordinates import RAYSERVICE
from k2think_operator.api.kueue import (
    QueueView,
    queue_events,
    queue_status,
    read_queue,
    view_from_status,
    workload_activation,
)
from k2think_operator.deployment import metrics as deployment_metrics
from k2think_operator.deployment.cache import (
    CacheView,
    cache_refs,
    cache_view,
    waiting_message,
    with_cache_condition,
)
from k2think_operator.deployment.cluster import ApplyRejected, KubeApi, KubeRayMissing
from k2think_operator.deployment.decide import (
    Decision,
    decide,
    decision_events,
    is_subset,
    needs_apply,
)
from k2think_operator.deployment.dryrun import pods_for, rayservice_of, rejection_message
from k2think_operator.deployment.spill import (
    DEFAULT_SPILL_RETRY_SECONDS,
    decide_spill,
    json_patch,
    read_caps,
    read_groups,
    rendered_max,
    rendered_min,
    spill_wanted,
)
from k2think_operator.deployment.status import (
    UNSCHEDULABLE_GRACE_SECONDS,
    Observation,
    PodSummary,
    build_status,
    next_capacity_check,
    read_rayservice,
    status_patch,
)
from k2think_operator.deployment.supporting import SupportingObjects
from k2think_operator.deployment.upgrade import with_upgrade_condition
from k2think_operator.plan.fault_tolerance import DEFAULT_GCS_FT_REPLICA_THRESHOLD, gcs_ft_risk
from k2think_operator.render.meta import COMPONENT_LABEL, POOL_LABEL, RAY_CLUSTER_LABEL
from k2think_operator.runtime import metrics
from k2think_operator.runtime.compact import Packed, pack
from k2think_operator.runtime.controller import Result, RetryLater
from k2think_operator.runtime.events import Event
from k2think_operator.runtime.kube import KubeError, TransientApiError

__all__ = [
    "ApplyFailure",
    "ApplyResult",
    "Decision",
    "DeploymentReconciler",
    "DeploymentState",
    "Outcome",
    "Sources",
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

Key = tuple[str, str]

#: How often a deployment waiting for Kueue is looked at again (``K2T_QUEUE_RECHECK_SECONDS``).
DEFAULT_QUEUE_RECHECK_SECONDS = 15.0


@dataclass
class Outcome:
    """What one pass did (for tests and the runtime's retry semantics)."""

    status: dict[str, Any]
    applied: bool = False
    wrote_status: bool = False
    invalid: bool = False
    retry_reason: str | None = None
    events: list[Event] = field(default_factory=list)
    #: Seconds until the status must be computed again with nothing else changing (a pending
    #: pod crossing the CapacityBlocked grace).
    status_due: float | None = None


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
        cluster=labels.get(RAY_CLUSTER_LABEL),
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
    spill: tuple[tuple[str, int], ...] = (),
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
        downgrades=decision.downgrades if spec is not None else None,
        spill=spill,
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


def told_with_create(events: list[Event]) -> list[Event]:
    """What the first pass of a new deployment did, told in its ``Created`` event: the Ray token
    Secret it created and the plan it chose, not each in an Event of its own.

    They come from the same pass and say one thing: the RayService was created, with its token,
    for this layout. One Event instead of three (issue #20: Events were a third of the operator's
    API calls in a burst of new deployments, and the queued ones its largest memory after the
    burst). Told later, each keeps its own reason: a plan that changes is ``Planned``, a token
    Secret created again (deleted by hand) is ``RayTokenCreated``. The plan comes last, since a
    message over the Event limit keeps its start and end.
    """
    created = next((e for e in events if e.reason == r.EVENT_CREATED), None)
    if created is None:
        return events
    folded = [e for e in events if e.reason in (r.EVENT_RAY_TOKEN_CREATED, r.EVENT_PLANNED)]
    if not folded:
        return events
    token = [e.message for e in folded if e.reason == r.EVENT_RAY_TOKEN_CREATED]
    plan = [f"plan: {e.message}" for e in folded if e.reason == r.EVENT_PLANNED]
    told = Event.normal(r.EVENT_CREATED, "; ".join([created.message, *token, *plan]))
    return [told if e is created else e for e in events if not any(e is f for f in folded)]


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


@dataclass(frozen=True)
class StatusWrite:
    """What the status step did: written (with the object's new resourceVersion), unchanged,
    or failed (``error``: the reconcile is retried; nothing else would write this status
    before the next event or the slow resync)."""

    written: bool = False
    version: str | None = None
    error: str | None = None


async def write_status(
    kube: KubeApi,
    decision: Decision,
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
) -> StatusWrite:
    """Merge-patch the status when it differs from the stored one."""
    patch = status_patch(current, desired)
    if patch is None:
        return StatusWrite()
    try:
        version = await kube.patch_status(decision.namespace, decision.name, patch)
    except KubeError as error:
        log.warning("status of %s/%s not written: %s", decision.namespace, decision.name, error)
        return StatusWrite(error=f"status not written: {error}")
    metrics.API_WRITES.labels("status").inc()
    return StatusWrite(written=True, version=version)


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

    #: The pods last seen (summaries, from the index).
    pods: tuple[PodSummary, ...] = ()
    #: What the last completed pass looked at: (generation, RayService resourceVersion, pods);
    #: the resourceVersion is that of the newest copy known, our own apply's included. The same
    #: inputs again with nothing due need no work (our own status write or apply coming back).
    inputs: tuple[int, int, tuple[PodSummary, ...]] | None = None
    #: The generation last converged in this process.
    generation: int | None = None
    #: The next pass must run the whole sequence (a failed pass, the cache moved, a resync).
    dirty: bool = True
    #: The next pass GETs the RayService and re-applies the supporting objects (slow resync).
    resync: bool = False
    #: When (monotonic) the status must be computed again / Kueue looked at again.
    status_due: float | None = None
    kueue_due: float | None = None
    #: The RayService as our last apply returned it, until the watch delivers that version
    #: (packed, as the index keeps it: ``compact.pack``).
    applied: Packed | None = None
    #: The resourceVersion and status of our last status write (the next event's body may
    #: predate it).
    written: tuple[int, Mapping[str, Any]] | None = None
    #: Hash of the last message told per once-only event reason (see
    #: ``DeploymentReconciler._unannounced``; a hash, not the message: thousands are kept).
    announced: dict[str, int] = field(default_factory=dict)
    #: The cache revisions last seen for ``spec.model.cacheRef`` and the draft's cacheRef, and
    #: why there was none: (model, why, draft, why), as ``decide`` takes them (pod events
    #: refresh status without reading the caches again).
    cache: tuple[CacheView | None, str | None, CacheView | None, str | None] = (
        None,
        None,
        None,
        None,
    )
    #: Kueue's last view of a queued deployment (pod events refresh status without API reads).
    queue: QueueView | None = None
    #: The pools capped on the live RayCluster as last read or written, (pool, cap) in spec
    #: order (spill.py); None: not read in this process yet.
    spill: tuple[tuple[str, int], ...] | None = None
    #: When (monotonic) a cap is due to be tried again.
    spill_due: float | None = None

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

    def due(self, now: float) -> tuple[bool, bool]:
        """(whole sequence due, status due) by time."""
        kueue = self.kueue_due is not None and now >= self.kueue_due
        status = any(t is not None and now >= t for t in (self.status_due, self.spill_due))
        return kueue, status

    def next_due(self, now: float) -> float | None:
        """Seconds until the earliest time something is due (None: nothing is)."""
        times = [t for t in (self.status_due, self.kueue_due, self.spill_due) if t is not None]
        return max(0.0, min(times) - now) if times else None


def _rayservice_seen(state: DeploymentState, watched: Mapping[str, Any] | None) -> int:
    """The resourceVersion of the newest copy of the RayService we know: the watch's, or that of
    our own last apply until the watch has caught up with it (then that copy is dropped)."""
    if state.applied is not None and resource_version(watched) >= resource_version(state.applied):
        state.applied = None  # the watch caught up: one copy is enough
    return max(resource_version(watched), resource_version(state.applied))


class Sources(Protocol):
    """Where the controller finds a deployment, its RayService and its pods without an API
    call: the watches' indexes (``app/registrations.py``)."""

    def deployment(self, key: Key) -> Mapping[str, Any] | None: ...

    def rayservice(self, key: Key) -> Mapping[str, Any] | None: ...

    def pods(self, key: Key) -> Iterable[PodSummary]: ...


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name"))


class DeploymentReconciler:
    """Reconciles K2ThinkDeployments by key (module docstring).

    Holds the API facade and one ``DeploymentState`` per deployment; every decision is made by
    the pure functions above from what is passed in. ``reconcile(key)`` is the runtime's entry;
    ``converge`` and ``refresh_status`` are the two passes (tests call them with a body).
    """

    def __init__(
        self,
        kube: KubeApi,
        sources: Sources | None = None,
        *,
        unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS,
        gcs_ft_replica_threshold: int = DEFAULT_GCS_FT_REPLICA_THRESHOLD,
        queue_recheck_seconds: float = DEFAULT_QUEUE_RECHECK_SECONDS,
        dry_run_pods: bool = False,
        kuberay_incremental_upgrade: bool = False,
        spill_retry_seconds: float = DEFAULT_SPILL_RETRY_SECONDS,
    ) -> None:
        self.kube = kube
        self.spill_retry_seconds = spill_retry_seconds
        self.sources = sources
        self.unschedulable_grace = unschedulable_grace
        self.gcs_ft_replica_threshold = gcs_ft_replica_threshold
        #: KubeRay's RayServiceIncrementalUpgrade gate is on, as the platform team says (upgrade.py).
        self.kuberay_incremental_upgrade = kuberay_incremental_upgrade
        self.queue_recheck_seconds = queue_recheck_seconds
        self.dry_run_pods = dry_run_pods
        self._states: dict[Key, DeploymentState] = {}
        self.supporting = SupportingObjects(kube)
        #: Bodies the slow resync listed from the API, for keys the index does not hold (a
        #: missed event): consumed by the next reconcile of that key.
        self._listed: dict[Key, Mapping[str, Any]] = {}

    def state(self, key: Key) -> DeploymentState:
        return self._states.setdefault(key, DeploymentState())

    def forget(self, key: Key) -> None:
        """The deployment is gone: drop what was kept of it."""
        self._states.pop(key, None)
        self._listed.pop(key, None)
        self.supporting.forget(*key)
        deployment_metrics.forget_deployment(*key)

    def mark_dirty(self, key: Key) -> None:
        """The next reconcile runs the whole sequence (e.g. the cache it uses moved)."""
        self.state(key).dirty = True

    def mark_resync(self, body: Mapping[str, Any]) -> Key:
        """The slow resync listed ``body``: the next reconcile trusts no cache."""
        key = key_of(body)
        state = self.state(key)
        state.resync = state.dirty = True
        self._listed[key] = body
        return key

    # --- the runtime's entry -----------------------------------------------------------------

    async def reconcile(self, key: Key) -> Result:
        """One pass for ``key`` (module docstring); raises ``RetryLater`` to be retried."""
        assert self.sources is not None, "reconcile(key) needs the indexes (Sources)"
        body = self.sources.deployment(key) or self._listed.get(key)
        self._listed.pop(key, None)
        if body is None:
            self.forget(key)
            return Result()
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return Result()  # children go with the garbage collector (owner references)
        state = self.state(key)
        # Our last status write's copy goes once the body includes it, here and not only in the
        # passes below: our write's own event changes no input and runs neither, so the copy
        # (~10 KiB) stayed for good, for every deployment (issue #20's peak RSS).
        state.unseen_write(body)
        pods = tuple(self.sources.pods(key))
        rayservice = self.sources.rayservice(key)
        now = time.monotonic()
        inputs = (_generation(body), _rayservice_seen(state, rayservice), pods)
        kueue_due, status_due = state.due(now)
        outcome: Outcome | None = None
        if state.dirty or kueue_due or state.inputs is None or inputs[:2] != state.inputs[:2]:
            outcome = await self.converge(body, pods, resync=state.resync)
        elif status_due or inputs != state.inputs:
            outcome = await self.refresh_status(body, rayservice, pods)
        if outcome is not None:
            state = self.state(key)
            state.dirty = bool(outcome.retry_reason)
            # What this pass saw of the RayService includes what it applied: the watch event of
            # our own apply (the same resourceVersion) is no news and runs nothing again.
            inputs = (inputs[0], _rayservice_seen(state, self.sources.rayservice(key)), pods)
            state.inputs = None if outcome.retry_reason else inputs
            if outcome.retry_reason:
                raise RetryLater(outcome.retry_reason)
            state.resync = False
        return Result(state.next_due(time.monotonic()))

    # --- the two passes ------------------------------------------------------------------------

    async def converge(
        self,
        body: Mapping[str, Any],
        pods: Iterable[PodSummary] | None = (),
        *,
        resync: bool = False,
    ) -> Outcome:
        """Converge the children of one K2ThinkDeployment and write its status.

        ``pods=None`` reuses the pods last seen for this object. ``resync``: the slow safety
        net: read the RayService from the API and re-apply the supporting objects, trusting no
        cache. An invalid spec renders nothing and waits for the next change of the spec.
        """
        started = time.monotonic()
        key = key_of(body)
        state = self.state(key)
        if pods is not None:
            state.pods = tuple(pods)
        try:
            caches = await self._caches_of(body)
        except TransientApiError as error:
            return Outcome(status=dict(body.get("status") or {}), retry_reason=str(error))
        decision = decide(body, *caches)
        state.cache = caches
        try:
            outcome = await self._converge(body, decision, state, resync=resync)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(*key).inc()
            raise
        finally:
            metrics.RECONCILE_TOTAL.labels(*key).inc()
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        if outcome.retry_reason:
            metrics.RECONCILE_ERRORS.labels(*key).inc()
        else:
            state.generation = decision.generation
        return outcome

    async def refresh_status(
        self,
        body: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        pods: Iterable[PodSummary],
    ) -> Outcome:
        """Recompute status from observed children only (no apply)."""
        key = key_of(body)
        state = self.state(key)
        state.pods = tuple(pods)
        decision = decide(body, *state.cache)
        current = self._current_status(body, state)
        rayservice = newer(rayservice, state.applied)
        # A still-standing apply failure stays visible while the child is absent; a dry-run
        # refusal while the spec that caused it is the current one (the old child still runs).
        failure = previous_apply_failure(current)
        if rayservice is not None and not _rejected_now(current, decision.generation):
            failure = None
        events, spill_retry = await self._converge_spill(decision, current, rayservice, state)
        status = self._desired_status(decision, body, current, rayservice, state, failure)
        write = await self._write_status(decision, current, status, state)
        for event in events:
            await self.kube.post_event(body, event)
        return Outcome(
            status=status,
            wrote_status=write.written,
            invalid=bool(decision.problems),
            retry_reason=spill_retry or write.error,
            events=events,
        )

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
            events: list[Event] = []
        else:
            # decide (what to tell), then apply
            events = decision_events(
                decision,
                current,
                live,
                incremental_upgrade_gate=self.kuberay_incremental_upgrade,
            )
            if decision.plan is not None:
                risk = gcs_ft_risk(decision.plan, self.gcs_ft_replica_threshold)
                if risk is not None:
                    events.append(Event.warn(r.EVENT_GCS_FAULT_TOLERANCE_OFF, risk))
            # The API server judges the children first (dry run): a refused update writes
            # nothing, so what runs stays as it is.
            rejected = await self._dry_run(decision, live)
            if rejected is not None:
                # Retried with backoff, as an apply the server refuses: what refused may be
                # gone next time (a namespace's default ServiceAccount not created yet, a
                # policy changed); the condition stays until an apply succeeds.
                result = ApplyResult(live, failure=rejected, retry=rejected.message)
            else:
                # Token Secret, ingress ConfigMap, NetworkPolicies: before the pods needing them.
                blocked = await self._converge_supporting(decision, live, events, resync=resync)
                result = blocked or await apply_children(self.kube, decision, live)
            if result.applied and result.live is not None:
                state.applied = pack(result.live)
            if result.applied:
                verb = r.EVENT_UPDATED if live is not None else r.EVENT_CREATED
                events.append(Event.normal(verb, f"applied RayService {decision.name}"))
            state.kueue_due = None
            if decision.spec is not None and decision.spec.queued:
                queue_retry, news = await self._observe_queue(decision, result.live, current, state)
                events += news
                if queue_retry and not result.retry:
                    result = ApplyResult(result.live, result.applied, result.failure, queue_retry)
            news, spill_retry = await self._converge_spill(
                decision, current, result.live, state, read=resync or result.applied
            )
            events += news
            if spill_retry and not result.retry:
                result = ApplyResult(result.live, result.applied, result.failure, spill_retry)
        # status
        status = self._desired_status(decision, body, current, result.live, state, result.failure)
        write = await self._write_status(decision, current, status, state)
        events = told_with_create(self._unannounced(state, events))
        for event in events:
            await self.kube.post_event(body, event)
        return Outcome(
            status=status,
            applied=result.applied,
            wrote_status=write.written,
            invalid=bool(decision.problems),
            retry_reason=result.retry or write.error,
            events=events,
        )

    async def _converge_supporting(
        self,
        decision: Decision,
        live: Mapping[str, Any] | None,
        events: list[Event],
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

    async def _dry_run(
        self, decision: Decision, live: Mapping[str, Any] | None
    ) -> ApplyFailure | None:
        """Dry-run the RayService about to be applied and the Pods KubeRay will create from it
        (``deployment/dryrun.py``); the refusal, if any. Nothing to apply: nothing to ask.

        A RayService that does not exist yet is not dry-run: no RayService runs that a refusal
        must protect, and its create is the same check (a refused apply stores nothing; the
        condition is ``ApplyRejected``). The Pods are dry-run on a create too: KubeRay, not
        the apply, would meet their refusal.
        """
        rayservice = rayservice_of(decision.children)
        if rayservice is None or not needs_apply(rayservice, live):
            return None
        objects = [
            *([rayservice] if live is not None else []),
            *(pods_for(rayservice) if self.dry_run_pods else []),
        ]
        for obj in objects:
            what = f"{obj['kind']} {obj['metadata']['name']}"
            try:
                await self.kube.dry_run(obj)
            except ApplyRejected as error:
                metrics.API_WRITES.labels("dry_run").inc()
                return ApplyFailure(r.CHILD_REJECTED, rejection_message(what, error))
            except (TransientApiError, KubeRayMissing):
                return None  # the apply meets the same and says so (retry, KubeRayMissing)
            metrics.API_WRITES.labels("dry_run").inc()
        return None

    async def _read_live(
        self, decision: Decision, state: DeploymentState, *, read: bool
    ) -> Mapping[str, Any] | None:
        """The live RayService: from the watch's index (or our newer last apply), or a GET.

        ``read``: GET it (the resync's safety net, or no index to look in).
        """
        key = (decision.namespace, decision.name)
        if read or self.sources is None:
            live = await self.kube.get_rayservice(*key)
            state.applied = None
            return live
        watched = self.sources.rayservice(key)
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
    ) -> StatusWrite:
        """``write_status``, remembering what was written (the next event's body may predate
        it)."""
        write = await write_status(self.kube, decision, current, status)
        if write.error:
            metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
        if write.written:
            number = resource_version({"metadata": {"resourceVersion": write.version}})
            state.written = (number, dict(status)) if number >= 0 else None
        return write

    @staticmethod
    def _current_status(body: Mapping[str, Any], state: DeploymentState) -> dict[str, Any]:
        """The status as stored: the body's, unless our last write is newer than the body."""
        stored = state.unseen_write(body)
        return dict(stored if stored is not None else body.get("status") or {})

    async def _caches_of(
        self, body: Mapping[str, Any]
    ) -> tuple[CacheView | None, str | None, CacheView | None, str | None]:
        """The verified revisions of the caches the model's and the draft's cacheRef name, each
        with why there is none (no cacheRef: neither), as ``decide`` takes them."""
        namespace = str((body.get("metadata") or {}).get("namespace") or "default")
        model, draft = cache_refs(body)
        model_view, model_why = await self._cache_of(namespace, model, "")
        draft_view, draft_why = await self._cache_of(namespace, draft, " (the draft)")
        return model_view, model_why, draft_view, draft_why

    async def _cache_of(
        self, namespace: str, ref: str | None, what: str
    ) -> tuple[CacheView | None, str | None]:
        if ref is None:
            return None, None
        cache = await self.kube.get_modelcache(namespace, ref)
        view = cache_view(cache)
        return view, (None if view is not None else waiting_message(ref, cache, what))

    def _desired_status(
        self,
        decision: Decision,
        body: Mapping[str, Any],
        current: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        state: DeploymentState,
        failure: ApplyFailure | None,
    ) -> dict[str, Any]:
        """Observe and compute the status; note when it must be computed again.

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
            spill=state.spill or (),
        )
        # A pod the scheduler keeps refusing may never change again, so no event would come
        # when it crosses the grace period: look again then.
        delay = next_capacity_check(observation)
        state.status_due = time.monotonic() + delay + 1.0 if delay is not None else None
        status = build_status(observation, current, now_rfc3339())
        status = with_upgrade_condition(
            status,
            decision.spec,
            gate_on=self.kuberay_incremental_upgrade,
            generation=decision.generation,
            now=now_rfc3339(),
        )
        status = with_cache_condition(
            status,
            waiting=decision.waiting_for_cache,
            served=decision.cache,
            draft_served=decision.draft_cache,
            generation=decision.generation,
            now=now_rfc3339(),
        )
        deployment_metrics.observe_deployment(
            decision.namespace, decision.name, decision.plan, status, observation.pods
        )
        return status

    # --- spill-over (spill.py): cap a full pool's group on the live RayCluster -----------------

    async def _converge_spill(
        self,
        decision: Decision,
        current: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        state: DeploymentState,
        *,
        read: bool = False,
    ) -> tuple[list[Event], str | None]:
        """Read the live RayCluster when spill may matter, write what ``decide_spill`` says.

        The RayCluster is read only when a pool with a next pool has a worker pod Unschedulable
        past the grace, a cap is (or the stored status says one is) in force, or ``read`` (the
        RayService was just applied: a changed maxReplicas must reach the live cluster; the slow
        resync). Nothing is done during an upgrade (two clusters share the pools) or before
        KubeRay names its cluster. Returns the events to tell and a retry reason.
        """
        plan = decision.plan
        view = read_rayservice(rayservice)
        # Without Ray's autoscaler nothing re-places a replica, and KubeRay itself deletes pods
        # at random down to a lowered maxReplicas: a fixed-size deployment is never capped.
        if plan is None or not plan.autoscaling or rayservice is None or view is None:
            return [], None
        # The one cluster KubeRay runs: the active one, or the first one it is still preparing
        # (its floor may be what does not fit). Both: an upgrade, whose clusters share the pools.
        clusters = [c for c in (view.active_cluster, view.pending_cluster) if c]
        if len(clusters) != 1:
            return [], None
        pools = [p.name for p in plan.pools]
        now = time.time()
        said = any(
            c.get("type") == r.SPILL_OVER and c.get("status") == "True"
            for c in current.get("conditions") or []
        )
        if not (
            read
            or state.spill
            or (state.spill is None and said)
            or spill_wanted(pools, state.pods, now, self.unschedulable_grace)
        ):
            return [], None
        namespace, cluster = decision.namespace, clusters[0]
        try:
            live = await self.kube.get_raycluster(namespace, cluster)
        except (TransientApiError, KubeRayMissing) as error:
            return [], str(error)
        except KubeError as error:  # e.g. RBAC without rayclusters get: spill is off
            log.warning("spill-over off for %s/%s: %s", namespace, decision.name, error)
            return [], None
        if live is None:
            return [], None
        recorded = read_caps(live)
        outcome = decide_spill(
            pools,
            rendered_max(rayservice),
            read_groups(live),
            recorded,
            state.pods,
            cluster=cluster,
            now=now,
            grace=self.unschedulable_grace,
            retry_seconds=self.spill_retry_seconds,
            rendered_minimum=rendered_min(rayservice),
        )
        annotations = bool((live.get("metadata") or {}).get("annotations"))
        ops = json_patch(outcome, recorded, annotations)
        log.debug(
            "spill %s/%s on RayCluster %s: caps %s -> %s, %d patch op(s)",
            namespace,
            decision.name,
            cluster,
            {g: c.cap for g, c in recorded.items()},
            {g: c.cap for g, c in outcome.capped.items()},
            len(ops),
        )
        events: list[Event] = []
        if ops:
            try:
                await self.kube.patch_raycluster(namespace, cluster, ops)
            except (TransientApiError, KubeRayMissing) as error:
                return [], str(error)
            except KubeError as error:
                log.warning("spill-over off for %s/%s: %s", namespace, decision.name, error)
                return [], None
            metrics.API_WRITES.labels("raycluster").inc()
            for change in outcome.changes:
                if change.why == "cap":
                    events.append(Event.normal(r.EVENT_SPILLED_OVER, change.message))
                elif change.why == "lift":
                    events.append(Event.normal(r.EVENT_SPILL_LIFTED, change.message))
                else:
                    log.info(
                        "%s/%s: %s of group %s on RayCluster %s: %s -> %s (as the RayService says)",
                        namespace,
                        decision.name,
                        change.field,
                        change.group,
                        cluster,
                        change.expected,
                        change.new,
                    )
        capped = outcome.capped
        state.spill = tuple((pool, capped[pool].cap) for pool in pools if pool in capped)
        state.spill_due = (
            time.monotonic() + outcome.recheck + 1.0 if outcome.recheck is not None else None
        )
        return events, None

    @staticmethod
    def _unannounced(state: DeploymentState, events: list[Event]) -> list[Event]:
        """Drop a decision event already told for this object.

        A body from an index may carry a status that predates our last write, so "the plan
        changed" can look true twice for one change.
        """
        fresh: list[Event] = []
        for event in events:
            if event.reason in r.ANNOUNCED_ONCE:
                told = hash(event.message)
                if state.announced.get(event.reason) == told:
                    continue
                state.announced[event.reason] = told
            fresh.append(event)
        return fresh

    # --- Kueue (api/kueue.py): read its verdict, (de)activate for spec.suspend ----------------

    async def _observe_queue(
        self,
        decision: Decision,
        live: Mapping[str, Any] | None,
        current: Mapping[str, Any],
        state: DeploymentState,
    ) -> tuple[str | None, list[Event]]:
        """Read Kueue's Workload(s) of the RayService; (de)activate them for spec.suspend.

        Returns a retry reason when the API failed (the last view is kept meanwhile) and the
        Events Kueue's verdict is worth (compared with the last view this process saw: the
        body's status may predate our own last write). While Kueue has not admitted the
        deployment, it is looked at again every ``queue_recheck_seconds``: Kueue's verdicts
        that matter (admission, preemption) also toggle the RayService's suspend, which wakes
        us, but its reasons while queued (quota messages) change only the Workload, which the
        operator does not watch (so it needs no watch on Kueue's API).
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
        if not view.admitted:
            state.kueue_due = time.monotonic() + self.queue_recheck_seconds
        return None, queue_events(previous, view)


def _rejected_now(status: Mapping[str, Any], generation: int) -> bool:
    """Degraded says a dry run refused this generation's children."""
    return any(
        c.get("type") == r.DEGRADED
        and c.get("reason") == r.CHILD_REJECTED
        and c.get("observedGeneration") == generation
        for c in status.get("conditions") or []
    )


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)
