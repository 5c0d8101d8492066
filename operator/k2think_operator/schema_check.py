"""Offline check of a K2ThinkDeployment document against the CRD's OpenAPI schema.

The API server does this (plus CEL) on every write; ``validate`` does it on a laptop so that a
GitOps pipeline can refuse a bad file before it reaches a cluster. CEL rules are mirrored by the
spec models, which run right after this.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jsonschema import Draft4Validator

from k2think_operator.crd import openapi_schema
from k2think_operator.spec import SpecError


@lru_cache(maxsize=1)
def _validator() -> Draft4Validator:
    return Draft4Validator(openapi_schema())


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def schema_errors(document: dict[str, Any]) -> list[SpecError]:
    """Every schema violation, each with the path of the offending field."""
    errors = sorted(
        _validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path))
    )
    return [SpecError(_path(list(e.absolute_path)), e.message) for e in errors]
