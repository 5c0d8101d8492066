"""Chaos at CI size: the operator keeps its promise under the faults platform teams see.

Each scenario runs N K2ThinkDeployments on its own namespace of a cluster of its own (a fresh
local control plane with the real KubeRay operator: the suite restarts its kube-apiserver and
etcd, which must not disturb the other suites' shared cluster). No test writes a status. The scenarios and the convergence predicate live in
``e2e/chaos.py``; ``e2e/bench/faults.py`` runs them at campus size (100 deployments, 20 kills).
Sizes: ``K2T_CHAOS_N`` (default 10), ``K2T_CHAOS_KILLS`` (default 4); the random seed is printed
and taken from ``K2T_CHAOS_SEED`` when set, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import chaos
import pytest

from harness import Cluster
from support import namespace

N = int(os.environ.get("K2T_CHAOS_N", "10"))
KILLS = int(os.environ.get("K2T_CHAOS_KILLS", "4"))
TIMEOUT = float(os.environ.get("K2T_CHAOS_TIMEOUT", "240"))

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[Cluster]:
    # The real KubeRay operator: it builds the RayClusters and writes the RayServices' status
    # (the convergence predicate reads it; nothing in the suite writes a status).
    cluster = Cluster.start(name="chaos", kuberay=True)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("K2T_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"\n{request.node.name}: K2T_CHAOS_SEED={seed}")
    return random.Random(seed)


def test_sigkill_at_random_points_converges_without_duplicates_or_orphans(
    chaos_cluster: Cluster, log_dir: Path, rng: random.Random
) -> None:
    with namespace(chaos_cluster, "chaos-kill") as ns:
        result = chaos.kill_storm(
            chaos_cluster, ns, log_dir, n=N, kills=KILLS, rng=rng, timeout=TIMEOUT
        )
    print(result.line())


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restart_mid_reconcile_is_survived_in_process(
    chaos_cluster: Cluster, log_dir: Path, rng: random.Random, component: str
) -> None:
    with namespace(chaos_cluster, f"chaos-{component}") as ns:
        result = chaos.restart_mid_reconcile(
            chaos_cluster, ns, log_dir, component=component, n=N, rng=rng, timeout=TIMEOUT
        )
    print(result.line())


def test_hard_apf_throttling_is_survived_in_process(
    chaos_cluster: Cluster, log_dir: Path, rng: random.Random
) -> None:
    with namespace(chaos_cluster, "chaos-throttle") as ns:
        result = chaos.throttled(chaos_cluster, ns, log_dir, n=N, rng=rng, timeout=TIMEOUT)
    print(result.line())
