"""Kueue admission: labels on the RayService, Kueue's Workload folded into our status."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from k2think_operator.api.kueue import (
    ADMITTED,
    DEACTIVATED,
    ELASTIC_ANNOTATION,
    EVICTED,
    PREEMPTED,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    QUEUED,
    QueueView,
    admitted_condition,
    queue_events,
    queue_status,
    read_queue,
    view_from_status,
    workload_activation,
)
from k2think_operator.api.spec import InvalidSpec, parse_spec
from k2think_operator.deployment.controller import (
    DeploymentReconciler,
    decide,
    is_subset,
    needs_apply,
)
from k2think_operator.deployment.status import Observation, build_status
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render import build_children
from k2think_operator.runtime.events import Event
from tests.conftest import minimal_doc
from tests.test_reconcile import RecordingKube

QUEUED_DOC = minimal_doc(
    scheduling={"queueName": "tenant-a", "priorityClassName": "production"},
    autoscaling={"minReplicas": 1, "maxReplicas": 4},
)


def cond(kind: str, status: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason,
            "message": message}  # fmt: skip


def workload(
    *conditions: dict[str, Any],
    name: str = "rayservice-demo-1a2b3",
    cq: str | None = None,
    active: bool | None = None,
    created: str = "2026-12-01T10:00:00Z",
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if cq:
        status["admission"] = {"clusterQueue": cq, "podSetAssignments": []}
    spec: dict[str, Any] = {"queueName": "tenant-a"}
    if active is not None:
        spec["active"] = active
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": spec,
        "status": status,
    }


# --- rendering ---------------------------------------------------------------------------------


def rendered(doc: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(doc["spec"])
    child = build_children(spec, plan_deployment(spec, "demo"), name="demo", namespace="ns")[0]
    return child


def test_queued_rayservice_carries_kueue_labels_and_leaves_suspend_to_kueue() -> None:
    child = rendered(QUEUED_DOC)
    labels = child["metadata"]["labels"]
    assert labels[QUEUE_LABEL] == "tenant-a" and labels[PRIORITY_LABEL] == "production"
    # The operator always runs Ray's in-tree autoscaler: Kueue admits that only as an elastic job.
    assert child["metadata"]["annotations"][ELASTIC_ANNOTATION] == "true"
    assert child["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert "suspend" not in child["spec"]["rayClusterConfig"]
    for template in [child["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]] + [
        g["template"] for g in child["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ]:
        assert "schedulingGates" not in template["spec"]


def test_unqueued_rayservice_is_unchanged() -> None:
    child = rendered(minimal_doc())
    assert not any(k.startswith("kueue.x-k8s.io/") for k in child["metadata"]["labels"])
    assert not any(k.startswith("kueue.x-k8s.io/") for k in child["metadata"]["annotations"])
    assert child["spec"]["rayClusterConfig"]["suspend"] is False


def test_kueue_suspend_and_gates_are_not_drift() -> None:
    """What Kueue writes on a queued RayService never makes the operator apply again."""
    child = rendered(QUEUED_DOC)
    live = {**child, "spec": {**child["spec"]}}
    cluster = dict(child["spec"]["rayClusterConfig"])
    cluster["suspend"] = True  # Kueue's webhook defaults it; Kueue flips it on admission
    gate = [{"name": "kueue.x-k8s.io/elastic-job"}]
    head = dict(cluster["headGroupSpec"])
    head["template"] = {
        **head["template"],
        "spec": {**head["template"]["spec"], "schedulingGates": gate},
        "metadata": {
            **head["template"]["metadata"],
            "annotations": {"kueue.x-k8s.io/workload-slice-name": "rayservice-demo-1a2b3"},
        },
    }
    cluster["headGroupSpec"] = head
    live["spec"]["rayClusterConfig"] = cluster
    live["metadata"] = {
        **child["metadata"],
        "labels": {**child["metadata"]["labels"], "kueue.x-k8s.io/managed": "true"},
    }
    assert not needs_apply(child, live)
    assert is_subset(child["spec"], live["spec"])


def test_priority_needs_a_queue() -> None:
    with pytest.raises(InvalidSpec, match=r"priorityClassName needs spec\.scheduling\.queueName"):
        parse_spec(minimal_doc(scheduling={"priorityClassName": "production"})["spec"])


def test_kueue_podset_limits_are_refused_with_the_reason() -> None:
    pools = [{"name": f"p{i}", "gpuType": "H100-80GB"} for i in range(8)]
    with pytest.raises(InvalidSpec, match="at most 7 pools: Kueue admits a RayService"):
        parse_spec(minimal_doc(pools=pools, scheduling={"queueName": "q"})["spec"])
    # Without Kueue 8 pools stay fine.
    parse_spec(minimal_doc(pools=pools)["spec"])
    head = [{"name": "head", "gpuType": "H100-80GB"}]
    with pytest.raises(InvalidSpec, match="no pool may be named 'head'"):
        parse_spec(minimal_doc(pools=head, scheduling={"queueName": "q"})["spec"])


def test_invalid_scheduling_never_renders() -> None:
    doc = minimal_doc(scheduling={"priorityClassName": "production"})
    decision = decide(doc)
    assert decision.children == () and decision.problems


# --- Kueue's Workload -> our view ----------------------------------------------------------------

CASES: list[tuple[str, list[dict[str, Any]], str, str]] = [
    ("no workload yet", [], QUEUED, "waiting for Kueue to create the Workload"),
    (
        "pending for quota",
        [
            workload(
                cond(
                    "QuotaReserved",
                    False,
                    "Pending",
                    "couldn't assign flavors to pod set h100: insufficient unused quota for "
                    "nvidia.com/gpu in flavor h100, 8 more needed",
                )
            )
        ],
        QUEUED,
        "insufficient unused quota for nvidia.com/gpu",
    ),
    (
        "admitted",
        [
            workload(
                cond("QuotaReserved", True, "QuotaReserved", "Quota reserved in ClusterQueue a"),
                cond("Admitted", True, "Admitted", "The workload is admitted"),
                cq="tenant-a",
            )
        ],
        ADMITTED,
        "The workload is admitted",
    ),
    (
        "preempted, requeued",
        [
            workload(
                cond("QuotaReserved", False, "Pending", "Preempted to accommodate a workload"),
                cond("Admitted", False, "NoReservation", "The workload has no reservation"),
                cond("Evicted", True, "Preempted", "Preempted to accommodate a workload (UID: x)"),
                cond("Preempted", True, "InClusterQueue", "Preempted to accommodate a workload"),
                cond("Requeued", True, "Preempted", "Preempted to accommodate a workload"),
            )
        ],
        PREEMPTED,
        "Preempted to accommodate a workload; queued again",
    ),
    (
        "evicted for another reason",
        [
            workload(
                cond("Admitted", False, "NoReservation", ""),
                cond("Evicted", True, "ClusterQueueStopped", "The ClusterQueue is stopped"),
            )
        ],
        EVICTED,
        "The ClusterQueue is stopped; queued again",
    ),
    (
        "deactivated by us",
        [
            workload(
                cond("Evicted", True, "Deactivated", "The workload is deactivated"),
                active=False,
            )
        ],
        DEACTIVATED,
        "The workload is deactivated",
    ),
    (
        "reactivated after spec.suspend: waiting again",
        [
            workload(
                cond("QuotaReserved", False, "Pending", "insufficient unused quota"),
                cond("Evicted", True, "Deactivated", "The workload is deactivated"),
                active=True,
            )
        ],
        QUEUED,
        "insufficient unused quota",
    ),
    (
        "re-admitted after preemption",
        [
            workload(
                cond("Admitted", True, "Admitted", "The workload is admitted"),
                cond("Evicted", False, "Preempted", "old"),
                cond("Preempted", False, "InClusterQueue", "old"),
                cq="tenant-a",
            )
        ],
        ADMITTED,
        "admitted",
    ),
    (
        "an elastic slice replaced the old one: the newest unfinished speaks",
        [
            workload(
                cond("Admitted", True, "Admitted", "old slice"),
                cond("Finished", True, "WorkloadSliceReplaced", "replaced"),
                name="old",
                created="2026-12-01T10:00:00Z",
            ),
            workload(
                cond("QuotaReserved", False, "Pending", "insufficient quota for the new slice"),
                name="new",
                created="2026-12-01T10:05:00Z",
            ),
        ],
        QUEUED,
        "insufficient quota for the new slice",
    ),
    (
        "a scale-up slice waits while the admitted one keeps serving",
        [
            workload(
                cond("Admitted", True, "Admitted", "The workload is admitted"),
                name="old",
                created="2026-12-01T10:00:00Z",
                cq="tenant-a",
            ),
            workload(
                cond("QuotaReserved", False, "Pending", "insufficient unused quota"),
                name="new",
                created="2026-12-01T10:05:00Z",
            ),
        ],
        ADMITTED,
        "a scale-up slice (new) waits: insufficient unused quota",
    ),
]


@pytest.mark.parametrize(("label", "workloads", "state", "text"), CASES, ids=[c[0] for c in CASES])
def test_read_queue(label: str, workloads: list[dict[str, Any]], state: str, text: str) -> None:
    view = read_queue("tenant-a", workloads, "campus-tenant-a")
    assert view.state == state, label
    assert text in view.message
    assert view.local_queue == "tenant-a"
    # The ClusterQueue is named before admission (from the LocalQueue) and after (admission).
    assert view.cluster_queue in ("campus-tenant-a", "tenant-a")


def test_admitted_condition_names_the_cluster_queue() -> None:
    view = QueueView(QUEUED, "insufficient unused quota", "tenant-a", "campus-a", "wl")
    c = admitted_condition(view, 3)
    assert c["type"] == "Admitted" and c["status"] == "False" and c["reason"] == "Queued"
    assert c["message"] == "ClusterQueue campus-a: insufficient unused quota"
    assert c["observedGeneration"] == 3
    assert queue_status(view) == {
        "state": "Queued",
        "localQueue": "tenant-a",
        "clusterQueue": "campus-a",
        "workload": "wl",
        "message": "insufficient unused quota",
    }
    assert view_from_status(queue_status(view)) == view


def test_events_on_each_verdict_change() -> None:
    queued = QueueView(QUEUED, "waiting", "q", "cq", "wl")
    admitted = QueueView(ADMITTED, "ok", "q", "cq", "wl")
    preempted = QueueView(PREEMPTED, "Preempted to accommodate a workload", "q", "cq", "wl")
    assert queue_events(None, queued) == [Event.normal("Queued", "waiting")]
    assert queue_events(queue_status(queued), queued) == []
    assert queue_events(queue_status(queued), admitted) == [
        Event.normal("Admitted", "Kueue admitted the RayService by ClusterQueue cq")
    ]
    assert queue_events(queue_status(admitted), preempted) == [
        Event.warn("Preempted", "Preempted to accommodate a workload")
    ]
    assert queue_events(queue_status(preempted), admitted)[0].reason == "Resumed"


def test_spec_suspend_deactivates_the_workload_and_resume_reactivates_it() -> None:
    running = QueueView(ADMITTED, "ok", "q", "cq", "wl", active=True)
    assert workload_activation(running, suspended=True) == ("wl", False)
    assert workload_activation(running, suspended=False) is None
    stopped = QueueView(DEACTIVATED, "deactivated", "q", "cq", "wl", active=False)
    assert workload_activation(stopped, suspended=False) == ("wl", True)
    assert workload_activation(stopped, suspended=True) is None
    assert workload_activation(QueueView(QUEUED, "", "q"), suspended=True) is None


# --- our status ------------------------------------------------------------------------------------


def test_waiting_for_quota_is_queued_not_degraded() -> None:
    spec = parse_spec(QUEUED_DOC["spec"])
    view = QueueView(QUEUED, "insufficient unused quota for nvidia.com/gpu", "tenant-a", "cq-a")
    obs = Observation(
        generation=1, plan=plan_deployment(spec, "demo"), name="demo", namespace="ns", queue=view
    )
    status = build_status(obs, None, "2026-12-01T10:00:00Z")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Queued"
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Ready"]["reason"] == "Queued"
    assert "ClusterQueue cq-a" in by_type["Ready"]["message"]
    assert by_type["Admitted"]["status"] == "False"
    assert status["queue"]["state"] == "Queued"
    # Admitted: the condition flips, the phase goes back to the RayService's own story.
    admitted = QueueView(ADMITTED, "The workload is admitted", "tenant-a", "cq-a", "wl")
    obs2 = Observation(
        generation=1,
        plan=plan_deployment(spec, "demo"),
        name="demo",
        namespace="ns",
        queue=admitted,
    )
    status2 = build_status(obs2, status, "2026-12-01T10:01:00Z")
    by_type2 = {c["type"]: c for c in status2["conditions"]}
    assert by_type2["Admitted"]["status"] == "True"
    assert by_type2["Admitted"]["lastTransitionTime"] == "2026-12-01T10:01:00Z"
    assert status2["phase"] == "Deploying"


def test_unqueued_status_has_no_admitted_condition() -> None:
    spec = parse_spec(minimal_doc()["spec"])
    obs = Observation(generation=1, plan=plan_deployment(spec, "demo"), name="demo", namespace="n")
    status = build_status(obs, None, "2026-12-01T10:00:00Z")
    assert "Admitted" not in {c["type"] for c in status["conditions"]}
    assert "queue" not in status


# --- the reconcile sequence with Kueue (an in-memory API) ----------------------------------------


class KueueKube(RecordingKube):
    """RecordingKube plus Kueue's Workloads and LocalQueues."""

    def __init__(self) -> None:
        super().__init__()
        self.workloads: list[dict[str, Any]] = []
        self.activations: list[tuple[str, bool]] = []

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = await super().apply(obj)
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.objects[key]["metadata"]["uid"] = "rs-uid"
        return {**stored, "metadata": {**stored["metadata"], "uid": "rs-uid"}}

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]] | None:
        assert job_uid == "rs-uid"
        return copy.deepcopy(self.workloads)

    async def local_queue_target(self, namespace: str, name: str) -> str | None:
        return "tenant-a-cq"

    async def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        self.activations.append((name, active))


