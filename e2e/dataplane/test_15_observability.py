"""A real Prometheus scrapes the Ray head's metrics export port while completions run: every
Ray/vLLM panel of the dashboard and every alert rule is evaluated against what it scraped.

The scrape job gives the head's series the labels the chart's PodMonitor gives a Ray pod's
(``namespace``, ``name`` = the K2ThinkDeployment, ``pool``, ``component``), so the dashboard's
queries run unchanged. The operator's panels are proven by e2e/test_observability.py.
Prometheus listens on 127.0.0.1 inside the suite's network namespace (e2e/promlab.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from dataplane_support import ServedApp

from promlab import (
    ALERT_RULES,
    Prometheus,
    alert_queries,
    dashboard_queries,
    load_dashboard,
    rule_problems,
    unanswered,
)

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(900)]

#: What the PodMonitor's relabelings put on a Ray pod's series (charts/.../podmonitor.yaml).
POD_LABELS = {
    "namespace": "dataplane",
    "name": "k2think",
    "pool": "cpu",
    "component": "ray-head",
}


@pytest.fixture(scope="module")
def prometheus(served_app: ServedApp) -> Iterator[Prometheus]:
    prom = Prometheus(
        scrape_configs=[
            {
                "job_name": "ray",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{served_app.head.metrics_port}"],
                        "labels": POD_LABELS,
                    }
                ],
            }
        ],
        rule_files=[ALERT_RULES],
    )
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


def _complete(app: ServedApp, i: int) -> int:
    client = openai.OpenAI(
        base_url=app.openai_base_url, api_key=app.api_key, timeout=300, max_retries=0
    )
    stream = client.chat.completions.create(
        model=app.served_name,
        messages=[{"role": "user", "content": f"Count to {10 + i}."}],
        max_tokens=64,
        temperature=0.0,
        stream=True,
    )
    return sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta)


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, served_app: ServedApp) -> None:
    """Completions while Prometheus scrapes. vLLM's counters and histograms reach Ray's exporter
    only after their first observation, so a first batch makes them appear and a second one,
    once they are scraped, makes their rates non-zero (``rate`` needs two samples)."""
    prometheus.wait_for_series('up{job="ray"} == 1', timeout=60)

    def batch() -> None:
        # Two at a time: the served config's autoscaling target is 2 ongoing requests, so this
        # load never asks Serve for a second replica (test_20 starts from one).
        with ThreadPoolExecutor(max_workers=2) as pool:
            chunks = list(pool.map(lambda i: _complete(served_app, i), range(4)))
        assert all(n > 0 for n in chunks), chunks

    batch()
    prometheus.wait_for_series("ray_vllm_generation_tokens_total > 0", timeout=180)
    prometheus.wait_for_series("ray_vllm_time_to_first_token_seconds_count > 0", timeout=60)
    batch()
    prometheus.wait_for_series("rate(ray_vllm_generation_tokens_total[5m]) > 0", timeout=180)
    prometheus.wait_for_series(
        "rate(ray_vllm_time_to_first_token_seconds_count[5m]) > 0", timeout=60
    )


def _scraped(prom: Prometheus) -> str:
    names = [n for n in prom.metric_names() if n.startswith(("ray_vllm", "ray_serve"))]
    return "series names scraped: " + ", ".join(names)


def test_every_ray_and_vllm_panel_query_returns_series(
    prometheus: Prometheus, traffic: None
) -> None:
    queries = [q for q in dashboard_queries(load_dashboard()) if q.source == "ray"]
    assert queries
    problems = unanswered(prometheus, queries)
    problems += unanswered(
        prometheus,
        queries,
        variables={k: POD_LABELS[k] for k in ("namespace", "name", "pool")},
    )
    assert not problems, (
        "dashboard panels without data:\n" + "\n".join(problems) + "\n" + _scraped(prometheus)
    )


def test_every_alert_rule_loads_and_evaluates(prometheus: Prometheus, traffic: None) -> None:
    rules = alert_queries()
    groups = prometheus.wait_rules_evaluated()
    assert not rule_problems(groups, [q.panel for q in rules])
    assert not unanswered(prometheus, rules, need_series=False)
    # The serving alerts' inner expressions see real series (their thresholds are not crossed
    # by a handful of tiny completions, so the alerts themselves stay quiet).
    for rule in rules:
        if rule.source == "ray":
            inner = rule.expr.rsplit(">", 1)[0]
            assert prometheus.query(inner), f"{rule.panel}: {inner} has no series"
    active = {a["labels"]["alertname"] for a in prometheus.alerts()}
    assert not active & {"K2ThinkTimeToFirstTokenHigh", "K2ThinkKVCacheNearlyFull"}, active
