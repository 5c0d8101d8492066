"""The kubelet stand-in's pure parts (e2e/harness/raynodes.py): env and argv the Kubernetes way,
and the hosts entries it derives from Services and EndpointSlices."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from harness import raynodes

POD = {
    "metadata": {
        "name": "tiny-raycluster-x-head-abc",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"ray.io/cluster": "tiny-raycluster-x", "ray.io/group": "headgroup"},
    },
    "spec": {"nodeName": "kwok-head-0", "serviceAccountName": "tiny-raycluster-x"},
    "status": {"podIP": "10.244.1.7"},
}


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "x", "B": "y"}
    assert raynodes.expand("$(A)-$(B)", env) == "x-y"
    assert raynodes.expand("$(MISSING)", env) == "$(MISSING)"
    assert raynodes.expand("$$(A) costs $$5", env) == "$(A) costs $5"


def test_env_resolves_fieldrefs_values_and_earlier_variables() -> None:
    container = {
        "name": "autoscaler",
        "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}},
        "env": [
            {
                "name": "RAY_CLUSTER_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}},
            },
            {
                "name": "RAY_CLUSTER_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {
                "name": "RAY_CLOUD_INSTANCE_ID",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "ADDR", "value": "$(MY_IP):6379"},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "command": ["/bin/bash", "-c", "--"],
        "args": [
            "ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME) "
            "--cluster-namespace $(RAY_CLUSTER_NAMESPACE)"
        ],
    }
    env = raynodes.resolve_env(POD, container, lambda *_: None, {"PATH": "/v/bin"})
    assert env["RAY_CLUSTER_NAME"] == "tiny-raycluster-x"
    assert env["RAY_CLOUD_INSTANCE_ID"] == "tiny-raycluster-x-head-abc"
    assert env["ADDR"] == "10.244.1.7:6379"
    assert env["MEM_MI"] == "512"
    assert env["PATH"] == "/v/bin"
    argv = raynodes.container_argv(container, env)
    assert argv[-1] == (
        "ray kuberay-autoscaler --cluster-name tiny-raycluster-x --cluster-namespace ns"
    )
    assert raynodes.runs_ray(container)


def test_a_missing_secret_is_an_error_unless_optional() -> None:
    container: dict[str, Any] = {
        "name": "c",
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    with pytest.raises(ValueError, match="not found"):
        raynodes.resolve_env(POD, container, lambda *_: None)
    container["env"][0]["valueFrom"]["secretKeyRef"]["optional"] = True
    assert "T" not in raynodes.resolve_env(POD, container, lambda *_: None)


def test_hosts_map_services_to_the_pods_behind_them() -> None:
    services = [
        {
            "metadata": {"name": "tiny-head-svc", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 6379}]},
        },
        {
            "metadata": {"name": "tiny-serve-svc", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [{"port": 8000, "targetPort": 8000}]},
        },
    ]

    def eps(svc: str, *addrs: str) -> dict[str, Any]:
        return {
            "metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
        }

    slices = [eps("tiny-head-svc", "10.244.1.1"), eps("tiny-serve-svc", "10.244.1.1", "10.244.1.2")]
    listening = {("10.244.1.1", 8000)}
    hosts = raynodes.service_hosts(services, slices, lambda a, p: (a, p) in listening)
    assert hosts["tiny-head-svc.ns.svc.cluster.local"] == ["10.244.1.1"]
    assert hosts["tiny-head-svc.ns.svc"] == ["10.244.1.1"]
    # A ClusterIP Service lists only endpoints whose port answers (probe + kube-proxy).
    assert hosts["tiny-serve-svc.ns.svc.cluster.local"] == ["10.244.1.1"]


def _two_container_pod(restart: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "restartPolicy": restart,
            "containers": [{"name": "ray-head", "image": "i"}, {"name": "autoscaler"}],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "ray-head", "ready": True, "state": {"running": {"startedAt": "t0"}}},
                {"name": "autoscaler", "ready": True, "state": {"running": {"startedAt": "t0"}}},
            ],
        },
    }


def test_an_exit_under_restart_policy_never_is_reported_like_a_kubelet() -> None:
    pod = _two_container_pod("Never")
    # One container ended: its status says so (KubeRay deletes such a pod), the phase stays.
    patch = raynodes.terminated_status(pod, {"ray-head": 1}, now="t1")
    assert patch is not None
    head, autoscaler = patch["status"]["containerStatuses"]
    assert head["state"] == {
        "terminated": {"exitCode": 1, "reason": "Error", "startedAt": "t0", "finishedAt": "t1"}
    }
    assert head["ready"] is False
    assert autoscaler == pod["status"]["containerStatuses"][1]
    assert "phase" not in patch["status"]
    # Every container ended: Failed if any exit was non-zero, Succeeded otherwise; not Ready.
    failed = raynodes.terminated_status(pod, {"ray-head": 1, "autoscaler": 0}, now="t1")
    assert failed is not None and failed["status"]["phase"] == "Failed"
    assert {c["type"]: c["status"] for c in failed["status"]["conditions"]} == {
        "Ready": "False",
        "ContainersReady": "False",
    }
    done = raynodes.terminated_status(pod, {"ray-head": 0, "autoscaler": 0}, now="t1")
    assert done is not None and done["status"]["phase"] == "Succeeded"


def test_containers_that_restart_are_not_reported() -> None:
    assert (
        raynodes.terminated_status(_two_container_pod("Always"), {"ray-head": 1}, now="t") is None
    )
    assert raynodes.terminated_status(_two_container_pod("Never"), {}, now="t") is None


def test_a_pod_mac_follows_its_ip() -> None:
    """A reused pod IP gets the same MAC, so neighbour caches of the other pods stay right."""
    from harness import netns

    assert netns.pod_mac("10.244.1.3") == "02:42:0a:f4:01:03"
    assert netns.pod_mac("10.244.1.3") != netns.pod_mac("10.244.1.4")


def _gpu_pod(limits: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "uid": "u1"},
        "spec": {"containers": [{"name": "ray-worker", "resources": {"limits": limits}}]},
    }


def test_gpu_pods_get_the_stand_in_gpu_platform_and_cpu_pods_do_not() -> None:
    def env(pod: dict[str, Any]) -> dict[str, str]:
        return raynodes.kubelet_env(pod, api_port=6443, venv_bin=Path("/v/bin"), home=Path("/h"))

    gpu = env(_gpu_pod({"cpu": "4", "nvidia.com/gpu": "2"}))
    assert gpu["PYTHONPATH"] == str(raynodes.GPU_STANDIN)
    assert "PYTHONPATH" not in env(_gpu_pod({"cpu": "4"}))
    assert "PYTHONPATH" not in env(_gpu_pod({"cpu": "4", "nvidia.com/gpu": "0"}))


def test_the_stand_in_platform_is_a_vllm_platform_plugin_importlib_finds() -> None:
    """The directory on a GPU pod's PYTHONPATH holds the module and the entry point vLLM loads
    (group ``vllm.platform_plugins``); whether vLLM then picks it is the chain suite's proof."""
    from importlib.metadata import distributions

    (dist,) = [d for d in distributions(path=[str(raynodes.GPU_STANDIN)])]
    (entry,) = [e for e in dist.entry_points if e.group == "vllm.platform_plugins"]
    assert entry.value == "k2t_gpu_standin:register"
    assert (raynodes.GPU_STANDIN / "k2t_gpu_standin.py").is_file()


