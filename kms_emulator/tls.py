"""HTTPS for the emulator: a generated CA and server certificate, or given files.

A generated CA lives only as long as the emulator that made it (its private key
is never written anywhere but the emulator's own temporary directory), so a
client that trusts it trusts this one emulator run and nothing else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_NAMES", "TlsFiles", "generate", "server_context"]

#: Names every generated certificate covers: the loopback addresses and localhost.
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_VALIDITY = dt.timedelta(days=30)
_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a server identity; ``ca_file`` is None for given files."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


def generate(directory: Path, names: Sequence[str]) -> TlsFiles:
    """A fresh CA and a server certificate for ``names`` (DNS names or IPs).

    Writes ``ca.pem``, ``cert.pem`` (server certificate then CA) and ``key.pem``
    (mode 0600) into ``directory``. EC P-256 keys: quick to make, and both SDKs'
    TLS stacks (OpenSSL through requests/urllib3 and aiohttp) accept them.
    """
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "kms-emulator test CA")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    unique = list(dict.fromkeys([*names, *DEFAULT_NAMES]))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in unique]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", ca_file)
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    files.cert_file.write_bytes(
        server_cert.public_bytes(pem) + ca_cert.public_bytes(pem)
    )
    key_bytes = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key_bytes)
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``files``; OSError/SSLError if unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    return context


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
