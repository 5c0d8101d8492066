"""Fold what we decided and what we observed into ``status``: pure functions, table-tested.

Inputs are gathered once per reconcile (cert-manager style): the spec outcome, the plan, the
apply outcome, the observed RayService and the deployment's Ray pods. Each condition is computed
by its own small function; ``set_condition`` only moves ``lastTransitionTime`` when a condition's
status flips, so an unchanged world produces an identical status and no write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.downgrades import downgraded_condition
from k2think_operator.api.kueue import QueueView, admitted_condition, queue_status
from k2think_operator.api.reasons import (
    ADMITTED,
    CAPACITY_BLOCKED,
    CONDITION_TYPES,
    DEACTIVATED,
    DEGRADED,
    INVALID_SPEC,
    PROGRESSING,
    READY,
    SPILL_OVER,
)
from k2think_operator.plan.fault_tolerance import DEFAULT_GCS_FT_REPLICA_THRESHOLD, gcs_ft_condition
from k2think_operator.plan.planner import Plan
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION, endpoint_url, selector_string
from k2think_operator.render.serve_config import APP_NAME
from k2think_operator.runtime import conditions
from k2think_operator.runtime.conditions import condition

# Serve application statuses (Ray's ApplicationStatus) status reacts to.
APP_RUNNING = "RUNNING"
APP_DEPLOY_FAILED = "DEPLOY_FAILED"
APP_UNHEALTHY = "UNHEALTHY"

#: A worker pod that cannot be scheduled for this long is reported as CapacityBlocked.
UNSCHEDULABLE_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class PodSummary:
    """What status needs to know of one Ray pod of this deployment."""

    name: str
    component: str  # ray-head | ray-worker
    pool: str | None
    phase: str
    ready: bool
    unschedulable_message: str | None = None
    #: When the scheduler first said Unschedulable (epoch seconds), so the age is computed at
    #: status time: a pod stuck for an hour may not change at all in that hour.
    unschedulable_since: float | None = None
    node: str | None = None
    #: The RayCluster the pod belongs to (``ray.io/cluster``): during an upgrade two clusters'
    #: pods share a pool.
    cluster: str | None = None


@dataclass(frozen=True)
class RayServiceView:
    """The parts of a live RayService that status derives from."""

    ready: bool
    ready_reason: str
    ready_message: str
    upgrade_in_progress: bool
    app_status: str | None
    app_message: str
    deployment_messages: tuple[str, ...] = ()
    cluster_hash: str | None = None
    active_cluster: str | None = None
    pending_cluster: str | None = None
    #: KubeRay's incremental upgrade (``NewClusterWithIncrementalUpgrade``): each cluster's
    #: Serve ``target_capacity`` and share of the Gateway's traffic, in percent (None: not set).
    active_capacity: int | None = None
    active_traffic: int | None = None
    pending_capacity: int | None = None
    pending_traffic: int | None = None
    last_traffic_migrated: str | None = None

    @property
    def incremental(self) -> bool:
        """KubeRay is running an incremental upgrade: it reports the new cluster's capacity."""
        return self.upgrade_in_progress and self.pending_capacity is not None


@dataclass(frozen=True)
class Observation:
    """Everything observed for one reconcile, gathered once."""

    generation: int
    spec_problems: Sequence[str] = ()
    plan: Plan | None = None
    apply_error: str | None = None
    apply_error_reason: str = ""  # one of reasons.APPLY_FAILURES when apply_error is set
    rayservice: RayServiceView | None = None
    pods: Sequence[PodSummary] = field(default_factory=tuple)
    suspended: bool = False
    name: str = ""
    namespace: str = ""
    now: float = 0.0
    unschedulable_grace: float = UNSCHEDULABLE_GRACE_SECONDS
    gcs_ft_replica_threshold: int = DEFAULT_GCS_FT_REPLICA_THRESHOLD
    #: Kueue's view (only for a deployment with spec.scheduling.queueName).
    queue: QueueView | None = None
    #: What the spec turns off (api/downgrades.py); None for an invalid spec.
    downgrades: tuple[str, ...] | None = ()
    #: Pools whose worker group is capped on the live RayCluster (spill.py): (pool, cap).
    spill: tuple[tuple[str, int], ...] = ()

    @property
    def waiting_for_kueue(self) -> bool:
        """Queued, preempted or evicted: Kueue holds the RayService suspended."""
        return self.queue is not None and not self.queue.admitted


