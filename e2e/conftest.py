"""Fixtures of the e2e suites: one real local cluster per session (or $KUBECONFIG's).

The session cluster is started by the harness (etcd, kube-apiserver, controller-manager,
scheduler, KWOK GPU nodes from ``e2e/campus/small.yaml``, KubeRay's and our CRDs). If it cannot
start, every test that needs it errors loudly; nothing here skips. Point the suite at another
cluster with ``KUBECONFIG`` (see docs/testing.md).
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent
ROOT = E2E.parent
for path in (str(E2E), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from harness import Cluster  # noqa: E402
from support import STARTED, namespace  # noqa: E402

LOG_DIR = E2E / ".state" / "logs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if E2E in path.parents and "dataplane" not in path.parts:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_FIRST_OPERATOR] = len(STARTED)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Attach the tail of every operator log the failed test started to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for op in STARTED[item.stash.get(_FIRST_OPERATOR, len(STARTED)) :]:
        report.sections.append(
            (f"operator log {op.log_path.name}", op.log_tail(OPERATOR_LOG_LINES))
        )


_FIRST_OPERATOR = pytest.StashKey[int]()
OPERATOR_LOG_LINES = 80


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    started = Cluster.from_env(name="e2e")
    try:
        yield started
    finally:
        if started.owned:
            started.stop()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return LOG_DIR


@pytest.fixture
def ns(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for one test (deleted after it)."""
    with namespace(cluster, request.node.name) as name:
        yield name
