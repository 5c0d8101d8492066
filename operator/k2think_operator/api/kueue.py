"""Admission through Kueue: what we put on the RayService, and Kueue's view folded into ours.

Kueue v0.17 admits a RayService as one workload (``pkg/controller/jobs/rayservice``): a PodSet
for the head and one per worker group, all or nothing against a ClusterQueue's quota. It
suspends the RayService (``spec.rayClusterConfig.suspend``) until admitted and again when it
preempts or evicts it. So, for a deployment with ``spec.scheduling.queueName``:

- the RayService carries the labels Kueue reads (queue, priority) and, because the operator
  always runs Ray's in-tree autoscaler, the annotation that makes it an *elastic* workload:
  Kueue refuses an autoscaled RayService otherwise (``raycluster.ValidateCreate``: "a kueue
  managed job should only use autoscaling when workload slicing is enabled"); worker pods the
  autoscaler adds wait behind the scheduling gate ``kueue.x-k8s.io/elastic-job`` until Kueue
  admits the larger slice (``workloadslicing.StartWorkloadSlicePods``);
- ``suspend`` and the scheduling gates are Kueue's: the renderer leaves them out, so the drift
  check never sees them and server-side apply never takes them back;
- our ``spec.suspend`` becomes the Workload's ``spec.active: false`` (Kueue's own way to stop a
  workload: it evicts it, suspends the RayService and releases its quota).

The functions here are pure; the deployment controller reads the Workloads and the LocalQueue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.runtime.events import Event

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
ELASTIC_ANNOTATION = "kueue.x-k8s.io/elastic-job"
ELASTIC_GATE = "kueue.x-k8s.io/elastic-job"
#: Kueue labels each Workload with the UID of the job it was made for (constants.JobUIDLabel).
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"

# Our Admitted condition and its reasons (= values of status.queue.state) live in reasons.py.
ADMITTED = r.ADMITTED
QUEUED = r.QUEUED
PREEMPTED = r.PREEMPTED
EVICTED = r.EVICTED
DEACTIVATED = r.DEACTIVATED
KUEUE_MISSING = r.KUEUE_MISSING


def kueue_labels(queue_name: str | None, priority_class: str | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    if queue_name:
        labels[QUEUE_LABEL] = queue_name
        if priority_class:
            labels[PRIORITY_LABEL] = priority_class
    return labels


def kueue_annotations(queue_name: str | None) -> dict[str, str]:
    """The elastic-job opt-in (immutable for Kueue, so set from the first apply on)."""
    return {ELASTIC_ANNOTATION: "true"} if queue_name else {}


@dataclass(frozen=True)
class QueueView:
    """Kueue's view of one deployment, reduced to what status needs."""

    state: str  # Queued | Admitted | Preempted | Evicted | Deactivated
    message: str
    local_queue: str
    cluster_queue: str | None = None
    workload: str | None = None
    active: bool = True

    @property
    def admitted(self) -> bool:
        return self.state == ADMITTED


