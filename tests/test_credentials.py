"""The operator's kubeconfig exec credential plugins (``runtime/credentials.py``), as client-go
speaks the protocol (``k8s.io/client-go/plugin/pkg/client/auth/exec``): a real plugin program
(a script run as a subprocess, not a stand-in function), ``KUBERNETES_EXEC_INFO`` as client-go
builds it, both API versions, the expiry and the one retry after a 401, against a real TLS
server on loopback. The same plugin against the real kube-apiserver: e2e/test_kube_client.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from k2think_operator.runtime.credentials import (
    EXEC_RENEW_MARGIN_SECONDS,
    CredentialsError,
    from_kubeconfig,
    parse_exec_credential,
)
from k2think_operator.runtime.kube import ApiError, RestClient
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "e2e"))

from harness.pki import Pki, issue_client_cert, issue_serving_cert, make_pki

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"

#: The plugin: counts its runs in a file, records what it was given, answers token "tok-<run>"
#: (or a client certificate), with an expiry ``K2T_TEST_TTL`` seconds ahead when set.
PLUGIN = """#!{python}
import datetime, json, os, sys
state = os.environ["K2T_TEST_STATE"]
runs = len(open(state).read().splitlines()) + 1 if os.path.exists(state) else 1
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
with open(state, "a") as out:
    out.write(json.dumps({{"info": info, "argv": sys.argv[1:], "flavour": os.environ.get("FLAVOUR")}}) + "\\n")
if os.environ.get("K2T_TEST_FAIL"):
    sys.stderr.write("token service says no\\n")
    sys.exit(3)
status = {{}}
if os.environ.get("K2T_TEST_CERT"):
    status["clientCertificateData"] = open(os.environ["K2T_TEST_CERT"]).read()
    status["clientKeyData"] = open(os.environ["K2T_TEST_KEY"]).read()
else:
    status["token"] = "tok-%d" % runs
ttl = os.environ.get("K2T_TEST_TTL")
if ttl:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=float(ttl))
    status["expirationTimestamp"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({{"apiVersion": os.environ.get("K2T_TEST_ANSWER", info["apiVersion"]),
                  "kind": "ExecCredential", "status": status}}))
