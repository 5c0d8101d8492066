"""How a K2ThinkDeployment with ``spec.model.cacheRef`` is served from its cache (pure).

The cache is reduced to a ``CacheView`` (the claim and the path of the revision to serve); the
deployment's spec is then rewritten into one the renderer already knows: the source becomes
``pvc://CLAIM/ORG--NAME/COMMIT`` (workers mount the claim read-only, ``model_source`` is the local
path, nothing is downloaded) and ``HF_HUB_OFFLINE=1`` joins the Ray env, so a replica can never
fall back to the hub. Rewriting the spec instead of teaching the renderer a second loading path
keeps one renderer and one set of golden files.

The view follows ``status.currentRevision``, which the cache controller moves only once a new
revision is verified: a revision change keeps deployments on the old path until then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.api.modelcache import claim_of, parse_cache_spec, revision_path
from k2think_operator.api.spec import EnvVar, InvalidSpec, K2ThinkDeploymentSpec, RaySpec
from k2think_operator.deployment.status import set_condition
from k2think_operator.runtime.conditions import condition

HF_OFFLINE_ENV = "HF_HUB_OFFLINE"


@dataclass(frozen=True)
class CacheView:
    """What a deployment needs of its cache: a verified revision on a claim."""

    name: str
    claim: str
    path: str  # the revision's directory inside the claim, ORG--NAME/COMMIT
    revision: str
    #: The cache's spec.source (hf://ORG/NAME): which model it holds (None: not known).
    source: str | None = field(default=None, compare=False)


def cache_view(cache: Mapping[str, Any] | None) -> CacheView | None:
    """The revision to serve, from a live cache's status (None: nothing verified yet)."""
    if cache is None:
        return None
    status = cache.get("status") or {}
    claim, path, revision = (
        status.get("claimName"),
        status.get("path"),
        status.get("currentRevision"),
    )
    if not (claim and path and revision):
        return None
    name = str((cache.get("metadata") or {}).get("name"))
    source = (cache.get("spec") or {}).get("source")
    return CacheView(name, str(claim), str(path), str(revision), str(source) if source else None)


def planned_cache_view(cache: Mapping[str, Any]) -> CacheView | None:
    """Offline (``render``/``plan``/``validate`` of a file): the cache as it will be once its
    revision is filled. A branch shows as written (the fill Job resolves it to a commit)."""
    name = str((cache.get("metadata") or {}).get("name"))
    try:
        spec = parse_cache_spec(dict(cache.get("spec") or {}))
    except InvalidSpec:
        return None
    return CacheView(
        name, claim_of(spec, name), revision_path(spec, spec.revision), spec.revision, spec.source
    )


def _other_repository(view: CacheView, repository: str | None) -> str | None:
    """The hub repository ``view`` holds when it is not ``repository`` (None: the same one, or
    nothing to compare: no repository named, or a cache filled from s3://, gs:// or file://,
    whose path names no model)."""
    if repository is None or view.source is None or not view.source.startswith("hf://"):
        return None
    held = view.source.removeprefix("hf://").strip("/")
    return held if held.lower() != repository.lower() else None


def cache_problem(spec: K2ThinkDeploymentSpec, view: CacheView) -> str | None:
    """Why ``view`` cannot serve this deployment's model, or None.

    A preset names its Hugging Face repository; a cache holding another repository would serve
    those weights under this model's name (and the planner's memory model would be wrong).
    A custom model names no repository, and a cache filled from s3://, gs:// or file:// names a
    path, not a model: the user's cacheRef is then the only statement of which weights it is, so
    nothing can be compared.
    """
    preset = spec.model.preset_info
    held = _other_repository(view, preset.hf_id if preset else None)
    if preset is not None and held is not None:
        return (
            f"spec.model.cacheRef: K2ThinkModelCache {view.name} holds {held}, not "
            f"{preset.hf_id} (preset {spec.model.preset}); name a cache of {preset.hf_id}, or "
            "use preset custom with the architecture of the cached model"
        )
    return None


def serve_from_cache(spec: K2ThinkDeploymentSpec, view: CacheView) -> K2ThinkDeploymentSpec:
    """The spec as served from ``view``: a read-only claim path, and the hub switched off."""
    model = spec.model.model_copy(
        update={"source": f"pvc://{view.claim}/{view.path}", "cache_ref": None, "revision": None}
    )
    return spec.model_copy(update={"model": model, "ray": _hub_off(spec)})


