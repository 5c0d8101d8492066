"""Start the operator process: logging, the metrics endpoint, then kopf under its supervisor
(``runtime/supervisor.py``), behind leader election when asked (``runtime/leader.py``)."""

from __future__ import annotations

import asyncio
import logging

import kopf
from prometheus_client import start_http_server

from k2think_operator.api.coordinates import WATCHED
from k2think_operator.app.config import OperatorConfig, set_config
from k2think_operator.render.meta import FIELD_MANAGER
from k2think_operator.runtime.kube import Kube
from k2think_operator.runtime.leader import LeaderSettings, run_as_leader
from k2think_operator.runtime.supervisor import SupervisorSettings, supervise

log = logging.getLogger(__name__)


async def _connect() -> Kube:
    return await Kube.connect(FIELD_MANAGER)


def supervisor_settings(config: OperatorConfig) -> SupervisorSettings:
    return SupervisorSettings(
        all_namespaces=config.all_namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=config.liveness_endpoint,
        watched=tuple(api.gvp for api in WATCHED),
        connect=_connect,
    )


def leader_settings(config: OperatorConfig) -> LeaderSettings:
    return LeaderSettings(
        lease_name=config.lease_name,
        lease_namespace=config.lease_namespace,
        lease_identity=config.lease_identity,
        lease_duration_seconds=config.lease_duration_seconds,
        lease_renew_deadline_seconds=config.lease_renew_deadline_seconds,
        lease_retry_seconds=config.lease_retry_seconds,
        health_host=config.health_host,
        health_port=config.health_port,
    )


def run_operator(config: OperatorConfig) -> int:
    set_config(config)
    kopf.configure(
        verbose=config.verbose,
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
    )
    # Importing registers the handlers with kopf's default registry.
    from k2think_operator.app import registrations  # noqa: F401

    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.health_host)
    log.info(
        "k2think-operator watching %s",
        "all namespaces" if config.all_namespaces else ", ".join(config.namespaces),
    )
    settings = supervisor_settings(config)
    if config.leader_election:
        return asyncio.run(run_as_leader(leader_settings(config), lambda: supervise(settings)))
    return asyncio.run(supervise(settings))
