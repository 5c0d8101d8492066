"""Where the operator's API credentials come from: the pod's service account, or a kubeconfig
(static tokens and certificates, or an exec credential plugin), refreshed when they expire.

Why home-made: the operator's client is a dozen REST calls on aiohttp (``runtime/kube.py``), and
the libraries that read kubeconfigs fully are the generated clients: the official ``kubernetes``
package costs the operator ~49 MiB for a login and one call (e2e/bench/client_memory.py,
docs/benchmarks.md), and kopf imports it whenever it is installed. kopf's own kubeconfig reader
(``login_with_kubeconfig``) takes tokens and certificates but not exec plugins, which is how EKS,
GKE and AKS kubeconfigs authenticate (``aws eks get-token``, ``gke-gcloud-auth-plugin``,
``kubelogin``). The exec protocol is small and versioned (client-go ``plugin/pkg/client/auth/exec``,
``client.authentication.k8s.io/v1``): run the command with ``KUBERNETES_EXEC_INFO`` in its
environment, read an ``ExecCredential`` from its stdout, keep it until its
``expirationTimestamp`` (or until the server answers 401), run it again. kopf's watches get the
same credentials through a login handler (``as_connection_info``), with the expiration, so kopf
logs in again when they expire.

In a pod (``KUBERNETES_SERVICE_HOST`` set and no ``KUBECONFIG``) it does what client-go's
``rest.InClusterConfig`` does: the token file (re-read every minute: kubelet rotates projected
tokens) and ``ca.crt`` of the mounted service account.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: In-cluster credentials (client-go's ``rest.InClusterConfig`` reads the same files).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Projected service-account tokens rotate; client-go re-reads the file every minute too.
TOKEN_REREAD_SECONDS = 60.0
#: An exec credential is renewed this long before it expires (clock skew, a request in flight).
EXEC_RENEW_MARGIN_SECONDS = 30.0
#: The exec credential API versions client-go accepts (v1alpha1 was removed in 1.24).
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT_SECONDS = 60.0


class CredentialsError(Exception):
    """No usable credentials: no service account, no kubeconfig, or a plugin that failed."""


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")


@dataclass
class ExecPlugin:
    """A kubeconfig ``user.exec`` stanza and the credential it last produced."""

    api_version: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cluster: Mapping[str, Any] | None = None
    install_hint: str = ""
    #: The last ExecCredential's status and when it stops being valid (monotonic; None: until a
    #: 401 says otherwise).
    status: Mapping[str, Any] | None = None
    valid_until: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def from_kubeconfig(
        cls, stanza: Mapping[str, Any], base: Path, cluster: Mapping[str, Any] | None
    ) -> ExecPlugin:
        api_version = str(stanza.get("apiVersion") or "")
        if api_version not in EXEC_API_VERSIONS:
            raise CredentialsError(
                f"exec plugin apiVersion {api_version!r} is not supported "
                f"(use one of {', '.join(EXEC_API_VERSIONS)})"
            )
        command = str(stanza.get("command") or "")
        if not command:
            raise CredentialsError("exec plugin without a command")
        # client-go: a command with a path separator is relative to the kubeconfig's folder.
        if os.sep in command and not os.path.isabs(command):
            command = str(base / command)
        env = tuple((str(e["name"]), str(e["value"])) for e in stanza.get("env") or [])
        return cls(
            api_version=api_version,
            command=command,
            args=tuple(str(a) for a in stanza.get("args") or []),
            env=env,
            cluster=cluster if stanza.get("provideClusterInfo") else None,
            install_hint=str(stanza.get("installHint") or ""),
        )

    def exec_info(self) -> str:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = dict(self.cluster)
        return json.dumps({"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec})

    def fresh(self, now: float) -> bool:
        return self.status is not None and (self.valid_until is None or now < self.valid_until)

    async def credential(self, *, renew: bool = False) -> Mapping[str, Any]:
        """The current ExecCredential status, running the plugin when there is none, it
        expired, or ``renew`` (the server refused the last one)."""
        async with self.lock:
            if renew:
                self.status = None
            if not self.fresh(time.monotonic()):
                self.status, self.valid_until = await self._run()
            assert self.status is not None
            return self.status

    async def _run(self) -> tuple[Mapping[str, Any], float | None]:
        environ = {**os.environ, **dict(self.env), "KUBERNETES_EXEC_INFO": self.exec_info()}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                env=environ,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as error:
            hint = f" ({self.install_hint})" if self.install_hint else ""
            raise CredentialsError(f"exec plugin {self.command}: {error.strerror}{hint}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), EXEC_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            raise CredentialsError(f"exec plugin {self.command} did not answer") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip()[-500:]
            raise CredentialsError(
                f"exec plugin {self.command} exited {proc.returncode}: {message}"
            )
        return parse_exec_credential(out, self.api_version, time.monotonic(), time.time())


def parse_exec_credential(
    raw: bytes, api_version: str, monotonic_now: float, wall_now: float
) -> tuple[Mapping[str, Any], float | None]:
    """An ExecCredential's status and when it stops being valid (monotonic clock), as client-go
    checks it: the same apiVersion as asked, a token or a certificate and key."""
    try:
        doc = json.loads(raw)
    except ValueError as error:
        raise CredentialsError(f"exec plugin output is not JSON: {error}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise CredentialsError("exec plugin output is not an ExecCredential")
    if doc.get("apiVersion") != api_version:
        raise CredentialsError(
            f"exec plugin answered {doc.get('apiVersion')!r}, was asked for {api_version!r}"
        )
    status = doc.get("status") or {}
    has_cert = bool(status.get("clientCertificateData")) and bool(status.get("clientKeyData"))
    if not status.get("token") and not has_cert:
        raise CredentialsError("exec plugin returned neither a token nor a client certificate")
    expires = status.get("expirationTimestamp")
    if not expires:
        return status, None
    try:
        at = dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialsError(
            f"exec plugin expirationTimestamp {expires!r} is not RFC 3339"
        ) from None
    return status, monotonic_now + (at - wall_now) - EXEC_RENEW_MARGIN_SECONDS


@dataclass
class Credentials:
    """How to reach and authenticate to one API server."""

    server: str
    ca_data: bytes | None = None
    insecure: bool = False
    #: A static client certificate and key (PEM), if any.
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    exec_plugin: ExecPlugin | None = None
    default_namespace: str | None = None
    _file_token: str = ""
    _file_read_at: float = -TOKEN_REREAD_SECONDS
    _context: ssl.SSLContext | None = None
    _context_cert: bytes | None = None

    async def headers(self, *, renew: bool = False) -> dict[str, str]:
        """The Authorization header for the next request (empty with certificates only)."""
        token = self.token
        if self.token_file:
            now = time.monotonic()
            if renew or now - self._file_read_at >= TOKEN_REREAD_SECONDS:
                self._file_token = Path(self.token_file).read_text(encoding="utf-8").strip()
                self._file_read_at = now
            token = self._file_token
        if self.exec_plugin is not None:
            status = await self.exec_plugin.credential(renew=renew)
            token = status.get("token") or token
            self._use_client_cert(status)
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def renewable(self) -> bool:
        """Whether a 401 may go away with fresh credentials."""
        return self.exec_plugin is not None or bool(self.token_file)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (one object: a renewed exec certificate is
        loaded into it, and new connections present it)."""
        if not self.server.startswith("https"):
            return None
        if self._context is None:
            context = ssl.create_default_context(
                cadata=self.ca_data.decode() if self.ca_data else None
            )
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert_data and self.key_data:
                _load_cert_chain(context, self.cert_data, self.key_data)
            self._context = context
        return self._context

    def client_certificate(self) -> tuple[bytes | None, bytes | None]:
        """The client certificate and key (PEM) in use: the exec plugin's, else the static."""
        status = self.exec_plugin.status if self.exec_plugin is not None else None
        cert, key = (status or {}).get("clientCertificateData"), (status or {}).get("clientKeyData")
        if cert and key:
            return str(cert).encode(), str(key).encode()
        return self.cert_data, self.key_data

    def _use_client_cert(self, status: Mapping[str, Any]) -> None:
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if not cert or not key or str(cert).encode() == self._context_cert:
            return
        context = self.ssl_context()
        if context is not None:
            _load_cert_chain(context, str(cert).encode(), str(key).encode())
            self._context_cert = str(cert).encode()

    async def expiration(self) -> dt.datetime | None:
        """When the current credential expires (UTC), for kopf's re-login; None: never."""
        if self.exec_plugin is None:
            return None
        await self.exec_plugin.credential()
        until = self.exec_plugin.valid_until
        if until is None:
            return None
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=until - time.monotonic())