def _hub_off(spec: K2ThinkDeploymentSpec) -> RaySpec:
    """``spec.ray`` with ``HF_HUB_OFFLINE=1``: weights from a cache never fall back to the hub."""
    env = [e for e in spec.ray.env if e.name != HF_OFFLINE_ENV]
    # The operator's own variable: constructed, not validated (the user may not set it).
    env.append(EnvVar.model_construct(name=HF_OFFLINE_ENV, value="1"))
    return spec.ray.model_copy(update={"env": env})


def cache_refs(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The caches a deployment body names: ``spec.model.cacheRef`` and the speculative draft's
    ``cacheRef`` (read from the raw body: the controller looks them up before parsing)."""
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return None, None
    model = (spec.get("model") or {}).get("cacheRef")
    speculative = (spec.get("engine") or {}).get("speculativeDecoding") or {}
    draft = (speculative.get("draft") or {}).get("cacheRef")
    return (str(model) if model else None, str(draft) if draft else None)


def draft_cache_problem(spec: K2ThinkDeploymentSpec, view: CacheView) -> str | None:
    """Why ``view`` cannot serve the draft: a draft preset names its repository, and a cache of
    another one would be loaded as that draft (the planner's numbers, vLLM's vocabulary check
    would be about other weights). A custom draft names no repository (as ``cache_problem``)."""
    speculative = spec.engine.speculative_decoding
    draft = speculative.draft if speculative is not None else None
    preset = draft.preset_info if draft is not None else None
    held = _other_repository(view, preset.hf_id if preset else None)
    if preset is not None and held is not None:
        return (
            f"spec.engine.speculativeDecoding.draft.cacheRef: K2ThinkModelCache {view.name} "
            f"holds {held}, not {preset.hf_id} (draft preset {preset.name}); name a cache of "
            f"{preset.hf_id}, or describe the cached draft with architecture instead of preset"
        )
    return None


def serve_draft_from_cache(spec: K2ThinkDeploymentSpec, view: CacheView) -> K2ThinkDeploymentSpec:
    """The spec with the draft loaded from ``view``'s claim (the workers mount it read-only,
    ``render/serve_config.py`` ``pvc_claims``) and the hub switched off as for the model."""
    speculative = spec.engine.speculative_decoding
    assert speculative is not None and speculative.draft is not None
    draft = speculative.draft.model_copy(
        update={"source": f"pvc://{view.claim}/{view.path}", "cache_ref": None, "revision": None}
    )
    engine = spec.engine.model_copy(
        update={"speculative_decoding": speculative.model_copy(update={"draft": draft})}
    )
    return spec.model_copy(update={"engine": engine, "ray": _hub_off(spec)})


def waiting_message(ref: str, cache: Mapping[str, Any] | None, what: str = "") -> str:
    """Why a deployment waits for its cache, for its CacheReady condition (``what``: which
    cache of the deployment, e.g. " (the draft)")."""
    named = f"K2ThinkModelCache {ref}{what}"
    if cache is None:
        return f"{named} does not exist in this namespace"
    for cond in (cache.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "CacheReady":
            return f"{named} is not ready ({cond.get('reason')}): {cond.get('message')}"
    return f"{named} has no verified revision yet"


def _served_text(view: CacheView) -> str:
    return (
        f"revision {view.revision} of K2ThinkModelCache {view.name} from {view.claim}:/{view.path}"
    )


def with_cache_condition(
    status: dict[str, Any],
    *,
    waiting: str | None,
    served: CacheView | None,
    generation: int,
    now: str,
    draft_served: CacheView | None = None,
) -> dict[str, Any]:
    """Add a deployment's CacheReady condition (only with a cacheRef, the model's or the
    draft's: ``waiting`` says why it waits, or ``served``/``draft_served`` are the revisions it
    serves) and, while it waits with nothing running, the phase WaitingForCache."""
    if waiting is None and served is None and draft_served is None:
        return status
    if waiting is not None:
        new = condition(r.CACHE_READY, False, r.CACHE_NOT_READY, waiting, generation)
    else:
        parts = [_served_text(served)] if served is not None else []
        if draft_served is not None:
            parts.append(f"the draft from {_served_text(draft_served)}")
        text = "serving " + "; ".join(parts)
        new = condition(r.CACHE_READY, True, r.CACHE_FILLED, text, generation)
    result = dict(status)
    result["conditions"] = set_condition(status.get("conditions") or [], new, now)
    if waiting is not None and not status.get("endpoint"):
        result["phase"] = "WaitingForCache"
    return result
