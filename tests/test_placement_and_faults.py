"""Known defects of issue 13: GPU vendor mixing, unbound GPU pools, status writes that failed.

Each test names the defect it pins. The scheduler's side of the node binding (a pod with the
rendered affinity really lands only on nodes with the product label) is proven in e2e/ against
the real kube-scheduler with KWOK nodes labelled like GPU feature discovery does.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from k2think_operator.api.catalog import ACCELERATORS
from k2think_operator.api.spec import INGRESS_GROUP, InvalidSpec, parse_spec
from k2think_operator.deployment.controller import DeploymentReconciler
from k2think_operator.runtime.controller import Controller
from k2think_operator.runtime.kube import TransientApiError
from k2think_operator.runtime.workqueue import Backoff
from tests.conftest import minimal_doc
from tests.test_reconcile import DictSources, RecordingKube
from tests.test_render import rayservice_of

ROCM_IMAGE = "registry.example/ray-llm:2.60.0-py311-rocm"


def _workers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pools' worker groups (not the ingress CPU group every GPU cluster also carries)."""
    groups: list[dict[str, Any]] = rayservice_of(doc)["spec"]["rayClusterConfig"][
        "workerGroupSpecs"
    ]
    return [g for g in groups if g["groupName"] != INGRESS_GROUP]


# --- pools that mix GPU vendors ----------------------------------------------------------------


def test_mixed_gpu_vendors_are_refused_with_the_pools_named() -> None:
    pools = [
        {"name": "blackwell", "gpuType": "B200-180GB"},
        {"name": "instinct", "gpuType": "MI300X-192GB"},
    ]
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(minimal_doc(pools=pools, ray={"image": ROCM_IMAGE})["spec"])
    [problem] = caught.value.problems
    assert problem.field == "spec"
    assert "pools mix GPU vendors" in problem.message
    assert "amd.com: instinct (MI300X-192GB)" in problem.message
    assert "nvidia.com: blackwell (B200-180GB)" in problem.message
    assert "one K2ThinkDeployment per vendor" in problem.message


def test_amd_pool_with_the_default_cuda_image_is_refused() -> None:
    doc = minimal_doc(pools=[{"name": "amd", "gpuType": "MI300X-192GB"}])
    with pytest.raises(InvalidSpec, match=r"need a ROCm build.*set spec\.ray\.image"):
        parse_spec(doc["spec"])
    ok = minimal_doc(pools=[{"name": "amd", "gpuType": "MI300X-192GB"}], ray={"image": ROCM_IMAGE})
    [group] = _workers(ok)
    container = group["template"]["spec"]["containers"][0]
    assert container["image"] == ROCM_IMAGE
    assert container["resources"]["requests"]["amd.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in container["resources"]["requests"]


def test_two_nvidia_types_still_share_one_deployment() -> None:
    pools = [
        {"name": "h200", "gpuType": "H200-141GB"},
        {"name": "b200", "gpuType": "B200-180GB"},
    ]
    assert len(_workers(minimal_doc(pools=pools))) == 2


# --- worker pods bound to their GPU model --------------------------------------------------------


def _required_terms(group: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = group["template"]["spec"]["affinity"]["nodeAffinity"]
    terms: list[dict[str, Any]] = affinity["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    return terms


@pytest.mark.parametrize("gpu_type", sorted(n for n, a in ACCELERATORS.items() if not a.is_cpu))
def test_every_gpu_pool_is_bound_to_its_product_label(gpu_type: str) -> None:
    accelerator = ACCELERATORS[gpu_type]
    image = {"image": ROCM_IMAGE} if accelerator.vendor == "amd.com" else {}
    doc = minimal_doc(
        model={"preset": "k2-think", "maxModelLen": 4096},
        pools=[{"name": "p", "gpuType": gpu_type}],
        ray=image,
    )
    [group] = _workers(doc)
    [term] = _required_terms(group)
    [expression] = term["matchExpressions"]
    label = (
        "amd.com/gpu.product-name" if accelerator.vendor == "amd.com" else "nvidia.com/gpu.product"
    )
    assert expression == {"key": label, "operator": "In", "values": list(accelerator.gpu_products)}


def test_a100_40gb_pool_never_matches_an_h100_or_80gb_node() -> None:
    """The reported defect: an A100-40GB pool with tolerations only ran on an H100 node."""
    doc = minimal_doc(
        model={"preset": "k2-think", "maxModelLen": 8192},
        pools=[
            {
                "name": "a100",
                "gpuType": "A100-40GB",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            }
        ],
    )
    [group] = _workers(doc)
    values = _required_terms(group)[0]["matchExpressions"][0]["values"]
    assert values == ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"]
    for other in ("A100-80GB", "H100-80GB", "H200-141GB"):
        assert not set(values) & set(ACCELERATORS[other].gpu_products)


def test_binding_is_anded_into_every_user_term_and_keeps_preferences() -> None:
    user_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {"matchExpressions": [{"key": "x", "operator": "Exists"}]},
                }
            ],
        }
    }
    pool = {"name": "h100", "gpuType": "H100-80GB", "affinity": copy.deepcopy(user_affinity)}
    [group] = _workers(minimal_doc(pools=[pool]))
    terms = _required_terms(group)
    assert [len(t["matchExpressions"]) for t in terms] == [2, 2]
    assert all(t["matchExpressions"][1]["key"] == "nvidia.com/gpu.product" for t in terms)
    node = group["template"]["spec"]["affinity"]["nodeAffinity"]
    assert (
        node["preferredDuringSchedulingIgnoredDuringExecution"]
        == user_affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    )