def _conditions(workload: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = workload.get("status") or {}
    return {str(c.get("type")): c for c in status.get("conditions") or []}


def _true(cond: Mapping[str, Any] | None) -> bool:
    return bool(cond) and (cond or {}).get("status") == "True"


def _finished(workload: Mapping[str, Any]) -> bool:
    return _true(_conditions(workload).get("Finished"))


def current_workload(workloads: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Workload that speaks for the RayService now.

    An elastic scale-up makes a new slice that replaces the old one (the old one is marked
    Finished once replaced): prefer unfinished ones, then the newest.
    """
    live = [w for w in workloads if not _finished(w)] or list(workloads)
    if not live:
        return None
    return max(
        live,
        key=lambda w: (
            str((w.get("metadata") or {}).get("creationTimestamp") or ""),
            str((w.get("metadata") or {}).get("name") or ""),
        ),
    )


def _admitted_slice(workloads: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    admitted = [
        w
        for w in workloads
        if not _finished(w)
        and _true(_conditions(w).get(ADMITTED))
        and not _true(_conditions(w).get("Evicted"))
    ]
    return current_workload(admitted)


def read_queue(
    queue_name: str,
    workloads: Sequence[Mapping[str, Any]],
    cluster_queue: str | None = None,
) -> QueueView:
    """Fold Kueue's Workload conditions into one state (table-tested in tests/test_queueing.py).

    ``cluster_queue``: the LocalQueue's ClusterQueue, when known (used until admission names it).
    """
    workload = current_workload(workloads)
    running = _admitted_slice(workloads)
    if running is not None and workload is not None and running is not workload:
        # Elastic scale-up: the old slice keeps the deployment admitted while the new one waits.
        serving = read_queue(queue_name, [running], cluster_queue)
        waiting = read_queue(queue_name, [workload], cluster_queue)
        if serving.admitted and not waiting.admitted:
            return QueueView(
                serving.state,
                f"{serving.message}; a scale-up slice ({waiting.workload}) waits: "
                f"{waiting.message}",
                serving.local_queue,
                serving.cluster_queue,
                serving.workload,
                serving.active,
            )
    if workload is None:
        return QueueView(
            QUEUED,
            f"waiting for Kueue to create the Workload (LocalQueue {queue_name})",
            queue_name,
            cluster_queue,
        )
    name = str((workload.get("metadata") or {}).get("name") or "")
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    conds = _conditions(workload)
    admission = status.get("admission") or {}
    cq = str(admission.get("clusterQueue") or "") or cluster_queue
    active = spec.get("active", True) is not False
    evicted = conds.get("Evicted")
    preempted = conds.get("Preempted")
    admitted = conds.get(ADMITTED)
    reserved = conds.get("QuotaReserved")

    def view(state: str, message: str) -> QueueView:
        return QueueView(state, message, queue_name, cq, name, active)

    if not active:
        return view(DEACTIVATED, _message(evicted) or "the Workload is deactivated")
    if _true(admitted) and not _true(evicted):
        where = f"ClusterQueue {cq}" if cq else "its ClusterQueue"
        return view(ADMITTED, _message(admitted) or f"admitted by {where}")
    # Reactivated (spec.suspend back to false): Kueue keeps "Evicted: Deactivated" until the
    # next admission, but the workload is simply waiting in its queue again.
    reactivated = (evicted or {}).get("reason") in (DEACTIVATED, "InactiveWorkload")
    if (_true(evicted) and not reactivated) or _true(preempted):
        reason = str((evicted or {}).get("reason") or "")
        state = PREEMPTED if _true(preempted) or reason == "Preempted" else EVICTED
        text = _message(preempted) or _message(evicted) or f"evicted by Kueue ({reason})"
        return view(state, f"{text}; queued again")
    pending = _message(reserved) or _message(admitted)
    return view(QUEUED, pending or f"waiting in LocalQueue {queue_name}")


def _message(cond: Mapping[str, Any] | None) -> str:
    return str((cond or {}).get("message") or "").strip()


def admitted_condition(view: QueueView, generation: int) -> dict[str, Any]:
    where = f"ClusterQueue {view.cluster_queue}" if view.cluster_queue else view.local_queue
    message = view.message
    if view.cluster_queue and view.cluster_queue not in message:
        message = f"{where}: {message}"
    return {
        "type": ADMITTED,
        "status": "True" if view.admitted else "False",
        "reason": view.state,
        "message": message,
        "observedGeneration": generation,
    }


def queue_status(view: QueueView) -> dict[str, Any]:
    out: dict[str, Any] = {"state": view.state, "localQueue": view.local_queue}
    if view.cluster_queue:
        out["clusterQueue"] = view.cluster_queue
    if view.workload:
        out["workload"] = view.workload
    if view.message:
        out["message"] = view.message
    return out


def view_from_status(queue: Mapping[str, Any] | None) -> QueueView | None:
    """The view last written to ``status.queue`` (after a restart, before Kueue is read)."""
    if not queue or not queue.get("state") or not queue.get("localQueue"):
        return None
    return QueueView(
        state=str(queue["state"]),
        message=str(queue.get("message") or ""),
        local_queue=str(queue["localQueue"]),
        cluster_queue=queue.get("clusterQueue"),
        workload=queue.get("workload"),
        active=queue.get("state") != DEACTIVATED,
    )


def queue_events(previous: Mapping[str, Any] | None, view: QueueView) -> list[Event]:
    """An Event when Kueue's verdict changes."""
    before = str((previous or {}).get("state") or "")
    if before == view.state:
        return []
    warning = view.state in (PREEMPTED, EVICTED)
    if view.state == ADMITTED:
        verb = r.EVENT_RESUMED if before in (PREEMPTED, EVICTED, DEACTIVATED) else ADMITTED
        where = f" by ClusterQueue {view.cluster_queue}" if view.cluster_queue else ""
        return [Event.normal(verb, f"Kueue admitted the RayService{where}")]
    return [Event(view.state, view.message, warning)]


def workload_activation(view: QueueView | None, suspended: bool) -> tuple[str, bool] | None:
    """(workload name, desired spec.active) when the Workload must be (de)activated."""
    if view is None or view.workload is None:
        return None
    want = not suspended
    if view.active == want:
        return None
    return view.workload, want
