"""The model cache's controller logic, pure: the claim, the fill Job, and the cache's status.

``decide_cache(body, claim, job, report)`` looks at one K2ThinkModelCache, its claim, the fill
Job for the revision it asks for and that Job's report (the pod's termination message, written
by ``cachefill``), and says what to create and what the status is. ``kube.py`` reads and writes;
``cachecontrol.py`` sequences the two; nothing here does I/O.

The failure modes this guards against are the ones other operators' caches had:

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
from dataclasses import dataclass, field
from typing import Any

from k2think_operator import reasons as r
from k2think_operator.apis import JOBS, MODELCACHE, PVCS
from k2think_operator.modelcache import (
    COMMIT_PATTERN,
    FILL_MOUNT,
    K2ThinkModelCacheSpec,
    claim_of,
    parse_cache_spec,
    revision_path,
)
from k2think_operator.render.meta import (
    COMPONENT_LABEL,
    FIELD_MANAGER,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    digest,
)
from k2think_operator.spec import InvalidSpec
from k2think_operator.status import condition, set_condition

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


# --- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheDecision:
    name: str
    namespace: str
    claim_to_create: dict[str, Any] | None
    job_to_create: dict[str, Any] | None
    status: dict[str, Any]
    events: list[tuple[bool, str, str]] = field(default_factory=list)
    invalid: bool = False
    #: Nothing we watch will change next (a claim being created, or one the user has yet to
    #: create): the handler retries after a delay.
    retry: bool = False

    @property
    def ready(self) -> bool:
        return any(
            c["type"] == r.CACHE_READY and c["status"] == "True"
            for c in self.status.get("conditions") or []
        )


def _commit_for(
    spec: K2ThinkModelCacheSpec,
    resolved: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any] | None,
) -> str | None:
    """The commit ``spec.revision`` stands for, if known: pinned, recorded, or just reported."""
    if spec.scheme != "hf" or COMMIT_PATTERN.match(spec.revision):
        return spec.revision
    for item in resolved:
        if item.get("requested") == spec.revision:
            return str(item.get("commit"))
    if report and report.get("reason") == r.CACHE_FILLED and report.get("commit"):
        return str(report["commit"])
    return None


def decide_cache(
    body: Mapping[str, Any],
    claim: Mapping[str, Any] | None,
    job: Mapping[str, Any] | None,
    report: Mapping[str, Any] | None,
    now: str,
) -> CacheDecision:
    """What to create and what the status is, for one K2ThinkModelCache (pure)."""
    meta = body.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace") or "default")
    generation = int(meta.get("generation") or 0)
    uid = meta.get("uid")
    current = dict(body.get("status") or {})
    conds: list[dict[str, Any]] = list(current.get("conditions") or [])

    def done(
        ok: bool, reason: str, message: str, extra: Mapping[str, Any], **kw: Any
    ) -> CacheDecision:
        status = {k: v for k, v in current.items() if k != "conditions"}
        status.update(extra)
        status["observedGeneration"] = generation
        status["conditions"] = set_condition(
            conds, condition(r.CACHE_READY, ok, reason, message, generation), now
        )
        status["phase"] = reason
        return CacheDecision(name, namespace, status=status, **kw)

    try:
        spec = parse_cache_spec(dict(body.get("spec") or {}))
    except InvalidSpec as error:
        message = "; ".join(map(str, error.problems))
        return done(
            False,
            r.INVALID_SPEC,
            message,
            {},
            claim_to_create=None,
            job_to_create=None,
            events=[(True, r.EVENT_INVALID_SPEC, message)],
            invalid=True,
        )

    claim_name = claim_of(spec, name)
    resolved = list(current.get("resolvedRevisions") or [])
    ready = [str(x) for x in current.get("readyRevisions") or []]
    serving = current.get("currentRevision")
    base: dict[str, Any] = {"claimName": claim_name}
    commit = _commit_for(spec, resolved, report)

    # Already there: never another Job for it (a scale-up, a resync, an operator restart).
    if commit is not None and commit in ready:
        extra = {**base, "currentRevision": commit, "path": revision_path(spec, commit)}
        return done(
            True,
            r.CACHE_FILLED,
            f"revision {commit} is complete and verified at "
            f"{claim_name}:/{revision_path(spec, commit)}",
            extra,
            claim_to_create=None,
            job_to_create=None,
        )

    if claim is None:
        to_create = build_claim(spec, name=name, namespace=namespace, uid=uid)
        message = (
            f"waiting for claim {claim_name} to be created"
            if to_create is not None
            else f"claim {claim_name} does not exist in {namespace}"
        )
        return done(
            False,
            r.CLAIM_PENDING,
            message,
            base,
            claim_to_create=to_create,
            job_to_create=None,
            retry=True,
        )

    job_name = fill_job_name(name, spec)
    base["fillJob"] = job_name
    state = job_state(job)
    keep_serving = f"; deployments keep serving {serving}" if serving else ""
    if state == "Missing":
        wanted = build_fill_job(
            spec, name=name, namespace=namespace, uid=uid, in_use=[serving] if serving else []
        )
        return done(
            False,
            r.CACHE_DOWNLOADING,
            f"starting fill Job {job_name} for {spec.source}@{spec.revision}{keep_serving}",
            base,
            claim_to_create=None,
            job_to_create=wanted,
            events=[
                (
                    False,
                    r.EVENT_FILL_STARTED,
                    f"fill Job {job_name} for {spec.source}@{spec.revision}",
                )
            ],
        )
    if state == "Active":
        phase = (claim.get("status") or {}).get("phase")
        if phase != "Bound":
            return done(
                False,
                r.CLAIM_PENDING,
                f"claim {claim_name} is {phase or 'Pending'}; "
                f"fill Job {job_name} waits for it{keep_serving}",
                base,
                claim_to_create=None,
                job_to_create=None,
            )
        return done(
            False,
            r.CACHE_DOWNLOADING,
            f"fill Job {job_name} is downloading {spec.source}@{spec.revision}{keep_serving}",
            base,
            claim_to_create=None,
            job_to_create=None,
        )
    if state == "Failed":
        reason = str((report or {}).get("reason") or r.DOWNLOAD_FAILED)
        if reason not in (r.DOWNLOAD_FAILED, r.VERIFY_FAILED):
            reason = r.DOWNLOAD_FAILED
        detail = str((report or {}).get("message") or job_failure_message(job) or "the Job failed")
        message = (
            f"fill Job {job_name} failed after {spec.downloader.backoff_limit} retries: "
            f"{detail}{keep_serving}; delete the Job to try again"
        )
        return done(
            False,
            reason,
            message,
            base,
            claim_to_create=None,
            job_to_create=None,
            events=[(True, reason, message)],
        )
    # Complete: the Job's pod verified the revision and renamed it into place.
    if commit is None:
        message = f"fill Job {job_name} completed without reporting the commit of {spec.revision}"
        return done(
            False,
            r.VERIFY_FAILED,
            message,
            base,
            claim_to_create=None,
            job_to_create=None,
            events=[(True, r.VERIFY_FAILED, message)],
        )
    if spec.scheme == "hf" and not COMMIT_PATTERN.match(spec.revision):
        resolved = [x for x in resolved if x.get("requested") != spec.revision]
        resolved.append({"requested": spec.revision, "commit": commit})
        base["resolvedRevisions"] = resolved[-16:]
    new_ready = [commit, *[x for x in ready if x != commit]][: spec.revisions_to_keep]
    extra = {
        **base,
        "readyRevisions": new_ready,
        "currentRevision": commit,
        "path": revision_path(spec, commit),
    }
    message = (
        f"revision {commit} is complete and verified at {claim_name}:/{revision_path(spec, commit)}"
    )
    return done(
        True,
        r.CACHE_FILLED,
        message,
        extra,
        claim_to_create=None,
        job_to_create=None,
        events=[(False, r.EVENT_CACHE_READY, message)],
    )
