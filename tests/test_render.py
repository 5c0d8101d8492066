"""Renderer: golden YAML, determinism, and which edits touch rayClusterConfig."""

from __future__ import annotations

import copy
import os
import random
import string
from typing import Any

import pytest
import yaml

from k2think_operator.api.spec import INGRESS_GROUP, parse_spec
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render import build_children, render_yaml
from k2think_operator.render.meta import CLUSTER_HASH_ANNOTATION, SPEC_HASH_ANNOTATION
from k2think_operator.render.rayservice import multiply_quantity
from k2think_operator.render.serve_config import (
    _plain_keys,
    dump_yaml,
    effective_llm_deployment_options,
)
from tests.conftest import ROOT, load_example, minimal_doc

GOLDEN = ROOT / "tests" / "golden"
UID = "6f1c1f0e-0000-4000-8000-000000000001"


def render_doc(doc: dict[str, Any], uid: str | None = None) -> list[dict[str, Any]]:
    """Render as the operator would; the uid comes from the document unless given."""
    meta = doc["metadata"]
    uid = uid or meta.get("uid") or UID
    spec = parse_spec(doc["spec"])
    plan = plan_deployment(spec, meta["name"])
    return build_children(
        spec, plan, name=meta["name"], namespace=meta.get("namespace", "default"), uid=uid
    )


def rayservice_of(doc: dict[str, Any]) -> dict[str, Any]:
    return render_doc(doc)[0]


def gpu_groups(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """The pools' worker groups (without the ingress CPU group, tests/test_ingress.py)."""
    return [g for g in cluster["workerGroupSpecs"] if g["groupName"] != INGRESS_GROUP]


def test_golden(example_name: str) -> None:
    text = render_yaml(render_doc(load_example(example_name)))
    golden = GOLDEN / example_name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"run UPDATE_GOLDEN=1 pytest to create {golden}"
    assert text == golden.read_text(), f"{example_name} differs from its golden file"


def test_rendering_is_byte_identical(example_name: str) -> None:
    doc = load_example(example_name)
    first = render_yaml(render_doc(doc))
    second = render_yaml(render_doc(copy.deepcopy(doc)))
    assert first == second


def _pure_python_yaml(value: Any) -> str:
    text: str = yaml.safe_dump(value, sort_keys=True, default_flow_style=False, width=1_000_000)
    return text


def test_serve_config_text_is_the_same_from_libyaml(
    example_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serveConfigV2 is emitted by libyaml (a tenth of the CPU, issue #20) with exactly the text
    of PyYAML's own emitter: a changed text would re-apply every RayService after an upgrade."""
    config = yaml.safe_load(rayservice_of(load_example(example_name))["spec"]["serveConfigV2"])
    used: list[Any] = []
    dump = yaml.dump

    def recording(value: Any, **kwargs: Any) -> Any:
        used.append(kwargs.get("Dumper"))
        return dump(value, **kwargs)

    monkeypatch.setattr(yaml, "dump", recording)
    assert dump_yaml(config) == _pure_python_yaml(config)
    assert used == [yaml.CSafeDumper]


def test_yaml_is_the_same_from_either_emitter_for_any_value() -> None:
    """Hostile values (control characters, quotes, YAML keywords, numbers as text, long and
    non-ASCII strings) under plain keys, and keys libyaml writes differently (empty, past ~122
    bytes, non-ASCII, control characters: those take PyYAML's emitter), give PyYAML's text."""
    rng = random.Random(20)
    alphabet = string.printable + "é日\u00a0\u2028\U0001f600\x00\x85\ufeff\x1b\x7f"
    plain = string.ascii_letters + string.digits + "_./-"

    def text(chars: str, longest: int) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, longest)))

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(
                [text(alphabet, 40), text(alphabet, 3000), rng.randint(-(10**6), 10**20),
                 rng.random() * 1e30, True, None, float("-inf"), "yes", "0x1f", "- a", ""]
            )  # fmt: skip
        if roll < 0.75:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return mapping(depth)

    def mapping(depth: int) -> dict[str, Any]:
        keys = [text(plain, rng.choice((5, 100))) or "k" for _ in range(rng.randint(0, 4))]
        return {key: value(depth + 1) for key in keys}

    for _ in range(2000):
        config = mapping(0)
        assert dump_yaml(config) == _pure_python_yaml(config), config
    odd_keys = ["", "a" * 123, "a" * 128, "é" * 70, "日本", "a\rb", "\ufeffk", "a b", "#k", "k:"]
    for key in odd_keys:
        config = {"x": {key: [key, {"y": key}]}}
        assert not _plain_keys(config)
        assert dump_yaml(config) == _pure_python_yaml(config), key


