"""What the operator's indexes hold per object: bytes of Python objects per RayService and per
K2ThinkDeployment, measured with ``tracemalloc``.

    .venv/bin/python e2e/bench/index_memory.py [-n 1000]

Renders ``n`` deployments of ``crds/examples/k2think.yaml`` (each its own name, as
``convergence.py`` applies them), makes each RayService look as the API server returns it
(server-set metadata, ``managedFields`` of our apply, a KubeRay status of a serving cluster) and
each K2ThinkDeployment as it is after our status write, parses each from JSON (as the watch
does), then passes them through the operator's own index functions (``handlers.rayservices``,
``handlers.deployments``) and prints the bytes still allocated per object once the parsed
copies are gone (strings shared between objects, e.g. interned keys, are counted once over
all ``n``; tables of 64 KiB or more are not counted, ``SHARED_TABLE_BYTES``). A benchmark, not
a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT / "e2e"), str(ROOT / "operator")]

import yaml  # noqa: E402

from k2think_operator.app import registrations as handlers  # noqa: E402
from k2think_operator.deployment.controller import observe  # noqa: E402
from k2think_operator.deployment.decide import decide  # noqa: E402
from k2think_operator.deployment.status import build_status  # noqa: E402

EXAMPLE = ROOT / "crds" / "examples" / "k2think.yaml"
NOW = "2026-12-02T06:00:00Z"


def _time(i: int) -> str:
    return f"2026-12-02T05:{i // 60 % 60:02d}:{i % 60:02d}Z"


def _fields_of(obj: Any) -> Any:
    """A ``fieldsV1`` tree shaped like ``obj`` (what managedFields records for an apply)."""
    if isinstance(obj, Mapping):
        return {f"f:{k}": _fields_of(v) for k, v in obj.items()}
    return {}


def kuberay_status(name: str, i: int) -> dict[str, Any]:
    """A RayService status as KubeRay v1.6 writes it for a serving cluster
    (``apis/ray/v1/rayservice_types.go``)."""
    cluster = f"{name}-raycluster-{i:05x}"
    deployments = ("LLMServer:k2think", "OpenAiIngress")
    return {
        "activeServiceStatus": {
            "applicationStatuses": {
                "llm": {
                    "serveDeploymentStatuses": {d: {"status": "HEALTHY"} for d in deployments},
                    "status": "RUNNING",
                }
            },
            "rayClusterName": cluster,
            "rayClusterStatus": {
                "availableWorkerReplicas": 2,
                "desiredCPU": "20",
                "desiredGPU": "16",
                "desiredMemory": "1040Gi",
                "desiredTPU": "0",
                "desiredWorkerReplicas": 2,
                "endpoints": {
                    "client": "10001",
                    "dashboard": "8265",
                    "gcs-server": "6379",
                    "metrics": "8080",
                    "serve": "8000",
                },
                "head": {
                    "podIP": f"10.0.{i // 250}.{i % 250 + 1}",
                    "podName": f"{cluster}-head-x{i:04d}",
                    "serviceIP": f"10.96.{i // 250}.{i % 250 + 1}",
                    "serviceName": f"{cluster}-head-svc",
                },
                "lastUpdateTime": _time(i),
                "readyWorkerReplicas": 2,
                "state": "ready",
                "stateTransitionTimes": {"ready": _time(i)},
            },
        },
        "conditions": [
            {
                "lastTransitionTime": _time(i),
                "message": "Number of serve endpoints is greater than 0",
                "observedGeneration": 1,
                "reason": "NonZeroServeEndpoints",
                "status": "True",
                "type": "Ready",
            },
            {
                "lastTransitionTime": _time(i),
                "message": "Active Ray cluster exists and no pending Ray cluster",
                "observedGeneration": 1,
                "reason": "NoPendingCluster",
                "status": "False",
                "type": "UpgradeInProgress",
            },
        ],
        "lastUpdateTime": _time(i),
        "numServeEndpoints": 1,
        "observedGeneration": 1,
        "pendingServiceStatus": {},
        "serviceStatus": "Running",
    }


def live_objects(n: int) -> tuple[list[str], list[str]]:
    """The JSON texts of ``n`` RayServices and ``n`` K2ThinkDeployments as the watch gets them."""
    example = yaml.safe_load(EXAMPLE.read_text())
    rayservices: list[str] = []
    deployments: list[str] = []
    for i in range(n):
        name = f"k2t-{i:04d}"
        doc = copy.deepcopy(example)
        doc["metadata"].update(
            name=name,
            namespace="bench",
            uid=f"6f1c1f0e-0000-4000-8000-{i:012d}",
            generation=1,
            resourceVersion=str(100_000 + 3 * i),
            creationTimestamp=_time(i),
        )
        decision = decide(doc)
        rs = copy.deepcopy(decision.children[0])
        rs["metadata"].update(
            uid=f"7a2c0d1e-0000-4000-8000-{i:012d}",
            generation=1,
            resourceVersion=str(100_001 + 3 * i),
            creationTimestamp=_time(i),
            managedFields=[
                {
                    "apiVersion": "ray.io/v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields_of({k: rs[k] for k in ("metadata", "spec")}),
                    "manager": "k2think-operator",
                    "operation": "Apply",
                    "time": _time(i),
                }
            ],
        )
        rs["status"] = kuberay_status(name, i)
        rayservices.append(json.dumps(rs))
        doc["status"] = build_status(observe(decision, doc, rs, [], None), {}, NOW)
        deployments.append(json.dumps(doc))
    return rayservices, deployments


#: Blocks this large are tables shared by every object (the interpreter's dict of interned
#: strings grows by doubling), not the cost of one more object: not counted.
SHARED_TABLE_BYTES = 64 * 1024


def _allocated(snapshot: tracemalloc.Snapshot) -> int:
    return sum(t.size for t in snapshot.traces if t.size < SHARED_TABLE_BYTES)


def held_per_object(texts: list[str], keep: Callable[[dict[str, Any]], Any]) -> tuple[int, int]:
    """Bytes per object of the parsed JSON, and of what ``keep`` returns once the parsed copies
    are gone."""
    gc.collect()
    tracemalloc.start()
    base = _allocated(tracemalloc.take_snapshot())
    parsed = [json.loads(text) for text in texts]
    as_parsed = _allocated(tracemalloc.take_snapshot()) - base
    kept = [keep(obj) for obj in parsed]
    del parsed
    gc.collect()
    held = _allocated(tracemalloc.take_snapshot()) - base
    tracemalloc.stop()
    assert len(kept) == len(texts)
    return as_parsed // len(texts), held // len(texts)


LOOP = asyncio.new_event_loop()


def _index(fn: Any, **kwargs: Any) -> Any:
    """Run one of kopf's index functions as kopf does (a coroutine on the loop)."""
    result: dict[Any, Any] = LOOP.run_until_complete(fn(**kwargs))
    (value,) = result.values()
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="objects of each kind (default 1000)")
    args = parser.parse_args(argv)
    rayservices, deployments = live_objects(args.n)
    json_rs = sum(map(len, rayservices)) // args.n
    json_dep = sum(map(len, deployments)) // args.n
    parsed_rs, held_rs = held_per_object(
        rayservices, lambda obj: _index(handlers.rayservices, meta=obj["metadata"], body=obj)
    )
    parsed_dep, held_dep = held_per_object(
        deployments,
        lambda obj: _index(
            handlers.deployments,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"]["namespace"],
            body=obj,
        ),
    )
    print(f"{'per object, n = ' + str(args.n):<28} {'JSON':>10} {'parsed':>10} {'index':>10}")
    for kind, sizes in (
        ("RayService", (json_rs, parsed_rs, held_rs)),
        ("K2ThinkDeployment", (json_dep, parsed_dep, held_dep)),
    ):
        print(f"{kind:<28} " + " ".join(f"{size:>10,}" for size in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
