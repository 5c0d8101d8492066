"""kopf registrations: thin, each one hands over to ``Reconciler``.

Watches: K2ThinkDeployments (the API), our labelled RayServices (status and drift) and our
labelled Ray pods (replica counts, capacity). Pods and RayServices are kept in kopf indexes so
reconciles and status refreshes cost no API reads, which matters on a campus with thousands of
Ray pods and hundreds of deployments. The indexes hold packed copies (``compact.pack``: no
``managedFields``, spec and status as compressed JSON decoded when read), the pods only a
summary.

K2ThinkDeployments are handled by a plain event handler, not kopf's create/update/resume
handlers: those keep kopf's progress and last-handled configuration on the object (a PATCH of
its annotations after every handled change, and a backoff that outlived a restart) and post
kopf's own "Handler succeeded" Events. Reconcile is idempotent and compares before it writes,
so it needs none of that: it runs for every generation it has not reconciled yet in this
process (the initial listing at start-up included), retries on its own timer
(``Reconciler._schedule_retry``), and is backed by the slow resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from k2think_operator import metrics
from k2think_operator.apis import JOBS, K2THINK, MODELCACHE, PODS, RAYSERVICE
from k2think_operator.cachecontrol import reconcile_cache, revision_moved
from k2think_operator.cachejob import CACHE_LABEL
from k2think_operator.compact import Packed, pack
from k2think_operator.config import OperatorConfig, current_config
from k2think_operator.kube import Kube, KubeError
from k2think_operator.reconcile import Reconciler, summarize_pod
from k2think_operator.render.meta import FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY_LABEL
from k2think_operator.status import PodSummary

log = logging.getLogger(__name__)

OURS = {MANAGED_BY_LABEL: FIELD_MANAGER}


def _owner_key(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    labels = meta.get("labels") or {}
    instance = labels.get(INSTANCE_LABEL)
    namespace = meta.get("namespace")
    if not instance or not namespace:
        return None
    return str(namespace), str(instance)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = current_config()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=K2THINK.group)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=K2THINK.group, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = config.watch_timeout_seconds
    settings.watching.client_timeout = config.watch_timeout_seconds + 30
    settings.batching.worker_limit = config.worker_limit or None
    settings.scanning.disabled = not config.cluster_scan
    reconciler = Reconciler(
        await Kube.connect(),
        unschedulable_grace=config.unschedulable_grace_seconds,
        status_retry_seconds=config.retry_seconds,
        gcs_ft_replica_threshold=config.gcs_ft_replica_threshold,
        concurrency=config.reconcile_concurrency,
    )
    memo.reconciler = reconciler
    # A slow safety net for missed events. Not a kopf timer: kopf puts a finalizer on every
    # object that has timers, and a finalizer would block deletion once the operator is gone.
    memo.resync_task = asyncio.create_task(
        resync_forever(reconciler, config.namespaces, config.resync_seconds)
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = getattr(memo, "resync_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        await reconciler.cancel_requests()
        await reconciler.kube.close()


async def resync_forever(
    reconciler: Reconciler, namespaces: tuple[str, ...], interval: float
) -> None:
    """Every ``interval`` seconds, reconcile every deployment in scope (applies only on drift)."""
    while True:
        await asyncio.sleep(interval)
        try:
            bodies = await reconciler.kube.list_deployments(namespaces)
        except KubeError as error:
            log.warning("resync: cannot list K2ThinkDeployments: %s", error)
            continue
        for body in bodies:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            try:
                await reconciler.reconcile(pack(body), None, resync=True)
            except Exception:  # one bad object must not stop the loop
                log.exception("resync of %s failed", (body.get("metadata") or {}).get("name"))


# --- indexes ---------------------------------------------------------------------------------
# Coroutines, though they never await: kopf runs a plain function in a thread pool (one thread,
# and one malloc arena, more per concurrent event), a coroutine on its event loop; these only
# copy a few keys.


@kopf.index(*PODS.gvp, labels=OURS)
async def ray_pods(meta: kopf.Meta, body: kopf.Body, **_: Any) -> dict[tuple[str, str], PodSummary]:
    key = _owner_key(meta)
    return {key: summarize_pod(body)} if key else {}


@kopf.index(*RAYSERVICE.gvp, labels=OURS)
async def rayservices(meta: kopf.Meta, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Packed]:
    key = _owner_key(meta)
    return {key: pack(body)} if key else {}


@kopf.index(*K2THINK.gvp)
async def deployments(
    name: str, namespace: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Packed]:
    return {(namespace, name): pack(body)}


def _pods_of(
    index: kopf.Index[tuple[str, str], PodSummary], key: tuple[str, str]
) -> list[PodSummary]:
    return list(index.get(key, []))


def _only(
    index: kopf.Index[tuple[str, str], Mapping[str, Any]], key: tuple[str, str]
) -> Mapping[str, Any] | None:
    for item in index.get(key, []):
        return item
    return None


def _reconciler(
    memo: kopf.Memo, rayservices: kopf.Index[tuple[str, str], Mapping[str, Any]]
) -> Reconciler:
    """The reconciler, reading live RayServices from kopf's index (no GET per reconcile)."""
    reconciler: Reconciler = memo.reconciler
    if reconciler.lookup is None:
        reconciler.lookup = lambda key: _only(rayservices, key)
    return reconciler


# --- the K2ThinkDeployment itself --------------------------------------------------------------


