"""Spill-over on the scheduler's verdict (deployment/spill.py): when a full pool's worker group is
capped on the live RayCluster, when the cap is lifted, and the JSON patch that says so.

The patches are applied with ``jsonpatch`` (an RFC 6902 implementation; kopf depends on it), so
the ``test`` operations are checked as the API server checks them: a concurrent rewrite of the
group makes the whole patch fail.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from typing import Any

import jsonpatch
import pytest

from k2think_operator.api.spec import parse_spec
from k2think_operator.deployment.cluster import ApplyRejected
from k2think_operator.deployment.controller import DeploymentReconciler
from k2think_operator.deployment.spill import (
    CAPS_ANNOTATION,
    Cap,
    Group,
    SpillPlan,
    bound_workers,
    decide_spill,
    json_patch,
    read_caps,
    read_groups,
    rendered_max,
    spill_wanted,
)
from k2think_operator.deployment.status import (
    Observation,
    PodSummary,
    build_status,
    spill_condition,
)
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.runtime.kube import TransientApiError
from tests.conftest import load_example
from tests.test_reconcile import RecordingKube

NOW = 10_000.0
GRACE = 60.0
RETRY = 600.0
POOLS = ("h200", "h100")
RENDERED = {"h200": 2, "h100": 4}
CLUSTER = "svc-raycluster-abc"


def worker(
    name: str,
    pool: str,
    *,
    node: str | None = None,
    unschedulable_for: float | None = None,
    phase: str | None = None,
    cluster: str | None = CLUSTER,
) -> PodSummary:
    """A worker pod: bound to ``node``, or Unschedulable for ``unschedulable_for`` seconds."""
    waiting = unschedulable_for is not None
    return PodSummary(
        name=name,
        component="ray-worker",
        pool=pool,
        phase=phase or ("Running" if node else "Pending"),
        ready=bool(node),
        unschedulable_message="0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
        if waiting
        else None,
        unschedulable_since=NOW - unschedulable_for if unschedulable_for is not None else None,
        node=node,
        cluster=cluster,
    )


def groups(h200: int | None = 2, h100: int | None = 4) -> list[Group]:
    return [Group(0, "h200", h200), Group(1, "h100", h100)]


def decide(
    pods: list[PodSummary],
    live: list[Group] | None = None,
    caps: dict[str, Cap] | None = None,
    pools: tuple[str, ...] = POOLS,
) -> SpillPlan:
    return decide_spill(
        pools,
        RENDERED,
        live if live is not None else groups(),
        caps or {},
        pods,
        cluster=CLUSTER,
        now=NOW,
        grace=GRACE,
        retry_seconds=RETRY,
    )


FULL_H200 = [worker("a", "h200", node="n1"), worker("b", "h200", unschedulable_for=61)]


def test_a_pool_unschedulable_past_the_grace_is_capped_at_its_bound_workers() -> None:
    plan = decide(FULL_H200)
    (change,) = plan.changes
    assert (change.index, change.group, change.expected, change.new, change.why) == (
        0,
        "h200",
        2,
        1,
        "cap",
    )
    assert "new replicas go to h100" in change.message
    assert "Insufficient nvidia.com/gpu" in change.message
    assert plan.capped == {"h200": Cap(1, NOW)}
    assert plan.recheck == pytest.approx(RETRY)


@pytest.mark.parametrize(
    ("title", "pods"),
    [
        (
            "within the grace",
            [worker("a", "h200", node="n1"), worker("b", "h200", unschedulable_for=59)],
        ),
        (
            "bound but slow to start (image pull): the long give-up stays",
            [
                worker("a", "h200", node="n1"),
                worker("b", "h200", node="n2", phase="Pending"),
            ],
        ),
        (
            "another cluster's pod (an upgrade)",
            [worker("b", "h200", unschedulable_for=61, cluster="old")],
        ),
        ("the last pool: nowhere to spill", [worker("b", "h100", unschedulable_for=61)]),
        ("a failed pod", [worker("b", "h200", unschedulable_for=61, phase="Failed")]),
    ],
)
def test_no_cap(title: str, pods: list[PodSummary]) -> None:
    plan = decide(pods)
    assert plan.changes == (), title
    assert plan.capped == {}, title


def test_within_the_grace_it_looks_again_when_the_pod_crosses_it() -> None:
    plan = decide([worker("b", "h200", unschedulable_for=45)])
    assert plan.recheck == pytest.approx(15)


def test_a_pool_at_its_own_max_is_not_capped_further() -> None:
    pods = [
        worker("a", "h200", node="n1"),
        worker("b", "h200", node="n2"),
        worker("c", "h200", unschedulable_for=120),
    ]
    assert decide(pods).changes == ()


def test_a_single_pool_is_never_capped() -> None:
    plan = decide([worker("b", "h200", unschedulable_for=600)], pools=("h200",))
    assert plan.changes == () and plan.capped == {}


def test_the_cap_holds_once_the_autoscaler_removed_the_pending_pod() -> None:
    capped = {"h200": Cap(1, NOW - 100)}
    plan = decide([worker("a", "h200", node="n1")], live=groups(h200=1), caps=capped)
    assert plan.changes == ()
    assert plan.capped == capped
    assert plan.recheck == pytest.approx(RETRY - 100)


@pytest.mark.parametrize(
    ("title", "pods", "since", "why"),
    [
        ("a worker left the pool (scale-in, a failure): room", [], NOW - 100, "holds 0"),
        (
            "a pod found room (capacity returned)",
            [worker("a", "h200", node="n1"), worker("b", "h200", node="n9")],
            NOW - 100,
            "holds 2",
        ),
        (
            "capped for the retry time: tried again",
            [worker("a", "h200", node="n1")],
            NOW - RETRY,
            "tried again",
        ),
    ],
)
def test_the_cap_is_lifted(title: str, pods: list[PodSummary], since: float, why: str) -> None:
    plan = decide(pods, live=groups(h200=1), caps={"h200": Cap(1, since)})
    (change,) = plan.changes
    assert (change.why, change.expected, change.new) == ("lift", 1, 2), title
    assert why in change.message, title
    assert plan.capped == {}, title


def test_still_full_with_fewer_workers_the_cap_follows_and_keeps_its_start() -> None:
    capped = {"h200": Cap(1, NOW - 100)}
    plan = decide([worker("b", "h200", unschedulable_for=90)], live=groups(h200=1), caps=capped)
    (change,) = plan.changes
    assert (change.why, change.expected, change.new) == ("cap", 1, 0)
    assert plan.capped == {"h200": Cap(0, NOW - 100)}


def test_a_cap_kuberay_replaced_is_decided_again_from_scratch() -> None:
    # KubeRay rewrote the spec (and the annotations): the record no longer matches the live max.
    plan = decide(FULL_H200, live=groups(h200=2), caps={"h200": Cap(1, NOW - 500)})
    (change,) = plan.changes
    assert (change.why, change.new) == ("cap", 1)
    assert plan.capped == {"h200": Cap(1, NOW)}


def test_a_max_only_change_of_the_rayservice_reaches_the_live_cluster() -> None:
    plan = decide([], live=groups(h200=2, h100=3))
    (change,) = plan.changes
    assert (change.group, change.why, change.expected, change.new) == ("h100", "sync", 3, 4)


def test_a_group_missing_from_either_side_is_left_alone() -> None:
    assert decide(FULL_H200, live=[Group(0, "h100", 4)]).changes == ()


# --- reading the cluster and the JSON patch -------------------------------------------------


def raycluster(h200: int = 2, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": CLUSTER}
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "metadata": meta,
        "spec": {
            "workerGroupSpecs": [
                {"groupName": "h200", "replicas": 2, "minReplicas": 0, "maxReplicas": h200},
                {"groupName": "h100", "replicas": 0, "minReplicas": 0, "maxReplicas": 4},
            ]
        },
    }


def apply(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), ops)
    return patched


@pytest.mark.parametrize("annotations", [None, {"ray.io/kuberay-version": "v1.6.2"}])
def test_the_patch_caps_records_and_reads_back(annotations: dict[str, str] | None) -> None:
    live = raycluster(annotations=annotations)
    plan = decide(FULL_H200, live=read_groups(live), caps=read_caps(live))
    patched = apply(live, json_patch(plan, read_caps(live), bool(annotations)))
    assert patched["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 1
    assert patched["spec"]["workerGroupSpecs"][0]["replicas"] == 2  # the autoscaler's field
    assert read_caps(patched) == {"h200": Cap(1, NOW)}
    assert json.loads(patched["metadata"]["annotations"][CAPS_ANNOTATION]) == {
        "h200": {"cap": 1, "since": NOW}
    }
    if annotations:
        assert patched["metadata"]["annotations"]["ray.io/kuberay-version"] == "v1.6.2"


def test_the_lift_removes_the_record() -> None:
    record = json.dumps({"h200": {"cap": 1, "since": NOW - 100}})
    live = raycluster(h200=1, annotations={CAPS_ANNOTATION: record, "keep": "me"})
    plan = decide([], live=read_groups(live), caps=read_caps(live))
    patched = apply(live, json_patch(plan, read_caps(live), True))
    assert patched["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 2
    assert patched["metadata"]["annotations"] == {"keep": "me"}


def test_nothing_to_change_is_no_patch() -> None:
    record = json.dumps({"h200": {"cap": 1, "since": NOW - 100}})
    live = raycluster(h200=1, annotations={CAPS_ANNOTATION: record})
    pods = [worker("a", "h200", node="n1")]
    plan = decide(pods, live=read_groups(live), caps=read_caps(live))
    assert json_patch(plan, read_caps(live), True) == []


@pytest.mark.parametrize(
    ("title", "rewrite"),
    [
        (
            "KubeRay rewrote the max",
            lambda rc: rc["spec"]["workerGroupSpecs"][0].update(maxReplicas=3),
        ),
        ("the groups moved", lambda rc: rc["spec"]["workerGroupSpecs"].reverse()),
    ],
)
def test_the_patch_fails_whole_when_the_group_changed_since_it_was_read(
    title: str, rewrite: Any
) -> None:
    live = raycluster()
    ops = json_patch(decide(FULL_H200, live=read_groups(live)), {}, False)
    moved = copy.deepcopy(live)
    rewrite(moved)
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(moved, ops)
    assert CAPS_ANNOTATION not in (moved["metadata"].get("annotations") or {}), title


def test_the_autoscalers_own_writes_in_between_do_not_fail_the_patch() -> None:
    live = raycluster()
    ops = json_patch(decide(FULL_H200, live=read_groups(live)), {}, False)
    moved = copy.deepcopy(live)
    moved["spec"]["workerGroupSpecs"][0]["replicas"] = 1
    moved["spec"]["workerGroupSpecs"][0]["scaleStrategy"] = {"workersToDelete": ["b"]}
    assert apply(moved, ops)["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 1


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"h200": {"cap": "x"}}', '{"h200": 3}'])
def test_a_malformed_record_counts_as_none(raw: str) -> None:
    assert read_caps(raycluster(annotations={CAPS_ANNOTATION: raw})) == {}


def test_helpers() -> None:
    assert rendered_max(
        {
            "spec": {
                "rayClusterConfig": {"workerGroupSpecs": [{"groupName": "h200", "maxReplicas": 2}]}
            }
        }
    ) == {"h200": 2}
    assert bound_workers(FULL_H200, "h200") == 1
    assert spill_wanted(POOLS, FULL_H200, NOW, GRACE)
    assert not spill_wanted(POOLS, [worker("b", "h100", unschedulable_for=600)], NOW, GRACE)


# --- the SpillOver condition (status.py) --------------------------------------------------


def test_the_condition_says_which_pool_is_full_and_where_new_replicas_go() -> None:
    doc = load_example("k2think-multipool.yaml")
    plan = plan_deployment(parse_spec(doc["spec"]), "k2think-multipool")
    base = Observation(generation=3, plan=plan, name="m", namespace="ns", now=NOW)
    open_ = spill_condition(base)
    assert (open_["status"], open_["reason"]) == ("False", "PoolsOpen")
    full = spill_condition(replace(base, spill=(("h200", 1),)))
    assert (full["status"], full["reason"], full["observedGeneration"]) == ("True", "PoolFull", 3)
    assert full["message"] == "pool h200 is full at 1 worker pod(s): new replicas go to h100"
    both = spill_condition(replace(base, spill=(("h200", 1), ("h100", 2))))
    assert both["message"].endswith("no pool has room")
    # Informational: the phase and Ready do not move.
    status = build_status(replace(base, spill=(("h200", 1),)), None, "2026-12-06T00:00:00Z")
    assert status["phase"] == build_status(base, None, "2026-12-06T00:00:00Z")["phase"]


# --- the controller's I/O around it (controller.py), on an in-memory API ---------------------


class ClusterKube(RecordingKube):
    """``RecordingKube`` with one RayCluster, JSON-patched as RFC 6902 says."""

    def __init__(self) -> None:
        super().__init__()
        self.clusters: dict[tuple[str, str], dict[str, Any]] = {}
        self.cluster_patches: list[list[dict[str, Any]]] = []
        self.cluster_reads = 0

    async def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.cluster_reads += 1
        found = self.clusters.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def patch_raycluster(
        self, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        self.cluster_patches.append(ops)
        key = (namespace, name)
        self.clusters[key] = apply(self.clusters[key], ops)
        return copy.deepcopy(self.clusters[key])


async def test_the_reconciler_caps_then_lifts_on_the_live_cluster() -> None:
    kube = ClusterKube()
    reconciler = DeploymentReconciler(kube, unschedulable_grace=GRACE, spill_retry_seconds=RETRY)
    doc = load_example("k2think-multipool.yaml")
    doc["metadata"].update(namespace="ns", uid="u1", generation=1)
    outcome = await reconciler.converge(doc)
    key = ("ns", "k2think-multipool")
    rayservice = kube.objects[key]
    rayservice["status"] = {"activeServiceStatus": {"rayClusterName": CLUSTER}}
    groups_ = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    kube.clusters[("ns", CLUSTER)] = {
        "metadata": {"name": CLUSTER, "annotations": {"ray.io/hash": "h"}},
        "spec": {"workerGroupSpecs": copy.deepcopy(groups_)},
    }
    body = {**doc, "status": outcome.status}
    now = time.time()
    unschedulable = replace(
        worker("b", "h200", unschedulable_for=0), unschedulable_since=now - 2 * GRACE
    )

    # Nothing is full: the cluster is not even read.
    quiet = await reconciler.refresh_status(body, rayservice, [worker("a", "h200", node="n1")])
    assert kube.cluster_reads == 0 and kube.cluster_patches == []
    assert _cond(quiet.status, "SpillOver") == ("False", "PoolsOpen")

    full = await reconciler.refresh_status(
        body, rayservice, [worker("a", "h200", node="n1"), unschedulable]
    )
    assert kube.clusters[("ns", CLUSTER)]["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 1
    assert [e.reason for e in full.events] == ["SpilledOver"]
    assert _cond(full.status, "SpillOver") == ("True", "PoolFull")

    # The autoscaler removed the Unschedulable pod: the cap holds, nothing is written.
    held = await reconciler.refresh_status(body, rayservice, [worker("a", "h200", node="n1")])
    assert len(kube.cluster_patches) == 1 and held.events == []
    assert _cond(held.status, "SpillOver") == ("True", "PoolFull")

    # The pool's worker left (scale-in): room again, the RayService's max is back.
    lifted = await reconciler.refresh_status(body, rayservice, [])
    assert [e.reason for e in lifted.events] == ["SpillLifted"]
    cluster = kube.clusters[("ns", CLUSTER)]
    assert cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] == groups_[0]["maxReplicas"]
    assert cluster["metadata"]["annotations"] == {"ray.io/hash": "h"}
    assert _cond(lifted.status, "SpillOver") == ("False", "PoolsOpen")


async def test_a_lost_race_is_a_retry_and_an_upgrade_is_left_alone() -> None:
    kube = ClusterKube()
    reconciler = DeploymentReconciler(kube, unschedulable_grace=GRACE)
    doc = load_example("k2think-multipool.yaml")
    doc["metadata"].update(namespace="ns", uid="u1", generation=1)
    outcome = await reconciler.converge(doc)
    rayservice = kube.objects[("ns", "k2think-multipool")]
    groups_ = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    kube.clusters[("ns", CLUSTER)] = {
        "metadata": {"name": CLUSTER},
        "spec": {"workerGroupSpecs": copy.deepcopy(groups_)},
    }
    body = {**doc, "status": outcome.status}
    pods = [
        worker("a", "h200", node="n1"),
        replace(worker("b", "h200", unschedulable_for=0), unschedulable_since=time.time() - 600),
    ]
    rayservice["status"] = {
        "activeServiceStatus": {"rayClusterName": CLUSTER},
        "pendingServiceStatus": {"rayClusterName": "next"},
    }
    upgrading = await reconciler.refresh_status(body, rayservice, pods)
    assert kube.cluster_reads == 0 and upgrading.retry_reason is None

    rayservice["status"] = {"activeServiceStatus": {"rayClusterName": CLUSTER}}

    async def lose(namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        raise TransientApiError("RayCluster changed since it was read")

    kube.patch_raycluster = lose  # type: ignore[method-assign]
    lost = await reconciler.refresh_status(body, rayservice, pods)
    assert lost.retry_reason and "changed since it was read" in lost.retry_reason
    assert _cond(lost.status, "SpillOver") == ("False", "PoolsOpen")


def _cond(status: dict[str, Any], kind: str) -> tuple[str, str]:
    (found,) = [c for c in status["conditions"] if c["type"] == kind]
    return found["status"], found["reason"]


# --- what Ray's autoscaler v2 does with the cap (its own scheduler, offline) ----------------


def _ray_instances(pool: str, resources: dict[str, float]) -> tuple[Any, Any, Any]:
    """The first pool's worker running a replica (no room left), its refused pod (ALLOCATED, no
    Ray), and that pod once the autoscaler asked KubeRay to delete it (TERMINATING)."""
    from ray.autoscaler.v2.schema import AutoscalerInstance
    from ray.core.generated.autoscaler_pb2 import NodeState  # type: ignore[attr-defined]
    from ray.core.generated.instance_manager_pb2 import (  # type: ignore[attr-defined]
        Instance,
        NodeKind,
    )

    def instance(pod: str, status: Any, node_id: str = "") -> Any:
        return Instance(
            instance_id=f"im-{pod}",
            instance_type=pool,
            status=status,
            node_id=node_id,
            node_kind=NodeKind.WORKER,
            cloud_instance_id=pod,
        )

    running = AutoscalerInstance(
        cloud_instance_id="a-1",
        im_instance=instance("a-1", Instance.RAY_RUNNING, "6e31"),
        ray_node=NodeState(
            node_id=bytes.fromhex("6e31"),
            instance_id="a-1",
            ray_node_type_name=pool,
            total_resources=resources,
            available_resources={k: 0.0 for k in resources},
        ),
    )
    refused = AutoscalerInstance(
        cloud_instance_id="a-2", im_instance=instance("a-2", Instance.ALLOCATED)
    )
    deleting = AutoscalerInstance(
        cloud_instance_id="a-2", im_instance=instance("a-2", Instance.TERMINATING)
    )
    return running, refused, deleting


@pytest.mark.parametrize(
    ("example", "first", "overflow"),
    [("chain", "cpu-a", "cpu-b"), ("k2think-multipool.yaml", "h200", "h100")],
)
def test_rays_scheduler_drops_the_refused_pod_for_the_cap_then_launches_in_the_next_pool(
    example: str, first: str, overflow: str
) -> None:
    """Ray 2.60's ``ResourceDemandScheduler`` on the RayCluster as the cap leaves it (through
    KubeRay's config producer in Ray): the not-yet-running pod is terminated for the group's max
    (``MAX_NUM_NODE_PER_TYPE``), and once it is going the pending replica's gang is launched on
    the next pool, the whole gang (one TP group: ``STRICT_PACK``) on one node of it. Without the
    cap the refused pod keeps the gang (until poolFallbackSeconds). The multipool example is the
    GPU case: Serve LLM's bundles of GPUs with the pinned ``accelerator_type``."""
    from unittest.mock import MagicMock

    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.autoscaler.v2.utils import ResourceRequestUtil
    from ray.core.generated.autoscaler_pb2 import (  # type: ignore[attr-defined]
        GangResourceRequest,
    )
    from ray.core.generated.instance_manager_pb2 import (  # type: ignore[attr-defined]
        TerminationRequest,
    )

    from tests.test_autoscaler_chain import (
        _autoscaling_config,
        _rayservice,
        _replica_bundles,
        _two_cpu_pools,
    )

    rs = _rayservice(_two_cpu_pools() if example == "chain" else load_example(example))
    bundles, strategy = _replica_bundles(rs)
    assert strategy == "STRICT_PACK"
    affinity = ResourceRequestUtil.PlacementConstraintType.AFFINITY
    gang = GangResourceRequest(
        requests=[ResourceRequestUtil.make(b, [(affinity, "_PG_replica", "")]) for b in bundles]
    )
    live = {
        "metadata": {"name": CLUSTER, "annotations": {}},
        "spec": rs["spec"]["rayClusterConfig"],
    }
    pods = [worker("a-1", first, node="n1"), worker("a-2", first, unschedulable_for=61)]
    plan = decide_spill(
        (first, overflow),
        rendered_max(rs),
        read_groups(live),
        {},
        pods,
        cluster=CLUSTER,
        now=NOW,
        grace=GRACE,
        retry_seconds=RETRY,
    )
    capped = apply(live, json_patch(plan, {}, True))
    resources = dict(_autoscaling_config(rs).get_node_type_configs()[first].resources)
    running, refused, deleting = _ray_instances(first, resources)

    def schedule(cluster: dict[str, Any], instances: list[Any]) -> Any:
        config = _autoscaling_config({**rs, "spec": {"rayClusterConfig": cluster["spec"]}})
        request = SchedulingRequest(
            disable_launch_config_check=True,
            node_type_configs=config.get_node_type_configs(),
            max_num_nodes=config.get_max_num_nodes(),
            gang_resource_requests=[gang],
            current_instances=instances,
        )
        return ResourceDemandScheduler(MagicMock()).schedule(request)

    before = schedule(live, [running, refused])
    assert not before.to_launch and not before.to_terminate  # waits on the refused pod

    round1 = schedule(capped, [running, refused])
    assert [(t.instance_id, t.cause) for t in round1.to_terminate] == [
        ("im-a-2", TerminationRequest.Cause.MAX_NUM_NODE_PER_TYPE)
    ]
    round2 = schedule(capped, [running, deleting])
    assert [(launch.instance_type, launch.count) for launch in round2.to_launch] == [(overflow, 1)]
    assert not round2.infeasible_gang_resource_requests


