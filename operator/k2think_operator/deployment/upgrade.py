"""What ``upgradeStrategy: NewClusterWithIncrementalUpgrade`` does on this cluster's KubeRay (pure).

KubeRay v1.6.2 honours the strategy only with its ``RayServiceIncrementalUpgrade`` feature gate
on (``pkg/features/features.go``: alpha, off by default); with the gate off
``isZeroDowntimeUpgradeEnabled`` is false for it (``rayservice_controller.go``) and a change that
needs a new Ray cluster is not rolled out at all, as with ``None``. The operator cannot read
another operator's flags, so the platform team tells it (``K2T_KUBERAY_INCREMENTAL_UPGRADE``,
through the chart's ``operator.extraEnv``; off like KubeRay's default), and the operator says
what will happen instead of announcing a new cluster that never comes: the condition
``IncrementalUpgradeUnavailable`` and the text of the ``NewRayCluster`` event.
"""

from __future__ import annotations

import math
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.spec import K2ThinkDeploymentSpec
from k2think_operator.api.upgrade import INCREMENTAL_UPGRADE
from k2think_operator.plan.planner import Plan
from k2think_operator.runtime.conditions import condition, set_condition

GATE_OFF_TEXT = (
    "KubeRay's RayServiceIncrementalUpgrade feature gate is off (the operator is told so by "
    "K2T_KUBERAY_INCREMENTAL_UPGRADE; off is KubeRay v1.6's default): KubeRay ignores "
    "upgradeStrategy NewClusterWithIncrementalUpgrade, so a change that needs a new Ray "
    "cluster is not rolled out (as with None); only Serve config changes apply. Turn the gate "
    "on (--feature-gates=RayServiceIncrementalUpgrade=true, with the Gateway API installed) "
    "and set K2T_KUBERAY_INCREMENTAL_UPGRADE=true, or use upgradeStrategy NewCluster"
)


def upgrade_cost(spec: K2ThinkDeploymentSpec | None, plan: Plan, gate_on: bool) -> str:
    """What a change that reshapes the Ray cluster will cost, for the NewRayCluster event."""
    strategy = spec.upgrade_strategy if spec else "NewCluster"
    if strategy == "None":
        return "upgradeStrategy None: the running cluster keeps its old shape"
    if (
        strategy == INCREMENTAL_UPGRADE
        and spec is not None
        and spec.incremental_upgrade is not None
    ):
        if not gate_on:
            return GATE_OFF_TEXT
        options = spec.incremental_upgrade
        surge = math.ceil(plan.max_gpus * options.max_surge_percent / 100)
        return (
            f"KubeRay will grow a second Ray cluster by {options.max_surge_percent}% of the "
            f"capacity at a time and move {options.step_size_percent}% of the traffic every "
            f"{options.interval_seconds} s through Gateway class "
            f"{options.gateway_class_name} ({strategy}); about {surge} more GPUs at most"
        )
    return (
        f"KubeRay will start a second Ray cluster and switch over ({strategy}); "
        f"during the switch-over up to {plan.max_gpus} more GPUs are requested"
    )


def with_upgrade_condition(
    status: dict[str, Any],
    spec: K2ThinkDeploymentSpec | None,
    *,
    gate_on: bool,
    generation: int,
    now: str,
) -> dict[str, Any]:
    """Add IncrementalUpgradeUnavailable for a deployment with that strategy; drop it for the
    others (a deployment that switched strategy keeps no stale verdict)."""
    existing = status.get("conditions") or []
    if spec is None or spec.upgrade_strategy != INCREMENTAL_UPGRADE:
        kept = [c for c in existing if c.get("type") != r.INCREMENTAL_UPGRADE_UNAVAILABLE]
        return status if len(kept) == len(existing) else {**status, "conditions": kept}
    if gate_on:
        new = condition(
            r.INCREMENTAL_UPGRADE_UNAVAILABLE,
            False,
            r.KUBERAY_FEATURE_GATE_ON,
            "KubeRay's RayServiceIncrementalUpgrade feature gate is on (as the operator is "
            "told): a new Ray cluster grows step by step while traffic moves to it",
            generation,
        )
    else:
        new = condition(
            r.INCREMENTAL_UPGRADE_UNAVAILABLE,
            True,
            r.KUBERAY_FEATURE_GATE_OFF,
            GATE_OFF_TEXT,
            generation,
        )
    return {**status, "conditions": set_condition(existing, new, now)}
