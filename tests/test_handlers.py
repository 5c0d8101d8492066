"""The K2ThinkDeployment event handler: each generation reconciled once, retries on our timer.

kopf's create/update handlers stored their progress and a retry's backoff on the object (a PATCH
per handled change, and a delay that survived a restart); the event handler stores nothing, so
these tests pin what replaced it: which events reconcile, and that a failure or a wait is tried
again on the operator's own cadence.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import kopf

from k2think_operator import handlers
from k2think_operator.reconcile import Reconciler
from tests.conftest import minimal_doc
from tests.test_reconcile import RecordingKube, with_status


def index(*bodies: Mapping[str, Any]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    return {(b["metadata"]["namespace"], b["metadata"]["name"]): [b] for b in bodies}


def memo_for(reconciler: Reconciler) -> kopf.Memo:
    memo = kopf.Memo()
    memo.reconciler = reconciler
    return memo


async def send(memo: kopf.Memo, body: Mapping[str, Any], *, type: str | None = "MODIFIED") -> None:
    meta = body["metadata"]
    handler: Any = handlers.deployment_event  # kopf's decorator types it as its callback protocol
    await handler(
        type=type,
        name=meta["name"],
        namespace=meta["namespace"],
        memo=memo,
        deployments=index(body),
        rayservices={},
        ray_pods={},
    )
    await memo.reconciler.settle()  # the reconcile runs in the background


async def test_each_generation_is_reconciled_once_and_our_status_write_costs_nothing() -> None:
    kube = RecordingKube()
    reconciler = Reconciler(kube)
    memo = memo_for(reconciler)
    doc = with_status(minimal_doc(), {})
    await send(memo, doc, type=None)  # the initial listing
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1
    # Our own status write comes back as MODIFIED with the same generation: nothing to do.
    await send(memo, with_status(doc, {"observedGeneration": 1}))
    assert len(kube.applies) == 1 and len(kube.status_patches) == 1
    # A new generation (a spec edit) is reconciled.
    edited = copy.deepcopy(doc)
    edited["metadata"]["generation"] = 2
    edited["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4}
    await send(memo, edited)
    assert len(kube.applies) == 2


async def test_a_failed_reconcile_is_retried_on_our_cadence() -> None:
    kube = RecordingKube(kuberay=False)
    reconciler = Reconciler(kube, status_retry_seconds=0.05)
    memo = memo_for(reconciler)
    doc = with_status(minimal_doc(), {})
    await send(memo, doc, type="ADDED")
    assert kube.applies == []
    kube.kuberay = True  # KubeRay installed: the armed retry applies without another event
    for _ in range(100):
        if kube.applies:
            break
        await asyncio.sleep(0.02)
    assert len(kube.applies) == 1


async def test_an_invalid_spec_waits_for_the_next_change() -> None:
    kube = RecordingKube()
    reconciler = Reconciler(kube, status_retry_seconds=0.01)
    memo = memo_for(reconciler)
    doc = with_status(minimal_doc(parallelism={"tensor": 3}), {})
    await send(memo, doc, type=None)
    written = len(kube.status_patches)
    await asyncio.sleep(0.1)
    assert kube.applies == [] and len(kube.status_patches) == written


async def test_a_deleted_deployment_is_forgotten() -> None:
    kube = RecordingKube()
    reconciler = Reconciler(kube)
    memo = memo_for(reconciler)
    doc = with_status(minimal_doc(), {})
    await send(memo, doc, type=None)
    assert reconciler._states
    await send(memo, doc, type="DELETED")
    assert not reconciler._states


class VersionedKube(RecordingKube):
    """Status writes return a growing resourceVersion, as the API server does."""

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        await super().patch_status(namespace, name, status)
        return str(100 + len(self.status_patches))


async def test_a_body_older_than_our_status_write_causes_no_second_write() -> None:
    kube = VersionedKube()
    reconciler = Reconciler(kube)
    stale = with_status(minimal_doc(), {})
    stale["metadata"]["resourceVersion"] = "7"
    await reconciler.reconcile(stale)
    assert len(kube.status_patches) == 1
    # An event handler reconciles again with the body from before our write (e.g. the index's
    # copy when our RayService's event arrives first): nothing new to write.
    await asyncio.sleep(1.1)  # a later second: a recomputed lastTransitionTime would differ
    await reconciler.reconcile(stale)
    assert len(kube.status_patches) == 1
