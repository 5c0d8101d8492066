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


def strict(schema: Any) -> Any:
    """A copy in which objects with declared properties refuse unknown ones.

    Structural CRD schemas cannot say ``additionalProperties: false``; the API server instead
    prunes unknown fields, or refuses them under strict field validation (kubectl's default).
    Offline we want the refusal, with its path.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        copy["additionalProperties"] = False
    return copy


@lru_cache(maxsize=1)
def _validator() -> Draft4Validator:
    schema = strict(openapi_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    return Draft4Validator(schema)


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
