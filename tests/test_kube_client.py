"""The operator's thin API client (``kube.RestClient``) against a real TLS server on loopback:
in a pod it must find the API server from ``KUBERNETES_SERVICE_HOST``/``_PORT``, trust only the
service account's ``ca.crt``, send the token file's bearer token (re-read when kubelet rotates
it), and turn non-2xx answers into ``ApiError`` with the server's ``Status`` body.

The certificates come from the test ground's PKI (``e2e/harness/pki.py``).
"""

from __future__ import annotations

import json
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from k2think_operator.api.coordinates import K2THINK, RAYSERVICE
from k2think_operator.runtime import credentials
from k2think_operator.runtime.kube import ApiError, Kube, RestClient, TransientApiError
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "e2e"))

from harness.pki import issue_serving_cert, make_pki


@pytest.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path, list[dict[str, Any]]]]:
    """An HTTPS server on 127.0.0.1 recording each request; a service-account directory."""
    pki = make_pki(tmp_path / "pki")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    issue_serving_cert(pki, cert, key, name="kubernetes", ips=["127.0.0.1"])
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "type": request.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
            }
        )
        if request.path.endswith("/missing"):
            status = {
                "kind": "Status",
                "code": 404,
                "message": 'rayservices.ray.io "missing" not found',
            }
            return web.json_response(status, status=404)
        if request.method == "PATCH" and request.path.endswith("/denied"):
            return web.json_response({"kind": "Status", "message": "denied by policy"}, status=422)
        return web.json_response({"metadata": {"resourceVersion": "7"}}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    (account / "token").write_text("token-1\n")
    yield port, account, seen
    await runner.cleanup()


def _in_a_pod(monkeypatch: pytest.MonkeyPatch, port: int, account: Path) -> None:
    """The environment kubelet gives a pod (no kubeconfig), pointing at the test server."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT_HTTPS", str(port))
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT_DIR", str(account))


async def test_in_a_pod_the_service_account_reaches_the_api_server(
    api_server: tuple[int, Path, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, account, seen = api_server
    _in_a_pod(monkeypatch, port, account)
    facade = Kube(await RestClient.connect(), "k2think-operator")
    try:
        stored = await facade.patch_status(K2THINK, "ns", "k2think", {"phase": "Ready"})
        assert stored == "7"
        assert seen[-1] == {
            "method": "PATCH",
            "path": "/apis/k2think.dev/v1alpha1/namespaces/ns/k2thinkdeployments/k2think/status",
            "query": {"fieldManager": "k2think-operator"},
            "auth": "Bearer token-1",
            "type": "application/merge-patch+json",
            "body": {"status": {"phase": "Ready"}},
        }
        # An object that is not there is None; the API's own refusal is ApplyRejected-worthy.
        assert await facade.get(RAYSERVICE, "ns", "missing") is None
        with pytest.raises(ApiError) as refused:
            await facade._api.request("PATCH", "/apis/ray.io/v1/namespaces/ns/rayservices/denied")
        assert refused.value.status == 422 and b"denied by policy" in refused.value.body
        # kubelet rotated the token: it is read again (here at once: re-read interval 0).
        (account / "token").write_text("token-2\n")
        monkeypatch.setattr(credentials, "TOKEN_REREAD_SECONDS", 0.0)
        await facade.get(RAYSERVICE, "ns", "missing")
        assert seen[-1]["auth"] == "Bearer token-2"
    finally:
        await facade.close()


async def test_a_server_not_signed_by_the_service_account_ca_is_not_trusted(
    api_server: tuple[int, Path, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    port, account, seen = api_server
    other = make_pki(tmp_path / "other")
    (account / "ca.crt").write_bytes(other.ca_cert.read_bytes())
    _in_a_pod(monkeypatch, port, account)
    facade = Kube(await RestClient.connect(), "k2think-operator")
    try:
        with pytest.raises(TransientApiError, match="no answer from the API server"):
            await facade.get(RAYSERVICE, "ns", "k2think")
        assert seen == []  # no request (and no token) went to it
    finally:
        await facade.close()
