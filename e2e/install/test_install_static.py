"""Offline checks of the install artefacts (no cluster, no binaries): the chart's values are all
documented, and the image installs the package the way README.md tells people to."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from .tools import CHART, ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_values_are_all_documented() -> None:
    """Every key of values.yaml has a comment right above it, or sits in a commented block
    (e.g. `resources`, whose inner keys are Kubernetes' own)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key, sep, _ = stripped.partition(":")
        if not sep or " " in key:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        documented = commented or any(doc for _, doc in stack)
        if not documented and not _is_block(lines, i, indent):
            undocumented.append(f"values.yaml:{i + 1}: {stripped}")
        stack.append((indent, commented))
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


def _is_block(lines: list[str], i: int, indent: int) -> bool:
    """A key whose value is a nested mapping (its own leaves carry the comments)."""
    if lines[i].rstrip().endswith(":"):
        for nxt in lines[i + 1 :]:
            if nxt.strip() and not nxt.strip().startswith("#"):
                nested = len(nxt) - len(nxt.lstrip()) > indent
                return nested and not nxt.strip().startswith("- ")
    return False


def test_values_schema_is_closed_at_the_top() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])


def _pip_installs(text: str) -> list[list[str]]:
    """Arguments of every `pip install` command in a text (shell lines or Dockerfile RUNs)."""
    found = []
    for raw in text.splitlines():
        line = raw.strip().removeprefix("RUN ").strip()
        match = re.search(r"(?:^|\s|/)pip3?\s+install\s+(.*)$", line)
        if match and not line.startswith("#"):
            found.append(shlex.split(match.group(1).split("#")[0]))
    return found


def test_dockerfile_installs_like_the_readme() -> None:
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md is not written yet")
    docker_installs = [
        args for args in _pip_installs(DOCKERFILE.read_text()) if "--upgrade" not in args
    ]
    # The image also carries the fill Job's program and its hub client (the `cachefill` extra).
    assert docker_installs == [[".[cachefill]"]], docker_installs
    assert ["."] in _pip_installs(readme.read_text()), (
        "README.md no longer says `pip install .`; change docker/Dockerfile to match it"
    )


def test_dockerfile_runs_the_operator_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["k2think-operator"]' in text
    assert 'CMD ["run", "--all-namespaces"]' in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    uid = int(users[-1].split(":")[0])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == uid
    # Everything `pip install .` needs is in the build context (Dockerfile.dockerignore).
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, flags=re.M)
    for sources in copied:
        for src in sources.split():
            assert f"!{src}" in ignore, f"{src} is copied but excluded from the build context"
    assert "!pyproject.toml" in ignore and "!operator/" in ignore


def test_chart_default_image_tag_is_the_app_version() -> None:
    """The chart pulls `<repository>:<appVersion>` unless told otherwise, and the release workflow
    publishes exactly that tag: chart version, appVersion and the package's version move together
    (`.github/workflows/release.yml` refuses a tag that differs)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == "" and values["image"]["digest"] == ""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "(default .Chart.AppVersion .Values.image.tag)" in helpers
    pyproject = (ROOT / "pyproject.toml").read_text()
    package = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, flags=re.M)
    assert package is not None
    assert chart["appVersion"] == chart["version"] == package.group(1)
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "file: docker/Dockerfile" in workflow
    assert "linux/amd64,linux/arm64" in workflow and "sbom: true" in workflow
    assert "cosign sign" in workflow and "helm push" in workflow
    # `make image` tags the local build the same way (docker/build-image.sh).
    assert "localhost/k2think-operator:$VERSION" in (ROOT / "docker" / "build-image.sh").read_text()
