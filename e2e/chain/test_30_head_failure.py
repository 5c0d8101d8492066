"""Issue #15's head-failure proof on the chain ground: a head crash with and without GCS FT.

Two deployments, one after the other, each in its own namespace and removed at the end (so the
CPU pools are free again for whatever runs next); both reuse the session's ground:

1. ``test_head_crash_with_gcs_ft``: two replicas serving (one per CPU pool, ``maxNodes: 1``
   each, so both worker pods start at once) with ``spec.ray.gcsFaultTolerance`` pointing at a
   password-protected ``redis-server`` (Debian's package) that this test starts on the ground's
   address (:data:`harness.netns.GROUND_IP`, an address that exists only inside the suite's
   network namespace, every node's default gateway, so every pod reaches it). Two streams run through a worker pod's
   Serve proxy; then every process of the head pod is SIGKILLed, i.e. its containers crash as a
   kubelet sees it: the kubelet stand-in reports the ended containers (``restartPolicy: Never``,
   what KubeRay gives pods under autoscaler v2), KubeRay deletes the pod and creates a new head,
   which reloads the GCS tables from Redis. Shown: each stream in flight either finishes or
   ends with an error a client retries (connection-level or HTTP 5xx; not a clean finish, not a
   hang) within ``STREAM_END_S``; a new request is served again through the same worker proxy
   within ``SERVED_AGAIN_S`` (the README's bounds, asserted; the times are recorded); the
   worker Ray node IDs and the LLM replica actor IDs are the same as before the crash, and so are
   the replicas' processes (pid and start time on the host): no replica reloaded its weights.
   This relies on the operator's ``VLLM_CONFIGURE_LOGGING=0`` in every LLM config's
   ``runtime_env`` (``render/serve_config.py``, ``REPLICA_ENV_VARS``; the test checks it is in
   the RayService): without it the recovering Serve controller replaces every LLM replica.
2. ``test_head_crash_without_gcs_ft``: the same fault without it, on one replica (what it shows
   does not depend on the count, and one replica starts in half the time on 2 cores): the worker
   raylet aborts when it meets the new head's GCS (a new cluster ID), KubeRay replaces the worker
   pod, and the replica that serves again is a new actor on a new Ray node that loaded the
   weights again (the reason for ``GcsFaultToleranceOff``).

Figures are printed (``-rA``) and written to ``<state>/head-failure.json`` for
docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import http.client
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
import yaml
from chain_support import (
    SERVED_NAME,
    Ground,
    app_status,
    apply,
    chain_deployment,
    client_netns,
    cluster_of,
    cpu_pool,
    pods,
    ray_nodes,
    rayservice,
    serve_replicas,
    serve_url,
    wait,
    worker_pods,
)

from harness import WaitTimeoutError, netns, raynodes
from harness.polling import Aborted, NotYet
from harness.processes import free_port

#: Bounds of the polls: generous for 2 busy cores.
DEPLOY_S = 900.0
RECOVERY_S = 600.0
#: The bounds the README states for a head crash under GCS fault tolerance, asserted: a stream in
#: flight ends with an error a client retries within STREAM_END_S of the crash (measured 1.3-2.1 s:
#: the OpenAI ingress replica on the head dies with it), and the deployment serves again through
#: a worker's proxy within SERVED_AGAIN_S (measured 73-81 s, of which ~42 s the new head's start;
#: KubeRay's first replacement head may die at start-up on busy cores, ray#65983, and the bound
#: leaves room for the second).
STREAM_END_S = 30.0
SERVED_AGAIN_S = 240.0
#: How long a stream still open at STREAM_END_S is watched for new tokens.
PROGRESS_S = 10.0
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _figures(ground: Ground) -> Iterator[None]:
    yield
    print("\nhead-failure figures:", json.dumps(FIGURES, indent=1))
    (ground.state_dir / "head-failure.json").write_text(json.dumps(FIGURES, indent=1) + "\n")


@contextlib.contextmanager
def redis_on_ground(state_dir: Path) -> Iterator[tuple[str, str]]:
    """``redis-server`` (AOF on, a random password) on the ground's address: reachable from the
    pods' network namespaces, and only inside the suite's own network namespace."""
    port = free_port()
    password = secrets.token_hex(16)
    work = state_dir / "redis"
    work.mkdir(parents=True, exist_ok=True)
    with (work / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                netns.GROUND_IP,
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
            lambda: raynodes.tcp_open(netns.GROUND_IP, port),
            timeout=30,
        )
        yield f"{netns.GROUND_IP}:{port}", password
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def deployment(
    g: Ground,
    ns: str,
    name: str,
    pools: list[str],
    ft: dict[str, Any] | None,
    *,
    secret: str | None = None,
) -> Iterator[None]:
    """One replica per pool in ``pools`` (``maxNodes: 1`` each), all RUNNING; removed after."""
    replicas = len(pools)
    g.cluster.kubectl("create", "namespace", ns, check=False)
    if secret is not None:
        g.cluster.kubectl(
            "create", "secret", "generic", "redis", f"--from-literal=password={secret}", "-n", ns
        )
    doc = chain_deployment(
        name,
        ns,
        g.model_dir,
        pools=[{**cpu_pool(p), "maxNodes": 1} for p in pools],
        autoscaling={
            "minReplicas": replicas,
            "maxReplicas": replicas,
            "idleTimeoutSeconds": 600,
        },
    )
    if ft is not None:
        doc["spec"]["ray"]["gcsFaultTolerance"] = ft
    t0 = time.monotonic()
    apply(g, doc)
    try:
        wait(f"{replicas} RUNNING replica(s)", lambda: len(_running(g, ns)) == replicas, DEPLOY_S)
        wait("the application RUNNING", lambda: app_status(g, ns, name) == "RUNNING", DEPLOY_S)
        FIGURES[f"{ns}: deploy -> {replicas} replica(s) RUNNING (s)"] = round(
            time.monotonic() - t0, 1
        )
        yield
    finally:
        g.cluster.kubectl("delete", "k2t", name, "-n", ns, "--wait=false", check=False)
        wait(
            f"the Ray pods of {ns} to go",
            lambda: not pods(g, ns, "ray.io/node-type in (head,worker)"),
            timeout=300,
        )


def _quiet(probe: Any) -> Any:
    """A probe that answers None while the head (its dashboard) is unreachable: connection and
    HTTP errors, a half-written answer. Nothing else: a failed assertion inside is a failure."""
    with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
        return probe()
    return None


def _running(g: Ground, ns: str) -> list[dict[str, Any]]:
    cluster = cluster_of(g, ns)
    found = _quiet(lambda: serve_replicas(ns, cluster)) or []
    return [r for r in found if r.get("state") == "RUNNING"]


def _started(pid: int) -> str | None:
    """A process's start time (``/proc/<pid>/stat`` field 22, clock ticks since boot): with the
    pid, it names one process; None once it is gone. The suite shares the host's pid namespace."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Identity:
    """Who serves: Ray's worker node IDs, and each RUNNING replica as (actor ID, pid, process
    start time). Serve starts replica actors with ``max_restarts=0``
    (``ray/serve/_private/deployment_state.py``), so the same actor ID is the same process."""

    workers: frozenset[str]
    replicas: frozenset[tuple[str, int, str | None]]

    @property
    def actors(self) -> frozenset[str]:
        return frozenset(r[0] for r in self.replicas)


