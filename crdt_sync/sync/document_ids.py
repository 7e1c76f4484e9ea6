"""The one rule for document ids, shared by the client, the server and the app.

A document id names a document on a server: it is the path of the session URL
(``ws://host:port/<document-id>``), the ``document_id`` of the handshake, a
key in the server's store and the text a user types in the Join dialog. The
rule:

* 1 to :data:`MAX_DOCUMENT_ID_LENGTH` characters (code points);
* not starting with ``.`` (no ``.``, ``..`` or hidden names);
* no ``/`` (an id is one path segment, never a path);
* no ``*`` (an invite token names a document or a prefix ending in ``*``:
  ``server/auth.py``);
* no control characters (Unicode category ``Cc``: C0, DEL, C1) and no lone
  surrogates (``Cs``, which UTF-8 cannot carry).

Everything else is allowed, letters of any script included (``Notizen``,
``заметки``, ``メモ``, ``meeting notes``). Characters a URL cannot carry
as they are (space, ``?``, ``#``, ``%``, non-ASCII) are percent-encoded in the
URL by whoever builds it (:func:`document_url_path`) and decoded by whoever
reads it (:func:`document_id_from_url_path`); the handshake carries the id
itself, in UTF-8.
"""

from __future__ import annotations

import unicodedata
import urllib.parse

__all__ = [
    "MAX_DOCUMENT_ID_LENGTH",
    "InvalidDocumentId",
    "document_id_from_url_path",
    "document_id_problem",
    "document_url_path",
    "validate_document_id",
]

#: Longest accepted document id, in characters (code points).
MAX_DOCUMENT_ID_LENGTH = 128

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs"})


class InvalidDocumentId(ValueError):
    """The text is not an allowed document id; ``str(error)`` says why."""


def document_id_problem(document_id: object) -> str | None:
    """Why ``document_id`` is not an allowed document id, or None when it is.

    The reason is a sentence for people (the Join dialog shows it as is).
    """
    if not isinstance(document_id, str):
        return f"a document id is text, not {type(document_id).__name__}"
    if not document_id:
        return "a document id cannot be empty"
    if len(document_id) > MAX_DOCUMENT_ID_LENGTH:
        return (
            f"a document id has at most {MAX_DOCUMENT_ID_LENGTH} characters, not {len(document_id)}"
        )
    if document_id.startswith("."):
        return "a document id cannot start with '.'"
    if "/" in document_id:
        return "a document id cannot contain '/'"
    if "*" in document_id:
        return "a document id cannot contain '*'"
    for character in document_id:
        if unicodedata.category(character) in _FORBIDDEN_CATEGORIES:
            return f"a document id cannot contain the control character U+{ord(character):04X}"
    return None


def validate_document_id(document_id: object) -> str:
    """Return ``document_id`` if it is an allowed document id (see the module docstring).

    Raises:
        InvalidDocumentId: anything else (a ``ValueError``), with the reason.
    """
    problem = document_id_problem(document_id)
    if problem is not None or not isinstance(document_id, str):
        raise InvalidDocumentId(f"invalid document id {document_id!r}: {problem}")
    return document_id


def document_url_path(document_id: str) -> str:
    """The URL path naming ``document_id``: ``/`` and the id, percent-encoded (UTF-8)."""
    return "/" + urllib.parse.quote(document_id, safe="")


def document_id_from_url_path(path: str) -> str | None:
    """The document id a request path names (``/n%C3%B6tes?x`` -> ``nötes``; ``/`` -> None).

    The id is not validated here: pass it to :func:`validate_document_id`.
    A percent-encoding that is not UTF-8 decodes with replacement characters,
    which the handshake then refuses as a mismatch.
    """
    name = urllib.parse.urlsplit(path).path.lstrip("/")
    if not name:
        return None
    return urllib.parse.unquote(name, errors="replace")
