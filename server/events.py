"""Server events: what the server reports about itself and its clients.

:class:`ServerEvent` values (frozen) go out on ``WebSocketServer.server_events``,
an :class:`EventStream` usable both ways::

    async for event in server.server_events:      # each iterator sees every event
        ...                                       # emitted after it started

    subscription = server.server_events.subscribe(print)   # callback style
    subscription.cancel()

:class:`EventStream` is :class:`crdt_sync.sync.streams.EventStream` (re-exported):
each ``async for`` iterator has its own bounded buffer (a reader that falls far
behind loses the oldest events, it never blocks the server), and the stream
ends when the server stops.

``data`` carries the details as plain values (``client_id``, ``document_id``,
``peer_id``, ``code``, ...), so events can be logged or serialised as they are.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# The same stream type the client uses, so both sides read alike.
from crdt_sync.sync.streams import EventStream, StreamSubscription

__all__ = [
    "EventStream",
    "ServerEvent",
    "ServerEventType",
    "StreamSubscription",
]


class ServerEventType(enum.Enum):
    """What happened. The value is the lowercase name (handy in logs)."""

    STARTED = "started"
    STOPPED = "stopped"
    CLIENT_CONNECTED = "client_connected"
    CLIENT_HANDSHAKE = "client_handshake"
    CLIENT_CHANGE_APPLIED = "client_change_applied"
    CLIENT_DISCONNECTED = "client_disconnected"
    CLIENT_OUT_OF_SYNC = "client_out_of_sync"
    SNAPSHOT_CREATED = "snapshot_created"
    ERROR = "error"


def _freeze(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if type(data) is MappingProxyType:
        return data  # read-only already (the server hands over a fresh dict's proxy)
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class ServerEvent:
    """One thing the server did or saw.

    Attributes:
        type: the kind of event.
        message: one human-readable line.
        data: details as plain values; read-only. Keys used by the server:
            ``client_id``, ``document_id``, ``peer_id``, ``name``,
            ``remote_address``, ``count`` (changes applied), ``code`` and
            ``reason`` (errors, disconnects), ``host``, ``port``.
    """

    type: ServerEventType
    message: str
    data: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))

    def __post_init__(self) -> None:
        # Freeze whatever mapping we were given so the event is a value.
        object.__setattr__(self, "data", _freeze(self.data))

    def __str__(self) -> str:
        return f"{self.type.value}: {self.message}"