def identity(g: Ground, ns: str) -> Identity | None:
    """Ray's current view, or None while the head is unreachable."""
    cluster = cluster_of(g, ns)
    nodes = _quiet(lambda: ray_nodes(ns, cluster))
    if nodes is None:
        return None
    workers = frozenset(n["node_id"] for n in nodes if not n.get("is_head_node"))
    replicas = frozenset(
        (str(r["actor_id"]), int(r["pid"]), _started(int(r["pid"]))) for r in _running(g, ns)
    )
    return Identity(workers, replicas)


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


def head_answers(g: Ground, ns: str) -> bool:
    """Ray's dashboard on a new head answers (through the head Service)."""
    return bool(_quiet(lambda: ray_nodes(ns, cluster_of(g, ns))))


def served(base: str, via: Path) -> bool:
    """A completion answered, asked from the network namespace ``via`` (a client pod's)."""
    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 4}
    with contextlib.suppress(httpx.HTTPError), netns.inside(via):
        return bool(httpx.post(f"{base}/v1/completions", json=body, timeout=30).status_code == 200)
    return False


def replica_env(g: Ground, ns: str, name: str) -> dict[str, str]:
    """The LLM config's ``runtime_env.env_vars`` in the RayService the operator rendered."""
    rs = rayservice(g, ns, name) or {}
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    llm = serve["applications"][0]["args"]["llm_configs"][0]
    return dict((llm.get("runtime_env") or {}).get("env_vars") or {})