"""


def write_plugin(directory: Path) -> Path:
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    plugin = bin_dir / "k2t-token"
    plugin.write_text(PLUGIN.format(python=sys.executable))
    plugin.chmod(0o755)
    return plugin


def write_kubeconfig(
    directory: Path,
    server: str,
    ca: bytes | None,
    *,
    api_version: str = V1,
    provide_cluster_info: bool = True,
    env: dict[str, str] | None = None,
    command: str = "./bin/k2t-token",
) -> Path:
    """A kubeconfig whose user is an exec plugin (a relative command: next to the file)."""
    cluster: dict[str, Any] = {"server": server}
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    user = {
        "exec": {
            "apiVersion": api_version,
            "command": command,
            "args": ["get-token", "--cluster=e2e"],
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            "provideClusterInfo": provide_cluster_info,
            "interactiveMode": "Never",
            "installHint": "install k2t-token from your platform team",
        }
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "plugin",
        "contexts": [{"name": "plugin", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def runs(state: Path) -> list[dict[str, Any]]:
    if not state.exists():
        return []
    return [json.loads(line) for line in state.read_text().splitlines()]


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    write_plugin(tmp_path)
    return {"K2T_TEST_STATE": str(tmp_path / "runs.jsonl"), "FLAVOUR": "from-kubeconfig"}


# --- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
async def test_the_plugin_gets_the_exec_info_client_go_sends_and_its_token_is_used(
    tmp_path: Path, plugin_env: dict[str, str], api_version: str
) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nnot parsed here\n-----END CERTIFICATE-----\n"
    path = write_kubeconfig(
        tmp_path, "https://127.0.0.1:6443", ca, api_version=api_version, env=plugin_env
    )
    creds = from_kubeconfig([path])
    assert creds.renewable
    assert await creds.headers() == {"Authorization": "Bearer tok-1"}
    (run,) = runs(tmp_path / "runs.jsonl")
    # The kubeconfig's args and env reach the program; its relative path is the file's folder.
    assert run["argv"] == ["get-token", "--cluster=e2e"]
    assert run["flavour"] == "from-kubeconfig"
    assert run["info"] == {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {
            "interactive": False,
            "cluster": {
                "server": "https://127.0.0.1:6443",
                "certificate-authority-data": base64.b64encode(ca).decode(),
            },
        },
    }


async def test_without_provide_cluster_info_the_plugin_gets_no_cluster(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    path = write_kubeconfig(
        tmp_path, "https://127.0.0.1:6443", None, provide_cluster_info=False, env=plugin_env
    )
    await from_kubeconfig([path]).headers()
    (run,) = runs(tmp_path / "runs.jsonl")
    assert run["info"]["spec"] == {"interactive": False}


@pytest.mark.parametrize(
    ("stanza_version", "extra_env", "message"),
    [
        ("client.authentication.k8s.io/v1alpha1", {}, "v1alpha1' is not supported"),
        (V1, {"K2T_TEST_ANSWER": V1BETA1}, "answered 'client.authentication.k8s.io/v1beta1'"),
        (V1, {"K2T_TEST_FAIL": "1"}, "exited 3: token service says no"),
    ],
)
async def test_a_plugin_that_does_not_keep_the_protocol_is_a_clear_error(
    tmp_path: Path,
    plugin_env: dict[str, str],
    stanza_version: str,
    extra_env: dict[str, str],
    message: str,
) -> None:
    env = {**plugin_env, **extra_env}
    path = write_kubeconfig(
        tmp_path, "https://127.0.0.1:6443", None, api_version=stanza_version, env=env
    )
    with pytest.raises(CredentialsError, match=message.replace("(", r"\(")):
        await from_kubeconfig([path]).headers()


async def test_a_missing_plugin_names_the_install_hint(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path, "https://127.0.0.1:6443", None, command="./bin/not-installed")
    with pytest.raises(CredentialsError, match="install k2t-token from your platform team"):
        await from_kubeconfig([path]).headers()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b"token: x", "not JSON"),
        (json.dumps({"apiVersion": V1, "kind": "Pod"}).encode(), "not an ExecCredential"),
        (
            json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": {}}).encode(),
            "neither a token nor a client certificate",
        ),
        (
            json.dumps(
                {
                    "apiVersion": V1,
                    "kind": "ExecCredential",
                    "status": {"token": "t", "expirationTimestamp": "tomorrow"},
                }
            ).encode(),
            "not RFC 3339",
        ),
    ],
)
def test_bad_plugin_output_is_refused(output: bytes, message: str) -> None:
    with pytest.raises(CredentialsError, match=message):
        parse_exec_credential(output, V1, 100.0, 1_000_000.0)


# --- expiry ----------------------------------------------------------------------------------


def test_the_expiry_becomes_a_monotonic_deadline_ahead_of_the_margin() -> None:
    wall = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC).timestamp()
    raw = json.dumps(
        {
            "apiVersion": V1,
            "kind": "ExecCredential",
            "status": {"token": "t", "expirationTimestamp": "2026-12-06T13:00:00Z"},
        }
    ).encode()
    status, until = parse_exec_credential(raw, V1, 500.0, wall)
    assert status["token"] == "t"
    assert until == 500.0 + 3600 - EXEC_RENEW_MARGIN_SECONDS
    no_expiry = json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": {"token": "t"}})
    assert parse_exec_credential(no_expiry.encode(), V1, 500.0, wall)[1] is None


async def test_a_credential_is_reused_until_it_expires_then_the_plugin_runs_again(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    path = write_kubeconfig(
        tmp_path, "https://127.0.0.1:6443", None, env={**plugin_env, "K2T_TEST_TTL": "3600"}
    )
    creds = from_kubeconfig([path])
    assert creds.exec_plugin is not None
    assert await creds.headers() == {"Authorization": "Bearer tok-1"}
    assert await creds.headers() == {"Authorization": "Bearer tok-1"}
    assert len(runs(tmp_path / "runs.jsonl")) == 1  # valid for an hour: not run again
    expires = await creds.expiration()
    assert expires is not None
    left = (expires - dt.datetime.now(dt.UTC)).total_seconds()
    assert 3600 - EXEC_RENEW_MARGIN_SECONDS - 60 < left <= 3600 - EXEC_RENEW_MARGIN_SECONDS
    # Its deadline passes (an hour later, as the monotonic clock sees it): the plugin runs again.
    creds.exec_plugin.valid_until = time.monotonic() - 1
    assert await creds.headers() == {"Authorization": "Bearer tok-2"}
    assert len(runs(tmp_path / "runs.jsonl")) == 2


async def test_a_credential_expiring_within_the_margin_is_never_reused(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    path = write_kubeconfig(
        tmp_path, "https://127.0.0.1:6443", None, env={**plugin_env, "K2T_TEST_TTL": "5"}
    )
    creds = from_kubeconfig([path])
    assert await creds.headers() == {"Authorization": "Bearer tok-1"}
    assert await creds.headers() == {"Authorization": "Bearer tok-2"}


# --- 401 and renewal, over TLS -------------------------------------------------------------------


@pytest.fixture
async def tls_server(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, Pki, list[dict[str, Any]], dict[str, Any]]]:
    """HTTPS on 127.0.0.1 that accepts only the bearer token in ``rules["token"]`` (401
    otherwise) and records the Authorization header and client certificate CN of each request;
    with ``rules["require_cert"]`` a client certificate signed by the CA is required."""
    pki = make_pki(tmp_path / "pki")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    issue_serving_cert(pki, cert, key, name="kubernetes", ips=["127.0.0.1"])
    seen: list[dict[str, Any]] = []
    rules: dict[str, Any] = {"token": "tok-2"}

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in (peer or {}).get("subject", ()))
        seen.append({"auth": request.headers.get("Authorization"), "cn": subject.get("commonName")})
        ok = (
            subject.get("commonName") == "plugin-user"
            if rules.get("require_cert")
            else request.headers.get("Authorization") == f"Bearer {rules['token']}"
        )
        if not ok:
            return web.json_response(
                {"kind": "Status", "code": 401, "message": "Unauthorized"}, status=401
            )
        return web.json_response({"kind": "APIResourceList", "resources": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_OPTIONAL
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}", pki, seen, rules
    await runner.cleanup()


async def test_a_401_runs_the_plugin_again_and_retries_once(
    tmp_path: Path,
    plugin_env: dict[str, str],
    tls_server: tuple[str, Pki, list[dict[str, Any]], dict[str, Any]],
) -> None:
    server, pki, seen, rules = tls_server
    path = write_kubeconfig(
        tmp_path, server, pki.ca_cert.read_bytes(), env={**plugin_env, "K2T_TEST_TTL": "3600"}
    )
    client = RestClient(from_kubeconfig([path]))
    try:
        # tok-1 is still "valid" by its expiry, but the server revoked it: 401, renew, retry.
        assert await client.request("GET", "/apis") == {"kind": "APIResourceList", "resources": []}
        assert [s["auth"] for s in seen] == ["Bearer tok-1", "Bearer tok-2"]
        assert len(runs(tmp_path / "runs.jsonl")) == 2
        # The renewed token is kept: the next call runs nothing.
        await client.request("GET", "/apis")
        assert seen[-1]["auth"] == "Bearer tok-2" and len(runs(tmp_path / "runs.jsonl")) == 2
        # A server that refuses every token: one renewal, then the 401 is the answer (no loop).
        rules["token"] = "never"
        before = len(seen)
        with pytest.raises(ApiError) as refused:
            await client.request("GET", "/apis")
        assert refused.value.status == 401
        assert [s["auth"] for s in seen[before:]] == ["Bearer tok-2", "Bearer tok-3"]
    finally:
        await client.close()


async def test_a_static_token_is_not_retried_after_a_401(
    tmp_path: Path, tls_server: tuple[str, Pki, list[dict[str, Any]], dict[str, Any]]
) -> None:
    server, pki, seen, _ = tls_server
    path = write_kubeconfig(tmp_path, server, pki.ca_cert.read_bytes())
    config = yaml.safe_load(path.read_text())
    config["users"][0]["user"] = {"token": "static"}
    path.write_text(yaml.safe_dump(config))
    client = RestClient(from_kubeconfig([path]))
    try:
        with pytest.raises(ApiError):
            await client.request("GET", "/apis")
        assert [s["auth"] for s in seen] == ["Bearer static"]
    finally:
        await client.close()


async def test_a_client_certificate_from_the_plugin_is_presented(
    tmp_path: Path,
    plugin_env: dict[str, str],
    tls_server: tuple[str, Pki, list[dict[str, Any]], dict[str, Any]],
) -> None:
    server, pki, seen, rules = tls_server
    rules["require_cert"] = True
    issue_client_cert(pki, "plugin-user", "plugin-user", ())
    env = {
        **plugin_env,
        "K2T_TEST_CERT": str(pki.client_cert("plugin-user")),
        "K2T_TEST_KEY": str(pki.client_key("plugin-user")),
    }
    path = write_kubeconfig(tmp_path, server, pki.ca_cert.read_bytes(), env=env)
    creds = from_kubeconfig([path])
    client = RestClient(creds)
    try:
        assert await client.request("GET", "/apis") is not None
        assert seen[-1] == {"auth": None, "cn": "plugin-user"}
        cert, key = creds.client_certificate()
        assert cert == pki.client_cert("plugin-user").read_bytes()
        assert key == pki.client_key("plugin-user").read_bytes()
    finally:
        await client.close()
