"""What every model of the spec shares: the pydantic base and the patterns of names and sources.

It is its own module so that the spec's parts can live in several modules (``spec.py`` for the
deployment, ``serving.py`` for routing and speculative decoding) that all import the same base
without importing one another in a circle.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

#: Git revisions (branches, tags, commits): no spaces, newlines or shell syntax.
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
SOURCE_PATTERN = re.compile(r"^(hf|s3|gs|pvc|file)://(.+)$")
#: What the API server checks of a model source; ``source_problem`` says more, offline.
SOURCE_SCHEMA_PATTERN = r"^(hf|s3|gs|pvc|file)://.+$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Claim names are DNS subdomains (Pod validation of the volume that mounts a pvc:// source).
CLAIM_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def source_problem(value: str) -> str | None:
    """Why ``value`` is not a model source the operator can load, or None."""
    match = SOURCE_PATTERN.match(value)
    if not match:
        return (
            f"{value!r} is not a model source; use hf://ORG/NAME, s3://BUCKET/PATH, "
            "gs://BUCKET/PATH, pvc://CLAIM/PATH or file:///ABSOLUTE/PATH"
        )
    scheme, rest = match.groups()
    if scheme == "pvc" and "/" not in rest.strip("/"):
        return f"{value!r}: a pvc source needs a claim and a path, pvc://CLAIM/PATH"
    if scheme == "pvc" and not re.fullmatch(CLAIM_NAME, rest.split("/", 1)[0]):
        # The worker pods mount it as a volume: Pod validation would refuse the claim name.
        return (
            f"{value!r}: {rest.split('/', 1)[0]!r} is not a valid claim name (lowercase "
            "letters, digits, '-' and '.')"
        )
    if scheme == "file" and not rest.startswith("/"):
        return f"{value!r}: a file source needs an absolute path, file:///PATH"
    if ".." in rest.split("/"):
        # pvc:// paths are joined under the claim's mount point and file:// paths are read
        # by vLLM as they are: a '..' segment would reach outside what the user named.
        return f"{value!r}: '..' path segments are not allowed"
    return None
