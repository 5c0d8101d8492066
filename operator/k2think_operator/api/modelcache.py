"""The K2ThinkModelCache API: one copy of a model's weights per campus, on a shared claim.

Why a cache: every replica's vLLM otherwise downloads the weights when it starts (65.5 GB for
K2-Think, ~140 GB for K2-Think-V2), so a campus scaling to many replicas moves terabytes from the
hub and stops scaling when the hub is down. A ``K2ThinkModelCache`` is filled once by a Job
(``cachejob.py`` builds it, ``cachefill.py`` runs inside it); deployments that name it in
``spec.model.cacheRef`` mount the claim read-only and load from a local path.

Like ``resource.py`` for K2ThinkDeployment, these models are the API: ``crd.build_cache_crd``
generates the CRD schema from ``K2ThinkModelCache``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, WithJsonSchema, field_validator, model_validator

from k2think_operator.api.resource import Condition
from k2think_operator.api.schema import Int64, cel
from k2think_operator.api.spec import (
    DNS_LABEL,
    MAX_MAP_ENTRIES,
    InvalidSpec,
    Quantity,
    ResourceRequirements,
    SecretName,
    _Model,
    format_validation_error,
)

#: Sources a cache can be filled from (a pvc:// source is already a claim: nothing to cache).
CACHE_SOURCE_PATTERN = re.compile(r"^(hf|s3|gs|file)://(.+)$")
CACHE_SOURCE_SCHEMA_PATTERN = r"^(hf|s3|gs|file)://.+$"
#: A Hugging Face commit id: the only revision that never moves.
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
#: Revisions become directory names and Job name hashes: no slashes, no dots at the start.
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
DEFAULT_DOWNLOADER_IMAGE = "ghcr.io/k2think/k2think-operator:0.1.0"
#: Where the fill Job mounts the claim.
FILL_MOUNT = "/cache"


AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"]


class StorageSpec(_Model):
    """Where the weights are kept: an existing claim, or one the operator creates."""

    claim_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=253,
        description="An existing PersistentVolumeClaim in this namespace to fill. When unset the "
        "operator creates a claim named after the cache from storageClassName, size and "
        "accessModes.",
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="Storage class of the claim the operator creates. Use a ReadWriteMany class "
        "(NFS, CephFS, Lustre, Filestore, EFS) so replicas on every node can mount it.",
    )
    size: Quantity | None = Field(
        default=None,
        description="Size of the claim the operator creates: the weights of every kept revision "
        "plus headroom (K2-Think 65.5 GB per revision, K2-Think-V2 about 140 GB).",
    )
    access_modes: list[AccessMode] = Field(
        default_factory=lambda: list[AccessMode](["ReadWriteMany"]),
        min_length=1,
        max_length=3,
        description="Access modes of the claim the operator creates.",
    )

    @model_validator(mode="after")
    @cel(
        "has(self.claimName) || has(self.size)",
        "storage needs claimName (an existing claim) or size (a claim to create)",
    )
    def _claim_or_size(self) -> StorageSpec:
        if self.claim_name is None and self.size is None:
            raise ValueError(
                "storage needs claimName (an existing claim) or size (a claim to create)"
            )
        return self


class DownloaderSpec(_Model):
    """The fill Job's container."""

    image: str = Field(
        default=DEFAULT_DOWNLOADER_IMAGE,
        min_length=1,
        description="Image running `python -m k2think_operator.cachefill` with huggingface_hub "
        "(the `hf` CLI) and, for s3:// and gs:// sources, the aws or gcloud CLI.",
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "2", "memory": "4Gi"}, limits={"memory": "8Gi"}
        ),
        description="Resources of the download container.",
    )
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Secret in this namespace whose keys become the downloader's environment "
        "(HF_TOKEN for gated repositories, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ...). "
        "Replicas never see it: they read the claim offline.",
    )
    include: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=32,
        description="Glob patterns of the files to fetch (hf download --include), e.g. "
        "*.safetensors, *.json, tokenizer*. Empty: the whole repository.",
    )
    max_workers: int = Field(
        default=8, ge=1, le=64, description="Parallel file downloads (hf download --max-workers)."
    )
    pod_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Extra labels of the fill pod (e.g. for cost allocation or a mesh opt-out).",
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description='Extra annotations of the fill pod (e.g. sidecar.istio.io/inject: "false").',
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=20, description="Retries of a failed fill before it is reported failed."
    )
    active_deadline_seconds: int = Field(
        default=14400,
        ge=60,
        le=604800,
        description="Deadline of one fill Job, all retries included (default 4 hours).",
    )


