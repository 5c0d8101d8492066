"""The security objects on a real API server and real KubeRay (issue #16).

The token Secret, the ingress ConfigMap and the NetworkPolicies are created, owned by the
K2ThinkDeployment and repaired when someone edits or deletes them; the token is never rewritten.
KubeRay v1.6.2 turns ``authOptions`` into the token env of every Ray container and keeps the
ServiceAccount token out of every container but its autoscaler. NetworkPolicy *enforcement* needs
a CNI this control plane has not got: docs/security.md says how to check it on a real cluster.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster
from k2think_operator.api.spec import parse_spec
from k2think_operator.plan.planner import plan_deployment
from k2think_operator.render.security import (
    INGRESS_PYTHONPATH,
    SA_TOKEN_PATH,
    ingress_module_source,
)
from support import (
    OperatorProcess,
    apply_doc,
    eventually,
    get,
    holds_without_fight,
    items,
    kuberay_namespace,
    load_example,
)

#: The operator re-applies its supporting objects on every resync pass; short here.
RESYNC_SECONDS = 2


@pytest.fixture(scope="module")
def operator(cluster: Cluster, log_dir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        cluster,
        ["--all-namespaces"],
        log_dir / "operator-security.log",
        env={"K2T_RESYNC_SECONDS": str(RESYNC_SECONDS)},
    )
    op.start()
    yield op
    op.stop()


def secured_example(ns: str, **spec: Any) -> dict[str, Any]:
    doc = load_example("k2think.yaml", namespace=ns)
    doc["spec"]["serving"] = {**doc["spec"].get("serving", {}), "apiKeysSecret": "openai-keys"}
    doc["spec"]["networkPolicy"] = {"monitoringNamespace": "monitoring"}
    doc["spec"].update(spec)
    return doc


def token_of(cluster: Cluster, ns: str) -> str | None:
    secret = get(cluster, "secret", "k2think-ray-token", ns)
    if secret is None:
        return None
    return base64.b64decode(secret["data"]["auth_token"]).decode()


def owner_uids(obj: dict[str, Any]) -> list[str]:
    return [o["uid"] for o in obj["metadata"].get("ownerReferences") or [] if o.get("controller")]


def test_security_objects_are_created_owned_and_repaired(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    apply_doc(cluster, secured_example(ns))
    cr = eventually("the K2ThinkDeployment", lambda: get(cluster, "k2t", "k2think", ns))
    uid = cr["metadata"]["uid"]
    rs = eventually("RayService", lambda: get(cluster, "rayservices.ray.io", "k2think", ns))
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token",
        "secretName": "k2think-ray-token",
    }

    token = eventually("the token Secret", lambda: token_of(cluster, ns))
    assert len(token) >= 40
    secret = get(cluster, "secret", "k2think-ray-token", ns)
    assert secret is not None and owner_uids(secret) == [uid]
    configmap = get(cluster, "configmap", "k2think-serve-auth", ns)
    assert configmap is not None and owner_uids(configmap) == [uid]
    assert configmap["data"]["k2think_api_key_ingress.py"] == ingress_module_source()
    policies = {p["metadata"]["name"]: p for p in items(cluster, "networkpolicies", ns)}
    assert sorted(policies) == ["k2think-metrics", "k2think-ray-internal", "k2think-serve"]
    assert all(owner_uids(p) == [uid] for p in policies.values())
    # The token never reaches the operator's log (it only says it created the Secret).
    assert token not in operator.log_path.read_text(errors="replace")

    # Drift 1: a policy deleted by hand comes back.
    old_uid = policies["k2think-serve"]["metadata"]["uid"]
    cluster.kubectl("delete", "networkpolicy", "k2think-serve", "-n", ns)
    eventually(
        "k2think-serve recreated",
        lambda: (
            (get(cluster, "networkpolicy", "k2think-serve", ns) or {})
            .get("metadata", {})
            .get("uid", old_uid)
            != old_uid
        ),
        timeout=60,
    )
    # Drift 2: a policy opened up by hand is closed again.
    wanted = policies["k2think-ray-internal"]["spec"]["ingress"]
    cluster.kubectl(
        "patch",
        "networkpolicy",
        "k2think-ray-internal",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"ingress": [{}]}}),  # allow everything from everywhere
    )
    eventually(
        "k2think-ray-internal restored",
        lambda: (
            (get(cluster, "networkpolicy", "k2think-ray-internal", ns) or {})
            .get("spec", {})
            .get("ingress")
            == wanted
        ),
        timeout=60,
    )
    # The token is never rewritten: not by a re-render, not by resync passes.
    holds_without_fight(
        "the token stays the same over resync passes",
        lambda: token_of(cluster, ns) == token,
        operator,
    )
    # Drift 3: a deleted token Secret is recreated, with a new token (docs/security.md).
    cluster.kubectl("delete", "secret", "k2think-ray-token", "-n", ns)
    fresh = eventually("the token Secret recreated", lambda: token_of(cluster, ns), timeout=60)
    assert fresh != token


def test_auth_off_is_a_warning_and_a_user_secret_is_not_touched(
    cluster: Cluster, operator: OperatorProcess, ns: str
) -> None:
    off = load_example("k2think.yaml", namespace=ns, rename="open")
    off["spec"]["ray"] = {**off["spec"].get("ray", {}), "auth": {"enabled": False}}
    apply_doc(cluster, off)
    rs = eventually("RayService open", lambda: get(cluster, "rayservices.ray.io", "open", ns))
    assert "authOptions" not in rs["spec"]["rayClusterConfig"]

    def warned() -> bool:
        events = cluster.kubectl_json(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.name=open"
        )["items"]
        return any(e["reason"] == "RayAuthDisabled" and e["type"] == "Warning" for e in events)

    eventually("a RayAuthDisabled Warning event", warned)

    mine = load_example("k2think.yaml", namespace=ns, rename="mine")
    mine["spec"]["ray"] = {**mine["spec"].get("ray", {}), "auth": {"secretName": "team-token"}}
    apply_doc(cluster, mine)
    rs = eventually("RayService mine", lambda: get(cluster, "rayservices.ray.io", "mine", ns))
    assert rs["spec"]["rayClusterConfig"]["authOptions"]["secretName"] == "team-token"
    secrets = [s["metadata"]["name"] for s in items(cluster, "secrets", ns)]
    assert "team-token" not in secrets and "mine-ray-token" not in secrets
    assert "open-ray-token" not in secrets


# ------------------------------------------------------------------------------ with KubeRay


@pytest.fixture
def kuberay_ns(cluster: Cluster) -> Iterator[str]:
    """A namespace the KubeRay operator (started only for it) watches."""
    with kuberay_namespace(cluster, "kuberay-sec") as name:
        yield name


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env") or []}


def _mounts(container: dict[str, Any]) -> list[str]:
    return [m["mountPath"] for m in container.get("volumeMounts") or []]


def test_kuberay_gives_every_ray_container_the_token_and_only_the_autoscaler_credentials(
    cluster: Cluster, operator: OperatorProcess, kuberay_ns: str
) -> None:
    ns = kuberay_ns
    doc = secured_example(ns)
    apply_doc(cluster, doc)
    wanted = {"ray-head", "ray-worker"}
    # The example's fleet puts the OpenAI ingress on its CPU group (#15, ingress.py): that pod
    # runs ingress replicas, so it must carry the token and the API keys like the head.
    ingress = plan_deployment(parse_spec(doc["spec"]), "k2think").ingress
    if ingress is not None and ingress.placement == "cpuGroup":
        wanted.add("ray-ingress")

    def pods() -> list[dict[str, Any]] | None:
        found = items(cluster, "pods", ns, "app.kubernetes.io/instance=k2think")
        roles = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in found}
        return found if wanted <= roles else None

    found = eventually("head and worker pods made by KubeRay", pods, timeout=180)
    token_ref = {"secretKeyRef": {"name": "k2think-ray-token", "key": "auth_token"}}
    for pod in found:
        spec = pod["spec"]
        role = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        assert spec["automountServiceAccountToken"] is False, role
        assert spec["securityContext"]["runAsNonRoot"] is True
        containers = {c["name"]: c for c in spec["containers"]}
        ray = containers["ray-head" if role == "ray-head" else "ray-worker"]
        env = _env(ray)
        assert env["RAY_AUTH_MODE"]["value"] == "token", role
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == token_ref, role
        assert env["PYTHONPATH"]["value"] == INGRESS_PYTHONPATH
        assert SA_TOKEN_PATH not in _mounts(ray), role
        assert ray["securityContext"]["allowPrivilegeEscalation"] is False
        assert "/dev/shm" in _mounts(ray)
        for init in spec.get("initContainers") or []:  # KubeRay's wait-gcs-ready
            assert _env(init)["RAY_AUTH_TOKEN"]["valueFrom"] == token_ref
        if role == "ray-head":
            autoscaler = containers["autoscaler"]
            assert _env(autoscaler)["RAY_AUTH_TOKEN"]["valueFrom"] == token_ref
            assert SA_TOKEN_PATH in _mounts(autoscaler)
            assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
            assert "/etc/k2think/api-keys" in _mounts(ray)
        elif role == "ray-ingress":  # the ingress CPU group (#15) runs ingress replicas too
            assert "/etc/k2think/api-keys" in _mounts(ray)
        else:
            assert "/etc/k2think/api-keys" not in _mounts(ray)
