"""Offline check of a K2ThinkDeployment document the way the API server checks it on a write.

The API server validates the CRD's OpenAPI schema, applies its defaults and evaluates its CEL
rules (``x-kubernetes-validations``); ``validate`` does the same on a laptop, so that a GitOps
pipeline refuses a bad file before it reaches a cluster and the two never disagree. That includes
YAML type confusion the spec models would coerce: ``parallelism.tensor: "4"`` is a string, which
the int-or-string rule refuses (``"4"`` is neither ``'auto'`` nor an integer).

CEL is evaluated with ``common-expression-language`` (Python bindings of the cel-rust
interpreter). Kubernetes' own CEL library adds functions (quantity, url, lists extensions) that
our rules do not use; a rule that used one would fail here with "could not be evaluated", which
a unit test over every rule of the CRD would catch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import cel
from jsonschema import Draft4Validator, validators

from k2think_operator.api.crd import openapi_schema
from k2think_operator.api.schema import VALIDATIONS, Schema
from k2think_operator.api.spec import SpecError


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
    copy_ = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        copy_["additionalProperties"] = False
    return copy_


def _integer(checker: Any, instance: Any) -> bool:
    """An integer as the API server decodes JSON: ``32768.0`` is the integer 32768."""
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())


#: Draft 4 (OpenAPI v3.0's dialect) with the API server's reading of integers.
_ApiServerValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft4Validator, type_checker=Draft4Validator.TYPE_CHECKER.redefine("integer", _integer)
)


@lru_cache(maxsize=1)
def _validator() -> Any:
    schema = strict(openapi_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    return _ApiServerValidator(schema)


def as_stored(value: Any, schema: Schema) -> Any:
    """``value`` as the API server stores it: null fields pruned, integral floats in integer
    fields as integers (``32768.0`` -> ``32768``)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        values = schema.get("additionalProperties")
        extra = values if isinstance(values, dict) else {}
        return {
            key: as_stored(child, props.get(key) or extra)
            for key, child in value.items()
            if child is not None
        }
    if isinstance(value, list):
        items = schema.get("items")
        return [as_stored(item, items if isinstance(items, dict) else {}) for item in value]
    if isinstance(value, float) and value.is_integer() and _is_integer_schema(schema):
        return int(value)
    return value


def _is_integer_schema(schema: Schema) -> bool:
    if schema.get("type") == "integer":
        return True
    return any(b.get("type") == "integer" for b in schema.get("anyOf") or [])


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def with_defaults(value: Any, schema: Schema) -> Any:
    """A copy of ``value`` with the schema's defaults filled in, as the API server stores it."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        out = {key: with_defaults(child, props.get(key) or {}) for key, child in value.items()}
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            out = {key: with_defaults(child, values) for key, child in out.items()}
        for key, child in props.items():
            if key not in out and "default" in child:
                out[key] = copy.deepcopy(child["default"])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(item, schema["items"]) for item in value]
    return value


@lru_cache(maxsize=64)
def _program(rule: str) -> Any:
    return cel.compile(rule)


def evaluate_rule(rule: str, value: Any) -> bool | str:
    """True/False as the API server would decide, or the evaluation error as text."""
    try:
        result = _program(rule).execute({"self": value})
    except Exception as error:  # the interpreter raises KeyError, TypeError, ValueError, ...
        return f"{type(error).__name__}: {error}"
    return result is True


def _rules_in(value: Any, schema: Schema, path: list[Any]) -> Iterator[tuple[list[Any], Any, Any]]:
    """Every (path, value, rule) the API server would evaluate for this value, depth first."""
    for rule in schema.get(VALIDATIONS) or []:
        yield path, value, rule
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        values = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key) or (values if isinstance(values, dict) else None)
            if sub is not None:
                yield from _rules_in(child, sub, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _rules_in(item, schema["items"], [*path, index])


def cel_errors(document: dict[str, Any], schema: Schema | None = None) -> list[SpecError]:
    """The CEL rules of the schema that ``document`` (defaults applied) violates."""
    schema = schema if schema is not None else openapi_schema()
    defaulted = with_defaults(document, schema)
    problems: list[SpecError] = []
    for path, value, rule in _rules_in(defaulted, schema, []):
        verdict = evaluate_rule(rule["rule"], value)
        if verdict is True:
            continue
        message = str(rule.get("message") or f"failed rule: {rule['rule']}")
        if verdict is not False:
            message += f" (rule {rule['rule']!r} could not be evaluated: {verdict})"
        where = [*path, *str(rule.get("fieldPath") or "").strip(".").split(".")]
        problems.append(SpecError(_path([p for p in where if p != ""]), message))
    return problems


def list_map_errors(value: Any, schema: Schema, path: list[Any]) -> Iterator[SpecError]:
    """Duplicate keys in ``x-kubernetes-list-type: map`` lists, worded as the API server's
    structured-merge-diff does (``duplicate entries for key [name="h100"]``)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        values = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key) or (values if isinstance(values, dict) else None)
            if sub is not None:
                yield from list_map_errors(child, sub, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        if schema.get("x-kubernetes-list-type") == "map" and keys:
            seen: set[tuple[Any, ...]] = set()
            for item in value:
                if not isinstance(item, dict):
                    continue
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    text = ",".join(f'{k}="{v}"' for k, v in zip(keys, key, strict=True))
                    yield SpecError(_path(path), f"duplicate entries for key [{text}]")
                seen.add(key)
        for index, item in enumerate(value):
            yield from list_map_errors(item, schema["items"], [*path, index])


def schema_errors(document: dict[str, Any]) -> list[SpecError]:
    """Every schema violation, each with the path of the offending field; then the CEL rules.

    CEL runs only on a document the schema accepts: the API server compiles its rules against
    the declared types, so a value of the wrong type never reaches them. The document is read
    as the server stores it first (``as_stored``: nulls pruned, ``32768.0`` an integer).
    """
    document = as_stored(document, openapi_schema())
    errors = sorted(
        _validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path))
    )
    problems: list[SpecError] = []
    for e in errors:
        path = list(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            # Name the unknown field itself, as the API server does (strict field validation:
            # ".spec.replica: field not declared in schema").
            known = set((e.schema.get("properties") or {}) if isinstance(e.schema, dict) else ())
            for key in sorted(set(e.instance) - known):
                problems.append(SpecError(_path([*path, key]), "field not declared in schema"))
            continue
        problems.append(SpecError(_path(path), e.message))
    if not problems:
        problems = list(list_map_errors(document, openapi_schema(), []))
    return problems or cel_errors(document)
