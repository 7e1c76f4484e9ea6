"""The client side of the sync protocol, sans-I/O.

Theory of operation
-------------------
:class:`ClientProtocol` holds one connection's worth of protocol state for one
document. It never touches a socket or a clock it was not given: the driver
(:class:`crdt_sync.sync.WebSocketClient`, or a test) feeds it whole frames with
:meth:`~ClientProtocol.receive_message`, tells it what to do with the ``send_*``
methods, and then drains :meth:`~ClientProtocol.messages_to_send` (frames to
write, in order) and :meth:`~ClientProtocol.events_received` (what happened).

The states and every allowed transition are the one table :data:`TRANSITIONS`.
A local call the table forbids raises :class:`LocalProtocolError` naming the
state and the trigger. A remote message the table forbids, and any bytes that do
not decode, never raise: they become an :class:`ErrorOccurred` event, an
``Error`` frame to send, and the CLOSED state; later input is discarded.

Synchronisation needs no outbox: the handshake carries the client's version
vector, the server answers with what the client lacks plus its own version
vector, and the client answers with ``document.export_changes(server_vv)``: so
edits made while offline simply live in the document until the next handshake.
When the document cannot serve those changes as changes (it was loaded from a
snapshot, imported one, or was compacted: ``document.can_export(server_vv)`` is
False), the client uploads its whole state instead (``SnapshotUpload``); the
server merges it, and its ``Ack`` covering the snapshot's version vector
acknowledges everything the snapshot holds.
While connected, local changes are sent as the driver hands them over
(:meth:`~ClientProtocol.send_changes`); ``Ack`` messages advance the
acknowledged version vector; an ``OUT_OF_SYNC`` error from the server, or a gap
(imported changes waiting for missing dependencies), starts a resync: a
``DocumentStatusRequest`` answered by ``DocumentStatus``, after which the
client again sends what the server lacks. The server also pushes an unsolicited
``DocumentStatus`` (carrying a snapshot) when another client uploaded a
snapshot; the client handles it exactly like an answer to a resync.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from crdt_sync import Change, ChangeBatch, CRDTDocument, CRDTError, VersionVector
from crdt_sync.batch import Segment
from crdt_sync.change_batch import decode_change_batch
from crdt_sync.changes import encode_bodies
from crdt_sync.collector import paused_collector
from crdt_sync.exceptions import DecodeError

from .access import Role
from .compression import Compressor, GzipCompressor, NoCompression
from .events import (
    Acknowledged,
    AwarenessReceived,
    ChangesReceived,
    ChangesSent,
    ClientEvent,
    ErrorOccurred,
    HandshakeCompleted,
    HistoryReceived,
    PongReceived,
    ResyncCompleted,
    ResyncRequested,
    SnapshotReceived,
    SnapshotSent,
)
from .exceptions import (
    FINAL_ERROR_CODES,
    DictionaryError,
    ErrorCode,
    LocalProtocolError,
    MessageDecodeError,
    RemoteProtocolError,
    UnexpectedMessage,
)
from .messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Ack,
    AwarenessQuery,
    AwarenessState,
    AwarenessUpdate,
    Changes,
    Dictionary,
    DocumentStatus,
    DocumentStatusRequest,
    Error,
    HandshakeRequest,
    HandshakeResponse,
    HistoryRequest,
    HistoryResponse,
    Message,
    Ping,
    Pong,
    Relay,
    SnapshotUpload,
    decode_message,
    encode_message,
)
from .relay import MAX_ENTRIES, decode_relay

__all__ = ["TRANSITIONS", "ClientProtocol", "ClientState", "Trigger"]

_log = logging.getLogger(__name__)


class ClientState(enum.Enum):
    """Where one connection stands."""

    IDLE = "IDLE"
    """Created; nothing sent yet."""
    HANDSHAKING = "HANDSHAKING"
    """HandshakeRequest sent; waiting for the HandshakeResponse."""
    CONNECTED = "CONNECTED"
    """In sync; changes flow both ways."""
    RESYNCING = "RESYNCING"
    """Connected, DocumentStatusRequest sent, waiting for DocumentStatus."""
    CLOSED = "CLOSED"
    """Finished (error, close or lost connection). Terminal: use a new protocol object."""


class Trigger(enum.Enum):
    """What can happen to a connection: a local action or a received message."""

    SEND_HANDSHAKE = "send HandshakeRequest"
    SEND_CHANGES = "send Changes"
    SEND_SNAPSHOT = "send SnapshotUpload"
    SEND_PING = "send Ping"
    SEND_DOCUMENT_STATUS_REQUEST = "send DocumentStatusRequest"
    SEND_AWARENESS = "send awareness"
    SEND_HISTORY_REQUEST = "send HistoryRequest"
    RECEIVE_HANDSHAKE_RESPONSE = "receive HandshakeResponse"
    RECEIVE_CHANGES = "receive Changes"
    RECEIVE_DICTIONARY = "receive Dictionary"
    RECEIVE_ACK = "receive Ack"
    RECEIVE_DOCUMENT_STATUS = "receive DocumentStatus"
    RECEIVE_PING = "receive Ping"
    RECEIVE_PONG = "receive Pong"
    RECEIVE_AWARENESS = "receive awareness"
    RECEIVE_HISTORY = "receive HistoryResponse"
    RECEIVE_OUT_OF_SYNC = "receive Error OUT_OF_SYNC"
    RECEIVE_READ_ONLY = "receive Error READ_ONLY"
    RECEIVE_ERROR = "receive Error"
    PROTOCOL_VIOLATION = "protocol violation by the server"
    CLOSE = "close"
    CONNECTION_LOST = "connection lost"


S = ClientState
T = Trigger
_ENDINGS: Final = {T.RECEIVE_ERROR: S.CLOSED, T.PROTOCOL_VIOLATION: S.CLOSED, T.CLOSE: S.CLOSED}
_SYNCED: Final = {
    T.SEND_CHANGES: None,
    T.SEND_SNAPSHOT: None,
    T.SEND_PING: None,
    T.SEND_AWARENESS: None,
    T.SEND_HISTORY_REQUEST: None,
    T.RECEIVE_CHANGES: None,
    T.RECEIVE_DICTIONARY: None,
    T.RECEIVE_ACK: None,
    T.RECEIVE_PING: None,
    T.RECEIVE_PONG: None,
    T.RECEIVE_AWARENESS: None,
    T.RECEIVE_HISTORY: None,
}

TRANSITIONS: Final[dict[ClientState, dict[Trigger, ClientState]]] = {
    S.IDLE: {
        T.SEND_HANDSHAKE: S.HANDSHAKING,
        # Anything the server says before our handshake is a violation (or an error).
        T.CONNECTION_LOST: S.CLOSED,
        **_ENDINGS,
    },
    S.HANDSHAKING: {
        T.RECEIVE_HANDSHAKE_RESPONSE: S.CONNECTED,
        # A server may probe liveness before answering; answering keeps us alive.
        T.RECEIVE_PING: S.HANDSHAKING,
        # OUT_OF_SYNC or READ_ONLY before the handshake is a refusal like any other.
        T.RECEIVE_OUT_OF_SYNC: S.CLOSED,
        T.RECEIVE_READ_ONLY: S.CLOSED,
        T.CONNECTION_LOST: S.CLOSED,
        **_ENDINGS,
    },
    S.CONNECTED: {
        **{trigger: S.CONNECTED for trigger in _SYNCED},
        T.SEND_DOCUMENT_STATUS_REQUEST: S.RESYNCING,
        # Unsolicited: the server pushes the merged state after another client's
        # snapshot upload. Handled like the answer to a resync.
        T.RECEIVE_DOCUMENT_STATUS: S.CONNECTED,
        T.RECEIVE_OUT_OF_SYNC: S.RESYNCING,
        # A read-only connection's changes were refused: it stays open.
        T.RECEIVE_READ_ONLY: S.CONNECTED,
        T.CONNECTION_LOST: S.CLOSED,
        **_ENDINGS,
    },
    S.RESYNCING: {
        **{trigger: S.RESYNCING for trigger in _SYNCED},
        T.RECEIVE_DOCUMENT_STATUS: S.CONNECTED,
        # Already resyncing: one request in flight is enough.
        T.RECEIVE_OUT_OF_SYNC: S.RESYNCING,
        T.RECEIVE_READ_ONLY: S.RESYNCING,
        T.CONNECTION_LOST: S.CLOSED,
        **_ENDINGS,
    },
    S.CLOSED: {
        T.CLOSE: S.CLOSED,
        T.CONNECTION_LOST: S.CLOSED,
    },
}
"""Every allowed transition: ``TRANSITIONS[state][trigger]`` is the next state."""

del S, T

_RECEIVE_TRIGGERS: Final[dict[type, Trigger]] = {
    HandshakeResponse: Trigger.RECEIVE_HANDSHAKE_RESPONSE,
    Changes: Trigger.RECEIVE_CHANGES,
    Relay: Trigger.RECEIVE_CHANGES,
    Dictionary: Trigger.RECEIVE_DICTIONARY,
    Ack: Trigger.RECEIVE_ACK,
    DocumentStatus: Trigger.RECEIVE_DOCUMENT_STATUS,
    Ping: Trigger.RECEIVE_PING,
    Pong: Trigger.RECEIVE_PONG,
    AwarenessUpdate: Trigger.RECEIVE_AWARENESS,
    AwarenessState: Trigger.RECEIVE_AWARENESS,
    HistoryResponse: Trigger.RECEIVE_HISTORY,
}
# Messages a server never sends (HandshakeRequest, DocumentStatusRequest,
# AwarenessQuery) have no trigger: receiving one is a protocol violation.

# Outstanding pings kept for round-trip measurement; older ones are forgotten.
_MAX_OUTSTANDING_PINGS: Final = 64

#: The most changes, operations and elements one ``Changes`` frame this client
#: sends holds: more (an afternoon offline) go in several frames, in order,
#: each well within a server's default limits (10,000 changes and 100,000
#: operations a frame, frames of 16 MiB). In one frame, more changes than a
#: server's limit were refused with ``LIMIT_EXCEEDED`` at every reconnection,
#: and the work never arrived. (A history keeps one peer's typing in segments
#: of up to 4,096 changes, which then go as they are.)
FRAME_CHANGES: Final = 4096
FRAME_OPS: Final = 16_384
FRAME_ELEMENTS: Final = 1 << 20


def _beyond_a_frame(changes: int, ops: int, elements: int) -> bool:
    """Whether that many changes, operations and elements exceed one frame's bounds."""
    return changes > FRAME_CHANGES or ops > FRAME_OPS or elements > FRAME_ELEMENTS


