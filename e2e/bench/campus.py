"""Campus-scale benchmark: 1,000 GPU nodes, hundreds of deployments, placement quality.

    make bench-campus        # .venv/bin/python e2e/bench/campus.py; OR-Tools in .venv-bench

Not part of CI (about 20 minutes on 2 cores). On one control plane started from
``e2e/campus/campus-1k.yaml`` (1,000 KWOK nodes of 8 GPUs in H100/H200/A100 pools over two
zones, plus a CPU pool) it measures, and prints as one table:

1. the campus: start time, and the control plane's memory (RSS of etcd, kube-apiserver,
   controller-manager, scheduler, KWOK) after start and after the convergence runs;
2. convergence at N = 100, 500, 1,000 deployments (``convergence.py``'s two phases: the
   operator vs the floor of writing the same children directly, ``--pairs`` of each interleaved
   floor, operator, operator, floor: the ratio is their sums'), with the ratio, the API calls
   per deployment, the operator's peak RSS, its CPU seconds per deployment, and over an idle
   minute after N = 1,000 its writes and the MODIFIED events on its objects. Each phase's
   operator watches only its own namespace (earlier phases' objects stay);
3. placement quality, with KubeRay running so that every worker pod is really created and
   scheduled: 200 deployments of mixed layouts (TP 2/4/8, fixed replica counts, one GPU pool
   each) asking for ~90% of every GPU pool. Replicas placed and Pending, and GPUs stranded (free
   GPUs on nodes of a pool that cannot host that pool's largest Pending pod), for the default
   kube-scheduler and for the campus bin-packing profile
   (``docs/scheduling/kube-scheduler-gpu-binpacking.yaml``), against the optimum of the same
   packing computed by OR-Tools CP-SAT.

A benchmark, not a test: it asserts nothing. ``--json PATH`` also writes every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

BENCH = Path(__file__).resolve().parent
E2E = BENCH.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(ROOT)]

from bench import convergence  # noqa: E402

from harness import Cluster, wait_for  # noqa: E402
from harness.scheduling import GPU_BINPACKING_PROFILE  # noqa: E402
from support import unique_namespace  # noqa: E402

CAMPUS_1K = E2E / "campus" / "campus-1k.yaml"
GPU = "nvidia.com/gpu"
POOL_LABEL = "k2think.dev/pool"
#: The GPU pools of campus-1k.yaml and the catalog's name for their GPU.
GPU_TYPES = {"h100": "H100-80GB", "h200": "H200-141GB", "a100": "A100-80GB"}
TOLERATE_GPU = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]


def rss_mib(pid: int) -> float:
    try:
        return float(convergence.proc_status(pid, "VmRSS"))
    except OSError:
        return float("nan")


def control_plane_memory(cluster: Cluster) -> dict[str, float]:
    """RSS in MiB of each control-plane process the harness started."""
    return {
        name: round(rss_mib(proc.pid), 1)
        for name, proc in sorted(cluster.procs.items())
        if proc.alive()
    }


# --- placement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """One deployment of the placement demand."""

    name: str
    pool: str
    tensor: int
    replicas: int


def placement_demand(
    nodes_per_pool: dict[str, int], count: int, fill: float, seed: int
) -> list[Want]:
    """``count`` deployments (TP 2/4/8, fixed replicas) asking ``fill`` of each pool's GPUs.

    Deployments are shared between pools by GPU count; each takes a random TP and as many
    replicas as bring its pool to the target (~36 GPUs each on campus-1k).
    """
    rng = random.Random(seed)
    total = sum(nodes_per_pool.values())
    out: list[Want] = []
    pools = sorted(nodes_per_pool)
    for i, pool in enumerate(pools):
        share = (
            round(count * nodes_per_pool[pool] / total) if i < len(pools) - 1 else count - len(out)
        )
        target = int(nodes_per_pool[pool] * 8 * fill)
        left = target
        for j in range(share):
            tensor = rng.choice((2, 4, 8))
            per = left / (share - j)
            replicas = max(1, round(per * rng.uniform(0.5, 1.5) / tensor))
            if j == share - 1:
                replicas = max(1, left // tensor)
            replicas = min(replicas, max(1, left // tensor))
            left -= replicas * tensor
            out.append(Want(f"{pool}-{j:03d}", pool, tensor, replicas))
    return out


def placement_doc(want: Want, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": want.name, "namespace": ns},
        "spec": {
            "model": {"preset": "k2-think", "maxModelLen": 32768},
            "pools": [
                {
                    "name": want.pool,
                    "gpuType": GPU_TYPES[want.pool],
                    "gpusPerNode": 8,
                    "nodeSelector": {POOL_LABEL: want.pool},
                    "tolerations": TOLERATE_GPU,
                }
            ],
            "parallelism": {"tensor": want.tensor, "pipeline": 1},
            "replicas": want.replicas,
            "ray": {"head": {"nodeSelector": {POOL_LABEL: "cpu"}}},
        },
    }


def _gpus(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        total += int(((c.get("resources") or {}).get("requests") or {}).get(GPU, 0))
    return total


def _tried(pod: dict[str, Any]) -> bool:
    """Bound, or refused by the scheduler at least once."""
    if (pod.get("spec") or {}).get("nodeName"):
        return True
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            return True
    return False


@dataclass
class Placement:
    scheduler: str
    replicas: int
    placed: int
    pending: int
    gpus_asked: int
    gpus_placed: int
    stranded_gpus: int
    seconds: float


def measure_placement(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], scheduler: str, seconds: float
) -> Placement:
    """Placed and Pending worker pods (one per replica), and stranded GPUs, from the API's view."""
    capacity: dict[str, int] = {}
    pool_of: dict[str, str] = {}
    for obj in nodes:
        name = obj["metadata"]["name"]
        capacity[name] = int((obj.get("status") or {}).get("allocatable", {}).get(GPU, 0))
        pool_of[name] = (obj["metadata"].get("labels") or {}).get(POOL_LABEL, "")
    used: Counter[str] = Counter()
    largest_pending: dict[str, int] = defaultdict(int)
    placed = pending = asked = placed_gpus = 0
    for pod in pods:
        gpus = _gpus(pod)
        if not gpus:
            continue  # heads
        asked += gpus
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            placed += 1
            placed_gpus += gpus
            used[node] += gpus
        else:
            pending += 1
            pool = ((pod.get("spec") or {}).get("nodeSelector") or {}).get(POOL_LABEL, "")
            largest_pending[pool] = max(largest_pending[pool], gpus)
    stranded = 0
    for node, cap in capacity.items():
        need = largest_pending.get(pool_of[node], 0)
        free = cap - used[node]
        if need and 0 < free < need:
            stranded += free
    return Placement(
        scheduler, placed + pending, placed, pending, asked, placed_gpus, stranded, seconds
    )


