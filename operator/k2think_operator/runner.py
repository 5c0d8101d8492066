"""Start the operator process: logging, metrics endpoint, then kopf's event loop."""

from __future__ import annotations

import asyncio
import logging

import kopf
from prometheus_client import start_http_server

from k2think_operator.config import OperatorConfig, set_config

log = logging.getLogger(__name__)


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
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=config.all_namespaces,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness_endpoint,
        )
    )
    return 0
