"""Spill to the next pool on the scheduler's verdict: which worker group's ``maxReplicas`` the
live RayCluster should carry (pure; the controller reads and writes, ``controller.py``).

Why a write at all: Ray autoscaler v2 gives a pod up only by time
(``RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S`` = ``autoscaling.poolFallbackSeconds``,
600 s by default), whether the pod is Unschedulable (the scheduler says so in seconds) or merely
slow to start (an image pull). Its ``CloudResourceMonitor`` lowers a group's availability only on
that timeout and lives inside the autoscaler process: nothing outside can set it. What it does
read on every loop is the RayCluster's ``workerGroupSpecs[].maxReplicas``
(``KubeRayConfigReader.refresh_cached_autoscaling_config``), and with more instances of a type
than its max it terminates first those whose Ray has not started
(``ResourceDemandScheduler._enforce_max_workers_per_type``, ``_sort_nodes_for_termination``):
the Unschedulable pod goes, and the pending placement group is scheduled on the next group in
spec order at once. So: when a pool's worker pod has been Unschedulable for the CapacityBlocked
grace, the pool's group is capped at the worker pods the scheduler has bound.

Why it is not reverted: KubeRay v1.6.2 updates a RayService's RayCluster only when
``GenerateHashWithoutReplicasAndWorkersToDelete`` of the RayService's cluster spec changes, and
that hash leaves out every group's ``replicas``, ``minReplicas``, ``maxReplicas`` and
``workersToDelete`` (``rayservice_controller.go``, ``shouldUpdateCluster``). When it does update
(another field changed, KubeRay upgraded, suspend toggled) it replaces the spec and the
annotations, the cap and its record alike, and the next reconcile decides again. With autoscaling
on, KubeRay never deletes pods because ``replicas`` is above ``maxReplicas``
(``raycluster_controller.go``, "diff < 0"): only the autoscaler does.

The cap is lifted (the RayService's ``maxReplicas`` back) when the pool changed (it holds more
or fewer bound worker pods than it was capped at: a pod found room, or one left) or after
``retry_seconds``, so new replicas prefer the first pool again; if it is still full, the next
replica waits one grace there and spills again. The same write carries a ``maxReplicas`` or a
``minReplicas`` (``pools[].warmReplicas``) the RayService changed to the live cluster: KubeRay
leaves both out of its hash, so it never would. A cap never goes below the group's
``minReplicas`` (KubeRay refuses a max under the min).

The cap is recorded on the RayCluster itself (``CAPS_ANNOTATION``), so it is level-based: an
operator restart or a new leader reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from k2think_operator.deployment.status import PodSummary

__all__ = [
    "CAPS_ANNOTATION",
    "DEFAULT_SPILL_RETRY_SECONDS",
    "BoundsChange",
    "Cap",
    "Group",
    "SpillPlan",
    "bound_workers",
    "decide_spill",
    "json_patch",
    "read_caps",
    "read_groups",
    "rendered_max",
    "rendered_min",
    "spill_wanted",
]

#: A capped pool is tried again after this long (``K2T_SPILL_RETRY_SECONDS``): Ray's own
#: recovery of a given-up node type's availability takes as long
#: (``RAY_AUTOSCALER_AVAILABILITY_RECOVERY_S``).
DEFAULT_SPILL_RETRY_SECONDS = 600.0

#: Where the caps in force are recorded on the live RayCluster: {group: {"cap", "since"}}.
CAPS_ANNOTATION = "k2think.dev/spill-caps"


@dataclass(frozen=True)
class Group:
    """One worker group of the live RayCluster, as the autoscaler reads it."""

    index: int
    name: str
    max_replicas: int | None
    #: The group's minReplicas (warm replicas' pods; None: not set): a cap below it is one
    #: KubeRay refuses.
    min_replicas: int | None = None


@dataclass(frozen=True)
class Cap:
    """A cap in force: the group's ``maxReplicas`` on the live cluster, since when (epoch s)."""

    cap: int
    since: float


@dataclass(frozen=True)
class BoundsChange:
    """One bound to write: ``expected`` is what was read (the patch tests it)."""

    index: int
    group: str
    expected: int | None
    new: int
    why: str  # "cap" | "lift" | "sync"
    message: str = ""
    field: str = "maxReplicas"  # or "minReplicas" (a sync only)


@dataclass(frozen=True)
class SpillPlan:
    """What to write to the live RayCluster, the caps in force afterwards, and when to look
    again (seconds; None: only when something changes)."""

    changes: tuple[BoundsChange, ...] = ()
    caps: Mapping[str, Cap] | None = None
    recheck: float | None = None

    @property
    def capped(self) -> dict[str, Cap]:
        return dict(self.caps or {})


