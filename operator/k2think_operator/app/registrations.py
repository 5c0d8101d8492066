"""kopf registrations: thin, each one hands a key (and the index handles) to ``Operator``.

Watches: K2ThinkDeployments (the API), our labelled RayServices (status and drift), our labelled
Ray pods (replica counts, capacity), K2ThinkModelCaches and their fill Jobs. Every watch keeps an
index (kopf updates it before handlers run) and enqueues the owning object's key; the
controllers read the latest state from the indexes when a worker takes the key
(``runtime/controller.py``), which matters on a campus with thousands of Ray pods and hundreds of
deployments: no API read per reconcile. The indexes hold packed copies (``compact.pack``: no
``managedFields``, spec and status as compressed JSON decoded when read), the pods only a
summary.

Only event handlers, no create/update/resume handlers: those keep kopf's progress and
last-handled configuration on the object (a PATCH of its annotations after every handled change,
a backoff that outlives a restart) and post kopf's own "Handler succeeded" Events. Reconciles are
level-based and idempotent, retried by the runtime's queue with backoff, and backed by the slow
resync.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from k2think_operator.api.coordinates import JOBS, K2THINK, MODELCACHE, PODS, RAYSERVICE
from k2think_operator.app.config import OperatorConfig, current_config
from k2think_operator.app.operator import Operator
from k2think_operator.deployment.controller import summarize_pod
from k2think_operator.deployment.reference import reference_json
from k2think_operator.deployment.status import PodSummary
from k2think_operator.modelcache.jobs import CACHE_LABEL
from k2think_operator.render.meta import FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY_LABEL
from k2think_operator.runtime.compact import Packed, pack, use_preset_dictionary
from k2think_operator.runtime.credentials import Credentials, load_credentials
from k2think_operator.runtime.kopf_adapter import NoDiffBase, connection_info

log = logging.getLogger(__name__)

OURS = {MANAGED_BY_LABEL: FIELD_MANAGER}

# The indexes and the reconciler keep packed copies; our own output packs them best.
use_preset_dictionary(reference_json)

#: The credentials kopf's watches and our client share (an exec plugin runs once for both).
_credentials: Credentials | None = None


def _owner_key(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    labels = meta.get("labels") or {}
    instance = labels.get(INSTANCE_LABEL)
    namespace = meta.get("namespace")
    if not instance or not namespace:
        return None
    return str(namespace), str(instance)


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """The service account in a pod, else the kubeconfig, exec credential plugins included
    (``runtime/credentials.py``); kopf logs in again when they expire."""
    global _credentials
    if _credentials is None:
        _credentials = load_credentials()
    return await connection_info(_credentials)


#: How long kopf keeps an object's watch worker after its last event (kopf's default: 5 s). The
#: worker holds that last raw event (the whole object, as parsed from the watch) while it waits,
#: and our handlers only index and enqueue, so nothing is gained by waiting: in a burst of new
#: deployments, 5 s of RayServices' raw events were alive at once at the peak (issue #20).
WATCH_WORKER_IDLE_SECONDS = 0.5


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """kopf's settings from ours."""
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = config.watch_timeout_seconds
    settings.watching.client_timeout = config.watch_timeout_seconds + 30
    settings.queueing.worker_limit = config.worker_limit or None
    settings.scanning.disabled = not config.cluster_scan
    settings.persistence.diffbase_storage = NoDiffBase()  # no changing handlers read one
    settings.queueing.idle_timeout = WATCH_WORKER_IDLE_SECONDS


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = current_config()
    configure(settings, config)
    operator = await Operator.connect(config)
    operator.start()
    memo.operator = operator


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    operator: Operator | None = getattr(memo, "operator", None)
    if operator is not None:
        await operator.stop()


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


@kopf.index(*MODELCACHE.gvp)
async def caches(
    name: str, namespace: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): dict(body)}


def _operator(memo: kopf.Memo, **indexes: Any) -> Operator:
    """The operator, with the index handles kopf passed to this handler bound once."""
    operator: Operator = memo.operator
    operator.sources.bind(**indexes)
    return operator


# --- events: each enqueues the owning object's key ----------------------------------------------


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
    operator = _operator(memo, deployments=deployments, rayservices=rayservices, ray_pods=ray_pods)
    if type == "DELETED":
        operator.deployment_deleted((namespace, name))  # children: the garbage collector
    else:
        operator.deployment_controller.enqueue((namespace, name))


@kopf.on.event(*RAYSERVICE.gvp, labels=OURS, id="rayservice-event")
@kopf.on.event(*PODS.gvp, labels=OURS, id="pod-event")
async def child_event(
    meta: kopf.Meta,
    memo: kopf.Memo,
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    rayservices: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ray_pods: kopf.Index[tuple[str, str], PodSummary],
    **_: Any,
) -> None:
    """KubeRay moved (our RayService's status, a Ray pod) or someone touched our RayService
    (drift): the owning deployment looks again."""
    key = _owner_key(meta)
    operator = _operator(memo, deployments=deployments, rayservices=rayservices, ray_pods=ray_pods)
    if key is not None:
        operator.deployment_controller.enqueue(key)


@kopf.on.event(*MODELCACHE.gvp, id="cache-event")
async def cache_event(
    type: str | None,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    caches: kopf.Index[tuple[str, str], Mapping[str, Any]],
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    **_: Any,
) -> None:
    operator = _operator(memo, caches=caches, deployments=deployments)
    if type == "DELETED":
        operator.cache_controller.forget((namespace, name))
    else:
        operator.cache_controller.enqueue((namespace, name))


@kopf.on.event(*JOBS.gvp, labels={**OURS, CACHE_LABEL: kopf.PRESENT}, id="fill-job-event")
async def fill_job_event(
    meta: kopf.Meta,
    memo: kopf.Memo,
    caches: kopf.Index[tuple[str, str], Mapping[str, Any]],
    deployments: kopf.Index[tuple[str, str], Mapping[str, Any]],
    **_: Any,
) -> None:
    """A fill Job moved (started, retried, finished): the cache's status follows at once."""
    cache_name = (meta.get("labels") or {}).get(CACHE_LABEL)
    operator = _operator(memo, caches=caches, deployments=deployments)
    if cache_name:
        operator.cache_controller.enqueue((str(meta.get("namespace")), str(cache_name)))
