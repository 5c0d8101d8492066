"""The path a user takes, as one piece (issue #21): ``helm install`` of the chart with the image
``make image`` built, chart defaults (two replicas, leader election), the operator running as
pods from that image under the kubelet stand-in; a CPU-sized variant of
``crds/examples/k2think.yaml`` with every production default on (Ray token auth, NetworkPolicies
enforced by kube-router) plus API keys on the OpenAI endpoint, served end to end; the leader
killed; ``helm upgrade`` to a new tag; ``helm uninstall``.

The scenarios build on each other, in file order (one ground, one release, one deployment).
Every wait is bounded polling; nothing here writes what the system under test should write.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from chain_support import (
    SERVED_NAME,
    Ground,
    Load,
    app_status,
    apply,
    chain_deployment,
    client_netns,
    cluster_of,
    cpu_pool,
    dashboard,
    http_json,
    k2t,
    pods,
    rayservice,
    sandbox_pod,
    serve_url,
    wait,
    worker_pods,
)

from harness import netns, podrun, raynodes
from harness.polling import WaitTimeoutError
from support import condition

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "k2think-operator"
EXAMPLE = ROOT / "crds" / "examples" / "k2think.yaml"
RELEASE = "k2think-operator"
SYSTEM_NS = "k2think-system"
NS = "userpath"
NAME = "k2think"
KEYS_SECRET = "k2think-api-keys"
REPOSITORY = "localhost/k2think-operator"
UPGRADE_TAG_SUFFIX = "-upgrade"
#: The token's standard path without the ``/var/run -> /run`` symlink: read through
#: ``/proc/<pid>/root``, an absolute symlink would resolve against the reader's root, not the
#: process's.
SA_TOKEN = "run/secrets/kubernetes.io/serviceaccount/token"

STATE: dict[str, Any] = {}


# ------------------------------------------------------------------------------ helpers
def app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def helm(g: Ground, *args: str, timeout: float = 600) -> str:
    """The pinned helm from the bin dir, with its state in the ground's state dir."""
    home = g.state_dir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(g.cluster.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run(
        [str(g.cluster.bindir / "helm"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def api(g: Ground) -> Any:
    assert g.cluster.api is not None
    return g.cluster.api


def operator_pods(g: Ground) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(g, SYSTEM_NS, "app.kubernetes.io/name=k2think-operator")
        if not p["metadata"].get("deletionTimestamp")
    ]


def is_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True"


def container_pids(pod: dict[str, Any], container: str) -> list[int]:
    """Live processes of one container the stand-in runs from an image."""
    marker = f"{pod['metadata']['uid']}/{container}"
    return [
        pid
        for pid in raynodes.processes_with_marker(marker, raynodes.CONTAINER_MARKER)
        if _exe(pid) not in ("nsenter", "unshare", "env")
    ]


def _exe(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    return ""


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


def root_mount_options(pid: int) -> list[str]:
    """Options of the process's ``/`` mount (its own mount namespace's view)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    return []


def lease_holder(g: Ground) -> str:
    """The pod holding the operator's Lease (its identity is ``<pod name>_<random>``)."""
    leases = api(g).get(f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases")["items"]
    for lease in leases:
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        if holder:
            return holder.split("_", 1)[0]
    return ""


def stand_in_log(g: Ground) -> str:
    return (g.state_dir / "logs" / "raynodes.log").read_text(errors="replace")


def api_key() -> str:
    key: str = STATE["api_key"]
    return key


def completion(via: Path, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": SERVED_NAME, "prompt": "Think about it.", "max_tokens": 8}
    with netns.inside(via):
        return httpx.post(
            f"{serve_url(NS, NAME)}/v1/completions", json=body, headers=headers, timeout=120
        )


def user_deployment(g: Ground) -> dict[str, Any]:
    """``crds/examples/k2think.yaml`` sized for the chain ground's CPUs: the tiny model on the
    two CPU pools instead of K2-Think on H100s; everything security-related left at its default
    (auth, NetworkPolicies), plus API keys."""
    example = yaml.safe_load(EXAMPLE.read_text())
    assert "auth" not in example["spec"].get("ray", {}), "the example must keep the auth default"
    assert "networkPolicy" not in example["spec"], "the example must keep the policy default"
    doc = chain_deployment(
        example["metadata"]["name"],
        NS,
        g.model_dir,
        pools=[cpu_pool("cpu-a"), cpu_pool("cpu-b")],
        autoscaling={
            **example["spec"]["autoscaling"],
            "minReplicas": 1,
            "maxReplicas": 1,
            "upscaleDelaySeconds": 5,
        },
    )
    doc["spec"]["engine"]["enablePrefixCaching"] = example["spec"]["engine"]["enablePrefixCaching"]
    doc["spec"]["serving"]["apiKeysSecret"] = KEYS_SECRET
    assert "auth" not in doc["spec"]["ray"] and "networkPolicy" not in doc["spec"]
    return doc


# ------------------------------------------------------------------------------ scenarios
def test_helm_install_runs_the_operator_from_the_image(ground: Ground) -> None:
    """Chart defaults (2 replicas, leader election) with the image from buildah's store: both pods
    run from it as uid 65532, read-only root, no privilege escalation, the downward API and a
    projected token; readiness (the chart's probe) makes them Ready; one holds the Lease."""
    g = ground
    tag = app_version()
    helm(
        g,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM_NS,
        "--create-namespace",
        "--set",
        f"image.repository={REPOSITORY}",
        "--set",
        "image.pullPolicy=Never",
        # The operator's pods on the system (head) node: the CPU pools hold one worker each.
        "--set-json",
        'nodeSelector={"k2think.dev/pool":"head"}',
        "--wait",
        "--timeout",
        "8m",
    )
    # The first start extracts the image's root filesystem from buildah's store (cached by
    # image ID in ~/.cache/k2think-operator/image/rootfs).
    found = wait("two Ready operator pods", lambda: _ready_pods(g, 2), timeout=420)
    for pod in found:
        (c,) = pod["spec"]["containers"]
        assert c["image"] == f"{REPOSITORY}:{tag}"  # the chart's default tag: appVersion
        pids = container_pids(pod, "operator")
        assert pids, f"no process runs {pod['metadata']['name']}"
        pid = min(pids)
        status = proc_status(pid)
        assert status["Uid"].split()[:2] == ["65532", "65532"]
        assert status["Gid"].split()[0] == "65532"
        assert status["NoNewPrivs"] == "1"
        assert int(status["CapBnd"], 16) == 0 and int(status["CapEff"], 16) == 0
        assert "ro" in root_mount_options(pid)
        env = proc_env(pid)
        assert env["POD_NAME"] == pod["metadata"]["name"]  # downward API
        assert env["KUBERNETES_SERVICE_HOST"] == netns.KUBERNETES_SERVICE_IP
        assert "KUBECONFIG" not in env  # in-cluster credentials only
        assert Path(f"/proc/{pid}/root/{SA_TOKEN}").read_text().count(".") == 2  # a JWT
        assert Path(f"/proc/{pid}/root/opt/k2think/bin/k2think-operator").exists()
        assert f"{pod['metadata']['name']}: readiness probe of operator -> True" in stand_in_log(g)
    holder = wait("a lease holder", lambda: lease_holder(g), timeout=120)
    assert holder in {p["metadata"]["name"] for p in found}
    STATE["tag"] = tag


def _ready_pods(g: Ground, n: int) -> list[dict[str, Any]] | None:
    """``n`` operator pods running from the image and Ready by their readiness probe (KWOK marks
    a pod Ready when it gives it an IP, before the stand-in has started it, so ``helm --wait``
    alone could return early on this ground)."""
    found = operator_pods(g)
    log = stand_in_log(g)
    ok = len(found) == n and all(_probed_ready(p, log) for p in found)
    return found if ok else None


def _probed_ready(pod: dict[str, Any], log: str) -> bool:
    return bool(
        is_ready(pod)
        and container_pids(pod, "operator")
        and f"{pod['metadata']['name']}: readiness probe of operator -> True" in log
    )


def test_the_example_serves_with_every_default_on(ground: Ground) -> None:
    """Ray token auth on, NetworkPolicies enforced, API keys: a completion with a key, 401
    without; KubeRay reports RUNNING through the authenticated dashboard; the autoscaler scaled
    the worker group with the token; no Ray container but the autoscaler holds a token."""
    g = ground
    g.cluster.kubectl("create", "namespace", NS, check=False)
    STATE["api_key"] = secrets.token_urlsafe(24)
    api(g).create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "metadata": {"name": KEYS_SECRET},
            "data": {"campus-app": base64.b64encode(api_key().encode()).decode()},
        },
    )
    apply(g, user_deployment(g))
    t0 = time.monotonic()
    wait("the app RUNNING (KubeRay's view)", lambda: app_status(g, NS, NAME) == "RUNNING", 900)
    STATE["deploy_s"] = round(time.monotonic() - t0, 1)

    def ready() -> bool:
        conds = {
            c["type"]: c["status"]
            for c in (k2t(g, NS, NAME) or {}).get("status", {}).get("conditions", [])
        }
        return conds.get("Ready") == "True"

    try:
        wait("the K2ThinkDeployment Ready", ready, timeout=300)
    except WaitTimeoutError as error:  # once in a local run (2026-12-07): say what it waited on
        status = (k2t(g, NS, NAME) or {}).get("status", {})
        rs_status = (rayservice(g, NS, NAME) or {}).get("status", {})
        raise AssertionError(
            {
                "conditions": status.get("conditions"),
                "rayservice": {
                    k: rs_status.get(k)
                    for k in ("conditions", "numServeEndpoints", "serviceStatus")
                },
                "pods_ready": {
                    p["metadata"]["name"]: (condition(p, "Ready") or {}).get("status")
                    for p in pods(g, NS)
                },
            }
        ) from error
    rs = rayservice(g, NS, NAME)
    assert rs is not None
    auth = rs["spec"]["rayClusterConfig"].get("authOptions") or {}
    assert auth.get("mode") == "token", auth

    via = client_netns(g, NS)
    answered = wait("a completion with an API key", lambda: _ok(completion(via, api_key())), 300)
    assert answered.json()["choices"][0]["text"] is not None
    assert completion(via, None).status_code == 401
    assert completion(via, "wrong-key").status_code == 401

    # The dashboard refuses Ray calls without the token (KubeRay's calls carry it: RUNNING above).
    url = f"{dashboard(NS, cluster_of(g, NS))}/api/serve/applications/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        http_json(url, token=False)
    assert refused.value.code == 401
    assert "llm" in http_json(url)["applications"]

    # NetworkPolicies, enforced by kube-router: a pod of another namespace reaches none of the
    # head's ports; the client pod of the deployment's namespace reaches the Serve proxy.
    head = pods(g, NS, "ray.io/node-type=head")[0]
    head_ip = head["status"]["podIP"]
    outsider = sandbox_pod(g.cluster, "userpath-outside", "outsider", {"app": "outsider"})
    with netns.inside(outsider):
        closed = [p for p in (8265, 6379, 8000) if not raynodes.tcp_open(head_ip, p, 2.0)]
    with netns.inside(via):
        admitted = raynodes.tcp_open(head_ip, 8000, 2.0)
    assert closed == [8265, 6379, 8000] and admitted

    # The worker the replica runs on was asked for by Ray's autoscaler, which authenticated to
    # the API server with its pod-bound ServiceAccount token.
    workers = worker_pods(g, NS)
    assert workers, "no worker pod"
    group = workers[0]["metadata"]["labels"]["ray.io/group"]
    raycluster = api(g).get(f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/{cluster_of(g, NS)}")
    assert raycluster["spec"].get("enableInTreeAutoscaling") is True
    (spec_group,) = [w for w in raycluster["spec"]["workerGroupSpecs"] if w["groupName"] == group]
    assert int(spec_group.get("replicas", 0)) >= 1
    autoscaler_log = raynodes.pod_dir(g.state_dir, NS, head["metadata"]["name"]) / "autoscaler.log"
    text = autoscaler_log.read_text(errors="replace")
    # requests' raise_for_status() words it "401 Client Error: Unauthorized for url: ...".
    assert text and not re.search(r"Unauthorized|Forbidden|40[13] Client Error", text), text[-3000:]
    assert_only_the_autoscaler_holds_a_token(g, [head, *workers])


def _ok(resp: httpx.Response) -> httpx.Response | None:
    return resp if resp.status_code == 200 else None


def assert_only_the_autoscaler_holds_a_token(g: Ground, ray_pods: list[dict[str, Any]]) -> None:
    """Every process of every Ray pod: the token is visible (in its own mount namespace) exactly
    in the autoscaler's, and there it authenticates as the head's ServiceAccount."""
    with_token: list[tuple[int, str]] = []
    without: list[tuple[int, str]] = []
    for pod in ray_pods:
        for pid in raynodes.processes_with_marker(pod["metadata"]["uid"]):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if _exe(pid) in ("nsenter", "unshare") or cmd.startswith("/bin/sh -c mount"):
                continue
            assert "RAY_KUBERAY_CLIENT_CERT_PATH" not in proc_env(pid)
            has = Path(f"/proc/{pid}/root/{SA_TOKEN}").exists()
            (with_token if has else without).append((pid, cmd[:120]))
    assert without, "no Ray process found"
    assert with_token, "the autoscaler has no token"
    assert all("autoscaler" in cmd for _, cmd in with_token), with_token
    assert not any("autoscaler" in cmd for _, cmd in without), without
    token = Path(f"/proc/{with_token[0][0]}/root/{SA_TOKEN}").read_text()
    # Only the token: an empty kubeconfig, so no client certificate authenticates instead.
    empty = g.state_dir / "empty-kubeconfig"
    empty.write_text("apiVersion: v1\nkind: Config\n")
    who = subprocess.run(
        [
            str(g.cluster.bindir / "kubectl"),
            f"--kubeconfig={empty}",
            f"--server=https://127.0.0.1:{g.cluster.ports['apiserver']}",
            f"--certificate-authority={g.cluster.pki.ca_cert}",
            f"--token={token}",
            "auth", "whoami", "-o", "json",
        ],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    user = json.loads(who.stdout)["status"]["userInfo"]["username"]
    head_sa = ray_pods[0]["spec"].get("serviceAccountName")
    assert user == f"system:serviceaccount:{NS}:{head_sa}"


def test_the_leader_killed_the_standby_takes_over_and_serving_never_stops(ground: Ground) -> None:
    g = ground
    holder = wait("a lease holder", lambda: lease_holder(g), timeout=60)
    leader = next(p for p in operator_pods(g) if p["metadata"]["name"] == holder)
    load = Load(serve_url(NS, NAME), 2, via=client_netns(g, NS), max_tokens=32, api_key=api_key())
    try:
        for pid in container_pids(leader, "operator"):
            os.kill(pid, signal.SIGKILL)
        new = wait(
            "another pod to hold the lease",
            lambda: (h := lease_holder(g)) and h != holder and h,
            timeout=180,
        )
        assert new in {p["metadata"]["name"] for p in operator_pods(g)}
        # The new leader reconciles: an edit reaches the RayService.
        generation = int(k2t(g, NS, NAME)["metadata"]["generation"])  # type: ignore[index]
        g.cluster.kubectl(
            "patch", "k2t", NAME, "-n", NS, "--type=merge",
            "-p", '{"spec":{"autoscaling":{"downscaleDelaySeconds":300}}}',
        )  # fmt: skip
        wait(
            "the edit reconciled by the new leader",
            lambda: (
                int((k2t(g, NS, NAME) or {}).get("status", {}).get("observedGeneration", 0))
                > generation
            ),
            timeout=180,
        )
        serve = yaml.safe_load((rayservice(g, NS, NAME) or {})["spec"]["serveConfigV2"])
        assert _values(serve, "downscale_delay_s") == [300]
    finally:
        results = load.stop(timeout=300)
    assert results, "the load sent nothing"
    assert not [r for r in results if not r.ok and not r.aborted], results
    # The killed container was restarted by the stand-in (restartPolicy Always).
    wait("two Ready operator pods again", lambda: _ready_pods(g, 2), timeout=300)


def _values(tree: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a YAML tree."""
    if isinstance(tree, dict):
        found = [tree[key]] if key in tree else []
        return found + [v for x in tree.values() for v in _values(x, key)]
    if isinstance(tree, list):
        return [v for x in tree for v in _values(x, key)]
    return []


def test_helm_upgrade_rolls_the_operator_without_touching_the_rayservice(ground: Ground) -> None:
    g = ground
    new_tag = STATE["tag"] + UPGRADE_TAG_SUFFIX
    subprocess.run(
        ["buildah", "tag", f"{REPOSITORY}:{STATE['tag']}", f"{REPOSITORY}:{new_tag}"], check=True
    )
    before = rayservice(g, NS, NAME)
    assert before is not None
    old_pods = {p["metadata"]["uid"] for p in operator_pods(g)}
    helm(
        g, "upgrade", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--reuse-values",
        "--set", f"image.tag={new_tag}", "--wait", "--timeout", "8m",
    )  # fmt: skip

    def rolled() -> bool:
        found = operator_pods(g)
        log = stand_in_log(g)
        return (
            len(found) == 2
            and all(_probed_ready(p, log) for p in found)
            and all(p["spec"]["containers"][0]["image"] == f"{REPOSITORY}:{new_tag}" for p in found)
            and not old_pods & {p["metadata"]["uid"] for p in found}
        )

    wait("the operator rolled to the new tag", rolled, timeout=300)
    wait("a lease holder of the new pods", lambda: lease_holder(g) in _names(g), timeout=180)
    after = rayservice(g, NS, NAME)
    assert after is not None
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert _ok(completion(client_netns(g, NS), api_key())) is not None


def _names(g: Ground) -> set[str]:
    return {p["metadata"]["name"] for p in operator_pods(g)}


def test_helm_uninstall_leaves_the_users_workloads(ground: Ground) -> None:
    g = ground
    rs = rayservice(g, NS, NAME)
    assert rs is not None
    helm(g, "uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait", "--timeout", "5m")
    wait("the operator's pods gone", lambda: not operator_pods(g), timeout=300)
    assert k2t(g, NS, NAME) is not None
    after = rayservice(g, NS, NAME)
    assert after is not None and after["metadata"]["uid"] == rs["metadata"]["uid"]
    assert api(g).exists("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                         "k2thinkdeployments.k2think.dev")  # fmt: skip
    assert _ok(completion(client_netns(g, NS), api_key())) is not None


# ------------------------------------------------------------------------------ the stand-in
def image_pod(name: str, container: dict[str, Any], grace: int = 30) -> dict[str, Any]:
    """A pod from the operator image with the chart's security settings."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "userpath-pods"},
        "spec": {
            "nodeSelector": {"k2think.dev/pool": "head"},
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [
                {
                    "name": "c",
                    "image": f"{REPOSITORY}:{app_version()}",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    **container,
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def _pod(g: Ground, name: str) -> dict[str, Any] | None:
    with contextlib.suppress(Exception):
        found: dict[str, Any] = api(g).get(f"/api/v1/namespaces/userpath-pods/pods/{name}")
        return found
    return None


def test_probes_drive_ready_and_restart(ground: Ground) -> None:
    """Readiness answers -> Ready; a liveness probe on a path that 404s -> the container is
    restarted (restartCount grows); a pod without a token mount has no token."""
    g = ground
    g.cluster.kubectl("create", "namespace", "userpath-pods", check=False)
    pod = image_pod(
        "probed",
        {
            "command": ["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            "livenessProbe": {
                "httpGet": {"path": "/missing", "port": 8080},
                "initialDelaySeconds": 8,
                "periodSeconds": 2,
                "failureThreshold": 2,
            },
        },
        grace=5,
    )
    api(g).create("/api/v1/namespaces/userpath-pods/pods", pod)
    wait(
        "the probed pod Ready by its probe",
        lambda: (
            (p := _pod(g, "probed"))
            and is_ready(p)
            and container_pids(p, "c")
            and "userpath-pods/probed: readiness probe of c -> True" in stand_in_log(g)
        ),
        timeout=120,
    )
    running = _pod(g, "probed")
    assert running is not None
    pids = container_pids(running, "c")
    assert pids and not Path(f"/proc/{min(pids)}/root/{SA_TOKEN}").exists()

    def restarted() -> bool:
        p = _pod(g, "probed") or {}
        statuses = (p.get("status") or {}).get("containerStatuses") or [{}]
        return int(statuses[0].get("restartCount", 0)) >= 1

    wait("a liveness restart", restarted, timeout=120)
    assert "probed: c failed its liveness probe; restarting it" in stand_in_log(g)


def test_the_grace_period_is_honoured(ground: Ground) -> None:
    """A process that ignores SIGTERM outlives the deletion by the pod's grace, then is
    SIGKILLed (what a kubelet does); the log of the stand-in shows both moments."""
    g = ground
    grace = 12
    pod = image_pod(
        "stubborn",
        {
            "command": [
                "python3",
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(3600)",
            ]
        },
        grace=grace,
    )
    api(g).create("/api/v1/namespaces/userpath-pods/pods", pod)
    running = wait(
        "the stubborn pod's process",
        lambda: (p := _pod(g, "stubborn")) and container_pids(p, "c") and p,
        timeout=120,
    )
    pids = container_pids(running, "c")
    api(g).delete("/api/v1/namespaces/userpath-pods/pods/stubborn")
    wait(
        "the stand-in stopping it",
        lambda: "userpath-pods/stubborn: stopping" in stand_in_log(g),
        timeout=60,
    )
    assert any(raynodes._alive_any([pid]) for pid in pids), "SIGTERM killed a process ignoring it"
    wait("the process gone", lambda: not raynodes._alive_any(pids), timeout=grace + 60)
    log = stand_in_log(g)
    stop = re.search(r"(\d\d):(\d\d):(\d\d) raynodes: userpath-pods/stubborn: stopping .*", log)
    kill = re.search(r"(\d\d):(\d\d):(\d\d) raynodes: userpath-pods/stubborn: SIGKILLed", log)
    assert stop and kill, log[-2000:]
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in (stop.groups(), kill.groups())]
    assert (seconds[1] - seconds[0]) % 86400 >= grace - 1  # log stamps have 1 s resolution
    assert f"grace {grace} s" in stop.group(0)
    assert podrun.LOCAL_PREFIX in running["spec"]["containers"][0]["image"]
