"""The composition root of the running operator: one API client, the two controllers on the
runtime's work queue, the indexes they read, the slow resync, and how a cache wakes the
deployments that use it. ``registrations.py`` (kopf) only feeds it keys and index handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from k2think_operator.app.config import OperatorConfig
from k2think_operator.deployment.cache import cache_refs
from k2think_operator.deployment.cluster import ClusterApi, KubeApi
from k2think_operator.deployment.controller import DeploymentReconciler
from k2think_operator.deployment.status import PodSummary
from k2think_operator.modelcache.controller import CacheReconciler
from k2think_operator.render.meta import FIELD_MANAGER
from k2think_operator.runtime.compact import pack
from k2think_operator.runtime.controller import Controller
from k2think_operator.runtime.kube import EVENT_QUIET_SECONDS, EventRecorder, Kube, KubeError
from k2think_operator.runtime.workqueue import Backoff

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Index(Protocol):
    """What the controllers read of a kopf index: the values stored under a key."""

    def get(self, key: Key, default: Any = ..., /) -> Any: ...

    def items(self) -> Iterable[tuple[Key, Any]]: ...


class IndexSources:
    """The watches' indexes, as the controllers read them (kopf hands index handles to event
    handlers only, so the first event binds them: ``bind``)."""

    def __init__(self) -> None:
        self.deployments: Index | None = None
        self.rayservices: Index | None = None
        self.ray_pods: Index | None = None
        self.caches: Index | None = None

    def bind(self, **indexes: Index) -> None:
        for name, index in indexes.items():
            if getattr(self, name) is None:
                setattr(self, name, index)

    @staticmethod
    def _only(index: Index | None, key: Key) -> Mapping[str, Any] | None:
        for item in index.get(key, []) if index is not None else []:
            return item  # type: ignore[no-any-return]
        return None

    def deployment(self, key: Key) -> Mapping[str, Any] | None:
        return self._only(self.deployments, key)

    def rayservice(self, key: Key) -> Mapping[str, Any] | None:
        return self._only(self.rayservices, key)

    def pods(self, key: Key) -> list[PodSummary]:
        return list(self.ray_pods.get(key, [])) if self.ray_pods is not None else []

    def cache(self, key: Key) -> Mapping[str, Any] | None:
        return self._only(self.caches, key)

    def all_deployments(self) -> Iterable[tuple[Key, Mapping[str, Any]]]:
        for key, bodies in self.deployments.items() if self.deployments is not None else ():
            for body in bodies:
                yield key, body


class Operator:
    """Both controllers, wired (module docstring)."""

    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        *,
        cluster: KubeApi | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """``cluster``: the deployment controller's API (``ClusterApi(kube)`` unless a test
        gives a stand-in); ``backoff``: per-key retry delays (1 s doubling up to
        ``retry_seconds``)."""
        self.kube = kube
        self.config = config
        self.sources = IndexSources()
        backoff = backoff or Backoff(base=1.0, cap=float(config.retry_seconds))
        self.deployments = DeploymentReconciler(
            cluster or ClusterApi(kube),
            self.sources,
            unschedulable_grace=config.unschedulable_grace_seconds,
            gcs_ft_replica_threshold=config.gcs_ft_replica_threshold,
            queue_recheck_seconds=config.queue_recheck_seconds,
            dry_run_pods=config.dry_run_pods,
            kuberay_incremental_upgrade=config.kuberay_incremental_upgrade,
            spill_retry_seconds=config.spill_retry_seconds,
        )
        self.deployment_controller: Controller[Key] = Controller(
            "deployments",
            self.deployments.reconcile,
            workers=config.reconcile_concurrency,
            backoff=backoff,
        )
        self.caches = CacheReconciler(
            kube,
            self.sources.cache,
            self.wake_cache_users,
            claim_recheck_seconds=float(config.retry_seconds),
        )
        self.cache_controller: Controller[Key] = Controller(
            "modelcaches", self.caches.reconcile, workers=2, backoff=backoff
        )
        self._resync: asyncio.Task[None] | None = None
        # Events wait for the reconciles (runtime/kube.py, EventRecorder: they are posted after
        # a burst instead of inside it).
        for recorder in (getattr(self.deployments.kube, "events", None), self.caches.events):
            if isinstance(recorder, EventRecorder):
                recorder.yield_to(lambda: self.busy(within=EVENT_QUIET_SECONDS))

    def busy(self, within: float = 0.0) -> bool:
        """Either controller has keys queued or being reconciled (or finished one less than
        ``within`` seconds ago)."""
        return self.deployment_controller.busy(within) or self.cache_controller.busy(within)

    @classmethod
    async def connect(cls, config: OperatorConfig) -> Operator:
        return cls(await Kube.connect(FIELD_MANAGER), config)

    def start(self) -> None:
        self.deployment_controller.start()
        self.cache_controller.start()
        # A slow safety net for missed events. Not a kopf timer: kopf puts a finalizer on every
        # object that has timers, and a finalizer would block deletion once the operator is gone.
        self._resync = asyncio.get_running_loop().create_task(self.resync_forever())

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        await self.deployment_controller.stop()
        await self.cache_controller.stop()
        await self.caches.events.close()
        await self.deployments.kube.close()
        await self.kube.close()

    def deployment_deleted(self, key: Key) -> None:
        self.deployment_controller.forget(key)
        self.deployments.forget(key)

    def wake_cache_users(self, cache: Key) -> None:
        """The cache's served revision or readiness moved: its deployments look again."""
        namespace, name = cache
        for key, body in self.sources.all_deployments():
            if key[0] == namespace and name in cache_refs(body):
                self.deployments.mark_dirty(key)
                self.deployment_controller.enqueue(key)

    async def resync_once(self) -> None:
        """List every deployment in scope from the API and reconcile it trusting no cache
        (applies only on drift)."""
        try:
            bodies = await self.deployments.kube.list_deployments(self.config.namespaces)
        except KubeError as error:
            log.warning("resync: cannot list K2ThinkDeployments: %s", error)
            return
        # The e2e suites count these lines: a "nothing is rewritten" window must span passes.
        log.debug("resync: %d K2ThinkDeployment(s) listed", len(bodies))
        for body in bodies:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            self.deployment_controller.enqueue(self.deployments.mark_resync(pack(body)))

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            await self.resync_once()
