"""The watches feed keys to the runtime's queue, and the deployment controller does the rest:
each generation reconciled once, our own status write costs nothing, failures retried with
backoff, an invalid spec waits, a deleted deployment is forgotten.

kopf's create/update handlers stored their progress and a retry's backoff on the object (a PATCH
per handled change, and a delay that survived a restart); the event handlers store nothing, so
these tests pin what replaced them. The kopf handlers are called as kopf calls them, with index
handles; the API is an in-memory stand-in (what the API server does is proven in e2e/).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf
import pytest

from k2think_operator.app import registrations
from k2think_operator.app.config import OperatorConfig
from k2think_operator.app.operator import Operator
from k2think_operator.render.meta import FIELD_MANAGER
from k2think_operator.runtime.credentials import Credentials
from k2think_operator.runtime.kopf_adapter import NoDiffBase
from k2think_operator.runtime.kube import Kube, RestClient
from k2think_operator.runtime.workqueue import Backoff
from tests.conftest import minimal_doc
from tests.test_reconcile import RecordingKube, with_status


def index(*bodies: Mapping[str, Any]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    return {(b["metadata"]["namespace"], b["metadata"]["name"]): [b] for b in bodies}


class World:
    """An operator on a stand-in API, and the indexes kopf would keep."""

    def __init__(self, kube: RecordingKube) -> None:
        self.kube = kube
        nowhere = Kube(RestClient(Credentials(server="https://127.0.0.1:9")), FIELD_MANAGER)
        self.operator = Operator(
            nowhere, OperatorConfig(), cluster=kube, backoff=Backoff(base=0.05, cap=0.2)
        )
        self.memo = kopf.Memo()
        self.memo.operator = self.operator
        self.deployments: dict[tuple[str, str], list[Mapping[str, Any]]] = {}

    async def send(self, body: Mapping[str, Any], *, type: str | None = "MODIFIED") -> None:
        """A K2ThinkDeployment event, as kopf delivers it (the index updated first)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if type == "DELETED":
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = [body]
        handler: Any = registrations.deployment_event  # typed by kopf as its callback protocol
        await handler(
            type=type,
            name=meta["name"],
            namespace=meta["namespace"],
            memo=self.memo,
            deployments=self.deployments,
            rayservices={},
            ray_pods={},
        )
        await self.operator.deployment_controller.settle()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(RecordingKube())
    w.operator.deployment_controller.start()
    yield w
    await w.operator.deployment_controller.stop()
    await w.operator.kube.close()


async def test_each_generation_is_reconciled_once_and_our_status_write_costs_nothing(
    world: World,
) -> None:
    kube = world.kube
    doc = with_status(minimal_doc(), {})
    await world.send(doc, type=None)  # the initial listing
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1
    # Our own status write comes back as MODIFIED with the same generation: nothing to do.
    await world.send(with_status(doc, {"observedGeneration": 1}))
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1
    # A new generation (a spec edit) is reconciled.
    edited = copy.deepcopy(doc)
    edited["metadata"]["generation"] = 2
    edited["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4}
    await world.send(edited)
    assert len(kube.applies) == 2


async def test_a_failed_reconcile_is_retried_with_backoff(world: World) -> None:
    kube = world.kube
    kube.kuberay = False
    await world.send(with_status(minimal_doc(), {}), type="ADDED")
    assert kube.applies == []
    key = ("team-a", "demo")
    assert world.operator.deployment_controller.queue.failures(key) >= 1
    kube.kuberay = True  # KubeRay installed: the armed retry applies without another event
    for _ in range(200):
        if kube.applies:
            break
        await asyncio.sleep(0.01)
    assert len(kube.applies) == 1
    await world.operator.deployment_controller.settle()
    assert world.operator.deployment_controller.queue.failures(key) == 0  # success forgets


async def test_an_invalid_spec_waits_for_the_next_change(world: World) -> None:
    kube = world.kube
    await world.send(with_status(minimal_doc(parallelism={"tensor": 3}), {}), type=None)
    written = len(kube.status_patches)
    assert written == 1 and world.operator.deployment_controller.queue.idle  # no retry armed
    await asyncio.sleep(0.3)  # longer than the backoff cap: nothing happens meanwhile
    assert kube.applies == [] and len(kube.status_patches) == written


async def test_a_deleted_deployment_is_forgotten(world: World) -> None:
    doc = with_status(minimal_doc(), {})
    await world.send(doc, type=None)
    assert world.operator.deployments._states
    await world.send(doc, type="DELETED")
    assert not world.operator.deployments._states
    assert world.operator.deployment_controller.queue.idle


async def test_the_first_event_binds_the_indexes_the_controller_reads(world: World) -> None:
    doc = with_status(minimal_doc(), {})
    await world.send(doc, type=None)
    sources = world.operator.sources
    assert sources.deployment(("team-a", "demo")) is doc
    assert sources.rayservice(("team-a", "demo")) is None and sources.pods(("x", "y")) == []


def test_kopf_builds_no_diff_base() -> None:
    """No handler reads kopf's diff base (no on.create/on.update), yet kopf builds one per event:
    a deep copy of the body (issue #20: ~0.5 ms of CPU per new deployment)."""
    settings = kopf.OperatorSettings()
    registrations.configure(settings, OperatorConfig())
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"apiVersion": "v1", "kind": "X", "metadata": {}, "spec": {"a": [1]}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    # What makes it right: no handler that would read a diff base is registered.
    registry = kopf.get_default_registry()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()


def test_kopf_lets_an_idle_object_worker_go_soon() -> None:
    """kopf's worker for an object holds the object's last raw event while it idles: ours go
    after half a second, not kopf's 5 s (issue #20: the peak memory of a burst)."""
    settings = kopf.OperatorSettings()
    assert settings.queueing.idle_timeout == 5.0  # kopf's default, which we change
    registrations.configure(settings, OperatorConfig())
    assert settings.queueing.idle_timeout == registrations.WATCH_WORKER_IDLE_SECONDS == 0.5
