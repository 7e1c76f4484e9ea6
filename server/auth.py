"""Invite tokens: who may open which document, with which role, until when.

Theory of operation
-------------------
A token is a JSON Web Token (RFC 7519) signed with HMAC-SHA256 by the
server's *secret* (32 random bytes kept in a file readable by its owner
only). Its claims are:

* ``doc``: the document id it opens, or a prefix ending in ``*``
  (``team-*`` opens every document whose id starts with ``team-``; ``*``
  alone opens every document);
* ``role``: ``"write"`` (edit) or ``"read"`` (receive only);
* ``exp``: the expiry, in whole seconds since the epoch. A token is valid
  while ``now < exp``: there is no grace period;
* ``iat``: when it was issued (informational).

The verifier accepts HS256 only (the algorithm list is pinned, so a token
claiming ``alg: none`` or an asymmetric algorithm is refused) and requires
every claim. Changing the secret (deleting the file, or hosting again from
the app) revokes every token signed with the old one.

The token travels in the handshake's ``auth_token`` field, never in the
URL's request line (request lines end up in proxy and server logs). An
invite link carries it in the URL *fragment*, which a client strips before
connecting: ``ws://host:port/doc#token=...`` (see :func:`invite_link`).

Why PyJWT rather than itsdangerous: a JWT is a documented format that a
client or an operator in another language can read and mint with standard
tools, the expiry is a claim inside the signed token (itsdangerous' timed
tokens store the signing time and leave the lifetime to the verifier), and
PyJWT checks the algorithm against an explicit allow-list.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

from crdt_sync.sync import Role

from .exceptions import ServerError
from .registry import validate_document_id

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "SECRET_BYTES",
    "Grant",
    "InvalidTokenError",
    "SecretFileError",
    "TokenAuthority",
    "default_secret_path",
    "invite_link",
    "load_or_create_secret",
    "parse_duration",
]

SECRET_BYTES: Final = 32
"""Length of a server secret (HMAC-SHA256 wants at least its 32-byte output)."""
DEFAULT_TOKEN_LIFETIME: Final = 7 * 24 * 3600
"""Seconds a token lives unless told otherwise (7 days)."""
_ALGORITHM: Final = "HS256"
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhd])\s*$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_LIFETIME: Final = 10 * 365 * 86400


class InvalidTokenError(ServerError):
    """A token was refused; ``str(error)`` is the reason, fit to show the client."""


class SecretFileError(ServerError):
    """The secret file cannot be read, written or is malformed."""


def parse_duration(text: str) -> int:
    """Seconds in ``"90s"``, ``"15m"``, ``"12h"`` or ``"7d"`` (a number, then a unit).

    Raises:
        ValueError: anything else, zero, or more than ten years.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"a duration is a number and a unit s, m, h or d (like 7d), not {text!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= _MAX_LIFETIME:
        raise ValueError(f"a duration is between 1 second and 10 years, not {text!r}")
    return seconds


def _check_document_pattern(pattern: str) -> str:
    """``pattern`` if it is a document id or an id prefix ending in ``*``."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if prefix:
            # A prefix obeys the id rules itself ("team-" is a valid id).
            validate_document_id(prefix)
        return pattern
    return validate_document_id(pattern)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: ``document`` (an id, or a prefix ending in
    ``*``), ``role``, until ``expires_at`` (seconds since the epoch, exclusive)."""

    document: str
    role: Role
    expires_at: int

    def covers(self, document_id: str) -> bool:
        """Whether this grant opens ``document_id``."""
        if self.document.endswith("*"):
            return document_id.startswith(self.document[:-1])
        return document_id == self.document


