"""Fixtures of the user's-path suite: the chain ground (e2e/chain/chain_support.py) without the
host-process operator; the suite installs the operator with helm as pods the kubelet stand-in
runs from the image. ``e2e/userpath/run.sh`` (``make test-userpath``) enters the namespaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
E2E = HERE.parent
ROOT = E2E.parent
for path in (str(E2E), str(ROOT), str(E2E / "dataplane"), str(E2E / "chain")):
    if path not in sys.path:
        sys.path.insert(0, path)

if os.environ.get("K2T_CHAIN_NETNS") != "1":
    # Collected by a plain `pytest e2e`: this suite only runs inside its own namespaces.
    collect_ignore_glob = ["test_*.py"]
else:
    from chain_support import Ground, start_ground

    @pytest.fixture(scope="session")
    def ground() -> Iterator[Ground]:
        g = start_ground(operator=False, name="userpath")
        try:
            yield g
        finally:
            leftovers = g.stop()
            if leftovers:
                pytest.fail(f"processes of simulated pods left after the run: {leftovers}")