def _load_cert_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl takes a certificate chain from files only: written to a private temporary folder,
    loaded, removed."""
    with tempfile.TemporaryDirectory(prefix="k2t-cert-") as folder:
        cert_path, key_path = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)


def _read(path_or_none: Any, data_or_none: Any, base: Path) -> bytes | None:
    """A kubeconfig ``*-data`` field (base64) or its file form (relative to the kubeconfig)."""
    if data_or_none:
        return base64.b64decode(str(data_or_none))
    if path_or_none:
        path = Path(os.path.expanduser(str(path_or_none)))
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    environ = os.environ if environ is None else environ
    value = environ.get("KUBECONFIG")
    if value:
        return [Path(os.path.expanduser(p)) for p in value.split(os.pathsep) if p.strip()]
    default = Path(os.path.expanduser("~/.kube/config"))
    return [default] if default.exists() else []


def from_kubeconfig(paths: Sequence[Path], context_name: str | None = None) -> Credentials:
    """The current (or named) context of merged kubeconfig files; the first value of a name
    wins, as kubectl merges them."""
    if not paths:
        raise CredentialsError("no in-cluster service account and no kubeconfig")
    current: str | None = None
    named: dict[str, dict[str, tuple[Mapping[str, Any], Path]]] = {
        "contexts": {},
        "clusters": {},
        "users": {},
    }
    for path in paths:
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as error:
            raise CredentialsError(f"kubeconfig {path}: {error.strerror}") from None
        current = current or config.get("current-context")
        for section, items in named.items():
            singular = section[:-1]
            for item in config.get(section) or []:
                items.setdefault(str(item.get("name")), (item.get(singular) or {}, path.parent))
    name = context_name or current
    if not name or name not in named["contexts"]:
        raise CredentialsError(f"kubeconfig: context {name!r} not found")
    context, _ = named["contexts"][name]
    cluster, cluster_base = named["clusters"].get(str(context.get("cluster")), ({}, Path()))
    user, user_base = named["users"].get(str(context.get("user")), ({}, Path()))
    if not cluster.get("server"):
        raise CredentialsError(f"kubeconfig: context {name!r} has no cluster server")
    ca = _read(
        cluster.get("certificate-authority"),
        cluster.get("certificate-authority-data"),
        cluster_base,
    )
    plugin = None
    if user.get("exec"):
        info = {
            "server": cluster["server"],
            "certificate-authority-data": base64.b64encode(ca).decode() if ca else None,
            "insecure-skip-tls-verify": bool(cluster.get("insecure-skip-tls-verify")),
        }
        plugin = ExecPlugin.from_kubeconfig(
            user["exec"], user_base, {k: v for k, v in info.items() if v}
        )
    token_file = user.get("tokenFile")
    return Credentials(
        server=str(cluster["server"]),
        ca_data=ca,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_data=_read(
            user.get("client-certificate"), user.get("client-certificate-data"), user_base
        ),
        key_data=_read(user.get("client-key"), user.get("client-key-data"), user_base),
        token=user.get("token") or None,
        token_file=str(user_base / token_file) if token_file else None,
        exec_plugin=plugin,
        default_namespace=context.get("namespace"),
    )


def from_service_account(directory: str | None = None) -> Credentials:
    """client-go's ``InClusterConfig``: the Service's host and port, the account's files."""
    directory = directory or SERVICE_ACCOUNT_DIR
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT_HTTPS") or os.environ.get(
        "KUBERNETES_SERVICE_PORT", "443"
    )
    host = f"[{host}]" if ":" in host else host
    namespace_file = Path(directory) / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_data=(Path(directory) / "ca.crt").read_bytes(),
        token_file=f"{directory}/token",
        default_namespace=(namespace_file.read_text().strip() if namespace_file.exists() else None),
    )


def load_credentials() -> Credentials:
    """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    if in_cluster():
        return from_service_account()
    return from_kubeconfig(kubeconfig_paths())