async def test_a_fixed_size_deployment_is_never_capped() -> None:
    """Without Ray's autoscaler KubeRay deletes pods at random down to a lowered max."""
    kube = ClusterKube()
    reconciler = DeploymentReconciler(kube, unschedulable_grace=GRACE)
    doc = load_example("k2think-multipool.yaml")
    doc["metadata"].update(namespace="ns", uid="u1", generation=1)
    del doc["spec"]["autoscaling"]
    doc["spec"]["replicas"] = 3
    outcome = await reconciler.converge(doc)
    rayservice = kube.objects[("ns", "k2think-multipool")]
    rayservice["status"] = {"activeServiceStatus": {"rayClusterName": CLUSTER}}
    kube.clusters[("ns", CLUSTER)] = {
        "metadata": {"name": CLUSTER},
        "spec": {
            "workerGroupSpecs": copy.deepcopy(
                rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
            )
        },
    }
    pods = [
        worker("a", "h200", node="n1"),
        replace(worker("b", "h200", unschedulable_for=0), unschedulable_since=time.time() - 600),
    ]
    result = await reconciler.refresh_status({**doc, "status": outcome.status}, rayservice, pods)
    assert kube.cluster_reads == 0 and kube.cluster_patches == []
    assert _cond(result.status, "SpillOver") == ("False", "PoolsOpen")


