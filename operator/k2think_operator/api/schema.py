"""Structural OpenAPI schemas for a CRD, generated from pydantic models (controller-gen's job).

The pydantic models in ``spec.py`` and ``resource.py`` are the API: field names (camelCase
aliases), types, descriptions (``Field(description=...)``, class docstrings for list items),
bounds, enums, patterns and defaults all come from them. Pydantic's own ``model_json_schema``
does the walking (``CrdSchemaGenerator`` below); this module adds what Kubernetes needs and
JSON Schema cannot say, and turns the result into a *structural* schema the API server accepts:

- ``Cel(rule, message)`` declares an ``x-kubernetes-validations`` rule. On a type (``Annotated``)
  it lands on that type's schema; as the ``@cel(...)`` decorator it sits beside the pydantic
  validator it mirrors and lands on the model's schema (or on one of its properties, ``on=``).
- ``IntOrString()`` marks a type the API server stores as int-or-string (quantities, degrees).
- ``dict[str, Any]`` (free-form) becomes ``x-kubernetes-preserve-unknown-fields``.
- ``Field(json_schema_extra=...)`` carries keywords only the schema has (an enum taken from the
  catalog beside the validator that checks it, ``format``, ``x-kubernetes-list-type``).

Post-processing (``structural``) inlines ``$ref``s, drops titles, ``null`` branches of optionals
and ``default: null``, ``additionalProperties: false`` (structural schemas prune instead), and
writes ``exclusiveMinimum`` the OpenAPI v3.0 way (a boolean beside ``minimum``).

Home-made because controller-gen reads Go types only and no maintained PyPI package turns
pydantic models into structural CRD schemas with CEL.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

VALIDATIONS = "x-kubernetes-validations"
INT_OR_STRING = "x-kubernetes-int-or-string"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
_CEL_ATTRIBUTE = "__k2t_cel_rules__"


@dataclass(frozen=True)
class Cel:
    """One CEL rule the API server evaluates (``self`` is the value it is declared on).

    ``on`` names a property of the model (its camelCase name) when the rule belongs to it
    rather than to the whole object, e.g. a rule over the ``pools`` list checked by a
    model-level validator.
    """

    rule: str
    message: str
    on: str | None = None
    #: The field the API server names in its error (``fieldPath``, relative: ``.initialReplicas``)
    #: when the rule is about one field of the object it is declared on.
    field_path: str | None = None

    def as_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault(VALIDATIONS, []).append(self.as_schema())
        return json_schema


def cel(
    rule: str, message: str, *, on: str | None = None, field_path: str | None = None
) -> Callable[[F], F]:
    """Declare, on a pydantic validator, the CEL rule that makes the API server check the same.

    Put it directly above the function (below ``@model_validator``); stacked rules keep their
    top-to-bottom order in the schema.
    """

    def mark(func: F) -> F:
        rules: tuple[Cel, ...] = getattr(func, _CEL_ATTRIBUTE, ())
        setattr(func, _CEL_ATTRIBUTE, (Cel(rule, message, on, field_path), *rules))
        return func

    return mark


def cel_rules(model: type[BaseModel]) -> list[Cel]:
    """The rules declared on a model's validators, in declaration order."""
    rules: list[Cel] = []
    decorators = model.__pydantic_decorators__
    for group in (decorators.model_validators, decorators.field_validators):
        for decorator in group.values():
            func = getattr(decorator.func, "__func__", decorator.func)
            rules.extend(getattr(func, _CEL_ATTRIBUTE, ()))
    return rules


@dataclass(frozen=True)
class IntOrString:
    """The value is stored as int-or-string; the schema keeps only its pattern (if any).

    Finer checks of the two branches (a range for the int, a constant for the string) belong in
    a ``Cel`` rule: structural schemas allow no types inside ``anyOf`` but these two.
    """

    description: str | None = None

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        inner = handler(schema)
        out: Schema = {INT_OR_STRING: True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        if "pattern" in inner:
            out["pattern"] = inner["pattern"]
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class SchemaExtra:
    """Keywords only the schema carries, for a type (``Field(json_schema_extra=...)`` is the
    same for one field): e.g. ``format: int64``."""

    values: tuple[tuple[str, Any], ...]

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(copy.deepcopy(dict(self.values)))
        return json_schema


#: An integer the API server stores as int64 (generations, token counts).
Int64 = Annotated[int, SchemaExtra((("format", "int64"),))]


class CrdSchemaGenerator(GenerateJsonSchema):
    """Pydantic's generator plus the CEL rules declared on each model's validators."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        rules = cel_rules(schema["cls"])
        if not rules:
            return json_schema
        target = self.resolve_ref_schema(json_schema) if "$ref" in json_schema else json_schema
        for rule in rules:
            where = target if rule.on is None else target["properties"][rule.on]
            where.setdefault(VALIDATIONS, []).append(rule.as_schema())
        return json_schema


def _merge_nullable(schema: Schema) -> Schema:
    """``X | None`` -> ``X``: the API server's "absent" is our ``None``."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return schema
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == len(branches):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def structural(schema: Any, defs: dict[str, Schema]) -> Any:
    """Turn pydantic's JSON Schema into a structural, inlined OpenAPI v3 schema."""
    if isinstance(schema, list):
        return [structural(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return structural({**target, **siblings}, defs)
    schema = _merge_nullable(schema)
    if "$ref" in schema:
        return structural(schema, defs)
    out: Schema = {}
    for key, value in schema.items():
        if key in ("title", "$defs"):
            continue
        if key == "default" and value is None:
            continue
        if key == "description":
            out[key] = " ".join(value.split())  # docstrings span lines; kubectl explain wraps
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            if value and "properties" not in schema:
                out[PRESERVE_UNKNOWN] = True
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {name: structural(child, defs) for name, child in value.items()}
            continue
        out[key] = structural(value, defs)
    return out


def crd_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of ``model`` (by alias, as the API server sees the object)."""
    generated = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=CrdSchemaGenerator
    )
    defs: dict[str, Schema] = generated.pop("$defs", {})
    result: Schema = structural(generated, defs)
    return result


def walk(schema: Schema, path: str = "") -> Iterable[tuple[str, Schema]]:
    """Every sub-schema with its dotted path (``[]`` for list items, ``{}`` for map values)."""
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from walk(items, f"{path}[]")
    values = schema.get("additionalProperties")
    if isinstance(values, dict):
        yield from walk(values, f"{path}{{}}")
