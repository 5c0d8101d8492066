"""Kubernetes API conventions for a custom resource's status, for any controller: conditions
(``metav1.Condition``: ``lastTransitionTime`` moves only when the status flips) and the merge
patch that takes a stored status to the desired one. Pure; nothing here knows a kind.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


def condition(
    kind: str, status: bool, reason: str, message: str, generation: int
) -> dict[str, Any]:
    """One condition without its ``lastTransitionTime`` (``set_condition`` adds it)."""
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def set_condition(
    existing: Sequence[Mapping[str, Any]],
    new: Mapping[str, Any],
    now: str,
    order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Replace the condition of ``new['type']``; keep lastTransitionTime unless status flips.

    ``order``: the condition types in the order a reader expects them (others after, by name),
    so a status reads the same whichever condition changed last.
    """
    result: list[dict[str, Any]] = []
    placed = False
    for cond in existing:
        if cond.get("type") != new["type"]:
            result.append(dict(cond))
            continue
        merged = dict(new)
        if cond.get("status") == new["status"] and cond.get("lastTransitionTime"):
            merged["lastTransitionTime"] = cond["lastTransitionTime"]
        else:
            merged["lastTransitionTime"] = now
        result.append(merged)
        placed = True
    if not placed:
        result.append({**new, "lastTransitionTime": now})
    rank = {t: i for i, t in enumerate(order)}
    return sorted(result, key=lambda c: (rank.get(str(c.get("type")), 99), str(c.get("type"))))


def find_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of type ``kind`` in ``status.conditions`` (None when absent)."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond  # type: ignore[no-any-return]
    return None


def without_nulls(value: Any) -> Any:
    """``value`` as the API server stores it: a null field is no field (a merge patch's null
    deletes it, and a CRD's structural schema prunes the nulls of fields not ``nullable``).

    Comparing a desired status with nulls in it (``plan.pools[].maxReplicas`` of a pool without
    a cap) against the stored one found a difference every time, so every reconcile wrote the
    status again: a write that changes nothing (docs/benchmarks.md, "Convergence").
    """
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def status_patch(
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
    owned: Collection[str],
) -> dict[str, Any] | None:
    """The merge patch taking ``current`` to ``desired``, or None when nothing changed.

    Compared as stored (``without_nulls``). Fields in ``owned`` that ``desired`` no longer has
    are set to null (merge-patch removal); fields of others are left alone.
    """
    current = without_nulls(current or {})
    stored = without_nulls(desired)
    stale = {key: None for key in current if key in owned and key not in stored}
    changed = any(current.get(key) != value for key, value in stored.items())
    if not changed and not stale:
        return None
    return {**desired, **stale}
