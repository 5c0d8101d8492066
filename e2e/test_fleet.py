"""A shared campus: quotas, queueing, borrowing, preemption and GPU bin-packing, all real.

Its own campus (``e2e/campus/fleet.yaml``) with the real Kueue v0.17 (webhooks and all, out of
cluster: harness/kueue.py), KubeRay, and kube-scheduler running the campus recommendation
``docs/scheduling/kube-scheduler-gpu-binpacking.yaml``. ``make test-fleet`` runs this module
alone; ``make test`` runs it after the main e2e suite (one campus at a time on the machine).

Each test works in a namespace of its own with ClusterQueues named after it, so quotas of one
test never meet another's; the ResourceFlavors and priorities are the worked example's
(``crds/examples/kueue/campus-queues.yaml``), applied once.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import Cluster
from harness.pki import Pki
from harness.scheduling import GPU_BINPACKING_PROFILE
from support import (
    EXAMPLES,
    OperatorProcess,
    apply_doc,
    condition,
    eventually,
    get,
    holds_without_fight,
    items,
    load_example,
    namespace,
)

FLEET_CAMPUS = Path(__file__).resolve().parent / "campus" / "fleet.yaml"
CAMPUS_QUEUES = EXAMPLES / "kueue" / "campus-queues.yaml"
OURS = "app.kubernetes.io/managed-by=k2think-operator"
KUEUE = "kueue.x-k8s.io/v1beta2"
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
WAIT = 120.0


@pytest.fixture(scope="module")
def campus() -> Iterator[Cluster]:
    c = Cluster.start(
        name="fleet",
        campus=FLEET_CAMPUS,
        kuberay=True,
        kueue=True,
        scheduler_profile=GPU_BINPACKING_PROFILE,
        timeout=300,
    )
    try:
        # The worked example's cluster-scoped objects: flavors, priorities, tenant queues.
        shared = [
            d
            for d in yaml.safe_load_all(CAMPUS_QUEUES.read_text())
            if d and d["kind"] != "LocalQueue"
        ]
        for doc in shared:
            apply_doc(c, doc)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def operator(campus: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        campus,
        ["--all-namespaces"],
        log_dir / "operator-fleet.log",
        env={"K2T_QUEUE_RECHECK_SECONDS": "2", "K2T_UNSCHEDULABLE_GRACE_SECONDS": "5"},
    )
    op.start()
    yield op
    op.stop()


@pytest.fixture
def ns(campus: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with namespace(campus, request.node.name.removeprefix("test_")[:30]) as name:
        yield name
    # ClusterQueues named after the namespace (cluster-scoped: the namespace does not take them)
    campus.kubectl(
        "delete", "clusterqueues.kueue.x-k8s.io", "-l", f"k2t-e2e/ns={name}", "--wait=false",
        check=False,
    )  # fmt: skip


# --- builders ------------------------------------------------------------------------------------


def cluster_queue(
    name: str,
    ns: str,
    *,
    h100_gpus: int,
    cohort: str | None = None,
    preemption: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ClusterQueue covering the Ray heads (cpu flavor) and ``h100_gpus`` H100 GPUs."""

    def quotas(cpu: str, memory: str, gpus: int) -> list[dict[str, Any]]:
        return [
            {"name": "cpu", "nominalQuota": cpu},
            {"name": "memory", "nominalQuota": memory},
            {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
        ]

    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "queueingStrategy": "BestEffortFIFO",
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [
                    {"name": "cpu", "resources": quotas("64", "256Gi", 0)},
                    {"name": "h100", "resources": quotas("1536", "16Ti", h100_gpus)},
                ],
            }
        ],
    }
    if cohort:
        spec["cohortName"] = cohort
    if preemption:
        spec["preemption"] = preemption
    return {
        "apiVersion": KUEUE,
        "kind": "ClusterQueue",
        "metadata": {"name": name, "labels": {"k2t-e2e/ns": ns}},
        "spec": spec,
    }


def local_queue(name: str, ns: str, cq: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterQueue": cq},
    }