DEFAULT_COMPRESSORS: Final[tuple[Compressor, ...]] = (NoCompression(), GzipCompressor())
"""What a client offers unless told otherwise: every built-in compressor, so it
can join a server whatever compression that server uses."""


class ClientProtocol:
    """One connection of ``document`` to a server, as a sans-I/O state machine.

    Parameters: ``document_id`` (default ``document.document_id``) names the
    server document; ``display_name`` and ``auth_token`` go in the handshake;
    ``compressor`` is the compressor to offer, or several in order of
    preference (default: every built-in one, :data:`DEFAULT_COMPRESSORS`); the
    server picks one and :attr:`compressor` is it once connected; ``acknowledged`` is
    the acknowledged version vector carried over from an earlier connection and
    ``known_epoch`` the server epoch seen then (both None on a first connection);
    ``clock`` returns seconds (monotonic) and is only used for ping round trips.

    Usage: :meth:`send_handshake`, then feed frames to :meth:`receive_message`
    and hand over local changes with :meth:`send_changes` while
    :attr:`is_synced`; after every call, write :meth:`messages_to_send` in order
    and read :meth:`events_received`.
    """

    def __init__(
        self,
        document: CRDTDocument,
        *,
        document_id: str | None = None,
        display_name: str = "",
        auth_token: str | None = None,
        compressor: Compressor | Sequence[Compressor] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        acknowledged: VersionVector | None = None,
        known_epoch: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.document = document
        self.document_id = document.document_id if document_id is None else document_id
        self.display_name = display_name
        self.auth_token = auth_token
        if compressor is None:
            offered: tuple[Compressor, ...] = DEFAULT_COMPRESSORS
        elif isinstance(compressor, Compressor):
            offered = (compressor,)
        else:
            offered = tuple(compressor)
        if not offered:
            raise ValueError("offer at least one compressor")
        self.offered_compressors = offered
        """The compressors offered in the handshake, in order of preference."""
        self.compressor: Compressor = NoCompression()
        """The negotiated compressor (none until the handshake response names one)."""
        self.role: Role | None = None
        """What the server lets this connection do (None until the handshake completed)."""
        self.max_message_size = max_message_size
        self._clock = clock
        self._state = ClientState.IDLE
        self._events: list[ClientEvent] = []
        self._outgoing: list[bytes] = []
        self._acknowledged = acknowledged if acknowledged is not None else VersionVector()
        self._known_epoch = known_epoch
        self.session_id: str | None = None
        self.epoch: str | None = None
        self.server_version_vector: VersionVector | None = None
        self.error_code: ErrorCode | None = None
        """The code of the error that closed the connection (sent or received), if any."""
        self.error_message: str = ""
        self._peer = str(document.peer_id)
        self._server_reset = False
        # Our snapshot upload was refused (FORBIDDEN_PEER, not final): it held ops of
        # claimed peers the server lacks. Until the next connection, send our own
        # changes instead; those peers' replicas send theirs.
        self._upload_sent = False
        self._upload_refused = False
        self._nonces = itertools.count(1)
        self._pings: dict[int, float] = {}
        # The server's dictionary as this connection was sent it (protocol version 4):
        # relays refer to its entries by index.
        self.dictionary: list[str] = []

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def is_synced(self) -> bool:
        """True once the handshake completed and until the connection closes:
        local changes may then be sent."""
        return self._state in (ClientState.CONNECTED, ClientState.RESYNCING)

    @property
    def is_closed(self) -> bool:
        return self._state is ClientState.CLOSED

    @property
    def final(self) -> bool:
        """True when the connection closed on an error reconnecting cannot fix."""
        return self.error_code in FINAL_ERROR_CODES

    @property
    def acknowledged(self) -> VersionVector:
        """What the server confirmed it durably holds (its handshake and status
        version vectors, and every Ack), merged."""
        return self._acknowledged

    @property
    def unacknowledged_changes(self) -> int:
        """Local changes of this document not yet covered by :attr:`acknowledged`.

        A snapshot upload needs no separate count: the server's ``Ack`` covers the
        snapshot's version vector, which acknowledges every local change it holds.
        """
        return count_unacknowledged(self.document, self._acknowledged)

    def _transition(self, trigger: Trigger) -> ClientState:
        """Move along the table or raise LocalProtocolError (callers of remote
        triggers check :meth:`_allowed` first)."""
        try:
            new_state = TRANSITIONS[self._state][trigger]
        except KeyError:
            raise LocalProtocolError(self._state.name, trigger.value) from None
        self._state = new_state
        return new_state

    def _allowed(self, trigger: Trigger) -> bool:
        return trigger in TRANSITIONS[self._state]

    # ------------------------------------------------------------------ output

    def events_received(self) -> list[ClientEvent]:
        """Events since the last call, oldest first (the list is drained)."""
        events, self._events = self._events, []
        return events

    def messages_to_send(self) -> list[bytes]:
        """Frames to write, in order, since the last call (the list is drained)."""
        out, self._outgoing = self._outgoing, []
        return out

    def _send(self, message: Message) -> None:
        self._outgoing.append(encode_message(message, self.compressor))

    # ------------------------------------------------------------------ local actions

    def send_handshake(self) -> None:
        """Start the connection: queue the HandshakeRequest (IDLE only)."""
        self._transition(Trigger.SEND_HANDSHAKE)
        self._send(
            HandshakeRequest(
                document_id=self.document_id,
                peer_id=self._peer,
                version_vector=self.document.version_vector,
                display_name=self.display_name,
                auth_token=self.auth_token,
                compressions=tuple(c.name for c in self.offered_compressors),
                replica_secret=self.document.replica_secret,
            )
        )

    def send_changes(self, changes: Sequence[Change]) -> None:
        """Queue ``changes`` (causal order) for the server. Only while :attr:`is_synced`;
        before that the next handshake carries them. An empty sequence sends nothing."""
        self._transition(Trigger.SEND_CHANGES)
        self._send_changes(changes)

    def send_snapshot(self) -> None:
        """Queue a SnapshotUpload of the whole document (only while :attr:`is_synced`).

        The protocol does this by itself after a handshake or a document status
        when the document cannot export what the server lacks; a driver calls it
        when the document gained state that no local change describes (it imported
        a snapshot while connected).
        """
        self._transition(Trigger.SEND_SNAPSHOT)
        snapshot = self.document.take_snapshot()
        self._upload_sent = True
        self._send(SnapshotUpload(snapshot))
        self._events.append(SnapshotSent(snapshot.version_vector))

    def _send_what_the_server_lacks(self, server_vv: VersionVector) -> None:
        """Send what ``server_vv`` does not cover: as changes while the history
        holds them, else (compacted or snapshot-loaded document) as a snapshot.

        A server accepts ``Changes`` only of the connection's own peer (the
        identity rule, ``docs/protocol.md``), so other peers' changes the server
        lacks stay with their authors, who send them when they connect; the one
        exception is a server whose epoch changed (it was reset): the snapshot of
        the whole state restores everyone's work there.
        """
        document = self.document
        if not document.can_export(server_vv):
            if self._upload_refused:
                self._send_changes(self._own_changes(server_vv))
            else:
                self.send_snapshot()
            return
        others = any(
            counter > server_vv.get(peer, 0)
            for peer, counter in document.version_vector.items()
            if peer != self._peer
        )
        if others and self._server_reset:
            self.send_snapshot()
        else:
            self._send_changes(self._own_changes(server_vv))

    def _own_changes(self, server_vv: VersionVector) -> Sequence[Change]:
        """This peer's changes ``server_vv`` lacks, as far as the history holds them
        (a document loaded from a snapshot holds other peers' ops only as content).

        Exported as the history keeps them (its segments, reused whole) and
        decoded into a :class:`~crdt_sync.ChangeBatch`, which frames go out as:
        no change is built. 130,000 changes of an afternoon offline took half
        a second of the app's event loop as changes, built and encoded again.
        The export is not compressed: it is decoded right away, and deflating
        and inflating its 2 MB took a third of the 34 ms this then took."""
        document = self.document
        since = dict(server_vv)
        for peer, counter in document.version_vector.items():
            if peer != self._peer:
                since[peer] = max(since.get(peer, 0), counter)
        everything_else = VersionVector(since)
        if not document.can_export(everything_else):
            return []  # our own history is gone too: only a snapshot could carry it
        return decode_change_batch(document.binary_export_changes(everything_else, False))

    def _send_changes(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        if isinstance(changes, ChangeBatch) and changes.segments is not None:
            self._send_segments(changes.segments)
        else:
            self._send_cut(changes)
        count = len(changes)
        local_count = (
            count
            if isinstance(changes, ChangeBatch) and changes.peers() == [self._peer]
            else sum(1 for change in changes if change.peer == self._peer)
        )
        self._events.append(ChangesSent(count, local_count))

    def _send_segments(self, segments: list[Segment]) -> None:
        """Send decoded segments in frames of whole segments within the bounds
        (their bytes as they are, joined into one batch a frame); a segment
        beyond a bound alone is cut change by change."""
        group: list[Segment] = []
        count = ops = elements = 0
        for segment in segments:
            more, more_ops = segment.n, segment.op_count()
            more_elements = sum(end - first for first, end in segment.summary.values())
            if group and _beyond_a_frame(count + more, ops + more_ops, elements + more_elements):
                self._send_group(group)
                group, count, ops, elements = [], 0, 0, 0
            if _beyond_a_frame(more, more_ops, more_elements):
                self._send_cut(ChangeBatch([segment]))
                continue
            group.append(segment)
            count, ops, elements = count + more, ops + more_ops, elements + more_elements
        if group:
            self._send_group(group)

    def _send_group(self, group: list[Segment]) -> None:
        self._send(Changes(ChangeBatch(group, encode_bodies([s.body for s in group]))))

    def _send_cut(self, changes: Sequence[Change]) -> None:
        """Send ``changes`` cut into frames of at most FRAME_CHANGES changes,
        FRAME_OPS operations and FRAME_ELEMENTS elements (a lone larger change
        goes alone), in order: each frame's changes depend only on earlier
        frames' and its own."""
        start = ops = elements = 0
        for k, change in enumerate(changes):
            more_ops, more = len(change.ops), change.size
            if k > start and _beyond_a_frame(k - start + 1, ops + more_ops, elements + more):
                self._send(Changes(tuple(changes[start:k])))
                start, ops, elements = k, 0, 0
            ops += more_ops
            elements += more
        self._send(Changes(tuple(changes[start:])))

    def send_ping(self) -> int:
        """Queue a Ping and return its nonce (only while :attr:`is_synced`)."""
        self._transition(Trigger.SEND_PING)
        nonce = next(self._nonces)
        self._pings[nonce] = self._clock()
        while len(self._pings) > _MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        self._send(Ping(nonce, int(time.time() * 1000)))
        return nonce

    def oldest_unanswered_ping_age(self) -> float | None:
        """Seconds since the oldest ping still waiting for its pong, or None.

        The driver compares it with its ping timeout to detect a dead connection.
        """
        if not self._pings:
            return None
        return self._clock() - min(self._pings.values())

    def request_resync(self, reason: str = "requested") -> None:
        """Queue a DocumentStatusRequest (CONNECTED only: one resync at a time)."""
        self._transition(Trigger.SEND_DOCUMENT_STATUS_REQUEST)
        self._queue_resync(reason)

    def _queue_resync(self, reason: str) -> None:
        self._send(DocumentStatusRequest(self.document.version_vector))
        self._events.append(ResyncRequested(reason))

    def send_awareness_update(self, update: AwarenessUpdate) -> None:
        """Queue this peer's presence (only while :attr:`is_synced`)."""
        self._transition(Trigger.SEND_AWARENESS)
        self._send(update)

    def send_awareness_query(self) -> None:
        """Ask the server for every peer's presence (only while :attr:`is_synced`)."""
        self._transition(Trigger.SEND_AWARENESS)
        self._send(AwarenessQuery())

    def request_history(self, cursor: int = 0) -> None:
        """Ask for a page of the server's kept history (only while :attr:`is_synced`):
        cursor 0 for the first page, then the ``next_cursor`` of the last
        :class:`HistoryReceived`. Read-only connections may ask too."""
        self._transition(Trigger.SEND_HISTORY_REQUEST)
        self._send(HistoryRequest(cursor))

    def close(self, code: ErrorCode | None = None, message: str = "") -> None:
        """Close the connection; with ``code``, first queue an Error telling the
        server why (e.g. TIMEOUT). Idempotent; nothing is sent once CLOSED."""
        was_open = self._state is not ClientState.CLOSED
        self._transition(Trigger.CLOSE)
        if was_open and code is not None:
            self.error_code = code
            self.error_message = message
            self._send(Error(code, message))
            self._events.append(ErrorOccurred(code, message, remote=False, final=self.final))

    def connection_lost(self) -> None:
        """The transport ended; the protocol closes without sending anything."""
        self._transition(Trigger.CONNECTION_LOST)

    # ------------------------------------------------------------------ input

    def receive_message(self, data: bytes) -> None:
        """Process one frame from the server. Never raises for anything the server
        sends: bad input closes the connection with an Error (see the module doc)."""
        if self._state is ClientState.CLOSED:
            return  # after an error or close, later input is discarded
        try:
            # The collector paused from the decoding to the end of the import
            # (``collector.py``): a long batch decodes to thousands of tuples,
            # none of them garbage, and the one collection afterwards walks
            # only what the document keeps (the message is freed by then).
            with paused_collector():
                self._dispatch(
                    decode_message(data, self.compressor, max_size=self.max_message_size)
                )
        except RemoteProtocolError as exc:
            self._violation(exc.code, exc.message)
        except CRDTError as exc:
            # The document refused what the server sent (invalid change, snapshot).
            self._violation(ErrorCode.INVALID_MESSAGE, f"server data rejected: {exc}")
        except Exception as exc:  # a bug here must not take the caller down
            _log.exception("internal error while handling a server message")
            self._violation(ErrorCode.INTERNAL_ERROR, f"client failure: {exc!r}")

    def _violation(self, code: ErrorCode, message: str) -> None:
        if self._state is ClientState.CLOSED:
            return
        self._transition(Trigger.PROTOCOL_VIOLATION)
        self.error_code = code
        self.error_message = message
        self._send(Error(code, message))
        self._events.append(ErrorOccurred(code, message, remote=False, final=False))

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Error):
            self._receive_error(message)
            return
        trigger = _RECEIVE_TRIGGERS.get(type(message))
        if trigger is None or not self._allowed(trigger):
            name = trigger.value if trigger else f"receive {type(message).__name__}"
            raise UnexpectedMessage(self._state.name, name)
        self._transition(trigger)
        if isinstance(message, HandshakeResponse):
            self._receive_handshake_response(message)
        elif isinstance(message, Changes):
            self._receive_changes(message.changes)
        elif isinstance(message, Relay):
            try:
                changes = decode_relay(message.body, self.dictionary, self.max_message_size)
            except DictionaryError:
                raise
            except DecodeError as exc:
                raise MessageDecodeError(f"relay: {exc}", exc.offset) from None
            self._receive_changes(changes)
        elif isinstance(message, Dictionary):
            self._receive_dictionary(message)
        elif isinstance(message, Ack):
            # Protocol version 2: the Ack of changes holds our own peer's entry only;
            # merged into the handshake's vector and earlier acks, the count is the same.
            self._acknowledged = self._acknowledged.merge(message.version_vector)
            self._events.append(Acknowledged(message.version_vector, self.unacknowledged_changes))
        elif isinstance(message, DocumentStatus):
            # The answer to our request, or a push after another client's snapshot
            # upload (then possibly received while RESYNCING, before the answer:
            # it carries the server's state too, and the answer is then handled as
            # a push). Either way: merge it, send what the server lacks.
            self._receive_payload(message.version_vector, message.changes, message)
            # No gap check here: a gap the server could not fill would loop; the
            # next import that grows the pending buffer starts a new resync.
            self._events.append(ResyncCompleted(message.version_vector))
        elif isinstance(message, Ping):
            self._send(Pong(message.nonce, message.timestamp_ms))
        elif isinstance(message, Pong):
            sent = self._pings.pop(message.nonce, None)
            if sent is not None:  # a pong for a forgotten ping is harmless
                self._events.append(PongReceived((self._clock() - sent) * 1000.0))
        elif isinstance(message, AwarenessUpdate):
            self._events.append(AwarenessReceived((message,), full=False))
        elif isinstance(message, AwarenessState):
            self._events.append(AwarenessReceived(message.states, full=True))
        elif isinstance(message, HistoryResponse):
            # History is for reading: nothing of it is imported into the document.
            self._events.append(
                HistoryReceived(message.start, message.changes, message.base, message.next_cursor)
            )

    def _receive_error(self, message: Error) -> None:
        if message.code is ErrorCode.READ_ONLY:
            self._transition(Trigger.RECEIVE_READ_ONLY)
            if self._state is not ClientState.CLOSED:
                # Refused, not applied; the changes stay unacknowledged.
                self._events.append(
                    ErrorOccurred(message.code, message.message, remote=True, final=False)
                )
                return
        elif (
            message.code is ErrorCode.FORBIDDEN_PEER
            and self._upload_sent
            and self._state in (ClientState.CONNECTED, ClientState.RESYNCING)
        ):
            # Our upload held ops of claimed peers the server lacks (we joined from
            # a snapshot): refused, nothing merged, the connection stays. Those
            # peers send their ops themselves; we send ours.
            self._upload_refused = True
            self._events.append(
                ErrorOccurred(message.code, message.message, remote=True, final=False)
            )
            self._send_changes(self._own_changes(self.server_version_vector or VersionVector()))
            return
        elif message.code is ErrorCode.OUT_OF_SYNC:
            before = self._state
            self._transition(Trigger.RECEIVE_OUT_OF_SYNC)
            if before is ClientState.CONNECTED:
                self._events.append(ErrorOccurred(message.code, message.message, remote=True))
                self._queue_resync(f"server: {message.message}" if message.message else "server")
                return
            if self._state is not ClientState.CLOSED:
                return  # already resyncing
        else:
            self._transition(Trigger.RECEIVE_ERROR)
        self.error_code = message.code
        self.error_message = message.message
        self._events.append(
            ErrorOccurred(message.code, message.message, remote=True, final=self.final)
        )

    def _receive_handshake_response(self, message: HandshakeResponse) -> None:
        chosen = next((c for c in self.offered_compressors if c.name == message.compression), None)
        if chosen is None:
            offered = ", ".join(repr(c.name) for c in self.offered_compressors)
            self._violation(
                ErrorCode.UNSUPPORTED_COMPRESSION,
                f"the server chose compression {message.compression!r}; this client offered"
                f" {offered}",
            )
            return
        self.compressor = chosen
        self.role = message.role
        self.session_id = message.session_id
        epoch_changed = self._known_epoch is not None and message.epoch != self._known_epoch
        if epoch_changed:
            # A reset server holds none of what it acknowledged before.
            self._acknowledged = VersionVector()
            self._server_reset = True
        self.epoch = message.epoch
        pending_before = self.document.pending_count
        self._receive_payload(message.version_vector, message.changes, message)
        self._events.append(
            HandshakeCompleted(
                message.session_id, message.epoch, message.version_vector, epoch_changed
            )
        )
        self._after_import(pending_before)

    def _receive_payload(
        self,
        server_vv: VersionVector,
        changes: Sequence[Change],
        message: HandshakeResponse | DocumentStatus,
    ) -> None:
        """Merge what the server sent, then send it exactly what it lacks."""
        self.server_version_vector = server_vv
        self._acknowledged = self._acknowledged.merge(server_vv)
        if message.snapshot is not None:
            self.document.import_snapshot(message.snapshot)
            self._events.append(SnapshotReceived(message.snapshot.version_vector))
        elif changes:
            applied = self.document.import_changes(changes)
            self._events.append(ChangesReceived(len(changes), applied))
        self._send_what_the_server_lacks(server_vv)

    def _receive_dictionary(self, message: Dictionary) -> None:
        held = len(self.dictionary)
        if message.first != held:
            raise DictionaryError(
                f"a dictionary delta from entry {message.first}, but this connection holds"
                f" {held} entries ({'skips' if message.first > held else 'repeats'} indices)"
            )
        if held + len(message.entries) > MAX_ENTRIES:
            raise DictionaryError(
                f"a dictionary delta would grow the dictionary past {MAX_ENTRIES} entries"
            )
        self.dictionary.extend(message.entries)

    def _receive_changes(self, changes: Sequence[Change]) -> None:
        # (A ChangeBatch as decoded: imported by runs, no change built.)
        batch = changes if isinstance(changes, ChangeBatch) else tuple(changes)
        pending_before = self.document.pending_count
        applied = self.document.import_changes(batch)
        self._events.append(ChangesReceived(len(batch), applied))
        self._after_import(pending_before)

    def _after_import(self, previous_pending: int) -> None:
        """A gap (changes waiting for missing dependencies) starts a resync, once."""
        pending = self.document.pending_count
        if pending > previous_pending and self._state is ClientState.CONNECTED:
            self._transition(Trigger.SEND_DOCUMENT_STATUS_REQUEST)
            self._queue_resync(f"{pending} changes wait for missing dependencies")


def count_unacknowledged(document: CRDTDocument, acknowledged: VersionVector) -> int:
    """How many changes made by ``document``'s own peer ``acknowledged`` does not cover.

    Other peers' entries do not matter, so only this peer's part of the history
    is read: a document loaded from a snapshot (whose other peers' history is
    gone) still counts its own later changes exactly. When this peer's own
    unacknowledged history was compacted away, the count falls back to op ids,
    an upper bound.
    """
    peer = str(document.peer_id)
    mine = document.version_vector.get(peer, 0)
    acked = acknowledged.get(peer, 0)
    if mine <= acked:
        return 0  # fast path: nothing of ours is newer than the acknowledgement
    # Everyone else as the document has them: the export holds only our changes.
    since = VersionVector({**document.version_vector, peer: acked})
    if not document.can_export(since):
        return mine - acked
    try:
        return sum(1 for change in document.export_changes(since) if change.peer == peer)
    except CRDTError:  # pragma: no cover - can_export said yes
        return mine - acked
