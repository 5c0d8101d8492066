"""Reconcile sequencing with an in-memory stand-in for our own ``Kube`` facade.

These tests pin the operator's decisions (when to apply, when to write status, what an invalid
spec may touch). What the API server does with our writes is proven in e2e/ against a real one.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from k2think_operator.deployment.cluster import ApplyRejected, KubeApi, KubeRayMissing
from k2think_operator.deployment.controller import (
    ApplyFailure,
    DeploymentReconciler,
    apply_children,
    decide,
    is_subset,
    needs_apply,
    previous_apply_failure,
)
from k2think_operator.runtime.controller import Controller, RetryLater
from k2think_operator.runtime.kube import TransientApiError
from tests.conftest import minimal_doc


class RecordingKube(KubeApi):
    """Stores applied objects and status patches in dicts; nothing more (a ``KubeApi``)."""

    def __init__(self, *, kuberay: bool = True) -> None:
        self.kuberay = kuberay
        self.unreachable = False
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.applies: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.supporting: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.supporting_writes: list[tuple[str, str]] = []
        self.refuse_supporting: str | None = None
        self.caches: dict[tuple[str, str], dict[str, Any]] = {}

    async def get_modelcache(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.caches.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.kuberay:
            raise KubeRayMissing("the RayService API is not available")
        if self.unreachable:
            raise TransientApiError("RayService: no answer from the API server")
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if not self.kuberay:
            raise KubeRayMissing("the RayService API is not available")
        self.applies.append(copy.deepcopy(dict(obj)))
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["resourceVersion"] = str(len(self.applies))
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        self.status_patches.append(copy.deepcopy(dict(status)))
        return None

    async def list_deployments(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        pass

    async def dry_run(self, obj: Mapping[str, Any]) -> None:
        """The API server's dry run admits everything here (``DryRunRefusingKube`` refuses)."""

    async def apply_namespaced(self, obj: Mapping[str, Any]) -> None:
        if self.refuse_supporting:
            raise ApplyRejected(self.refuse_supporting)
        meta = obj["metadata"]
        self.supporting[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(dict(obj))
        self.supporting_writes.append((obj["kind"], meta["name"]))

    async def create_secret_if_absent(
        self, obj: Mapping[str, Any], generated: Mapping[str, str]
    ) -> bool:
        if self.refuse_supporting:
            raise ApplyRejected(self.refuse_supporting)
        meta = obj["metadata"]
        key = ("Secret", meta["namespace"], meta["name"])
        self.supporting_writes.append(("Secret", meta["name"]))
        if key in self.supporting:
            return False
        self.supporting[key] = {**copy.deepcopy(obj), "stringData": dict(generated)}
        return True


def with_status(doc: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["status"] = {k: v for k, v in status.items() if v is not None}
    doc["metadata"]["generation"] = 1
    return doc


async def test_valid_spec_applies_once_then_idles() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    first = await reconciler.converge(doc)
    assert first.applied and len(kube.applies) == 1 and first.wrote_status
    assert kube.applies[0]["kind"] == "RayService"
    settled = with_status(doc, first.status)
    second = await reconciler.converge(settled)
    assert not second.applied and not second.wrote_status
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1


class SlowKube(RecordingKube):
    """Applies take a moment; records how many were in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            return await super().apply(obj)
        finally:
            self.in_flight -= 1


class DictSources:
    """The controller's ``Sources`` over plain dicts (kopf's indexes in the operator)."""

    def __init__(self, *bodies: Mapping[str, Any]) -> None:
        self.bodies = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}
        self.rayservices: dict[tuple[str, str], Mapping[str, Any]] = {}

    def deployment(self, key: tuple[str, str]) -> Mapping[str, Any] | None:
        return self.bodies.get(key)

    def rayservice(self, key: tuple[str, str]) -> Mapping[str, Any] | None:
        return self.rayservices.get(key)

    def pods(self, key: tuple[str, str]) -> list[Any]:
        return []


async def test_a_burst_of_deployments_is_reconciled_a_few_at_a_time() -> None:
    # A burst must not render (and hold in memory) every deployment at once; each one is still
    # reconciled: the runtime's workers bound it.
    kube = SlowKube()
    docs = []
    for i in range(12):
        doc = with_status(minimal_doc(), {})
        doc["metadata"]["name"] = f"burst-{i}"
        docs.append(doc)
    reconciler = DeploymentReconciler(kube, DictSources(*docs))
    controller: Controller[tuple[str, str]] = Controller("test", reconciler.reconcile, workers=3)
    controller.start()
    for doc in docs:
        controller.enqueue(("team-a", doc["metadata"]["name"]))
    await asyncio.wait_for(controller.settle(), timeout=10)
    await controller.stop()
    assert len(kube.applies) == 12
    assert kube.most_in_flight == 3


async def test_invalid_spec_never_touches_the_rayservice() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    good = with_status(minimal_doc(), {})
    outcome = await reconciler.converge(good)
    before = copy.deepcopy(kube.objects)
    bad = with_status(minimal_doc(parallelism={"tensor": 3}), outcome.status)
    bad["metadata"]["generation"] = 2
    result = await reconciler.converge(bad)
    assert result.invalid and not result.applied
    assert kube.objects == before and len(kube.applies) == 1
    conds = {c["type"]: c for c in result.status["conditions"]}
    assert conds["InvalidSpec"]["status"] == "True"
    assert "tensor=3 does not divide the 40 attention heads" in conds["InvalidSpec"]["message"]
    assert result.status["plan"] == outcome.status["plan"]  # the running plan stays visible
    assert any(e.warning and e.reason == "InvalidSpec" for e in result.events)


async def test_drift_is_repaired() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    outcome = await reconciler.converge(doc)
    live = kube.objects[("team-a", "demo")]
    live["spec"]["serveConfigV2"] = "applications: []\n"  # someone edited a field we own
    repaired = await reconciler.converge(with_status(doc, outcome.status))
    assert repaired.applied
    assert kube.objects[("team-a", "demo")]["spec"]["serveConfigV2"] != "applications: []\n"
    del kube.objects[("team-a", "demo")]  # someone deleted it
    recreated = await reconciler.converge(with_status(doc, repaired.status))
    assert recreated.applied and ("team-a", "demo") in kube.objects


async def test_missing_kuberay_is_a_condition_and_a_retry() -> None:
    kube = RecordingKube(kuberay=False)
    reconciler = DeploymentReconciler(kube)
    outcome = await reconciler.converge(with_status(minimal_doc(), {}))
    assert outcome.retry_reason and "not available" in outcome.retry_reason
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "KubeRayMissing"


async def test_a_failed_read_of_the_rayservice_leaves_status_alone() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    settled = with_status(doc, (await reconciler.converge(doc)).status)
    kube.unreachable = True
    outcome = await reconciler.converge(settled)
    assert outcome.retry_reason and "no answer" in outcome.retry_reason
    assert not outcome.applied and not outcome.wrote_status
    assert outcome.status == settled["status"] and len(kube.status_patches) == 1


async def test_cluster_reshape_is_announced() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    outcome = await reconciler.converge(doc)
    changed = with_status(minimal_doc(parallelism={"tensor": 8}), outcome.status)
    result = await reconciler.converge(changed)
    reasons = [e.reason for e in result.events]
    assert "NewRayCluster" in reasons and "Planned" in reasons


async def test_a_new_deployment_tells_its_token_and_plan_in_its_created_event() -> None:
    """One Event for "created, with its token, for this layout" (issue #20: Events were a third
    of the operator's API calls in a burst); warnings keep their own."""
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    outcome = await reconciler.converge(doc)
    reasons = [e.reason for e in outcome.events]
    assert "Planned" not in reasons and "RayTokenCreated" not in reasons
    (created,) = [e for e in outcome.events if e.reason == "Created"]
    explanation = outcome.status["plan"]["explanation"]
    assert created.message == (
        "applied RayService demo; created Secret demo-ray-token with a new Ray token; "
        f"plan: {explanation}"
    )
    # The token Secret deleted by hand and created again is told on its own.
    kube.supporting.pop(("Secret", "team-a", "demo-ray-token"))
    again = await reconciler.converge(with_status(doc, outcome.status), None, resync=True)
    assert "RayTokenCreated" in [e.reason for e in again.events], again.events
    # Told once: the same plan seen again (an older body) is not told on its own later.
    again = await reconciler.converge(with_status(doc, {}))
    assert "Planned" not in [e.reason for e in again.events]


def test_decide_is_pure_and_deterministic() -> None:
    doc = minimal_doc()
    assert decide(doc) == decide(copy.deepcopy(doc))
    bad = decide(minimal_doc(pools=[]))
    assert bad.problems and bad.children == ()


@pytest.mark.parametrize(
    ("desired", "live", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 2, "d": 3}]}}, True),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
        ({"a": 1}, {"a": "1"}, False),
        ({"a": 1}, {}, False),
    ],
)
def test_is_subset(desired: Any, live: Any, expected: bool) -> None:
    assert is_subset(desired, live) is expected


