"""Fixtures of the install suite.

The suite needs a cluster (``Cluster.from_env``: ``$KUBECONFIG`` if set, else a fresh local
control plane named ``install`` that has KubeRay's CRDs and Kueue's Workload/LocalQueue CRDs but
not ours, so the first ``helm install`` really installs the CRD from the chart; it is its own
cluster rather than e2e/conftest.py's shared one for that reason) and helm/kubectl from the
harness's bin dir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import Cluster, find_bindir
from harness.kueue import kueue_dir

from .tools import Tools, strip_finalizers

KUEUE_READ = ("workloads", "localqueues")


@pytest.fixture(scope="package")
def install_cluster() -> Iterator[Cluster]:
    # Package scope: stopped as soon as this suite is done, before the rest of e2e/ runs.
    # Kueue's Workload and LocalQueue CRDs (not Kueue itself): `kubectl auth can-i` can only
    # check the operator's Kueue grants for resource types the API server serves.
    kueue = kueue_dir(build=False)
    crds = [kueue / "crds" / f"kueue.x-k8s.io_{plural}.yaml" for plural in KUEUE_READ]
    cluster = Cluster.from_env(name="install", crds=crds, timeout=300)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="package")
def tools(install_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return Tools.for_cluster(install_cluster, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def helm_tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """helm without a cluster (lint, template): only the bin dir is needed."""
    return Tools(find_bindir(), tmp_path_factory.mktemp("helm-offline"))


@pytest.fixture
def namespaces(tools: Tools) -> Iterator[Callable[[str], str]]:
    """Create namespaces for one test (Pod Security "restricted"); all deleted afterwards."""
    created: list[str] = []

    def make(name: str) -> str:
        created.append(tools.create_namespace(name))
        return name

    yield make
    for ns in created:
        strip_finalizers(tools, ns)  # K2ThinkDeployments that outlived their operator
        tools.delete_namespace(ns)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
