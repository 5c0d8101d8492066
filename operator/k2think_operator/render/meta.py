"""Names, labels, owner references, hashes and pod pieces shared by every child we render."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from k2think_operator.api.coordinates import K2THINK
from k2think_operator.api.spec import EnvVar, Toleration

FIELD_MANAGER = "k2think-operator"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
COMPONENT_LABEL = "app.kubernetes.io/component"
POOL_LABEL = f"{K2THINK.group}/pool"
#: KubeRay's label on every pod of a RayCluster: the cluster's name.
RAY_CLUSTER_LABEL = "ray.io/cluster"

SPEC_HASH_ANNOTATION = f"{K2THINK.group}/spec-hash"
CLUSTER_HASH_ANNOTATION = f"{K2THINK.group}/cluster-hash"

SERVE_PORT = 8000


def standard_labels(instance: str) -> dict[str, str]:
    return {
        NAME_LABEL: "k2think",
        INSTANCE_LABEL: instance,
        MANAGED_BY_LABEL: FIELD_MANAGER,
        PART_OF_LABEL: "k2think",
    }


def selector_labels(instance: str) -> dict[str, str]:
    """The labels that find every pod of one deployment (for status.selector and our index)."""
    return {NAME_LABEL: "k2think", INSTANCE_LABEL: instance}


def selector_string(instance: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(instance).items()))


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": K2THINK.api_version,
        "kind": K2THINK.kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(value: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def cluster_hash(ray_cluster_config: dict[str, Any]) -> str:
    """Hash of rayClusterConfig with the fields KubeRay ignores when it decides on a new cluster.

    KubeRay (GenerateHashWithoutReplicasAndWorkersToDelete) mutes worker replicas/min/max,
    workersToDelete, pod tolerations and schedulingGates and upgradeStrategy, and applies a
    suspend toggle in place; a change anywhere else makes it build a whole second Ray cluster. We mirror that, so the operator can say in
    advance which edits cost a switch-over.
    """
    muted = json.loads(canonical_json(ray_cluster_config))
    muted.pop("upgradeStrategy", None)
    muted.pop("suspend", None)  # KubeRay suspends/resumes the running cluster in place
    head_spec = muted.get("headGroupSpec", {}).get("template", {}).get("spec", {})
    head_spec.pop("tolerations", None)
    head_spec.pop("schedulingGates", None)
    for group in muted.get("workerGroupSpecs", []):
        for key in ("replicas", "minReplicas", "maxReplicas", "scaleStrategy"):
            group.pop(key, None)
        pod_spec = group.get("template", {}).get("spec", {})
        pod_spec.pop("tolerations", None)
        pod_spec.pop("schedulingGates", None)
    return digest(muted)


def serve_service_name(rayservice_name: str) -> str:
    """KubeRay names the Serve service of a RayService ``<name>-serve-svc``."""
    return f"{rayservice_name}-serve-svc"


def endpoint_url(rayservice_name: str, namespace: str) -> str:
    return f"http://{serve_service_name(rayservice_name)}.{namespace}.svc:{SERVE_PORT}/v1"


#: A fixed port for the Ray node's runtime-env agent, on the head and every worker. The raylet
#: waits for each agent port it was not given to appear in a port file, each wait bounded by a
#: hard-coded 15 s, and aborts past it (Ray 2.60 ``src/ray/raylet/node_manager.cc``,
#: ``WaitForDashboardAgentPorts`` / ``WaitForRuntimeEnvAgentPort``; ray#65983): a given port
#: is one wait less on a busy node. Each pod has its own network namespace, so a fixed port
#: cannot collide between pods (KubeRay already fixes 52365 and 8080). The dashboard agent's
#: gRPC port stays random on purpose: fixing it removes the wait for its file, and then the
#: next wait (its HTTP port, which ``ray start`` cannot pass to the raylet) has to cover the
#: agent's whole start-up within one 15 s bound instead of two.
AGENT_PORT_PARAMS = {"runtime-env-agent-port": "52367"}


def build_tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    """A pool's or group's tolerations as the pod spec spells them (every Ray group alike)."""
    return [t.model_dump(by_alias=True, exclude_none=True) for t in items]


def build_user_env(items: list[EnvVar]) -> list[dict[str, Any]]:
    """``spec.ray.env`` as container env entries (every Ray container alike)."""
    return [{"name": e.name, "value": e.value} for e in items]
