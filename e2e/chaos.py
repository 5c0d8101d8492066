"""Fault injection shared by the chaos suite (``e2e/test_chaos.py``) and its benchmark
(``e2e/bench/faults.py``): the same scenarios, a CI size and a campus size.

Each scenario puts N K2ThinkDeployments to work, injects one kind of fault while they reconcile,
and waits (bounded polling) until the namespace is *converged*:

* every K2ThinkDeployment has exactly one RayService, named after it and owned by its uid;
* no RayService is an orphan (count equal, every owner present);
* the RayService is what the operator renders for the CR's current spec (its spec-hash);
* ``status.observedGeneration == metadata.generation``;
* the real KubeRay operator runs: it has built exactly one RayCluster for each RayService and
  written the RayService's status, and the deployment's ``Ready`` says what KubeRay's ``Ready``
  says. Nothing here writes a status. On KWOK no Ray answers KubeRay's dashboard probes, so
  KubeRay's ``Ready`` stays ``False`` and so must the deployment's; ``Ready=True`` under kills,
  from KubeRay's own status with real Ray, is the chain suite's ``e2e/chain/test_40_chaos.py``.

Faults: SIGKILL of the operator at random *progress points* (a random amount of the remaining
work done, so kills land mid-reconcile without sleeping for random times), a restart of the
kube-apiserver or of etcd mid-reconcile, and hard API priority-and-fairness throttling of the
operator's identity (a FlowSchema sending it to a PriorityLevelConfiguration with the smallest
concurrency and ``Reject``: 429s). The time from the end of the fault to convergence is measured.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Cluster, wait_for
from harness.restart import restart_process
from k2think_operator.deployment.controller import decide
from k2think_operator.render.meta import SPEC_HASH_ANNOTATION
from support import OperatorProcess, load_example

THROTTLE = "k2t-chaos-throttle"


@dataclass
class Result:
    """What one scenario measured (printed by the suite, tabulated by the benchmark)."""

    scenario: str
    deployments: int
    faults: int
    converge_seconds: float
    fault_seconds: float = 0.0
    kopf_restarts: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.notes.items()))
        return (
            f"chaos {self.scenario}: {self.deployments} deployments, {self.faults} fault(s), "
            f"fault lasted {self.fault_seconds:.1f} s, converged {self.converge_seconds:.1f} s "
            f"after it; kopf in-process restarts {self.kopf_restarts:g} {extra}".rstrip()
        )


def docs(ns: str, n: int) -> list[dict[str, Any]]:
    return [load_example("k2think.yaml", namespace=ns, rename=f"k2t-{i:03d}") for i in range(n)]


def apply_all(cluster: Cluster, objs: list[dict[str, Any]]) -> None:
    """One ``kubectl apply --server-side`` for all of them (a GitOps sync does the same)."""
    body = {"apiVersion": "v1", "kind": "List", "items": objs}
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=e2e-user", "-f", "-", input=json.dumps(body)
    )


def bump(cluster: Cluster, ns: str, names: list[str], rng: random.Random) -> None:
    """Edit some deployments (new autoscaling bound: a new generation and a new Serve config)."""
    for name in names:
        patch = {"spec": {"autoscaling": {"maxReplicas": rng.randint(2, 16)}}}
        cluster.kubectl(
            "patch", "k2t", name, "-n", ns, "--type=merge", "-p", json.dumps(patch), check=False
        )


def _list(cluster: Cluster, kind: str, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", kind, "-n", ns)["items"]
    return items


def progress(cluster: Cluster, ns: str) -> int:
    """Work done so far: RayServices present plus statuses that describe their generation."""
    crs = _list(cluster, "k2thinkdeployments.k2think.dev", ns)
    children = {r["metadata"]["name"] for r in _list(cluster, "rayservices.ray.io", ns)}
    observed = sum(
        1
        for cr in crs
        if (cr.get("status") or {}).get("observedGeneration") == cr["metadata"]["generation"]
    )
    return sum(1 for cr in crs if cr["metadata"]["name"] in children) + observed


def problems(cluster: Cluster, ns: str, names: list[str]) -> list[str]:
    """Why the namespace is not converged yet (empty: converged)."""
    crs = {c["metadata"]["name"]: c for c in _list(cluster, "k2thinkdeployments.k2think.dev", ns)}
    services = _list(cluster, "rayservices.ray.io", ns)
    clusters_of: dict[str, int] = {}
    for rc in _list(cluster, "rayclusters.ray.io", ns):
        for ref in rc["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "RayService":
                clusters_of[ref["uid"]] = clusters_of.get(ref["uid"], 0) + 1
    found: list[str] = []
    if sorted(crs) != sorted(names):
        found.append(f"K2ThinkDeployments {sorted(crs)} != {sorted(names)}")
    owned: dict[str, list[dict[str, Any]]] = {}
    uids = {c["metadata"]["uid"]: n for n, c in crs.items()}
    for rs in services:
        owners = rs["metadata"].get("ownerReferences") or []
        owner = uids.get(owners[0]["uid"]) if len(owners) == 1 else None
        if owner is None:
            found.append(f"orphan RayService {rs['metadata']['name']} (owners {owners})")
            continue
        owned.setdefault(owner, []).append(rs)
    for name, cr in sorted(crs.items()):
        children = owned.get(name, [])
        if len(children) != 1:
            found.append(f"{name}: {len(children)} RayServices")
            continue
        (rs,) = children
        built = clusters_of.get(rs["metadata"]["uid"], 0)
        if built != 1:
            found.append(f"{name}: KubeRay built {built} RayClusters for its RayService")
        theirs = [
            c for c in (rs.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"
        ]
        if not theirs:
            found.append(f"{name}: KubeRay has written no Ready condition on its RayService")
        want = decide(cr).children[0]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        have = (rs["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if want != have:
            found.append(f"{name}: RayService spec-hash {have} != rendered {want}")
        status = cr.get("status") or {}
        if status.get("observedGeneration") != cr["metadata"]["generation"]:
            found.append(
                f"{name}: observedGeneration {status.get('observedGeneration')} != "
                f"{cr['metadata']['generation']}"
            )
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        mine = ready[0].get("status") if ready else None
        if theirs and mine != theirs[0].get("status"):
            found.append(f"{name}: Ready {mine} while KubeRay's Ready is {theirs[0].get('status')}")
    return found


def wait_converged(
    cluster: Cluster, ns: str, names: list[str], *, timeout: float, since: float | None = None
) -> float:
    """Seconds from ``since`` (default: now) until the namespace is converged."""
    started = time.monotonic() if since is None else since
    last: list[str] = []

    def probe() -> bool:
        nonlocal last
        last = problems(cluster, ns, names)
        return not last

    try:
        wait_for(f"{len(names)} deployments converged in {ns}", probe, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}; still wrong:\n  " + "\n  ".join(last[:20])) from None
    return time.monotonic() - started


def metric(op: OperatorProcess, name: str) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_progress(cluster: Cluster, ns: str, target: int, timeout: float = 120.0) -> int:
    reached: int = wait_for(
        f"progress >= {target} in {ns}",
        lambda: (p := progress(cluster, ns)) >= target and p,
        timeout=timeout,
    )
    return reached


# --- scenarios ----------------------------------------------------------------------------------


def kill_storm(
    cluster: Cluster,
    ns: str,
    log_dir: Path,
    *,
    n: int,
    kills: int,
    rng: random.Random,
    timeout: float,
) -> Result:
    """SIGKILL the operator ``kills`` times at random progress points while edits keep coming."""
    objs = docs(ns, n)
    names = [o["metadata"]["name"] for o in objs]

    def start(i: int) -> OperatorProcess:
        log = log_dir / f"chaos-kill-{ns}-{i}.log"
        return OperatorProcess(cluster, ["--all-namespaces"], log).start()

    op = start(0)
    apply_all(cluster, objs)
    try:
        for i in range(kills):
            done = progress(cluster, ns)
            if done >= 2 * n:  # all caught up: give it new work to be killed in the middle of
                bump(cluster, ns, rng.sample(names, k=max(1, n // 4)), rng)
                done = progress(cluster, ns)
            remaining = max(1, 2 * n - done)
            target = min(2 * n, done + rng.randint(1, max(1, remaining // 2)))
            wait_progress(cluster, ns, target, timeout)
            op.kill()
            # New work for the next operator while nobody runs: the edits land mid-flight.
            bump(cluster, ns, rng.sample(names, k=max(1, n // 4)), rng)
            op = start(i + 1)
        restarted = time.monotonic()
        seconds = wait_converged(cluster, ns, names, timeout=timeout, since=restarted)
        assert op.alive()
        return Result(
            "sigkill", n, kills, seconds, kopf_restarts=metric(op, "k2think_kopf_restarts_total")
        )
    finally:
        op.stop()


def restart_mid_reconcile(
    cluster: Cluster,
    ns: str,
    log_dir: Path,
    *,
    component: str,
    n: int,
    rng: random.Random,
    timeout: float,
) -> Result:
    """Restart ``component`` (``kube-apiserver`` or ``etcd``) while N deployments reconcile."""
    objs = docs(ns, n)
    names = [o["metadata"]["name"] for o in objs]
    op = OperatorProcess(
        cluster, ["--all-namespaces"], log_dir / f"chaos-{component}-{ns}.log"
    ).start()
    try:
        pid = op.proc.pid if op.proc else None
        apply_all(cluster, objs)
        wait_progress(cluster, ns, rng.randint(1, max(1, n - 1)), timeout)
        down = restart_process(cluster, component, kill=True)
        back = time.monotonic()
        bump(cluster, ns, rng.sample(names, k=max(1, n // 4)), rng)
        seconds = wait_converged(cluster, ns, names, timeout=timeout, since=back)
        assert op.proc is not None and op.alive() and op.proc.pid == pid, (
            "the operator process did not survive"
        )
        return Result(
            f"{component}-restart",
            n,
            1,
            seconds,
            fault_seconds=down,
            kopf_restarts=metric(op, "k2think_kopf_restarts_total"),
        )
    finally:
        op.stop()


def _throttle_manifests(sa_ns: str, sa: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": {"name": THROTTLE},
            "spec": {
                "type": "Limited",
                "limited": {
                    # The smallest share there is, nothing borrowed, no queue: excess requests
                    # get 429 at once.
                    "nominalConcurrencyShares": 1,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {"type": "Reject"},
                },
            },
        },
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": THROTTLE},
            "spec": {
                "priorityLevelConfiguration": {"name": THROTTLE},
                # Before every built-in schema but `exempt` (1) and the probes/leader-election.
                "matchingPrecedence": 200,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"namespace": sa_ns, "name": sa},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "clusterScope": True,
                                "namespaces": ["*"],
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        },
    ]


_REJECTED = re.compile(
    r'^apiserver_flowcontrol_rejected_requests_total\{[^}]*flow_schema="'
    + THROTTLE
    + r'"[^}]*\} ([0-9.e+]+)$'
)


def rejected(cluster: Cluster) -> float:
    """429s the API server answered to the throttled identity so far (its own counter)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(m.group(1)) for line in text.splitlines() if (m := _REJECTED.match(line)))


