"""upgradeStrategy NewClusterWithIncrementalUpgrade: KubeRay's clusterUpgradeOptions, and what the
operator says when KubeRay's feature gate is off."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from k2think_operator.api import reasons as r
from k2think_operator.api.spec import InvalidSpec, parse_spec
from k2think_operator.deployment.decide import decide, decision_events
from k2think_operator.deployment.upgrade import GATE_OFF_TEXT, with_upgrade_condition
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION
from tests.conftest import minimal_doc
from tests.test_render import rayservice_of

INCREMENTAL = {
    "upgradeStrategy": "NewClusterWithIncrementalUpgrade",
    "incrementalUpgrade": {"gatewayClassName": "envoy-gateway"},
}


def _worker_counts(doc: dict[str, Any]) -> list[tuple[int, int]]:
    groups = rayservice_of(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return [(g["replicas"], g["minReplicas"]) for g in groups if g["groupName"] != "k2t-ingress"]


@pytest.mark.parametrize(
    "sizing",
    [{"replicas": 4}, {"autoscaling": {"minReplicas": 3, "maxReplicas": 8}}],
    ids=["fixed", "floor"],
)
def test_the_new_cluster_of_an_incremental_upgrade_starts_without_the_fleets_pods(
    sizing: dict[str, Any],
) -> None:
    """KubeRay builds the upgrade's new cluster from the rendered template, replicas included:
    a fixed count or a floor there would start the whole fleet's pods beside the old cluster's
    (the GPUs twice). With the incremental strategy the groups start empty and the autoscaler
    follows Serve's target_capacity; with NewCluster they start with the fleet, as before."""
    assert _worker_counts(minimal_doc(**sizing, **INCREMENTAL)) == [(0, 0)]
    assert _worker_counts(minimal_doc(**sizing))[0][0] > 0


def test_warm_pods_start_with_the_new_cluster_too() -> None:
    doc = minimal_doc(autoscaling={"minReplicas": 1, "maxReplicas": 8}, **INCREMENTAL)
    doc["spec"]["pools"][0]["warmReplicas"] = 1
    assert _worker_counts(doc) == [(2, 2)]


def test_cluster_upgrade_options_are_what_kuberay_requires() -> None:
    """KubeRay v1.6.2 ValidateClusterUpgradeOptions: options present, 0 <= maxSurgePercent <=
    100, 0 <= stepSizePercent <= 100, intervalSeconds > 0, gatewayClassName set, and the Ray
    autoscaler on (enableInTreeAutoscaling)."""
    spec = rayservice_of(minimal_doc(**INCREMENTAL))["spec"]
    assert spec["upgradeStrategy"] == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "gatewayClassName": "envoy-gateway",
            "intervalSeconds": 60,
            "maxSurgePercent": 25,
            "stepSizePercent": 25,
        },
    }
    assert spec["rayClusterConfig"]["enableInTreeAutoscaling"] is True


def test_other_strategies_render_only_the_type() -> None:
    for strategy in ("NewCluster", "None"):
        spec = rayservice_of(minimal_doc(upgradeStrategy=strategy))["spec"]
        assert spec["upgradeStrategy"] == {"type": strategy}


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (
            {"upgradeStrategy": "NewClusterWithIncrementalUpgrade"},
            "spec",
            "needs incrementalUpgrade",
        ),
        ({"incrementalUpgrade": {"gatewayClassName": "istio"}}, "spec", "not NewCluster"),
        (
            {
                **INCREMENTAL,
                "incrementalUpgrade": {"gatewayClassName": "istio", "maxSurgePercent": 150},
            },
            "spec.incrementalUpgrade.maxSurgePercent",
            "less than or equal to 100",
        ),
        (
            {
                **INCREMENTAL,
                "incrementalUpgrade": {"gatewayClassName": "istio", "intervalSeconds": 0},
            },
            "spec.incrementalUpgrade.intervalSeconds",
            "greater than or equal to 1",
        ),
        (
            {**INCREMENTAL, "incrementalUpgrade": {}},
            "spec.incrementalUpgrade.gatewayClassName",
            "Field required",
        ),
    ],
)
def test_refused_with_the_field(change: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(minimal_doc(**change)["spec"])
    assert any(p.field == field and fragment in p.message for p in info.value.problems), info.value


def _reshaped(doc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A decision and a live RayService of another cluster shape."""
    decision = decide(doc)
    live = copy.deepcopy(decision.children[0])
    live["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION] = "0000000000000000"
    return decision, live


def _new_cluster_text(doc: dict[str, Any], gate: bool) -> str:
    decision, live = _reshaped(doc)
    events = decision_events(decision, {}, live, incremental_upgrade_gate=gate)
    (text,) = [e.message for e in events if e.reason == r.EVENT_NEW_RAY_CLUSTER]
    return text


def test_gate_off_does_not_announce_a_new_cluster() -> None:
    text = _new_cluster_text(minimal_doc(**INCREMENTAL), gate=False)
    assert "not rolled out" in text and "second Ray cluster" not in text


def test_gate_on_announces_the_steps_and_the_surge() -> None:
    doc = minimal_doc(**INCREMENTAL, replicas=4)
    decision = decide(doc)
    assert decision.plan is not None
    surge = -(-decision.plan.max_gpus * 25 // 100)
    text = _new_cluster_text(doc, gate=True)
    assert "grow a second Ray cluster by 25%" in text
    assert f"about {surge} more GPUs at most" in text


def test_new_cluster_text_unchanged_for_new_cluster() -> None:
    text = _new_cluster_text(minimal_doc(), gate=False)
    assert text.startswith("the change reshapes the Ray cluster: KubeRay will start a second")


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


@pytest.mark.parametrize(
    ("doc", "gate", "want"),
    [
        (minimal_doc(**INCREMENTAL), False, ("True", r.KUBERAY_FEATURE_GATE_OFF)),
        (minimal_doc(**INCREMENTAL), True, ("False", r.KUBERAY_FEATURE_GATE_ON)),
        (minimal_doc(), False, None),
        (minimal_doc(upgradeStrategy="None"), True, None),
    ],
)
def test_incremental_upgrade_condition(
    doc: dict[str, Any], gate: bool, want: tuple[str, str] | None
) -> None:
    spec = parse_spec(doc["spec"])
    stale = {"conditions": [{"type": r.INCREMENTAL_UPGRADE_UNAVAILABLE, "status": "True"}]}
    status = with_upgrade_condition(stale, spec, gate_on=gate, generation=3, now="t")
    got = _conditions(status).get(r.INCREMENTAL_UPGRADE_UNAVAILABLE)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert (got["status"], got["reason"]) == want
    assert got["observedGeneration"] == 3
    if want[0] == "True":
        assert got["message"] == GATE_OFF_TEXT
