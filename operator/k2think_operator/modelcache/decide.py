"""What a K2ThinkModelCache needs next, pure: ``decide_cache(body, claim, job, report, now)``.

It looks at one cache, its claim, the fill Job for the revision it asks for and that Job's
report (the pod's termination message, written by ``cachefill``), and says what to create and
what the status is. Each state of the fill has its own small step (``_STEPS``); every step
returns a ``Verdict`` (ready or not, why, what to create, what to tell), and ``_decision`` turns
it into the status. ``controller.py`` does the I/O.

* A revision already in ``status.readyRevisions`` never gets a Job again, so a scale-up of the
  deployments that use the cache creates nothing.
* ``CacheReady`` is True only once the Job reported that revision complete and verified.
* A Job that failed stays failed (delete it to retry, or change the revision) rather than
  looping; a new revision keeps serving the old one until it is ready.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.modelcache import (
    COMMIT_PATTERN,
    K2ThinkModelCacheSpec,
    claim_of,
    parse_cache_spec,
    revision_path,
)
from k2think_operator.api.spec import InvalidSpec
from k2think_operator.modelcache.jobs import (
    build_claim,
    build_fill_job,
    fill_job_name,
    job_failure_message,
    job_state,
)
from k2think_operator.runtime.conditions import condition, set_condition
from k2think_operator.runtime.events import Event

#: resolvedRevisions keeps this many branch/tag -> commit resolutions.
RESOLVED_KEPT = 16


@dataclass(frozen=True)
class CacheDecision:
    name: str
    namespace: str
    claim_to_create: dict[str, Any] | None
    job_to_create: dict[str, Any] | None
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    invalid: bool = False
    #: Nothing we watch will change next (a claim being created, or one the user has yet to
    #: create): the controller looks again after a delay.
    retry: bool = False

    @property
    def ready(self) -> bool:
        return any(
            c["type"] == r.CACHE_READY and c["status"] == "True"
            for c in self.status.get("conditions") or []
        )


@dataclass(frozen=True)
class Verdict:
    """What one step decided: the CacheReady condition, status fields, what to create."""

    ready: bool
    reason: str
    message: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    claim_to_create: dict[str, Any] | None = None
    job_to_create: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()
    invalid: bool = False
    retry: bool = False


@dataclass(frozen=True)
class Facts:
    """Everything a step looks at, gathered once."""

    name: str
    namespace: str
    uid: str | None
    spec: K2ThinkModelCacheSpec
    claim: Mapping[str, Any] | None
    job: Mapping[str, Any] | None
    report: Mapping[str, Any] | None
    resolved: Sequence[Mapping[str, Any]]
    ready: Sequence[str]
    serving: str | None
    #: The commit ``spec.revision`` stands for, if known.
    commit: str | None

    @property
    def claim_name(self) -> str:
        return claim_of(self.spec, self.name)

    @property
    def job_name(self) -> str:
        return fill_job_name(self.name, self.spec)

    @property
    def keep_serving(self) -> str:
        return f"; deployments keep serving {self.serving}" if self.serving else ""

    @property
    def wanted(self) -> str:
        return f"{self.spec.source}@{self.spec.revision}"

    def at(self, commit: str) -> str:
        return f"{self.claim_name}:/{revision_path(self.spec, commit)}"

    def base(self, *, with_job: bool = True) -> dict[str, Any]:
        fields: dict[str, Any] = {"claimName": self.claim_name}
        if with_job:
            fields["fillJob"] = self.job_name
        return fields


def commit_for(
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


# --- the steps, one per state of the fill -------------------------------------------------------


def already_ready(facts: Facts) -> Verdict:
    """The revision is on the claim: never another Job for it (a scale-up, a resync, a
    restart)."""
    assert facts.commit is not None
    return Verdict(
        True,
        r.CACHE_FILLED,
        f"revision {facts.commit} is complete and verified at {facts.at(facts.commit)}",
        {
            **facts.base(with_job=False),
            "currentRevision": facts.commit,
            "path": revision_path(facts.spec, facts.commit),
        },
    )


def claim_missing(facts: Facts) -> Verdict:
    """No claim yet: create it (or wait for the user's own claim) and look again."""
    to_create = build_claim(facts.spec, name=facts.name, namespace=facts.namespace, uid=facts.uid)
    message = (
        f"waiting for claim {facts.claim_name} to be created"
        if to_create is not None
        else f"claim {facts.claim_name} does not exist in {facts.namespace}"
    )
    return Verdict(
        False,
        r.CLAIM_PENDING,
        message,
        facts.base(with_job=False),
        claim_to_create=to_create,
        retry=True,
    )


def start_fill(facts: Facts) -> Verdict:
    job = build_fill_job(
        facts.spec,
        name=facts.name,
        namespace=facts.namespace,
        uid=facts.uid,
        in_use=[facts.serving] if facts.serving else [],
    )
    return Verdict(
        False,
        r.CACHE_DOWNLOADING,
        f"starting fill Job {facts.job_name} for {facts.wanted}{facts.keep_serving}",
        facts.base(),
        job_to_create=job,
        events=(
            Event.normal(r.EVENT_FILL_STARTED, f"fill Job {facts.job_name} for {facts.wanted}"),
        ),
    )


def filling(facts: Facts) -> Verdict:
    assert facts.claim is not None
    phase = (facts.claim.get("status") or {}).get("phase")
    if phase != "Bound":
        return Verdict(
            False,
            r.CLAIM_PENDING,
            f"claim {facts.claim_name} is {phase or 'Pending'}; "
            f"fill Job {facts.job_name} waits for it{facts.keep_serving}",
            facts.base(),
        )
    return Verdict(
        False,
        r.CACHE_DOWNLOADING,
        f"fill Job {facts.job_name} is downloading {facts.wanted}{facts.keep_serving}",
        facts.base(),
    )


def fill_failed(facts: Facts) -> Verdict:
    reason = str((facts.report or {}).get("reason") or r.DOWNLOAD_FAILED)
    if reason not in (r.DOWNLOAD_FAILED, r.VERIFY_FAILED):
        reason = r.DOWNLOAD_FAILED
    detail = str(
        (facts.report or {}).get("message") or job_failure_message(facts.job) or "the Job failed"
    )
    message = (
        f"fill Job {facts.job_name} failed after {facts.spec.downloader.backoff_limit} retries: "
        f"{detail}{facts.keep_serving}; delete the Job to try again"
    )
    return Verdict(False, reason, message, facts.base(), events=(Event.warn(reason, message),))


def fill_complete(facts: Facts) -> Verdict:
    """The Job's pod verified the revision and renamed it into place."""
    commit = facts.commit
    if commit is None:
        message = (
            f"fill Job {facts.job_name} completed without reporting the commit of "
            f"{facts.spec.revision}"
        )
        return Verdict(
            False,
            r.VERIFY_FAILED,
            message,
            facts.base(),
            events=(Event.warn(r.VERIFY_FAILED, message),),
        )
    extra = facts.base()
    if facts.spec.scheme == "hf" and not COMMIT_PATTERN.match(facts.spec.revision):
        resolved = [x for x in facts.resolved if x.get("requested") != facts.spec.revision]
        resolved.append({"requested": facts.spec.revision, "commit": commit})
        extra["resolvedRevisions"] = resolved[-RESOLVED_KEPT:]
    ready = [commit, *[x for x in facts.ready if x != commit]][: facts.spec.revisions_to_keep]
    extra |= {
        "readyRevisions": ready,
        "currentRevision": commit,
        "path": revision_path(facts.spec, commit),
    }
    message = f"revision {commit} is complete and verified at {facts.at(commit)}"
    return Verdict(
        True, r.CACHE_FILLED, message, extra, events=(Event.normal(r.EVENT_CACHE_READY, message),)
    )


#: The step for each state of the fill Job (``jobs.job_state``).
_STEPS: dict[str, Callable[[Facts], Verdict]] = {
    "Missing": start_fill,
    "Active": filling,
    "Failed": fill_failed,
    "Complete": fill_complete,
}


def next_step(facts: Facts) -> Verdict:
    if facts.commit is not None and facts.commit in facts.ready:
        return already_ready(facts)
    if facts.claim is None:
        return claim_missing(facts)
    return _STEPS[job_state(facts.job)](facts)


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
    current = dict(body.get("status") or {})
    try:
        spec = parse_cache_spec(dict(body.get("spec") or {}))
    except InvalidSpec as error:
        message = "; ".join(map(str, error.problems))
        verdict = Verdict(
            False,
            r.INVALID_SPEC,
            message,
            events=(Event.warn(r.EVENT_INVALID_SPEC, message),),
            invalid=True,
        )
    else:
        resolved = list(current.get("resolvedRevisions") or [])
        facts = Facts(
            name=name,
            namespace=namespace,
            uid=meta.get("uid"),
            spec=spec,
            claim=claim,
            job=job,
            report=report,
            resolved=resolved,
            ready=[str(x) for x in current.get("readyRevisions") or []],
            serving=current.get("currentRevision"),
            commit=commit_for(spec, resolved, report),
        )
        verdict = next_step(facts)
    generation = int(meta.get("generation") or 0)
    return _decision(name, namespace, generation, current, verdict, now)


def _decision(
    name: str,
    namespace: str,
    generation: int,
    current: Mapping[str, Any],
    verdict: Verdict,
    now: str,
) -> CacheDecision:
    """The status a verdict makes: the fields it sets over the current ones, CacheReady, phase."""
    status = {k: v for k, v in current.items() if k != "conditions"}
    status.update(verdict.extra)
    status["observedGeneration"] = generation
    ready = condition(r.CACHE_READY, verdict.ready, verdict.reason, verdict.message, generation)
    status["conditions"] = set_condition(current.get("conditions") or [], ready, now)
    status["phase"] = verdict.reason
    return CacheDecision(
        name,
        namespace,
        claim_to_create=verdict.claim_to_create,
        job_to_create=verdict.job_to_create,
        status=status,
        events=list(verdict.events),
        invalid=verdict.invalid,
        retry=verdict.retry,
    )