class TokenAuthority:
    """Signs and verifies tokens with one secret.

    ``clock`` returns the time in seconds since the epoch (``time.time``;
    tests pass their own).
    """

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"a secret has at least {SECRET_BYTES} bytes, not {len(secret)}")
        self._secret = bytes(secret)
        self.clock = clock

    @classmethod
    def generate(cls, *, clock: Callable[[], float] = time.time) -> TokenAuthority:
        """An authority with a fresh random secret (kept in memory only)."""
        return cls(secrets.token_bytes(SECRET_BYTES), clock=clock)

    @classmethod
    def from_file(
        cls, path: Path, *, clock: Callable[[], float] = time.time
    ) -> tuple[TokenAuthority, bool]:
        """The authority of the secret in ``path`` (created if missing), and whether it
        was created now. Raises :class:`SecretFileError`."""
        secret, created = load_or_create_secret(path)
        return cls(secret, clock=clock), created

    def issue(
        self,
        document: str,
        role: Role = Role.WRITE,
        lifetime: int = DEFAULT_TOKEN_LIFETIME,
    ) -> str:
        """A token opening ``document`` (an id, or a prefix ending in ``*``) with
        ``role`` for ``lifetime`` seconds from now.

        Raises:
            ValueError: an invalid document id or prefix, or a lifetime below 1 s.
        """
        _check_document_pattern(document)
        if lifetime < 1:
            raise ValueError(f"a token lives at least 1 second, not {lifetime}")
        now = self.clock()
        claims = {
            "doc": document,
            "role": role.label,
            "iat": math.floor(now),
            "exp": math.floor(now) + int(lifetime),
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str | None, document_id: str) -> Grant:
        """The grant of ``token`` for ``document_id``.

        Raises:
            InvalidTokenError: missing, malformed, forged (another secret),
                expired, or for another document; the message says which.
        """
        if not token:
            raise InvalidTokenError("this server requires an invite token; none was sent")
        try:
            # Times are checked below against our own clock (to the second);
            # ``iat`` is informational.
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={
                    "require": ["doc", "role", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidTokenError(
                "the invite token was not signed by this server (forged, or the server's"
                " secret changed since it was issued)"
            ) from None
        except jwt.InvalidTokenError as error:
            raise InvalidTokenError(f"the invite token is malformed ({error})") from None
        document, role_label, expires_at = claims["doc"], claims["role"], claims["exp"]
        if not isinstance(document, str) or not isinstance(expires_at, int):
            raise InvalidTokenError("the invite token is malformed (bad claim types)")
        try:
            _check_document_pattern(document)
            role = Role.from_label(role_label)
        except ValueError as error:
            raise InvalidTokenError(f"the invite token is malformed ({error})") from None
        grant = Grant(document, role, expires_at)
        now = self.clock()
        if now >= expires_at:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires_at))
            raise InvalidTokenError(f"the invite token expired at {when}")
        if not grant.covers(document_id):
            raise InvalidTokenError(
                f"the invite token opens {document!r}, not document {document_id!r}"
            )
        return grant


def default_secret_path(database: Path) -> Path:
    """Where the secret of the server storing its documents in ``database`` lives."""
    return database.with_name(database.name + ".secret")


def load_or_create_secret(path: Path) -> tuple[bytes, bool]:
    """The secret stored in ``path`` (hex text), creating it (mode 0600) if it does
    not exist; returns (secret, created).

    Raises:
        SecretFileError: unreadable, malformed, or readable by others.
    """
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
            created = True
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise SecretFileError(f"cannot use the secret file {path}: {error}") from None
    if os.name == "posix" and mode & 0o077:
        raise SecretFileError(
            f"the secret file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        secret = b""
    if len(secret) < SECRET_BYTES:
        raise SecretFileError(
            f"the secret file {path} does not hold {SECRET_BYTES} hex-encoded bytes;"
            " delete it to make a new one (this revokes every token)"
        )
    return secret, created


def invite_link(url: str, document_id: str | None, token: str, pin: str | None = None) -> str:
    """``url`` (``ws[s]://host:port`` or ``.../doc``) with the document and the token
    (and a certificate pin) in the fragment: ``ws://host:port/doc#token=...&pin=...``.

    The fragment never leaves the client: it strips it before connecting.

    Raises:
        ValueError: not a ws:// or wss:// URL, or no document named.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"an invite URL starts with ws:// or wss://HOST:PORT, not {url!r}")
    path = parts.path.strip("/")
    if not path:
        if not document_id or document_id.endswith("*"):
            raise ValueError("name the document in the URL (ws://HOST:PORT/DOC)")
        path = urllib.parse.quote(document_id, safe="")
    fragment = {"token": token}
    if pin is not None:
        fragment["pin"] = pin
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/" + path, "", urllib.parse.urlencode(fragment, safe=":"))
    )
