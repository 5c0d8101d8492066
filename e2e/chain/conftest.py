"""Fixtures of the chain suite: the whole autoscaling chain with real Ray processes.

``e2e/chain/run.sh`` (``make test-chain``) enters a network and mount namespace of its own and
runs this directory with the data-plane venv. One session-scoped test ground holds:

* the local control plane (``harness.Cluster``, campus ``e2e/campus/chain.yaml``) with KWOK
  handing out pod IPs from the namespace-only pod network (``harness.netns``) and the apiserver
  reachable at the ``kubernetes`` Service address, plus KubeRay's operator;
* the kubelet stand-in (``harness.raynodes``) running the real Ray processes of every Ray pod
  and keeping ``/etc/hosts`` in step with Services;
* this operator (``k2think-operator run``), and the tiny K2-Think-shaped model on disk.

At the end, the session fails if any process of a simulated pod is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
E2E = HERE.parent
ROOT = E2E.parent
for path in (str(E2E), str(ROOT), str(E2E / "dataplane")):
    if path not in sys.path:
        sys.path.insert(0, path)

if os.environ.get("K2T_CHAIN_NETNS") != "1":
    # Collected by a plain `pytest e2e`: this suite only runs inside its own namespaces.
    collect_ignore_glob = ["test_*.py"]
else:
    from chain_support import Ground, start_ground

    @pytest.fixture(scope="session")
    def ground() -> Iterator[Ground]:
        g = start_ground()
        try:
            yield g
        finally:
            leftovers = g.stop()
            if leftovers:
                pytest.fail(f"processes of simulated pods left after the run: {leftovers}")