def read_rayservice(obj: Mapping[str, Any] | None) -> RayServiceView | None:
    """Extract the view from a RayService dict (as the API returns it)."""
    if obj is None:
        return None
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready_cond = conditions.get("Ready") or {}
    upgrade = conditions.get("UpgradeInProgress") or {}
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    apps = active.get("applicationStatuses") or {}
    app = apps.get(APP_NAME)
    if app is None and pending.get("applicationStatuses"):
        app = pending["applicationStatuses"].get(APP_NAME)
    app = app or {}
    deployments = app.get("serveDeploymentStatuses") or {}
    messages = tuple(
        f"{name}: {d.get('status', '?')}: {d['message']}"
        for name, d in sorted(deployments.items())
        if d.get("message")
    )
    ready = ready_cond.get("status") == "True"
    if not conditions and status.get("serviceStatus") == "Running":
        ready = True  # KubeRay before conditions existed
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return RayServiceView(
        ready=ready,
        ready_reason=str(ready_cond.get("reason", "")),
        ready_message=str(ready_cond.get("message", "")),
        upgrade_in_progress=upgrade.get("status") == "True",
        app_status=app.get("status"),
        app_message=str(app.get("message", "")),
        deployment_messages=messages,
        cluster_hash=annotations.get(CLUSTER_HASH_ANNOTATION),
        active_cluster=active.get("rayClusterName") or None,
        pending_cluster=pending.get("rayClusterName") or None,
        active_capacity=_percent(active.get("targetCapacity")),
        active_traffic=_percent(active.get("trafficRoutedPercent")),
        pending_capacity=_percent(pending.get("targetCapacity")),
        pending_traffic=_percent(pending.get("trafficRoutedPercent")),
        last_traffic_migrated=(
            pending.get("lastTrafficMigratedTime") or active.get("lastTrafficMigratedTime") or None
        ),
    )