class K2ThinkModelCacheSpec(_Model):
    """Desired state of a model cache."""

    source: str = Field(
        max_length=1024,
        description="Where the weights come from: hf://ORG/NAME (Hugging Face), s3://BUCKET/PATH, "
        "gs://BUCKET/PATH or file:///PATH (a directory the downloader image can read).",
        json_schema_extra={"pattern": CACHE_SOURCE_SCHEMA_PATTERN},
    )
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=128,
        pattern=REVISION_PATTERN,
        description="For hf:// sources a commit sha (pinned) or a branch/tag, resolved once by the "
        "fill Job and recorded in status.resolvedRevisions. For other sources a label naming "
        "this copy; change it to fill a new copy.",
    )
    storage: StorageSpec = Field(description="The claim holding the weights.")
    downloader: DownloaderSpec = Field(
        default_factory=DownloaderSpec, description="The fill Job's container."
    )
    revisions_to_keep: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Complete revisions kept on the claim (the newest first); older ones are "
        "removed by the next fill once no deployment serves them.",
    )

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, value: str) -> str:
        match = CACHE_SOURCE_PATTERN.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a cache source; use hf://ORG/NAME, s3://BUCKET/PATH, "
                "gs://BUCKET/PATH or file:///ABSOLUTE/PATH"
            )
        scheme, rest = match.groups()
        if scheme == "file" and not rest.startswith("/"):
            raise ValueError(f"{value!r}: a file source needs an absolute path, file:///PATH")
        if scheme == "hf" and len([p for p in rest.split("/") if p]) != 2:
            raise ValueError(f"{value!r}: a Hugging Face source is hf://ORG/NAME")
        return value

    @property
    def scheme(self) -> str:
        match = CACHE_SOURCE_PATTERN.match(self.source)
        assert match is not None
        return match.group(1)

    @property
    def model_dir(self) -> str:
        """The model's directory under the claim: ``ORG--NAME`` (the path with ``/`` -> ``--``)."""
        match = CACHE_SOURCE_PATTERN.match(self.source)
        assert match is not None
        return "--".join(p for p in match.group(2).split("/") if p)

    @property
    def claim(self) -> str | None:
        return self.storage.claim_name


class ResolvedRevision(_Model):
    """A requested revision and the commit it resolved to."""

    requested: str = Field(description="The revision as written in spec.revision.")
    commit: str = Field(description="The commit (or, for non-hf sources, the label) filled.")


class K2ThinkModelCacheStatus(_Model):
    """Observed state, written by the operator."""

    observed_generation: Int64 | None = Field(
        default=None, description="Generation last reconciled."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="CacheReady: True exactly when the current revision is complete and "
        "verified at the path replicas mount.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: str | None = Field(
        default=None,
        description="One-word summary for kubectl get: ClaimPending, Downloading, Ready, "
        "DownloadFailed or VerifyFailed. Conditions are the API.",
    )
    claim_name: str | None = Field(default=None, description="The claim holding the weights.")
    resolved_revisions: list[ResolvedRevision] | None = Field(
        default=None,
        max_length=16,
        description="Branches and tags resolved to commits, once each.",
    )
    ready_revisions: list[str] | None = Field(
        default=None,
        max_length=32,
        description="Complete and verified revisions on the claim, newest first.",
    )
    current_revision: str | None = Field(
        default=None,
        description="The revision deployments serve: the newest ready one. It moves to a new "
        "revision only once that revision is complete and verified.",
    )
    path: str | None = Field(
        default=None, description="Path of the current revision inside the claim."
    )
    fill_job: str | None = Field(default=None, description="The last fill Job.")


class K2ThinkModelCache(_Model):
    """K2ThinkModelCache keeps one verified copy of a model's weights on a claim, filled once by
    a Job, for the K2ThinkDeployments that name it in spec.model.cacheRef."""

    api_version: str | None = Field(default=None, description="API version of this object.")
    kind: str | None = Field(default=None, description="Kind of this object.")
    metadata: Annotated[dict[str, Any], WithJsonSchema({"type": "object"})] = Field(
        default_factory=dict
    )
    spec: K2ThinkModelCacheSpec = Field(description="Desired state of a model cache.")
    status: K2ThinkModelCacheStatus | None = Field(
        default=None, description="Observed state, written by the operator."
    )


def parse_cache_spec(raw: dict[str, Any]) -> K2ThinkModelCacheSpec:
    """Parse ``.spec`` of a K2ThinkModelCache; raises InvalidSpec naming every bad field."""
    try:
        return K2ThinkModelCacheSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(format_validation_error(error)) from None


def created_claim_name(cache_name: str) -> str:
    """Name of the claim the operator creates for a cache without storage.claimName."""
    return f"{cache_name}-weights"


def claim_of(spec: K2ThinkModelCacheSpec, cache_name: str) -> str:
    return spec.storage.claim_name or created_claim_name(cache_name)


def revision_path(spec: K2ThinkModelCacheSpec, commit: str) -> str:
    """Path of one revision inside the claim: ``ORG--NAME/COMMIT``."""
    return f"{spec.model_dir}/{commit}"