def test_needs_apply_checks_owner_references() -> None:
    child = decide(minimal_doc()).children[0]
    live = copy.deepcopy(child)
    assert not needs_apply(child, live)
    live["metadata"]["ownerReferences"] = []
    assert needs_apply(child, live)
    assert needs_apply(child, None)


class RejectingKube(RecordingKube):
    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        raise ApplyRejected("the API server refused the RayService: denied by policy")


async def test_apply_step_reports_a_rejection_as_a_typed_failure() -> None:
    result = await apply_children(RejectingKube(), decide(minimal_doc()), None)
    assert not result.applied and result.live is None
    assert result.failure == ApplyFailure(
        "ApplyRejected", "the API server refused the RayService: denied by policy"
    )
    assert result.retry == result.failure.message


async def test_status_step_keeps_a_standing_apply_failure_while_the_child_is_absent() -> None:
    kube = RejectingKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    outcome = await reconciler.converge(doc)
    failure = previous_apply_failure(outcome.status)
    assert failure is not None and failure.reason == "ApplyRejected"
    # Recomputed without an apply, the status still says Degraded/ApplyRejected: nothing to write.
    assert not (
        await reconciler.refresh_status(with_status(doc, outcome.status), None, ())
    ).wrote_status


class VersionedKube(RecordingKube):
    """Status writes answer with a resourceVersion, as the API server does."""

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        await super().patch_status(namespace, name, status)
        return "100"


