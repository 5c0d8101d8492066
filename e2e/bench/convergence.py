"""Convergence benchmark: how close the operator gets to the floor any operator can reach.

    .venv/bin/python e2e/bench/convergence.py [-n 20] [--idle 60] [--kubeconfig PATH]

In one run, on one API server:
  1. operator: apply N K2ThinkDeployments at once with the operator running; time until every
     one of the N RayServices exists;
  2. floor: server-side-apply the same children the operator writes (RayService, Ray token
     Secret, NetworkPolicies), pre-rendered, directly (one kubectl call, as fast as a client can
     write them); time until every RayService exists;
and print both and their ratio, the operator's peak RSS and CPU seconds, the API calls each phase
cost per verb and resource (the API server's own ``apiserver_request_total``, read before and
after each phase), and what the operator wrote while idle for ``--idle`` seconds after
convergence (its own write counter, the API server's write counters, and MODIFIED events seen
on K2ThinkDeployments and RayServices in that window). A benchmark, not a test: it asserts
nothing. The operator runs as in production (no ``--verbose``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

E2E = Path(__file__).resolve().parent.parent
ROOT = E2E.parent
sys.path[:0] = [str(E2E), str(ROOT)]

from harness import Cluster, wait_for  # noqa: E402
from harness.operator_process import OperatorProcess  # noqa: E402
from k2think_operator.deployment.decide import decide  # noqa: E402
from k2think_operator.render.security import RAY_TOKEN_KEY  # noqa: E402
from support import load_example, unique_namespace  # noqa: E402

#: Resources whose calls are background noise of the control plane itself (leader leases, KWOK
#: node heartbeats), not the operator's or the floor's: left out of the call counts.
NOISE = frozenset({"leases", "nodes"})
#: Verbs that only write.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"})
_REQUEST = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')

CallKey = tuple[str, str, str]  # verb, resource, subresource


def api_calls(cluster: Cluster) -> Counter[CallKey]:
    """The API server's request counter, per (verb, resource, subresource), noise left out.

    ``apiserver_request_total`` (k8s.io/apiserver/pkg/endpoints/metrics) counts every request
    the server answered, by verb, resource and subresource; WATCH and LIST opened by informers
    count once per connection, so what moves during a phase is requests, not events.
    """
    out = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    counts: Counter[CallKey] = Counter()
    for line in out.splitlines():
        match = _REQUEST.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if resource in NOISE:
            continue
        # A dry run (``dryRun=All``: deployment/dryrun.py) stores nothing: its own row, and not a
        # write (``CallWindow.writes``).
        verb = labels.get("verb", "") + (" dryRun" if labels.get("dry_run") else "")
        key = (verb, resource, labels.get("subresource", ""))
        counts[key] += int(float(match["value"]))
    return counts


@dataclass
class CallWindow:
    """API calls made between ``begin`` and ``end`` (a delta of ``api_calls``)."""

    delta: Counter[CallKey] = field(default_factory=Counter)

    def writes(self) -> int:
        return sum(v for (verb, _, _), v in self.delta.items() if verb in WRITES)

    def rows(self) -> list[tuple[str, int]]:
        named = {
            f"{verb} {res}{'/' + sub if sub else ''}": v
            for (verb, res, sub), v in self.delta.items()
        }
        return sorted(((k, v) for k, v in named.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))


@contextmanager
def counting(cluster: Cluster) -> Iterator[CallWindow]:
    window = CallWindow()
    before = api_calls(cluster)
    try:
        yield window
    finally:
        after = api_calls(cluster)
        after.subtract(before)
        # The two /metrics reads themselves are not part of the phase.
        window.delta = Counter({k: v for k, v in after.items() if v > 0 and k[1]})


class AddedWatch:
    """Counts RayServices added in one namespace, from a watch (``kubectl get --watch-only``).

    A watch, not polling: a LIST of a thousand RayServices every few hundred milliseconds would
    cost the API server more than what is measured. Started before the objects are written.
    """

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.count = 0
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            [
                str(cluster.bindir / "kubectl"),
                "get",
                "rayservices.ray.io",
                "-n",
                ns,
                "--watch",
                "-o",
                "name",
            ],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        # List, then watch: objects written before kubectl got its watch open (it may start
        # slowly on a busy machine) come with the list, so none is missed.
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        # ``-o name`` prints one line per event without its type (``--output-watch-events``
        # adds the type only to structured output): the first line of a name is its ADDED.
        assert self.proc.stdout is not None
        names: set[str] = set()
        for line in self.proc.stdout:
            name = line.strip()
            if name and name not in names:
                names.add(name)
                with self.changed:
                    self.count += 1
                    self.changed.notify_all()

    def wait(self, n: int, started: float, timeout: float = 1800) -> float:
        """Seconds from ``started`` until ``n`` were added."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.count < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"only {self.count} of {n} RayServices after {timeout} s")
                self.changed.wait(min(left, 1.0))
        return time.monotonic() - started

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def proc_status(pid: int, field_name: str) -> float:
    """A ``kB`` field of /proc/<pid>/status, in MiB (VmHWM: peak RSS; VmRSS: now)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field_name}:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writes_counter(op: OperatorProcess) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("k2think_api_writes_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def deployments(ns: str, n: int) -> list[dict[str, Any]]:
    return [load_example("k2think.yaml", namespace=ns, rename=f"k2t-{i:04d}") for i in range(n)]


def floor_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every child the operator writes for ``docs``, as a client would apply them directly.

    The token Secret gets a token (the operator generates one when it creates the Secret).
    """
    out: list[dict[str, Any]] = []
    for doc in docs:
        for child in decide(doc).children:
            child = dict(child)
            if child.get("kind") == "Secret":
                child["stringData"] = {RAY_TOKEN_KEY: "floor-" + "x" * 40}
            out.append(child)
    return out


