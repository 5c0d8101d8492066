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

The election is client-go's algorithm (``tools/leaderelection``): optimistic concurrency on the
Lease's resourceVersion; a candidate takes a lease whose holder it has not seen renew for
``lease_duration`` (by its own clock: the time it *observed* the record change, so clocks of
different machines never meet); a leader renews every ``retry_period`` and gives up when no
renewal succeeded for ``renew_deadline``. It is written here on ``kube.RestClient`` because the
asyncio port of it (``kubernetes_asyncio.leaderelection``) comes only with the generated client,
whose import costs ~37 MiB of the operator's memory (``kube.RestClient`` says why). Two things
it adds, which that port lacked: an API server that does not answer is a failed attempt (each
bounded by the time left before the deadline), never an exception out of the renew loop while
kopf keeps running; and a replica stopping on SIGTERM hands the lease over by clearing the holder
(as client-go's ``ReleaseOnCancel``: the standby takes it at its next retry instead of waiting for
the lease to expire).

While standing by, the process serves ``/healthz`` itself (kopf, which normally serves it, is
not running), so a liveness probe does not kill a healthy standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from k2think_operator.runtime.kube import NETWORK_ERRORS, ApiError, RestClient
from k2think_operator.runtime.resources import LEASES, build_path

log = logging.getLogger(__name__)

IS_LEADER = Gauge(
    "k2think_operator_leader", "1 while this replica holds the lease and reconciles, else 0."
)
LEADER_TRANSITIONS = Gauge(
    "k2think_operator_leader_acquisitions", "How many times this replica acquired the lease."
)


@dataclass(frozen=True)
class LeaderSettings:
    """The Lease and its timing (client-go's defaults scaled down: docs/operations.md), and
    where a standing-by replica answers its liveness probe."""

    lease_name: str
    #: Empty: POD_NAMESPACE, else the service account's namespace.
    lease_namespace: str = ""
    #: Empty: the pod name plus a random suffix.
    lease_identity: str = ""
    #: Whole seconds: the Lease's leaseDurationSeconds is an integer.
    lease_duration_seconds: int = 15
    lease_renew_deadline_seconds: int = 10
    lease_retry_seconds: int = 2
    health_host: str = "0.0.0.0"
    health_port: int = 8080


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


def micro_time(now: float) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def held_by_another(spec: Mapping[str, Any], identity: str, observed_at: float, now: float) -> bool:
    """Whether another holder's lease is still valid: it named a holder, and less than its
    duration has passed since this candidate saw the record change (its own monotonic clock)."""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return False
    return observed_at + float(spec.get("leaseDurationSeconds") or 0) > now


def build_lease_spec(
    previous: Mapping[str, Any], identity: str, duration: int, now: float
) -> dict[str, Any]:
    """The spec this candidate writes to take or renew the lease (client-go's record)."""
    stamp = micro_time(now)
    renewing = previous.get("holderIdentity") == identity and previous.get("acquireTime")
    transitions = int(previous.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration,
        "acquireTime": previous["acquireTime"] if renewing else stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions if renewing or not previous else transitions + 1,
    }


