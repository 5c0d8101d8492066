"""The alert rules (charts/k2think-operator/files/k2think-alerts.yaml) under ``promtool``.

``promtool`` comes with Debian's ``prometheus`` package (``make system-deps``). The unit tests in
tests/fixtures/alerts/alerts_test.yaml feed series in and expect alerts (labels and annotations)
out; this module runs them and checks that every alert of the file is proven to fire there.
The e2e suites then load the same file into a real Prometheus fed by the real components.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "charts" / "k2think-operator" / "files" / "k2think-alerts.yaml"
RULE_TESTS = ROOT / "tests" / "fixtures" / "alerts" / "alerts_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: run `make system-deps` (Debian package prometheus)")
    return found


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_proven_to_fire() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alerts()} <= fired


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: str(r["alert"]))
def test_alert_shape(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("K2Think")
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert "for" in rule