def read_groups(raycluster: Mapping[str, Any]) -> list[Group]:
    """The worker groups of a RayCluster (by position: the JSON patch addresses them so)."""
    groups = ((raycluster.get("spec") or {}).get("workerGroupSpecs")) or []
    out = []
    for index, group in enumerate(groups):
        value = group.get("maxReplicas")
        out.append(
            Group(
                index,
                str(group.get("groupName")),
                None if value is None else int(value),
                None if group.get("minReplicas") is None else int(group["minReplicas"]),
            )
        )
    return out


def _rendered(rayservice: Mapping[str, Any], key: str) -> dict[str, int]:
    spec = ((rayservice.get("spec") or {}).get("rayClusterConfig")) or {}
    return {
        str(g.get("groupName")): int(g[key])
        for g in spec.get("workerGroupSpecs") or []
        if g.get(key) is not None
    }


def rendered_max(rayservice: Mapping[str, Any]) -> dict[str, int]:
    """``maxReplicas`` per group as the RayService says (what the operator applied)."""
    return _rendered(rayservice, "maxReplicas")


def rendered_min(rayservice: Mapping[str, Any]) -> dict[str, int]:
    """``minReplicas`` per group as the RayService says (what the operator applied)."""
    return _rendered(rayservice, "minReplicas")


