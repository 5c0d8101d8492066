"""Bind a pool's worker pods to nodes with the pool's GPU model.

Tolerating the GPU taint lets a pod onto *any* GPU node; without a node binding a pool planned
for A100-40GB can land on an H100 node (or, worse, a plan made for 80 GB boards on a 40 GB one,
which runs out of memory when vLLM allocates its KV cache). The operator knows each pool's GPU
type, so by default it requires the vendor's product label (``catalog.PRODUCT_LABELS``: NVIDIA
GPU feature discovery's ``nvidia.com/gpu.product``, AMD's node labeller's
``amd.com/gpu.product-name``) to be one of the catalog's product names for that type.

A pool whose own ``nodeSelector`` or ``affinity`` already names a GPU model label
(``catalog.GPU_BINDING_LABELS``) has chosen its nodes itself; nothing is added then. Pure
functions, so the binding shows up in ``render`` and in the golden files.
"""

from __future__ import annotations

import copy
from typing import Any

from k2think_operator.api.catalog import ACCELERATORS, GPU_BINDING_LABELS
from k2think_operator.api.spec import PoolSpec


def _named_keys(affinity: Any) -> set[str]:
    """Every label key a node affinity's required or preferred terms mention."""
    keys: set[str] = set()
    node = (affinity or {}).get("nodeAffinity") or {}
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = list(required.get("nodeSelectorTerms") or [])
    terms += [
        p.get("preference") or {}
        for p in node.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    ]
    for term in terms:
        for expression in term.get("matchExpressions") or []:
            keys.add(str(expression.get("key")))
    return keys


def binds_gpu_model(pool: PoolSpec) -> bool:
    """True when the pool's own selectors already pin a GPU model (we then add nothing)."""
    named = set(pool.node_selector) | _named_keys(pool.affinity)
    return bool(named & GPU_BINDING_LABELS)


def gpu_product_requirement(pool: PoolSpec) -> dict[str, Any] | None:
    """The ``matchExpressions`` entry binding this pool to its GPU model, or None (CPU pools,
    pools that bind themselves)."""
    accelerator = ACCELERATORS[pool.gpu_type]
    label = accelerator.product_label
    if label is None or not accelerator.gpu_products or binds_gpu_model(pool):
        return None
    return {"key": label, "operator": "In", "values": list(accelerator.gpu_products)}


def worker_affinity(pool: PoolSpec) -> dict[str, Any] | None:
    """The pool's affinity with the GPU model requirement ANDed into every required term.

    Required node-selector terms are ORed by the scheduler and the expressions inside one term
    ANDed, so the requirement goes into each term (a new single term when there is none).
    """
    requirement = gpu_product_requirement(pool)
    affinity: dict[str, Any] | None = copy.deepcopy(pool.affinity) if pool.affinity else None
    if requirement is None:
        return affinity
    affinity = affinity or {}
    node = affinity.setdefault("nodeAffinity", {})
    required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), requirement]
    required["nodeSelectorTerms"] = terms
    return affinity
