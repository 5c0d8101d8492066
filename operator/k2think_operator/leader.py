"""One active reconciler among several replicas: a coordination.k8s.io Lease.

Why a Lease and not kopf's peering: kopf 1.45's peering (``kopf._core.engines.peering``) needs
its own CRDs (KopfPeering / ClusterKopfPeering) installed and RBAC on them, and it is advisory:
every replica keeps its watches open and a replica *pauses* only after it has seen a
higher-priority peer's keep-alive, so for a moment after start-up, or while the peering object
is being written, two replicas can both handle events; replicas of one Deployment also share one
priority, and kopf lets equal priorities run side by side (it only logs a warning). A Lease is
what Kubernetes' own controllers use (client-go ``tools/leaderelection``): the standby runs no
kopf at all, so it cannot write; it takes the lease only after the holder has not renewed it
for ``lease_duration`` seconds, and the holder stops kopf once it has failed to renew for
``renew_deadline`` seconds (< lease_duration), so the two never overlap as long as clocks tick
at the same rate. No CRD, one namespaced Role.

The election itself is ``kubernetes_asyncio.leaderelection`` (the asyncio port of client-go's
algorithm: optimistic concurrency on the Lease's resourceVersion). Two gaps of it are closed
here: a network error from its lock (an API server that is down) escaped from its renew loop
without stopping the leader's work, so ``_Lock`` turns it into a failed attempt; and it has no
"release on cancel", so a replica stopping on SIGTERM hands the lease over by clearing the
holder (the standby then takes it at its next retry instead of waiting for the lease to expire).

While standing by, the process serves ``/healthz`` itself (kopf, which normally serves it, is
not running), so a liveness probe does not kill a healthy standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientError, web
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config as ElectionConfig
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock
from prometheus_client import Gauge

from k2think_operator.config import OperatorConfig

log = logging.getLogger(__name__)

IS_LEADER = Gauge(
    "k2think_operator_leader", "1 while this replica holds the lease and reconciles, else 0."
)
LEADER_TRANSITIONS = Gauge(
    "k2think_operator_leader_acquisitions", "How many times this replica acquired the lease."
)

_NETWORK_ERRORS = (ClientError, TimeoutError, OSError)


def default_identity() -> str:
    """The pod name (the chart sets POD_NAME) plus a random suffix: unique per process."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """POD_NAMESPACE, else the service account's namespace file, else ``default``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _unavailable(error: BaseException) -> ApiException:
    failed = ApiException(status=503, reason=f"API server unreachable: {error!r}")
    failed.body = json.dumps({"code": 503, "message": str(error)}).encode()
    return failed


class _Lock(LeaseLock):
    """LeaseLock whose network failures are failed attempts, not exceptions (module docstring)."""

    async def get(self, name: str, namespace: str) -> Any:
        try:
            return await super().get(name, namespace)
        except _NETWORK_ERRORS as error:
            return False, _unavailable(error)

    async def create(self, name: str, namespace: str, election_record: Any) -> bool:
        try:
            return bool(await super().create(name, namespace, election_record))
        except _NETWORK_ERRORS as error:
            log.warning("lease %s/%s not created: %r", namespace, name, error)
            return False

    async def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        try:
            return bool(await super().update(name, namespace, updated_record))
        except _NETWORK_ERRORS as error:
            log.warning("lease %s/%s not renewed: %r", namespace, name, error)
            return False

    async def release(self) -> None:
        """Clear the holder if it is still us, so a standby takes over without waiting."""
        found, record = await self.get(self.name, self.namespace)
        if not found or not isinstance(record, LeaderElectionRecord):
            return
        if record.holder_identity != self.identity or self.lease_reference is None:
            return
        spec = self.lease_reference.spec
        spec.holder_identity = None  # type: ignore[assignment]
        spec.lease_duration_seconds = 1
        try:
            await self.api_instance.replace_namespaced_lease(
                name=self.name, namespace=self.namespace, body=self.lease_reference
            )
            log.info("released lease %s/%s", self.namespace, self.name)
        except (ApiException, *_NETWORK_ERRORS) as error:
            log.warning("lease %s/%s not released: %r", self.namespace, self.name, error)


async def _api_client() -> client.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    configuration = client.Configuration()
    await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


async def _standby_health(host: str, port: int) -> web.AppRunner:
    """``/healthz`` while standing by (kopf serves it once this replica leads)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


class _Term:
    """One stand-by-then-lead cycle of a replica (a new one after each lost lease)."""

    def __init__(
        self, lock: _Lock, stop: asyncio.Event, work: Callable[[], Awaitable[int]]
    ) -> None:
        self.lock = lock
        self.stop = stop
        self.work = work
        self.health: web.AppRunner | None = None
        self.leading: asyncio.Task[None] | None = None
        self.exit_code = 0
        self.failed = False

    async def lead(self) -> None:
        self.leading = asyncio.current_task()
        if self.health is not None:
            await self.health.cleanup()  # kopf binds the health port from now on
            self.health = None
        IS_LEADER.set(1)
        LEADER_TRANSITIONS.inc()
        log.info("acquired lease %s/%s: reconciling", self.lock.namespace, self.lock.name)
        self.exit_code = await self.work()
        self.stop.set()  # kopf stopped on a signal: the process ends

    async def lost(self) -> None:
        log.warning("lost lease %s/%s: standing by", self.lock.namespace, self.lock.name)

    async def run(self, settings: OperatorConfig) -> None:
        self.health = await _standby_health(settings.health_host, settings.health_port)
        election = LeaderElection(
            ElectionConfig(
                self.lock,
                lease_duration=settings.lease_duration_seconds,
                renew_deadline=settings.lease_renew_deadline_seconds,
                retry_period=settings.lease_retry_seconds,
                onstarted_leading=self.lead,
                onstopped_leading=self.lost,
            )
        )
        elector = asyncio.create_task(election.run(), name="leader election")
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({elector, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not elector.done():
            elector.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await elector
        if not elector.cancelled() and elector.exception() is not None:
            log.warning("leader election failed: %r", elector.exception())
            self.failed = True
        if self.leading is not None and not self.leading.done():
            # The lease was lost: stop reconciling now, before it can expire and a standby
            # take over.
            self.leading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.leading
        IS_LEADER.set(0)
        if self.health is not None:
            await self.health.cleanup()
            self.health = None


async def run_as_leader(settings: OperatorConfig, work: Callable[[], Awaitable[int]]) -> int:
    """Stand by until this replica holds the lease, run ``work`` while it does, repeat.

    ``work`` is the kopf supervisor: it returns when a signal stopped kopf (the process then
    releases the lease and ends) and is cancelled when the lease is lost (the replica goes back
    to standing by, in the same process: an API server restart must not restart the operator).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    api = await _api_client()
    lock = _Lock(
        settings.lease_name,
        settings.lease_namespace or default_namespace(),
        settings.lease_identity or default_identity(),
        api,
    )
    log.info(
        "leader election: lease %s/%s as %s (duration %.0f s, renew deadline %.0f s)",
        lock.namespace,
        lock.name,
        lock.identity,
        settings.lease_duration_seconds,
        settings.lease_renew_deadline_seconds,
    )
    exit_code = 0
    try:
        while not stop.is_set():
            # kopf installs its own signal handlers while it runs; ours are back between terms.
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            term = _Term(lock, stop, work)
            await term.run(settings)
            exit_code = term.exit_code
            if term.failed:
                # Not a tight loop on an error the next term would hit again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=settings.lease_retry_seconds)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lock.release(), timeout=5)
        await api.close()
    return exit_code
