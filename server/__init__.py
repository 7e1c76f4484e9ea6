"""Headless sync server for :mod:`crdt_sync` documents.

Run it with ``crdt-sync-server`` (see :mod:`server.cli`) or embed it::

    registry = SqliteServerRegistry("documents.sqlite3")
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        print(server.port)
        async for event in server.server_events:
            print(event)

Clients connect to ``ws://host:port/<document-id>``. See ``docs/server.md``.
"""

from __future__ import annotations

from .events import EventStream, ServerEvent, ServerEventType, StreamSubscription
from .exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    DocumentNotFoundError,
    ForeignStorageError,
    InvalidDocumentIdError,
    LocalProtocolError,
    RegistryClosedError,
    RegistryError,
    ServerError,
    ServerStateError,
    StorageCorruptError,
    StorageError,
    StorageInUseError,
    StorageUnavailableError,
)
from .registry import (
    CRDTServerRegistry,
    InMemoryServerRegistry,
    SqliteServerRegistry,
    validate_document_id,
)
from .server import Authenticator, WebSocketServer
from .session import ServerSession, SessionState
from .trust import Limits

__all__ = [
    "Authenticator",
    "CRDTServerRegistry",
    "ChangesRejectedError",
    "DocumentExistsError",
    "DocumentNotFoundError",
    "EventStream",
    "ForeignStorageError",
    "InMemoryServerRegistry",
    "InvalidDocumentIdError",
    "Limits",
    "LocalProtocolError",
    "RegistryClosedError",
    "RegistryError",
    "ServerError",
    "ServerEvent",
    "ServerEventType",
    "ServerSession",
    "ServerStateError",
    "SessionState",
    "SqliteServerRegistry",
    "StorageCorruptError",
    "StorageError",
    "StorageInUseError",
    "StorageUnavailableError",
    "StreamSubscription",
    "WebSocketServer",
    "validate_document_id",
]
