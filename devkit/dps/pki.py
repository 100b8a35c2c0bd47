"""The emulator's own small PKI: a CA and a TLS server certificate.

The CA is created once per state directory and reused, so clients that already trust
``ca.pem`` keep trusting a restarted emulator. The server certificate is re-issued whenever
the set of names/addresses it must cover changes.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Iterable, List

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SERVER_SANS = "server-sans.json"


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files the server and its clients use."""

    ca_cert: str
    server_cert: str
    server_key: str


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _create_ca(directory: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-tpm devkit"),
        x509.NameAttribute(NameOID.COMMON_NAME, "edge-tpm devkit DPS emulator CA"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(os.path.join(directory, CA_KEY), _key_pem(key))
    with open(os.path.join(directory, CA_CERT), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _split_names(names: Iterable[str]) -> List[x509.GeneralName]:
    out: List[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _issue_server_cert(directory: str, names: List[str]) -> None:
    with open(os.path.join(directory, CA_KEY), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)
    with open(os.path.join(directory, CA_CERT), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_split_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(os.path.join(directory, SERVER_KEY), _key_pem(key))
    with open(os.path.join(directory, SERVER_CERT), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, SERVER_SANS), "w", encoding="utf-8") as f:
        json.dump(names, f)


def ensure_tls(directory: str, names: Iterable[str]) -> TlsFiles:
    """Create (or reuse) the CA in ``directory`` and a server certificate covering ``names``.

    ``names`` are host names and IP addresses; duplicates are dropped, order is kept (the first
    one becomes the subject CN).
    """
    os.makedirs(directory, exist_ok=True)
    wanted: List[str] = []
    for n in names:
        if n and n not in wanted:
            wanted.append(n)
    if not os.path.exists(os.path.join(directory, CA_CERT)) or not os.path.exists(
        os.path.join(directory, CA_KEY)
    ):
        _create_ca(directory)
        current = None
    else:
        try:
            with open(os.path.join(directory, SERVER_SANS), encoding="utf-8") as f:
                current = json.load(f)
        except (OSError, ValueError):
            current = None
    if current != wanted or not os.path.exists(os.path.join(directory, SERVER_KEY)):
        _issue_server_cert(directory, wanted)
    return TlsFiles(
        ca_cert=os.path.join(directory, CA_CERT),
        server_cert=os.path.join(directory, SERVER_CERT),
        server_key=os.path.join(directory, SERVER_KEY),
    )