async def _reconcile(
    reconciler: Reconciler,
    body: Mapping[str, Any],
    pods: list[PodSummary],
    *,
    slot_held: bool = False,
) -> None:
    """Reconcile; a failure is logged (the reconciler has armed its retry)."""
    meta = body.get("metadata") or {}
    try:
        await reconciler.reconcile(body, pods, slot_held=slot_held)
    except Exception:
        log.exception("reconcile of %s/%s failed", meta.get("namespace"), meta.get("name"))


#: Why a deployment is looked at (``Reconciler.request`` merges them while it waits):
ON_SPEC = "spec"  # an event of the K2ThinkDeployment: reconcile a generation not reconciled yet
ON_CHILD = "child"  # an event of its RayService (KubeRay's status, or drift): reconcile
ON_PODS = "pods"  # an event of one of its Ray pods: status only


def _request(
    reconciler: Reconciler,
    key: tuple[str, str],
    reason: str,
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    rayservices: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
) -> None:
    """Ask for the work ``reason`` calls for; it runs with the latest bodies of the indexes
    (kopf updates them in place) once the reconciler has a slot for it."""

    async def work(reasons: frozenset[str]) -> None:
        owner = _only(deployments, key)
        if owner is None:
            return
        deleting = bool((owner.get("metadata") or {}).get("deletionTimestamp"))
        pods = _pods_of(ray_pods, key)
        if not deleting and (
            ON_CHILD in reasons or (ON_SPEC in reasons and not reconciler.seen(owner))
        ):
            await _reconcile(reconciler, owner, pods, slot_held=True)
        elif ON_PODS in reasons:
            await reconciler.refresh_status(owner, _only(rayservices, key), pods, slot_held=True)

    reconciler.request(key, reason, work)


@kopf.on.event(*K2THINK.gvp, id="deployment-event")
async def deployment_event(
    type: str | None,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    rayservices: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
    **_: Any,
) -> None:
    """Reconcile each generation once (module docstring); forget a deleted deployment.

    The body comes from our index (updated by kopf before handlers run), so the state and the
    index share one packed copy. The reconcile runs in the background (``Reconciler.request``).
    """
    key = (namespace, name)
    reconciler = _reconciler(memo, rayservices)
    if type == "DELETED":
        # Children go with the garbage collector (owner references).
        reconciler.forget(namespace, name)
        metrics.forget_deployment(namespace, name)
        return
    _request(reconciler, key, ON_SPEC, deployments, rayservices, ray_pods)


# --- children ----------------------------------------------------------------------------------


@kopf.on.event(*RAYSERVICE.gvp, labels=OURS, id="rayservice-event")
async def rayservice_event(
    meta: kopf.Meta,
    memo: kopf.Memo,
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    rayservices: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
    **_: Any,
) -> None:
    """KubeRay moved (status) or someone touched our RayService (drift): react at once.

    The reconcile takes the RayService from the index (this event's version) or from our own
    last apply when that is newer, and applies only when the live object lacks what we render.
    """
    key = _owner_key(meta)
    if key is None:
        return
    _request(_reconciler(memo, rayservices), key, ON_CHILD, deployments, rayservices, ray_pods)


@kopf.on.event(*PODS.gvp, labels=OURS, id="pod-event")
async def pod_event(
    meta: kopf.Meta,
    memo: kopf.Memo,
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    rayservices: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
    **_: Any,
) -> None:
    key = _owner_key(meta)
    if key is None:
        return
    _request(_reconciler(memo, rayservices), key, ON_PODS, deployments, rayservices, ray_pods)


# --- the model cache ---------------------------------------------------------------------------


@kopf.index(*MODELCACHE.gvp)
async def caches(
    name: str, namespace: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): dict(body)}


async def _reconcile_cache(
    memo: kopf.Memo,
    body: Mapping[str, Any],
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
) -> None:
    """Fill the cache; when the revision to serve moved, re-render the deployments using it."""
    reconciler: Reconciler = memo.reconciler
    before = dict(body.get("status") or {})
    try:
        decision = await reconcile_cache(reconciler.kube, body)
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=current_config().retry_seconds) from error
    if not decision.invalid and revision_moved(before, decision):
        for key, bodies in deployments.items():
            for dep in bodies:
                ref = ((dep.get("spec") or {}).get("model") or {}).get("cacheRef")
                if key[0] == decision.namespace and ref == decision.name:
                    await reconciler.reconcile(dep, _pods_of(ray_pods, key))
    if decision.retry:
        # The claim is being created (or is yet to be): we do not watch claims, so look again.
        raise kopf.TemporaryError("waiting for the claim", delay=current_config().retry_seconds)


@kopf.on.resume(*MODELCACHE.gvp, id="cache-resume")
@kopf.on.create(*MODELCACHE.gvp, id="cache-create")
@kopf.on.update(*MODELCACHE.gvp, id="cache-update", field="spec")
async def reconcile_modelcache(
    memo: kopf.Memo,
    body: kopf.Body,
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
    **_: Any,
) -> None:
    await _reconcile_cache(memo, dict(body), deployments, ray_pods)


@kopf.on.event(*JOBS.gvp, labels={**OURS, CACHE_LABEL: kopf.PRESENT}, id="fill-job-event")
async def fill_job_event(
    meta: kopf.Meta,
    memo: kopf.Memo,
    caches: kopf.Index[tuple[str, str], Mapping[str, Any]],
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
    **_: Any,
) -> None:
    """A fill Job moved (started, retried, finished): the cache's status follows at once."""
    cache_name = (meta.get("labels") or {}).get(CACHE_LABEL)
    owner = _only(caches, (str(meta.get("namespace")), str(cache_name)))
    if owner is None or (owner.get("metadata") or {}).get("deletionTimestamp"):
        return
    await _reconcile_cache(memo, owner, deployments, ray_pods)
