"""The objects a RayService needs around it: the Ray token Secret, the ingress ConfigMap and the
NetworkPolicies. They are converged before the RayService is applied.

Why not read them back and compare, as for the RayService? Least privilege: the operator may
create Secrets but never read one, and needs no read access to ConfigMaps or NetworkPolicies
either. Instead it applies (server-side apply, idempotent) when what it rendered changed since
it last applied it in this process, and again on every resync pass, which repairs drift (an
edited or deleted policy) within ``K2T_RESYNC_SECONDS``. The token Secret is only ever created:
when it already exists, the API server answers 409 and the token stays as it is.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k2think_operator.api import reasons as r
from k2think_operator.deployment.cluster import KubeApi
from k2think_operator.render.meta import digest
from k2think_operator.render.security import RAY_TOKEN_KEY
from k2think_operator.runtime.events import Event

log = logging.getLogger(__name__)

SUPPORTING_KINDS = ("Secret", "ConfigMap", "NetworkPolicy")


def supporting_children(children: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Secrets, then ConfigMaps, then NetworkPolicies: each before the pods that use it."""
    chosen = [c for c in children if c.get("kind") in SUPPORTING_KINDS]
    return sorted(chosen, key=lambda c: SUPPORTING_KINDS.index(str(c["kind"])))


def new_ray_token() -> str:
    """256 random bits, URL-safe (Ray sends it in an HTTP header and gRPC metadata)."""
    return secrets.token_urlsafe(32)


def _key(child: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = child["metadata"]
    return (str(child["kind"]), str(meta["namespace"]), str(meta["name"]))


@dataclass
class SupportingObjects:
    """Applies supporting children; remembers what it applied so unchanged ones cost nothing."""

    kube: KubeApi
    _applied: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def forget(self, namespace: str, owner: str) -> None:
        for key in [k for k in self._applied if k[1] == namespace and k[2].startswith(owner + "-")]:
            self._applied.pop(key, None)

    async def converge(self, children: Iterable[Mapping[str, Any]], *, force: bool) -> list[Event]:
        """Create/apply what is new or changed (everything when ``force``); return events.

        Raises the kube errors of the first object that fails; the caller then leaves the
        RayService alone for this round (its pods would wait on a missing Secret anyway).
        """
        events: list[Event] = []
        for child in supporting_children(children):
            key = _key(child)
            want = digest(child)
            if not force and self._applied.get(key) == want:
                continue
            kind, _, name = key
            if kind == "Secret":
                created = await self.kube.create_secret_if_absent(
                    child, {RAY_TOKEN_KEY: new_ray_token()}
                )
                if created:
                    events.append(
                        Event.normal(
                            r.EVENT_RAY_TOKEN_CREATED, f"created Secret {name} with a new Ray token"
                        )
                    )
                    log.info("created Secret %s/%s (Ray token)", key[1], name)
            else:
                await self.kube.apply_namespaced(child)
            self._applied[key] = want
        return events
