"""The bad input corpus, offline: ``validate`` refuses every case with the expected field path
and message, at the stage the API server would (schema + CEL) or after it (semantic checks).

The same cases go through the API server's admission and the running operator in
``e2e/test_bad_specs.py``; together they prove validate agrees with the API server.
"""

from __future__ import annotations

import json

import pytest

from k2think_operator.api.schema_check import schema_errors
from k2think_operator.cli import check_document, main
from tests.corpus import CATEGORIES, Case, load_cases

CASES = load_cases()


def test_the_corpus_is_large_distinct_and_covers_every_category() -> None:
    assert len(CASES) >= 150
    documents = {json.dumps(c.document(), sort_keys=True) for c in CASES}
    assert len(documents) == len(CASES), "two cases build the same document"
    assert {c.category for c in CASES} == set(CATEGORIES)
    assert all(c.api_server in ("refuse", "accept") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
def test_validate_refuses_with_the_expected_field_and_message(case: Case) -> None:
    problems, _ = check_document(case.document())
    assert problems, f"{case.slug}: validate says valid"
    # Each problem reads "<field>: <message>".
    matching = [p for p in problems if p.startswith(f"{case.field}: ") and case.validate in p]
    assert matching, f"{case.slug}: {problems}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.slug)
def test_validate_refuses_at_the_stage_the_api_server_does(case: Case) -> None:
    """Schema/CEL errors exactly for what the API server refuses; none for what it admits."""
    at_admission = schema_errors(case.document())
    if case.refused_by_api_server:
        assert any(p.field == case.field for p in at_admission), [str(p) for p in at_admission]
    else:
        assert at_admission == [], [str(p) for p in at_admission]


def test_validate_command_prints_path_and_message(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    import yaml

    path = Path(str(tmp_path)) / "bad.yaml"
    (case,) = [c for c in CASES if c.slug.endswith("tensor-as-string")]
    path.write_text(yaml.safe_dump(case.document(namespace="team")))
    assert main(["validate", "-f", str(path)]) != 0
    err = capsys.readouterr().err
    assert f"team/k2think: {case.field}: {case.validate}" in err