async def test_a_restarted_operator_reads_the_cap_back_and_rbac_refusal_turns_spill_off() -> None:
    kube = ClusterKube()
    doc = load_example("k2think-multipool.yaml")
    doc["metadata"].update(namespace="ns", uid="u1", generation=1)
    outcome = await DeploymentReconciler(kube, unschedulable_grace=GRACE).converge(doc)
    rayservice = kube.objects[("ns", "k2think-multipool")]
    rayservice["status"] = {"activeServiceStatus": {"rayClusterName": CLUSTER}}
    groups_ = copy.deepcopy(rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    groups_[0]["maxReplicas"] = 1
    since = time.time() - 100
    kube.clusters[("ns", CLUSTER)] = {
        "metadata": {
            "name": CLUSTER,
            "annotations": {CAPS_ANNOTATION: json.dumps({"h200": {"cap": 1, "since": since}})},
        },
        "spec": {"workerGroupSpecs": groups_},
    }
    said = [
        {**c, "status": "True", "reason": "PoolFull"} if c["type"] == "SpillOver" else c
        for c in outcome.status["conditions"]
    ]
    body = {**doc, "status": {**outcome.status, "conditions": said}}
    # A new process (restart, new leader): nothing is Unschedulable, but the status says a cap
    # is in force, so the cluster is read and the cap kept.
    fresh = DeploymentReconciler(kube, unschedulable_grace=GRACE)
    kept = await fresh.refresh_status(body, rayservice, [worker("a", "h200", node="n1")])
    assert kube.cluster_reads == 1 and kube.cluster_patches == []
    assert _cond(kept.status, "SpillOver") == ("True", "PoolFull")

    async def refuse(namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        raise ApplyRejected("rayclusters.ray.io is forbidden")

    kube.patch_raycluster = refuse  # type: ignore[method-assign]
    # The pool changed (its worker left): a lift is due, and RBAC refuses it: no retry storm.
    refused = await fresh.refresh_status(body, rayservice, [])
    assert refused.retry_reason is None


def test_a_cap_never_goes_below_the_groups_warm_minimum() -> None:
    """A pool too small for its warm pods (it holds 1, its minReplicas is 2): the cap is the
    group's minReplicas, not the bound pods (KubeRay refuses a max below the min), and new
    replicas still go to the next pool."""
    plan = decide_spill(
        POOLS,
        {"h200": 4, "h100": 4},
        [Group(0, "h200", 4, 2), Group(1, "h100", 4)],
        {},
        FULL_H200,
        cluster=CLUSTER,
        now=NOW,
        grace=GRACE,
        retry_seconds=RETRY,
    )
    (change,) = plan.changes
    assert (change.group, change.expected, change.new, change.why) == ("h200", 4, 2, "cap")
    assert read_groups(
        {"spec": {"workerGroupSpecs": [{"groupName": "h200", "minReplicas": 2, "maxReplicas": 4}]}}
    ) == [Group(0, "h200", 4, 2)]


def test_a_changed_warm_minimum_reaches_the_live_cluster() -> None:
    """KubeRay leaves minReplicas out of its hash, as maxReplicas: a warmReplicas change of the
    RayService is carried to the running RayCluster by the same tested patch."""
    plan = decide_spill(
        POOLS,
        RENDERED,
        [Group(0, "h200", 2, 0), Group(1, "h100", 4)],
        {},
        [worker("a", "h200", node="n1")],
        cluster=CLUSTER,
        now=NOW,
        grace=GRACE,
        retry_seconds=RETRY,
        rendered_minimum={"h200": 2, "h100": 0},
    )
    # h200's 0 becomes 2; h100 has none live, its rendered 0 is added.
    assert [(c.group, c.field, c.expected, c.new) for c in plan.changes] == [
        ("h200", "minReplicas", 0, 2),
        ("h100", "minReplicas", None, 0),
    ]
    assert json_patch(plan, {}, annotations_present=False) == [
        {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "h200"},
        {"op": "test", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 0},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 2},
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "h100"},
        {"op": "add", "path": "/spec/workerGroupSpecs/1/minReplicas", "value": 0},
    ]
