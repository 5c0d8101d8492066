"""kopf under a supervisor that restarts it when it cannot recover by itself.

kopf can be left in three bad states when an API it watches goes away and comes back (a CRD
removed and reinstalled while we run, or installed after us):

* it raises out of ``kopf.operator()`` (a root task failed);
* one watcher fails (for instance a 404 when it lists a resource in the moment between the CRD
  reappearing in discovery and its endpoint serving) and kopf only *logs* it: the dead watcher is
  never respawned, and because an index never finishes its listing, kopf holds back every other
  handler too — the operator looks alive and does nothing (nolar/kopf#1077);
* it rescans discovery on each CRD event, and when the last scan of a burst of events (four
  CRDs arriving) ran before discovery listed a resource, kopf logs "Unresolved resources cannot
  be served" and never watches it again.

A missing API must be a condition and a retry, not an exit or a hang, so kopf runs under this
supervisor. A failed kopf, or one that logged a dead watcher, is stopped and started again
in-process after a backoff. When kopf says one of the watched APIs is unresolved, the supervisor
polls discovery for it and restarts kopf once it is served, so the fresh start's scan finds it.
Everything kopf re-lists is reconciled idempotently, so a restart costs reads, not churn.

kopf offers no hook for a watcher that died or a selector it gave up on; its log lines are the
only signal. They are read here by their wording, and ``tests/test_runner.py`` makes the real
kopf produce each of them (its task guard, its discovery code), so a kopf release that changes
the wording fails those tests instead of silently disabling the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import kopf

from k2think_operator.runtime import metrics
from k2think_operator.runtime.kube import Kube, KubeError

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# A run this long counts as healthy: the next failure starts the backoff from the beginning.
HEALTHY_RUN_SECONDS = 300.0
# How often discovery is polled for an API kopf reported unresolved.
DISCOVERY_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class SupervisorSettings:
    """How kopf runs: its scope, its liveness endpoint, and the APIs whose watches matter."""

    all_namespaces: bool
    namespaces: tuple[str, ...]
    liveness_endpoint: str
    #: (group, version, plural) of the custom resources the handlers watch.
    watched: tuple[tuple[str, str, str], ...]
    #: A client for discovery polls (the operator's credentials).
    connect: Callable[[], Awaitable[Kube]]


def _kopf_warning(record: logging.LogRecord) -> str:
    """The message of a kopf warning or error; empty for anything else."""
    if not record.name.startswith("kopf.") or record.levelno < logging.WARNING:
        return ""
    return record.getMessage()


def is_dead_watcher_record(record: logging.LogRecord) -> bool:
    """True for kopf's log line about a watcher task that died and will not be respawned.

    kopf's task guard logs ``"<Task name> has failed: <error>"`` (ERROR) or ``"<Task name> has
    finished unexpectedly."`` (WARNING); watcher tasks are named ``"watcher for <resource>@<ns>"``.
    Cancelled watchers (a CRD removed, a namespace gone, shutdown) log nothing at these levels.
    """
    message = _kopf_warning(record)
    return message.startswith("Watcher for ") and (
        " has failed" in message or " has finished unexpectedly" in message
    )


def unresolved_apis(
    record: logging.LogRecord, watched: tuple[tuple[str, str, str], ...]
) -> tuple[tuple[str, str, str], ...]:
    """Which of our APIs kopf's "Unresolved resources cannot be served" line names.

    kopf logs it after each discovery scan for every handler selector the scan did not resolve,
    as ``Selector(group='ray.io', version='v1', any_name='rayservices')``.
    """
    message = _kopf_warning(record)
    if not message.startswith("Unresolved resources cannot be served"):
        return ()
    return tuple(
        api
        for api in watched
        if f"group='{api[0]}', version='{api[1]}', any_name='{api[2]}'" in message
    )


class KopfAlarm(logging.Handler):
    """Reads kopf's log for the states it does not recover from by itself (module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        kopf_stop: asyncio.Event,
        watched: tuple[tuple[str, str, str], ...],
    ) -> None:
        super().__init__(level=logging.WARNING)
        self.loop = loop
        self.watched = watched
        self.kopf_stop = kopf_stop
        #: Why a restart was asked for: (metric label, text for the log); the first cause wins.
        self.cause: tuple[str, str] | None = None
        self.unresolved: set[tuple[str, str, str]] = set()
        self.unresolved_seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if is_dead_watcher_record(record):
            self.ask_restart("dead-watcher", record.getMessage().split(":", 1)[0])
            return
        apis = unresolved_apis(record, self.watched)
        if apis:
            self.unresolved.update(apis)
            self.loop.call_soon_threadsafe(self.unresolved_seen.set)

    def ask_restart(self, label: str, text: str) -> None:
        if self.cause is None:
            self.cause = (label, text)
        self.loop.call_soon_threadsafe(self.kopf_stop.set)


