"""Start the operator process: logging, metrics endpoint, then kopf's event loop.

kopf stops the whole operator when a watch fails in a way it considers unrecoverable — for
instance a 404 from the RayService watch when KubeRay's CRDs are removed while it runs. A
missing KubeRay must be a condition and a retry, not an exit, so kopf runs under a small
supervisor here: unless a signal asked us to stop, a stopped kopf is started again after a
backoff, and the next reconcile reports ``KubeRayMissing`` until the CRDs are back.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import kopf
from prometheus_client import start_http_server

from k2think_operator.config import OperatorConfig, set_config

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


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


async def supervise(config: OperatorConfig) -> int:
    """Run kopf until it stops normally (a signal), restarting it when it fails.

    kopf returns normally on SIGTERM/SIGINT (it installs its own handlers) and raises when a
    root task failed; only the latter is restarted. Between attempts our own handlers are in
    place, so a signal during the backoff still stops the process promptly.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        try:
            await kopf.operator(
                standalone=True,
                clusterwide=config.all_namespaces,
                namespaces=list(config.namespaces),
                liveness_endpoint=config.liveness_endpoint,
                stop_flag=stop,
            )
            return 0
        except Exception:
            log.exception("kopf stopped with an error")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        delay = RESTART_BACKOFF_SECONDS[min(attempt, len(RESTART_BACKOFF_SECONDS) - 1)]
        attempt += 1
        log.warning("restarting kopf in %.0f s", delay)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
            return 0
        except TimeoutError:
            continue
