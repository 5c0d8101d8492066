"""What kopf needs from the operator beyond the handlers: the credentials as kopf's
``ConnectionInfo`` (kopf's watches log in with them), and a diff base that costs nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from k2think_operator.runtime.credentials import Credentials

log = logging.getLogger(__name__)


async def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """``credentials`` for kopf's own watches, with their expiration: kopf calls its login
    handlers again when they expire or the server answers 401."""
    headers = await credentials.headers()
    token = headers.get("Authorization", "").removeprefix("Bearer ") or None
    cert, key = credentials.client_certificate()
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_data=credentials.ca_data,
        insecure=credentials.insecure or None,
        token=token,
        certificate_data=cert,
        private_key_data=key,
        default_namespace=credentials.default_namespace,
        expiration=await credentials.expiration(),
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: the operator registers no changing handlers (``on.create``/``on.update``),
    only indexes and ``on.event``, which read no diff.

    kopf still builds one for every event it processes (``_detect_causes``): a deep copy of the
    whole body (then its status and metadata dropped), 0.36 ms of CPU per RayService event and
    0.06 ms per K2ThinkDeployment event, ~0.5 of the ~9.5 ms the operator spends per new
    deployment (issue #20). Nothing is stored on the objects either way (kopf stores a diff base
    only after a changing handler; ``tests/test_registrations.py`` checks there is none).
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