async def test_reconcile_reports_kueue_and_deactivates_on_suspend() -> None:
    kube = KueueKube()
    reconciler = DeploymentReconciler(kube)
    doc = copy.deepcopy(QUEUED_DOC)
    doc["metadata"]["generation"] = 1
    try:
        queued = await reconciler.converge(doc)
        assert queued.applied and "suspend" not in kube.applies[0]["spec"]["rayClusterConfig"]
        assert queued.status["phase"] == "Queued"
        assert queued.status["queue"]["clusterQueue"] == "tenant-a-cq"
        assert ("Queued" in [e.reason for e in queued.events]) and not queued.retry_reason

        kube.workloads = [
            workload(
                cond("Admitted", True, "Admitted", "The workload is admitted"), cq="tenant-a-cq"
            )
        ]
        doc["status"] = queued.status
        admitted = await reconciler.converge(doc)
        assert not admitted.applied  # Kueue's side of the RayService is not drift
        assert {c["type"]: c["status"] for c in admitted.status["conditions"]}["Admitted"] == "True"
        assert [e.reason for e in admitted.events] == ["Admitted"]

        doc = copy.deepcopy(doc)
        doc["spec"]["suspend"] = True
        doc["metadata"]["generation"] = 2
        doc["status"] = admitted.status
        await reconciler.converge(doc)
        assert kube.activations == [("rayservice-demo-1a2b3", False)]
        assert "suspend" not in kube.applies[-1]["spec"]["rayClusterConfig"]
    finally:
        reconciler.forget(("team-a", "demo"))
