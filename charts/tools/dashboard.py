"""Generate the K2 Think fleet dashboard (Grafana JSON) with grafana-foundation-sdk.

    python charts/tools/dashboard.py            # write the JSON files
    python charts/tools/dashboard.py --check    # exit 1 when a committed file differs

Dashboard as code with Grafana's own SDK (``grafana-foundation-sdk``, PyPI; grafanalib has had no
release since 2024), so panels are typed builders instead of hand-edited JSON. The output is
committed twice: ``charts/k2think-operator/files/dashboards/`` (the chart's ConfigMap for
Grafana's dashboard sidecar) and ``docs/observability/`` (import by hand). tests/test_dashboard.py
regenerates and compares; the e2e suites evaluate every panel query against a real Prometheus
(e2e/promlab.py), so a query that matches no series fails CI.

Label conventions the queries rely on (docs/observability.md): the operator's gauges carry
``namespace`` and ``name`` (the K2ThinkDeployment); the chart's PodMonitor gives Ray's and vLLM's
series the same two labels plus ``pool`` (worker pods) from the pod labels the operator renders.
vLLM's engine metrics reach Prometheus through Ray's metrics agent (Ray Serve LLM's
``log_engine_metrics``, on by default) as ``ray_vllm_*``: vLLM's ``RayPrometheusMetric``
replaces the ``:`` of ``vllm:...`` with ``_`` and Ray prefixes ``ray_``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import prometheus as prometheus_model
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parent.parent.parent
UID = "k2think-fleet"
FILENAME = f"{UID}.json"
OUTPUTS = (
    ROOT / "charts" / "k2think-operator" / "files" / "dashboards" / FILENAME,
    ROOT / "docs" / "observability" / FILENAME,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Selector of one deployment (or all) as the dashboard variables pick it.
DEPLOYMENT = 'namespace=~"$namespace", name=~"$name"'
#: The same plus the pool, for series that come from worker pods (vLLM engines).
ON_POOL = f'{DEPLOYMENT}, pool=~"$pool"'
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .range()
        .datasource(DATASOURCE)
    )


def series(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str = "short",
    *,
    stacked: bool = False,
    width: int = 12,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + i)))
    return panel


def single(title: str, description: str, expr: str, unit: str = "short") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(6)
        .height(5)
        .graph_mode(common.BigValueGraphMode.AREA)
        .with_target(query(expr, "{{namespace}}/{{name}}"))
    )


def listing(title: str, description: str, expr: str) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(12)
        .height(6)
        .with_target(
            prometheus.Dataquery()
            .expr(expr)
            .ref_id("A")
            .instant()
            .format(prometheus_model.PromQueryFormat.TABLE)
            .datasource(DATASOURCE)
        )
    )


def variable(name: str, label: str, values_of: str, *, pool: bool = False) -> db.QueryVariable:
    source = "k2think_pool_gpus_in_use" if pool else "k2think_deployment_info"
    selector = {
        "namespace": "",
        "name": '{namespace=~"$namespace"}',
        "pool": '{namespace=~"$namespace", name=~"$name"}',
    }[values_of]
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({source}{selector}, {values_of})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def histogram_quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (namespace, name, le) "
            f"(rate({metric}_bucket{{{ON_POOL}}}[{RATE}])))",
            f"p{int(q * 100)} {{{{namespace}}}}/{{{{name}}}}",
        )
        for q in (0.5, 0.99)
    ]


def build() -> dict[str, Any]:
    fleet = [
        series(
            "GPUs in use per pool",
            "GPUs held by K2 Think worker pods the scheduler has bound to a node, per node pool "
            "(k2think_pool_gpus_in_use), and GPUs of worker pods still waiting for a node "
            "(k2think_pool_gpus_pending). Pending GPUs that do not go away mean the pool is full.",
            [
                ("sum by (pool) (k2think_pool_gpus_in_use)", "in use {{pool}}"),
                ("sum by (pool) (k2think_pool_gpus_pending)", "pending {{pool}}"),
            ],
            stacked=True,
        ),
        series(
            "Deployments not Ready",
            "How many K2ThinkDeployments do not have Ready=True, and how many are "
            "CapacityBlocked or have an InvalidSpec (k2think_deployment_condition).",
            [
                ('count(k2think_deployment_condition{type="Ready"} == 0)', "not Ready"),
                ('sum(k2think_deployment_condition{type="CapacityBlocked"})', "CapacityBlocked"),
                ('sum(k2think_deployment_condition{type="InvalidSpec"})', "InvalidSpec"),
            ],
        ),
        listing(
            "Deployments not Ready (now)",
            "Each K2ThinkDeployment whose Ready condition is not True, with its plan "
            "(pool, GPU type, tensor and pipeline parallelism).",
            "k2think_deployment_info and on (namespace, name) "
            '(k2think_deployment_condition{type="Ready"} == 0)',
        ),
        series(
            "Operator reconciles",
            "Reconciles per second the operator runs, and those that failed or must be retried "
            "(k2think_reconcile_total, k2think_reconcile_errors_total).",
            [
                (f"sum(rate(k2think_reconcile_total[{RATE}]))", "reconciles"),
                (f"sum(rate(k2think_reconcile_errors_total[{RATE}]))", "errors"),
            ],
            unit="ops",
        ),
    ]
    per_deployment = [
        series(
            "Replicas: desired, current, ready",
            "The plan's replica floor and ceiling, the replicas whose worker pods exist and "
            "those ready while Serve runs (k2think_desired_replicas, k2think_max_replicas, "
            "k2think_replicas, k2think_ready_replicas).",
            [
                (f"k2think_desired_replicas{{{DEPLOYMENT}}}", "desired {{namespace}}/{{name}}"),
                (f"k2think_max_replicas{{{DEPLOYMENT}}}", "max {{namespace}}/{{name}}"),
                (f"k2think_replicas{{{DEPLOYMENT}}}", "current {{namespace}}/{{name}}"),
                (f"k2think_ready_replicas{{{DEPLOYMENT}}}", "ready {{namespace}}/{{name}}"),
            ],
        ),
        series(
            "Conditions",
            "1 while the condition is True: Ready, CapacityBlocked (worker pods waiting for "
            "GPUs), InvalidSpec, Degraded (k2think_deployment_condition).",
            [
                (
                    f'k2think_deployment_condition{{{DEPLOYMENT}, type=~"Ready|CapacityBlocked|'
                    f'InvalidSpec|Degraded"}}',
                    "{{type}} {{namespace}}/{{name}}",
                )
            ],
        ),
        series(
            "GPUs per pool",
            "GPUs this deployment's worker pods hold on each pool, pending ones, and the "
            "GPUs its replica floor needs (k2think_pool_gpus_in_use, k2think_pool_gpus_pending, "
            "k2think_planned_gpus).",
            [
                (
                    f"k2think_pool_gpus_in_use{{{ON_POOL}}}",
                    "in use {{namespace}}/{{name}} {{pool}}",
                ),
                (
                    f"k2think_pool_gpus_pending{{{ON_POOL}}}",
                    "pending {{namespace}}/{{name}} {{pool}}",
                ),
                (f"k2think_planned_gpus{{{DEPLOYMENT}}}", "floor {{namespace}}/{{name}}"),
            ],
        ),
        series(
            "Serve application status",
            "1 for the status KubeRay reports for the Ray Serve application, 0 for the others "
            "(k2think_serve_application_status): RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY... "
            "All at 0: no status reported yet (no RayService, or KubeRay has not reached Serve).",
            [
                (
                    f"k2think_serve_application_status{{{DEPLOYMENT}}}",
                    "{{status}} {{namespace}}/{{name}}",
                )
            ],
        ),
        series(
            "Requests running and waiting (vLLM)",
            "Requests in the vLLM engines' running batch and those waiting in their queue "
            "(ray_vllm_num_requests_running, ray_vllm_num_requests_waiting), summed per "
            "deployment. Waiting requests that grow mean more replicas are needed.",
            [
                (
                    f"sum by (namespace, name) (ray_vllm_num_requests_running{{{ON_POOL}}})",
                    "running {{namespace}}/{{name}}",
                ),
                (
                    f"sum by (namespace, name) (ray_vllm_num_requests_waiting{{{ON_POOL}}})",
                    "waiting {{namespace}}/{{name}}",
                ),
            ],
        ),
        series(
            "Requests in flight at Serve replicas and queued in Serve",
            "Requests Ray Serve's replicas are processing (ray_serve_replica_processing_queries) "
            "and requests its routers hold because every replica is at max_ongoing_requests "
            "(ray_serve_deployment_queued_queries), per Serve deployment.",
            [
                (
                    f"sum by (namespace, name, deployment) "
                    f"(ray_serve_replica_processing_queries{{{DEPLOYMENT}}})",
                    "in flight {{deployment}}",
                ),
                (
                    f"sum by (namespace, name, deployment) "
                    f"(ray_serve_deployment_queued_queries{{{DEPLOYMENT}}})",
                    "queued {{deployment}}",
                ),
            ],
        ),
        series(
            "Time to first token p50 / p99",
            "vLLM's time-to-first-token histogram (ray_vllm_time_to_first_token_seconds): "
            "queueing plus prefill. Alert K2ThinkTimeToFirstTokenHigh fires above 10 s at p99.",
            histogram_quantiles("ray_vllm_time_to_first_token_seconds"),
            unit="s",
        ),
        series(
            "Inter-token latency p50 / p99",
            "Time between two output tokens of one request (ray_vllm_inter_token_latency_seconds):"
            " the decode speed a streaming user sees.",
            histogram_quantiles("ray_vllm_inter_token_latency_seconds"),
            unit="s",
        ),
        series(
            "Tokens per second in and out",
            "Prompt tokens prefilled and tokens generated per second "
            "(ray_vllm_prompt_tokens_total, ray_vllm_generation_tokens_total).",
            [
                (
                    f"sum by (namespace, name) "
                    f"(rate(ray_vllm_prompt_tokens_total{{{ON_POOL}}}[{RATE}]))",
                    "in {{namespace}}/{{name}}",
                ),
                (
                    f"sum by (namespace, name) "
                    f"(rate(ray_vllm_generation_tokens_total{{{ON_POOL}}}[{RATE}]))",
                    "out {{namespace}}/{{name}}",
                ),
            ],
            unit="short",
        ),
        series(
            "KV-cache usage",
            "Share of each vLLM engine's KV cache in use (ray_vllm_kv_cache_usage_perc), per "
            "replica. Alert K2ThinkKVCacheNearlyFull fires above 95%.",
            [
                (
                    f"max by (namespace, name, pool, ReplicaId) "
                    f"(ray_vllm_kv_cache_usage_perc{{{ON_POOL}}})",
                    "{{namespace}}/{{name}} {{ReplicaId}}",
                )
            ],
            unit="percentunit",
        ),
        series(
            "Preemptions",
            "Preemptions per second (a sequence evicted from the KV cache, to be recomputed) "
            "counted over finished requests (ray_vllm_request_num_preemptions_sum). vLLM's "
            "own counter vllm:num_preemptions is only exported once it is non-zero, so a healthy "
            "fleet would show no series at all. Non-zero means the KV cache is too small.",
            [
                (
                    f"sum by (namespace, name) "
                    f"(rate(ray_vllm_request_num_preemptions_sum{{{ON_POOL}}}[{RATE}]))",
                    "{{namespace}}/{{name}}",
                )
            ],
            unit="ops",
        ),
        single(
            "GPUs in use",
            "GPUs bound to this deployment's worker pods, all pools (k2think_pool_gpus_in_use).",
            f"sum by (namespace, name) (k2think_pool_gpus_in_use{{{ON_POOL}}})",
        ),
        single(
            "GPUs per replica",
            "Tensor x pipeline parallel degree of the plan (k2think_gpus_per_replica).",
            f"k2think_gpus_per_replica{{{DEPLOYMENT}}}",
        ),
    ]
    policy_inputs = [
        series(
            "Serve autoscaler: decision and ongoing requests",
            "The replicas Serve's policy asks for before bounds (ray_serve_autoscaling_desired_"
            "replicas) and the ongoing requests it saw over its look-back window divided by "
            "targetOngoingRequests (ray_serve_autoscaling_total_requests / "
            "ray_serve_autoscaling_target_ongoing_requests): the default policy's whole "
            "decision. Under autoscaling.policy.mode latencyTarget the decision follows the "
            "panels beside this one instead.",
            [
                (
                    f"max by (namespace, name, deployment) "
                    f"(ray_serve_autoscaling_desired_replicas{{{DEPLOYMENT}}})",
                    "decision {{deployment}}",
                ),
                (
                    f"max by (namespace, name, deployment) "
                    f"(ray_serve_autoscaling_total_requests{{{DEPLOYMENT}}}) / max by "
                    f"(namespace, name, deployment) "
                    f"(ray_serve_autoscaling_target_ongoing_requests{{{DEPLOYMENT}}})",
                    "ongoing / target {{deployment}}",
                ),
            ],
        ),
        series(
            "KV-cache usage the latency policy sees",
            "Mean and highest share of the replicas' vLLM KV cache in use "
            "(ray_vllm_kv_cache_usage_perc). The latencyTarget policy adds replicas while the "
            "mean (plus the queued requests' share) is above kvCacheCeiling, and removes one "
            "only when the rest stay scaleInHeadroom under it.",
            [
                (
                    f"avg by (namespace, name) (ray_vllm_kv_cache_usage_perc{{{ON_POOL}}})",
                    "mean {{namespace}}/{{name}}",
                ),
                (
                    f"max by (namespace, name) (ray_vllm_kv_cache_usage_perc{{{ON_POOL}}})",
                    "max {{namespace}}/{{name}}",
                ),
            ],
            unit="percentunit",
        ),
        series(
            "Demand not served yet",
            "Requests waiting in the vLLM engines' queues (ray_vllm_num_requests_waiting) and "
            "in Serve's routers (ray_serve_deployment_queued_queries): the latencyTarget "
            "policy counts each at the KV share of a running request, and never scales in "
            "while any wait.",
            [
                (
                    f"sum by (namespace, name) (ray_vllm_num_requests_waiting{{{ON_POOL}}})",
                    "vLLM queue {{namespace}}/{{name}}",
                ),
                (
                    f"sum by (namespace, name) "
                    f"(ray_serve_deployment_queued_queries{{{DEPLOYMENT}}})",
                    "Serve router {{namespace}}/{{name}}",
                ),
            ],
        ),
        series(
            "Time to first token, worst recent",
            "The slowest first tokens of the last minute (p99 of "
            "ray_vllm_time_to_first_token_seconds over 1 m): the latencyTarget policy asks "
            "for one more replica while a replica's worst first token of the last 30 s is "
            "over ttftTargetSeconds.",
            [
                (
                    "histogram_quantile(0.99, sum by (namespace, name, le) "
                    f"(rate(ray_vllm_time_to_first_token_seconds_bucket{{{ON_POOL}}}[1m])))",
                    "p99 1m {{namespace}}/{{name}}",
                )
            ],
            unit="s",
        ),
    ]
    builder = (
        db.Dashboard("K2 Think fleet")
        .uid(UID)
        .description(
            "K2ThinkDeployments on the GPU fleet: pools, readiness, and the serving metrics of "
            "Ray Serve and vLLM per deployment. Generated by charts/tools/dashboard.py."
        )
        .tags(["k2think", "ray", "vllm"])
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(variable("namespace", "Namespace", "namespace"))
        .with_variable(variable("name", "Deployment", "name"))
        .with_variable(variable("pool", "Pool", "pool", pool=True))
        .with_row(db.Row("Fleet"))
    )
    for panel in fleet:
        builder = builder.with_panel(panel)
    builder = builder.with_row(db.Row("Per deployment and pool"))
    for panel in per_deployment:
        builder = builder.with_panel(panel)
    builder = builder.with_row(db.Row("Autoscaling policy inputs"))
    for panel in policy_inputs:
        builder = builder.with_panel(panel)
    encoded: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file differs")
    args = parser.parse_args(argv)
    text = render()
    stale = []
    for path in OUTPUTS:
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is stale: run python charts/tools/dashboard.py",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