def test_an_exec_probe_passes_on_exit_zero_and_fails_on_error_or_timeout(tmp_path: Path) -> None:
    import os
    import time

    assert raynodes.run_exec_probe(["sh", "-c", "exit 0"], dict(os.environ), 5) is True
    assert raynodes.run_exec_probe(["sh", "-c", "exit 1"], dict(os.environ), 5) is False
    assert raynodes.run_exec_probe(["/nonexistent/probe"], dict(os.environ), 5) is False
    # A hung probe fails at its timeout, and what it started goes with it (the kubelet's rule).
    pid_file = tmp_path / "child"
    t0 = time.monotonic()
    hung = ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"]
    assert raynodes.run_exec_probe(hung, dict(os.environ), 0.5) is False
    assert time.monotonic() - t0 < 10
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        if (Path(f"/proc/{child}/stat").read_text().split()[2:3] or [""])[0] == "Z":
            break  # a zombie: killed, waiting for its (init) parent
        time.sleep(0.05)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"


def test_kuberays_worker_readiness_probe_fails_once_the_serve_proxy_drains() -> None:
    """KubeRay's readiness probe of a RayService worker (``wget ... | grep success`` on the
    raylet's and the Serve proxy's health), run as the stand-in runs it: passes while the proxy
    answers ``success``, fails at once (failureThreshold 1) when it answers 503 draining, the
    moment that takes the pod out of its Services' endpoints."""
    import os
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from harness import podrun

    assert shutil.which("wget"), "wget (KubeRay's probe command): make system-deps installs it"
    draining = threading.Event()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/-/healthz" and draining.is_set():
                code, body = 503, b"This node is being drained."
            else:
                code, body = 200, b"success"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check = "wget --tries 1 -T {t} -q -O- http://localhost:{p}/{path} | grep success"
        command = [
            "bash",
            "-c",
            check.format(t=2, p=port, path="api/local_raylet_healthz")
            + " && "
            + check.format(t=10, p=port, path="-/healthz"),
        ]
        probe: dict[
            str, Any
        ] = {  # the shape of KubeRay v1.6.2's (common/pod.go, initLivenessAndReadinessProbe)
            "exec": {"command": command},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 1,
            "successThreshold": 1,
        }
        state = podrun.ProbeState(probe, "readiness", 0.0)
        assert state.ok is False  # readiness starts failed
        assert state.record(raynodes.run_exec_probe(command, dict(os.environ), 2), 1.0)
        assert state.ok is True
        draining.set()
        assert state.record(raynodes.run_exec_probe(command, dict(os.environ), 2), 6.0)
        assert state.ok is False
    finally:
        server.shutdown()
