"""Issue #15's head-failure proof on the chain ground: a head crash with and without GCS FT.

NOT COLLECTED YET (not named ``test_*.py``): it ran once (2026-12-02, ``e2e/chain/run.sh -k
head_crash`` with this file as ``test_30_head_failure.py``, 17 min): the test without GCS FT
passed, the GCS-FT test failed for a reason found in Ray Serve + vLLM (see ``VLLM_LOGGING_ENV``);
the fix below has not run yet. Where it stands: docs/serving-path.md "The head-crash scenario:
where it stands". To collect it, rename it to ``test_30_head_failure.py`` once
``e2e/chain/run.sh -k head_crash`` passes with that name.

One two-replica CPU deployment per test (one replica per CPU pool, ``maxNodes: 1`` each, so both
worker pods start at once), each in its own namespace and removed at the end:

1. ``test_head_crash_with_gcs_ft``: ``spec.ray.gcsFaultTolerance`` points at a
   password-protected ``redis-server`` (Debian's package) that this test starts on the pod
   network's gateway (:data:`harness.netns.GATEWAY`, an address that exists only inside the
   suite's network namespace, reachable from every pod). Two streams run through a worker pod's
   Serve proxy; then every process of the head pod is SIGKILLed, i.e. its containers crash as a
   kubelet sees it: the kubelet stand-in reports the ended containers (``restartPolicy: Never``,
   what KubeRay gives pods under autoscaler v2), KubeRay deletes the pod and creates a new head,
   which reloads the GCS tables from Redis. Shown: each stream in flight either finishes or
   ends with a retryable error (connection-level or HTTP 5xx) without hanging; a new request is
   served again through the same worker proxy (bounded polling; the time is recorded); the
   worker Ray node IDs and the LLM replica actor IDs are the same as before the crash: no
   replica reloaded its weights.
2. ``test_head_crash_without_gcs_ft``: the same fault without it; recorded and shown: every
   worker Ray node and every replica actor is replaced (the reason for ``GcsFaultToleranceOff``).

Figures are printed (``-rA``) and written to ``<state>/head-failure.json`` for
docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from chain_support import (
    SERVED_NAME,
    Ground,
    app_status,
    apply,
    chain_deployment,
    cluster_of,
    cpu_pool,
    pods,
    ray_nodes,
    serve_replicas,
    wait,
    worker_pods,
)

from harness import netns, raynodes
from harness.processes import free_port

#: Bounds of the polls (not timed assertions): generous for 2 busy cores.
DEPLOY_S = 900.0
RECOVERY_S = 420.0
STREAM_END_S = 180.0
FIGURES: dict[str, Any] = {}

#: vLLM's own logging set-up (``VLLM_CONFIGURE_LOGGING=1``, its default) runs
#: ``logging.config.dictConfig`` when the engine starts in the replica process
#: (``vllm/v1/engine/async_llm.py`` -> ``vllm/logger.py``, ``configure_logging_if_needed``);
#: ``dictConfig`` closes every existing handler, Serve's ``MemoryHandler`` included (its
#: ``target`` becomes None). A restarted Serve controller then calls ``is_allocated()`` on each
#: replica it recovers, which reads that handler (``ray/serve/_private/logging_utils.py``,
#: ``get_component_logger_file_path``), raises ``AttributeError`` and the controller stops the
#: replica: every LLM replica reloads despite GCS FT (first run of this test, 2026-12-02). With
#: the variable at 0 vLLM leaves logging alone.
VLLM_LOGGING_ENV = {"name": "VLLM_CONFIGURE_LOGGING", "value": "0"}


@pytest.fixture(scope="module", autouse=True)
def _figures(ground: Ground) -> Iterator[None]:
    yield
    print("\nhead-failure figures:", json.dumps(FIGURES, indent=1))
    (ground.state_dir / "head-failure.json").write_text(json.dumps(FIGURES, indent=1) + "\n")


@contextlib.contextmanager
def redis_on_gateway(state_dir: Path) -> Iterator[tuple[str, str]]:
    """``redis-server`` (AOF on, a random password) on the pod network's gateway: reachable from
    the pods' network namespaces, and only inside the suite's own network namespace."""
    port = free_port()
    password = secrets.token_hex(16)
    work = state_dir / "redis"
    work.mkdir(parents=True, exist_ok=True)
    with (work / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                netns.GATEWAY,
                "--port",
                str(port),
                "--requirepass",
                password,
                "--dir",
                str(work),
                "--save",
                "",
                "--appendonly",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait(
            "redis-server to accept connections",
            lambda: raynodes.tcp_open(netns.GATEWAY, port),
            timeout=30,
        )
        yield f"{netns.GATEWAY}:{port}", password
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def two_replicas(
    g: Ground, ns: str, name: str, ft: dict[str, Any] | None, *, secret: str | None = None
) -> Iterator[None]:
    g.cluster.kubectl("create", "namespace", ns, check=False)
    if secret is not None:
        g.cluster.kubectl(
            "create", "secret", "generic", "redis", f"--from-literal=password={secret}", "-n", ns
        )
    doc = chain_deployment(
        name,
        ns,
        g.model_dir,
        pools=[{**cpu_pool("cpu-a"), "maxNodes": 1}, {**cpu_pool("cpu-b"), "maxNodes": 1}],
        autoscaling={"minReplicas": 2, "maxReplicas": 2, "idleTimeoutSeconds": 600},
    )
    # See VLLM_LOGGING_ENV: without it no replica survives a Serve controller restart.
    doc["spec"]["ray"]["env"].append(VLLM_LOGGING_ENV)
    if ft is not None:
        doc["spec"]["ray"]["gcsFaultTolerance"] = ft
    t0 = time.monotonic()
    apply(g, doc)
    try:
        wait("two RUNNING replicas", lambda: len(_running(g, ns)) == 2, timeout=DEPLOY_S)
        wait("the application RUNNING", lambda: app_status(g, ns, name) == "RUNNING", DEPLOY_S)
        FIGURES[f"{ns}: deploy -> 2 replicas RUNNING (s)"] = round(time.monotonic() - t0, 1)
        yield
    finally:
        g.cluster.kubectl("delete", "k2t", name, "-n", ns, "--wait=false", check=False)
        wait(
            f"the Ray pods of {ns} to go",
            lambda: not pods(g, ns, "ray.io/node-type in (head,worker)"),
            timeout=300,
        )


def _quiet(probe: Any) -> Any:
    """A probe that answers None while the head (its dashboard) is unreachable."""
    with contextlib.suppress(Exception):
        return probe()
    return None


def _running(g: Ground, ns: str) -> list[dict[str, Any]]:
    cluster = cluster_of(g, ns)
    found = _quiet(lambda: serve_replicas(ns, cluster)) or []
    return [r for r in found if r.get("state") == "RUNNING"]


def identity(g: Ground, ns: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(worker Ray node IDs, RUNNING replica actor IDs), or None while the head is unreachable."""
    cluster = cluster_of(g, ns)
    nodes = _quiet(lambda: ray_nodes(ns, cluster))
    if nodes is None:
        return None
    workers = frozenset(n["node_id"] for n in nodes if not n.get("is_head_node"))
    return workers, frozenset(r["actor_id"] for r in _running(g, ns))


