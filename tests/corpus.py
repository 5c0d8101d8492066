"""The bad input corpus (``tests/bad_specs/*.yaml``): loading and building the documents.

Shared by the offline test (``tests/test_bad_specs.py``: what ``validate`` says) and the e2e
one (``e2e/test_bad_specs.py``: what the API server's admission and the running operator say),
so the three checks read the very same cases.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_specs"
EXAMPLES = ROOT / "crds" / "examples"
CATEGORIES = (
    "schema",
    "cel",
    "semantic",
    "type-confusion",
    "hostile",
    "length",
    "path",
    "numbers",
)


def merge(base: Any, patch: Any) -> Any:
    """Maps merge key by key, ``null`` removes a key, anything else (lists too) replaces."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Case:
    slug: str
    path: Path
    description: str
    category: str
    base: str
    metadata: dict[str, Any]
    spec: dict[str, Any]
    field: str
    validate: str
    api_server: str  # "refuse" or "accept"
    api_server_message: str | None

    @property
    def refused_by_api_server(self) -> bool:
        return self.api_server == "refuse"

    @property
    def renames(self) -> bool:
        """The case is about the name: it can only be created, never be an edit."""
        return "name" in self.metadata

    def document(self, *, namespace: str = "default", name: str | None = None) -> dict[str, Any]:
        """The example ``base`` with this case's changes, as a user would apply it."""
        doc: dict[str, Any] = yaml.safe_load((EXAMPLES / self.base).read_text())
        doc["metadata"] = merge(doc["metadata"], self.metadata)
        if name is not None and not self.renames:
            doc["metadata"]["name"] = name
        doc["metadata"]["namespace"] = namespace
        doc["spec"] = merge(doc["spec"], self.spec)
        return doc

    def good_document(
        self, *, namespace: str = "default", name: str | None = None
    ) -> dict[str, Any]:
        """The example before the change (what a fix goes back to)."""
        doc: dict[str, Any] = yaml.safe_load((EXAMPLES / self.base).read_text())
        if name is not None:
            doc["metadata"]["name"] = name
        doc["metadata"]["namespace"] = namespace
        return doc


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        raw: dict[str, Any] = yaml.safe_load(path.read_text())
        expect = raw["expect"]
        cases.append(
            Case(
                slug=path.stem,
                path=path,
                description=str(raw["description"]),
                category=str(raw["category"]),
                base=str(raw.get("base") or "k2think.yaml"),
                metadata=dict(raw.get("metadata") or {}),
                spec=dict(raw.get("spec") or {}),
                field=str(expect["field"]),
                validate=str(expect["validate"]),
                api_server=str(expect["apiServer"]),
                api_server_message=expect.get("apiServerMessage"),
            )
        )
    return cases
