"""Shared helpers of the offline test suite."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "crds" / "examples").glob("*.yaml"))


#: A custom model shaped like the data-plane suite's tiny K2-Think (CPU profile tests).
TINY_MODEL: dict[str, Any] = {
    "preset": "custom",
    "source": "file:///models/tiny-k2think",
    "servedModelName": "tiny-k2think",
    "maxModelLen": 2048,
    "architecture": {
        "family": "qwen2",
        "parametersBillions": 0.02,
        "layers": 2,
        "hiddenSize": 512,
        "attentionHeads": 4,
        "kvHeads": 2,
        "headDim": 128,
        "vocabSize": 4096,
        "maxPositionEmbeddings": 4096,
    },
}
CPU_POOL: dict[str, Any] = {"name": "cpu", "gpuType": "CPU", "gpusPerNode": 1}


def load_example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "crds" / "examples" / name).read_text())
    return data


def minimal_doc(**spec: Any) -> dict[str, Any]:
    """A small valid K2ThinkDeployment; keyword arguments replace top-level spec fields."""
    base: dict[str, Any] = {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {
            "name": "demo",
            "namespace": "team-a",
            "uid": "00000000-0000-0000-0000-0000000000aa",
        },
        "spec": {
            "model": {"preset": "k2-think", "maxModelLen": 32768},
            "pools": [{"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8}],
        },
    }
    base["spec"].update(copy.deepcopy(spec))
    return base


@pytest.fixture(params=[p.name for p in EXAMPLES])
def example_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