async def _restart_once_served(alarm: KopfAlarm, connect: Callable[[], Awaitable[Kube]]) -> None:
    """Poll discovery for the APIs kopf gave up on; restart kopf when one is served."""
    await alarm.unresolved_seen.wait()
    try:
        kube = await connect()
    except Exception:
        log.exception("cannot poll discovery; a KubeRay installed later needs an operator restart")
        return
    try:
        while True:
            for group, version, plural in sorted(alarm.unresolved):
                try:
                    served = await kube.api_served(group, version, plural)
                except KubeError as error:
                    log.debug("discovery of %s.%s: %s", plural, group, error)
                    continue
                if served:
                    alarm.ask_restart(
                        "rescan", f"{plural}.{group} is served and kopf gave up on it"
                    )
                    return
            await asyncio.sleep(DISCOVERY_POLL_SECONDS)
    finally:
        await kube.close()


def kopf_identity() -> str:
    """kopf's identity of this process, given to it rather than left to kopf.

    kopf derives it from the login name (``getpass.getuser``, ``peering.detect_own_id``), which
    raises for a uid without a passwd entry: the image runs as 65532, which has none, so kopf
    would fail at every start in a pod without ``USER``/``LOGNAME``/``POD_ID`` (caught when the
    chart ran the image, ``e2e/userpath``). The pod name (``POD_ID`` as kopf reads it, else the
    chart's ``POD_NAME``, else the host name, which is the pod name in a pod) and the pid say
    the same without a user database."""
    base = os.environ.get("POD_ID") or os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}/{os.getpid()}"


async def supervise(config: SupervisorSettings) -> int:
    """Run kopf until it stops because of a signal, restarting it when it fails or hangs.

    kopf returns normally on SIGTERM/SIGINT (it installs its own handlers) and raises when a
    root task failed; a dead watcher, or an API it gave up on being served, makes us stop it
    through its ``stop_flag``. Only a signal ends the process. Between attempts our own signal
    handlers are in place, so a signal during the backoff still stops the process promptly. The
    backoff resets after a healthy run.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    kopf_logger = logging.getLogger("kopf")
    attempt = 0
    while True:
        kopf_stop = asyncio.Event()  # set only by the alarm: a signal stops kopf by itself
        alarm = KopfAlarm(loop, kopf_stop, config.watched)
        kopf_logger.addHandler(alarm)
        poller = asyncio.create_task(_restart_once_served(alarm, config.connect))
        started = loop.time()
        reason: str
        try:
            await kopf.operator(
                standalone=True,
                clusterwide=config.all_namespaces,
                namespaces=list(config.namespaces),
                liveness_endpoint=config.liveness_endpoint,
                stop_flag=kopf_stop,
                # kopf's Identity is a NewType of str in a private module.
                identity=cast(Any, kopf_identity()),
            )
            if alarm.cause is None:
                return 0
            reason, text = alarm.cause
            log.warning("kopf stopped for a restart: %s", text)
        except Exception:
            reason = "failed"
            log.exception("kopf stopped with an error")
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            kopf_logger.removeHandler(alarm)
        metrics.KOPF_RESTARTS.labels(reason).inc()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if loop.time() - started > HEALTHY_RUN_SECONDS:
            attempt = 0
        delay = RESTART_BACKOFF_SECONDS[min(attempt, len(RESTART_BACKOFF_SECONDS) - 1)]
        attempt += 1
        log.warning("restarting kopf in %.0f s", delay)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
            return 0
        except TimeoutError:
            continue