def head_pod(g: Ground, ns: str) -> dict[str, Any] | None:
    heads = [
        p
        for p in pods(g, ns, "ray.io/node-type=head")
        if not p["metadata"].get("deletionTimestamp")
    ]
    return heads[0] if heads else None


def crash_head(g: Ground, ns: str) -> str:
    """SIGKILL every process of the head pod (its Ray container and the autoscaler's): to the
    kubelet stand-in, the pod's containers crashed; it reports them ended and KubeRay replaces
    the pod. Returns the old pod's UID."""
    head = head_pod(g, ns)
    assert head is not None
    uid = str(head["metadata"]["uid"])
    pids = raynodes.processes_with_marker(uid)
    assert pids, "no process of the head pod found"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    FIGURES.setdefault("head processes killed", {})[ns] = len(pids)
    return uid


def new_head_running(g: Ground, ns: str, old_uid: str) -> bool:
    head = head_pod(g, ns)
    return bool(
        head
        and head["metadata"]["uid"] != old_uid
        and (head.get("status") or {}).get("phase") == "Running"
    )


def served(base: str) -> bool:
    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 4}
    with contextlib.suppress(httpx.HTTPError):
        return bool(httpx.post(f"{base}/v1/completions", json=body, timeout=30).status_code == 200)
    return False


