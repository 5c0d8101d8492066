"""Prometheus metrics of the operator process (served by ``run`` on ``/metrics``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from k2think_operator.planner import Plan

RECONCILE_TOTAL = Counter(
    "k2think_reconcile_total", "Reconciles run, per deployment.", ["namespace", "name"]
)
RECONCILE_ERRORS = Counter(
    "k2think_reconcile_errors_total",
    "Reconciles that raised or must be retried, per deployment.",
    ["namespace", "name"],
)
RECONCILE_SECONDS = Histogram(
    "k2think_reconcile_duration_seconds",
    "Wall time of one reconcile.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_WRITES = Counter(
    "k2think_api_writes_total", "Writes the operator made to the API server.", ["kind"]
)
DESIRED_REPLICAS = Gauge(
    "k2think_desired_replicas",
    "Replica floor the plan asks for (fixed count, or autoscaling minimum).",
    ["namespace", "name"],
)
MAX_REPLICAS = Gauge("k2think_max_replicas", "Replica ceiling of the plan.", ["namespace", "name"])
READY_REPLICAS = Gauge(
    "k2think_ready_replicas",
    "Replicas whose worker pods are ready while serving.",
    ["namespace", "name"],
)
PLANNED_GPUS = Gauge(
    "k2think_planned_gpus",
    "GPUs the plan needs at its replica floor (GPUs per replica times minimum replicas).",
    ["namespace", "name"],
)
GPUS_PER_REPLICA = Gauge(
    "k2think_gpus_per_replica", "Tensor x pipeline degree of the plan.", ["namespace", "name"]
)


def observe_deployment(
    namespace: str, name: str, plan: Plan | None, status: Mapping[str, Any]
) -> None:
    READY_REPLICAS.labels(namespace, name).set(int(status.get("readyReplicas") or 0))
    if plan is None:
        return
    DESIRED_REPLICAS.labels(namespace, name).set(plan.min_replicas)
    MAX_REPLICAS.labels(namespace, name).set(plan.max_replicas)
    PLANNED_GPUS.labels(namespace, name).set(plan.gpus_per_replica * plan.min_replicas)
    GPUS_PER_REPLICA.labels(namespace, name).set(plan.gpus_per_replica)


def forget_deployment(namespace: str, name: str) -> None:
    for metric in (
        RECONCILE_TOTAL,
        RECONCILE_ERRORS,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        READY_REPLICAS,
        PLANNED_GPUS,
        GPUS_PER_REPLICA,
    ):
        with contextlib.suppress(KeyError):
            metric.remove(namespace, name)


KOPF_RESTARTS = Counter(
    "k2think_kopf_restarts_total",
    "Times the supervisor restarted kopf's loop in-process (failed, dead watcher, rescan).",
    ["reason"],
)
