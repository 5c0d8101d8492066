"""What Ray's own autoscaler makes of the RayCluster we render (Ray 2.60, offline).

The rendered ``rayClusterConfig`` goes through KubeRay's config producer in Ray
(``ray/autoscaler/_private/kuberay/autoscaling_config.py``,
``_derive_autoscaling_config_from_ray_cr``) and a replica's placement-group demand through
autoscaler v2's ``ResourceDemandScheduler`` (``ray/autoscaler/v2/scheduler.py``): that is the
code deciding which worker group (pool) KubeRay is asked to scale. The e2e chain suite
(``e2e/chain/``) shows the same decisions with real processes; these tests pin them cheaply.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig, InstanceReconcileConfig
from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
from ray.autoscaler.v2.utils import ResourceRequestUtil
from ray.core.generated.autoscaler_pb2 import (  # type: ignore[attr-defined]
    GangResourceRequest,
)

from k2think_operator.deployment.controller import decide
from k2think_operator.render.rayservice import ALLOCATE_TIMEOUT_ENV

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "crds" / "examples"


def _rayservice(doc: dict[str, Any]) -> dict[str, Any]:
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": "ns", "uid": "u", "generation": 1}}
    decision = decide(doc)
    assert not decision.problems, decision.problems
    rs: dict[str, Any] = next(c for c in decision.children if c["kind"] == "RayService")
    return rs


def _autoscaling_config(rs: dict[str, Any]) -> AutoscalingConfig:
    ray_cr = {
        "metadata": {"name": rs["metadata"]["name"], "namespace": "ns"},
        "spec": rs["spec"]["rayClusterConfig"],
    }
    return AutoscalingConfig(_derive_autoscaling_config_from_ray_cr(ray_cr), skip_content_hash=True)


def _replica_bundles(rs: dict[str, Any]) -> tuple[list[dict[str, float]], str]:
    """The placement group Serve LLM asks for: our bundles, the replica actor's own CPU merged
    into the first one, and ``accelerator_type:<X>: 0.001`` on each when the config pins a GPU
    type (``ray/llm/_internal/serve/core/server/llm_server.py``,
    ``LLMServer.get_deployment_options``; vLLM's engine config adds the accelerator share)."""
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    llm = serve["applications"][0]["args"]["llm_configs"][0]
    pg = llm["placement_group_config"]
    bundles = [dict(b) for b in pg["bundles"]]
    if llm.get("accelerator_type"):
        for b in bundles:
            b[f"accelerator_type:{llm['accelerator_type']}"] = 0.001
    bundles[0]["CPU"] = bundles[0].get("CPU", 0) + 1
    return bundles, pg["strategy"]


def _pick(
    config: AutoscalingConfig,
    bundles: list[dict[str, float]],
    unavailable: tuple[str, ...] = (),
) -> list[tuple[str, int]]:
    """Which group(s) v2 launches for one replica's gang (STRICT_PACK: one node)."""
    affinity = ResourceRequestUtil.PlacementConstraintType.AFFINITY
    gang = GangResourceRequest(
        requests=[ResourceRequestUtil.make(b, [(affinity, "_PG_replica", "")]) for b in bundles]
    )
    request = SchedulingRequest(
        disable_launch_config_check=True,
        node_type_configs=config.get_node_type_configs(),
        max_num_nodes=config.get_max_num_nodes(),
        gang_resource_requests=[gang],
        recoverable_resource_availabilities={g: 0.0 for g in unavailable},
    )
    reply = ResourceDemandScheduler(MagicMock()).schedule(request)
    assert not reply.infeasible_gang_resource_requests, "the replica fits no group"
    return [(launch.instance_type, launch.count) for launch in reply.to_launch]


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def _two_cpu_pools() -> dict[str, Any]:
    pool = {"gpuType": "CPU", "gpusPerNode": 1, "cpuPerGpu": "3", "memoryPerGpu": "12Gi"}
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": "chain"},
        "spec": {
            "model": {
                "preset": "custom",
                "source": "file:///models/tiny",
                "maxModelLen": 2048,
                "architecture": {
                    "family": "qwen2",
                    "parametersBillions": 0.0089,
                    "layers": 2,
                    "hiddenSize": 512,
                    "attentionHeads": 4,
                    "kvHeads": 2,
                    "headDim": 128,
                    "vocabSize": 2048,
                    "maxPositionEmbeddings": 4096,
                },
            },
            "pools": [
                {"name": "cpu-a", **pool, "nodeSelector": {"k2think.dev/pool": "cpu-a"}},
                {"name": "cpu-b", **pool, "nodeSelector": {"k2think.dev/pool": "cpu-b"}},
            ],
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "poolFallbackSeconds": 90},
            "ray": {"head": {"resources": {"limits": {"cpu": "1", "memory": "8Gi"}}}},
        },
    }


