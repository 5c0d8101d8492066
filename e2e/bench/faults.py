"""Chaos benchmark: the chaos suite's scenarios at campus size, with the recovery times.

    .venv/bin/python e2e/bench/faults.py [-n 100] [--kills 20] [--seed S] [--only sigkill,...]

Starts its own control plane (the scenarios restart its kube-apiserver and etcd), runs the
scenarios of ``e2e/chaos.py`` one after the other, each in a fresh namespace, and prints one line
per scenario: deployments, faults, how long the fault lasted and how long after it everything
converged. A benchmark, not a test (but a scenario that does not converge still fails loudly).
Results are recorded in docs/benchmarks.md and docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

E2E = Path(__file__).resolve().parent.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(ROOT)]

import chaos  # noqa: E402

from harness import Cluster  # noqa: E402
from support import unique_namespace  # noqa: E402

SCENARIOS = ("sigkill", "kube-apiserver", "etcd", "apf-throttle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="K2ThinkDeployments per scenario")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in the kill storm")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"seed {seed}", flush=True)
    rng = random.Random(seed)
    log_dir = E2E / ".state" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster.start(name="bench-chaos", kuberay=True)
    results = []
    try:
        for scenario in args.only.split(","):
            ns = unique_namespace(f"bench-{scenario}")
            cluster.kubectl("create", "namespace", ns)
            started = time.monotonic()
            if scenario == "sigkill":
                result = chaos.kill_storm(
                    cluster, ns, log_dir, n=args.n, kills=args.kills, rng=rng, timeout=args.timeout
                )
            elif scenario in ("kube-apiserver", "etcd"):
                result = chaos.restart_mid_reconcile(
                    cluster,
                    ns,
                    log_dir,
                    component=scenario,
                    n=args.n,
                    rng=rng,
                    timeout=args.timeout,
                )
            elif scenario == "apf-throttle":
                result = chaos.throttled(
                    cluster, ns, log_dir, n=args.n, rng=rng, timeout=args.timeout
                )
            else:
                raise SystemExit(f"unknown scenario {scenario}")
            result.notes["wall_s"] = round(time.monotonic() - started, 1)
            print(result.line(), flush=True)
            results.append(result.__dict__)
            # Wait until it is gone: an all-namespaces operator in the next scenario would
            # otherwise also resume this scenario's deployments while they are being deleted.
            cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=600s", check=False)
    finally:
        cluster.close()
    print(json.dumps({"seed": seed, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
