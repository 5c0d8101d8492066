"""The model-cache controller: one reconcile of a K2ThinkModelCache, read -> decide
(``jobs.decide_cache``, pure) -> create -> status, run by the runtime's work queue like the
deployment controller (``runtime/controller.py``).

When the revision the cache serves moves (or its readiness does), the deployments using it must
look again: ``on_moved`` is told, and the composition root enqueues them in the deployment
controller (``revision_moved``). A claim being created is not watched: the cache is looked at
again after ``claim_recheck_seconds``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.coordinates import JOBS, MODELCACHE, PODS, PVCS
from k2think_operator.api.modelcache import K2ThinkModelCacheStatus, claim_of, parse_cache_spec
from k2think_operator.api.spec import InvalidSpec
from k2think_operator.modelcache.decide import CacheDecision, decide_cache
from k2think_operator.modelcache.jobs import fill_job_name, fill_report
from k2think_operator.runtime import metrics
from k2think_operator.runtime.conditions import status_patch
from k2think_operator.runtime.controller import Result
from k2think_operator.runtime.kube import EventRecorder, Kube

log = logging.getLogger(__name__)

Key = tuple[str, str]

#: The status fields the cache controller writes (and may therefore remove).
OWNED_STATUS_KEYS = frozenset(
    field.alias or name for name, field in K2ThinkModelCacheStatus.model_fields.items()
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def reconcile_cache(
    kube: Kube, body: Mapping[str, Any], events: EventRecorder | None = None
) -> CacheDecision:
    """Read the claim, the fill Job and its pods; decide; create; write the status."""
    meta = body.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace") or "default")
    claim = job = report = None
    try:
        spec = parse_cache_spec(dict(body.get("spec") or {}))
    except InvalidSpec:
        spec = None
    if spec is not None:
        claim = await kube.get(PVCS, namespace, claim_of(spec, name))
        job_name = fill_job_name(name, spec)
        job = await kube.get(JOBS, namespace, job_name)
        if job is not None:
            pods = await kube.list(PODS, namespace, label_selector=f"job-name={job_name}")
            report = fill_report(pods)
    decision = decide_cache(body, claim, job, report, _now())
    for api, obj in ((PVCS, decision.claim_to_create), (JOBS, decision.job_to_create)):
        # Both are immutable in the fields we set, and a Job's name says what it fills: one
        # that exists already is left as it is.
        if obj is not None and await kube.create(api, obj):
            metrics.API_WRITES.labels(api.kind.lower()).inc()
    current = dict(body.get("status") or {})
    # Conditions keep their transition time, so an unchanged status is not re-written.
    patch = status_patch(current, decision.status, OWNED_STATUS_KEYS)
    if patch is not None:
        await kube.patch_status(MODELCACHE, namespace, name, patch)
        metrics.API_WRITES.labels("status").inc()
        if events is not None:
            for event in decision.events:
                events.record(body, event)
    return decision


def _ready_reason(status: Mapping[str, Any]) -> Any:
    for cond in status.get("conditions") or []:
        if cond.get("type") == r.CACHE_READY:
            return (cond.get("status"), cond.get("reason"))
    return None


def revision_moved(before: Mapping[str, Any], decision: CacheDecision) -> bool:
    """Whether deployments using the cache must look again: the served revision changed, or the
    cache's readiness did (their CacheReady condition quotes it)."""
    keys = ("currentRevision", "path", "claimName")
    if any(before.get(k) != decision.status.get(k) for k in keys):
        return True
    return bool(_ready_reason(before) != _ready_reason(decision.status))


class CacheReconciler:
    """Reconciles K2ThinkModelCaches by key (module docstring)."""

    def __init__(
        self,
        kube: Kube,
        lookup: Callable[[Key], Mapping[str, Any] | None],
        on_moved: Callable[[Key], None],
        *,
        claim_recheck_seconds: float = 30.0,
    ) -> None:
        self.kube = kube
        self.events = EventRecorder(kube, kube.field_manager)
        self.lookup = lookup
        self.on_moved = on_moved
        self.claim_recheck_seconds = claim_recheck_seconds

    async def reconcile(self, key: Key) -> Result:
        body = self.lookup(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return Result()  # its claim and Jobs go with the garbage collector
        before = dict(body.get("status") or {})
        decision = await reconcile_cache(self.kube, body, self.events)
        if not decision.invalid and revision_moved(before, decision):
            self.on_moved(key)
        return Result(self.claim_recheck_seconds if decision.retry else None)
