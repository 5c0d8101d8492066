"""A real Prometheus scrapes the operator: every operator panel of the dashboard and every alert
rule is evaluated against what it scraped (docs/observability.md).

The data-plane suite does the same for Ray's and vLLM's series (e2e/dataplane/
test_15_observability.py); tests/test_dashboard.py checks that each query reads exactly one of the
two sources, so together they cover every panel. Prometheus listens on 127.0.0.1 only and keeps
its TSDB in a temporary directory (e2e/promlab.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster
from promlab import (
    ALERT_RULES,
    OPERATOR_JOB,
    Prometheus,
    alert_queries,
    dashboard_queries,
    load_dashboard,
    rule_problems,
    unanswered,
    variable_queries,
)
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    items,
    kuberay_namespace,
    load_example,
)

INVALID = "k2think-invalid"


@pytest.fixture(scope="module")
def ns(cluster: Cluster) -> Iterator[str]:
    """KubeRay, watching only this namespace, turns the RayService into Ray pods, so the pool
    gauges have GPUs to count."""
    with kuberay_namespace(cluster, "observability") as name:
        yield name


@pytest.fixture(scope="module")
def kuberay(ns: str) -> None:
    """KubeRay runs for as long as ``ns`` exists."""


@pytest.fixture(scope="module")
def operator(cluster: Cluster, ns: str, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        cluster,
        [f"--namespace={ns}"],
        log_dir / "operator-observability.log",
        env={"K2T_UNSCHEDULABLE_GRACE_SECONDS": "5"},
    )
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, ns: str, kuberay: None, operator: OperatorProcess) -> Iterator[str]:
    """One deployment whose worker pod KWOK runs on an H100 node, one with an invalid spec.

    Torn down while KubeRay still runs: KubeRay puts its finalizer on the RayService it
    reconciles (``ray.io/rayservice-finalizer``), and a RayService left behind with nobody to
    remove it would block any later deletion of KubeRay's CRD (test_zz_kuberay_missing.py)."""
    apply_doc(cluster, load_example("k2think.yaml", namespace=ns))
    bad = load_example("k2think.yaml", namespace=ns, rename=INVALID)
    bad["spec"]["parallelism"] = {"tensor": 3}  # does not divide K2-Think's 40 attention heads
    apply_doc(cluster, bad)

    def invalid() -> bool:
        cond = condition(get(cluster, "k2thinkdeployments.k2think.dev", INVALID, ns), "InvalidSpec")
        return bool(cond and cond["status"] == "True")

    eventually("InvalidSpec on the invalid deployment", invalid, timeout=60)
    yield ns
    cluster.kubectl("delete", "k2thinkdeployments.k2think.dev", "--all", "-n", ns, "--wait=true")
    eventually(
        f"no RayService left in {ns}",
        lambda: not items(cluster, "rayservices.ray.io", ns),
        timeout=120,
    )


@pytest.fixture(scope="module")
def prometheus(operator: OperatorProcess) -> Iterator[Prometheus]:
    prom = Prometheus(
        scrape_configs=[
            {
                "job_name": OPERATOR_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
            }
        ],
        rule_files=[ALERT_RULES],
    )
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


def test_prometheus_scrapes_the_operator(prometheus: Prometheus, fleet: str) -> None:
    eventually("the operator target up", prometheus.targets_up, timeout=60)
    # KWOK runs the worker pod on an H100 node: the pool gauge counts its 4 GPUs.
    result = prometheus.wait_for_series(
        f'k2think_pool_gpus_in_use{{namespace="{fleet}", pool="h100"}} > 0', timeout=180
    )
    assert result[0]["metric"]["name"] == "k2think"
    assert float(result[0]["value"][1]) == 4


def test_every_operator_panel_query_returns_series(prometheus: Prometheus, fleet: str) -> None:
    board = load_dashboard()
    queries = [q for q in dashboard_queries(board) if q.source == "operator"]
    assert queries
    # Rates need two samples of the counters inside the window (the operator may be idle by
    # now, so the rate itself can be 0).
    prometheus.wait_for_series("count_over_time(k2think_reconcile_total[5m]) >= 2", timeout=60)
    problems = unanswered(prometheus, queries + variable_queries(board))
    # One deployment picked in the variables, as a user would: the same queries must answer.
    problems += unanswered(
        prometheus, queries, variables={"namespace": fleet, "name": "k2think", "pool": "h100"}
    )
    assert not problems, "dashboard panels without data:\n" + "\n".join(problems)


def test_every_alert_rule_loads_and_evaluates(prometheus: Prometheus, fleet: str) -> None:
    rules = alert_queries()
    groups = prometheus.wait_rules_evaluated()
    assert not rule_problems(groups, [q.panel for q in rules])
    problems = unanswered(prometheus, rules, need_series=False)
    assert not problems, "\n".join(problems)

    # The operator-fed alerts see the real series: the invalid spec is pending (for: 1m) or
    # firing, the operator is up, and nothing fails to reconcile.
    def invalid_spec_alert() -> bool:
        return any(
            a["labels"]["alertname"] == "K2ThinkInvalidSpec"
            and a["labels"].get("name") == INVALID
            and a["state"] in ("pending", "firing")
            for a in prometheus.alerts()
        )

    eventually("K2ThinkInvalidSpec active for the invalid deployment", invalid_spec_alert, 60)
    names = {a["labels"]["alertname"] for a in prometheus.alerts()}
    assert "K2ThinkOperatorDown" not in names
    assert "K2ThinkServeApplicationFailed" not in names