class LeaseElector:
    """One candidate for one Lease (the module docstring says why it is written here)."""

    def __init__(
        self,
        api: RestClient,
        name: str,
        namespace: str,
        identity: str,
        *,
        lease_duration: int,
        renew_deadline: float,
        retry_period: float,
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.observed: dict[str, Any] | None = None
        self.observed_at = 0.0

    def _observe(self, spec: Mapping[str, Any]) -> None:
        if self.observed != spec:
            self.observed = dict(spec)
            self.observed_at = time.monotonic()

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; False when the lease is someone else's or the API did not agree."""
        path = build_path(LEASES, self.namespace, self.name)
        try:
            try:
                lease = await self.api.request("GET", path)
            except ApiError as error:
                if error.status != 404:
                    raise
                lease = None
            now = time.time()
            if lease is None:
                spec = build_lease_spec({}, self.identity, self.lease_duration, now)
                body = self._lease(spec)
                await self.api.request("POST", build_path(LEASES, self.namespace), body=body)
            else:
                old = lease.get("spec") or {}
                self._observe(old)
                if held_by_another(old, self.identity, self.observed_at, time.monotonic()):
                    return False
                spec = build_lease_spec(old, self.identity, self.lease_duration, now)
                version = (lease.get("metadata") or {}).get("resourceVersion")
                await self.api.request("PUT", path, body=self._lease(spec, version))
        except ApiError as error:  # 409: another candidate wrote first
            log.debug("lease %s/%s: HTTP %s", self.namespace, self.name, error.status)
            return False
        except NETWORK_ERRORS as error:
            log.warning("lease %s/%s not acquired or renewed: %r", self.namespace, self.name, error)
            return False
        self._observe(spec)
        return True

    def _lease(self, spec: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version:
            meta["resourceVersion"] = version
        return {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": meta,
            "spec": dict(spec),
        }

    async def _attempt(self, timeout: float) -> bool:
        """An attempt bounded by ``timeout`` (a hanging API server is a failed attempt)."""
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), max(timeout, 0.1))
        except TimeoutError:
            log.warning("lease %s/%s: no answer in %.1f s", self.namespace, self.name, timeout)
            return False

    async def acquire(self) -> None:
        """Return once this candidate holds the lease."""
        while not await self._attempt(self.renew_deadline):
            await asyncio.sleep(self.retry_period)

    async def renew_until_lost(self) -> None:
        """Renew every ``retry_period``; return when no renewal succeeded for ``renew_deadline``."""
        while True:
            deadline = time.monotonic() + self.renew_deadline
            while not await self._attempt(deadline - time.monotonic()):
                if time.monotonic() + self.retry_period >= deadline:
                    return
                await asyncio.sleep(self.retry_period)
            await asyncio.sleep(self.retry_period)

    async def run(
        self, lead: Callable[[], Coroutine[Any, Any, None]], lost: Callable[[], Awaitable[None]]
    ) -> None:
        """Stand by, lead while the lease is held (``lead`` runs as a task), return when lost."""
        await self.acquire()
        leading: asyncio.Task[None] = asyncio.create_task(lead(), name="leading")
        try:
            await self.renew_until_lost()
        finally:
            leading.cancel()
        await lost()

    async def release(self) -> None:
        """Clear the holder if it is still us, so a standby takes over without waiting."""
        path = build_path(LEASES, self.namespace, self.name)
        try:
            lease = await self.api.request("GET", path)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(
                holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time(time.time())
            )
            version = (lease.get("metadata") or {}).get("resourceVersion")
            await self.api.request("PUT", path, body=self._lease(spec, version))
            log.info("released lease %s/%s", self.namespace, self.name)
        except (ApiError, *NETWORK_ERRORS) as error:
            log.warning("lease %s/%s not released: %r", self.namespace, self.name, error)


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
        self, lock: LeaseElector, stop: asyncio.Event, work: Callable[[], Awaitable[int]]
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

    async def run(self, settings: LeaderSettings) -> None:
        self.health = await _standby_health(settings.health_host, settings.health_port)
        elector = asyncio.create_task(self.lock.run(self.lead, self.lost), name="leader election")
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


async def run_as_leader(settings: LeaderSettings, work: Callable[[], Awaitable[int]]) -> int:
    """Stand by until this replica holds the lease, run ``work`` while it does, repeat.

    ``work`` is the kopf supervisor: it returns when a signal stopped kopf (the process then
    releases the lease and ends) and is cancelled when the lease is lost (the replica goes back
    to standing by, in the same process: an API server restart must not restart the operator).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    api = await RestClient.connect()
    lock = LeaseElector(
        api,
        settings.lease_name,
        settings.lease_namespace or default_namespace(),
        settings.lease_identity or default_identity(),
        lease_duration=settings.lease_duration_seconds,
        renew_deadline=settings.lease_renew_deadline_seconds,
        retry_period=settings.lease_retry_seconds,
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