async def test_the_copy_of_a_written_status_goes_once_the_body_includes_it() -> None:
    # The status of our last write is kept only until an event's body includes it: a thousand
    # deployments must not each keep a second copy of their status.
    kube = VersionedKube()
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    doc["metadata"]["resourceVersion"] = "99"
    outcome = await reconciler.converge(doc)
    state = reconciler._states[(doc["metadata"]["namespace"], doc["metadata"]["name"])]
    assert outcome.wrote_status and state.written is not None
    assert state.unseen_write(doc) == outcome.status  # an older body: the copy stays
    assert state.written is not None
    caught_up = with_status(doc, outcome.status)
    caught_up["metadata"]["resourceVersion"] = "100"
    assert state.unseen_write(caught_up) is None
    assert state.written is None


async def test_reconcile_by_key_drops_the_written_copy_when_our_write_comes_back() -> None:
    # Our status write's own event changes no input (no pass runs): the copy must go anyway.
    kube = VersionedKube()
    doc = with_status(minimal_doc(), {})
    doc["metadata"]["resourceVersion"] = "99"
    sources = DictSources(doc)
    reconciler = DeploymentReconciler(kube, sources)
    key = ("team-a", "demo")
    await reconciler.reconcile(key)
    state = reconciler._states[key]
    assert state.written is not None and kube.status_patches
    came_back = with_status(doc, kube.status_patches[-1])
    came_back["metadata"]["resourceVersion"] = "100"
    sources.bodies[key] = came_back
    patches = len(kube.status_patches)
    await reconciler.reconcile(key)
    assert state.written is None
    assert len(kube.status_patches) == patches  # and nothing was written for it


