"""TLS for the server: its SSL context, certificate pins, self-signed certificates.

``crdt-sync-server --tls-cert F --tls-key F`` serves ``wss://`` with
:func:`server_ssl_context`. A server without a certificate from an authority
its clients trust (a LAN session hosted from the app) uses a self-signed one
(:func:`create_self_signed_certificate`) and hands its pin
(:func:`certificate_pin`: ``sha256:`` and the SHA-256 of the DER certificate)
to its clients in the invite link; a client given a pin accepts exactly that
certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from crdt_sync.sync.access import certificate_fingerprint

__all__ = ["certificate_pin", "create_self_signed_certificate", "server_ssl_context"]


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) with this certificate and key.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files do not hold a matching certificate and key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def certificate_pin(cert_file: Path) -> str:
    """The pin (``sha256:<hex>``) of the first certificate in the PEM file ``cert_file``.

    Raises:
        OSError: unreadable.
        ValueError: no PEM certificate in it.
    """
    text = Path(cert_file).read_text(encoding="ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{cert_file} holds no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)] + "\n")
    return certificate_fingerprint(der)


def create_self_signed_certificate(
    cert_file: Path,
    key_file: Path,
    hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    *,
    days: int = 3650,
    common_name: str = "crdt-sync-server",
) -> str:
    """Write a new self-signed certificate (ECDSA P-256) and its key; return its pin.

    ``hosts`` (names and IP addresses) go into the certificate's subject
    alternative names; clients that pin the certificate do not check names, but
    a client that trusts it as an authority does. The key file is created with
    mode 0600.
    """
    # cryptography is only needed here (hosting from the app), not to serve.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alternatives: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternatives.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER))