def test_rendered_cluster_runs_autoscaler_v2_with_our_give_up_time() -> None:
    rs = _rayservice(_two_cpu_pools())
    options = rs["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert options["version"] == "v2"
    assert {"name": ALLOCATE_TIMEOUT_ENV, "value": "90"} in options["env"]
    # The variable is the one Ray's v2 instance reconciler reads for ALLOCATED -> RAY_RUNNING.
    assert f'"{ALLOCATE_TIMEOUT_ENV}"' in inspect.getsource(InstanceReconcileConfig)


def test_ray_sees_the_groups_we_planned() -> None:
    config = _autoscaling_config(_rayservice(_two_cpu_pools()))
    types = config.get_node_type_configs()
    assert types["cpu-a"].resources == types["cpu-b"].resources
    assert types["cpu-a"].resources["CPU"] == 3
    assert types["headgroup"].resources["CPU"] == 1  # no LLM replica (2 CPUs) fits the head
    assert types["cpu-a"].min_worker_nodes == 0


@pytest.mark.parametrize(
    ("example", "first", "overflow"),
    [("chain", "cpu-a", "cpu-b"), ("k2think-multipool.yaml", "h200", "h100")],
)
def test_spec_order_is_the_preference_and_an_unavailable_pool_spills(
    example: str, first: str, overflow: str
) -> None:
    doc = _two_cpu_pools() if example == "chain" else _load(example)
    rs = _rayservice(doc)
    config = _autoscaling_config(rs)
    bundles, strategy = _replica_bundles(rs)
    assert strategy == "STRICT_PACK"
    # Equal layouts score equally; v2 sorts stably, so the first pool in the spec wins.
    assert _pick(config, bundles) == [(first, 1)]
    # After the allocate timeout the group is marked unavailable: the next pool wins.
    assert _pick(config, bundles, unavailable=(first,)) == [(overflow, 1)]


def test_k2think_tp4_replica_scales_the_h100_group_with_four_gpus() -> None:
    rs = _rayservice(_load("k2think.yaml"))
    config = _autoscaling_config(rs)
    bundles, _ = _replica_bundles(rs)
    assert len(bundles) == 4 and all(b["GPU"] == 1 for b in bundles)
    assert _pick(config, bundles) == [("h100", 1)]
    assert config.get_node_type_configs()["h100"].resources["GPU"] == 4


def test_pool_replicas_count_what_really_runs_per_pool() -> None:
    from k2think_operator.api.spec import parse_spec
    from k2think_operator.deployment.status import Observation, PodSummary, pool_replicas
    from k2think_operator.plan.planner import plan_deployment

    plan = plan_deployment(parse_spec(_two_cpu_pools()["spec"]), "chain")

    def pod(name: str, pool: str, phase: str) -> PodSummary:
        return PodSummary(name, "ray-worker", pool, phase, phase == "Running")

    obs = Observation(
        generation=1,
        plan=plan,
        pods=(
            PodSummary("head", "ray-head", None, "Running", True),
            pod("a-1", "cpu-a", "Running"),
            pod("a-2", "cpu-a", "Pending"),  # the first pool is full
            pod("b-1", "cpu-b", "Running"),  # the overflow replica
            pod("b-0", "cpu-b", "Succeeded"),
        ),
    )
    assert pool_replicas(obs) == [
        {"name": "cpu-a", "running": 1, "pending": 1},
        {"name": "cpu-b", "running": 1, "pending": 0},
    ]
