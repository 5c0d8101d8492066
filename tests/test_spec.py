"""The spec models: what they accept, what they refuse, and the field paths they name."""

from __future__ import annotations

from typing import Any

import pytest

from k2think_operator.api.spec import InvalidSpec, parse_spec
from tests.conftest import load_example, minimal_doc


def test_examples_parse(example_name: str) -> None:
    doc = load_example(example_name)
    spec = parse_spec(doc["spec"])
    assert spec.pools


def test_defaults() -> None:
    spec = parse_spec(minimal_doc()["spec"])
    assert spec.parallelism.tensor == "auto"
    assert spec.parallelism.pipeline == "auto"
    assert spec.autoscaling is None and spec.replicas is None
    assert spec.fixed_replicas == 1
    assert spec.model.resolved_source() == "hf://LLM360/K2-Think"
    assert spec.model.resolved_served_name("demo") == "LLM360/K2-Think"
    assert spec.upgrade_strategy == "NewCluster"
    assert spec.pools[0].cpu_per_gpu == "8"


def test_quantities_may_be_numbers() -> None:
    spec = parse_spec(
        minimal_doc(pools=[{"name": "p", "gpuType": "H100-80GB", "cpuPerGpu": 12}])["spec"]
    )
    assert spec.pools[0].cpu_per_gpu == "12"


def _problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec)
    return [(p.field, p.message) for p in info.value.problems]


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"pools": []}, "spec.pools", "at least 1"),
        (
            {"pools": [{"name": "p", "gpuType": "H900"}]},
            "spec.pools[0].gpuType",
            "unknown gpuType 'H900'",
        ),
        (
            {"pools": [{"name": "Bad_Name", "gpuType": "H100-80GB"}]},
            "spec.pools[0].name",
            "pattern",
        ),
        ({"parallelism": {"tensor": 0}}, "spec.parallelism.tensor", "greater than or equal to 1"),
        ({"parallelism": {"tensor": "many"}}, "spec.parallelism.tensor", "auto"),
        (
            {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
            "spec.autoscaling",
            "minReplicas=5 is greater than maxReplicas=2",
        ),
        (
            {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "initialReplicas": 9}},
            "spec.autoscaling.initialReplicas",
            "initialReplicas=9 is outside",
        ),
        (
            {"replicas": 2, "autoscaling": {"maxReplicas": 4}},
            "spec",
            "mutually exclusive",
        ),
        (
            {"engine": {"extraArgs": {"tensor_parallel_size": 8}}},
            "spec.engine.extraArgs",
            "use spec.parallelism.tensor instead",
        ),
        ({"engine": {"gpuMemoryUtilization": 1.5}}, "spec.engine.gpuMemoryUtilization", "0.99"),
        ({"model": {"source": "ftp://x/y"}}, "spec.model.source", "not a model source"),
        ({"model": {"source": "pvc://only-claim"}}, "spec.model.source", "claim and a path"),
        ({"model": {"preset": "custom", "source": "hf://a/b"}}, "spec.model", "architecture"),
        (
            {"model": {"preset": "k2-think", "architecture": {}}},
            "spec.model.architecture.layers",
            "Field required",
        ),
        ({"unknownField": 1}, "spec.unknownField", "Extra inputs are not permitted"),
        (
            {
                "pools": [
                    {"name": "a", "gpuType": "H100-80GB"},
                    {"name": "a", "gpuType": "H200-141GB"},
                ]
            },
            "spec",
            "repeated: a",
        ),
        (
            {"pools": [{"name": "a", "gpuType": "CPU"}, {"name": "b", "gpuType": "H100-80GB"}]},
            "spec",
            "mix the CPU profile",
        ),
        (
            {"serving": {"routing": {"router": "roundRobin"}}},
            "spec.serving.routing.router",
            "'prefixAware' or 'powerOfTwo'",
        ),
        (
            {"serving": {"routing": {"router": "powerOfTwo", "matchRateThreshold": 0.5}}},
            "spec.serving.routing",
            "tune router prefixAware, not powerOfTwo",
        ),
        (
            {"serving": {"routing": {"matchRateThreshold": 1.5}}},
            "spec.serving.routing.matchRateThreshold",
            "less than or equal to 1",
        ),
        (
            {
                "serving": {"routing": {"router": "prefixAware"}},
                "engine": {"enablePrefixCaching": False},
            },
            "spec",
            "needs engine.enablePrefixCaching",
        ),
    ],
)
def test_invalid_specs_name_the_field(change: dict[str, Any], field: str, fragment: str) -> None:
    spec = minimal_doc(**change)["spec"]
    problems = _problems(spec)
    assert any(f == field and fragment in m for f, m in problems), problems


def test_custom_architecture_checks_heads() -> None:
    spec = minimal_doc(
        model={
            "preset": "custom",
            "source": "hf://org/model",
            "architecture": {
                "parametersBillions": 1,
                "layers": 2,
                "hiddenSize": 512,
                "attentionHeads": 6,
                "kvHeads": 4,
                "headDim": 128,
                "vocabSize": 1000,
                "maxPositionEmbeddings": 4096,
            },
        }
    )["spec"]
    problems = _problems(spec)
    assert any("attentionHeads=6 is not a multiple of kvHeads=4" in m for _, m in problems)


def test_all_problems_reported_at_once() -> None:
    spec = minimal_doc(
        parallelism={"tensor": 0}, engine={"gpuMemoryUtilization": 2}, suspend="maybe"
    )["spec"]
    fields = {f for f, _ in _problems(spec)}
    assert {"spec.parallelism.tensor", "spec.engine.gpuMemoryUtilization", "spec.suspend"} <= fields
