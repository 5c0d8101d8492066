"""Convergence benchmark: how close the operator gets to the floor any operator can reach.

    .venv/bin/python e2e/bench/convergence.py [-n 20] [--idle 60] [--kubeconfig PATH]

In one run, on one API server:
  1. operator: apply N K2ThinkDeployments at once with the operator running; time until every
     one of the N RayServices exists;
  2. floor: server-side-apply the same N RayServices, pre-rendered, directly (one kubectl call,
     as fast as a client can write them); time until every one exists;
and print both and their ratio, the operator's peak RSS, and what the operator wrote while idle
for ``--idle`` seconds after convergence (its own write counter, and MODIFIED events seen on
K2ThinkDeployments and RayServices in that window). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

E2E = Path(__file__).resolve().parent.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(ROOT)]

from harness import Cluster, wait_for  # noqa: E402
from k2think_operator.reconcile import decide  # noqa: E402
from support import OperatorProcess, load_example, unique_namespace  # noqa: E402


def count_rayservices(cluster: Cluster, ns: str) -> int:
    out = cluster.kubectl("get", "rayservices.ray.io", "-n", ns, "-o", "name", check=False)
    return len([line for line in out.stdout.splitlines() if line.strip()])


def time_until_all_exist(cluster: Cluster, ns: str, n: int, started: float) -> float:
    wait_for(f"{n} RayServices in {ns}", lambda: count_rayservices(cluster, ns) >= n, timeout=600)
    return time.monotonic() - started


def peak_rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def writes_counter(op: OperatorProcess) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("k2think_api_writes_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def deployments(ns: str, n: int) -> list[dict[str, Any]]:
    return [load_example("k2think.yaml", namespace=ns, rename=f"k2t-{i:04d}") for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="K2ThinkDeployments to apply")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window in seconds")
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one")
    args = parser.parse_args(argv)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        cluster = Cluster.connect()
    else:
        cluster = Cluster.start(name="bench", kuberay=False)
    log_dir = E2E / ".state" / "logs"
    try:
        op = OperatorProcess(cluster, ["--all-namespaces"], log_dir / "operator-bench.log").start()
        try:
            ns_op = unique_namespace("bench-operator")
            cluster.kubectl("create", "namespace", ns_op)
            docs = deployments(ns_op, args.n)
            payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
            started = time.monotonic()
            cluster.kubectl("apply", "--server-side", "-f", "-", input=payload, timeout=600)
            operator_s = time_until_all_exist(cluster, ns_op, args.n, started)

            # Idle window: what does the operator write when nothing changes?
            wait_for(
                "status written for all",
                lambda: all(
                    (d.get("status") or {}).get("observedGeneration") == 1
                    for d in cluster.kubectl_json("get", "k2t", "-n", ns_op)["items"]
                ),
                timeout=300,
            )
            before = writes_counter(op)
            watches = [
                subprocess.Popen(
                    [
                        str(cluster.bindir / "kubectl"),
                        "get",
                        kind,
                        "-n",
                        ns_op,
                        "--watch-only",
                        "--output-watch-events",
                        "-o",
                        "name",
                    ],
                    env=cluster.env(),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for kind in ("k2thinkdeployments.k2think.dev", "rayservices.ray.io")
            ]
            deadline = time.monotonic() + args.idle
            while time.monotonic() < deadline:  # the idle window is what is measured
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            seen = ""
            for watch in watches:
                watch.terminate()
                seen += watch.communicate(timeout=10)[0]
            idle_writes = writes_counter(op) - before
            idle_events = [line for line in seen.splitlines() if line.startswith("MODIFIED")]
            rss = peak_rss_mib(op.proc.pid) if op.proc else float("nan")
        finally:
            op.stop()

        # The floor: the same RayServices, rendered up front, written straight by a client.
        ns_floor = unique_namespace("bench-floor")
        cluster.kubectl("create", "namespace", ns_floor)
        children = []
        for doc in deployments(ns_floor, args.n):
            (child,) = decide(doc).children
            children.append(child)
        payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": children})
        started = time.monotonic()
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=bench", "-f", "-", input=payload, timeout=600
        )
        floor_s = time_until_all_exist(cluster, ns_floor, args.n, started)

        print(f"deployments                      {args.n}")
        print(f"operator: all RayServices exist  {operator_s:8.2f} s")
        print(f"floor: direct server-side apply  {floor_s:8.2f} s")
        print(f"ratio operator / floor           {operator_s / floor_s:8.2f}")
        print(f"operator peak RSS                {rss:8.1f} MiB")
        print(f"operator writes while idle       {idle_writes:8.0f} in {args.idle:.0f} s")
        print(f"MODIFIED events while idle       {len(idle_events):8d}")
        return 0
    finally:
        if cluster.owned:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
