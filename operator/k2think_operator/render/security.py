"""What locks a deployment's Ray cluster down: token auth, NetworkPolicies, pod hardening, API keys.

Upstream behaviour this depends on (KubeRay ray-operator v1.6.2, Ray 2.60.0):

- ``RayClusterSpec.authOptions{mode: token, secretName}``: KubeRay puts ``RAY_AUTH_MODE=token`` and
  ``RAY_AUTH_TOKEN`` (from the Secret's key ``auth_token``) into the Ray container, the autoscaler
  sidecar and the ``wait-gcs-ready`` init container (``controllers/ray/common/pod.go``,
  ``SetContainerTokenAuthEnvVars``), and its RayService controller reads the same Secret to send
  ``x-ray-authorization: Bearer`` to the dashboard (``controllers/ray/utils/util.go``,
  ``GetRayDashboardClientFunc``). Token mode needs rayVersion >= 2.52 (``validation.go``).
- Ray's dashboard answers 401 without a token and 403 with a wrong one
  (``ray/_private/authentication/http_token_authentication.py``); the GCS and raylets check the
  same token on every RPC.

The token Secret is rendered without data: its content is generated once, when the operator
creates it (``kube.create_secret_if_absent``), and never rewritten, so rendering stays
deterministic and a re-render cannot rotate the token by accident.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from k2think_operator.api.spec import K2ThinkDeploymentSpec
from k2think_operator.render.autoscaling import ray_modules
from k2think_operator.render.meta import (
    SERVE_PORT,
    owner_reference,
    selector_labels,
    standard_labels,
)

RAY_TOKEN_KEY = "auth_token"
GENERATED_ANNOTATION = "k2think.dev/generated-keys"
DASHBOARD_PORT = 8265
METRICS_PORT = 8080
#: The Ray image's user (rayproject/ray*: ``ray``, uid 1000, group ``users`` 100).
RAY_UID = 1000
RAY_GID = 100

INGRESS_MODULE = "k2think_api_key_ingress"
INGRESS_CLASS = f"{INGRESS_MODULE}:ApiKeyOpenAiIngress"
INGRESS_PYTHONPATH = "/opt/k2think/python"
API_KEYS_DIR = "/etc/k2think/api-keys"
INGRESS_VOLUME = "k2think-ingress"
API_KEYS_VOLUME = "api-keys"
SA_TOKEN_VOLUME = "autoscaler-sa-token"
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def ray_token_secret_name(spec: K2ThinkDeploymentSpec, name: str) -> str:
    return spec.ray.auth.secret_name or f"{name}-ray-token"


def ingress_configmap_name(name: str) -> str:
    return f"{name}-serve-auth"


def _meta(name: str, namespace: str, instance: str, uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": standard_labels(instance),
    }
    if uid is not None:
        meta["ownerReferences"] = [owner_reference(instance, uid)]
    return meta


# ------------------------------------------------------------------------------ Ray token auth


def auth_options(spec: K2ThinkDeploymentSpec, name: str) -> dict[str, Any] | None:
    """KubeRay ``authOptions``; None when the user turned auth off."""
    if not spec.ray.auth.enabled:
        return None
    return {"mode": "token", "secretName": ray_token_secret_name(spec, name)}


def build_token_secret(
    spec: K2ThinkDeploymentSpec, *, name: str, namespace: str, uid: str | None
) -> dict[str, Any] | None:
    """The Secret the operator creates for the token (no data: it is generated at creation)."""
    if not spec.ray.auth.enabled or spec.ray.auth.secret_name:
        return None
    meta = _meta(ray_token_secret_name(spec, name), namespace, name, uid)
    meta["annotations"] = {GENERATED_ANNOTATION: RAY_TOKEN_KEY}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque"}


# ------------------------------------------------------------------------------ pod hardening


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_GID,
        "fsGroup": RAY_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard; the root filesystem stays writable (Ray writes /tmp)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def autoscaler_token_volume() -> dict[str, Any]:
    """What ``automountServiceAccountToken`` would mount, as a volume only the autoscaler uses.

    The head pod's automount is off, so the Ray container (which runs Serve, the ingress and any
    submitted job) holds no Kubernetes credentials; KubeRay's autoscaler sidecar gets the same
    three files at the standard path through ``autoscalerOptions.volumeMounts``
    (``mergeAutoscalerOverrides`` in KubeRay's pod.go). Ray's KubeRay node provider reads the
    token from that path and re-reads it periodically, so the kubelet's rotation works.
    """
    return {
        "name": SA_TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
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
                                "fieldRef": {
                                    "apiVersion": "v1",
                                    "fieldPath": "metadata.namespace",
                                },
                            }
                        ]
                    }
                },
            ],
        },
    }


def autoscaler_options_security() -> dict[str, Any]:
    return {
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": SA_TOKEN_VOLUME, "mountPath": SA_TOKEN_PATH, "readOnly": True}],
    }


# ------------------------------------------------------------------------------ API keys


def ingress_module_source(module: str = INGRESS_MODULE) -> str:
    return (
        resources.files("k2think_operator")
        .joinpath("ray_modules", f"{module}.py")
        .read_text(encoding="utf-8")
    )


def shipped_modules(spec: K2ThinkDeploymentSpec) -> tuple[str, ...]:
    """The ``ray_modules/`` the Ray pods need: the API-key ingress, the autoscaling policy."""
    ingress = (INGRESS_MODULE,) if spec.serving.api_keys_secret else ()
    return ingress + ray_modules(spec)


def build_ingress_configmap(
    spec: K2ThinkDeploymentSpec, *, name: str, namespace: str, uid: str | None
) -> dict[str, Any] | None:
    """The ConfigMap of the shipped modules (its name predates the autoscaling modules)."""
    modules = shipped_modules(spec)
    if not modules:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ingress_configmap_name(name), namespace, name, uid),
        "data": {f"{module}.py": ingress_module_source(module) for module in modules},
    }


def ingress_cls_config(spec: K2ThinkDeploymentSpec) -> dict[str, Any] | None:
    """``build_openai_app``'s ``ingress_cls_config`` for the API-key ingress (None: stock)."""
    if not spec.serving.api_keys_secret:
        return None
    return {
        "ingress_cls": INGRESS_CLASS,
        "ingress_extra_kwargs": {"api_keys_dir": API_KEYS_DIR},
    }


def add_ingress_module(
    pod_spec: dict[str, Any], container: dict[str, Any], spec: K2ThinkDeploymentSpec, name: str
) -> None:
    """Mount the shipped modules (every Ray pod: Serve may build the app on any node)."""
    if not shipped_modules(spec):
        return
    pod_spec.setdefault("volumes", []).append(
        {"name": INGRESS_VOLUME, "configMap": {"name": ingress_configmap_name(name)}}
    )
    container.setdefault("volumeMounts", []).append(
        {"name": INGRESS_VOLUME, "mountPath": INGRESS_PYTHONPATH, "readOnly": True}
    )
    container.setdefault("env", []).append({"name": "PYTHONPATH", "value": INGRESS_PYTHONPATH})


def add_api_keys(pod_spec: dict[str, Any], container: dict[str, Any], secret: str) -> None:
    """The keys, only where ingress replicas run: the head and the ingress CPU group."""
    pod_spec.setdefault("volumes", []).append(
        {"name": API_KEYS_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o440}}
    )
    container.setdefault("volumeMounts", []).append(
        {"name": API_KEYS_VOLUME, "mountPath": API_KEYS_DIR, "readOnly": True}
    )