def throttled(
    cluster: Cluster,
    ns: str,
    log_dir: Path,
    *,
    n: int,
    rng: random.Random,
    timeout: float,
    min_rejections: int = 20,
) -> Result:
    """The operator runs as a ServiceAccount that APF throttles hard while N deployments
    reconcile; once it has been refused (429) a while, the throttle is lifted."""
    sa = "k2t-chaos-operator"
    cluster.kubectl("create", "serviceaccount", sa, "-n", ns)
    # Its permissions are not the point here (e2e/install proves least privilege): admin.
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        f"{sa}-{ns}",
        "--clusterrole=cluster-admin",
        f"--serviceaccount={ns}:{sa}",
    )
    kubeconfig = cluster.service_account_kubeconfig(ns, sa)
    manifests = {"apiVersion": "v1", "kind": "List", "items": _throttle_manifests(ns, sa)}
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifests))
    objs = docs(ns, n)
    names = [o["metadata"]["name"] for o in objs]
    op = OperatorProcess(
        cluster,
        ["--all-namespaces"],
        log_dir / f"chaos-throttle-{ns}.log",
        env={"KUBECONFIG": str(kubeconfig)},
    )
    lifted = False
    try:
        throttle_started = time.monotonic()
        op.start(timeout=120)
        pid = op.proc.pid if op.proc else None
        apply_all(cluster, objs)
        bump(cluster, ns, rng.sample(names, k=max(1, n // 4)), rng)
        # Hard throttling: wait until the API server has refused the operator repeatedly (or,
        # on a fast machine, the operator got through anyway).
        wait_for(
            f"at least {min_rejections} 429s for the operator",
            lambda: rejected(cluster) >= min_rejections or not problems(cluster, ns, names),
            timeout=timeout,
        )
        refused = rejected(cluster)
        assert refused >= 1, "the FlowSchema never throttled the operator"
        cluster.kubectl("delete", "flowschema", THROTTLE, "--wait=true")
        lifted = True
        back = time.monotonic()
        seconds = wait_converged(cluster, ns, names, timeout=timeout, since=back)
        assert op.proc is not None and op.alive() and op.proc.pid == pid
        return Result(
            "apf-throttle",
            n,
            1,
            seconds,
            fault_seconds=back - throttle_started,
            kopf_restarts=metric(op, "k2think_kopf_restarts_total"),
            notes={"rejected_429": int(refused)},
        )
    finally:
        op.stop()
        if not lifted:
            cluster.kubectl("delete", "flowschema", THROTTLE, "--ignore-not-found", check=False)
        cluster.kubectl(
            "delete", "prioritylevelconfiguration", THROTTLE, "--ignore-not-found", check=False
        )
        cluster.kubectl(
            "delete", "clusterrolebinding", f"{sa}-{ns}", "--ignore-not-found", check=False
        )


Scenario = Callable[..., Result]
