"""The model cache's children, pure: the claim and the fill Job, and how to read the Job back.

``decide.py`` decides what to create from these; ``controller.py`` reads and writes. The failure
modes the builders guard against are the ones other operators' caches had:

* one Job per (cache, revision): its name is the cache name plus a hash of the source and the
  requested revision, so a re-reconcile finds the same Job instead of creating another (KServe's
  Jobs recreated forever on a path mismatch);
* ``CacheReady`` is True only once the Job reported that revision complete and verified at the
  path replicas mount (``cachefill`` renames the directory only after verification);
* a revision already in ``status.readyRevisions`` never gets a Job again, so a scale-up of the
  deployments that use the cache creates nothing;
* retries are the Job's ``backoffLimit`` within ``activeDeadlineSeconds``; a Job that failed
  stays failed (delete it to retry, or change the revision) rather than looping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from k2think_operator.api.coordinates import JOBS, MODELCACHE, PVCS
from k2think_operator.api.modelcache import (
    FILL_MOUNT,
    K2ThinkModelCacheSpec,
    claim_of,
)
from k2think_operator.render.meta import (
    COMPONENT_LABEL,
    FIELD_MANAGER,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    digest,
)

CACHE_LABEL = f"{MODELCACHE.group}/cache"
CACHE_VOLUME = "cache"
TERMINATION_LOG = "/dev/termination-log"


def cache_labels(cache: str) -> dict[str, str]:
    return {
        NAME_LABEL: "k2think",
        PART_OF_LABEL: "k2think",
        MANAGED_BY_LABEL: FIELD_MANAGER,
        COMPONENT_LABEL: "model-cache",
        CACHE_LABEL: cache,
    }


def cache_owner(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": MODELCACHE.api_version,
        "kind": MODELCACHE.kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def fill_job_name(cache: str, spec: K2ThinkModelCacheSpec) -> str:
    """``<cache>-fill-<hash of source and revision>``: stable across reconciles, new per
    revision, at most 63 characters (Job names become pod label values)."""
    suffix = digest({"source": spec.source, "revision": spec.revision}, 10)
    return f"{cache[: 63 - len(suffix) - 6]}-fill-{suffix}"


def build_claim(
    spec: K2ThinkModelCacheSpec, *, name: str, namespace: str, uid: str | None = None
) -> dict[str, Any] | None:
    """The claim to create (None when the spec names an existing one)."""
    if spec.storage.claim_name is not None:
        return None
    storage = spec.storage
    claim_spec: dict[str, Any] = {
        "accessModes": list(storage.access_modes),
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name is not None:
        claim_spec["storageClassName"] = storage.storage_class_name
    metadata: dict[str, Any] = {
        "name": claim_of(spec, name),
        "namespace": namespace,
        "labels": cache_labels(name),
    }
    if uid is not None:
        metadata["ownerReferences"] = [cache_owner(name, uid)]
    return {
        "apiVersion": PVCS.api_version,
        "kind": PVCS.kind,
        "metadata": metadata,
        "spec": claim_spec,
    }


def fill_command(spec: K2ThinkModelCacheSpec, in_use: Sequence[str] = ()) -> list[str]:
    """The fill container's argv: ``python -m k2think_operator.cachefill`` (see that module)."""
    argv = [
        "python",
        "-m",
        "k2think_operator.cachefill",
        "--source",
        spec.source,
        "--revision",
        spec.revision,
        "--root",
        FILL_MOUNT,
        "--max-workers",
        str(spec.downloader.max_workers),
        "--keep",
        str(spec.revisions_to_keep),
        "--termination-log",
        TERMINATION_LOG,
    ]
    for pattern in spec.downloader.include:
        argv += ["--include", pattern]
    for revision in sorted(set(in_use)):
        argv += ["--in-use", revision]
    return argv


def build_fill_job(
    spec: K2ThinkModelCacheSpec,
    *,
    name: str,
    namespace: str,
    uid: str | None = None,
    in_use: Sequence[str] = (),
) -> dict[str, Any]:
    """The Job filling ``spec.revision`` into the claim (deterministic: same inputs, same Job)."""
    downloader = spec.downloader
    container: dict[str, Any] = {
        "name": "fill",
        "image": downloader.image,
        "command": fill_command(spec, in_use),
        "resources": {k: dict(v) for k, v in downloader.resources.model_dump().items() if v},
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": FILL_MOUNT}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if downloader.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": downloader.credentials_secret}}]
    labels = cache_labels(name)
    pod_metadata: dict[str, Any] = {"labels": {**downloader.pod_labels, **labels}}
    if downloader.pod_annotations:
        pod_metadata["annotations"] = dict(downloader.pod_annotations)
    metadata: dict[str, Any] = {
        "name": fill_job_name(name, spec),
        "namespace": namespace,
        "labels": labels,
        "annotations": {f"{MODELCACHE.group}/revision": spec.revision},
    }
    if uid is not None:
        metadata["ownerReferences"] = [cache_owner(name, uid)]
    return {
        "apiVersion": JOBS.api_version,
        "kind": JOBS.kind,
        "metadata": metadata,
        "spec": {
            "backoffLimit": downloader.backoff_limit,
            "activeDeadlineSeconds": downloader.active_deadline_seconds,
            "template": {
                "metadata": pod_metadata,
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {
                            "name": CACHE_VOLUME,
                            "persistentVolumeClaim": {"claimName": claim_of(spec, name)},
                        }
                    ],
                },
            },
        },
    }


# --- reading what the cluster says -------------------------------------------------------------


def job_state(job: Mapping[str, Any] | None) -> str:
    """``Missing``, ``Active``, ``Complete`` or ``Failed`` (the Job's own terminal conditions)."""
    if job is None:
        return "Missing"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return "Active"


def job_failure_message(job: Mapping[str, Any] | None) -> str:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason') or 'Failed'}: {cond.get('message') or ''}".strip(": ")
    return ""


def fill_report(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The newest terminated fill container's termination message, parsed (``cachefill``
    writes JSON there); None when no pod has reported."""
    reports: list[tuple[str, dict[str, Any]]] = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            text = terminated.get("message")
            if not text:
                continue
            try:
                parsed = json.loads(text)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                reports.append((str(terminated.get("finishedAt") or ""), parsed))
    return max(reports, key=lambda item: item[0])[1] if reports else None