@dataclass
class Stream:
    """One streaming chat completion (SSE read with httpx) whose progress can be watched, sent
    from the network namespace ``via`` (a client pod's)."""

    base: str
    via: Path
    max_tokens: int
    chunks: int = 0
    finish: str | None = None
    error: str | None = None
    ended_at: float | None = None
    #: Set to close the stream from the client side (a survivor, once judged).
    stop: threading.Event = field(default_factory=threading.Event)
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
            with (
                netns.inside(self.via),
                httpx.stream(
                    "POST", f"{self.base}/v1/chat/completions", json=body, timeout=timeout
                ) as resp,
            ):
                if resp.status_code != 200:
                    self.error = f"HTTP {resp.status_code}"
                    return
                for line in resp.iter_lines():
                    if self.stop.is_set():
                        return
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        self.error = f"error event: {str(data['error'])[:200]}"
                        return
                    for choice in data.get("choices") or []:
                        self.chunks += 1
                        self.finish = choice.get("finish_reason") or self.finish
        except Exception as exc:  # recorded, judged by failed_retryably()
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


def failed_retryably(s: Stream) -> bool:
    """Ended the way a client retries: the connection broke or a 5xx came back (not a read
    timeout: that is a stream that hung)."""
    if s.error is None:
        return False
    text = s.error
    if "Timeout" in text:
        return False
    return any(
        k in text
        for k in ("RemoteProtocolError", "ConnectError", "ReadError", "HTTP 5", "error event")
    )


def judge_streams(streams: list[Stream], crashed: float) -> list[str]:
    """What the crash did to each stream in flight, by ``STREAM_END_S`` after it: ``failed
    fast`` (ended with an error a client retries: the OpenAI ingress replica on its path ran on
    the head), ``streaming`` (still delivering tokens: nothing on its path ran on the head, so
    GCS fault tolerance kept it going), else ``hung`` (alive without progress), ``failed``
    (another error) or ``finished`` (a 3,000-token stream cannot finish in the bound: the crash
    never reached it)."""
    deadline = crashed + STREAM_END_S
    for s in streams:
        s.thread.join(max(0.0, deadline - time.monotonic()))
    outcomes = []
    for s in streams:
        if s.thread.is_alive():
            outcomes.append("streaming" if _progresses(s) else "hung")
        elif s.error is None:
            outcomes.append("finished")
        else:
            outcomes.append("failed fast" if failed_retryably(s) else "failed")
    return outcomes


def _streaming(streams: list[Stream]) -> bool:
    """Every stream past its first tokens; a stream that ended before the crash ends the wait
    at once with what it got (one run timed out here without saying why)."""
    for s in streams:
        if not s.thread.is_alive():
            raise Aborted(f"a stream ended before the crash: {s.summary(time.monotonic())}")
    if all(s.chunks > 5 for s in streams):
        return True
    raise NotYet(f"chunks so far: {[s.chunks for s in streams]}")


def _progresses(s: Stream) -> bool:
    """A new token within ``PROGRESS_S`` (bounded polling)."""
    chunks = s.chunks
    try:
        wait("a new token on a stream in flight", lambda: s.chunks > chunks, PROGRESS_S)
    except WaitTimeoutError:
        return False
    return True


