"""A tiny synchronous Kubernetes REST client on the standard library, for the harness only.

It talks to the harness's own apiserver with the admin client certificate. It exists so that
bringing the cluster up (readiness, thousands of Node objects in parallel, waits) needs no event
loop and no extra dependency; the e2e tests themselves use whatever client they like with the
kubeconfig.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .polling import WaitTimeoutError as WaitTimeoutError
from .polling import wait_for as wait_for

T = TypeVar("T")


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")


@dataclass
class KubeAPI:
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    timeout: float = 30.0

    def __post_init__(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        self._ssl = ctx
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self._ssl, timeout=self.timeout
            )
            self._local.conn = conn
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        if resp.status >= 400:
            raise ApiError(method, path, resp.status, text)
        if raw:
            return text
        return json.loads(text) if text else None

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)

    def apply(self, path: str, obj: dict[str, Any], *, manager: str = "k2think-e2e") -> Any:
        """Server-side apply (``force=true``) of ``obj`` at its object ``path``."""
        return self.request(
            "PATCH",
            path,
            obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": manager, "force": "true"},
        )

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def parallel(fn: Callable[[T], Any], items: Iterable[T], *, workers: int = 16) -> int:
    """Run ``fn`` over ``items`` on a thread pool; re-raise the first error. Returns the count."""
    n = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, items):
            n += 1
    return n
