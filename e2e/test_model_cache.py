"""The model cache against the real API server, KubeRay and KWOK: a static PV (there is no
provisioner here), the real Job controller running the fill Job, KWOK completing its pod (or
failing it, through KWOK's own chaos stage ``pod-container-running-failed``, labelled on the pod
through ``downloader.podLabels``). What the filler itself does in the pod is proven by the unit
tests and the data-plane suite (``e2e/dataplane/test_cache_serving.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import Cluster
from support import (
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    holds_without_fight,
    items,
    load_example,
)

CACHE = "k2think.dev/cache"
FAIL_STAGE = "pod-container-running-failed.stage.kwok.x-k8s.io"


@pytest.fixture(scope="module")
def operator(cluster: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, ["--all-namespaces"], log_dir / "operator-cache.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def static_pv(cluster: Cluster, ns: str) -> Iterator[str]:
    """A hostPath PV only this test's claim can bind (storage class named after the namespace)."""
    name = f"cache-{ns}"[:63]
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": name,
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/tmp/k2t-e2e-cache/{ns}"},
        },
    }
    apply_doc(cluster, pv)
    yield name
    cluster.kubectl("delete", "pv", name, "--wait=false", check=False)


def cache_doc(ns: str, storage_class: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkModelCache",
        "metadata": {"name": "weights", "namespace": ns},
        "spec": {
            "source": "file:///models/tiny-k2",
            "revision": "v1",
            "storage": {"storageClassName": storage_class, "size": "10Gi"},
            "downloader": {"image": "k2think/fill:e2e", "backoffLimit": 1},
            **spec,
        },
    }


def deployment_doc(ns: str) -> dict[str, Any]:
    doc = load_example("k2think.yaml", namespace=ns)
    doc["spec"]["model"].pop("source")
    doc["spec"]["model"]["cacheRef"] = "weights"
    return doc


