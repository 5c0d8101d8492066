"""Start the operator process: logging, metrics endpoint, then kopf's event loop.

kopf can stop in two bad ways when an API it watches goes away and comes back — KubeRay's
CRDs removed and reinstalled while we run:

* it raises out of ``kopf.operator()`` (a root task failed);
* one watcher fails (for instance a 404 when it lists RayServices in the moment between the
  CRD reappearing in discovery and its endpoint serving) and kopf only *logs* it: the dead
  watcher is never respawned, and because our RayService index never finishes its listing,
  kopf holds back every other handler too — the operator looks alive and does nothing
  (nolar/kopf#1077).

A missing KubeRay must be a condition and a retry, not an exit or a hang, so kopf runs under a
small supervisor here: a failed kopf, or a kopf that logged a dead watcher, is stopped and
started again in-process after a backoff. Everything it re-lists is reconciled idempotently
(resume handlers; no write when nothing differs), so a restart costs reads, not churn.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import kopf
from prometheus_client import start_http_server

from k2think_operator import metrics
from k2think_operator.config import OperatorConfig, set_config

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# A run this long counts as healthy: the next failure starts the backoff from the beginning.
HEALTHY_RUN_SECONDS = 300.0


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


def is_dead_watcher_record(record: logging.LogRecord) -> bool:
    """True for kopf's log line about a watcher task that died and will not be respawned.

    kopf's task guard logs ``"<Task name> has failed: <error>"`` (ERROR) or ``"<Task name> has
    finished unexpectedly."`` (WARNING); watcher tasks are named ``"watcher for <resource>@<ns>"``.
    Cancelled watchers (a CRD removed, a namespace gone, shutdown) log nothing at these levels.
    """
    if not record.name.startswith("kopf.") or record.levelno < logging.WARNING:
        return False
    message = record.getMessage()
    return message.startswith("Watcher for ") and (
        " has failed" in message or " has finished unexpectedly" in message
    )


class DeadWatcherAlarm(logging.Handler):
    """Turn kopf's "watcher died" log line into a restart request for the supervisor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, restart: asyncio.Event) -> None:
        super().__init__(level=logging.WARNING)
        self.loop = loop
        self.restart = restart
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not is_dead_watcher_record(record):
            return
        if self.reason is None:
            self.reason = record.getMessage().split(":", 1)[0]
        self.loop.call_soon_threadsafe(self.restart.set)


async def _stop_when(restart: asyncio.Event, stop_flag: asyncio.Event) -> None:
    await restart.wait()
    stop_flag.set()


async def supervise(config: OperatorConfig) -> int:
    """Run kopf until it stops because of a signal, restarting it when it fails or hangs.

    kopf returns normally on SIGTERM/SIGINT (it installs its own handlers) and raises when a
    root task failed; a dead watcher makes us stop it through its ``stop_flag``. Only a signal
    ends the process. Between attempts our own signal handlers are in place, so a signal during
    the backoff still stops the process promptly. The backoff resets after a healthy run.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    kopf_logger = logging.getLogger("kopf")
    attempt = 0
    while True:
        restart = asyncio.Event()
        kopf_stop = asyncio.Event()
        alarm = DeadWatcherAlarm(loop, restart)
        kopf_logger.addHandler(alarm)
        relay = asyncio.create_task(_stop_when(restart, kopf_stop))
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
            if not restart.is_set():
                return 0
            reason = "dead-watcher"
            log.warning("kopf stopped after a dead watcher (%s)", alarm.reason)
        except Exception:
            reason = "failed"
            log.exception("kopf stopped with an error")
        finally:
            relay.cancel()
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
