"""The decide step: what one K2ThinkDeployment asks for, worked out without touching the cluster.

``decide`` parses the spec once, plans it and renders the children; ``needs_apply`` says whether
a live child lacks what we render; ``decision_events`` says what is worth telling a human. All
pure. The running operator (``reconcile.py``) and the offline CLI (``cli.py``) call the same
functions, so ``k2think-operator render`` prints exactly what the operator applies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.downgrades import AUTH_OFF, downgrades
from k2think_operator.api.k8s_rules import (
    affinity_problems,
    child_problems,
    labels_problems,
    resources_problems,
)
from k2think_operator.api.limits import name_problems
from k2think_operator.api.spec import InvalidSpec, K2ThinkDeploymentSpec, SpecError, parse_spec
from k2think_operator.deployment.cache import (
    CacheView,
    cache_problem,
    draft_cache_problem,
    serve_draft_from_cache,
    serve_from_cache,
)
from k2think_operator.deployment.upgrade import upgrade_cost
from k2think_operator.plan.planner import Plan, PlanError, plan_deployment
from k2think_operator.plan.speculative import check_draft
from k2think_operator.render import build_children
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION
from k2think_operator.render.placement import binding_problems
from k2think_operator.render.security import ray_token_secret_name
from k2think_operator.runtime.events import Event

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
    #: Set while ``spec.model.cacheRef`` names a cache with no verified revision: no children
    #: are rendered (so nothing running is changed) and the message goes in CacheReady.
    waiting_for_cache: str | None = None
    #: The cache revision served (None without cacheRef).
    cache: CacheView | None = None
    #: What the spec turns off (api/downgrades.py): Warning events and SecurityDowngraded.
    downgrades: tuple[str, ...] = ()
    #: The draft's cache revision served (None without the draft's cacheRef).
    draft_cache: CacheView | None = None


def decide(
    body: Mapping[str, Any],
    cache: CacheView | None = None,
    cache_waiting: str | None = None,
    draft_cache: CacheView | None = None,
    draft_cache_waiting: str | None = None,
) -> Decision:
    """Parse, plan and render one K2ThinkDeployment body (a dict as the API returns it).

    ``cache`` is the verified revision of the cache ``spec.model.cacheRef`` names
    (``cache.cache_view``); without it such a deployment waits (``cache_waiting`` says why).
    ``draft_cache``/``draft_cache_waiting``: the same for the speculative draft's cacheRef.

    Total: whatever the API server admits yields a Decision. A bug of ours meeting an input
    nobody thought of becomes an InvalidSpec naming the spec (and is logged with its
    traceback), never an exception that would leave the deployment without a status.
    """
    meta = body.get("metadata") or {}
    name = str(meta.get("name"))
    namespace = str(meta.get("namespace") or "default")
    try:
        generation = int(meta.get("generation") or 0)
    except (TypeError, ValueError):
        generation = 0
    try:
        return _decide(
            body,
            name,
            namespace,
            generation,
            (cache, cache_waiting),
            (draft_cache, draft_cache_waiting),
        )
    except Exception as error:
        log.exception("decide failed for %s/%s", namespace, name)
        problem = (
            f"spec: the operator could not process this spec ({type(error).__name__}: {error}); "
            "nothing was changed. Please report it with the spec"
        )
        return Decision(name, namespace, generation, None, None, (), (problem,))


def _decide(
    body: Mapping[str, Any],
    name: str,
    namespace: str,
    generation: int,
    model_cache: tuple[CacheView | None, str | None],
    draft_caches: tuple[CacheView | None, str | None],
) -> Decision:
    cache, cache_waiting = model_cache
    draft_cache, draft_waiting = draft_caches
    meta = body.get("metadata") or {}
    named = name_problems(meta)
    if named:
        return Decision(name, namespace, generation, None, None, (), tuple(map(str, named)))
    raw = body.get("spec") or {}
    if not isinstance(raw, Mapping):
        return Decision(name, namespace, generation, None, None, (), ("spec: must be an object",))
    try:
        spec = parse_spec(dict(raw))
        checked = list(spec_problems(spec, name))
        if checked:
            return Decision(name, namespace, generation, None, None, (), tuple(checked))
        plan = plan_deployment(spec, name)
    except InvalidSpec as error:
        return Decision(
            name, namespace, generation, None, None, (), tuple(map(str, error.problems))
        )
    except PlanError as error:
        return Decision(name, namespace, generation, None, None, (), (str(error),))
    loosened = tuple(downgrades(spec))
    speculative = spec.engine.speculative_decoding
    draft_ref = speculative.draft.cache_ref if speculative and speculative.draft else None
    # Both caches must have a verified revision before anything is rendered: the deployment
    # waits (nothing running is changed) and CacheReady says for which.
    waiting = None
    if spec.model.cache_ref is not None and cache is None:
        waiting = cache_waiting or f"K2ThinkModelCache {spec.model.cache_ref} is not ready"
    elif draft_ref is not None and draft_cache is None:
        waiting = draft_waiting or f"K2ThinkModelCache {draft_ref} (the draft) is not ready"
    if waiting is not None:
        return Decision(name, namespace, generation, spec, plan, (), (), waiting, None, loosened)
    if spec.model.cache_ref is not None:
        assert cache is not None
        wrong = cache_problem(spec, cache)
        if wrong:
            return Decision(name, namespace, generation, None, None, (), (wrong,))
        spec = serve_from_cache(spec, cache)
    if draft_ref is not None:
        assert draft_cache is not None
        wrong = draft_cache_problem(spec, draft_cache)
        if wrong:
            return Decision(name, namespace, generation, None, None, (), (wrong,))
        spec = serve_draft_from_cache(spec, draft_cache)
    if spec.model.cache_ref is not None or draft_ref is not None:
        try:
            check_draft(spec, spec.model.resolved_architecture())  # the caches' claims known
        except SpecError as error:
            return Decision(name, namespace, generation, None, None, (), (str(error),))
    children = build_children(spec, plan, name=name, namespace=namespace, uid=meta.get("uid"))
    refused = [problem for child in children for problem in child_problems(child)]
    if refused:
        return Decision(
            name,
            namespace,
            generation,
            None,
            None,
            (),
            tuple(f"children: {p}" for p in refused),
        )
    return Decision(
        name,
        namespace,
        generation,
        spec,
        plan,
        tuple(children),
        (),
        None,
        cache,
        loosened,
        draft_cache if draft_ref is not None else None,
    )


def spec_problems(spec: K2ThinkDeploymentSpec, name: str) -> Iterator[str]:
    """What the CRD schema cannot check in a parsed spec: the free-form maps as Pod validation
    will read them (``api/k8s_rules.py``), the GPU binding's contradictions, and a default
    Secret name colliding with another Secret field."""
    found: list[tuple[str, str]] = []
    for index, pool in enumerate(spec.pools):
        base = f"spec.pools[{index}]"
        found += labels_problems(pool.node_selector, f"{base}.nodeSelector")
        found += affinity_problems(pool.affinity, f"{base}.affinity")
        if not any(p.startswith(f"{base}.affinity") for p, _ in found):
            found += binding_problems(pool, index)
    head = spec.ray.head
    found += labels_problems(head.node_selector, "spec.ray.head.nodeSelector")
    found += resources_problems(head.resources.model_dump(), "spec.ray.head.resources")
    group = spec.serving.ingress.cpu_group
    found += labels_problems(group.node_selector, "spec.serving.ingress.cpuGroup.nodeSelector")
    policy = spec.network_policy
    found += labels_problems(policy.kuberay.pod_labels, "spec.networkPolicy.kuberay.podLabels")
    for index, peer in enumerate(policy.serve_from):
        found += labels_problems(
            peer.pod_labels, f"spec.networkPolicy.serveFrom[{index}].podLabels"
        )
    keys = spec.serving.api_keys_secret
    if keys is not None and spec.ray.auth.enabled and keys == ray_token_secret_name(spec, name):
        found.append(
            (
                "spec.serving.apiKeysSecret",
                f"{keys} is this deployment's Ray token Secret: the cluster's token would "
                "become a client API key; name another Secret",
            )
        )
    for path, message in found:
        yield f"{path}: {message}"


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
    for loosened in decision.downgrades:
        reason = r.EVENT_RAY_AUTH_DISABLED if loosened == AUTH_OFF else r.EVENT_SECURITY_DOWNGRADED
        events.append(Event.warn(reason, loosened))
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
