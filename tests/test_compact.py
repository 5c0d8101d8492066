"""What the indexes keep of an object (``compact.pack``): the same values, read back.

The operator reads a RayService from kopf's index (or from its own last apply) to compare it
with what it renders (``needs_apply``) and to report its status; these tests pin that a packed
copy answers both exactly as the object it was made from, and that the reconciler reading
packed copies applies exactly when it did with plain ones.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from k2think_operator.app import registrations as handlers
from k2think_operator.deployment.controller import DeploymentReconciler, decide, needs_apply
from k2think_operator.deployment.reference import REFERENCE, reference_json
from k2think_operator.deployment.status import read_rayservice
from k2think_operator.runtime.compact import (
    BULKY_ANNOTATIONS,
    Packed,
    pack,
    preset_dictionary,
    slim,
)
from tests.conftest import load_example, minimal_doc
from tests.test_reconcile import RecordingKube, with_status


def live_rayservice(doc: dict[str, Any]) -> dict[str, Any]:
    """The rendered RayService as the API server returns it (server fields, KubeRay status)."""
    live = copy.deepcopy(decide(doc).children[0])
    live["metadata"].update(
        uid="7a2c0d1e-0000-4000-8000-000000000001",
        generation=1,
        resourceVersion="4242",
        creationTimestamp="2026-12-02T05:00:00Z",
        managedFields=[{"manager": "k2think-operator", "operation": "Apply", "fieldsV1": {}}],
    )
    live["metadata"]["annotations"][BULKY_ANNOTATIONS[0]] = json.dumps(live["spec"])
    live["spec"]["excludeHeadPodFromServeSvc"] = False  # a field we do not render
    live["status"] = {
        "serviceStatus": "Running",
        "numServeEndpoints": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
        "activeServiceStatus": {
            "rayClusterName": "demo-raycluster-abcde",
            "applicationStatuses": {"llm": {"status": "RUNNING", "serveDeploymentStatuses": {}}},
            "rayClusterStatus": {"desiredGPU": "8", "availableWorkerReplicas": 1, "ratio": 0.5},
        },
        "pendingServiceStatus": {},
    }
    # As the watch delivers it: parsed from JSON.
    parsed: dict[str, Any] = json.loads(json.dumps(live))
    return parsed


@pytest.fixture(params=["minimal", "k2think.yaml", "k2think-multipool.yaml"])
def doc(request: pytest.FixtureRequest) -> dict[str, Any]:
    doc = minimal_doc() if request.param == "minimal" else load_example(request.param)
    doc["metadata"].setdefault("uid", "6f1c1f0e-0000-4000-8000-000000000001")
    return doc


@pytest.fixture
def live(doc: dict[str, Any]) -> dict[str, Any]:
    return live_rayservice(doc)


def test_a_packed_object_reads_back_as_its_slimmed_copy(live: dict[str, Any]) -> None:
    packed = pack(live)
    assert dict(packed) == slim(live)
    assert packed == slim(live) and slim(live) == packed
    assert list(packed) == list(live)  # the object's order of keys
    assert "managedFields" not in packed["metadata"]
    assert not set(BULKY_ANNOTATIONS) & set(packed["metadata"]["annotations"])
    assert packed["spec"] == live["spec"] and packed.get("status") == live["status"]
    assert packed.packed_size() < len(json.dumps({k: live[k] for k in ("spec", "status")}))


def test_reading_a_packed_field_gives_a_copy(live: dict[str, Any]) -> None:
    packed = pack(live)
    spec = packed["spec"]
    spec["rayClusterConfig"] = {}
    assert packed["spec"] == live["spec"]


def test_packed_copies_compare_without_decoding(live: dict[str, Any]) -> None:
    assert pack(live) == pack(copy.deepcopy(live))
    moved = copy.deepcopy(live)
    moved["status"]["numServeEndpoints"] = 2
    assert pack(live) != pack(moved)
    assert pack(live) != slim(moved)


def test_needs_apply_and_status_read_a_packed_copy_as_the_object(
    doc: dict[str, Any], live: dict[str, Any]
) -> None:
    want = decide(doc).children[0]
    assert needs_apply(want, pack(live)) is needs_apply(want, live) is False
    assert read_rayservice(pack(live)) == read_rayservice(live)
    for path, value, drift in [
        (("spec", "serveConfigV2"), "applications: []\n", True),  # a field we own
        (("spec", "excludeHeadPodFromServeSvc"), True, False),  # one we do not own
        (("metadata", "labels", "app.kubernetes.io/part-of"), "someone-else", True),
        (("metadata", "ownerReferences"), [], True),
        (("status", "serviceStatus"), "", False),
    ]:
        changed = copy.deepcopy(live)
        target = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert needs_apply(want, pack(changed)) is needs_apply(want, changed) is drift, path


def test_only_maps_and_lists_besides_metadata_are_packed() -> None:
    packed = pack({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": {}})
    assert repr(packed).count("bytes packed") == 0
    packed = pack({"kind": "X", "metadata": {}, "data": {"a": "b"}, "items": [1]})
    assert repr(packed).count("bytes packed") == 2 and packed["items"] == [1]


async def test_the_index_functions_keep_packed_copies(live: dict[str, Any]) -> None:
    index: Any = handlers.rayservices  # kopf's decorator types it as its callback protocol
    stored = await index(meta=live["metadata"], body=live)
    assert list(stored) == [(live["metadata"]["namespace"], live["metadata"]["name"])]
    (value,) = stored.values()
    assert isinstance(value, Packed) and value == slim(live)


class IndexView:
    """The controller's ``Sources`` over a dict standing in for kopf's RayService index."""

    def __init__(self, rayservices: dict[tuple[str, str], Mapping[str, Any]]) -> None:
        self.rayservices = rayservices

    def deployment(self, key: tuple[str, str]) -> Mapping[str, Any] | None:
        return None

    def rayservice(self, key: tuple[str, str]) -> Mapping[str, Any] | None:
        return self.rayservices.get(key)

    def pods(self, key: tuple[str, str]) -> list[Any]:
        return []


async def test_the_reconciler_reads_packed_rayservices_as_plain_ones() -> None:
    kube = RecordingKube()
    watched: dict[tuple[str, str], Mapping[str, Any]] = {}
    reconciler = DeploymentReconciler(kube, IndexView(watched))  # nothing delivered yet
    doc = with_status(minimal_doc(), {})
    first = await reconciler.converge(doc)
    assert first.applied and len(kube.applies) == 1
    # Our own apply (kept packed) stands in for the watch: nothing to apply again.
    doc = with_status(doc, first.status)
    assert not (await reconciler.converge(doc)).applied
    # The watch delivers it (packed, as kopf's index keeps it).
    key = ("team-a", "demo")
    watched[key] = pack(kube.objects[key])
    assert not (await reconciler.converge(doc)).applied and len(kube.applies) == 1
    # Someone edits a field we own: the packed copy shows the drift and it is repaired.
    drifted = copy.deepcopy(kube.objects[key])
    drifted["spec"]["serveConfigV2"] = "applications: []\n"
    drifted["metadata"]["resourceVersion"] = "99"
    watched[key] = pack(drifted)
    assert (await reconciler.converge(doc)).applied and len(kube.applies) == 2


def test_the_reference_renders_a_rayservice() -> None:
    # zlib's preset dictionary (``reference_json``): a reference that stopped rendering would
    # still pack correctly, only larger.
    decision = decide(REFERENCE)
    assert not decision.problems and decision.children[0]["kind"] == "RayService"
    assert json.dumps(decision.children[0]["spec"], separators=(",", ":")) in (
        reference_json().decode()
    )


def test_the_operator_packs_with_its_own_reference() -> None:
    # The composition root (app/registrations.py) hands the deployment's reference to the
    # domain-free packer; a process packing without it would pack several times larger.
    assert preset_dictionary() == reference_json()
    spec = decide(REFERENCE).children[0]["spec"]
    assert pack({"metadata": {}, "spec": spec}).packed_size() < 400