@pytest.mark.timeout(2400)
def test_head_crash_with_gcs_ft(ground: Ground) -> None:
    g, ns, name = ground, "chain-gcs-ft", "ft"
    with redis_on_ground(g.state_dir) as (address, password):
        ft = {"redisAddress": address, "passwordSecret": {"name": "redis", "key": "password"}}
        with deployment(g, ns, name, ["cpu-a", "cpu-b"], ft, secret=password):
            assert replica_env(g, ns, name).get("VLLM_CONFIGURE_LOGGING") == "0"
            before = identity(g, ns)
            assert before is not None and len(before.workers) == 2, before
            assert len(before.replicas) == 2 and all(r[2] for r in before.replicas), before
            worker_ip = worker_pods(g, ns)[0]["status"]["podIP"]
            base = f"http://{worker_ip}:8000"
            via = client_netns(g, ns)
            assert served(base, via)
            streams = [Stream(base, via, max_tokens=3000) for _ in range(2)]
            wait("both streams streaming", lambda: _streaming(streams), 180)
            old_uid = crash_head(g, ns)
            t0 = time.monotonic()
            outcomes = judge_streams(streams, t0)
            FIGURES["with GCS FT: streams in flight"] = [
                {**s.summary(t0), "outcome": o} for s, o in zip(streams, outcomes, strict=True)
            ]
            assert set(outcomes) <= {"failed fast", "streaming"}, FIGURES[
                "with GCS FT: streams in flight"
            ]
            for s in streams:
                s.stop.set()  # the survivors have shown it; their 3,000 tokens are not needed
            wait(
                "the new head's Ray to answer",
                lambda: (
                    (h := head_pod(g, ns))
                    and h["metadata"]["uid"] != old_uid
                    and head_answers(g, ns)
                ),
                RECOVERY_S,
            )
            FIGURES["with GCS FT: crash -> new head's Ray answers (s)"] = round(
                time.monotonic() - t0, 1
            )
            wait(
                "a request served again on the worker proxy",
                lambda: served(base, via),
                max(1.0, t0 + SERVED_AGAIN_S - time.monotonic()),
            )
            FIGURES["with GCS FT: crash -> served again (s)"] = round(time.monotonic() - t0, 1)
            after = wait(
                "Ray's view of the nodes and 2 RUNNING replicas again",
                lambda: (i := identity(g, ns)) is not None and len(i.replicas) == 2 and i,
                RECOVERY_S,
            )
            FIGURES["with GCS FT: same worker nodes"] = after.workers == before.workers
            FIGURES["with GCS FT: same replica actors"] = after.actors == before.actors
            FIGURES["with GCS FT: same replica processes"] = after.replicas == before.replicas
            assert after == before, (before, after)
            wait(
                "served through the serve Service too",
                lambda: served(serve_url(ns, name), via),
                120,
            )


@pytest.mark.timeout(1800)
def test_head_crash_without_gcs_ft(ground: Ground) -> None:
    g, ns, name = ground, "chain-no-ft", "noft"
    with deployment(g, ns, name, ["cpu-a"], None):
        before = identity(g, ns)
        assert before is not None and len(before.workers) == 1 and len(before.replicas) == 1
        old_pods = {p["metadata"]["uid"] for p in worker_pods(g, ns)}
        crash_head(g, ns)
        t0 = time.monotonic()

        def replaced() -> bool:
            now = identity(g, ns)
            return bool(
                now is not None
                and len(now.replicas) == 1
                and not now.workers & before.workers
                and not now.actors & before.actors
            )

        wait("the worker Ray node and the replica actor replaced", replaced, DEPLOY_S)
        FIGURES["without GCS FT: crash -> a new replica RUNNING (s)"] = round(
            time.monotonic() - t0, 1
        )
        via = client_netns(g, ns)
        wait("a request served again", lambda: served(serve_url(ns, name), via), RECOVERY_S)
        FIGURES["without GCS FT: crash -> served again (s)"] = round(time.monotonic() - t0, 1)
        new_pods = {p["metadata"]["uid"] for p in worker_pods(g, ns)}
        FIGURES["without GCS FT: worker pod replaced"] = not old_pods & new_pods
        assert not old_pods & new_pods
        # The process that had loaded the weights is gone (a pid alone could be reused).
        assert all(_started(pid) != started for _, pid, started in before.replicas)