PRODUCT = "nvidia.com/gpu.product"
H100_PRODUCTS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"]


def _required(*expressions: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": list(expressions)}]
            }
        }
    }


def _preferred(*expressions: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": list(expressions)}}
            ]
        }
    }


def _requirement_in(spec: dict[str, Any]) -> bool:
    node = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    terms = (node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms"
    ) or []
    wanted = {"key": PRODUCT, "operator": "In", "values": H100_PRODUCTS}
    return bool(terms) and all(wanted in (t.get("matchExpressions") or []) for t in terms)


@pytest.mark.parametrize(
    "pool_extra",
    [
        {"nodeSelector": {PRODUCT: "NVIDIA-H100-PCIe"}},
        {"affinity": _required({"key": PRODUCT, "operator": "In", "values": ["NVIDIA-H100-PCIe"]})},
    ],
    ids=["product-selector-subset", "required-in-subset"],
)
def test_a_pool_that_pins_a_subset_of_its_boards_gets_nothing_added(
    pool_extra: dict[str, Any],
) -> None:
    pool = {"name": "h100", "gpuType": "H100-80GB", **pool_extra}
    [group] = _workers(minimal_doc(pools=[pool]))
    spec = group["template"]["spec"]
    assert spec.get("affinity") == pool_extra.get("affinity")
    assert not _requirement_in(spec) or "affinity" in pool_extra


@pytest.mark.parametrize(
    "pool_extra",
    [
        {"nodeSelector": {"nvidia.com/gpu.memory": "81559"}},
        {
            "affinity": _required(
                {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["80000"]}
            )
        },
        {
            "affinity": _preferred(
                {"key": PRODUCT, "operator": "In", "values": ["NVIDIA-A100-SXM4-40GB"]}
            )
        },
        {
            "affinity": _required(
                {"key": PRODUCT, "operator": "NotIn", "values": ["NVIDIA-H100-PCIe"]}
            )
        },
        {"affinity": _preferred({"key": PRODUCT, "operator": "In", "values": H100_PRODUCTS})},
    ],
    ids=["memory-selector", "memory-affinity", "preferred-other-board", "notin", "preferred-own"],
)
def test_mentioning_the_product_label_does_not_disable_the_binding(
    pool_extra: dict[str, Any],
) -> None:
    """#22: a preferred term, a NotIn or a memory label used to skip the binding."""
    pool = {"name": "h100", "gpuType": "H100-80GB", **pool_extra}
    [group] = _workers(minimal_doc(pools=[pool]))
    assert _requirement_in(group["template"]["spec"]), group["template"]["spec"].get("affinity")


