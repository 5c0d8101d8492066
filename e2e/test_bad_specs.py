"""The bad input corpus (``tests/bad_specs/``) against the real API server and operator.

1. Admission: every case is sent with ``kubectl apply --server-side --dry-run=server`` (strict
   field validation, the CRD schema, its CEL rules; nothing is stored), in parallel. Cases marked
   ``apiServer: refuse`` must be refused naming the expected field; ``accept`` ones admitted. With
   the offline test of the same files this is "validate agrees with the API server".
2. The operator on running deployments, for every case the API server admits: one healthy
   deployment per case, all edited to their bad spec at once -> ``InvalidSpec`` with the field and
   message, a Warning event, and the RayService untouched (same resourceVersion); then all fixed
   -> ``InvalidSpec`` False. Cases about the name can only be created: -> ``InvalidSpec``, no
   RayService.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster
from support import (
    OperatorProcess,
    condition,
    eventually,
    holds_without_fight,
    items,
    namespace,
)
from tests.corpus import Case, load_cases

CASES = load_cases()
ADMITTED = [c for c in CASES if not c.refused_by_api_server]


def _dry_run(cluster: Cluster, doc: dict[str, Any]) -> tuple[int, str]:
    proc = cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=e2e-user",
        "-f",
        "-",
        input=json.dumps(doc),
        check=False,
    )
    return proc.returncode, proc.stderr.strip()


def api_field_spellings(case: Case) -> list[str]:
    """The field as the API server may spell it: server-side apply names the entries of a
    list-map by key (``spec.pools[name="h100"].gpuCount``), validation by index."""
    spellings = [case.field]
    match = re.match(r"^spec\.pools\[(\d+)\](.*)$", case.field)
    if match:
        pools = case.document()["spec"].get("pools")
        index = int(match.group(1))
        if isinstance(pools, list) and index < len(pools) and isinstance(pools[index], dict):
            spellings.append(f'spec.pools[name="{pools[index].get("name")}"]{match.group(2)}')
    return spellings


def test_api_server_admission_agrees_with_the_corpus(cluster: Cluster) -> None:
    with namespace(cluster, "bad-specs-admission") as ns, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda c: _dry_run(cluster, c.document(namespace=ns)), CASES))
    wrong = []
    for case, (code, stderr) in zip(CASES, answers, strict=True):
        if case.refused_by_api_server:
            if code == 0:
                wrong.append(f"{case.slug}: admitted, expected a refusal naming {case.field}")
            elif not any(f in stderr for f in api_field_spellings(case)):
                wrong.append(f"{case.slug}: refused without naming {case.field}: {stderr}")
            elif case.api_server_message and case.api_server_message not in stderr:
                wrong.append(f"{case.slug}: {case.api_server_message!r} not in: {stderr}")
        elif code != 0:
            wrong.append(f"{case.slug}: refused, expected the operator to judge it: {stderr}")
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, ["--all-namespaces"], log_dir / "operator-bad-specs.log")
    op.start()
    yield op
    op.stop()


def _apply_all(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": docs}
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=e2e-user", "-f", "-", input=json.dumps(body)
    )


def _by_name(cluster: Cluster, kind: str, ns: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in items(cluster, kind, ns)}


def _invalid_as_expected(cr: dict[str, Any] | None, case: Case, generation: int) -> bool:
    if cr is None or (cr.get("status") or {}).get("observedGeneration") != generation:
        return False
    invalid = condition(cr, "InvalidSpec")
    if invalid is None or invalid.get("status") != "True":
        return False
    message = str(invalid.get("message"))
    return f"{case.field}: " in message and case.validate in message


def test_operator_refuses_admitted_bad_edits_leaves_rayservice_and_heals(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    edits = [c for c in ADMITTED if not c.renames]
    names = {c.slug: f"c{c.slug[:3]}" for c in edits}
    with namespace(cluster, "bad-specs-operator") as ns:
        _apply_all(cluster, [c.good_document(namespace=ns, name=names[c.slug]) for c in edits])

        def all_children() -> dict[str, dict[str, Any]] | None:
            found = _by_name(cluster, "rayservices.ray.io", ns)
            return found if len(found) == len(edits) else None

        before = eventually(f"{len(edits)} RayServices", all_children, timeout=120)
        eventually(
            "every deployment observed",
            lambda: all(
                (cr.get("status") or {}).get("observedGeneration") == 1
                for cr in _by_name(cluster, "k2thinkdeployments.k2think.dev", ns).values()
            ),
            timeout=120,
        )

        _apply_all(cluster, [c.document(namespace=ns, name=names[c.slug]) for c in edits])

        def all_invalid() -> bool:
            crs = _by_name(cluster, "k2thinkdeployments.k2think.dev", ns)
            return all(_invalid_as_expected(crs.get(names[c.slug]), c, 2) for c in edits)

        try:
            eventually("InvalidSpec on every bad edit", all_invalid, timeout=120)
        except TimeoutError:
            crs = _by_name(cluster, "k2thinkdeployments.k2think.dev", ns)
            report = {
                c.slug: condition(crs.get(names[c.slug]), "InvalidSpec")
                for c in edits
                if not _invalid_as_expected(crs.get(names[c.slug]), c, 2)
            }
            raise AssertionError(json.dumps(report, indent=1)) from None

        def changed() -> list[str]:
            after = _by_name(cluster, "rayservices.ray.io", ns)
            return [
                n
                for n, rs in before.items()
                if (after.get(n) or {}).get("metadata", {}).get("resourceVersion")
                != rs["metadata"]["resourceVersion"]
            ]

        # Over resync passes, not once: a rejected spec never changes what is running.
        holds_without_fight(
            "no RayService changed by an invalid edit", lambda: not changed(), operator
        )
        assert not changed(), f"RayServices changed by an invalid edit: {changed()}"
        warned = {
            e["involvedObject"]["name"]
            for e in items(cluster, "events", ns)
            if e.get("type") == "Warning" and e.get("reason") == "InvalidSpec"
        }
        assert set(names.values()) <= warned, set(names.values()) - warned

        _apply_all(cluster, [c.good_document(namespace=ns, name=names[c.slug]) for c in edits])

        def healed() -> bool:
            crs = _by_name(cluster, "k2thinkdeployments.k2think.dev", ns)
            return all(
                (cr.get("status") or {}).get("observedGeneration") == 3
                and (condition(cr, "InvalidSpec") or {}).get("status") == "False"
                for cr in crs.values()
            )

        eventually("every deployment healed", healed, timeout=120)


def test_operator_refuses_names_its_children_cannot_take(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    named = [c for c in ADMITTED if c.renames]
    assert named
    with namespace(cluster, "bad-specs-names") as ns:
        _apply_all(cluster, [c.document(namespace=ns) for c in named])

        def all_invalid() -> bool:
            crs = _by_name(cluster, "k2thinkdeployments.k2think.dev", ns)
            return all(_invalid_as_expected(crs.get(c.metadata["name"]), c, 1) for c in named)

        eventually("InvalidSpec on every bad name", all_invalid, timeout=90)
        assert items(cluster, "rayservices.ray.io", ns) == []