def deployment(
    name: str,
    ns: str,
    *,
    queue: str | None = None,
    priority: str | None = None,
    replicas: int | None = 1,
    autoscaling: dict[str, int] | None = None,
    pool: str = "h100",
    tensor: int = 4,
) -> dict[str, Any]:
    """K2-Think at TP=``tensor``: one worker pod of ``tensor`` GPUs per replica."""
    spec: dict[str, Any] = {
        "model": {"preset": "k2-think", "maxModelLen": 32768},
        "pools": [
            {
                "name": pool,
                "gpuType": "H100-80GB",
                "gpusPerNode": 8,
                "nodeSelector": {"k2think.dev/pool": pool},
                "tolerations": TOLERATE_GPU,
            }
        ],
        "parallelism": {"tensor": tensor, "pipeline": 1},
        "ray": {"head": {"nodeSelector": {"k2think.dev/pool": "cpu"}}},
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    elif replicas is not None:
        spec["replicas"] = replicas
    if queue:
        spec["scheduling"] = {"queueName": queue}
        if priority:
            spec["scheduling"]["priorityClassName"] = priority
    return {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


# --- probes --------------------------------------------------------------------------------------


def k2t(campus: Cluster, name: str, ns: str) -> dict[str, Any] | None:
    return get(campus, "k2thinkdeployments.k2think.dev", name, ns)


def rayservice(campus: Cluster, name: str, ns: str) -> dict[str, Any] | None:
    return get(campus, "rayservices.ray.io", name, ns)


def admission(campus: Cluster, name: str, ns: str, reason: str) -> dict[str, Any]:
    """Wait for our Admitted condition to carry ``reason``; returns the K2ThinkDeployment."""

    def probe() -> dict[str, Any] | None:
        obj = k2t(campus, name, ns)
        cond = condition(obj, "Admitted")
        return obj if cond and cond.get("reason") == reason else None

    def last() -> str:
        return json.dumps(condition(k2t(campus, name, ns), "Admitted"))

    try:
        return eventually(f"{ns}/{name} Admitted reason {reason}", probe, timeout=WAIT)
    except Exception as exc:
        raise AssertionError(f"{exc}; last Admitted condition: {last()}") from exc


def suspended_by_kueue(campus: Cluster, name: str, ns: str) -> bool | None:
    rs = rayservice(campus, name, ns)
    if rs is None:
        return None
    return bool(rs["spec"]["rayClusterConfig"].get("suspend"))


def worker_pods(campus: Cluster, name: str, ns: str) -> list[dict[str, Any]]:
    return items(
        campus,
        "pods",
        ns,
        OURS,
        f"app.kubernetes.io/instance={name}",
        "app.kubernetes.io/component=ray-worker",
    )


def running_workers(campus: Cluster, name: str, ns: str, count: int) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in worker_pods(campus, name, ns)
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        return pods if len(pods) == count else None

    return eventually(f"{count} Running worker pod(s) of {ns}/{name}", probe, timeout=WAIT)


#: Ray's autoscaler v2 scaling a RayCluster: its KubeRay cloud provider, the code the autoscaler
#: container runs, with the Kubernetes client it builds from its environment.
RAY_AUTOSCALER_LAUNCH = """
import json, sys
from ray.autoscaler.v2.instance_manager.cloud_providers.kuberay.cloud_provider import (
    KubeRayProvider,
)
cluster, namespace, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
provider = KubeRayProvider(cluster, {"namespace": namespace}, gcs_client=None)
provider.launch({group: count}, "k2t-e2e-scale-up")
errors = [str(e) for e in provider.poll_errors()]
print(json.dumps(errors))
sys.exit(1 if errors else 0)
"""


#: The service-account files a pod gets, made visible where client-go and Ray look for them, in a
#: private mount namespace of the one process (a tmpfs over /run: nothing on the host changes).
_POD_SECRETS = (
    "mount -t tmpfs k2t-pod-run /run"
    " && mkdir -p /run/secrets/kubernetes.io/serviceaccount"
    ' && mount --bind "$0" /run/secrets/kubernetes.io/serviceaccount'
    ' && exec "$@"'
)


def ray_autoscaler_launch(campus: Cluster, ns: str, raycluster: str, group: str, n: int) -> None:
    """Launch ``n`` more workers of ``group`` through Ray's own autoscaler v2 provider
    (``KubeRayProvider.launch``: reads the RayCluster and its pods, patches
    ``workerGroupSpecs[i].replicas`` as the autoscaler does), with the autoscaler's own
    credentials, so KubeRay's RBAC for it applies.

    What this stands in for: the decision to scale. The autoscaler decides from Ray's resource
    demand (GCS), and on KWOK no Ray runs (the chain suite, e2e/chain/, drives the whole loop
    with real Ray processes); the scaling itself is Ray's code, unchanged. Its identity is what a
    kubelet gives the autoscaler container: a TokenRequest token of the head pod's
    ServiceAccount with the cluster CA at ``/var/run/secrets/kubernetes.io/serviceaccount``
    (mounted in a private mount namespace of this one process) and ``KUBERNETES_SERVICE_HOST``/
    ``_PORT_HTTPS``, which Ray's Kubernetes client reads (``load_k8s_secrets``)."""
    assert campus.state_dir is not None
    head = items(campus, "pods", ns, f"ray.io/cluster={raycluster}", "ray.io/node-type=head")[0]
    sa = head["spec"].get("serviceAccountName") or "default"
    secrets = campus.state_dir / "pod-secrets" / f"{ns}-{sa}"
    secrets.mkdir(parents=True, exist_ok=True)
    token = campus.kubectl("create", "token", sa, "-n", ns, "--duration=10m").stdout.strip()
    (secrets / "token").write_text(token)
    (secrets / "namespace").write_text(ns)
    (secrets / "ca.crt").write_bytes(Pki(campus.state_dir / "pki").ca_cert.read_bytes())
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT_HTTPS": str(campus.ports["apiserver"]),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    argv = [sys.executable, "-c", RAY_AUTOSCALER_LAUNCH, raycluster, ns, group, str(n)]
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _POD_SECRETS,
         str(secrets), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"Ray's KubeRayProvider.launch failed:\n{proc.stdout}{proc.stderr}"


def event_reasons(campus: Cluster, name: str, ns: str) -> list[str]:
    found = campus.kubectl_json(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [
        str(e.get("reason")) for e in found if e["involvedObject"]["kind"] == "K2ThinkDeployment"
    ]


def has_event(campus: Cluster, name: str, ns: str, reason: str) -> list[str]:
    def probe() -> list[str] | None:
        found = event_reasons(campus, name, ns)
        return found if reason in found else None

    # Events wait while the operator's controllers are busy, at most 60 s (docs/operations.md).
    return eventually(f"Event {reason} on {ns}/{name}", probe, timeout=120)


def cond(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    found = condition(obj, kind)
    assert found is not None, f"no {kind} condition in {json.dumps((obj or {}).get('status'))}"
    return found


def delete_k2t(campus: Cluster, name: str, ns: str) -> None:
    campus.kubectl("delete", "k2thinkdeployments.k2think.dev", name, "-n", ns, "--wait=true")


# --- quota, queueing ------------------------------------------------------------------------------


def test_beyond_quota_waits_queued_until_the_first_is_deleted(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    cq = f"{ns}-cq"
    apply_doc(campus, cluster_queue(cq, ns, h100_gpus=8))
    apply_doc(campus, local_queue("team", ns, cq))

    apply_doc(campus, deployment("first", ns, queue="team", replicas=2))  # 8 GPUs: the quota
    first = admission(campus, "first", ns, "Admitted")
    assert cond(first, "Admitted")["status"] == "True"
    assert first["status"]["queue"]["clusterQueue"] == cq
    rs = rayservice(campus, "first", ns)
    assert rs is not None
    assert rs["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
    assert rs["metadata"]["annotations"]["kueue.x-k8s.io/elastic-job"] == "true"
    assert suspended_by_kueue(campus, "first", ns) is False  # Kueue unsuspended it
    pods = running_workers(campus, "first", ns, 2)
    assert {p["metadata"]["labels"]["k2think.dev/pool"] for p in pods} == {"h100"}

    # The operator and Kueue do not fight over the RayService: once admitted it stays put.
    generation = rs["metadata"]["generation"]
    holds_without_fight(
        "the admitted RayService is left alone",
        lambda: (rayservice(campus, "first", ns) or {})["metadata"]["generation"] == generation,
        operator,
    )

    apply_doc(campus, deployment("second", ns, queue="team", replicas=1))  # 4 more: over quota
    second = admission(campus, "second", ns, "Queued")
    admitted = cond(second, "Admitted")
    assert admitted["status"] == "False"
    assert "quota" in admitted["message"] and cq in admitted["message"], admitted
    assert second["status"]["phase"] == "Queued"
    assert cond(second, "Degraded")["status"] == "False"  # waiting for quota is not failing
    assert suspended_by_kueue(campus, "second", ns) is True
    assert worker_pods(campus, "second", ns) == []
    has_event(campus, "second", ns, "Queued")
    table = campus.kubectl("get", "k2t", "-n", ns, "-o", "wide").stdout
    assert "Queued" in table and "team" in table, table

    delete_k2t(campus, "first", ns)
    admission(campus, "second", ns, "Admitted")
    eventually("second unsuspended", lambda: suspended_by_kueue(campus, "second", ns) is False)
    running_workers(campus, "second", ns, 1)
    has_event(campus, "second", ns, "Admitted")


def test_borrowing_from_the_cohort_and_reclaim(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    cohort, cq_a, cq_b = f"{ns}-cohort", f"{ns}-a", f"{ns}-b"
    reclaim = {"reclaimWithinCohort": "Any", "withinClusterQueue": "Never"}
    apply_doc(campus, cluster_queue(cq_a, ns, h100_gpus=8, cohort=cohort, preemption=reclaim))
    apply_doc(campus, cluster_queue(cq_b, ns, h100_gpus=8, cohort=cohort, preemption=reclaim))
    apply_doc(campus, local_queue("qa", ns, cq_a))
    apply_doc(campus, local_queue("qb", ns, cq_b))

    apply_doc(campus, deployment("a1", ns, queue="qa", replicas=2))
    admission(campus, "a1", ns, "Admitted")
    apply_doc(campus, deployment("a2", ns, queue="qa", replicas=2))  # beyond A's 8: borrows B's
    admission(campus, "a2", ns, "Admitted")

    def borrowed() -> int | None:
        cq = campus.kubectl_json("get", "clusterqueues.kueue.x-k8s.io", cq_a)
        for flavor in (cq.get("status") or {}).get("flavorsReservation") or []:
            if flavor["name"] == "h100":
                for res in flavor["resources"]:
                    if res["name"] == "nvidia.com/gpu":
                        return int(res.get("borrowed") or 0) or None
        return None

    assert eventually("tenant A borrows", borrowed) == 8

    # B wants its own quota back: Kueue reclaims it by preempting one of A's deployments.
    apply_doc(campus, deployment("b1", ns, queue="qb", replicas=2))
    admission(campus, "b1", ns, "Admitted")

    def preempted_one() -> str | None:
        states = {n: condition(k2t(campus, n, ns), "Admitted") or {} for n in ("a1", "a2")}
        losers = [n for n, c in states.items() if c.get("reason") == "Preempted"]
        return losers[0] if len(losers) == 1 else None

    loser = eventually("one of A's deployments reports Preempted", preempted_one, timeout=WAIT)
    obj = k2t(campus, loser, ns)
    assert obj is not None and obj["status"]["phase"] == "Preempted"
    assert cond(obj, "Degraded")["status"] == "False"
    eventually(f"{loser} suspended", lambda: suspended_by_kueue(campus, loser, ns) is True)
    has_event(campus, loser, ns, "Preempted")

    delete_k2t(campus, "b1", ns)  # capacity returns: the preempted deployment comes back
    admission(campus, loser, ns, "Admitted")
    has_event(campus, loser, ns, "Resumed")


def test_high_priority_preempts_low_priority_which_comes_back(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    cq = f"{ns}-cq"
    apply_doc(
        campus,
        cluster_queue(cq, ns, h100_gpus=8, preemption={"withinClusterQueue": "LowerPriority"}),
    )
    apply_doc(campus, local_queue("team", ns, cq))

    apply_doc(campus, deployment("eval", ns, queue="team", priority="batch", replicas=2))
    admission(campus, "eval", ns, "Admitted")
    running_workers(campus, "eval", ns, 2)

    apply_doc(campus, deployment("prod", ns, queue="team", priority="production", replicas=2))
    admission(campus, "prod", ns, "Admitted")
    low = admission(campus, "eval", ns, "Preempted")
    admitted = cond(low, "Admitted")
    assert admitted["status"] == "False" and "queued again" in admitted["message"], admitted
    assert low["status"]["phase"] == "Preempted"
    assert cond(low, "Ready")["reason"] == "Preempted"
    eventually("eval suspended as a whole", lambda: suspended_by_kueue(campus, "eval", ns))
    eventually("eval's workers are gone", lambda: worker_pods(campus, "eval", ns) == [])
    running_workers(campus, "prod", ns, 2)
    has_event(campus, "eval", ns, "Preempted")

    delete_k2t(campus, "prod", ns)
    admission(campus, "eval", ns, "Admitted")
    running_workers(campus, "eval", ns, 2)
    has_event(campus, "eval", ns, "Resumed")


def test_spec_suspend_gives_the_quota_back_through_kueue(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    cq = f"{ns}-cq"
    apply_doc(campus, cluster_queue(cq, ns, h100_gpus=8))
    apply_doc(campus, local_queue("team", ns, cq))
    apply_doc(campus, deployment("a", ns, queue="team", replicas=2))
    admission(campus, "a", ns, "Admitted")
    apply_doc(campus, deployment("b", ns, queue="team", replicas=2))
    admission(campus, "b", ns, "Queued")

    campus.kubectl("patch", "k2t", "a", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = admission(campus, "a", ns, "Deactivated")
    assert suspended["status"]["phase"] == "Suspended"
    eventually("a suspended", lambda: suspended_by_kueue(campus, "a", ns) is True)
    admission(campus, "b", ns, "Admitted")  # a's quota went to b

    campus.kubectl(
        "patch", "k2t", "a", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    admission(campus, "a", ns, "Queued")  # active again, waiting behind b
    delete_k2t(campus, "b", ns)
    admission(campus, "a", ns, "Admitted")


def test_scale_up_before_the_first_cluster_serves_is_not_a_new_slice(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    """What Kueue v0.17 does with an autoscaler scale-up of a RayService whose first Ray cluster
    is not serving yet (always the case on KWOK: no Ray answers KubeRay's Serve probes).

    Kueue sizes an elastic RayService's PodSets from the *active* RayCluster only
    (``raycluster.UpdatePodSets`` with ``status.activeServiceStatus.rayClusterName``); before
    KubeRay promotes the first cluster there is none, so the Workload keeps its first size, and
    the new worker pods carry the admitted slice's annotation, so Kueue ungates them
    (``workloadslicing.StartWorkloadSlicePods``): they run outside the quota. docs/scheduling.md
    says so. The slice path after promotion needs a serving Ray cluster (not on this ground).
    """
    cq = f"{ns}-cq"
    apply_doc(campus, cluster_queue(cq, ns, h100_gpus=8))
    apply_doc(campus, local_queue("team", ns, cq))
    apply_doc(
        campus,
        deployment("auto", ns, queue="team", autoscaling={"minReplicas": 1, "maxReplicas": 3}),
    )
    admission(campus, "auto", ns, "Admitted")
    running_workers(campus, "auto", ns, 1)
    rs = rayservice(campus, "auto", ns)
    assert rs is not None
    assert not (rs.get("status") or {}).get("activeServiceStatus", {}).get("rayClusterName")
    (raycluster,) = items(campus, "rayclusters.ray.io", ns)

    # Ray's autoscaler asks for two more h100 workers (its own KubeRay provider code patches
    # the RayCluster; see ray_autoscaler_launch for what stands in for its decision):
    # 3 replicas x 4 GPUs = 12 GPUs, beyond the ClusterQueue's 8.
    group = raycluster["spec"]["workerGroupSpecs"][0]["groupName"]
    ray_autoscaler_launch(campus, ns, raycluster["metadata"]["name"], group, 2)
    scaled = items(campus, "rayclusters.ray.io", ns)[0]
    assert scaled["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    running_workers(campus, "auto", ns, 3)
    (wl,) = campus.kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", ns)["items"]
    counts = {ps["name"]: ps["count"] for ps in wl["spec"]["podSets"]}
    # k2t-ingress: the OpenAI ingress's CPU group (#15), one more PodSet of the workload.
    assert counts == {"head": 1, "h100": 1, "k2t-ingress": 1}, counts
    obj = k2t(campus, "auto", ns)
    assert cond(obj, "Admitted")["status"] == "True"


def test_worked_example_is_admitted_by_tenant_a(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    for doc in yaml.safe_load_all(CAMPUS_QUEUES.read_text()):
        if doc and doc["kind"] == "LocalQueue" and doc["metadata"]["namespace"] == "team-a":
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = ns
            apply_doc(campus, doc)
    apply_doc(campus, load_example("k2think-queued.yaml", namespace=ns))
    obj = admission(campus, "k2think-team-a", ns, "Admitted")
    assert obj["status"]["queue"]["clusterQueue"] == "tenant-a"
    running_workers(campus, "k2think-team-a", ns, 2)
    workloads = campus.kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", ns)["items"]
    (wl,) = workloads
    assert wl["spec"]["priorityClassRef"]["name"] == "production", wl["spec"]
    assert [ps["name"] for ps in wl["spec"]["podSets"]] == ["head", "h100", "k2t-ingress"]
    explained = campus.kubectl("explain", "k2t.spec.scheduling.queueName").stdout
    assert "Kueue LocalQueue" in explained, explained


def test_more_than_seven_pools_is_refused_before_kueue_sees_it(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    doc = deployment("wide", ns, queue="team")
    base = doc["spec"]["pools"][0]
    doc["spec"]["pools"] = [{**base, "name": f"p{i}"} for i in range(8)]
    proc = apply_doc(campus, doc, check=False)
    assert proc.returncode != 0
    assert "at most 7 pools" in proc.stderr, proc.stderr


# --- GPU bin-packing ------------------------------------------------------------------------------


def test_tp4_replicas_pack_onto_one_node_leaving_a_whole_node_for_tp8(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    """Pool `pack`: two 8-GPU nodes. Spread (the default score), two TP=4 replicas would take
    half of each node and the TP=8 replica would find none; packed, all three run."""
    apply_doc(campus, deployment("tp4", ns, pool="pack", tensor=4, replicas=2))
    pods = running_workers(campus, "tp4", ns, 2)
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 1, f"the two TP=4 workers were spread over {nodes}"

    apply_doc(campus, deployment("tp8", ns, pool="pack", tensor=8, replicas=1))
    (big,) = running_workers(campus, "tp8", ns, 1)
    assert big["spec"]["nodeName"] not in nodes
    gpus = big["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    assert gpus == "8"


def test_seven_pools_keep_the_ingress_on_the_head_within_kueues_podsets(
    campus: Cluster, operator: OperatorProcess, ns: str
) -> None:
    """Kueue admits a workload of at most 8 PodSets: the head and 7 worker groups
    (``raycluster.ValidateCreate``, its webhook refuses more). With 7 pools the ingress CPU group
    (#15) would be a 9th PodSet: placement auto keeps the ingress on the head, capped at its
    spare CPUs, with a PlanWarning; Kueue's webhook takes the RayService and admits it."""
    cq = f"{ns}-cq"
    apply_doc(campus, cluster_queue(cq, ns, h100_gpus=8))
    apply_doc(campus, local_queue("team", ns, cq))
    doc = deployment("wide", ns, queue="team")
    base = doc["spec"]["pools"][0]
    doc["spec"]["pools"] = [{**base, "name": f"p{i}"} for i in range(7)]
    # More ingress replicas than the head's spare CPUs: without Kueue, the CPU group.
    doc["spec"]["serving"] = {"ingress": {"maxReplicas": 16}}
    apply_doc(campus, doc)
    obj = admission(campus, "wide", ns, "Admitted")
    ingress = obj["status"]["plan"]["ingress"]
    assert ingress["placement"] == "head", ingress
    assert "Kueue" in ingress["explanation"], ingress
    has_event(campus, "wide", ns, "PlanWarning")
    rs = rayservice(campus, "wide", ns)
    assert rs is not None
    groups = [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert groups == [f"p{i}" for i in range(7)], groups
    (wl,) = campus.kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", ns)["items"]
    assert [ps["name"] for ps in wl["spec"]["podSets"]] == ["head", *groups]
    assert cond(obj, "Degraded")["status"] == "False"
    running_workers(campus, "wide", ns, 1)
