"""The decide step: what one K2ThinkDeployment asks for, worked out without touching the cluster.

``decide`` parses the spec once, plans it and renders the children; ``needs_apply`` says whether
a live child lacks what we render; ``decision_events`` says what is worth telling a human. All
pure. The running operator (``reconcile.py``) and the offline CLI (``cli.py``) call the same
functions, so ``k2think-operator render`` prints exactly what the operator applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.limits import name_problems
from k2think_operator.api.spec import InvalidSpec, K2ThinkDeploymentSpec, SpecError, parse_spec
from k2think_operator.deployment.cache import CacheView, serve_from_cache
from k2think_operator.deployment.upgrade import upgrade_cost
from k2think_operator.plan.planner import Plan, PlanError, plan_deployment
from k2think_operator.plan.speculative import check_draft
from k2think_operator.render import build_children
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION
from k2think_operator.runtime.events import Event


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
    #: Set while ``spec.model.cacheRef`` names a cache with no verified revision: no children
    #: are rendered (so nothing running is changed) and the message goes in CacheReady.
    waiting_for_cache: str | None = None
    #: The cache revision served (None without cacheRef).
    cache: CacheView | None = None


def decide(
    body: Mapping[str, Any],
    cache: CacheView | None = None,
    cache_waiting: str | None = None,
) -> Decision:
    """Parse, plan and render one K2ThinkDeployment body (a dict as the API returns it).

    ``cache`` is the verified revision of the cache ``spec.model.cacheRef`` names
    (``cacheuse.cache_view``); without it such a deployment waits (``cache_waiting`` says why).
    """
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
    if spec.model.cache_ref is not None:
        if cache is None:
            waiting = cache_waiting or f"K2ThinkModelCache {spec.model.cache_ref} is not ready"
            return Decision(name, namespace, generation, spec, plan, (), (), waiting, None)
        spec = serve_from_cache(spec, cache)
        try:
            check_draft(spec, spec.model.resolved_architecture())  # the cache's claim now known
        except SpecError as error:
            return Decision(name, namespace, generation, None, None, (), (str(error),))
    children = build_children(spec, plan, name=name, namespace=namespace, uid=meta.get("uid"))
    return Decision(name, namespace, generation, spec, plan, tuple(children), (), None, cache)


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


def decision_events(
    decision: Decision,
    current_status: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    *,
    incremental_upgrade_gate: bool = False,
) -> list[Event]:
    """Events worth telling a human: a new plan, a costly cluster switch-over, a bad spec.

    ``incremental_upgrade_gate``: KubeRay's RayServiceIncrementalUpgrade gate is on (upgrade.py).
    """
    events: list[Event] = []
    if decision.problems:
        events.append(Event.warn(r.EVENT_INVALID_SPEC, "; ".join(decision.problems)))
        return events
    plan = decision.plan
    assert plan is not None
    previous = current_status.get("plan") or {}
    if previous.get("explanation") != plan.explanation:
        events.append(Event.normal(r.EVENT_PLANNED, plan.explanation))
    for warning in plan.warnings:
        events.append(Event.warn(r.EVENT_PLAN_WARNING, warning))
    if decision.spec is not None and not decision.spec.ray.auth.enabled:
        events.append(
            Event.warn(
                r.EVENT_RAY_AUTH_DISABLED,
                "spec.ray.auth.enabled is false: anyone who reaches the Ray pods can submit "
                "jobs (run code) through the dashboard and talk to the GCS",
            )
        )
    if live is not None and decision.children:
        want = (decision.children[0].get("metadata") or {}).get("annotations") or {}
        have = (live.get("metadata") or {}).get("annotations") or {}
        old, new = have.get(CLUSTER_HASH_ANNOTATION), want.get(CLUSTER_HASH_ANNOTATION)
        if old and new and old != new:
            cost = upgrade_cost(decision.spec, plan, incremental_upgrade_gate)
            events.append(
                Event.normal(
                    r.EVENT_NEW_RAY_CLUSTER, f"the change reshapes the Ray cluster: {cost}"
                )
            )
    return events
