"""The CRD: generated from code, committed as YAML, and consistent with models and status."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

from k2think_operator.api.crd import build_crd, openapi_schema
from k2think_operator.api.resource import K2ThinkDeploymentStatus
from k2think_operator.api.schema_check import schema_errors
from k2think_operator.api.spec import parse_spec
from k2think_operator.deployment.status import (
    Observation,
    PodSummary,
    RayServiceView,
    build_status,
    read_rayservice,
)
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render import render_yaml
from tests.conftest import ROOT, load_example, minimal_doc
from tests.test_status import INCREMENTAL_RAYSERVICE

CRD_FILE = ROOT / "crds" / "k2think.dev_k2thinkdeployments.yaml"


def test_committed_crd_matches_code() -> None:
    assert CRD_FILE.read_text() == render_yaml([build_crd()]), (
        "crds/ is stale: run `k2think-operator crd > crds/k2think.dev_k2thinkdeployments.yaml`"
    )


def test_crd_identity() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["metadata"]["name"] == "k2thinkdeployments.k2think.dev"
    spec = crd["spec"]
    assert spec["group"] == "k2think.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "K2ThinkDeployment"
    assert spec["names"]["shortNames"] == ["k2t"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Model",
        "GPU",
        "TP",
        "Replicas",
        "Ready",
        "Status",
        "Queue",
        "Admission",
        "Downgraded",
        "Age",
    ]


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, f"{path}[]")


def test_every_spec_field_has_a_description() -> None:
    spec = openapi_schema()["properties"]["spec"]
    missing = [p for p, s in _walk(spec, "spec") if not s.get("description")]
    assert missing == []


def test_lists_and_maps_are_bounded_for_cel_cost() -> None:
    spec = openapi_schema()["properties"]["spec"]
    for path, schema in _walk(spec, "spec"):
        if schema.get("type") == "array":
            assert "maxItems" in schema, path


def test_examples_validate_against_the_schema(example_name: str) -> None:
    assert schema_errors(load_example(example_name)) == []


@pytest.mark.parametrize(
    ("spec_change", "path"),
    [
        ({"pools": [{"name": "x", "gpuType": "H900"}]}, ["spec", "pools", 0, "gpuType"]),
        ({"replicas": -1}, ["spec", "replicas"]),
        ({"bogus": True}, ["spec", "bogus"]),
        ({"model": {"maxModelLen": 10}}, ["spec", "model", "maxModelLen"]),
        (
            {"pools": [{"name": "x", "gpuType": "H100-80GB", "cpuPerGpu": "lots"}]},
            ["spec", "pools", 0, "cpuPerGpu"],
        ),
    ],
)
def test_schema_refuses_what_models_refuse(spec_change: dict[str, Any], path: list[Any]) -> None:
    doc = minimal_doc(**spec_change)
    errors = schema_errors(doc)
    want = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    assert any(e.field == want for e in errors), [str(e) for e in errors]


def _status_schema() -> dict[str, Any]:
    status: dict[str, Any] = openapi_schema()["properties"]["status"]
    return status


def _undeclared(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Keys the API server would prune (status writes would then never converge)."""
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, child in value.items():
            if key not in props:
                found.append(f"{path}.{key}")
            else:
                found += _undeclared(child, props[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            found += _undeclared(item, schema["items"], f"{path}[]")
    return found


def test_status_we_write_is_fully_declared() -> None:
    spec = parse_spec(load_example("k2think-multipool.yaml")["spec"])
    plan = plan_deployment(spec, "k2think-multipool")
    obs = Observation(
        generation=3,
        plan=plan,
        rayservice=RayServiceView(True, "", "", False, "RUNNING", ""),
        pods=(PodSummary("w", "ray-worker", "h200", "Running", True),),
        name="k2think-multipool",
        namespace="ns",
    )
    status = build_status(obs, None, "2026-11-28T00:00:00Z")
    assert _undeclared(status, _status_schema()) == []
    assert list(Draft4Validator(_status_schema()).iter_errors(status)) == []
    # The status models (which the schema is generated from) accept it too, extra keys refused.
    K2ThinkDeploymentStatus.model_validate(status)
    # And while KubeRay runs an incremental upgrade (status.upgrade).
    upgrading = build_status(
        replace(obs, rayservice=read_rayservice(INCREMENTAL_RAYSERVICE)),
        None,
        "2026-11-28T00:00:00Z",
    )
    assert "upgrade" in upgrading
    assert _undeclared(upgrading, _status_schema()) == []
    assert list(Draft4Validator(_status_schema()).iter_errors(upgrading)) == []
    K2ThinkDeploymentStatus.model_validate(upgrading)