async def test_reconcile_by_key_does_nothing_when_nothing_changed() -> None:
    # Our own status write comes back as an event of the same generation: no decide, no write.
    kube = RecordingKube()
    doc = with_status(minimal_doc(), {})
    sources = DictSources(doc)
    reconciler = DeploymentReconciler(kube, sources)
    key = ("team-a", "demo")
    assert (await reconciler.reconcile(key)).requeue_after is None
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1
    sources.bodies[key] = with_status(doc, kube.status_patches[-1])
    await reconciler.reconcile(key)
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1
    # The RayService moved (KubeRay wrote its status): the whole sequence runs again.
    moved = {**kube.objects[key], "status": {"serviceStatus": "Running"}}
    moved["metadata"] = {**kube.objects[key]["metadata"], "resourceVersion": "9"}
    sources.rayservices[key] = moved
    await reconciler.reconcile(key)
    assert len(kube.applies) == 1 and reconciler.state(key).inputs is not None


async def test_the_watch_event_of_our_own_apply_runs_nothing_again() -> None:
    """The RayService we just created comes back from the watch with the resourceVersion our
    apply answered: no second pass (decide, render, status) for it. Issue #20: that second
    pass was a third of the operator's CPU in a burst of new deployments. A later version
    (KubeRay's status, a deletion) still runs the sequence."""
    kube = VersionedRayServiceKube()
    doc = with_status(minimal_doc(), {})
    sources = DictSources(doc)
    reconciler = DeploymentReconciler(kube, sources)
    passes: list[str] = []
    converge = reconciler.converge

    async def counted(body: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        passes.append("converge")
        return await converge(body, *args, **kwargs)

    reconciler.converge = counted  # type: ignore[method-assign]
    key = ("team-a", "demo")
    await reconciler.reconcile(key)
    assert passes == ["converge"] and len(kube.applies) == 1
    sources.bodies[key] = with_status(doc, kube.status_patches[-1])  # our status write
    sources.rayservices[key] = copy.deepcopy(kube.objects[key])  # our apply, from the watch
    await reconciler.reconcile(key)
    assert passes == ["converge"] and reconciler.state(key).applied is None
    moved = copy.deepcopy(kube.objects[key])
    moved["status"] = {"serviceStatus": "Running"}
    moved["metadata"]["resourceVersion"] = "1000"
    sources.rayservices[key] = moved  # KubeRay wrote its status
    await reconciler.reconcile(key)
    assert passes == ["converge", "converge"] and len(kube.applies) == 1
    del sources.rayservices[key]  # someone deleted it: created again
    await reconciler.reconcile(key)
    assert passes == ["converge"] * 3 and len(kube.applies) == 2


class VersionedRayServiceKube(RecordingKube):
    """Applies answer with a resourceVersion above everything stored before, as etcd's does."""

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = await super().apply(obj)
        stored["metadata"]["resourceVersion"] = str(100 + len(self.applies))
        self.objects[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = stored
        return copy.deepcopy(stored)


async def test_reconcile_by_key_retries_a_failure_and_forgets_a_deleted_deployment() -> None:
    kube = RecordingKube(kuberay=False)
    sources = DictSources(with_status(minimal_doc(), {}))
    reconciler = DeploymentReconciler(kube, sources)
    key = ("team-a", "demo")
    with pytest.raises(RetryLater, match="RayService"):
        await reconciler.reconcile(key)
    assert reconciler.state(key).dirty  # the retry runs the whole sequence
    kube.kuberay = True
    await reconciler.reconcile(key)
    assert len(kube.applies) == 1 and not reconciler.state(key).dirty
    del sources.bodies[key]
    await reconciler.reconcile(key)
    assert key not in reconciler._states


class DryRunRefusingKube(RecordingKube):
    """The API server's dry run refuses the Pod KubeRay would create for the head (an admission
    policy, say); everything else is admitted. Records what was dry-run."""

    def __init__(self) -> None:
        super().__init__()
        self.dry_runs: list[str] = []
        self.refuse = True

    async def dry_run(self, obj: Mapping[str, Any]) -> None:
        self.dry_runs.append(f"{obj['kind']} {obj['metadata']['name']}")
        if (
            self.refuse
            and obj["kind"] == "Pod"
            and obj["metadata"]["labels"].get("ray.io/node-type") == "head"
        ):
            raise ApplyRejected('pods "x" is forbidden: violates PodSecurity "restricted"')


async def test_a_child_the_dry_run_refuses_leaves_what_runs_untouched() -> None:
    """#22: the refused edit writes nothing (no supporting object, no RayService) and says why
    in Degraded (ChildRejected); a pod event does not clear it; the next good spec applies."""
    kube = DryRunRefusingKube()
    kube.refuse = False
    reconciler = DeploymentReconciler(kube, dry_run_pods=True)
    doc = with_status(minimal_doc(), {})
    first = await reconciler.converge(doc)
    # A create: the Pods are dry-run (KubeRay would meet their refusal), the RayService is not.
    assert first.applied and kube.dry_runs and all(d.startswith("Pod ") for d in kube.dry_runs)
    running = copy.deepcopy(kube.objects)
    writes = len(kube.supporting_writes)
    created = len(kube.dry_runs)

    kube.refuse = True
    edited = with_status(minimal_doc(replicas=3), first.status)
    edited["metadata"]["generation"] = 2
    refused = await reconciler.converge(edited)
    assert kube.dry_runs[created].startswith("RayService ")
    assert not refused.applied and kube.objects == running
    assert len(kube.supporting_writes) == writes
    failure = previous_apply_failure(refused.status)
    assert failure is not None and failure.reason == "ChildRejected"
    assert "PodSecurity" in failure.message and "nothing was applied" in failure.message
    live = kube.objects[("team-a", "demo")]
    seen = with_status(edited, refused.status)
    seen["metadata"]["generation"] = 2
    again = await reconciler.refresh_status(seen, live, ())
    assert not again.wrote_status  # still Degraded/ChildRejected

    kube.refuse = False
    fixed = with_status(minimal_doc(replicas=2), refused.status)
    fixed["metadata"]["generation"] = 3
    healed = await reconciler.converge(fixed)
    assert healed.applied and previous_apply_failure(healed.status) is None


async def test_no_dry_run_when_nothing_is_applied() -> None:
    kube = DryRunRefusingKube()
    kube.refuse = False
    reconciler = DeploymentReconciler(kube)
    doc = with_status(minimal_doc(), {})
    first = await reconciler.converge(doc)
    count = len(kube.dry_runs)
    await reconciler.converge(with_status(doc, first.status))
    assert len(kube.dry_runs) == count


async def test_pods_are_dry_run_only_when_opted_in() -> None:
    """The Pod dry run needs RBAC create on pods: off by default (least privilege), so a
    default reconciler dry-runs the RayService alone (before an update)."""
    kube = DryRunRefusingKube()
    kube.refuse = False
    reconciler = DeploymentReconciler(kube)
    first = await reconciler.converge(with_status(minimal_doc(), {}))
    edited = with_status(minimal_doc(replicas=3), first.status)
    edited["metadata"]["generation"] = 2
    assert first.applied and (await reconciler.converge(edited)).applied
    assert kube.dry_runs and all(d.startswith("RayService ") for d in kube.dry_runs)


async def test_only_an_update_of_the_rayservice_is_dry_run() -> None:
    """A RayService that does not exist yet is not dry-run: nothing runs that a refusal must
    protect, and its create is the same check (issue #20: the dry run was 8 s of the API
    server's CPU at 1,000 new deployments). An update is dry-run before anything is written."""
    kube = DryRunRefusingKube()
    kube.refuse = False
    reconciler = DeploymentReconciler(kube)
    first = await reconciler.converge(with_status(minimal_doc(), {}))
    assert first.applied and kube.dry_runs == []
    edited = with_status(minimal_doc(replicas=3), first.status)
    edited["metadata"]["generation"] = 2
    assert (await reconciler.converge(edited)).applied
    assert kube.dry_runs == ["RayService demo"]


async def test_a_refused_create_is_reported_by_its_apply() -> None:
    """Without a dry run, the create's own refusal is the report: Degraded/ApplyRejected with
    the server's words, no RayService stored, retried."""
    kube = RejectingKube()
    outcome = await DeploymentReconciler(kube).converge(with_status(minimal_doc(), {}))
    failure = previous_apply_failure(outcome.status)
    assert not outcome.applied and not kube.objects and outcome.retry_reason
    assert failure is not None and failure.reason == "ApplyRejected"
    assert "denied by policy" in failure.message
