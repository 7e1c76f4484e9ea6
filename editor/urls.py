"""Session URLs: ``ws://host[:port]/<document-id>`` (or ``wss://``), checked for the Join dialog.

An invite link carries a token and a certificate pin in its fragment,
``wss://host:port/<document-id>#token=...&pin=sha256:...``; the fragment is
checked here and kept in :attr:`SessionUrl.url` (the client takes it off before
connecting), and :attr:`SessionUrl.address` is the URL without it.

:func:`parse_session_url` either returns a :class:`SessionUrl` or raises
:class:`InvalidSessionUrl` whose message is the reason shown to the user.
The document id follows the one rule shared with the client and the server
(:mod:`crdt_sync.sync.document_ids`): the dialog accepts exactly the ids the
server accepts. The checked URL is canonical: the id percent-encoded
(``ws://host/Notizen für Mai`` becomes ``ws://host/Notizen%20f%C3%BCr%20Mai``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from crdt_sync.sync.access import split_invite
from crdt_sync.sync.document_ids import (
    document_id_from_url_path,
    document_id_problem,
    document_url_path,
)

__all__ = ["InvalidSessionUrl", "SessionUrl", "parse_session_url"]


class InvalidSessionUrl(ValueError):
    """The text is not a session URL; ``str(error)`` says why, for the user."""


@dataclass(frozen=True, slots=True)
class SessionUrl:
    """A checked session URL."""

    url: str
    scheme: str
    host: str
    port: int
    document_id: str
    token: str | None = None
    pin: str | None = None

    @property
    def address(self) -> str:
        """The URL without the invite fragment (safe to show and to log)."""
        return self.url.partition("#")[0]


def parse_session_url(text: str) -> SessionUrl:
    """Check ``text`` and return its parts; raises :class:`InvalidSessionUrl` with the reason."""
    text = text.strip()
    if not text:
        raise InvalidSessionUrl("Paste the session link, like ws://192.168.1.20:8080/notes.")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise InvalidSessionUrl(f"The port is not valid ({error}).") from None
    if parts.scheme not in ("ws", "wss"):
        shown = parts.scheme or "none"
        raise InvalidSessionUrl(f"The link must start with ws:// or wss:// (scheme: {shown}).")
    if not parts.hostname:
        raise InvalidSessionUrl("The link has no host name or address.")
    if parts.username or parts.password:
        raise InvalidSessionUrl("The link must not contain a user name or password.")
    if parts.query:
        raise InvalidSessionUrl("The link must not have a ?query.")
    try:
        invite = split_invite(text)
    except ValueError as error:
        raise InvalidSessionUrl(f"The link's #part is not a valid invite: {error}.") from None
    if invite.pin is not None and parts.scheme != "wss":
        raise InvalidSessionUrl("A link with a certificate pin must start with wss://.")
    document_id = document_id_from_url_path(parts.path) if parts.path.startswith("/") else None
    if not document_id:
        raise InvalidSessionUrl("The link has no document id after the host (…/<document-id>).")
    problem = document_id_problem(document_id)
    if problem is not None:
        raise InvalidSessionUrl(f"The document id is not allowed: {problem}.")
    if port is None:
        port = 443 if parts.scheme == "wss" else 80
    canonical = f"{parts.scheme}://{parts.netloc}{document_url_path(document_id)}"
    if parts.fragment:
        fields = {"token": invite.token, "pin": invite.pin}
        canonical += "#" + urllib.parse.urlencode(
            {key: value for key, value in fields.items() if value}, safe=":"
        )
    return SessionUrl(
        canonical, parts.scheme, parts.hostname, port, document_id, invite.token, invite.pin
    )