@dataclass
class OperatorRun:
    n: int
    seconds: float
    #: How long the client's own apply of the N K2ThinkDeployments took (the input, which the
    #: floor does not write): the operator cannot finish before it.
    input_seconds: float
    calls: CallWindow
    peak_rss_mib: float
    cpu_seconds: float
    idle_writes: float = 0.0
    idle_api_writes: int = 0
    idle_modified: int = 0
    idle_seconds: float = 0.0
    idle_calls: CallWindow = field(default_factory=CallWindow)


@dataclass
class FloorRun:
    n: int
    seconds: float
    calls: CallWindow


def start_operator(cluster: Cluster, name: str, scope: tuple[str, ...] = ()) -> OperatorProcess:
    """The operator as it runs in production: default settings, not verbose; every namespace,
    or only those in ``scope``."""
    assert cluster.state_dir is not None
    args = [f"--namespace={ns}" for ns in scope] or ["--all-namespaces"]
    return OperatorProcess(
        args=args,
        state_dir=cluster.state_dir,
        name=name,
        env={"KUBECONFIG": str(cluster.kubeconfig)},
    ).start()


def watch_modified(cluster: Cluster, ns: str) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                str(cluster.bindir / "kubectl"),
                "get",
                kind,
                "-n",
                ns,
                "--watch-only",
                "-o",
                "name",
            ],
            env=cluster.env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for kind in ("k2thinkdeployments.k2think.dev", "rayservices.ray.io")
    ]


def all_status_written(cluster: Cluster, ns: str, n: int) -> bool:
    items = cluster.kubectl_json("get", "k2t", "-n", ns, timeout=300)["items"]
    return len(items) >= n and all(
        (d.get("status") or {}).get("observedGeneration") == 1 for d in items
    )


def run_operator_phase(
    cluster: Cluster,
    n: int,
    *,
    idle: float,
    prefix: str = "bench-operator",
    own_namespace: bool = False,
) -> OperatorRun:
    """Start an operator, apply ``n`` deployments; time, calls, memory, CPU, idle writes.

    ``own_namespace``: the operator watches only this phase's namespace (a campus benchmark
    keeps earlier phases' objects around); otherwise every namespace.
    """
    ns = unique_namespace(prefix)
    cluster.kubectl("create", "namespace", ns)
    op = start_operator(cluster, f"operator-{ns}", (ns,) if own_namespace else ())
    try:
        return _measure(cluster, op, ns, n, idle)
    finally:
        op.stop()


