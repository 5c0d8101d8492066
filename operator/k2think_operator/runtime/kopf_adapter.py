"""The operator's credentials as kopf's ``ConnectionInfo``: kopf's watches log in with them."""

from __future__ import annotations

import logging

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
