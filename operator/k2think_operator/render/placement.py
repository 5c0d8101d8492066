"""Bind a pool's worker pods to nodes with the pool's GPU model.

Tolerating the GPU taint lets a pod onto *any* GPU node; without a node binding a pool planned
for A100-40GB can land on an H100 node (or, worse, a plan made for 80 GB boards on a 40 GB one,
which runs out of memory when vLLM allocates its KV cache). The operator knows each pool's GPU
type, so by default it requires the vendor's product label (``catalog.PRODUCT_LABELS``: NVIDIA
GPU feature discovery's ``nvidia.com/gpu.product``, AMD's node labeller's
``amd.com/gpu.product-name``) to be one of the catalog's product names for that type.

The binding cannot be defeated: a pool's own ``nodeSelector`` and ``affinity`` may narrow it
to a subset of its type's boards, never widen or contradict it. The requirement is left out only
when the pool's own *required* constraints already pin the product label to a subset of the
type's products (a nodeSelector value, or an ``In`` in every required term); a preferred term, a
``NotIn``, a memory label or another board's name does not count. A constraint naming only
products of another type, or excluding every product of this one, is a contradiction, refused
with its field path (``binding_problems``). Pure functions, so the binding shows up in
``render`` and in the golden files.
"""

from __future__ import annotations

import copy
from typing import Any

from k2think_operator.api.catalog import ACCELERATORS
from k2think_operator.api.spec import PoolSpec


def _required_terms(affinity: Any) -> list[dict[str, Any]]:
    node = (affinity or {}).get("nodeAffinity") or {}
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return [t for t in required.get("nodeSelectorTerms") or [] if isinstance(t, dict)]


def _product_expressions(term: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return [
        e
        for e in term.get("matchExpressions") or []
        if isinstance(e, dict) and e.get("key") == label
    ]


def _pins(term: dict[str, Any], label: str, products: tuple[str, ...]) -> bool:
    """The term requires the product label to be one of ``products`` (a subset)."""
    return any(
        e.get("operator") == "In" and e.get("values") and set(e["values"]) <= set(products)
        for e in _product_expressions(term, label)
    )


def binds_gpu_model(pool: PoolSpec) -> bool:
    """True when the pool's own required constraints already pin its GPU product to a subset of
    its type's boards (the operator then adds nothing: it would say the same)."""
    accelerator = ACCELERATORS[pool.gpu_type]
    label, products = accelerator.product_label, accelerator.gpu_products
    if label is None or not products:
        return False
    if pool.node_selector.get(label) in products:
        return True
    terms = _required_terms(pool.affinity)
    return bool(terms) and all(_pins(t, label, products) for t in terms)


def binding_problems(pool: PoolSpec, index: int) -> list[tuple[str, str]]:
    """(field path, message) for constraints of the pool that contradict its gpuType."""
    accelerator = ACCELERATORS[pool.gpu_type]
    label, products = accelerator.product_label, accelerator.gpu_products
    if label is None or not products:
        return []
    base = f"spec.pools[{index}]"
    found: list[tuple[str, str]] = []
    wanted = ", ".join(products)
    chosen = pool.node_selector.get(label)
    if chosen is not None and chosen not in products:
        found.append(
            (
                f"{base}.nodeSelector.{label}",
                f"{chosen!r} is not a board of gpuType {pool.gpu_type} ({wanted}): the plan is "
                f"made for {pool.gpu_type}; set gpuType to the board the pool has",
            )
        )
    for t_index, term in enumerate(_required_terms(pool.affinity)):
        for expression in _product_expressions(term, label):
            operator = expression.get("operator")
            values = set(expression.get("values") or [])
            where = (
                f"{base}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                f".nodeSelectorTerms[{t_index}]"
            )
            if operator == "In" and not values <= set(products):
                others = ", ".join(sorted(values - set(products)))
                found.append(
                    (
                        where,
                        f"names boards that are not gpuType {pool.gpu_type} ({others}); a "
                        f"pool's constraints may only narrow it to some of: {wanted}",
                    )
                )
            elif (operator == "NotIn" and set(products) <= values) or operator == "DoesNotExist":
                found.append((where, f"excludes every board of gpuType {pool.gpu_type} ({wanted})"))
    return found


def gpu_product_requirement(pool: PoolSpec) -> dict[str, Any] | None:
    """The ``matchExpressions`` entry binding this pool to its GPU model, or None (CPU pools,
    pools whose required constraints pin a subset of the products already)."""
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