def cache(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    return get(cluster, "k2thinkmodelcaches.k2think.dev", "weights", ns)


def rayservice(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    return get(cluster, "rayservices.ray.io", "k2think", ns)


def model_source(rs: dict[str, Any]) -> str:
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return str(
        serve["applications"][0]["args"]["llm_configs"][0]["model_loading_config"]["model_source"]
    )


def cache_reason(cluster: Cluster, ns: str) -> str | None:
    cond = condition(cache(cluster, ns), "CacheReady")
    return cond["reason"] if cond else None


def fill_jobs(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return items(cluster, "jobs.batch", ns, f"{CACHE}=weights")


def serving(cluster: Cluster, ns: str, revision: str) -> dict[str, Any] | None:
    rs = rayservice(cluster, ns)
    path = f"/mnt/models/weights-weights/models--tiny-k2/{revision}"
    return rs if rs is not None and model_source(rs) == path else None


def test_cache_gates_the_rayservice_then_serves_offline_and_switches_revisions(
    cluster: Cluster, operator: OperatorProcess, ns: str, static_pv: str
) -> None:
    # No cache yet: the deployment waits, with a condition, and creates nothing.
    apply_doc(cluster, deployment_doc(ns))
    dep = eventually(
        "deployment waits for its cache",
        lambda: (
            d
            if (
                c := condition(
                    d := get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns), "CacheReady"
                )
            )
            and c["reason"] == "CacheNotReady"
            else None
        ),
    )
    assert dep["status"]["phase"] == "WaitingForCache"
    holds_without_fight(
        "no RayService while the cache is missing",
        lambda: rayservice(cluster, ns) is None,
        operator,
    )

    # The cache: claim created and bound to the static PV, one Job, KWOK completes its pod.
    apply_doc(cluster, cache_doc(ns, static_pv))
    ready = eventually(
        "cache ready",
        lambda: c if cache_reason(cluster, ns) == "Ready" and (c := cache(cluster, ns)) else None,
    )
    status = ready["status"]
    assert status["claimName"] == "weights-weights" and status["currentRevision"] == "v1"
    assert status["readyRevisions"] == ["v1"] and status["path"] == "models--tiny-k2/v1"
    claim = get(cluster, "persistentvolumeclaims", "weights-weights", ns)
    assert claim is not None and claim["spec"]["volumeName"] == static_pv
    (job,) = fill_jobs(cluster, ns)
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python", "-m", "k2think_operator.cachefill",
    ]  # fmt: skip

    # The deployment now serves from the claim, read-only and offline.
    rs = eventually("RayService serving revision v1", lambda: serving(cluster, ns, "v1"))
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    claims = [v["persistentVolumeClaim"] for v in worker["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "weights-weights", "readOnly": True}]
    env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    dep = eventually(
        "deployment CacheReady",
        lambda: (
            d
            if (
                c := condition(
                    d := get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns), "CacheReady"
                )
            )
            and c["status"] == "True"
            else None
        ),
    )

    # A scale-up creates no Job.
    cluster.kubectl(
        "patch", "k2thinkdeployments.k2think.dev", "k2think", "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"autoscaling": {"maxReplicas": 3}}}),
    )  # fmt: skip
    eventually(
        "scaled RayService",
        lambda: (
            (rs := rayservice(cluster, ns)) and "max_replicas: 3" in rs["spec"]["serveConfigV2"]
        ),
    )
    assert len(fill_jobs(cluster, ns)) == 1

    # A new revision downloads beside the old one; until it is ready the old path is served.
    # Its Job cannot be scheduled (a CPU request no node has): it stays Downloading.
    slow = {
        "image": "k2think/fill:e2e",
        "backoffLimit": 1,
        "resources": {"requests": {"cpu": "100000"}},
    }
    apply_doc(cluster, cache_doc(ns, static_pv, revision="v2", downloader=slow))
    eventually("v2 downloading", lambda: cache_reason(cluster, ns) == "Downloading")
    assert (cache(cluster, ns) or {})["status"]["currentRevision"] == "v1"
    holds_without_fight(
        "the old revision is served meanwhile",
        lambda: serving(cluster, ns, "v1") is not None,
        operator,
    )
    (pending,) = [
        j
        for j in fill_jobs(cluster, ns)
        if j["metadata"]["annotations"][f"{CACHE.split('/')[0]}/revision"] == "v2"
    ]
    # Fix the request and delete the stuck Job: the operator starts it again, it completes.
    apply_doc(cluster, cache_doc(ns, static_pv, revision="v2"))
    cluster.kubectl("delete", "job", pending["metadata"]["name"], "-n", ns, "--wait=true")
    eventually("RayService switched to v2", lambda: serving(cluster, ns, "v2"), timeout=90)
    status = (cache(cluster, ns) or {})["status"]
    assert status["readyRevisions"] == ["v2", "v1"] and status["currentRevision"] == "v2"

    # Cleanup: the cache's Jobs and claim go with it (owner references).
    cluster.kubectl("delete", "k2thinkdeployments.k2think.dev", "k2think", "-n", ns)
    cluster.kubectl("delete", "k2thinkmodelcaches.k2think.dev", "weights", "-n", ns)
    eventually("fill Jobs collected", lambda: fill_jobs(cluster, ns) == [], timeout=90)
    eventually(
        "claim collected",
        lambda: get(cluster, "persistentvolumeclaims", "weights-weights", ns) is None,
        timeout=90,
    )


def test_a_failed_fill_is_reported_and_retried_within_its_bound(
    cluster: Cluster, operator: OperatorProcess, ns: str, static_pv: str
) -> None:
    report = {
        "reason": "VerifyFailed",
        "message": "model.safetensors: 10 bytes, the index says 1000",
    }
    downloader = {
        "image": "k2think/fill:e2e",
        "backoffLimit": 1,
        "podLabels": {FAIL_STAGE: "true"},
        # KWOK writes the message unquoted into YAML: quote it so it stays the JSON string
        # cachefill writes to the termination log.
        "podAnnotations": {
            f"{FAIL_STAGE}/message": "'" + json.dumps(report) + "'",
            f"{FAIL_STAGE}/exit-code": "3",
        },
    }
    apply_doc(cluster, deployment_doc(ns))
    apply_doc(cluster, cache_doc(ns, static_pv, downloader=downloader))
    failed = eventually(
        "cache reports the failed fill",
        lambda: (
            c
            if (c := condition(cache(cluster, ns), "CacheReady")) and c["reason"] == "VerifyFailed"
            else None
        ),
        timeout=120,
    )
    assert failed["status"] == "False" and "10 bytes, the index says 1000" in failed["message"]
    (job,) = fill_jobs(cluster, ns)
    pods = items(cluster, "pods", ns, f"job-name={job['metadata']['name']}")
    assert len(pods) == 2  # the first attempt and one retry (backoffLimit 1)
    assert all(p["status"]["phase"] == "Failed" for p in pods)
    holds_without_fight(
        "no new Job, no RayService after the bound is spent",
        lambda: len(fill_jobs(cluster, ns)) == 1 and rayservice(cluster, ns) is None,
        operator,
    )
    dep = get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns)
    cond = condition(dep, "CacheReady")
    assert (
        cond is not None and cond["reason"] == "CacheNotReady" and "VerifyFailed" in cond["message"]
    )


def test_a_draft_from_its_own_cache_gates_the_deployment_then_loads_offline(
    cluster: Cluster, operator: OperatorProcess, ns: str, static_pv: str
) -> None:
    """``speculativeDecoding.draft.cacheRef``: the model's cache alone is not enough; once the
    draft's cache (sharing the model's claim, as on a campus) has its revision, the draft loads
    from its path on the read-only claim."""
    apply_doc(cluster, cache_doc(ns, static_pv))
    eventually("model cache ready", lambda: cache_reason(cluster, ns) == "Ready")
    doc = deployment_doc(ns)
    doc["spec"]["engine"] = {
        **(doc["spec"].get("engine") or {}),
        "speculativeDecoding": {
            "method": "eagle3",
            "numSpeculativeTokens": 3,
            "draft": {
                "cacheRef": "draft",
                "architecture": {
                    "parametersBillions": 0.5,
                    "layers": 1,
                    "kvHeads": 8,
                    "headDim": 128,
                    "vocabSize": 152064,
                    "maxPositionEmbeddings": 131072,
                },
                "tensorParallel": 1,
            },
        },
    }
    apply_doc(cluster, doc)

    def waiting_for_draft() -> dict[str, Any] | None:
        dep = get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns)
        cond = condition(dep, "CacheReady")
        return dep if cond and "(the draft)" in cond["message"] else None

    dep = eventually("deployment waits for the draft's cache", waiting_for_draft)
    assert condition(dep, "CacheReady")["status"] == "False"  # type: ignore[index]
    holds_without_fight(
        "no RayService while the draft's cache is missing",
        lambda: rayservice(cluster, ns) is None,
        operator,
    )

    draft_cache = cache_doc(ns, static_pv, source="file:///models/tiny-draft")
    draft_cache["metadata"]["name"] = "draft"
    draft_cache["spec"]["storage"] = {"claimName": "weights-weights"}
    apply_doc(cluster, draft_cache)

    def drafted() -> dict[str, Any] | None:
        rs = rayservice(cluster, ns)
        if rs is None:
            return None
        serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
        engine = serve["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
        return rs if "speculative_config" in engine else None

    rs = eventually("RayService with the draft from its cache", drafted, timeout=90)
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    llm = serve["applications"][0]["args"]["llm_configs"][0]
    assert llm["engine_kwargs"]["speculative_config"]["model"] == (
        "/mnt/models/weights-weights/models--tiny-draft/v1"
    )
    assert model_source(rs) == "/mnt/models/weights-weights/models--tiny-k2/v1"
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    claims = [v["persistentVolumeClaim"] for v in worker["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "weights-weights", "readOnly": True}]  # one shared claim
    cond = eventually(
        "deployment CacheReady naming both caches",
        lambda: (
            c
            if (
                c := condition(
                    get(cluster, "k2thinkdeployments.k2think.dev", "k2think", ns), "CacheReady"
                )
            )
            and c["status"] == "True"
            else None
        ),
    )
    assert "the draft from revision v1 of K2ThinkModelCache draft" in cond["message"]
