"""Sequencing of one reconcile: decide (pure) -> apply (only if needed) -> observe -> status.

The kopf handlers call ``reconcile`` for create/update/resume, for drift of the RayService and
on a slow timer; pod and RayService events call ``refresh_status``. Both paths share the same
pure decision, so nothing here can apply a spec that failed validation: an invalid spec only
ever produces an ``InvalidSpec`` condition and a Warning event, never a write to a child.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k2think_operator import metrics
from k2think_operator.kube import (
    ApplyRejected,
    Kube,
    KubeError,
    KubeRayMissing,
    TransientApiError,
    emit_event,
)
from k2think_operator.limits import name_problems
from k2think_operator.planner import Plan, PlanError, plan_deployment
from k2think_operator.render import build_children
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION, COMPONENT_LABEL, POOL_LABEL
from k2think_operator.spec import InvalidSpec, K2ThinkDeploymentSpec, parse_spec
from k2think_operator.status import (
    UNSCHEDULABLE_GRACE_SECONDS,
    Observation,
    PodSummary,
    build_status,
    next_capacity_check,
    read_rayservice,
    status_patch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What one K2ThinkDeployment asks for, decided without touching the cluster."""

    name: str
    namespace: str
    generation: int
    spec: K2ThinkDeploymentSpec | None
    plan: Plan | None
    children: tuple[dict[str, Any], ...]
    problems: tuple[str, ...]


@dataclass
class Outcome:
    """What a reconcile did, for the handler to turn into kopf's retry semantics."""

    status: dict[str, Any]
    applied: bool = False
    wrote_status: bool = False
    invalid: bool = False
    retry_reason: str | None = None
    events: list[tuple[bool, str, str]] = field(default_factory=list)


def decide(body: Mapping[str, Any]) -> Decision:
    """Parse, plan and render one K2ThinkDeployment body (a dict as the API returns it)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name"))
    namespace = str(meta.get("namespace") or "default")
    generation = int(meta.get("generation") or 0)
    named = name_problems(meta)
    if named:
        return Decision(name, namespace, generation, None, None, (), tuple(map(str, named)))
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
        plan = plan_deployment(spec, name)
    except InvalidSpec as error:
        return Decision(
            name, namespace, generation, None, None, (), tuple(map(str, error.problems))
        )
    except PlanError as error:
        return Decision(name, namespace, generation, None, None, (), (str(error),))
    children = build_children(spec, plan, name=name, namespace=namespace, uid=meta.get("uid"))
    return Decision(name, namespace, generation, spec, plan, tuple(children), ())


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field we render is present in ``live`` with the same value.

    Lists are compared element-wise and must have the same length (a list we own is ours
    whole); extra keys in live maps (API defaults, other managers) are fine.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(key in live and is_subset(value, live[key]) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
    return bool(desired == live)


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Apply when the child is missing or anything we own differs (drift or a new spec)."""
    if live is None:
        return True
    if not is_subset(desired.get("spec"), live.get("spec")):
        return True
    want_meta = desired.get("metadata") or {}
    live_meta = live.get("metadata") or {}
    for key in ("labels", "annotations"):
        if not is_subset(want_meta.get(key) or {}, live_meta.get(key) or {}):
            return True
    owners = want_meta.get("ownerReferences")
    return bool(owners) and not is_subset(owners, live_meta.get("ownerReferences") or [])


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


def decision_events(
    decision: Decision, current_status: Mapping[str, Any], live: Mapping[str, Any] | None
) -> list[tuple[bool, str, str]]:
    """Events worth telling a human: a new plan, a costly cluster switch-over, a bad spec."""
    events: list[tuple[bool, str, str]] = []
    if decision.problems:
        events.append((True, "InvalidSpec", "; ".join(decision.problems)))
        return events
    plan = decision.plan
    assert plan is not None
    previous = current_status.get("plan") or {}
    if previous.get("explanation") != plan.explanation:
        events.append((False, "Planned", plan.explanation))
    for warning in plan.warnings:
        events.append((True, "PlanWarning", warning))
    if live is not None and decision.children:
        want = (decision.children[0].get("metadata") or {}).get("annotations") or {}
        have = (live.get("metadata") or {}).get("annotations") or {}
        old, new = have.get(CLUSTER_HASH_ANNOTATION), want.get(CLUSTER_HASH_ANNOTATION)
        if old and new and old != new:
            spec = decision.spec
            strategy = spec.upgrade_strategy if spec else "NewCluster"
            cost = (
                f"KubeRay will start a second Ray cluster and switch over ({strategy}); "
                f"during the switch-over up to {plan.max_gpus} more GPUs are requested"
                if strategy != "None"
                else "upgradeStrategy None: the running cluster keeps its old shape"
            )
            events.append((False, "NewRayCluster", f"the change reshapes the Ray cluster: {cost}"))
    return events


