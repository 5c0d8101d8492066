"""The committed CRD says what the pydantic models say, field by field.

``test_committed_crd_matches_code`` proves the YAML is what the generator prints. This test does
not trust the generator: it reads the models' own field metadata (names, required, defaults,
descriptions, bounds, patterns, Literal values, CEL markers) and compares it with the committed
YAML. The mutation tests below show it fails for the two ways the copies used to drift apart: a
field added to a model only, and a bound raised in the CRD only.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from k2think_operator.api.resource import K2ThinkDeployment, K2ThinkDeploymentStatus
from k2think_operator.api.schema import (
    INT_OR_STRING,
    PRESERVE_UNKNOWN,
    VALIDATIONS,
    Cel,
    IntOrString,
    SchemaExtra,
    cel_rules,
)
from k2think_operator.api.spec import K2ThinkDeploymentSpec, ModelSpec, PoolSpec
from tests.conftest import ROOT

CRD_FILE = ROOT / "crds" / "k2think.dev_k2thinkdeployments.yaml"

#: Keywords a field's metadata decides; the CRD may carry no other value validation.
CHECKED = (
    "type",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "enum",
    "format",
    INT_OR_STRING,
    PRESERVE_UNKNOWN,
    VALIDATIONS,
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


def committed_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _split_annotated(annotation: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while get_origin(annotation) is typing.Annotated:
        annotation, *extra = get_args(annotation)
        metadata += extra
    return annotation, metadata


def _json_type(annotation: Any) -> str | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    origin = get_origin(annotation)
    if origin is list:
        return "array"
    if origin is dict:
        return "object"
    if origin is Literal:
        return "string"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation)


def expected_keywords(
    annotation: Any, metadata: list[Any], info: FieldInfo | None
) -> dict[str, Any]:
    """What the CRD must say about one value, read from the model's type and field metadata."""
    annotation, inner = _split_annotated(_strip_optional(annotation))
    metadata = [*metadata, *inner]
    # ``Field(...)`` inside ``Annotated`` (as in ``Quantity``) carries its own metadata.
    metadata += [m for info_ in metadata if isinstance(info_, FieldInfo) for m in info_.metadata]
    want: dict[str, Any] = {}
    if any(isinstance(m, IntOrString) for m in metadata):
        want[INT_OR_STRING] = True
    else:
        kind = _json_type(annotation)
        if kind:
            want["type"] = kind
    if get_origin(annotation) is Literal:
        want["enum"] = list(get_args(annotation))
    if get_origin(annotation) is dict and get_args(annotation)[1] is Any:
        want[PRESERVE_UNKNOWN] = True
    sized = {"array": ("minItems", "maxItems"), "object": ("minProperties", "maxProperties")}
    lengths = sized.get(want.get("type", ""), ("minLength", "maxLength"))
    rules = [m.as_schema() for m in metadata if isinstance(m, Cel)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        rules += [r.as_schema() for r in cel_rules(annotation) if r.on is None]
    for item in metadata:
        for attribute, keyword in (
            ("ge", "minimum"),
            ("le", "maximum"),
            ("gt", "minimum"),
            ("min_length", lengths[0]),
            ("max_length", lengths[1]),
            ("pattern", "pattern"),
        ):
            value = getattr(item, attribute, None)
            if value is not None:
                want[keyword] = value
                if attribute == "gt":
                    want["exclusiveMinimum"] = True
    if rules:
        want[VALIDATIONS] = rules
    for item in metadata:
        if isinstance(item, SchemaExtra):
            want.update(dict(item.values))
    if info is not None:
        extra = info.json_schema_extra
        if isinstance(extra, dict):
            want.update(copy.deepcopy(extra))
        if info.default not in (PydanticUndefined, None) and info.default_factory is None:
            want["default"] = info.default
    return want


def differences(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    """Every way ``schema`` (an object node of the CRD) disagrees with ``model``."""
    found: list[str] = []
    props = schema.get("properties") or {}
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    for name in sorted(set(fields) - set(props)):
        found.append(f"{path}.{name}: in the model, not in the CRD")
    for name in sorted(set(props) - set(fields)):
        found.append(f"{path}.{name}: in the CRD, not in the model")
    required = [alias for alias, info in fields.items() if info.is_required()]
    if required != (schema.get("required") or []):
        found.append(f"{path}: required {schema.get('required')} != model {required}")
    for alias in sorted(set(fields) & set(props)):
        info, node = fields[alias], props[alias]
        where = f"{path}.{alias}"
        if node.get("description") != " ".join((info.description or "").split()):
            found.append(f"{where}: description differs")
        want = expected_keywords(info.annotation, list(info.metadata), info)
        on_field = [r.as_schema() for r in cel_rules(model) if r.on == alias]
        if on_field:
            want[VALIDATIONS] = want.get(VALIDATIONS, []) + on_field
        have = {k: node[k] for k in CHECKED if k in node}
        if have != want:
            found.append(f"{where}: CRD {have} != model {want}")
        found += _nested(info.annotation, node, where)
    return found


def _nested(annotation: Any, node: dict[str, Any], path: str) -> list[str]:
    annotation, _ = _split_annotated(_strip_optional(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return differences(annotation, node, path)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and isinstance(node.get("items"), dict):
        item, item_meta = _split_annotated(args[0])
        items = node["items"]
        found = _nested(item, items, f"{path}[]")
        if isinstance(item, type) and issubclass(item, BaseModel):
            if items.get("description") != " ".join((item.__doc__ or "").split()):
                found.append(f"{path}[]: description differs from {item.__name__}'s docstring")
        else:
            want = expected_keywords(args[0], item_meta, None)
            have = {k: items[k] for k in CHECKED if k in items}
            if have != want:
                found.append(f"{path}[]: CRD {have} != model {want}")
        return found
    if origin is dict and args[1] is not Any:
        values = node.get("additionalProperties")
        if not isinstance(values, dict):
            return [f"{path}: the model has a typed map, the CRD no additionalProperties"]
        want = expected_keywords(args[1], [], None)
        have = {k: values[k] for k in CHECKED if k in values}
        found = [] if have == want else [f"{path}{{}}: CRD {have} != model {want}"]
        return found + _nested(args[1], values, f"{path}{{}}")
    return []


def root_differences(schema: dict[str, Any]) -> list[str]:
    props = schema["properties"]
    found = []
    for name, model in (("spec", K2ThinkDeploymentSpec), ("status", K2ThinkDeploymentStatus)):
        want = [r.as_schema() for r in cel_rules(model) if r.on is None]
        if want != (props[name].get(VALIDATIONS) or []):
            found.append(f"{name}: CEL {props[name].get(VALIDATIONS)} != model {want}")
    return (
        found
        + differences(K2ThinkDeploymentSpec, props["spec"], "spec")
        + differences(K2ThinkDeploymentStatus, props["status"], "status")
    )


def test_committed_crd_agrees_with_the_models() -> None:
    assert root_differences(committed_schema()) == []


def test_root_fields() -> None:
    props = committed_schema()["properties"]
    aliases = {info.alias or name for name, info in K2ThinkDeployment.model_fields.items()}
    assert set(props) == aliases


# ---------------------------------------------------------------- the mutations it must catch


def _with_field(model: type[BaseModel], **fields: Any) -> type[BaseModel]:
    extended: type[BaseModel] = create_model(model.__name__, __base__=model, **fields)
    return extended


def test_parity_catches_a_field_added_to_a_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    extended = _with_field(
        PoolSpec, max_pods=(int | None, Field(default=None, alias="maxPods", description="x"))
    )
    spec_fields = dict(K2ThinkDeploymentSpec.model_fields)
    pools = copy.copy(spec_fields["pools"])
    pools.annotation = list[extended]  # type: ignore[valid-type]
    spec_fields["pools"] = pools
    monkeypatch.setattr(K2ThinkDeploymentSpec, "model_fields", spec_fields)
    assert "spec.pools[].maxPods: in the model, not in the CRD" in root_differences(
        committed_schema()
    )


def test_parity_catches_a_bound_raised_in_the_crd_only() -> None:
    schema = committed_schema()
    model = schema["properties"]["spec"]["properties"]["model"]
    model["properties"]["maxModelLen"]["maximum"] = 2097152
    found = root_differences(schema)
    assert len(found) == 1 and found[0].startswith("spec.model.maxModelLen: CRD"), found


def test_parity_catches_a_bound_added_in_the_crd_only() -> None:
    schema = committed_schema()
    schema["properties"]["spec"]["properties"]["suspend"]["enum"] = [False]
    assert any(f.startswith("spec.suspend: CRD") for f in root_differences(schema))


def test_parity_catches_a_cel_rule_dropped_from_the_crd() -> None:
    schema = committed_schema()
    del schema["properties"]["spec"]["properties"]["autoscaling"][VALIDATIONS][1]
    assert any(f.startswith("spec.autoscaling: CRD") for f in root_differences(schema))


def test_presets_come_from_the_catalog() -> None:
    from k2think_operator.api.catalog import MODEL_PRESETS

    preset = committed_schema()["properties"]["spec"]["properties"]["model"]["properties"]
    assert preset["preset"]["enum"] == [*sorted(MODEL_PRESETS), "custom"]
    assert ModelSpec.model_fields["preset"].default in MODEL_PRESETS
