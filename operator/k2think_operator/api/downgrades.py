"""Security downgrades a spec may ask for, said loudly.

Turning Ray token auth off, turning the NetworkPolicies off and letting vLLM run a model's own
Python code (``trust_remote_code``) are legitimate choices on an otherwise isolated cluster, so
they are not refused; but none of them may pass silently. Each one becomes a Warning Event, the
``SecurityDowngraded`` condition (a column of ``kubectl get k2t``) and a warning of the offline
``validate``. Pure: the same list feeds all three.
"""

from __future__ import annotations

from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.owned import DOWNGRADING_ENGINE_ARGS, normalise_engine_arg
from k2think_operator.api.spec import K2ThinkDeploymentSpec

AUTH_OFF = (
    "spec.ray.auth.enabled is false: anyone who reaches the Ray pods can submit jobs (run "
    "code) through the dashboard and talk to the GCS"
)
POLICIES_OFF = (
    "spec.networkPolicy.enabled is false: no NetworkPolicy limits who reaches the Ray "
    "dashboard (8265), the GCS and the serve port (8000)"
)
REMOTE_CODE = (
    "spec.engine.extraArgs.{key} is on: vLLM runs Python code shipped with the model's "
    "weights inside every replica; use it only for weights you trust"
)


def downgrades(spec: K2ThinkDeploymentSpec) -> list[str]:
    """What this spec turns off or loosens, one sentence each (empty: nothing)."""
    found: list[str] = []
    if not spec.ray.auth.enabled:
        found.append(AUTH_OFF)
    if not spec.network_policy.enabled:
        found.append(POLICIES_OFF)
    for key, value in sorted(spec.engine.extra_args.items()):
        if normalise_engine_arg(key) in DOWNGRADING_ENGINE_ARGS and value not in (False, None):
            found.append(REMOTE_CODE.format(key=key))
    return found


def downgraded_condition(found: list[str] | None, generation: int) -> dict[str, Any]:
    """``SecurityDowngraded``: True while the spec turns protections off (never affects Ready).
    ``found`` None: the spec is invalid (nothing is judged)."""
    if found is None:
        status, reason, message = "False", r.SPEC_INVALID, "no judgement of an invalid spec"
    elif found:
        status, reason, message = "True", r.DOWNGRADED, "; ".join(found)
    else:
        status, reason, message = "False", r.SECURE_DEFAULTS, "token auth and policies are on"
    return {
        "type": r.SECURITY_DOWNGRADED,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }
