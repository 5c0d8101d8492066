"""Certificates for the local control plane, made with ``cryptography`` (no openssl, no cfssl).

One CA signs everything: the apiserver's serving certificate, a client certificate per component
(admin in ``system:masters``, controller-manager and scheduler with their built-in identities so
the bootstrap RBAC applies to them) and the service-account signing key pair.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=30)

#: DNS names the apiserver's serving certificate carries besides the loopback ones.
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

#: Client identities written by :func:`make_pki` (file stem -> (CN, O)).
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("k2think-e2e-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
}


@dataclass(frozen=True)
class Pki:
    """Paths of everything :func:`make_pki` wrote (all PEM)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        """RSA private key the apiserver signs service-account tokens with."""
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
    else:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
    builder = builder.add_extension(usage, critical=True)
    ekus = []
    if server:
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path, *, service_ip: str = "10.96.0.1") -> Pki:
    """Write a fresh CA and every certificate and key the control plane needs into ``directory``.

    ``service_ip`` is the ClusterIP of the ``kubernetes`` Service (first address of the service
    range); it goes into the apiserver's certificate like on a real cluster.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    ca_key = _ec_key()
    ca_name = _name("k2think-e2e-ca")
    ca_cert = _sign(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)

    server_key = _ec_key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_DNS_NAMES]
    sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
    ]
    server_cert = _sign(
        _name("kube-apiserver"),
        server_key.public_key(),
        ca_name,
        ca_key,
        server=True,
        sans=sans,
    )
    _write_key(pki.apiserver_key, server_key)
    _write_cert(pki.apiserver_cert, server_cert)

    for stem, (cn, org) in CLIENTS.items():
        key = _ec_key()
        cert = _sign(_name(cn, org), key.public_key(), ca_name, ca_key, client=True)
        _write_key(pki.client_key(stem), key)
        _write_cert(pki.client_cert(stem), cert)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_client_cert(
    pki: Pki, stem: str, cn: str, orgs: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """Sign one more client certificate with the harness CA (e.g. a service account's identity:
    CN ``system:serviceaccount:<ns>:<name>``, which RBAC matches exactly like that account's
    token). Returns (certificate, key) paths."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    key = _ec_key()
    cert = _sign(x509.Name(attrs), key.public_key(), ca_cert.subject, ca_key, client=True)
    _write_key(pki.client_key(stem), key)
    _write_cert(pki.client_cert(stem), cert)
    return pki.client_cert(stem), pki.client_key(stem)


def issue_serving_cert(pki: Pki, cert: Path, key: Path, *, name: str, ips: Sequence[str]) -> None:
    """A serving certificate signed by the cluster's CA, for a local webhook server (Kueue's).

    The API server trusts it through the webhook configuration's ``caBundle`` (the CA file).
    """
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    server_key = _ec_key()
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    signed = _sign(
        _name(name), server_key.public_key(), ca_cert.subject, ca_key, server=True, sans=sans
    )
    cert.parent.mkdir(parents=True, exist_ok=True)
    _write_key(key, server_key)
    _write_cert(cert, signed)