@pytest.mark.parametrize(
    ("pool_extra", "field"),
    [
        (
            {"nodeSelector": {PRODUCT: "NVIDIA-A100-SXM4-40GB"}},
            f"spec.pools[0].nodeSelector.{PRODUCT}",
        ),
        (
            {
                "affinity": _required(
                    {"key": PRODUCT, "operator": "In", "values": ["NVIDIA-A100-SXM4-40GB"]}
                )
            },
            "spec.pools[0].affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0]",
        ),
        (
            {"affinity": _required({"key": PRODUCT, "operator": "NotIn", "values": H100_PRODUCTS})},
            "spec.pools[0].affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0]",
        ),
    ],
    ids=["selector-other-board", "required-other-board", "excludes-every-board"],
)
def test_a_pool_contradicting_its_gpu_type_is_refused_with_the_field(
    pool_extra: dict[str, Any], field: str
) -> None:
    from k2think_operator.deployment.decide import decide

    pool = {"name": "h100", "gpuType": "H100-80GB", **pool_extra}
    decision = decide(minimal_doc(pools=[pool]))
    assert decision.children == ()
    assert any(p.startswith(f"{field}: ") for p in decision.problems), decision.problems


def test_cpu_profile_pool_is_not_bound() -> None:
    from tests.conftest import CPU_POOL, TINY_MODEL

    [group] = _workers(minimal_doc(model=TINY_MODEL, pools=[CPU_POOL]))
    assert "affinity" not in group["template"]["spec"]


# --- a failed status write is retried ----------------------------------------------------------


class FlakyStatusKube(RecordingKube):
    """Answers the first ``failures`` status patches with a 503, as an overloaded API server."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0
        self.patched = asyncio.Event()

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientApiError("K2ThinkDeployment status: HTTP 503: the server is busy")
        await super().patch_status(namespace, name, status)
        self.patched.set()


async def test_failed_status_write_is_retried_without_a_new_event() -> None:
    kube = FlakyStatusKube(failures=2)
    doc = minimal_doc()
    reconciler = DeploymentReconciler(kube, DictSources(doc))
    outcome = await reconciler.converge(doc, ())
    assert outcome.applied and not outcome.wrote_status and outcome.retry_reason
    controller: Controller[tuple[str, str]] = Controller(
        "test", reconciler.reconcile, backoff=Backoff(base=0.02, cap=0.1)
    )
    controller.start()
    try:
        controller.enqueue(("team-a", "demo"))  # the runtime's retry of the failed pass
        # No event, no resync: the retries alone write the status (after a second 503).
        await asyncio.wait_for(kube.patched.wait(), timeout=5)
    finally:
        await controller.stop()
    assert kube.attempts == 3
    assert kube.status_patches[-1]["observedGeneration"] == 0
    assert len(kube.applies) == 1  # the retry did not re-apply an unchanged RayService


async def test_forget_cancels_a_pending_retry() -> None:
    kube = FlakyStatusKube(failures=5)
    doc = minimal_doc()
    reconciler = DeploymentReconciler(kube, DictSources(doc))
    controller: Controller[tuple[str, str]] = Controller(
        "test", reconciler.reconcile, backoff=Backoff(base=0.5, cap=1.0)
    )
    controller.start()
    try:
        controller.enqueue(("team-a", "demo"))
        await asyncio.wait_for(controller.settle(), timeout=5)
        assert not controller.queue.idle  # the retry's timer is armed
        controller.forget(("team-a", "demo"))
        reconciler.forget(("team-a", "demo"))
        assert controller.queue.idle and not reconciler._states
    finally:
        await controller.stop()
