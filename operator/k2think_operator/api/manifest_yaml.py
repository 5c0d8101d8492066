"""Read a manifest file as kubectl reads it, so offline ``validate`` sees the same values.

kubectl decodes YAML with ``sigs.k8s.io/yaml`` (go-yaml v2 underneath, strict mode) and sends
JSON. PyYAML's defaults differ where it matters:

- YAML 1.1 sexagesimal numbers: PyYAML reads ``15:00`` as the integer 900; go-yaml keeps the
  string ``"15:00"`` (which an integer field then refuses).
- timestamps: PyYAML builds ``date`` objects; go-yaml keeps strings.
- floats: go-yaml reads ``1e308`` (no dot) as a number, PyYAML as a string.
- duplicate keys: PyYAML keeps the last; kubectl refuses the file (``mapping key "x" already
  defined``).
- ``.inf`` / ``.nan``: JSON has no such numbers; kubectl refuses the file.

``SafeLoader`` with its number and timestamp resolvers replaced gives go-yaml's reading; the
rest of YAML (anchors, block scalars, booleans) is the same in both. Home-made because no PyPI
YAML library reproduces go-yaml v2's resolution (ruamel.yaml is YAML 1.2: it would read
``yes`` as a string where kubectl reads ``true``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml


class ManifestYamlError(ValueError):
    """The text is not a manifest kubectl would send."""


class _KubectlLoader(yaml.SafeLoader):
    """SafeLoader resolving scalars as go-yaml v2 does (module docstring)."""


_DROPPED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
_KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _KubectlLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise ManifestYamlError(
                f"line {mark.line + 1}: mapping key {key!r} already defined (kubectl refuses "
                "duplicate keys)"
            )
        seen.add(key)
    return dict(loader.construct_pairs(node, deep=True))


_KubectlLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _check_numbers(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ManifestYamlError(
            f"{path}: {value} is not a JSON number (kubectl cannot send it); write a finite number"
        )
    if isinstance(value, dict):
        for key, child in value.items():
            _check_numbers(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_numbers(child, f"{path}[{index}]")


def load_manifests(text: str) -> list[Any]:
    """Every non-empty document of ``text``, read as kubectl reads it."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_KubectlLoader) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestYamlError(f"not valid YAML: {error}") from None
    for doc in docs:
        _check_numbers(doc, "")
    return docs


def prune_nulls(value: Any) -> Any:
    """The object as the API server stores it: ``null`` fields of an object are dropped
    (structural schemas prune them; none of our fields is nullable)."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value