def test_owner_reference_and_labels() -> None:
    rs = rayservice_of(minimal_doc())
    meta = rs["metadata"]
    assert meta["name"] == "demo" and meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "k2think.dev/v1alpha1",
            "kind": "K2ThinkDeployment",
            "name": "demo",
            "uid": "00000000-0000-0000-0000-0000000000aa",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "k2think",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/managed-by": "k2think-operator",
        "app.kubernetes.io/part-of": "k2think",
    }
    assert SPEC_HASH_ANNOTATION in meta["annotations"]
    assert CLUSTER_HASH_ANNOTATION in meta["annotations"]


def serve_config(rs: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return config


def llm_config(rs: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = serve_config(rs)["applications"][0]["args"]["llm_configs"][0]
    return config


def llm_options(rs: dict[str, Any]) -> dict[str, Any]:
    """The LLM deployment's Serve options: its override over ``LLMConfig.deployment_config``."""
    return effective_llm_deployment_options(serve_config(rs))


def test_serve_config_shape() -> None:
    rs = rayservice_of(load_example("k2think.yaml"))
    app = serve_config(rs)["applications"][0]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    cfg = llm_config(rs)
    assert cfg["accelerator_type"] == "H100"
    assert cfg["engine_kwargs"]["tensor_parallel_size"] == 4
    assert cfg["engine_kwargs"]["max_model_len"] == 32768
    auto = llm_options(rs)["autoscaling_config"]
    assert auto["min_replicas"] == 1 and auto["max_replicas"] == 8
    # Serve LLM would default this to 1e9 (never scale): we always render it.
    assert 1 <= auto["target_ongoing_requests"] <= 256
    assert cfg["placement_group_config"] == {"bundles": [{"GPU": 1}] * 4, "strategy": "STRICT_PACK"}


def test_replicas_keep_serves_log_handler() -> None:
    """vLLM left to configure logging closes Serve's replica log handler, and a restarted Serve
    controller then replaces every replica (reloads weights) instead of recovering it."""
    for example in ("k2think.yaml", "k2think-v2.yaml", "k2think-multipool.yaml"):
        cfg = llm_config(rayservice_of(load_example(example)))
        assert cfg["runtime_env"]["env_vars"]["VLLM_CONFIGURE_LOGGING"] == "0", example


def test_worker_group_matches_plan() -> None:
    rs = rayservice_of(load_example("k2think.yaml"))
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["resources"]["GPU"] == "0"
    (group,) = gpu_groups(cluster)
    pod = group["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert pod["nodeSelector"] == {"k2think.dev/pool": "h100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] >= 8  # the Serve ceiling fits inside the worker envelope
    assert group["resources"] == {"accelerator_type:H100": "1"}


def test_fixed_replicas_render_num_replicas() -> None:
    rs = rayservice_of(load_example("k2think-v2.yaml"))
    cfg = llm_config(rs)
    assert llm_options(rs)["num_replicas"] == 2
    # Serve LLM's builder adds a never-scale autoscaling_config; the override clears it.
    assert llm_options(rs)["autoscaling_config"] is None
    assert cfg["engine_kwargs"]["kv_cache_dtype"] == "fp8"
    (group,) = gpu_groups(rs["spec"]["rayClusterConfig"])
    assert group["replicas"] == 2


def test_multipool_has_one_group_per_pool_and_no_accelerator_pin() -> None:
    rs = rayservice_of(load_example("k2think-multipool.yaml"))
    groups = gpu_groups(rs["spec"]["rayClusterConfig"])
    assert [g["groupName"] for g in groups] == ["h200", "h100"]
    assert [g["maxReplicas"] for g in groups] == [8, 16]  # pool capacity in worker pods
    assert "accelerator_type" not in llm_config(rs)  # two GPU types serve one deployment


def _cluster(doc: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = rayservice_of(doc)["spec"]["rayClusterConfig"]
    return cluster


@pytest.mark.parametrize(
    "change",
    [
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 16}},
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 7}},
        {"autoscaling": {"minReplicas": 0, "maxReplicas": 8, "downscaleDelaySeconds": 60}},
        {"engine": {"maxNumSeqs": 64, "enablePrefixCaching": False}},
        {"model": {"preset": "k2-think", "maxModelLen": 16384}},
    ],
)
def test_serve_only_edits_leave_ray_cluster_config_alone(change: dict[str, Any]) -> None:
    base = minimal_doc(autoscaling={"minReplicas": 1, "maxReplicas": 8})
    edited = minimal_doc(**{**{"autoscaling": {"minReplicas": 1, "maxReplicas": 8}}, **change})
    before, after = rayservice_of(base), rayservice_of(edited)
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
    a = before["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    b = after["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    assert a == b
    for group_a, group_b in zip(
        before["spec"]["rayClusterConfig"]["workerGroupSpecs"],
        after["spec"]["rayClusterConfig"]["workerGroupSpecs"],
        strict=True,
    ):
        group_a.pop("replicas")
        group_b.pop("replicas")
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]


