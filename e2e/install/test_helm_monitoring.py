"""The chart's monitoring objects: ServiceMonitor, PodMonitor, PrometheusRule, dashboard ConfigMap.

Offline, ``helm template`` output is checked against its sources (the alert rule file, the
generated dashboard JSON). On the install cluster, prometheus-operator's CRDs (generated from its
pinned API types by e2e/scripts/monitoring-crds.sh) are installed first, so the real API server
validates the objects the chart renders when every monitoring value is on.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tools import CHART, ROOT, Tools, unique

pytestmark = pytest.mark.e2e

ALERTS = CHART / "files" / "k2think-alerts.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "k2think-fleet.json"
MONITORING_VALUES = CHART / "ci" / "monitoring-values.yaml"
EVERYTHING_VALUES = CHART / "ci" / "everything-values.yaml"


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def test_monitoring_is_off_by_default(helm_tools: Tools) -> None:
    kinds = {o["kind"] for o in helm_tools.template()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}


def test_monitors_rules_and_dashboard_from_their_sources(helm_tools: Tools) -> None:
    objs = helm_tools.template("-f", str(MONITORING_VALUES), namespace="ops")

    service_monitor = one(objs, "ServiceMonitor")
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "k2think-operator"} in (
        endpoint["relabelings"]
    )

    pod_monitor = one(objs, "PodMonitor")
    spec = pod_monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    # Exactly the labels the operator renders on Ray pods (render/meta.py), not the operator's.
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "k2think",
        "app.kubernetes.io/managed-by": "k2think-operator",
    }
    (pod_endpoint,) = spec["podMetricsEndpoints"]
    assert pod_endpoint["port"] == "metrics"  # KubeRay's name for Ray's metrics export port
    targets = {r["targetLabel"]: r["sourceLabels"] for r in pod_endpoint["relabelings"]}
    assert targets == {
        "name": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
        "pool": ["__meta_kubernetes_pod_label_k2think_dev_pool"],
        "component": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
    }

    rule = one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())

    dashboards = one(objs, "ConfigMap")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["metadata"]["namespace"] == "ops"
    assert json.loads(dashboards["data"]["k2think-fleet.json"]) == json.loads(DASHBOARD.read_text())


def test_everything_values_filter_and_label(helm_tools: Tools) -> None:
    objs = helm_tools.template("-f", str(EVERYTHING_VALUES), namespace="ops")
    settings = yaml.safe_load(EVERYTHING_VALUES.read_text())["metrics"]

    spec = one(objs, "PodMonitor")["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["relabelings"][-1] == {"targetLabel": "team", "replacement": "platform"}
    assert endpoint["metricRelabelings"] == settings["podMonitor"]["metricRelabelings"]

    rules = one(objs, "PrometheusRule")
    assert rules["metadata"]["labels"]["release"] == "prometheus"
    rendered = [r for g in rules["spec"]["groups"] for r in g["rules"]]
    source = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    disabled = set(settings["prometheusRule"]["disabledAlerts"])
    assert [r["alert"] for r in rendered] == [
        r["alert"] for r in source if r["alert"] not in disabled
    ]
    for got in rendered:
        (want,) = [r for r in source if r["alert"] == got["alert"]]
        assert got["expr"] == want["expr"]
        assert got["labels"] == {**want["labels"], "team": "platform"}

    dashboards = one(objs, "ConfigMap")
    assert dashboards["metadata"]["namespace"] == "monitoring"
    assert dashboards["metadata"]["annotations"] == {"grafana_folder": "K2 Think"}


def test_unknown_alert_name_is_refused(helm_tools: Tools) -> None:
    proc = helm_tools.helm(
        "template",
        "t",
        str(CHART),
        "--set",
        "metrics.prometheusRule.disabledAlerts={K2ThinkNoSuchAlert}",
        check=False,
    )
    assert proc.returncode != 0 and "disabledAlerts" in proc.stderr, proc.stderr


def monitoring_crds() -> list[Path]:
    out = subprocess.run(
        ["bash", str(ROOT / "e2e" / "scripts" / "monitoring-crds.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout.strip()
    return sorted(Path(out).glob("monitoring.coreos.com_*.yaml"))


def test_helm_install_with_monitoring_on(tools: Tools, namespaces: Callable[[str], str]) -> None:
    """The API server, with prometheus-operator's CRDs, accepts every monitoring object."""
    crds = monitoring_crds()
    assert len(crds) == 3, crds
    for crd in crds:
        tools.kubectl("apply", "--server-side", "-f", str(crd))
    for crd in crds:
        name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        tools.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")

    release = unique("k2t-m")
    system = namespaces(f"{release}-system")
    values = ["-f", str(MONITORING_VALUES)]
    tools.helm("install", release, str(CHART), "-n", system, *values, "--timeout", "120s")
    try:
        full = f"{release}-k2think-operator"
        for kind, name in [
            ("servicemonitors.monitoring.coreos.com", full),
            ("podmonitors.monitoring.coreos.com", f"{full}-ray"),
            ("prometheusrules.monitoring.coreos.com", full),
            ("configmap", f"{full}-dashboards"),
        ]:
            assert tools.exists(kind, name, "-n", system), (kind, name)
        stored = tools.kubectl_json(
            "get", "prometheusrules.monitoring.coreos.com", full, "-n", system
        )
        assert stored["spec"] == yaml.safe_load(ALERTS.read_text())
        pod_monitor = tools.kubectl_json(
            "get", "podmonitors.monitoring.coreos.com", f"{full}-ray", "-n", system
        )
        # The CRD's schema kept every relabeling (nothing pruned).
        endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
        assert [r["targetLabel"] for r in endpoint["relabelings"]] == ["name", "pool", "component"]
    finally:
        tools.helm("uninstall", release, "-n", system, "--wait", check=False)