def read_caps(raycluster: Mapping[str, Any]) -> dict[str, Cap]:
    """The caps recorded on the live RayCluster (a malformed record counts as none)."""
    raw = ((raycluster.get("metadata") or {}).get("annotations") or {}).get(CAPS_ANNOTATION)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
        return {
            str(group): Cap(int(entry["cap"]), float(entry["since"]))
            for group, entry in parsed.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def _pool_pods(pods: Sequence[PodSummary], pool: str, cluster: str | None) -> list[PodSummary]:
    return [
        p
        for p in pods
        if p.component == "ray-worker"
        and p.pool == pool
        and (cluster is None or p.cluster is None or p.cluster == cluster)
        and p.phase not in ("Succeeded", "Failed")
    ]


def bound_workers(pods: Sequence[PodSummary], pool: str, cluster: str | None = None) -> int:
    """Worker pods of ``pool`` the scheduler has placed on a node (they hold the pool's room)."""
    return len([p for p in _pool_pods(pods, pool, cluster) if p.node])


def _blocked_since(
    pods: Sequence[PodSummary], pool: str, cluster: str | None, now: float, grace: float
) -> tuple[float | None, str | None, float | None]:
    """(earliest Unschedulable-since past the grace, its message, seconds until the next pod
    crosses the grace)."""
    blocked: list[tuple[float, str]] = []
    waits: list[float] = []
    for p in _pool_pods(pods, pool, cluster):
        if p.unschedulable_message is None or p.unschedulable_since is None or p.node:
            continue
        if now - p.unschedulable_since >= grace:
            blocked.append((p.unschedulable_since, p.unschedulable_message))
        else:
            waits.append(p.unschedulable_since + grace - now)
    first = min(blocked) if blocked else (None, None)
    return first[0], first[1], (min(waits) if waits else None)


def spill_wanted(
    pools: Sequence[str], pods: Sequence[PodSummary], now: float, grace: float
) -> bool:
    """Whether a pool that has a next pool has a worker pod Unschedulable past the grace: the
    one case that needs the live RayCluster read when no cap is known to be in force."""
    return any(_blocked_since(pods, pool, None, now, grace)[0] is not None for pool in pools[:-1])


def decide_spill(
    pools: Sequence[str],
    rendered: Mapping[str, int],
    groups: Sequence[Group],
    caps: Mapping[str, Cap],
    pods: Sequence[PodSummary],
    *,
    cluster: str | None,
    now: float,
    grace: float,
    retry_seconds: float,
    rendered_minimum: Mapping[str, int] | None = None,
) -> SpillPlan:
    """The live ``maxReplicas`` per group, in one pass over the pools in spec order, and the
    ``minReplicas`` of ``rendered_minimum`` (the RayService's) where the live one differs.

    - a pool with a next pool, a worker pod Unschedulable for ``grace`` and fewer bound worker
      pods than its RayService max: capped at its bound worker pods (again, at the new number,
      when that moved while it stays full);
    - a capped pool whose bound worker pods moved off the cap, or capped for ``retry_seconds``:
      lifted to the RayService's max;
    - any other group whose live max differs from the RayService's: brought to it (KubeRay does
      not carry a max-only change).

    The last pool is never capped: there is nowhere to spill to, and its Unschedulable pod is
    what ``CapacityBlocked`` reports.
    """
    by_name = {g.name: g for g in groups}
    changes: list[BoundsChange] = []
    kept: dict[str, Cap] = {}
    rechecks: list[float] = []
    for position, pool in enumerate(pools):
        group = by_name.get(pool)
        target = rendered.get(pool)
        if group is None or target is None:
            continue
        minimum = (rendered_minimum or {}).get(pool)
        if minimum is not None and group.min_replicas != minimum:
            changes.append(
                BoundsChange(
                    group.index, pool, group.min_replicas, minimum, "sync", field="minReplicas"
                )
            )
        floor = minimum if minimum is not None else group.min_replicas or 0
        bound = bound_workers(pods, pool, cluster)
        since, message, wait = _blocked_since(pods, pool, cluster, now, grace)
        if wait is not None:
            rechecks.append(wait)
        cap = caps.get(pool)
        in_force = cap is not None and group.max_replicas == cap.cap
        has_next = position < len(pools) - 1
        # Never below the group's minReplicas (a pool too small for its warm pods): KubeRay
        # refuses a max under the min; new replicas still go to the next pool.
        limit = max(bound, floor)
        if has_next and since is not None and limit < target:
            started = cap.since if in_force and cap is not None else now
            kept[pool] = Cap(limit, started)
            rechecks.append(max(0.0, started + retry_seconds - now))
            if group.max_replicas != limit:
                changes.append(
                    BoundsChange(
                        group.index,
                        pool,
                        group.max_replicas,
                        limit,
                        "cap",
                        f"pool {pool} is full (a worker pod Unschedulable for "
                        f"{now - since:.0f} s: {message}): maxReplicas of worker group {pool} "
                        f"capped at {limit} on the running Ray cluster, new replicas go to "
                        f"{', '.join(pools[position + 1 :])}",
                    )
                )
            continue
        if in_force and cap is not None:
            held = now - cap.since
            if limit == cap.cap and held < retry_seconds:
                kept[pool] = cap
                rechecks.append(cap.since + retry_seconds - now)
                continue
            why = (
                f"it holds {bound} bound worker pod(s), capped at {cap.cap}"
                if limit != cap.cap
                else f"capped for {held:.0f} s, tried again"
            )
            changes.append(
                BoundsChange(
                    group.index,
                    pool,
                    group.max_replicas,
                    target,
                    "lift",
                    f"pool {pool} takes new replicas again ({why}): maxReplicas of worker "
                    f"group {pool} back to {target}",
                )
            )
            continue
        if group.max_replicas != target:
            changes.append(BoundsChange(group.index, pool, group.max_replicas, target, "sync"))
    return SpillPlan(tuple(changes), kept, min(rechecks) if rechecks else None)


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(
    plan: SpillPlan, recorded: Mapping[str, Cap], annotations_present: bool
) -> list[dict[str, Any]]:
    """The JSON patch (RFC 6902) making the live RayCluster say ``plan``.

    Each group is addressed by position, so a ``test`` of its name comes first, and a ``test``
    of the ``maxReplicas`` that was read: if KubeRay or anyone rewrote the spec in between, the
    whole patch fails (HTTP 422) and the next reconcile decides again from what is there. No
    resourceVersion is sent: the autoscaler's own writes (``replicas``, ``workersToDelete``)
    between our read and our write do not make it fail.
    """
    ops: list[dict[str, Any]] = []
    for change in plan.changes:
        base = f"/spec/workerGroupSpecs/{change.index}"
        path = f"{base}/{change.field}"
        ops.append({"op": "test", "path": f"{base}/groupName", "value": change.group})
        if change.expected is None:
            ops.append({"op": "add", "path": path, "value": change.new})
        else:
            ops.append({"op": "test", "path": path, "value": change.expected})
            ops.append({"op": "replace", "path": path, "value": change.new})
    caps = plan.capped
    if caps == dict(recorded):
        return ops
    key = f"/metadata/annotations/{_escape(CAPS_ANNOTATION)}"
    if caps:
        value = json.dumps(
            {g: {"cap": c.cap, "since": round(c.since, 3)} for g, c in sorted(caps.items())},
            sort_keys=True,
            separators=(",", ":"),
        )
        if annotations_present:
            ops.append({"op": "add", "path": key, "value": value})
        else:
            ops.append(
                {"op": "add", "path": "/metadata/annotations", "value": {CAPS_ANNOTATION: value}}
            )
    elif recorded:
        ops.append({"op": "remove", "path": key})
    return ops
