"""Is a head failure survivable? The GcsFaultToleranceOff condition and its Warning event.

Ray keeps its cluster state (actors, placement groups, the Serve controller's checkpoint) in the
GCS on the head. Without GCS fault tolerance a head failure restarts the whole Ray cluster:
every model replica reloads its weights (minutes for a 32B model). With it (an external Redis,
``spec.ray.gcsFaultTolerance``) only the head restarts; the raylets on the workers reconnect and
the replicas keep serving. Small fleets may accept the risk, so the warning starts above a
replica threshold the platform team sets for the operator (``K2T_GCS_FT_REPLICA_THRESHOLD``,
default ``DEFAULT_GCS_FT_REPLICA_THRESHOLD``). It is informational: the deployment stays Ready
and its phase is unchanged. Pure functions, table-tested.
"""

from __future__ import annotations

from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.plan.planner import Plan

#: Above this many model replicas (the deployment's maximum), running without GCS fault tolerance
#: is reported. 4 replicas of K2-Think at TP=4 are 16 GPUs: a head failure then costs 16 GPUs'
#: worth of weight reloads and every in-flight reasoning stream.
DEFAULT_GCS_FT_REPLICA_THRESHOLD = 4


def gcs_ft_risk(plan: Plan, threshold: int) -> str | None:
    """The warning text when ``plan`` runs above ``threshold`` replicas without GCS FT."""
    if plan.gcs_fault_tolerance or plan.max_replicas <= threshold:
        return None
    return (
        f"up to {plan.max_replicas} replicas ({plan.max_gpus} GPUs) run without GCS fault "
        f"tolerance: a Ray head failure restarts every replica and reloads its weights; set "
        f"spec.ray.gcsFaultTolerance (an external Redis) - threshold {threshold} replicas"
    )


def gcs_ft_condition(plan: Plan | None, generation: int, threshold: int) -> dict[str, Any]:
    """``GcsFaultToleranceOff``: True when the risk above applies (never affects Ready)."""

    def cond(status: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": r.GCS_FAULT_TOLERANCE_OFF,
            "status": "True" if status else "False",
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
        }

    if plan is None:
        return cond(False, r.SPEC_INVALID, "no plan for an invalid spec")
    if plan.gcs_fault_tolerance:
        return cond(False, r.GCS_FT_CONFIGURED, "GCS state is kept in Redis (gcsFaultTolerance)")
    risk = gcs_ft_risk(plan, threshold)
    if risk is not None:
        return cond(True, r.ABOVE_REPLICA_THRESHOLD, risk)
    return cond(
        False,
        r.BELOW_REPLICA_THRESHOLD,
        f"no GCS fault tolerance, accepted up to {threshold} replicas (max {plan.max_replicas})",
    )