# ------------------------------------------------------------------------------ NetworkPolicies


def _policy(
    policy_name: str, ingress: list[dict[str, Any]], *, name: str, namespace: str, uid: str | None
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(policy_name, namespace, name, uid),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _ports(*numbers: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": n} for n in numbers]


def _namespace_selector(namespace: str | None) -> dict[str, Any]:
    if namespace is None:
        return {}
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def build_network_policies(
    spec: K2ThinkDeploymentSpec, *, name: str, namespace: str, uid: str | None
) -> list[dict[str, Any]]:
    """Ingress rules for the deployment's Ray pods; everything not listed is refused.

    NetworkPolicies add up: a pod selected by any of them accepts only the union of their rules.
    Egress stays open (model downloads, object stores, the Kubernetes API for the autoscaler).
    """
    policy = spec.network_policy
    if not policy.enabled:
        return []
    own_pods = {"podSelector": {"matchLabels": selector_labels(name)}}
    kuberay_peer: dict[str, Any] = {
        "namespaceSelector": _namespace_selector(policy.kuberay.namespace),
        "podSelector": {"matchLabels": dict(policy.kuberay.pod_labels)},
    }
    policies = [
        # Ray's GCS, raylets, object managers and workers use many (partly random) ports: only
        # the deployment's own Ray pods may open any of them. KubeRay's operator calls the
        # dashboard (Serve config, status) and the serve health check.
        _policy(
            f"{name}-ray-internal",
            [
                {"from": [own_pods]},
                {"from": [kuberay_peer], "ports": _ports(DASHBOARD_PORT, SERVE_PORT)},
            ],
            name=name,
            namespace=namespace,
            uid=uid,
        ),
    ]
    callers: list[dict[str, Any]] = []
    for peer in policy.serve_from:
        entry: dict[str, Any] = {"podSelector": {"matchLabels": dict(peer.pod_labels)}}
        if peer.namespace is not None:
            entry["namespaceSelector"] = _namespace_selector(peer.namespace)
        callers.append(entry)
    if not callers:
        callers = [{"podSelector": {}}]  # every pod of the deployment's own namespace
    # Every Ray pod may run a Serve proxy on 8000 (KubeRay's serve Service selects them all).
    policies.append(
        _policy(
            f"{name}-serve",
            [{"from": callers, "ports": _ports(SERVE_PORT)}],
            name=name,
            namespace=namespace,
            uid=uid,
        )
    )
    if policy.monitoring_namespace:
        policies.append(
            _policy(
                f"{name}-metrics",
                [
                    {
                        "from": [
                            {"namespaceSelector": _namespace_selector(policy.monitoring_namespace)}
                        ],
                        "ports": _ports(METRICS_PORT),
                    }
                ],
                name=name,
                namespace=namespace,
                uid=uid,
            )
        )
    return policies
