"""The API server checks the children before they matter: a server-side dry run (``dryRun=All``)
of the RayService we are about to apply and of a Pod built from every pod template KubeRay
will create from it.

Why: the CRD schema of a RayService says little about its pod templates, and the Pods KubeRay
creates later meet Pod validation and the cluster's admission policies (Pod Security, Kyverno,
Gatekeeper) long after our apply succeeded; the user would learn it from KubeRay's events. A
dry run stores nothing and runs every validating and mutating admission step, so a refusal
here becomes the ``Degraded`` condition (reason ``ChildRejected``) with the server's message,
and nothing is written: the running RayService stays as it is, byte for byte.

The Pods are built as KubeRay builds them (``ray-operator/controllers/ray/common/pod.go``
v1.6.2): the group's template, KubeRay's labels (``ray.io/cluster``, ``ray.io/group``,
``ray.io/node-type``, ``ray.io/is-ray-node``) and the pod name pattern. What KubeRay adds
beyond that (its environment variables, the ray start command, the autoscaler sidecar) comes
from KubeRay itself and is not the user's to fix, so it is not reproduced.

The cost: one dry-run call for the RayService and one per pod template, and only when the
RayService is about to be applied (a changed spec, drift), never on a steady-state reconcile
(docs/benchmarks.md counts the calls). A RayService that does not exist yet is not dry-run (its
Pods still are, when opted in): no RayService runs that a refusal must protect, and the create
is the same check, refused as ``ApplyRejected``. Skipping that call took 8 of the API server's
41 CPU seconds off a burst of 1,000 new deployments (issue #20).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from k2think_operator.api.coordinates import RAYSERVICE

#: The pod templates of a RayService: (group, node type, template, spec field it comes from).
Template = tuple[str, str, Mapping[str, Any]]


def pod_templates(rayservice: Mapping[str, Any]) -> Iterator[Template]:
    """(group name, node type, template) of the head and every worker group."""
    cluster = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    head = (cluster.get("headGroupSpec") or {}).get("template")
    if head:
        yield "headgroup", "head", head
    for group in cluster.get("workerGroupSpecs") or []:
        if group.get("template"):
            yield str(group.get("groupName")), "worker", group["template"]


def _pod_name(cluster: str, group: str, node_type: str) -> str:
    """A name like KubeRay's (``<cluster>-head-xxxxx``, ``<cluster>-<group>-worker-xxxxx``),
    kept within the 63 characters a pod's hostname allows."""
    base = f"{cluster}-head" if node_type == "head" else f"{cluster}-{group}-worker"
    return f"{base[:57].rstrip('-')}-dryrn"


def pods_for(rayservice: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Pods KubeRay would create from the RayService's pod templates (module docstring)."""
    meta = rayservice.get("metadata") or {}
    cluster = str(meta.get("name"))
    pods = []
    for group, node_type, template in pod_templates(rayservice):
        template_meta = template.get("metadata") or {}
        labels = {
            **(template_meta.get("labels") or {}),
            "ray.io/cluster": cluster,
            "ray.io/group": group,
            "ray.io/node-type": node_type,
            "ray.io/is-ray-node": "yes",
        }
        pod_meta: dict[str, Any] = {
            "name": _pod_name(cluster, group, node_type),
            "namespace": meta.get("namespace"),
            "labels": labels,
        }
        if template_meta.get("annotations"):
            pod_meta["annotations"] = dict(template_meta["annotations"])
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": pod_meta,
                "spec": copy.deepcopy(dict(template.get("spec") or {})),
            }
        )
    return pods


def rayservice_of(children: tuple[dict[str, Any], ...]) -> dict[str, Any] | None:
    return next((c for c in children if c.get("kind") == RAYSERVICE.kind), None)


def rejection_message(what: str, error: Exception) -> str:
    """The condition's message: which child, the server's words, and that nothing changed."""
    return (
        f"the API server refuses {what} (dry run, nothing was applied; what runs is unchanged): "
        f"{error}"
    )
