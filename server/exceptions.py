"""Exceptions raised by the headless sync server.

The tree::

    ServerError                      base of everything raised by ``server``
    ├── RegistryError                a document store failed or was misused
    │   ├── DocumentNotFoundError    no document under that id (also a KeyError)
    │   ├── DocumentExistsError      creating a document whose id is taken
    │   ├── InvalidDocumentIdError   the id is not an allowed document id (also a ValueError)
    │   ├── RegistryClosedError      the registry was closed; reopen a new one
    │   ├── ChangesRejectedError     the document refused some of a client's changes
    │   │                            (invalid, or its pending buffer is full); the ones
    │   │                            applied before that are in .applied, and stored
    │   └── StorageError             the backing store cannot be used
    │       ├── StorageUnavailableError  it cannot be reached right now (Redis down):
    │       │                        transient; clients get STORAGE_UNAVAILABLE, retry
    │       ├── StorageCorruptError  the file is damaged (not a database, bad rows)
    │       └── ForeignStorageError  a valid database written by something else,
    │                                or by a newer release of this server
    ├── LocalProtocolError           the server-side protocol object was misused by
    │                                its driver (a bug in the caller, never remote input)
    └── ServerStateError             start/stop called in the wrong state

Remote input never raises any of these out of the session: garbage from a
client becomes an ``Error`` message to that client and a close (see
:mod:`server.session`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crdt_sync import Change

__all__ = [
    "ChangesRejectedError",
    "DocumentExistsError",
    "DocumentNotFoundError",
    "ForeignStorageError",
    "InvalidDocumentIdError",
    "LocalProtocolError",
    "RegistryClosedError",
    "RegistryError",
    "ServerError",
    "ServerStateError",
    "StorageCorruptError",
    "StorageError",
    "StorageUnavailableError",
]


class ServerError(Exception):
    """Base class of every exception raised by the ``server`` package."""


class RegistryError(ServerError):
    """A document registry failed or was used wrongly."""


class DocumentNotFoundError(RegistryError, KeyError):
    """No document is stored under the given id."""

    def __init__(self, document_id: str) -> None:
        super().__init__(f"no document with id {document_id!r}")
        self.document_id = document_id

    def __str__(self) -> str:
        # KeyError.__str__ would quote the whole message; keep it readable.
        return str(self.args[0])


class DocumentExistsError(RegistryError):
    """A document with this id already exists and creation was asked for."""

    def __init__(self, document_id: str) -> None:
        super().__init__(f"a document with id {document_id!r} already exists")
        self.document_id = document_id


class InvalidDocumentIdError(RegistryError, ValueError):
    """The text is not a valid document id (see :func:`server.registry.validate_document_id`)."""


class RegistryClosedError(RegistryError):
    """The registry has been closed; it cannot be used any more."""


class ChangesRejectedError(RegistryError):
    """The document refused some of a client's changes.

    ``cause`` is the core's error (an invalid change, or the bounded pending
    buffer is full). ``applied`` lists the changes of the same call that were
    applied before the refusal; a registry raises this only after those are
    stored, so the server may relay and acknowledge them.
    """

    def __init__(self, cause: Exception, applied: Sequence[Change]) -> None:
        super().__init__(f"changes refused: {cause}")
        self.cause = cause
        self.applied: list[Change] = list(applied)


class StorageError(RegistryError):
    """The backing store of a persistent registry cannot be used."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StorageUnavailableError(StorageError):
    """The store cannot be reached right now (Redis down or unreachable): transient.

    Nothing that it did not store was acknowledged; the registry retries what it
    queued, and clients are told ``STORAGE_UNAVAILABLE`` (they reconnect later).
    """


class StorageCorruptError(StorageError):
    """The store is damaged: not a database, or rows that do not decode."""


class ForeignStorageError(StorageError):
    """The file is a database, but not one this server wrote (or a newer format)."""


class StorageInUseError(StorageError):
    """Another server (another registry) holds the store: two must never share it."""


class LocalProtocolError(ServerError):
    """The driver called the server-side protocol object in a state that forbids it.

    This is always a bug in the caller (the asyncio server, a test), never
    the remote peer's fault: remote mistakes are answered on the wire.
    """


class ServerStateError(ServerError):
    """``start()`` on a running server, ``port`` before ``start()``, and the like."""