def _measure(cluster: Cluster, op: OperatorProcess, ns: str, n: int, idle: float) -> OperatorRun:
    assert op.proc is not None
    docs = deployments(ns, n)
    payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    cpu_before = cpu_seconds(op.proc.pid)
    watch = AddedWatch(cluster, ns)
    with counting(cluster) as calls:
        started = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=payload, timeout=1800)
        input_seconds = time.monotonic() - started
        seconds = watch.wait(n, started)
        watch.close()
        # Counted until every status is written: that is part of the job.
        wait_for(
            "status written for all",
            lambda: all_status_written(cluster, ns, n),
            timeout=1800,
            interval=1.0,
        )
    run = OperatorRun(
        n=n,
        seconds=seconds,
        input_seconds=input_seconds,
        calls=calls,
        peak_rss_mib=proc_status(op.proc.pid, "VmHWM"),
        cpu_seconds=cpu_seconds(op.proc.pid) - cpu_before,
    )
    if idle > 0:
        before = writes_counter(op)
        idle_watches = watch_modified(cluster, ns)
        with counting(cluster) as idle_calls:
            deadline = time.monotonic() + idle
            while time.monotonic() < deadline:  # the idle window is what is measured
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        seen = ""
        for idle_watch in idle_watches:
            idle_watch.terminate()
            seen += idle_watch.communicate(timeout=10)[0]
        run.idle_seconds = idle
        run.idle_writes = writes_counter(op) - before
        run.idle_calls = idle_calls
        run.idle_api_writes = idle_calls.writes()
        # Every object exists already: each line of the watch (``-o name``: one line per event,
        # no type) is a MODIFIED (or DELETED) event.
        run.idle_modified = len([line for line in seen.splitlines() if line.strip()])
        run.peak_rss_mib = proc_status(op.proc.pid, "VmHWM")
    return run


def run_floor_phase(cluster: Cluster, n: int, *, prefix: str = "bench-floor") -> FloorRun:
    """The same children, rendered up front, written straight by one client."""
    ns = unique_namespace(prefix)
    cluster.kubectl("create", "namespace", ns)
    payload = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": floor_objects(deployments(ns, n))}
    )
    watch = AddedWatch(cluster, ns)
    with counting(cluster) as calls:
        started = time.monotonic()
        cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=bench",
            "-f",
            "-",
            input=payload,
            timeout=1800,
        )
        seconds = watch.wait(n, started)
        watch.close()
    return FloorRun(n=n, seconds=seconds, calls=calls)


def print_summary(run: OperatorRun, floor: FloorRun) -> None:
    n = run.n
    print(f"deployments                      {n}")
    print(f"operator: all RayServices exist  {run.seconds:8.2f} s")
    print(f"  of which applying the input    {run.input_seconds:8.2f} s")
    print(f"floor: direct server-side apply  {floor.seconds:8.2f} s")
    print(f"ratio operator / floor           {run.seconds / floor.seconds:8.2f}")
    print(f"operator peak RSS                {run.peak_rss_mib:8.1f} MiB")
    print(f"operator CPU per deployment      {run.cpu_seconds / n * 1000:8.1f} ms")
    if run.idle_seconds:
        print(
            f"operator writes while idle       {run.idle_writes:8.0f} in {run.idle_seconds:.0f} s"
        )
        print(f"API writes while idle            {run.idle_api_writes:8d}")
        print(f"MODIFIED events while idle       {run.idle_modified:8d}")
    print_calls(run, floor)


def print_calls(op: OperatorRun, floor: FloorRun) -> None:
    """Both phases' API calls side by side, per deployment."""
    rows = dict(op.calls.rows())
    frows = dict(floor.calls.rows())
    print(f"API calls per deployment (apiserver_request_total; N = {op.n})")
    print(f"  {'verb resource':44} {'operator':>9} {'floor':>9}")
    for key in sorted(set(rows) | set(frows), key=lambda k: (-rows.get(k, 0), k)):
        print(f"  {key:44} {rows.get(key, 0) / op.n:9.2f} {frows.get(key, 0) / floor.n:9.2f}")
    total = sum(rows.values()) / op.n
    ftotal = sum(frows.values()) / floor.n
    print(f"  {'all':44} {total:9.2f} {ftotal:9.2f}")
    print(f"  {'writes':44} {op.calls.writes() / op.n:9.2f} {floor.calls.writes() / floor.n:9.2f}")


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
    try:
        run = run_operator_phase(cluster, args.n, idle=args.idle)
        floor = run_floor_phase(cluster, args.n)

        print_summary(run, floor)
        return 0
    finally:
        if cluster.owned:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
