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
from typing import Any

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
    import json

    from chain_support import FIGURES, Ground, start_ground

    @pytest.fixture(scope="session")
    def ground() -> Iterator[Ground]:
        g = start_ground()
        try:
            yield g
        finally:
            # Kept with the run's state (K2T_E2E_KEEP=1) for docs/benchmarks.md.
            (g.state_dir / "chain-figures.json").write_text(json.dumps(FIGURES, indent=1) + "\n")
            leftovers = g.stop()
            if leftovers:
                pytest.fail(f"processes of simulated pods left after the run: {leftovers}")

    def pytest_terminal_summary(terminalreporter: Any) -> None:
        """One ``chain figures:`` line with what the run measured (issue #23): the settings, the
        GPU pools' spill and the CPU module's scale-up through the chain against Serve alone.
        Printed whatever passed or failed; a figure a scenario did not reach is absent."""
        rounded = {k: round(v, 1) for k, v in FIGURES.items()}
        terminalreporter.write_line(f"chain figures: {json.dumps(rounded)}")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[Any]:
        """A failed scenario's report carries who kube-router thinks holds each pod IP, next to
        the API server's pods: the ground's policy agent on reused IPs is the suspect of the one
        intermittent failure seen (issue #21), and the ground is gone once the run ends."""
        outcome: Any = yield
        report = outcome.get_result()
        if report.when != "call" or not report.failed:
            return
        ground = next((v for v in item.funcargs.values() if isinstance(v, Ground)), None)
        if ground is None:
            return
        from harness import policyagent

        try:
            pods = ground.cluster.kubectl_json("get", "pods", "-A")["items"]
            text = policyagent.ip_ownership_report(ground.nodes, pods)
        except Exception as exc:  # a post-mortem must not hide the failure itself
            text = f"(no report: {exc!r})"
        report.sections.append(("kube-router: pod IPs it guards vs the API's pods", text))
