"""The packing optimum of the campus benchmark's placement demand, by OR-Tools CP-SAT.

    .venv-bench/bin/python e2e/bench/packing.py < demand.json

Reads ``{"nodes_per_pool": {pool: nodes}, "demand": [{"pool", "tensor", "replicas"}, ...]}``,
prints ``{"replicas", "gpus", "solver_status"}``: the most worker pods (one per replica, TP GPUs
each) any scheduler could bind on nodes of 8 GPUs, then the most GPUs. Run in its own venv
(``e2e/bench/requirements.txt``): OR-Tools pins a protobuf older than the one Ray needs.

Nodes of a pool are identical, so a placement is how many nodes of each pool use each fill
pattern (a multiset of pod sizes 2/4/8 summing to at most 8). That model is exact and has a
few dozen variables, where one variable per (pod, node) pair would be 1.5 million.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from ortools.sat.python import cp_model

SIZES = (2, 4, 8)
NODE_GPUS = 8


def optimum(nodes_per_pool: dict[str, int], demand: list[dict[str, Any]]) -> dict[str, Any]:
    patterns = [
        (a, b, c)
        for a in range(NODE_GPUS // 2 + 1)
        for b in range(NODE_GPUS // 4 + 1)
        for c in range(NODE_GPUS // 8 + 1)
        if 2 * a + 4 * b + 8 * c <= NODE_GPUS and (a, b, c) != (0, 0, 0)
    ]
    model = cp_model.CpModel()
    replicas: list[Any] = []
    gpus: list[Any] = []
    for pool, count in sorted(nodes_per_pool.items()):
        wanted: Counter[int] = Counter()
        for want in demand:
            if want["pool"] == pool:
                wanted[int(want["tensor"])] += int(want["replicas"])
        use = [model.new_int_var(0, count, f"{pool}-{p}") for p in patterns]
        model.add(sum(use) <= count)
        for k, size in enumerate(SIZES):
            placed = model.new_int_var(0, wanted[size], f"{pool}-placed-{size}")
            model.add(placed <= sum(u * p[k] for u, p in zip(use, patterns, strict=True)))
            replicas.append(placed)
            gpus.append(placed * size)
    # Replicas first; GPUs break ties (no GPU count outweighs one replica).
    model.maximize(sum(replicas) * 100_000 + sum(gpus))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = 120
    solver.parameters.num_workers = 2
    status = solver.solve(model)
    return {
        "replicas": int(sum(solver.value(v) for v in replicas)),
        "gpus": int(sum(solver.value(v) for v in gpus)),
        "solver_status": solver.status_name(status),
    }


if __name__ == "__main__":
    payload = json.load(sys.stdin)
    print(json.dumps(optimum(payload["nodes_per_pool"], payload["demand"])))