@dataclass
class Stream:
    """One streaming chat completion (SSE read with httpx) whose progress can be watched."""

    base: str
    max_tokens: int
    chunks: int = 0
    finish: str | None = None
    error: str | None = None
    ended_at: float | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        body = {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "Think step by step about a head crash."}],
            "max_tokens": self.max_tokens,
            "stream": True,
            "ignore_eos": True,
        }
        # A read timeout well above a token's time: a stream that stops without an error is
        # reported as one (a hang), not waited for.
        timeout = httpx.Timeout(10.0, read=60.0)
        try:
            with httpx.stream(
                "POST", f"{self.base}/v1/chat/completions", json=body, timeout=timeout
            ) as resp:
                if resp.status_code != 200:
                    self.error = f"HTTP {resp.status_code}"
                    return
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        self.error = f"error event: {str(data['error'])[:200]}"
                        return
                    for choice in data.get("choices") or []:
                        self.chunks += 1
                        self.finish = choice.get("finish_reason") or self.finish
        except Exception as exc:  # recorded, judged by retryable()
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.ended_at = time.monotonic()

    def summary(self, since: float) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "finish_reason": self.finish,
            "error": self.error,
            "ended_s_after_crash": None
            if self.ended_at is None
            else round(self.ended_at - since, 1),
        }


def retryable(s: Stream) -> bool:
    """Finished, or failed the way a client retries: the connection broke or a 5xx came back
    (not a read timeout: that is a stream that hung)."""
    if s.error is None:
        return s.finish is not None
    text = s.error
    if "Timeout" in text:
        return False
    return any(
        k in text
        for k in ("RemoteProtocolError", "ConnectError", "ReadError", "HTTP 5", "error event")
    )


def test_head_crash_with_gcs_ft(ground: Ground) -> None:
    g, ns, name = ground, "chain-gcs-ft", "ft"
    with redis_on_gateway(g.state_dir) as (address, password):
        ft = {"redisAddress": address, "passwordSecret": {"name": "redis", "key": "password"}}
        with two_replicas(g, ns, name, ft, secret=password):
            before = identity(g, ns)
            assert before is not None and len(before[0]) == 2 and len(before[1]) == 2, before
            worker_ip = worker_pods(g, ns)[0]["status"]["podIP"]
            base = f"http://{worker_ip}:8000"
            assert served(base)
            streams = [Stream(base, max_tokens=3000) for _ in range(2)]
            wait("both streams streaming", lambda: all(s.chunks > 5 for s in streams), 120)
            old_uid = crash_head(g, ns)
            t0 = time.monotonic()
            for s in streams:
                s.thread.join(STREAM_END_S)
            FIGURES["with GCS FT: streams in flight"] = [s.summary(t0) for s in streams]
            assert all(not s.thread.is_alive() for s in streams), "a stream hung"
            assert all(retryable(s) for s in streams), FIGURES["with GCS FT: streams in flight"]
            wait("a new head pod Running", lambda: new_head_running(g, ns, old_uid), RECOVERY_S)
            FIGURES["with GCS FT: crash -> new head pod Running (s)"] = round(
                time.monotonic() - t0, 1
            )
            wait("a request served again on the worker proxy", lambda: served(base), RECOVERY_S)
            FIGURES["with GCS FT: crash -> served again (s)"] = round(time.monotonic() - t0, 1)
            after = wait(
                "Ray's view of the nodes and replicas again",
                lambda: (i := identity(g, ns)) is not None and len(i[1]) == 2 and i,
                RECOVERY_S,
            )
            FIGURES["with GCS FT: same worker nodes"] = after[0] == before[0]
            FIGURES["with GCS FT: same replica actors"] = after[1] == before[1]
            assert after == before, (before, after)


def test_head_crash_without_gcs_ft(ground: Ground) -> None:
    g, ns, name = ground, "chain-no-ft", "noft"
    with two_replicas(g, ns, name, None):
        before = identity(g, ns)
        assert before is not None and len(before[0]) == 2 and len(before[1]) == 2, before
        old_workers = {p["metadata"]["uid"] for p in worker_pods(g, ns)}
        old_uid = crash_head(g, ns)
        t0 = time.monotonic()

        def replaced() -> bool:
            now = identity(g, ns)
            return bool(
                now is not None
                and len(now[1]) == 2
                and not now[0] & before[0]
                and not now[1] & before[1]
            )

        wait("every worker Ray node and replica actor replaced", replaced, DEPLOY_S)
        FIGURES["without GCS FT: crash -> 2 new replicas RUNNING (s)"] = round(
            time.monotonic() - t0, 1
        )
        FIGURES["without GCS FT: new head pod"] = new_head_running(g, ns, old_uid)
        FIGURES["without GCS FT: worker pods replaced"] = not (
            old_workers & {p["metadata"]["uid"] for p in worker_pods(g, ns)}
        )
