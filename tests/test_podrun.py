"""The kubelet stand-in's pod runner (e2e/harness/podrun.py): the pure decisions a kubelet and a
container runtime make (command over entrypoint, user over image USER, securityContext flags,
who gets a ServiceAccount token, probe counting, the Ready patch, symlinks kept inside the image
root), without starting anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from harness import podrun, raynodes

IMAGE = podrun.parse_image_config(
    {
        "FromImageID": "c92eae54",
        "OCIv1": {
            "config": {
                "User": "65532:65532",
                "Env": ["PATH=/opt/k2think/bin:/usr/bin:/bin", "PYTHONUNBUFFERED=1"],
                "Entrypoint": ["k2think-operator"],
                "Cmd": ["run", "--all-namespaces"],
            }
        },
    }
)


def test_image_config_is_read_from_buildah_inspect() -> None:
    assert IMAGE.id == "c92eae54"
    assert IMAGE.user == "65532:65532" and IMAGE.workdir == "/"
    assert IMAGE.env["PATH"].startswith("/opt/k2think/bin")


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({}, ["k2think-operator", "run", "--all-namespaces"]),
        ({"args": ["run", "--leader-elect"]}, ["k2think-operator", "run", "--leader-elect"]),
        ({"args": []}, ["k2think-operator"]),
        ({"command": ["sh", "-c"]}, ["sh", "-c"]),
        ({"command": ["sh"], "args": ["-c", "true"]}, ["sh", "-c", "true"]),
    ],
)
def test_command_replaces_the_entrypoint_and_args_the_cmd(
    container: dict[str, Any], argv: list[str]
) -> None:
    assert podrun.container_argv({"name": "c", **container}, IMAGE) == argv


def test_the_user_comes_from_the_security_context_over_the_image(tmp_path: Path) -> None:
    pod: dict[str, Any] = {"spec": {"securityContext": {"runAsUser": 1000}}}
    assert podrun.resolve_user({"spec": {}}, {}, IMAGE, tmp_path) == (65532, 65532)
    assert podrun.resolve_user(pod, {}, IMAGE, tmp_path) == (1000, 65532)
    c = {"securityContext": {"runAsUser": 7, "runAsGroup": 8}}
    assert podrun.resolve_user(pod, c, IMAGE, tmp_path) == (7, 8)


def test_run_as_non_root_refuses_a_root_image(tmp_path: Path) -> None:
    root_image = podrun.parse_image_config({"OCIv1": {"config": {"Entrypoint": ["x"]}}})
    pod = {"spec": {"securityContext": {"runAsNonRoot": True}}}
    with pytest.raises(ValueError, match="runAsNonRoot"):
        podrun.resolve_user(pod, {"name": "c"}, root_image, tmp_path)
    named = podrun.parse_image_config({"OCIv1": {"config": {"User": "app"}}})
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:42:43::/:/bin/sh\n")
    assert podrun.resolve_user(pod, {}, named, tmp_path) == (42, 0)


def test_security_flags_follow_the_chart_defaults() -> None:
    sc = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert podrun.security_flags({"securityContext": sc}) == {
        "read_only_root": True,
        "no_new_privs": True,
        "drop_all_caps": True,
    }
    assert not any(podrun.security_flags({}).values())


TOKEN_VOLUME = {
    "name": "kube-api-access-x",
    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
}


def test_only_containers_that_mount_a_token_get_credentials() -> None:
    """KubeRay's head pod as the operator renders it: automount off, the token volume mounted
    into the autoscaler sidecar only."""
    head: dict[str, Any] = {
        "spec": {
            "automountServiceAccountToken": False,
            "volumes": [TOKEN_VOLUME, {"name": "shm", "emptyDir": {"medium": "Memory"}}],
            "containers": [
                {"name": "ray-head", "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]},
                {
                    "name": "autoscaler",
                    "volumeMounts": [{"name": "kube-api-access-x", "mountPath": podrun.SA_MOUNT}],
                },
            ],
        }
    }
    ray, autoscaler = head["spec"]["containers"]
    assert not podrun.mounts_token(head, ray)
    assert podrun.mounts_token(head, autoscaler)
    assert podrun.token_mounts(autoscaler, head["spec"]["volumes"]) == ["kube-api-access-x"]


def test_volume_mounts_bind_the_pods_volume_dirs(tmp_path: Path) -> None:
    c = {
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cfg", "mountPath": "/etc/x/a.conf", "subPath": "a.conf", "readOnly": True},
        ]
    }
    mounts = podrun.container_mounts(c, {"tmp": tmp_path / "tmp", "cfg": tmp_path / "cfg"})
    assert mounts == [
        podrun.Mount(str(tmp_path / "tmp"), "/tmp", False),
        podrun.Mount(str(tmp_path / "cfg" / "a.conf"), "/etc/x/a.conf", True),
    ]
    with pytest.raises(ValueError, match="not supported or not defined"):
        podrun.container_mounts({"volumeMounts": [{"name": "pvc", "mountPath": "/m"}]}, {})


def test_volumes_are_written_and_the_token_is_bound_to_the_pod(tmp_path: Path) -> None:
    pod = {
        "metadata": {"name": "op-1", "namespace": "ops", "uid": "u-1"},
        "spec": {
            "serviceAccountName": "op",
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {
                    "name": "api",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ]
                    },
                },
            ],
        },
    }
    asked: list[tuple[str, str, int]] = []

    def request_token(ns: str, sa: str, exp: int, p: Any) -> tuple[str, float]:
        asked.append((ns, sa, exp))
        body = podrun.token_request_body(exp, p)
        assert body["spec"]["boundObjectRef"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "op-1",
            "uid": "u-1",
        }
        return f"token-{len(asked)}", 100.0

    def get(path: str) -> Any:
        assert path == "/api/v1/namespaces/ops/configmaps/kube-root-ca.crt"
        return {"data": {"ca.crt": "CA"}}

    vols = podrun.materialize_volumes(
        pod, tmp_path, get=get, request_token=request_token, field_value=raynodes.field_value
    )
    api = vols.dirs["api"]
    assert (api / "token").read_text() == "token-1"
    assert (api / "ca.crt").read_text() == "CA" and (api / "namespace").read_text() == "ops"
    assert asked == [("ops", "op", 3607)]
    assert oct(vols.dirs["tmp"].stat().st_mode & 0o7777) == "0o1777"
    _, _, _expires, issued = vols.tokens[0]
    assert podrun.renew_tokens(pod, vols, request_token, issued + 79.0) == 0
    assert podrun.renew_tokens(pod, vols, request_token, issued + 81.0) == 1
    assert (api / "token").read_text() == "token-2"


def test_probes_count_like_the_kubelet() -> None:
    ready = podrun.ProbeState(
        {"initialDelaySeconds": 5, "periodSeconds": 10, "failureThreshold": 3}, "readiness", 0.0
    )
    live = podrun.ProbeState({"periodSeconds": 10, "failureThreshold": 2}, "liveness", 0.0)
    assert not ready.ok and live.ok  # readiness starts failed, liveness passing
    assert not ready.due(4.0) and ready.due(5.0)
    assert ready.record(True, 5.0) and ready.ok
    assert not ready.due(14.0) and ready.due(15.0)
    assert not ready.record(False, 15.0) and not ready.record(False, 25.0) and ready.ok
    assert ready.record(False, 35.0) and not ready.ok  # third consecutive failure
    assert not live.record(False, 0.0) and live.record(False, 10.0) and not live.ok


def test_probe_ports_are_resolved_by_name() -> None:
    c = {"name": "operator", "ports": [{"name": "health", "containerPort": 8080}]}
    probe = {"httpGet": {"path": "/healthz", "port": "health"}}
    assert podrun.probe_target(probe, c, "10.244.1.5") == (
        "httpGet",
        "10.244.1.5",
        8080,
        "/healthz",
    )
    assert podrun.probe_target({"tcpSocket": {"port": 9090}}, c, "ip")[2] == 9090
    with pytest.raises(ValueError, match="only httpGet and tcpSocket"):
        podrun.probe_target({"exec": {"command": ["true"]}}, c, "ip")


def test_readiness_drives_the_ready_condition() -> None:
    pod = {
        "spec": {"containers": [{"name": "operator", "image": "localhost/k2think-operator:0.1.0"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    patch = podrun.ready_status(pod, {"operator": False}, {"operator": 1}, {}, now="T")["status"]
    assert patch["containerStatuses"][0]["ready"] is False
    # Not started yet: waiting (an empty startedAt is refused by the API server).
    assert patch["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    started = {"operator": "2026-12-06T14:00:00Z"}
    running = podrun.ready_status(pod, {"operator": False}, {}, started, now="T")["status"]
    assert running["containerStatuses"][0]["state"]["running"]["startedAt"] == started["operator"]
    assert patch["containerStatuses"][0]["restartCount"] == 1
    ready = {c["type"]: c for c in patch["conditions"]}
    assert ready["Ready"]["status"] == "False" and ready["Ready"]["lastTransitionTime"] == "T"
    patch = podrun.ready_status(pod, {"operator": True}, {}, {}, now="T")["status"]
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {
        "Ready": "True",
        "ContainersReady": "True",
    }


def test_paths_inside_the_image_never_follow_symlinks_out_of_it(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    os.symlink("/run", root / "var" / "run")  # Debian's /var/run
    os.symlink("../../etc", root / "var" / "etc")
    assert (
        podrun.in_root(root, "/var/run/secrets/kubernetes.io") == root / "run/secrets/kubernetes.io"
    )
    assert podrun.in_root(root, "var/etc/hosts") == root / "etc" / "hosts"
    assert podrun.in_root(root, "/../../x") == root / "x"


def test_only_local_images_run_from_the_store() -> None:
    ours = {"spec": {"containers": [{"image": "localhost/k2think-operator:0.1.0"}]}}
    theirs = {"spec": {"containers": [{"image": "registry.k8s.io/pause:3.10"}]}}
    assert podrun.runs_from_image(ours) and not podrun.runs_from_image(theirs)


def test_the_grace_is_the_deletions_or_the_pods() -> None:
    assert raynodes.grace_seconds({"spec": {}}) == 30.0
    assert raynodes.grace_seconds({"spec": {"terminationGracePeriodSeconds": 150}}) == 150.0
    deleted = {
        "metadata": {"deletionGracePeriodSeconds": 0},
        "spec": {"terminationGracePeriodSeconds": 150},
    }
    assert raynodes.grace_seconds(deleted) == 0.0


def test_a_ray_containers_token_is_bound_in_its_own_mount_namespace_only() -> None:
    from harness import netns

    argv = netns.in_pod_argv(
        Path("/run/netns/k2t-1"), Path("/pods/p"), ["ray", "start"], [("/v/tok", podrun.SA_MOUNT)]
    )
    assert argv[:5] == ["nsenter", "--net=/run/netns/k2t-1", "--", "unshare", "--mount"]
    script = argv[argv.index("-c") + 1]
    assert 'mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"' in script
    # the pod's /tmp, no kept paths, one bind pair, then the command
    assert argv[-7:] == ["/pods/p/tmp", "0", "1", "/v/tok", podrun.SA_MOUNT, "ray", "start"]
    plain = netns.in_pod_argv(Path("/n"), Path("/p"), ["ray"])
    assert plain[-4:] == ["/p/tmp", "0", "0", "ray"]


def test_ray_containers_get_the_data_volumes_they_mount_not_empty_dirs() -> None:
    volumes = [
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "ingress", "configMap": {"name": "k2think-ingress"}},
        {"name": "api-keys", "secret": {"secretName": "keys", "defaultMode": 0o440}},
        TOKEN_VOLUME,
        {"name": "model", "persistentVolumeClaim": {"claimName": "m"}},
    ]
    assert podrun.data_volumes(volumes) == {"ingress", "api-keys", "kube-api-access-x"}
