"""Prometheus metrics of the operator process that any controller shares (served by ``run`` on
``/metrics``): reconciles, their errors and duration, API writes, kopf restarts.

Per-object counters are labelled ``namespace`` and ``name``; the deployment's own gauges live in
``deployment/metrics.py``.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Histogram

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


def forget_object(namespace: str, name: str) -> None:
    """Drop the per-object counters of an object that is gone."""
    for metric in (RECONCILE_TOTAL, RECONCILE_ERRORS):
        with contextlib.suppress(KeyError):
            metric.remove(namespace, name)


KOPF_RESTARTS = Counter(
    "k2think_kopf_restarts_total",
    "Times the supervisor restarted kopf's loop in-process (failed, dead watcher, rescan).",
    ["reason"],
)
