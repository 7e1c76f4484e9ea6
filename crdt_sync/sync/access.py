"""Access on the client side: roles, invite links and certificate pins.

* :class:`Role`: what a connection may do, as the server's handshake response
  says (wire value: one byte, 0 = write, 1 = read).
* :func:`split_invite`: an invite link ``ws[s]://host:port/doc#token=...&pin=...``
  becomes the URL to open (the fragment removed: it never goes on the wire) and
  the token and pin it carried.
* :func:`certificate_fingerprint` / :func:`parse_pin`: a pin is
  ``"sha256:"`` followed by the 64 hex digits of the SHA-256 of the server
  certificate's DER bytes; a client with a pin accepts exactly that
  certificate (for self-signed servers) and nothing else.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CertificatePinError",
    "Invite",
    "Role",
    "certificate_fingerprint",
    "parse_pin",
    "pin_matches",
    "split_invite",
]

_PIN = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_PIN_PREFIX: Final = "sha256:"


class Role(enum.IntEnum):
    """What a connection may do on its document. Values are wire values."""

    WRITE = 0
    """Receive and send changes."""
    READ = 1
    """Receive the document, changes and presence; every change sent is refused."""

    @property
    def label(self) -> str:
        """``"write"`` or ``"read"`` (as in tokens and on the command line)."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: object) -> Role:
        """The role called ``label``; ``ValueError`` for anything else."""
        for role in cls:
            if label == role.label:
                return role
        raise ValueError(f"a role is 'write' or 'read', not {label!r}")


class CertificatePinError(ConnectionError):
    """The server's TLS certificate is not the pinned one (a security error:
    the client does not connect, and does not fall back to anything)."""


def certificate_fingerprint(der: bytes) -> str:
    """The pin of a certificate given as DER bytes: ``"sha256:<64 hex digits>"``."""
    return _PIN_PREFIX + hashlib.sha256(der).hexdigest()


def parse_pin(pin: str) -> str:
    """``pin`` normalised (lowercase hex); ``ValueError`` unless ``sha256:<64 hex>``."""
    match = _PIN.match(pin.strip())
    if match is None:
        raise ValueError(f"a certificate pin is 'sha256:' and 64 hex digits, not {pin!r}")
    return _PIN_PREFIX + match.group(1).lower()


def pin_matches(pin: str, der: bytes) -> bool:
    """Whether the certificate ``der`` is the one ``pin`` names (constant time)."""
    return hmac.compare_digest(parse_pin(pin), certificate_fingerprint(der))


@dataclass(frozen=True, slots=True)
class Invite:
    """An invite link taken apart: ``url`` (no fragment), ``token`` and ``pin``."""

    url: str
    token: str | None
    pin: str | None


def split_invite(link: str) -> Invite:
    """Take the token and pin out of an invite link's fragment.

    ``ws://host:port/doc#token=T&pin=sha256:H`` gives ``Invite("ws://host:port/doc",
    "T", "sha256:h")``; a URL without a fragment gives it unchanged with no token
    and no pin.

    Raises:
        ValueError: a fragment that is not ``token=...`` and/or ``pin=...``, or a
            malformed pin.
    """
    url, _, fragment = link.strip().partition("#")
    if not fragment:
        return Invite(url, None, None)
    try:
        fields = urllib.parse.parse_qs(fragment, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError("the link's #fragment is not token=...&pin=...") from None
    unknown = set(fields) - {"token", "pin"}
    if unknown:
        raise ValueError(f"the link's #fragment has unknown fields: {', '.join(sorted(unknown))}")
    if any(len(values) != 1 for values in fields.values()):
        raise ValueError("the link's #fragment repeats a field")
    token = fields.get("token", [None])[0] or None
    pin_text = fields.get("pin", [None])[0]
    pin = parse_pin(pin_text) if pin_text is not None else None
    return Invite(url, token, pin)
