"""Kubernetes Events about an object, as one typed value from the decision to the API.

Decisions (pure) return ``Event``s; the controller posts them (``kube.EventRecorder``). Why not
kopf's ``kopf.warn``/``kopf.info``: kopf's event queue exists only inside its own per-object
handler tasks, and reconciles run on the runtime's workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One Event: ``warning`` makes it ``type: Warning`` (something a human should act on)."""

    reason: str
    message: str
    warning: bool = False

    @classmethod
    def normal(cls, reason: str, message: str) -> Event:
        return cls(reason, message, warning=False)

    @classmethod
    def warn(cls, reason: str, message: str) -> Event:
        return cls(reason, message, warning=True)


#: The API server stores at most this much of a message usefully (kopf and client-go cut there).
MAX_MESSAGE_LENGTH = 1024


def build_event(
    obj: Mapping[str, Any], event: Event, *, component: str, instance: str, now: str
) -> dict[str, Any]:
    """A core/v1 Event about ``obj`` (what ``kubectl describe`` and ``kubectl get events`` show)."""
    meta = obj.get("metadata") or {}
    message = event.message
    if len(message) > MAX_MESSAGE_LENGTH:
        half = MAX_MESSAGE_LENGTH // 2 - 2
        message = f"{message[:half]}...{message[-half:]}"
    namespace = str(meta.get("namespace") or "default")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "type": "Warning" if event.warning else "Normal",
        "reason": event.reason,
        "message": message,
        "action": event.reason,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
