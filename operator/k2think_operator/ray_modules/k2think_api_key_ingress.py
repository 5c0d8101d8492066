"""API-key check for Ray Serve LLM's OpenAI ingress (runs inside the Ray cluster, not the operator).

Ray Serve LLM 2.60 has no authentication of its own, and Serve's ``http_options.middlewares`` is
gone. What 2.60 does offer is ``build_openai_app``'s ``ingress_cls_config``: ``ingress_cls`` is
imported by name (``ray/llm/_internal/serve/core/ingress/builder.py``, ``IngressClsConfig``) and
``ingress_extra_kwargs`` are passed to its constructor. This subclass of ``OpenAiIngress`` adds
one Starlette middleware to the ingress's FastAPI app through the ``__serve_build_asgi_app__``
hook, which Serve's replica calls before the app's lifespan starts
(``ray/serve/_private/replica.py``, ``_initialize_asgi_callable``), so every route of the app
(``/v1/*``, ``/tokenize``, docs) is covered, and Serve's own exception handlers are kept.

Keys come from a directory (a mounted Secret: one key per file). The directory is re-read at most
every ``RELOAD_SECONDS``, so editing the Secret rotates keys without a restart (the kubelet
updates mounted Secrets in place). A key is never logged; only how many keys were loaded.

This file is deliberately self-contained (standard library, Starlette, Ray): the operator ships
it into the Ray pods in a ConfigMap, where the operator's package is not installed.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any

from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

logger = logging.getLogger("ray.serve")

RELOAD_SECONDS = 10.0
#: CORS preflights carry no credentials by design; the CORS middleware answers them.
UNCHECKED_METHODS = frozenset({"OPTIONS"})


class KeyFile:
    """The accepted keys, read from every regular file of ``directory`` (dotfiles skipped)."""

    def __init__(self, directory: str, reload_seconds: float = RELOAD_SECONDS) -> None:
        self.directory = directory
        self.reload_seconds = reload_seconds
        self._keys: tuple[bytes, ...] = ()
        self._loaded_at = float("-inf")

    def _read(self) -> tuple[bytes, ...]:
        keys = []
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as error:
            logger.warning("API keys: cannot list %s: %s", self.directory, error.strerror)
            return ()
        for name in names:
            path = os.path.join(self.directory, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as handle:
                    value = handle.read().strip()
            except OSError:
                continue
            if value:
                keys.append(value)
        return tuple(keys)

    def keys(self) -> tuple[bytes, ...]:
        now = time.monotonic()
        if now - self._loaded_at >= self.reload_seconds:
            fresh = self._read()
            if len(fresh) != len(self._keys) or self._loaded_at == float("-inf"):
                logger.info("API keys: %d key(s) loaded from %s", len(fresh), self.directory)
            self._keys = fresh
            self._loaded_at = now
        return self._keys

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode()
        # Compare against every key, constant time each: no early exit on the first match.
        matched = False
        for key in self.keys():
            matched |= hmac.compare_digest(candidate, key)
        return matched


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def unauthorized(message: str) -> JSONResponse:
    """OpenAI's shape for a bad key, so OpenAI clients raise AuthenticationError."""
    return JSONResponse(
        status_code=401,
        content={
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        headers={"WWW-Authenticate": "Bearer"},
    )


class ApiKeyMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, key_file: KeyFile) -> None:
        super().__init__(app)
        self.key_file = key_file

    async def dispatch(self, request: Any, call_next: Any) -> Any:
        if request.method in UNCHECKED_METHODS:
            return await call_next(request)
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        if not self.key_file.accepts(token):
            return unauthorized("Invalid API key.")
        return await call_next(request)


class ApiKeyOpenAiIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress that answers 401 unless the request carries a valid key."""

    def __init__(self, *args: Any, api_keys_dir: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_file = KeyFile(api_keys_dir)
        self._key_file.keys()  # log the count once at start

    async def __serve_build_asgi_app__(self) -> Any:
        # ``app`` comes from Serve's ASGIAppReplicaWrapper, a base of the deployed class: the
        # FastAPI app Serve LLM built, not started yet.
        app = getattr(self, "app")  # noqa: B009
        app.add_middleware(ApiKeyMiddleware, key_file=self._key_file)
        return app