def run_placement(cluster: Cluster, demand: list[Want], scheduler: str) -> Placement:
    """Apply the demand with an operator on its namespace; wait until every worker pod exists
    and the scheduler has bound or refused each; measure; delete it all again."""
    ns = unique_namespace(f"place-{scheduler}")
    cluster.kubectl("create", "namespace", ns)
    op = convergence.start_operator(cluster, f"operator-{ns}", (ns,))
    expected = sum(w.replicas for w in demand)
    try:
        payload = json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [placement_doc(w, ns) for w in demand]}
        )
        started = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=payload, timeout=900)

        def settled() -> list[dict[str, Any]] | None:
            pods = cluster.kubectl_json(
                "get", "pods", "-n", ns, "-l", "ray.io/node-type=worker", timeout=300
            )["items"]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            if len(live) < expected or not all(_tried(p) for p in live):
                return None
            return live

        pods = wait_for(
            f"{expected} worker pods bound or refused in {ns}",
            settled,
            timeout=1500,
            interval=5.0,
            max_interval=10.0,
        )
        seconds = time.monotonic() - started
        nodes = cluster.kubectl_json("get", "nodes", timeout=300)["items"]
        return measure_placement(nodes, pods, scheduler, seconds)
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=900s", timeout=960)


def packing_optimum(
    nodes_per_pool: dict[str, int], demand: list[Want], python: str
) -> dict[str, Any]:
    """The solver's optimum for the same demand (``packing.py``, run by ``python``: OR-Tools
    lives in a venv of its own, its protobuf pin conflicts with Ray's)."""
    payload = {
        "nodes_per_pool": nodes_per_pool,
        "demand": [asdict(w) for w in demand],
    }
    proc = subprocess.run(
        [python, str(BENCH / "packing.py")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campus", default=str(CAMPUS_1K))
    parser.add_argument("--sizes", default="100,500,1000", help="deployment counts to converge")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window after the largest")
    parser.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="operator and floor phases per size, interleaved ABBA (the ratio: sum over sum)",
    )
    parser.add_argument("--placement", type=int, default=200, help="deployments to place (0: skip)")
    parser.add_argument("--fill", type=float, default=0.9, help="share of each GPU pool asked")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument(
        "--solver-python",
        default=str(ROOT / ".venv-bench" / "bin" / "python"),
        help="a Python with OR-Tools (make bench-campus builds .venv-bench)",
    )
    parser.add_argument(
        "--dry-run-pods",
        action="store_true",
        help="run the operator with K2T_DRY_RUN_PODS=1 (the Pod dry runs, off by default: they "
        "need `create pods`); the RayService's own dry run is always on",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.dry_run_pods:
        os.environ["K2T_DRY_RUN_PODS"] = "1"  # the operators inherit this process's environment

    if importlib.util.find_spec("kubernetes_asyncio") is not None:
        # A venv made before the operator dropped it (pip does not remove what a project no
        # longer needs): kopf then imports the generated client again, ~35 MiB more RSS.
        print(
            "warning: kubernetes_asyncio is installed in this venv; kopf imports it when it is "
            "there, so the operator's memory is ~35 MiB above a fresh `make venv`'s"
        )
    report: dict[str, Any] = {
        "campus": args.campus,
        "sizes": sizes,
        "dry_run_pods": args.dry_run_pods,
    }
    started = time.monotonic()
    cluster = Cluster.start(name="campus", campus=args.campus, kuberay=False, timeout=1200)
    report["campus_start_seconds"] = round(time.monotonic() - started, 1)
    try:
        assert cluster.campus is not None
        nodes_per_pool = {
            p.name: p.count for p in cluster.campus.pools if p.name in GPU_TYPES and p.gpus
        }
        report["nodes"] = sum(p.count for p in cluster.campus.pools)
        report["gpus"] = sum(p.count * (p.gpus or 0) for p in cluster.campus.pools)
        report["control_plane_mib_after_start"] = control_plane_memory(cluster)

        rows: list[dict[str, Any]] = []
        for n in sizes:
            ops, floors = converge_paired(
                cluster, n, args.pairs, idle=args.idle if n == max(sizes) else 0.0
            )
            run = ops[-1]  # the idle window's, and the calls of one operator phase
            for op, floor in zip(ops, floors, strict=True):
                convergence.print_summary(op, floor)
            # Means over as many of each: their ratio is that of the sums.
            op_s = fmean(op.seconds for op in ops)
            floor_s = fmean(floor.seconds for floor in floors)
            rows.append(
                {
                    "n": n,
                    "pairs": len(ops),
                    "operator_s": round(op_s, 2),
                    "input_apply_s": round(fmean(op.input_seconds for op in ops), 2),
                    "floor_s": round(floor_s, 2),
                    "ratio": round(op_s / floor_s, 2),
                    "pair_ratios": [
                        round(op.seconds / floor.seconds, 2)
                        for op, floor in zip(ops, floors, strict=True)
                    ],
                    "peak_rss_mib": round(max(op.peak_rss_mib for op in ops), 1),
                    "peak_rss_mib_each": [round(op.peak_rss_mib, 1) for op in ops],
                    "cpu_ms_per_deployment": round(
                        fmean(op.cpu_seconds for op in ops) / n * 1000, 1
                    ),
                    "calls_per_deployment": round(
                        fmean(sum(op.calls.delta.values()) for op in ops) / n, 2
                    ),
                    "writes_per_deployment": round(fmean(op.calls.writes() for op in ops) / n, 2),
                    "floor_calls_per_deployment": round(
                        fmean(sum(f.calls.delta.values()) for f in floors) / n, 2
                    ),
                    "calls": dict(run.calls.rows()),
                    "floor_calls": dict(floors[-1].calls.rows()),
                    "idle_seconds": run.idle_seconds,
                    "idle_operator_writes": run.idle_writes,
                    "idle_api_writes": run.idle_api_writes,
                    "idle_modified_events": run.idle_modified,
                    "idle_calls": dict(run.idle_calls.rows()),
                }
            )
            report["convergence"] = rows
            save(report, args.json)
        report["control_plane_mib_after_convergence"] = control_plane_memory(cluster)

        if args.placement:
            demand = placement_demand(nodes_per_pool, args.placement, args.fill, args.seed)
            report["placement_demand"] = {
                "deployments": len(demand),
                "replicas": sum(w.replicas for w in demand),
                "gpus": sum(w.replicas * w.tensor for w in demand),
                "by_tp": dict(Counter(w.tensor for w in demand)),
            }
            report["placement_optimum"] = packing_optimum(
                nodes_per_pool, demand, args.solver_python
            )
            # KubeRay watches every namespace: the convergence phases' RayServices (2 x N) would
            # become RayClusters and thousands of pods beside the placement demand (the first
            # 1,000-node run, 2026-12-02, drowned its placement phase in them).
            delete_namespaces(cluster, "bench-")
            cluster.start_kuberay()
            results = [run_placement(cluster, demand, "default")]
            report["placement"] = [asdict(r) for r in results]
            save(report, args.json)
            cluster.restart_scheduler(GPU_BINPACKING_PROFILE)
            results.append(run_placement(cluster, demand, "bin-packing"))
            report["placement"] = [asdict(r) for r in results]
    finally:
        cluster.stop()
        save(report, args.json)
    print_report(report)
    return 0


def converge_paired(
    cluster: Cluster, n: int, pairs: int, idle: float
) -> tuple[list[convergence.OperatorRun], list[convergence.FloorRun]]:
    """``pairs`` operator phases and as many floor phases of ``n`` deployments, in the order
    floor, operator, operator, floor, floor, ... (ABBA), so that a drift of the control plane
    over the run (every phase's objects stay: etcd and the API server's caches grow; the
    shared machine's speed changes) weighs on both sides alike. One phase of each, in one order,
    gave ratios from 1.02 to 1.36 for the same code (docs/benchmarks.md). The idle window
    follows the last operator phase."""
    ops: list[convergence.OperatorRun] = []
    floors: list[convergence.FloorRun] = []
    for i in range(pairs):
        for phase in ("floor", "operator") if i % 2 == 0 else ("operator", "floor"):
            if phase == "floor":
                floors.append(convergence.run_floor_phase(cluster, n))
            else:
                last = len(ops) == pairs - 1
                ops.append(
                    convergence.run_operator_phase(
                        cluster, n, idle=idle if last else 0.0, own_namespace=True
                    )
                )
    return ops, floors


def delete_namespaces(cluster: Cluster, prefix: str) -> None:
    """Delete every namespace named ``prefix...`` and wait until they are gone (nothing of ours
    holds a finalizer there: the operator puts none, KubeRay is not running yet)."""
    names = [
        ns["metadata"]["name"]
        for ns in cluster.kubectl_json("get", "namespaces", timeout=300)["items"]
        if ns["metadata"]["name"].startswith(prefix)
    ]
    if names:
        cluster.kubectl("delete", "namespace", *names, "--wait=true", "--timeout=900s", timeout=960)


def save(report: dict[str, Any], path: str | None) -> None:
    """Write what is measured so far (a long run that fails late keeps its figures)."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2, sort_keys=True))


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"campus {report['campus']}: {report.get('nodes')} nodes, {report.get('gpus')} GPUs")
    print(f"  start: {report['campus_start_seconds']} s")
    for key in ("control_plane_mib_after_start", "control_plane_mib_after_convergence"):
        mem = report.get(key) or {}
        print(f"  {key}: {sum(mem.values()):.0f} MiB {mem}")
    print()
    print(
        "| N | operator (input apply) | floor | ratio (each pair) | calls/dep (floor) | writes/dep "
        "| peak RSS (each) | CPU/dep |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report.get("convergence", []):
        print(
            f"| {r['n']} | {r['operator_s']} s ({r.get('input_apply_s')} s) | {r['floor_s']} s | "
            f"{r['ratio']} ({', '.join(map(str, r.get('pair_ratios', [])))}) | "
            f"{r['calls_per_deployment']} ({r['floor_calls_per_deployment']}) | "
            f"{r['writes_per_deployment']} | {r['peak_rss_mib']} MiB "
            f"({', '.join(map(str, r.get('peak_rss_mib_each', [])))}) | "
            f"{r['cpu_ms_per_deployment']} ms |"
        )
    for r in report.get("convergence", []):
        if r["idle_seconds"]:
            print(
                f"idle {r['idle_seconds']:.0f} s after N = {r['n']}: operator writes "
                f"{r['idle_operator_writes']:.0f}, API writes {r['idle_api_writes']}, MODIFIED "
                f"events {r['idle_modified_events']} ({r['idle_calls']})"
            )
    if "placement" in report:
        d = report["placement_demand"]
        print()
        print(
            f"placement: {d['deployments']} deployments, {d['replicas']} replicas, "
            f"{d['gpus']} GPUs asked, TP mix {d['by_tp']}"
        )
        print("| scheduler | placed | Pending | GPUs placed | stranded GPUs | time |")
        print("| --- | --- | --- | --- | --- | --- |")
        for p in report["placement"]:
            print(
                f"| {p['scheduler']} | {p['placed']} | {p['pending']} | {p['gpus_placed']} | "
                f"{p['stranded_gpus']} | {p['seconds']:.0f} s |"
            )
        o = report["placement_optimum"]
        print(
            f"| optimum (CP-SAT, {o['solver_status']}) | {o['replicas']} | "
            f"{d['replicas'] - o['replicas']} | {o['gpus']} | 0 | |"
        )


if __name__ == "__main__":
    sys.exit(main())