def test_scaling_a_fixed_count_is_a_serve_change() -> None:
    one, three = rayservice_of(minimal_doc(replicas=1)), rayservice_of(minimal_doc(replicas=3))
    assert llm_options(three)["num_replicas"] == 3
    assert (
        one["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
        == three["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    )


@pytest.mark.parametrize(
    "change",
    [
        {"parallelism": {"tensor": 8}},
        {"ray": {"image": "rayproject/ray-llm:2.60.0-py311-cu128-custom"}},
        {"pools": [{"name": "h100", "gpuType": "H100-80GB", "nodeSelector": {"zone": "b"}}]},
    ],
)
def test_cluster_edits_change_the_cluster_hash(change: dict[str, Any]) -> None:
    before, after = rayservice_of(minimal_doc()), rayservice_of(minimal_doc(**change))
    assert (
        before["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
        != after["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    )


def test_pvc_source_mounts_the_claim_read_only() -> None:
    rs = rayservice_of(
        minimal_doc(model={"preset": "k2-think", "source": "pvc://weights/k2/think"})
    )
    assert llm_config(rs)["model_loading_config"]["model_source"] == "/mnt/models/weights/k2/think"
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
    } in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"mountPath": "/mnt/models/weights", "name": "models", "readOnly": True} in mounts


def test_object_store_source_and_credentials() -> None:
    rs = rayservice_of(
        minimal_doc(
            model={
                "preset": "k2-think",
                "source": "s3://bucket/k2",
                "credentialsSecret": "s3-creds",
            }
        )
    )
    assert llm_config(rs)["model_loading_config"]["model_source"] == {
        "bucket_uri": "s3://bucket/k2"
    }
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_extra_args_pass_through_and_reasoning_parser_can_be_off() -> None:
    rs = rayservice_of(
        minimal_doc(engine={"extraArgs": {"enable_chunked_prefill": True}, "reasoningParser": ""})
    )
    kwargs = llm_config(rs)["engine_kwargs"]
    assert kwargs["enable_chunked_prefill"] is True
    assert "reasoning_parser" not in kwargs


def test_suspend_reaches_the_ray_cluster_without_reshaping_it() -> None:
    assert _cluster(minimal_doc(suspend=True))["suspend"] is True
    # Explicit false: KubeRay resumes a suspended cluster only on `suspend: false`.
    assert _cluster(minimal_doc())["suspend"] is False
    on, off = rayservice_of(minimal_doc(suspend=True)), rayservice_of(minimal_doc())
    assert (
        on["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
        == off["metadata"]["annotations"][CLUSTER_HASH_ANNOTATION]
    )


def test_graceful_shutdown_outlives_serve_drain() -> None:
    rs = rayservice_of(minimal_doc(serving={"gracefulShutdownSeconds": 900}))
    assert llm_options(rs)["graceful_shutdown_timeout_s"] == 900
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 930


@pytest.mark.parametrize(
    ("quantity", "factor", "expected"),
    [("8", 4, "32"), ("64Gi", 4, "256Gi"), ("500m", 3, "1500m"), ("1.5", 2, "3")],
)
def test_multiply_quantity(quantity: str, factor: int, expected: str) -> None:
    assert multiply_quantity(quantity, factor) == expected


def test_offline_render_has_no_owner_reference() -> None:
    doc = minimal_doc()
    spec = parse_spec(doc["spec"])
    children = build_children(spec, plan_deployment(spec, "demo"), name="demo", namespace="x")
    assert all("ownerReferences" not in child["metadata"] for child in children)


RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def test_groups_never_set_resources_twice(example_name: str) -> None:
    """KubeRay (validateRayGroupResources) refuses a group with resources in both places."""
    cluster = rayservice_of(load_example(example_name))["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        in_params = any(group["rayStartParams"].get(k) for k in RAY_START_RESOURCE_PARAMS)
        assert not (in_params and group.get("resources")), group.get("groupName", "head")


def test_warm_replicas_become_the_worker_groups_minimum() -> None:
    """The Ray autoscaler keeps a group's minReplicas (its min_worker_nodes) whatever Serve
    wants: the floor's pods and the warm ones start with the cluster and stay."""
    pools = [
        {"name": "h200", "gpuType": "H200-141GB", "gpusPerNode": 8, "warmReplicas": 1},
        {"name": "h100", "gpuType": "H100-80GB", "gpusPerNode": 8},
    ]
    doc = minimal_doc(
        pools=pools,
        parallelism={"tensor": 4},
        autoscaling={"minReplicas": 1, "maxReplicas": 8},
    )
    h200, h100 = gpu_groups(rayservice_of(doc)["spec"]["rayClusterConfig"])
    assert (h200["replicas"], h200["minReplicas"]) == (2, 2)  # 1 floor + 1 warm, TP=4 per pod
    assert h200["maxReplicas"] >= 8
    assert (h100["replicas"], h100["minReplicas"]) == (0, 0)