def _percent(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def upgrade_text(rs: RayServiceView) -> str:
    """Where KubeRay's upgrade stands, for the Progressing condition."""
    pending = rs.pending_cluster or "(pending)"
    if not rs.incremental:
        return f"KubeRay is preparing Ray cluster {pending}"
    active = rs.active_cluster or "(active)"
    return (
        f"KubeRay's incremental upgrade: Ray cluster {pending} at {rs.pending_capacity}% "
        f"capacity with {rs.pending_traffic or 0}% of the traffic, {active} at "
        f"{_or_unknown(rs.active_capacity)}% capacity with {_or_unknown(rs.active_traffic)}%"
    )


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def upgrade_status(rs: RayServiceView | None) -> dict[str, Any] | None:
    """``status.upgrade`` while KubeRay runs an incremental upgrade (None otherwise: removed)."""
    if rs is None or not rs.incremental:
        return None
    out: dict[str, Any] = {
        "activeCluster": rs.active_cluster,
        "pendingCluster": rs.pending_cluster,
        "activeTargetCapacity": rs.active_capacity,
        "activeTrafficPercent": rs.active_traffic,
        "pendingTargetCapacity": rs.pending_capacity,
        "pendingTrafficPercent": rs.pending_traffic,
        "lastTrafficMigratedTime": rs.last_traffic_migrated,
    }
    return {k: v for k, v in out.items() if v is not None}


def _workers(obs: Observation) -> list[PodSummary]:
    return [p for p in obs.pods if p.component == "ray-worker"]


def blocked_pods(obs: Observation) -> list[PodSummary]:
    """Pods the scheduler has refused for longer than the grace period."""
    return [
        p
        for p in obs.pods
        if p.unschedulable_message
        and p.unschedulable_since is not None
        and obs.now - p.unschedulable_since >= obs.unschedulable_grace
    ]


def next_capacity_check(obs: Observation) -> float | None:
    """Seconds until a waiting pod crosses the grace period (None: nothing to wait for)."""
    waits = [
        p.unschedulable_since + obs.unschedulable_grace - obs.now
        for p in obs.pods
        if p.unschedulable_message and p.unschedulable_since is not None
    ]
    pending = [w for w in waits if w > 0]
    return min(pending) if pending else None


def invalid_spec_condition(obs: Observation) -> dict[str, Any]:
    if obs.spec_problems:
        return condition(
            INVALID_SPEC,
            True,
            r.SPEC_INVALID,
            "; ".join(obs.spec_problems) + " (the running RayService was left unchanged)",
            obs.generation,
        )
    return condition(INVALID_SPEC, False, r.SPEC_VALID, "spec is valid", obs.generation)


def ready_condition(obs: Observation) -> dict[str, Any]:
    rs = obs.rayservice
    gen = obs.generation
    if obs.suspended:
        return condition(READY, False, r.SUSPENDED, "spec.suspend is true", gen)
    if obs.queue is not None and obs.waiting_for_kueue:
        return condition(READY, False, obs.queue.state, _queue_text(obs.queue), gen)
    if rs is None:
        return condition(
            READY, False, r.RAYSERVICE_NOT_FOUND, "the RayService does not exist yet", gen
        )
    if rs.ready and rs.app_status == APP_RUNNING:
        return condition(READY, True, r.SERVING, "the OpenAI application is RUNNING", gen)
    if rs.app_status in (APP_DEPLOY_FAILED, APP_UNHEALTHY):
        return condition(READY, False, _app_reason(rs.app_status), _app_text(rs), gen)
    if rs.app_status is None:
        message = rs.ready_message or "waiting for the Ray cluster and the Serve application"
        return condition(READY, False, r.RAYSERVICE_NOT_READY, message, gen)
    return condition(READY, False, _app_reason(rs.app_status), _app_text(rs), gen)


def degraded_condition(obs: Observation) -> dict[str, Any]:
    gen = obs.generation
    if obs.apply_error:
        return condition(DEGRADED, True, obs.apply_error_reason, obs.apply_error, gen)
    rs = obs.rayservice
    if rs is not None and rs.app_status in (APP_DEPLOY_FAILED, APP_UNHEALTHY):
        return condition(DEGRADED, True, _app_reason(rs.app_status), _app_text(rs), gen)
    return condition(DEGRADED, False, r.AS_EXPECTED, "no failures observed", gen)


def capacity_condition(obs: Observation) -> dict[str, Any]:
    blocked = blocked_pods(obs)
    if not blocked:
        return condition(
            CAPACITY_BLOCKED, False, r.SCHEDULED, "no pod is waiting for capacity", obs.generation
        )
    pools = sorted({p.pool or p.component for p in blocked})
    first = blocked[0]
    return condition(
        CAPACITY_BLOCKED,
        True,
        r.UNSCHEDULABLE,
        f"{len(blocked)} pod(s) in {', '.join(pools)} cannot be scheduled: "
        f"{first.unschedulable_message}",
        obs.generation,
    )


def spill_condition(obs: Observation) -> dict[str, Any]:
    """``SpillOver``: True while a full pool's group is capped, so new replicas go to the next
    pool (informational: never changes Ready or phase)."""
    if not obs.spill:
        return condition(
            SPILL_OVER, False, r.POOLS_OPEN, "new replicas go to the first pool", obs.generation
        )
    order = [p.name for p in obs.plan.pools] if obs.plan is not None else []
    capped = dict(obs.spill)
    nexts = [p for p in order if p not in capped]
    parts = [f"pool {pool} is full at {cap} worker pod(s)" for pool, cap in obs.spill]
    target = f"new replicas go to {', '.join(nexts)}" if nexts else "no pool has room"
    return condition(SPILL_OVER, True, r.POOL_FULL, f"{'; '.join(parts)}: {target}", obs.generation)


def progressing_condition(obs: Observation, ready: Mapping[str, Any]) -> dict[str, Any]:
    gen = obs.generation
    rs = obs.rayservice
    if obs.spec_problems:
        return condition(PROGRESSING, False, r.SPEC_INVALID, "fix the spec to continue", gen)
    if obs.apply_error:
        return condition(PROGRESSING, False, obs.apply_error_reason, obs.apply_error, gen)
    if obs.suspended:
        return condition(PROGRESSING, False, r.SUSPENDED, "spec.suspend is true", gen)
    if obs.queue is not None and obs.waiting_for_kueue:
        # Waiting for quota is neither progress nor a failure (Degraded stays False).
        return condition(PROGRESSING, False, obs.queue.state, _queue_text(obs.queue), gen)
    if rs is not None and rs.upgrade_in_progress:
        return condition(PROGRESSING, True, r.UPGRADE_IN_PROGRESS, upgrade_text(rs), gen)
    if ready["status"] == "True":
        return condition(PROGRESSING, False, r.CONVERGED, "serving the current spec", gen)
    if rs is not None and rs.app_status in (APP_DEPLOY_FAILED, APP_UNHEALTHY):
        return condition(PROGRESSING, False, _app_reason(rs.app_status), _app_text(rs), gen)
    return condition(PROGRESSING, True, str(ready["reason"]), str(ready["message"]), gen)


def replica_counts(obs: Observation) -> tuple[int, int]:
    """(replicas, readyReplicas) counted from worker pods, in model replicas."""
    plan = obs.plan
    if plan is None:
        return 0, 0
    per_replica = {p.name: p.worker_pods_per_replica for p in plan.pools}
    total = ready = 0
    for pool, size in per_replica.items():
        pods = [
            w for w in _workers(obs) if w.pool == pool and w.phase not in ("Succeeded", "Failed")
        ]
        total += len(pods) // size
        ready += len([w for w in pods if w.ready]) // size
    rs = obs.rayservice
    serving = rs is not None and rs.app_status == APP_RUNNING
    return total, ready if serving else 0


def pool_replicas(obs: Observation) -> list[dict[str, Any]]:
    """Replicas per pool from what really runs: worker pods in phase Running count as running
    replicas, the others (unscheduled, or scheduled but not started) as pending. This is where
    the Ray autoscaler's spill-over shows: the first pool full, the next one filling."""
    plan = obs.plan
    if plan is None:
        return []
    live = [w for w in _workers(obs) if w.phase not in ("Succeeded", "Failed")]
    out = []
    for pool in plan.pools:
        size = pool.worker_pods_per_replica
        pods = [w for w in live if w.pool == pool.name]
        running = len([w for w in pods if w.phase == "Running"])
        pending = len(pods) - running
        out.append({"name": pool.name, "running": running // size, "pending": -(-pending // size)})
    return out


def phase(conditions: Sequence[Mapping[str, Any]], suspended: bool) -> str:
    """A one-word summary for ``kubectl get``; conditions remain the API."""
    by_type = {c["type"]: c["status"] == "True" for c in conditions}
    if by_type.get(INVALID_SPEC):
        return "InvalidSpec"
    if suspended:
        return "Suspended"
    if by_type.get(DEGRADED):
        return "Degraded"
    admitted = next((c for c in conditions if c["type"] == ADMITTED), None)
    if admitted is not None and admitted["status"] != "True":
        return str(admitted.get("reason") or "Queued")
    if by_type.get(CAPACITY_BLOCKED):
        return "CapacityBlocked"
    if by_type.get(READY):
        return "Upgrading" if by_type.get(PROGRESSING) else "Serving"
    return "Deploying"


def build_status(obs: Observation, current: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The whole desired ``status``; previous plan is kept while the spec is invalid."""
    current = current or {}
    ready = ready_condition(obs)
    conds: list[dict[str, Any]] = list(current.get("conditions") or [])
    for new in (
        ready,
        progressing_condition(obs, ready),
        degraded_condition(obs),
        invalid_spec_condition(obs),
        capacity_condition(obs),
        spill_condition(obs),
        gcs_ft_condition(obs.plan, obs.generation, obs.gcs_ft_replica_threshold),
        downgraded_condition(
            None if obs.downgrades is None else list(obs.downgrades), obs.generation
        ),
    ):
        conds = set_condition(conds, new, now)
    if obs.queue is not None:
        conds = set_condition(conds, admitted_condition(obs.queue, obs.generation), now)
    else:
        conds = [c for c in conds if c.get("type") != ADMITTED]
    replicas, ready_replicas = replica_counts(obs)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "conditions": conds,
        "phase": phase(conds, obs.suspended),
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "selector": selector_string(obs.name),
        "rayServiceName": obs.name,
    }
    if obs.plan is not None:
        status["plan"] = obs.plan.to_status()
        status["poolReplicas"] = pool_replicas(obs)
    elif current.get("plan") is not None:
        status["plan"] = current["plan"]
    if obs.rayservice is not None or current.get("endpoint"):
        status["endpoint"] = endpoint_url(obs.name, obs.namespace)
    if obs.rayservice is not None and obs.rayservice.app_status:
        status["applicationStatus"] = obs.rayservice.app_status
    if obs.queue is not None:
        status["queue"] = queue_status(obs.queue)
    upgrade = upgrade_status(obs.rayservice)
    if upgrade is not None:
        status["upgrade"] = upgrade
    return status


#: The ``status`` fields this operator writes (and may therefore remove).
OWNED_STATUS_KEYS = frozenset(
    {
        "observedGeneration",
        "conditions",
        "phase",
        "replicas",
        "readyReplicas",
        "selector",
        "rayServiceName",
        "plan",
        "endpoint",
        "applicationStatus",
        "poolReplicas",
        "queue",
        "upgrade",
    }
)


def status_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The merge patch taking the stored status to ``desired`` (None: nothing to write)."""
    return conditions.status_patch(current, desired, OWNED_STATUS_KEYS)


def set_condition(
    existing: Sequence[Mapping[str, Any]], new: Mapping[str, Any], now: str
) -> list[dict[str, Any]]:
    """``conditions.set_condition`` in the order of ``CONDITION_TYPES``."""
    return conditions.set_condition(existing, new, now, CONDITION_TYPES)


def _app_reason(app_status: str | None) -> str:
    """``DEPLOY_FAILED`` -> ``ApplicationDeployFailed``."""
    camel = "".join(part.capitalize() for part in str(app_status).lower().split("_"))
    return r.APPLICATION_PREFIX + camel


_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")


def summarize_error(message: str, limit: int = 600) -> str:
    """Ray's messages are a sentence, then a traceback: keep the sentence and the exception.

    The last line of a traceback is where the cause is named (e.g. the model path vLLM could not
    load); the middle is noise in a condition message.
    """
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[0]
    if ". " in head:
        head = head[: head.index(". ") + 1]
    tail = lines[-1]
    text = head if tail == lines[0] else f"{head} ... {tail}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _queue_text(view: QueueView) -> str:
    if view.state == DEACTIVATED:
        return f"the Kueue Workload {view.workload} is deactivated: {view.message}"
    where = f"ClusterQueue {view.cluster_queue}" if view.cluster_queue else view.local_queue
    return f"{view.state} in {where} (Kueue): {view.message}"


def _app_text(rs: RayServiceView) -> str:
    parts = [f"application {APP_NAME} is {rs.app_status}"]
    if rs.app_message:
        parts.append(summarize_error(rs.app_message, 300))
    parts.extend(summarize_error(m) for m in rs.deployment_messages[:3])
    return "; ".join(p for p in parts if p)
