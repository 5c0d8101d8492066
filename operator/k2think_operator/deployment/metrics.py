"""The K2ThinkDeployment's own Prometheus series (served by ``run`` on ``/metrics``).

The per-deployment gauges are what the Grafana dashboard and the alert rules read for the
fleet view (docs/observability.md): Ray and vLLM export the serving metrics, but only the
operator knows the plan (pool, GPUs per replica), the conditions and the Serve application
status KubeRay reports, so it exports them here. Every gauge is labelled ``namespace`` and
``name`` (the K2ThinkDeployment), the same labels the PodMonitor gives Ray's metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from k2think_operator.api.reasons import CONDITION_TYPES
from k2think_operator.deployment.status import PodSummary
from k2think_operator.plan.planner import Plan
from k2think_operator.runtime.metrics import RECONCILE_ERRORS, forget_object

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

#: (name, help, extra label names) of every per-deployment gauge, all labelled namespace, name.
GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "k2think_desired_replicas",
        "Replica floor the plan asks for (fixed count, or autoscaling minimum).",
        (),
    ),
    ("k2think_max_replicas", "Replica ceiling of the plan.", ()),
    ("k2think_ready_replicas", "Replicas whose worker pods are ready while serving.", ()),
    (
        "k2think_planned_gpus",
        "GPUs the plan needs at its replica floor (GPUs per replica times minimum replicas).",
        (),
    ),
    ("k2think_gpus_per_replica", "Tensor x pipeline degree of the plan.", ()),
    (
        "k2think_replicas",
        "Replicas whose worker pods exist (status.replicas), in model replicas.",
        (),
    ),
    (
        "k2think_deployment_condition",
        "1 when the condition of this type is True on the K2ThinkDeployment, else 0 "
        "(Ready, Progressing, Degraded, InvalidSpec, CapacityBlocked).",
        ("type",),
    ),
    (
        "k2think_serve_application_status",
        "1 for the Serve application status KubeRay reports for this deployment, 0 for the others.",
        ("status",),
    ),
    (
        "k2think_deployment_info",
        "Always 1; the plan's model, primary pool, GPU type and parallelism as labels (join on "
        "namespace and name).",
        ("model", "pool", "gpu_type", "tensor_parallel", "pipeline_parallel"),
    ),
    (
        "k2think_pool_gpus_in_use",
        "GPUs requested by this deployment's worker pods that the scheduler has bound to a node, "
        "per pool.",
        ("pool",),
    ),
    (
        "k2think_pool_gpus_pending",
        "GPUs requested by this deployment's worker pods not yet bound to a node, per pool.",
        ("pool",),
    ),
)


@dataclass(slots=True)
class DeploymentSeries:
    """What one deployment exports, as plain values (``DeploymentCollector`` turns them into
    series at scrape time)."""

    ready_replicas: int = 0
    replicas: int = 0
    #: One 0/1 per ``CONDITION_TYPES``.
    conditions: tuple[int, ...] = ()
    #: One 0/1 per ``SERVE_APPLICATION_STATUSES``.
    application_statuses: tuple[int, ...] = ()
    #: The plan's figures; None until a valid plan was seen (an invalid spec keeps the last).
    desired_replicas: int | None = None
    max_replicas: int | None = None
    planned_gpus: int | None = None
    gpus_per_replica: int | None = None
    info: tuple[str, ...] | None = None
    #: (pool, bound GPUs, pending GPUs) per planned pool.
    pools: tuple[tuple[str, int, int], ...] = ()


#: Every deployment's series, by (namespace, name).
_SERIES: dict[tuple[str, str], DeploymentSeries] = {}


class DeploymentCollector(Collector):
    """Exports the per-deployment gauges from ``_SERIES`` (prometheus_client's custom collector
    API: ``collect`` yields metric families at scrape time).

    Why not one ``Gauge`` child per series: a labelled child is a whole metric object with its
    own lock and value holder, ~0.7 KiB each, and a deployment has ~20 series: 16.5 MiB of the
    operator's memory at 1,000 deployments (docs/benchmarks.md, "Memory"). Here a deployment
    costs one small record; the exposition (names, help, labels, values) is the same.
    """

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            name: GaugeMetricFamily(name, documentation, labels=("namespace", "name", *extra))
            for name, documentation, extra in GAUGES
        }

    def describe(self) -> Iterable[Metric]:
        yield from self._families().values()

    def collect(self) -> Iterable[Metric]:
        families = self._families()

        def add(name: str, labels: Iterable[str], value: float) -> None:
            families[name].add_metric(list(labels), value)

        for (namespace, name), series in list(_SERIES.items()):
            key = (namespace, name)
            add("k2think_ready_replicas", key, series.ready_replicas)
            add("k2think_replicas", key, series.replicas)
            for kind, value in zip(CONDITION_TYPES, series.conditions, strict=True):
                add("k2think_deployment_condition", (*key, kind), value)
            for app_status, value in zip(
                SERVE_APPLICATION_STATUSES, series.application_statuses, strict=True
            ):
                add("k2think_serve_application_status", (*key, app_status), value)
            if series.info is None:
                continue
            add("k2think_desired_replicas", key, series.desired_replicas or 0)
            add("k2think_max_replicas", key, series.max_replicas or 0)
            add("k2think_planned_gpus", key, series.planned_gpus or 0)
            add("k2think_gpus_per_replica", key, series.gpus_per_replica or 0)
            add("k2think_deployment_info", (*key, *series.info), 1)
            for pool, bound, pending in series.pools:
                add("k2think_pool_gpus_in_use", (*key, pool), bound)
                add("k2think_pool_gpus_pending", (*key, pool), pending)
        yield from families.values()


REGISTRY.register(DeploymentCollector())


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
    """Record what this deployment exports (an invalid spec keeps the last plan's figures)."""
    # Exported at 0 before the first error: `increase()` (the K2ThinkReconcileErrors alert)
    # cannot see a counter's first increment from "absent", and the dashboard's error rate
    # should read 0, not "no data".
    RECONCILE_ERRORS.labels(namespace, name)
    series = _SERIES.setdefault((namespace, name), DeploymentSeries())
    series.ready_replicas = int(status.get("readyReplicas") or 0)
    series.replicas = int(status.get("replicas") or 0)
    series.conditions = tuple(condition_values(status).values())
    series.application_statuses = tuple(application_status_values(status).values())
    if plan is None:
        return
    series.desired_replicas = plan.min_replicas
    series.max_replicas = plan.max_replicas
    series.planned_gpus = plan.gpus_per_replica * plan.min_replicas
    series.gpus_per_replica = plan.gpus_per_replica
    series.info = (
        plan.model,
        plan.primary.name,
        plan.primary.gpu_type,
        str(plan.tensor_parallel),
        str(plan.pipeline_parallel),
    )
    series.pools = tuple(
        (pool, bound, pending) for pool, (bound, pending) in sorted(pool_gpus(plan, pods).items())
    )


def forget_deployment(namespace: str, name: str) -> None:
    forget_object(namespace, name)
    _SERIES.pop((namespace, name), None)
