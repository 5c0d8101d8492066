"""Prometheus metrics of the operator process (served by ``run`` on ``/metrics``).

The per-deployment gauges are what the Grafana dashboard and the alert rules read for the
fleet view (docs/observability.md): Ray and vLLM export the serving metrics, but only the
operator knows the plan (pool, GPUs per replica), the conditions and the Serve application
status KubeRay reports, so it exports them here. Every gauge is labelled ``namespace`` and
``name`` (the K2ThinkDeployment), the same labels the PodMonitor gives Ray's metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from k2think_operator.planner import Plan
from k2think_operator.reasons import CONDITION_TYPES
from k2think_operator.status import PodSummary

#: Ray Serve's ApplicationStatus values (``ray.serve.schema.ApplicationStatus``, Ray 2.60),
#: each exported as its own 0/1 series so that alerts and panels always find a series.
SERVE_APPLICATION_STATUSES = (
    "NOT_STARTED",
    "DEPLOYING",
    "RUNNING",
    "DEPLOY_FAILED",
    "DELETING",
    "UNHEALTHY",
)

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


REPLICAS = Gauge(
    "k2think_replicas",
    "Replicas whose worker pods exist (status.replicas), in model replicas.",
    ["namespace", "name"],
)
CONDITION = Gauge(
    "k2think_deployment_condition",
    "1 when the condition of this type is True on the K2ThinkDeployment, else 0 "
    "(Ready, Progressing, Degraded, InvalidSpec, CapacityBlocked).",
    ["namespace", "name", "type"],
)
APPLICATION_STATUS = Gauge(
    "k2think_serve_application_status",
    "1 for the Serve application status KubeRay reports for this deployment, 0 for the others.",
    ["namespace", "name", "status"],
)
INFO = Gauge(
    "k2think_deployment_info",
    "Always 1; the plan's model, primary pool, GPU type and parallelism as labels (join on "
    "namespace and name).",
    ["namespace", "name", "model", "pool", "gpu_type", "tensor_parallel", "pipeline_parallel"],
)
POOL_GPUS = Gauge(
    "k2think_pool_gpus_in_use",
    "GPUs requested by this deployment's worker pods that the scheduler has bound to a node, "
    "per pool.",
    ["namespace", "name", "pool"],
)
POOL_PENDING_GPUS = Gauge(
    "k2think_pool_gpus_pending",
    "GPUs requested by this deployment's worker pods not yet bound to a node, per pool.",
    ["namespace", "name", "pool"],
)

#: Label values last exported per deployment for the gauges whose extra labels can change
#: (the plan's pool, pools that left the plan), so stale series are removed, not left at 1.
_INFO_LABELS: dict[tuple[str, str], tuple[str, ...]] = {}
_POOLS: dict[tuple[str, str], tuple[str, ...]] = {}


def condition_values(status: Mapping[str, Any]) -> dict[str, int]:
    """1/0 per condition type we own (absent counts as not True)."""
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    return {kind: int(kind in true) for kind in CONDITION_TYPES}


def application_status_values(status: Mapping[str, Any]) -> dict[str, int]:
    """One-hot of ``status.applicationStatus`` over Serve's statuses (all 0 when unknown)."""
    current = status.get("applicationStatus")
    return {s: int(s == current) for s in SERVE_APPLICATION_STATUSES}


def pool_gpus(plan: Plan, pods: Iterable[PodSummary]) -> dict[str, tuple[int, int]]:
    """(bound, pending) GPUs per planned pool, from the worker pods that are not finished.

    A pod holds its GPUs from the moment the scheduler binds it (``node`` set), whether or not
    its containers run yet; that is what the pool has lost for other workloads.
    """
    per_pod = {p.name: p.gpus_per_worker_pod for p in plan.pools}
    out = {p.name: (0, 0) for p in plan.pools}
    for pod in pods:
        if pod.component != "ray-worker" or pod.pool not in per_pod:
            continue
        if pod.phase in ("Succeeded", "Failed"):
            continue
        bound, pending = out[pod.pool]
        if pod.node:
            bound += per_pod[pod.pool]
        else:
            pending += per_pod[pod.pool]
        out[pod.pool] = (bound, pending)
    return out


def observe_deployment(
    namespace: str,
    name: str,
    plan: Plan | None,
    status: Mapping[str, Any],
    pods: Iterable[PodSummary] = (),
) -> None:
    key = (namespace, name)
    # Exported at 0 before the first error: `increase()` (the K2ThinkReconcileErrors alert)
    # cannot see a counter's first increment from "absent", and the dashboard's error rate
    # should read 0, not "no data".
    RECONCILE_ERRORS.labels(namespace, name)
    READY_REPLICAS.labels(namespace, name).set(int(status.get("readyReplicas") or 0))
    REPLICAS.labels(namespace, name).set(int(status.get("replicas") or 0))
    for kind, value in condition_values(status).items():
        CONDITION.labels(namespace, name, kind).set(value)
    for app_status, value in application_status_values(status).items():
        APPLICATION_STATUS.labels(namespace, name, app_status).set(value)
    if plan is None:
        return
    DESIRED_REPLICAS.labels(namespace, name).set(plan.min_replicas)
    MAX_REPLICAS.labels(namespace, name).set(plan.max_replicas)
    PLANNED_GPUS.labels(namespace, name).set(plan.gpus_per_replica * plan.min_replicas)
    GPUS_PER_REPLICA.labels(namespace, name).set(plan.gpus_per_replica)
    info = (
        plan.model,
        plan.primary.name,
        plan.primary.gpu_type,
        str(plan.tensor_parallel),
        str(plan.pipeline_parallel),
    )
    previous = _INFO_LABELS.get(key)
    if previous is not None and previous != info:
        with contextlib.suppress(KeyError):
            INFO.remove(namespace, name, *previous)
    INFO.labels(namespace, name, *info).set(1)
    _INFO_LABELS[key] = info
    gpus = pool_gpus(plan, pods)
    for pool in set(_POOLS.get(key, ())) - set(gpus):
        for metric in (POOL_GPUS, POOL_PENDING_GPUS):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name, pool)
    for pool, (bound, pending) in gpus.items():
        POOL_GPUS.labels(namespace, name, pool).set(bound)
        POOL_PENDING_GPUS.labels(namespace, name, pool).set(pending)
    _POOLS[key] = tuple(sorted(gpus))


def forget_deployment(namespace: str, name: str) -> None:
    for metric in (
        RECONCILE_TOTAL,
        RECONCILE_ERRORS,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        READY_REPLICAS,
        REPLICAS,
        PLANNED_GPUS,
        GPUS_PER_REPLICA,
    ):
        with contextlib.suppress(KeyError):
            metric.remove(namespace, name)
    for kind in CONDITION_TYPES:
        with contextlib.suppress(KeyError):
            CONDITION.remove(namespace, name, kind)
    for app_status in SERVE_APPLICATION_STATUSES:
        with contextlib.suppress(KeyError):
            APPLICATION_STATUS.remove(namespace, name, app_status)
    info = _INFO_LABELS.pop((namespace, name), None)
    if info is not None:
        with contextlib.suppress(KeyError):
            INFO.remove(namespace, name, *info)
    for pool in _POOLS.pop((namespace, name), ()):
        for metric in (POOL_GPUS, POOL_PENDING_GPUS):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name, pool)


KOPF_RESTARTS = Counter(
    "k2think_kopf_restarts_total",
    "Times the supervisor restarted kopf's loop in-process (failed, dead watcher, rescan).",
    ["reason"],
)