def observe(
    decision: Decision,
    body: Mapping[str, Any],
    rayservice: Mapping[str, Any] | None,
    pods: Iterable[PodSummary],
    apply_error: str | None,
    apply_error_reason: str,
    *,
    unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS,
) -> Observation:
    """Gather everything status is computed from, once."""
    spec = decision.spec
    suspended = spec.suspend if spec else bool((body.get("spec") or {}).get("suspend"))
    return Observation(
        generation=decision.generation,
        spec_problems=decision.problems,
        plan=decision.plan,
        apply_error=apply_error,
        apply_error_reason=apply_error_reason,
        rayservice=read_rayservice(rayservice),
        pods=tuple(pods),
        suspended=suspended,
        name=decision.name,
        namespace=decision.namespace,
        now=time.time(),
        unschedulable_grace=unschedulable_grace,
    )


class Reconciler:
    """Holds the API facade and per-object locks; everything else is passed in."""

    def __init__(
        self,
        kube: Kube,
        *,
        unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS,
        status_retry_seconds: float = 5.0,
    ) -> None:
        self.kube = kube
        self.unschedulable_grace = unschedulable_grace
        self.status_retry_seconds = status_retry_seconds
        self._status_retries: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pods: dict[tuple[str, str], tuple[PodSummary, ...]] = {}
        self._bodies: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._rechecks: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Outcome]] = set()
        self._announced: dict[tuple[str, str], dict[str, str]] = {}

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._locks.pop(key, None)
        self._pods.pop(key, None)
        self._bodies.pop(key, None)
        self._announced.pop(key, None)
        for timers in (self._rechecks, self._status_retries):
            handle = timers.pop(key, None)
            if handle is not None:
                handle.cancel()

    def _unannounced(
        self, decision: Decision, events: list[tuple[bool, str, str]]
    ) -> list[tuple[bool, str, str]]:
        """Drop a decision event already told for this object.

        Event handlers reconcile with the body from an index, whose status may predate our last
        write, so "the plan changed" can look true twice for one change.
        """
        last = self._announced.setdefault((decision.namespace, decision.name), {})
        fresh: list[tuple[bool, str, str]] = []
        for event in events:
            _, reason, message = event
            if reason in ("Planned", "PlanWarning", "InvalidSpec"):
                if last.get(reason) == message:
                    continue
                last[reason] = message
            fresh.append(event)
        return fresh

    def _schedule_recheck(self, observation: Observation) -> None:
        """Re-evaluate status when a waiting pod crosses the CapacityBlocked grace period.

        A pod the scheduler keeps refusing may never change again, so no event would come.
        """
        delay = next_capacity_check(observation)
        key = (observation.namespace, observation.name)
        if delay is None or key in self._rechecks:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._rechecks.pop(key, None)
            body = self._bodies.get(key)
            if body is not None:
                task = loop.create_task(self.reconcile(body, None))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        self._rechecks[key] = loop.call_later(delay + 1.0, fire)

    def _schedule_status_retry(self, namespace: str, name: str) -> None:
        """Reconcile again soon after a status write failed (e.g. a 503 from the API server).

        Without it the status stayed stale until the next event or the slow resync: event
        handlers are not retried by kopf, and the reconcile that failed to write had nothing
        else to retry. The retry re-reads the latest body the handlers saw, so it writes what is
        true then, not what was true when the write failed.
        """
        key = (namespace, name)
        if key in self._status_retries:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._status_retries.pop(key, None)
            body = self._bodies.get(key)
            if body is not None:
                task = loop.create_task(self.reconcile(body, None))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        self._status_retries[key] = loop.call_later(self.status_retry_seconds, fire)

    async def reconcile(
        self,
        body: Mapping[str, Any],
        pods: Iterable[PodSummary] | None = (),
    ) -> Outcome:
        """Converge the children of one K2ThinkDeployment and write its status.

        ``pods=None`` reuses the pods last seen for this object (the resync loop has no index).
        """
        started = time.monotonic()
        decision = decide(body)
        seen = self._remember(decision, body, pods)
        async with self._lock(decision.namespace, decision.name):
            try:
                outcome = await self._reconcile_locked(body, decision, seen)
            except Exception:
                metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
                raise
            finally:
                metrics.RECONCILE_TOTAL.labels(decision.namespace, decision.name).inc()
                metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        if outcome.retry_reason:
            metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
        return outcome

    async def _reconcile_locked(
        self,
        body: Mapping[str, Any],
        decision: Decision,
        pods: Sequence[PodSummary],
    ) -> Outcome:
        current_status = dict(body.get("status") or {})
        apply_error: str | None = None
        apply_reason = "ApplyFailed"
        retry: str | None = None
        applied = False
        live: dict[str, Any] | None = None
        try:
            live = await self.kube.get_rayservice(decision.namespace, decision.name)
        except KubeRayMissing as error:
            apply_error, apply_reason, retry = str(error), "KubeRayMissing", str(error)
        except TransientApiError as error:
            # We learned nothing about the child: leave status as it is rather than report a
            # serving deployment as "RayService not found" because one GET failed.
            return Outcome(
                status=current_status, invalid=bool(decision.problems), retry_reason=str(error)
            )

        events = decision_events(decision, current_status, live) if retry is None else []
        existed = live is not None
        if retry is None and not decision.problems:
            for child in decision.children:
                if not needs_apply(child, live):
                    continue
                try:
                    live = await self.kube.apply(child)
                    applied = True
                    metrics.API_WRITES.labels("apply").inc()
                except KubeRayMissing as error:
                    apply_error, apply_reason, retry = str(error), "KubeRayMissing", str(error)
                except ApplyRejected as error:
                    apply_error, apply_reason = str(error), "ApplyRejected"
                    retry = str(error)
                except TransientApiError as error:
                    retry = str(error)
            if applied:
                verb = "Updated" if existed else "Created"
                events.append((False, verb, f"applied RayService {decision.name}"))

        status = self._desired_status(decision, body, live, pods, apply_error, apply_reason)
        wrote = await self._write_status(decision, current_status, status)
        events = self._unannounced(decision, events)
        for warning, reason, message in events:
            emit_event(body, warning=warning, reason=reason, message=message)
        return Outcome(
            status=status,
            applied=applied,
            wrote_status=wrote,
            invalid=bool(decision.problems),
            retry_reason=retry,
            events=events,
        )

    async def refresh_status(
        self,
        body: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        pods: Iterable[PodSummary],
    ) -> bool:
        """Recompute status from observed children only (no apply); True if it was written."""
        decision = decide(body)
        seen = self._remember(decision, body, pods)
        async with self._lock(decision.namespace, decision.name):
            current_status = dict(body.get("status") or {})
            # A still-standing apply failure stays visible while the child is absent.
            error, reason = _previous_apply_error(current_status)
            if rayservice is not None:
                error = None
            status = self._desired_status(decision, body, rayservice, seen, error, reason)
            return await self._write_status(decision, current_status, status)

    def _remember(
        self,
        decision: Decision,
        body: Mapping[str, Any],
        pods: Iterable[PodSummary] | None,
    ) -> tuple[PodSummary, ...]:
        """Keep the latest body and pods per object for the resync loop and delayed re-checks;
        ``pods=None`` means "the ones last seen"."""
        key = (decision.namespace, decision.name)
        seen = self._pods.get(key, ()) if pods is None else tuple(pods)
        self._pods[key] = seen
        self._bodies[key] = body
        return seen

    def _desired_status(
        self,
        decision: Decision,
        body: Mapping[str, Any],
        rayservice: Mapping[str, Any] | None,
        pods: Iterable[PodSummary],
        apply_error: str | None,
        apply_error_reason: str,
    ) -> dict[str, Any]:
        """Observe, compute the status, and arm the capacity re-check (one path for both)."""
        observation = observe(
            decision,
            body,
            rayservice,
            pods,
            apply_error,
            apply_error_reason,
            unschedulable_grace=self.unschedulable_grace,
        )
        self._schedule_recheck(observation)
        current = body.get("status") or {}
        status = build_status(observation, current, now_rfc3339())
        metrics.observe_deployment(decision.namespace, decision.name, decision.plan, status)
        return status

    async def _write_status(
        self, decision: Decision, current: Mapping[str, Any], desired: Mapping[str, Any]
    ) -> bool:
        patch = status_patch(current, desired)
        if patch is None:
            return False
        try:
            await self.kube.patch_status(decision.namespace, decision.name, patch)
        except KubeError as error:
            log.warning(
                "status of %s/%s not written (retrying in %.0f s): %s",
                decision.namespace,
                decision.name,
                self.status_retry_seconds,
                error,
            )
            metrics.RECONCILE_ERRORS.labels(decision.namespace, decision.name).inc()
            self._schedule_status_retry(decision.namespace, decision.name)
            return False
        metrics.API_WRITES.labels("status").inc()
        return True


def _previous_apply_error(status: Mapping[str, Any]) -> tuple[str | None, str]:
    """Keep a still-standing apply failure visible when only children changed."""
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "Degraded"
            and cond.get("status") == "True"
            and cond.get("reason") in ("KubeRayMissing", "ApplyRejected", "ApplyFailed")
        ):
            return str(cond.get("message")), str(cond.get("reason"))
    return None, "ApplyFailed"
