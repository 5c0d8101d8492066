"""Start the operator process: logging, metrics endpoint, then kopf's event loop.

kopf can be left in three bad states when an API it watches goes away and comes back (KubeRay's
CRDs removed and reinstalled while we run, or installed after us):

* it raises out of ``kopf.operator()`` (a root task failed);
* one watcher fails (for instance a 404 when it lists RayServices in the moment between the
  CRD reappearing in discovery and its endpoint serving) and kopf only *logs* it: the dead
  watcher is never respawned, and because our RayService index never finishes its listing,
  kopf holds back every other handler too — the operator looks alive and does nothing
  (nolar/kopf#1077);
* it rescans discovery on each CRD event, and when the last scan of a burst of events (four
  KubeRay CRDs arriving) ran before discovery listed ``rayservices``, kopf logs "Unresolved
  resources cannot be served" and never watches RayServices again: no status from KubeRay, no
  drift repair.

A missing KubeRay must be a condition and a retry, not an exit or a hang, so kopf runs under a
small supervisor here. A failed kopf, or one that logged a dead watcher, is stopped and started
again in-process after a backoff. When kopf says one of our APIs is unresolved, the supervisor
polls discovery for it and restarts kopf once it is served, so the fresh start's scan finds it.
Everything kopf re-lists is reconciled idempotently (resume handlers; no write when nothing
differs), so a restart costs reads, not churn.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import kopf
from prometheus_client import start_http_server

from k2think_operator import metrics
from k2think_operator.apis import WATCHED
from k2think_operator.config import OperatorConfig, set_config
from k2think_operator.kube import Kube, KubeError

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# A run this long counts as healthy: the next failure starts the backoff from the beginning.
HEALTHY_RUN_SECONDS = 300.0
# How often discovery is polled for an API kopf reported unresolved.
DISCOVERY_POLL_SECONDS = 5.0

#: (group, version, plural) of the custom resources our handlers watch.
WATCHED_APIS: tuple[tuple[str, str, str], ...] = tuple(api.gvp for api in WATCHED)


def run_operator(config: OperatorConfig) -> int:
    set_config(config)
    kopf.configure(
        verbose=config.verbose,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    # Importing registers the handlers with kopf's default registry.
    from k2think_operator import handlers  # noqa: F401

    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.health_host)
    log.info(
        "k2think-operator watching %s",
        "all namespaces" if config.all_namespaces else ", ".join(config.namespaces),
    )
    return asyncio.run(supervise(config))


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


def unresolved_apis(record: logging.LogRecord) -> tuple[tuple[str, str, str], ...]:
    """Which of our APIs kopf's "Unresolved resources cannot be served" line names.

    kopf logs it after each discovery scan for every handler selector the scan did not resolve,
    as ``Selector(group='ray.io', version='v1', any_name='rayservices')``.
    """
    message = _kopf_warning(record)
    if not message.startswith("Unresolved resources cannot be served"):
        return ()
    return tuple(
        api
        for api in WATCHED_APIS
        if f"group='{api[0]}', version='{api[1]}', any_name='{api[2]}'" in message
    )


class KopfAlarm(logging.Handler):
    """Reads kopf's log for the states it does not recover from by itself (module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, kopf_stop: asyncio.Event) -> None:
        super().__init__(level=logging.WARNING)
        self.loop = loop
        self.kopf_stop = kopf_stop
        #: Why a restart was asked for: (metric label, text for the log); the first cause wins.
        self.cause: tuple[str, str] | None = None
        self.unresolved: set[tuple[str, str, str]] = set()
        self.unresolved_seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if is_dead_watcher_record(record):
            self.ask_restart("dead-watcher", record.getMessage().split(":", 1)[0])
            return
        apis = unresolved_apis(record)
        if apis:
            self.unresolved.update(apis)
            self.loop.call_soon_threadsafe(self.unresolved_seen.set)

    def ask_restart(self, label: str, text: str) -> None:
        if self.cause is None:
            self.cause = (label, text)
        self.loop.call_soon_threadsafe(self.kopf_stop.set)


async def connect_kube() -> Kube:
    return await Kube.connect()


async def _restart_once_served(alarm: KopfAlarm) -> None:
    """Poll discovery for the APIs kopf gave up on; restart kopf when one is served."""
    await alarm.unresolved_seen.wait()
    try:
        kube = await connect_kube()
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


async def supervise(config: OperatorConfig) -> int:
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
        alarm = KopfAlarm(loop, kopf_stop)
        kopf_logger.addHandler(alarm)
        poller = asyncio.create_task(_restart_once_served(alarm))
        started = loop.time()
        reason: str
        try:
            await kopf.operator(
                standalone=True,
                clusterwide=config.all_namespaces,
                namespaces=list(config.namespaces),
                liveness_endpoint=config.liveness_endpoint,
                stop_flag=kopf_stop,
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
