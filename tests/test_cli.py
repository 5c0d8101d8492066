"""The offline commands: render, plan, validate (and crd), as a user runs them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2think_operator.cli import main
from tests.conftest import EXAMPLES, ROOT, minimal_doc


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "k2t.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_all_commands_work_on_examples(example: Path) -> None:
    code, out, _ = run("validate", "-f", str(example))
    assert code == 0 and out.strip().endswith("valid")
    code, out, _ = run("plan", "-f", str(example))
    assert code == 0 and "tensor x pipeline" in out
    code, out, _ = run("plan", "-f", str(example), "-o", "json")
    assert code == 0 and json.loads(out)["plan"]["tensorParallel"] >= 1
    code, out, _ = run("render", "-f", str(example))
    docs = list(yaml.safe_load_all(out))
    assert code == 0 and [d["kind"] for d in docs] == [
        "RayService",
        "Secret",
        "NetworkPolicy",
        "NetworkPolicy",
    ]


def test_validate_reports_field_path_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_doc(parallelism={"tensor": 3}))
    code, out, err = run("validate", "-f", path)
    assert code == 1 and out == ""
    assert err.strip() == (
        "team-a/demo: spec.parallelism.tensor: tensor=3 does not divide the 40 attention heads "
        "of k2-think"
    )


def test_validate_reports_schema_errors(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_doc(pools=[{"name": "p", "gpuType": "H900"}], replicas=-2))
    code, _, err = run("validate", "-f", path)
    assert code == 1
    assert "spec.pools[0].gpuType: 'H900' is not one of" in err
    assert "spec.replicas: -2 is less than the minimum of 0" in err


def test_render_refuses_invalid_input(tmp_path: Path) -> None:
    path = write(tmp_path, minimal_doc(autoscaling={"minReplicas": 3, "maxReplicas": 1}))
    code, out, err = run("render", "-f", path)
    assert code == 1 and out == ""
    assert "minReplicas" in err


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    code, _, err = run("validate", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and "No such file" in err
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, _, err = run("plan", "-f", str(other))
    assert code == 2 and "no K2ThinkDeployment" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    code, _, err = run("render", "-f", str(broken))
    assert code == 2 and "not valid YAML" in err


def test_multi_document_files(tmp_path: Path) -> None:
    a, b = minimal_doc(), minimal_doc(replicas=2)
    b["metadata"]["name"] = "second"
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([a, {"kind": "ConfigMap", "apiVersion": "v1"}, b]))
    code, out, _ = run("render", "-f", str(path))
    assert code == 0
    rendered = [d for d in yaml.safe_load_all(out) if d["kind"] == "RayService"]
    assert [d["metadata"]["name"] for d in rendered] == ["demo", "second"]


def test_crd_command_prints_the_committed_crd() -> None:
    code, out, _ = run("crd")
    assert code == 0
    assert out == (ROOT / "crds" / "k2think.dev_k2thinkdeployments.yaml").read_text()


def test_run_requires_a_scope() -> None:
    code, _, err = run("run")
    assert code == 2 and "--all-namespaces" in err


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "k2think_operator.cli", "plan", "-f", str(EXAMPLES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GPUs per replica" in result.stdout
