"""Events reported by the client protocol and the WebSocket client.

Frozen dataclasses named as nouns. :class:`crdt_sync.sync.ClientProtocol` emits
the protocol events; :class:`crdt_sync.sync.WebSocketClient` forwards them on
``client.events`` and adds the connection-level ones (:class:`ReconnectScheduled`,
:class:`ConnectionLost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from crdt_sync import Change, Snapshot, VersionVector

from .exceptions import ErrorCode
from .messages import AwarenessUpdate

__all__ = [
    "Acknowledged",
    "AwarenessReceived",
    "ChangesReceived",
    "ChangesSent",
    "ClientEvent",
    "ConnectionLost",
    "ErrorOccurred",
    "HandshakeCompleted",
    "HistoryReceived",
    "PongReceived",
    "ReconnectScheduled",
    "ResyncCompleted",
    "ResyncRequested",
    "SnapshotReceived",
    "SnapshotSent",
]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The server accepted the handshake; both sides now exchange what the other lacks.

    ``epoch_changed`` is True when the server's document epoch differs from the one
    seen on an earlier connection (the server's document was reset or replaced).
    """

    session_id: str
    epoch: str
    server_version_vector: VersionVector
    epoch_changed: bool = False


@dataclass(frozen=True, slots=True)
class ChangesSent:
    """``count`` changes (``local_count`` of them made by this peer) went to the server."""

    count: int
    local_count: int


@dataclass(frozen=True, slots=True)
class ChangesReceived:
    """``count`` changes arrived; ``applied`` of them were new to the document."""

    count: int
    applied: int


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    """The whole document went to the server as a snapshot (its history could not
    describe what the server lacked)."""

    version_vector: VersionVector


@dataclass(frozen=True, slots=True)
class SnapshotReceived:
    """A snapshot arrived and was merged into the document."""

    version_vector: VersionVector


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The server durably stored everything in ``version_vector`` (the ``Ack``'s:
    since protocol version 2 only this client's own peer, unless it answers a
    snapshot upload; the protocol's ``acknowledged`` merges them all);
    ``unacknowledged`` local changes remain unconfirmed."""

    version_vector: VersionVector
    unacknowledged: int


@dataclass(frozen=True, slots=True)
class ResyncRequested:
    """The client asked the server for its document status (``reason`` says why)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResyncCompleted:
    """The server's document status arrived and was merged."""

    server_version_vector: VersionVector


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A pong answered our ping after ``round_trip_ms`` milliseconds."""

    round_trip_ms: float


@dataclass(frozen=True, slots=True)
class AwarenessReceived:
    """Presence arrived: one peer's update, or (``full``) every peer's state."""

    updates: tuple[AwarenessUpdate, ...]
    full: bool


@dataclass(frozen=True, slots=True)
class HistoryReceived:
    """One page of the server's kept history arrived (answer to a history request).

    ``start`` is where the server's history starts (empty: at the document's
    creation), ``base`` the state there (first page only, when ``start`` is not
    empty); ``next_cursor`` is 0 on the last page."""

    start: VersionVector
    changes: tuple[Change, ...]
    base: Snapshot | None
    next_cursor: int


@dataclass(frozen=True, slots=True)
class ErrorOccurred:
    """An error: ``remote`` when the server sent it, else detected here.
    ``final`` when reconnecting cannot help."""

    code: ErrorCode
    message: str
    remote: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The connection ended (``reason`` says how)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReconnectScheduled:
    """Reconnection attempt ``attempt`` (1-based) starts in ``delay_s`` seconds,
    at ``at_time`` (wall clock, seconds since the epoch)."""

    attempt: int
    delay_s: float
    at_time: float


ClientEvent: TypeAlias = (
    HandshakeCompleted
    | ChangesSent
    | ChangesReceived
    | SnapshotReceived
    | SnapshotSent
    | Acknowledged
    | ResyncRequested
    | ResyncCompleted
    | PongReceived
    | AwarenessReceived
    | HistoryReceived
    | ErrorOccurred
    | ConnectionLost
    | ReconnectScheduled
)
