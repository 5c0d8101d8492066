"""One reconcile of a K2ThinkModelCache: read -> decide (``cachejob.decide_cache``) -> create ->
status. The reads and writes are ``kube.Kube``'s; the decision is pure.

It returns the decision so the handler can wake the deployments that use the cache when the
revision they should serve moved (``revision_moved``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from k2think_operator import reasons as r
from k2think_operator.cachejob import CacheDecision, decide_cache, fill_job_name, fill_report
from k2think_operator.kube import Kube, KubeError, emit_event
from k2think_operator.modelcache import claim_of, parse_cache_spec
from k2think_operator.spec import InvalidSpec
from k2think_operator.status import status_patch

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def reconcile_cache(kube: Kube, body: Mapping[str, Any]) -> CacheDecision:
    meta = body.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace") or "default")
    claim = job = report = None
    try:
        spec = parse_cache_spec(dict(body.get("spec") or {}))
    except InvalidSpec:
        spec = None
    if spec is not None:
        claim = await kube.get_claim(namespace, claim_of(spec, name))
        job_name = fill_job_name(name, spec)
        job = await kube.get_job(namespace, job_name)
        if job is not None:
            report = fill_report(await kube.job_pods(namespace, job_name))
    decision = decide_cache(body, claim, job, report, _now())
    for obj in (decision.claim_to_create, decision.job_to_create):
        if obj is not None:
            await kube.create(obj)
    current = dict(body.get("status") or {})
    # Conditions keep their transition time, so an unchanged status is not re-written.
    patch = status_patch(current, decision.status)
    if patch is not None:
        try:
            await kube.patch_cache_status(namespace, name, patch)
        except KubeError as error:
            log.warning("status of cache %s/%s not written: %s", namespace, name, error)
        else:
            for warning, reason, message in decision.events:
                emit_event(body, warning=warning, reason=reason, message=message)
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
