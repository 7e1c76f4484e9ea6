"""Self-signed certificates and their pins (server/tls.py)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from server.tls import certificate_pin, create_self_signed_certificate, server_ssl_context


def test_a_self_signed_certificate_loads_and_its_pin_is_stable(tmp_path: Path) -> None:
    cert, key = tmp_path / "c" / "cert.pem", tmp_path / "c" / "key.pem"
    pin = create_self_signed_certificate(cert, key, ["localhost", "127.0.0.1", "::1"])
    assert pin.startswith("sha256:") and len(pin) == 7 + 64
    assert certificate_pin(cert) == pin
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    context = server_ssl_context(cert, key)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    other = create_self_signed_certificate(tmp_path / "o.pem", tmp_path / "ok.pem")
    assert other != pin
