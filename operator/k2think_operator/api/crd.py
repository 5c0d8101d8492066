"""The K2ThinkDeployment CustomResourceDefinition: identity by hand, schema from the models.

One source for the API: the OpenAPI schema is generated from the pydantic models
(``resource.K2ThinkDeployment``, ``spec.py``) by ``apischema.crd_schema``, the way controller-gen
generates it from Go types. ``crds/``, the Helm chart and the offline ``validate`` command all
come from ``build_crd()``; a unit test fails when the committed YAML drifts from it, and another
compares the committed YAML with the models field by field (``tests/test_crd_parity.py``).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from k2think_operator.api.coordinates import K2THINK, MODELCACHE
from k2think_operator.api.modelcache import K2ThinkModelCache
from k2think_operator.api.resource import K2ThinkDeployment
from k2think_operator.api.schema import Schema, crd_schema


@lru_cache(maxsize=1)
def _schema() -> Schema:
    schema = crd_schema(K2ThinkDeployment)
    schema["required"] = ["spec"]
    return schema


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": K2THINK.resource,
            "labels": {
                "app.kubernetes.io/name": "k2think-operator",
                "app.kubernetes.io/part-of": "k2think",
            },
            # Deleting the CRD deletes every K2ThinkDeployment and, through owner references,
            # every RayService serving a model: GitOps tools must never prune it.
            "annotations": {
                "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",
                "kustomize.toolkit.fluxcd.io/prune": "disabled",
                "helm.sh/resource-policy": "keep",
            },
        },
        "spec": {
            "group": K2THINK.group,
            "names": {
                "kind": K2THINK.kind,
                "listKind": f"{K2THINK.kind}List",
                "plural": K2THINK.plural,
                "singular": K2THINK.kind.lower(),
                "shortNames": ["k2t"],
                "categories": ["k2think", "ai"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": K2THINK.version,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.preset"},
                        {"name": "GPU", "type": "string", "jsonPath": ".status.plan.gpuType"},
                        {
                            "name": "TP",
                            "type": "integer",
                            "jsonPath": ".status.plan.tensorParallel",
                        },
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Queue",
                            "type": "string",
                            "jsonPath": ".spec.scheduling.queueName",
                            "priority": 1,
                        },
                        {
                            "name": "Admission",
                            "type": "string",
                            "jsonPath": ".status.queue.state",
                        },
                        {
                            "name": "Downgraded",
                            "type": "string",
                            "description": "The spec turns a protection off (SecurityDowngraded)",
                            "jsonPath": '.status.conditions[?(@.type=="SecurityDowngraded")]'
                            ".status",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        # A copy: callers (schema_check) may edit theirs.
                        "openAPIV3Schema": copy.deepcopy(_schema())
                    },
                }
            ],
        },
    }


def openapi_schema() -> Schema:
    """The version's openAPIV3Schema (for offline validation with jsonschema)."""
    schema: Schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@lru_cache(maxsize=1)
def _cache_schema() -> Schema:
    schema = crd_schema(K2ThinkModelCache)
    schema["required"] = ["spec"]
    return schema


def build_cache_crd() -> dict[str, Any]:
    """The K2ThinkModelCache CRD: same conventions as ``build_crd`` (no scale subresource)."""
    crd = build_crd()
    crd["metadata"]["name"] = MODELCACHE.resource
    spec = crd["spec"]
    spec["names"] = {
        "kind": MODELCACHE.kind,
        "listKind": f"{MODELCACHE.kind}List",
        "plural": MODELCACHE.plural,
        "singular": MODELCACHE.kind.lower(),
        "shortNames": ["k2tcache"],
        "categories": ["k2think", "ai"],
    }
    (version,) = spec["versions"]
    version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = [
        {"name": "Source", "type": "string", "jsonPath": ".spec.source"},
        {"name": "Revision", "type": "string", "jsonPath": ".status.currentRevision"},
        {"name": "Claim", "type": "string", "jsonPath": ".status.claimName"},
        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    version["schema"] = {"openAPIV3Schema": copy.deepcopy(_cache_schema())}
    return crd
