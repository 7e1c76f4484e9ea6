"""The server side of the sync protocol for one connection, sans-I/O.

Theory of operation
-------------------
A :class:`ServerSession` never touches a socket, a clock or the registry.
The driver (``server.server``) feeds it whole frames with
:meth:`ServerSession.receive_message`, tells it what to do
(:meth:`~ServerSession.accept_handshake`, :meth:`~ServerSession.send_changes`,
:meth:`~ServerSession.send_acknowledgement`, ...) and then drains what happened
(:meth:`~ServerSession.events_received`) and what to write
(:meth:`~ServerSession.messages_to_send`). Everything about the protocol is
therefore testable in memory, without sockets or sleeps.

The connection's life is the table :data:`TRANSITIONS`::

    AWAITING_HANDSHAKE --HandshakeRequest--> HANDSHAKING --accept--> OPEN
            |                                    |                    |
            +------------- any error, close, lost connection ---------+--> CLOSED

``HANDSHAKING`` is the gap while the driver looks the document up (the
registry is asynchronous): it answers with :meth:`accept_handshake` (the
session then holds the server's document and answers the client's
resynchronisation requests itself) or :meth:`reject_handshake`.

Remote input never raises. Bytes that do not decode, a message the current
state does not allow, a frame over the size bound, a handshake with the
wrong document id, peer id or compression: each becomes one ``Error``
message to the client, a :class:`ProtocolViolation` event and the CLOSED
state; input after that is discarded. Local misuse (say, relaying changes
before the handshake is accepted) raises :class:`LocalProtocolError`.
Sending to a session that is already CLOSED is ignored rather than an error,
because in an asynchronous server a peer may go away between "who is on this
document" and "send to them".
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from crdt_sync import Change, ChangeBatch, CRDTDocument, PeerId, Snapshot, VersionVector
from crdt_sync.sync import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Ack,
    AwarenessQuery,
    AwarenessState,
    AwarenessUpdate,
    Changes,
    Compressor,
    DocumentStatus,
    DocumentStatusRequest,
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    HistoryRequest,
    HistoryResponse,
    Message,
    NoCompression,
    Ping,
    Pong,
    RemoteProtocolError,
    Role,
    SnapshotUpload,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import encode_ack_frame, encode_changes_frame

from .catchup import payload_for
from .exceptions import InvalidDocumentIdError, LocalProtocolError
from .registry import validate_document_id
from .trust import Limits, TokenBucket

__all__ = [
    "TRANSITIONS",
    "AwarenessQueried",
    "AwarenessReceived",
    "ChangesReceived",
    "CloseCode",
    "DocumentStatusSent",
    "ErrorReceived",
    "HandshakeRequested",
    "HistoryRequested",
    "PingReceived",
    "PongReceived",
    "ProtocolViolation",
    "ReadOnlyRefused",
    "ServerSession",
    "SessionClosed",
    "SessionEvent",
    "SessionInput",
    "SessionState",
    "SnapshotUploaded",
    "own_entry",
    "secret_hash",
]


class SessionState(enum.Enum):
    """Where a connection is in its life (see :data:`TRANSITIONS`)."""

    AWAITING_HANDSHAKE = "awaiting_handshake"
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


class SessionInput(enum.Enum):
    """What can happen to a session: a kind of message received, or a driver action."""

    HANDSHAKE_REQUEST = "handshake request received"
    HANDSHAKE_ACCEPTED = "handshake accepted"
    HANDSHAKE_REJECTED = "handshake rejected"
    PING = "ping received"
    CLIENT_MESSAGE = "client message received"
    SERVER_MESSAGE = "server-only message received"
    ERROR_RECEIVED = "error received"
    PROTOCOL_ERROR = "protocol error"
    LOCAL_CLOSE = "closed by the server"
    CONNECTION_LOST = "connection lost"


_S = SessionState
_I = SessionInput

#: The allowed transitions, in one place. A (state, input) pair not listed is
#: refused: a remote input with an ``Error`` INVALID_MESSAGE and a close, a
#: driver action with :class:`LocalProtocolError`. CLOSED accepts nothing.
TRANSITIONS: Mapping[SessionState, Mapping[SessionInput, SessionState]] = {
    _S.AWAITING_HANDSHAKE: {
        _I.HANDSHAKE_REQUEST: _S.HANDSHAKING,
        _I.PING: _S.AWAITING_HANDSHAKE,
        _I.ERROR_RECEIVED: _S.CLOSED,
        _I.PROTOCOL_ERROR: _S.CLOSED,
        _I.LOCAL_CLOSE: _S.CLOSED,
        _I.CONNECTION_LOST: _S.CLOSED,
    },
    _S.HANDSHAKING: {
        _I.HANDSHAKE_ACCEPTED: _S.OPEN,
        _I.HANDSHAKE_REJECTED: _S.CLOSED,
        _I.PING: _S.HANDSHAKING,
        _I.ERROR_RECEIVED: _S.CLOSED,
        _I.PROTOCOL_ERROR: _S.CLOSED,
        _I.LOCAL_CLOSE: _S.CLOSED,
        _I.CONNECTION_LOST: _S.CLOSED,
    },
    _S.OPEN: {
        _I.CLIENT_MESSAGE: _S.OPEN,
        _I.PING: _S.OPEN,
        _I.ERROR_RECEIVED: _S.CLOSED,
        _I.PROTOCOL_ERROR: _S.CLOSED,
        _I.LOCAL_CLOSE: _S.CLOSED,
        _I.CONNECTION_LOST: _S.CLOSED,
    },
    _S.CLOSED: {},
}

# Which input each received message is. Server-to-client messages arriving at
# the server are never allowed: they map to an input no state lists.
_INPUT_OF: Mapping[type[Message], SessionInput] = {
    HandshakeRequest: _I.HANDSHAKE_REQUEST,
    Ping: _I.PING,
    Error: _I.ERROR_RECEIVED,
    Changes: _I.CLIENT_MESSAGE,
    DocumentStatusRequest: _I.CLIENT_MESSAGE,
    Pong: _I.CLIENT_MESSAGE,
    AwarenessUpdate: _I.CLIENT_MESSAGE,
    AwarenessQuery: _I.CLIENT_MESSAGE,
    SnapshotUpload: _I.CLIENT_MESSAGE,
    HistoryRequest: _I.CLIENT_MESSAGE,
    HistoryResponse: _I.SERVER_MESSAGE,
    HandshakeResponse: _I.SERVER_MESSAGE,
    Ack: _I.SERVER_MESSAGE,
    DocumentStatus: _I.SERVER_MESSAGE,
    AwarenessState: _I.SERVER_MESSAGE,
}


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4.1) the session asks the driver to use."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


_CLOSE_CODE_FOR: Mapping[ErrorCode, CloseCode] = {
    ErrorCode.INVALID_MESSAGE: CloseCode.PROTOCOL_ERROR,
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: CloseCode.PROTOCOL_ERROR,
    ErrorCode.MESSAGE_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    ErrorCode.TOO_MANY_CONNECTIONS: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.STORAGE_UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.LIMIT_EXCEEDED: CloseCode.TRY_AGAIN_LATER,
}


def _reason(code: ErrorCode, message: str) -> str:
    # A close reason must fit in a control frame (123 bytes of UTF-8).
    return f"{code.name}: {message}".encode()[:120].decode("utf-8", "ignore")


def close_code_for(code: ErrorCode) -> CloseCode:
    """The WebSocket close code that goes with sending an ``Error`` of ``code``."""
    return _CLOSE_CODE_FOR.get(code, CloseCode.POLICY_VIOLATION)


# -------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class HandshakeRequested:
    """The client asked to join; answer with ``accept_handshake`` or ``reject_handshake``.

    ``document_id`` is validated (and equals the URL's, when the URL named one);
    ``peer_id`` parses as a :class:`~crdt_sync.PeerId`; the compression matches.
    The driver still decides authorisation and whether the document exists.
    """

    request: HandshakeRequest
    document_id: str


@dataclass(frozen=True)
class ChangesReceived:
    """The client sent changes: apply them (durably), then ``send_acknowledgement``.
    ``encoded`` is the change batch they arrived in (reused when all of them apply)."""

    changes: Sequence[Change]
    encoded: bytes | None = None


@dataclass(frozen=True)
class SnapshotUploaded:
    """The client sent its whole state (it cannot send what the server lacks as
    changes). Merge it into the document, store the merged state durably, then
    ``send_acknowledgement`` and push it to the document's other clients
    (``send_snapshot_push`` or ``send_frame``)."""

    snapshot: Snapshot


@dataclass(frozen=True)
class DocumentStatusSent:
    """The client asked to resynchronise; the session already answered."""

    client_version_vector: VersionVector
    sent_snapshot: bool
    change_count: int


@dataclass(frozen=True)
class PingReceived:
    """The client pinged; the session already queued the Pong."""

    nonce: int


@dataclass(frozen=True)
class PongReceived:
    """The client answered a Ping the server sent."""

    nonce: int
    timestamp_ms: int


@dataclass(frozen=True)
class AwarenessReceived:
    """The client updated its own presence (``state`` None: it left).

    Already checked to be about the session's own peer.
    """

    update: AwarenessUpdate


@dataclass(frozen=True)
class AwarenessQueried:
    """The client asked for everyone's presence: answer with ``send_awareness_state``."""


@dataclass(frozen=True)
class HistoryRequested:
    """The client asked for a page of the document's kept history (any role may):
    answer with ``send_frame(encode_history_frame(...))`` from the registry."""

    cursor: int


@dataclass(frozen=True)
class ErrorReceived:
    """The client reported an error. Unless it is OUT_OF_SYNC the session is now closed."""

    code: ErrorCode
    message: str


@dataclass(frozen=True)
class ReadOnlyRefused:
    """A read-only client sent ``what`` (changes or a snapshot); the session already
    answered ``Error READ_ONLY``, applied nothing and kept the connection open."""

    what: str
    count: int


@dataclass(frozen=True)
class ProtocolViolation:
    """The client broke the protocol; an ``Error`` was queued and the session closed."""

    code: ErrorCode
    message: str


@dataclass(frozen=True)
class SessionClosed:
    """The session reached CLOSED: send what is queued, then close the socket with ``code``."""

    code: CloseCode
    reason: str


SessionEvent = (
    HandshakeRequested
    | ChangesReceived
    | SnapshotUploaded
    | DocumentStatusSent
    | PingReceived
    | PongReceived
    | AwarenessReceived
    | AwarenessQueried
    | HistoryRequested
    | ErrorReceived
    | ReadOnlyRefused
    | ProtocolViolation
    | SessionClosed
)


def secret_hash(document_id: str, peer_id: str, secret: bytes) -> bytes:
    """The hash a server keeps of a replica secret, per document and peer.

    The document and peer ids are hashed in, so one secret never yields the
    same stored value twice and a leaked table reveals nothing reusable.
    """
    digest = hashlib.sha256()
    for part in (b"crdt-sync replica v1", document_id.encode(), peer_id.encode(), secret):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def own_entry(version_vector: VersionVector, peer_id: str | None) -> VersionVector:
    """The part of ``version_vector`` an ``Ack`` to ``peer_id`` carries: its own entry."""
    counter = version_vector.get(peer_id, 0) if peer_id is not None else 0
    return VersionVector({peer_id: counter}) if counter and peer_id is not None else VersionVector()


# Status answers kept per document version (one per distinct requester vector).
_MAX_CACHED_ANSWERS = 16


class _VersionCache:
    """The encoded status answers for one version of a document (frames, whether
    a snapshot was sent, how many changes). Dropped as soon as the document changes."""

    __slots__ = ("answers", "version")

    def __init__(self, version: VersionVector) -> None:
        self.version = version
        self.answers: dict[tuple[VersionVector, str], tuple[tuple[bytes, ...], bool, int]] = {}


_caches: weakref.WeakKeyDictionary[CRDTDocument, _VersionCache] = weakref.WeakKeyDictionary()


def _cache_of(document: CRDTDocument) -> _VersionCache:
    version = document.version_vector
    cache = _caches.get(document)
    if cache is None or cache.version != version:
        cache = _caches[document] = _VersionCache(version)
    return cache


class ServerSession:
    """The protocol state of one client connection (sans-I/O).

    Args:
        document_id: the document named by the URL path, or None / "" when
            the URL named none (the handshake's document id is then used).
            Not validated here: an invalid one is refused at the handshake,
            so the client learns why.
        compressor: the server's compressor: the handshake is accepted only if
            the client lists its ``name`` among the compressions it accepts, and
            the response names it.
        max_message_size: largest accepted frame, and largest decompressed body.
        session_id: id sent in the handshake response (random when omitted).
    """

    def __init__(
        self,
        document_id: str | None = None,
        compressor: Compressor | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        session_id: str | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self.limits = limits if limits is not None else Limits()
        self._status_rate = TokenBucket(
            self.limits.status_per_second, self.limits.status_burst, clock
        )
        self._url_document_id = document_id or None
        self._compressor: Compressor = compressor if compressor is not None else NoCompression()
        self.max_message_size = max_message_size
        self.session_id = session_id if session_id is not None else secrets.token_urlsafe(16)
        self._state = SessionState.AWAITING_HANDSHAKE
        self._events: list[SessionEvent] = []
        self._outgoing: list[bytes] = []
        self._document: CRDTDocument | None = None
        self._document_id: str | None = None
        self._peer_id: str | None = None
        self._display_name = ""
        self._client_version_vector = VersionVector()
        self._secret_hash = b""
        self._role = Role.WRITE
        self._history_next = 0
        #: How many entries of its room's relay dictionary this connection was sent
        #: (protocol version 4; ``server/rooms.py`` ``flush_relays``).
        self.dictionary_sent = 0
        self.close_code: CloseCode | None = None
        self.close_reason = ""

    # -- read-only facts ------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def document_id(self) -> str | None:
        """The document this session is about, once the handshake request is accepted."""
        return self._document_id

    @property
    def peer_id(self) -> str | None:
        """The client's peer id, once it sent a valid handshake request."""
        return self._peer_id

    @property
    def secret_hash(self) -> bytes:
        """Hash of the replica secret of the handshake (b"" before): what the
        registry keeps to bind the peer id to this replica (see :func:`secret_hash`)."""
        return self._secret_hash

    @property
    def display_name(self) -> str:
        """The client's display name from its handshake ("" before)."""
        return self._display_name

    @property
    def role(self) -> Role:
        """What the client may do (set by :meth:`accept_handshake`; WRITE before)."""
        return self._role

    @property
    def compressor(self) -> Compressor:
        """The compressor used for this connection's frames."""
        return self._compressor

    # -- draining -------------------------------------------------------------------------

    def events_received(self) -> list[SessionEvent]:
        """What happened since the last call, oldest first (drains)."""
        events, self._events = self._events, []
        return events

    def messages_to_send(self) -> list[bytes]:
        """Encoded frames to write, in order (drains)."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- state machine --------------------------------------------------------------------

    def _next_state(self, event: SessionInput) -> SessionState | None:
        return TRANSITIONS[self._state].get(event)

    def _advance(self, event: SessionInput, what: str) -> None:
        """Take a driver-initiated transition, or raise LocalProtocolError."""
        target = self._next_state(event)
        if target is None:
            raise LocalProtocolError(f"{what} is not allowed in state {self._state.name}")
        self._state = target

    def _queue(self, message: Message) -> None:
        # Handshake requests and errors are never compressed by the codec, so an
        # error about a compression mismatch stays readable.
        self._outgoing.append(encode_message(message, self._compressor))

    def _close(self, event: SessionInput, code: CloseCode, reason: str) -> None:
        target = self._next_state(event)
        if target is None:  # pragma: no cover - every live state lists the closing inputs
            raise LocalProtocolError(f"{event.value} is not allowed in state {self._state.name}")
        self._state = target
        self.close_code = code
        self.close_reason = reason
        self._events.append(SessionClosed(code, reason))

    def _fail(self, code: ErrorCode, message: str) -> None:
        """Answer a remote mistake: Error message, violation event, close."""
        if self._state is SessionState.CLOSED:
            return
        self._queue(Error(code, message))
        self._events.append(ProtocolViolation(code, message))
        self._close(SessionInput.PROTOCOL_ERROR, close_code_for(code), _reason(code, message))

    # -- input ----------------------------------------------------------------------------

    def receive_message(self, data: bytes | bytearray | memoryview | str) -> None:
        """Handle one whole frame from the client. Never raises for any input.

        Text frames, undecodable bytes, oversize frames and messages the
        state does not allow end the session with an ``Error`` to the client.
        Input received in the CLOSED state is discarded.
        """
        if self._state is SessionState.CLOSED:
            return
        self.receive_decoded(self.decode(data))

    def decode(self, data: bytes | bytearray | memoryview | str) -> Message | RemoteProtocolError:
        """Decode one frame as the current state reads it; the error instead of raising.

        Touches nothing of the session, so a driver may run it in a worker
        thread (a big frame must not stall the event loop) and hand the result
        to :meth:`receive_decoded`.
        """
        if isinstance(data, str):
            return RemoteProtocolError("text frames are not part of the protocol")
        try:
            # The handshake request is never compressed; afterwards frames use the
            # negotiated compressor (a compressed frame before it is an error).
            negotiated = self._state is SessionState.OPEN
            return decode_message(
                bytes(data),
                self._compressor if negotiated else None,
                max_size=self.max_message_size,
            )
        except RemoteProtocolError as error:
            return error

    def receive_decoded(self, decoded: Message | RemoteProtocolError) -> None:
        """Handle what :meth:`decode` returned for one frame. Never raises."""
        if self._state is SessionState.CLOSED:
            return
        if isinstance(decoded, RemoteProtocolError):
            self._fail(decoded.code, decoded.message)
            return
        message = decoded
        event = _INPUT_OF.get(type(message), SessionInput.SERVER_MESSAGE)
        target = self._next_state(event)
        if target is None:
            self._fail(
                ErrorCode.INVALID_MESSAGE,
                f"{type(message).__name__} is not allowed in state {self._state.name}",
            )
            return
        try:
            self._dispatch(message, target)
        except (ValueError, TypeError) as error:
            # Encoding our answer failed on a value the client chose (e.g. an
            # over-long field echoed back): still the client's fault, still no raise.
            self._fail(ErrorCode.INVALID_MESSAGE, f"cannot process the message: {error}")

    def _dispatch(self, message: Message, target: SessionState) -> None:
        if isinstance(message, Changes):  # the usual message first
            changes = message.changes
            if isinstance(changes, ChangeBatch):
                # Decoded, not built: peers and operations read from its segments.
                foreign = next((p for p in changes.peers() if p != self._peer_id), None)
                ops = changes.op_count()
            elif len(changes) == 1:  # a keystroke: the checks below without generators
                only = changes[0]
                foreign = only.peer if only.peer != self._peer_id else None
                ops = len(only.ops)
            else:
                foreign = next((c.peer for c in changes if c.peer != self._peer_id), None)
                ops = sum(len(change.ops) for change in changes)
            if foreign is not None:
                # The identity rule: a connection speaks only for its own peer.
                self._fail(
                    ErrorCode.FORBIDDEN_PEER,
                    f"changes of peer {foreign!r} on the connection of peer {self._peer_id!r}",
                )
                return
            if not changes:
                return
            if (
                len(message.changes) > self.limits.max_changes_per_frame
                or ops > self.limits.max_ops_per_frame
            ):
                self._fail(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"{len(message.changes)} changes with {ops} operations in one frame;"
                    f" the limits are {self.limits.max_changes_per_frame} and"
                    f" {self.limits.max_ops_per_frame}: send smaller batches",
                )
                return
            if self._role is Role.READ:
                self._refuse_read_only("changes", len(message.changes))
                return
            self._events.append(ChangesReceived(message.changes, message.encoded))
        elif isinstance(message, HandshakeRequest):
            self._receive_handshake(message, target)
        elif isinstance(message, Ping):
            self._queue(Pong(message.nonce, message.timestamp_ms))
            self._events.append(PingReceived(message.nonce))
        elif isinstance(message, Error):
            self._receive_error(message)
        elif isinstance(message, SnapshotUpload):
            if self._role is Role.READ:
                self._refuse_read_only("a snapshot", 1)
                return
            self._events.append(SnapshotUploaded(message.snapshot))
        elif isinstance(message, DocumentStatusRequest):
            self._receive_status_request(message)
        elif isinstance(message, Pong):
            self._events.append(PongReceived(message.nonce, message.timestamp_ms))
        elif isinstance(message, AwarenessUpdate):
            if message.peer_id != self._peer_id:
                self._fail(
                    ErrorCode.FORBIDDEN_PEER,
                    "an awareness update may only describe the sender's own peer",
                )
                return
            self._events.append(AwarenessReceived(message))
        elif isinstance(message, AwarenessQuery):
            self._events.append(AwarenessQueried())
        elif isinstance(message, HistoryRequest):
            # A first page shares the status requests' rate (both read stored
            # state); the next page of a walk already paid for is free, so a
            # long history costs one token and each page is served once.
            walking = message.cursor != 0 and message.cursor == self._history_next
            self._history_next = 0
            if not walking and not self._status_rate.take():
                self._fail(
                    ErrorCode.RATE_LIMITED,
                    f"more than {self.limits.status_burst} status and history requests in a"
                    f" burst ({self.limits.status_per_second:g} per second allowed)",
                )
                return
            self._events.append(HistoryRequested(message.cursor))
        else:  # pragma: no cover - the table refuses every other type first
            self._fail(ErrorCode.INVALID_MESSAGE, f"unexpected {type(message).__name__}")

    def _receive_handshake(self, request: HandshakeRequest, target: SessionState) -> None:
        document_id = request.document_id
        try:
            validate_document_id(document_id)
            if self._url_document_id is not None:
                validate_document_id(self._url_document_id)
        except InvalidDocumentIdError as error:
            self._fail(ErrorCode.HANDSHAKE_FAILED, str(error))
            return
        if self._url_document_id is not None and self._url_document_id != document_id:
            self._fail(
                ErrorCode.HANDSHAKE_FAILED,
                f"the URL names document {self._url_document_id!r} but the handshake"
                f" names {document_id!r}",
            )
            return
        try:
            PeerId.parse(request.peer_id)
        except (ValueError, TypeError) as error:
            self._fail(ErrorCode.HANDSHAKE_FAILED, f"invalid peer id {request.peer_id!r}: {error}")
            return
        if len(request.version_vector) > self.limits.max_handshake_peers:
            self._fail(
                ErrorCode.HANDSHAKE_FAILED,
                f"the handshake's version vector names {len(request.version_vector)} peers;"
                f" the limit is {self.limits.max_handshake_peers}",
            )
            return
        if self._compressor.name not in request.compressions:
            offered = ", ".join(repr(name) for name in request.compressions) or "none at all"
            self._fail(
                ErrorCode.UNSUPPORTED_COMPRESSION,
                f"the client accepts the compressions {offered} but this server uses"
                f" {self._compressor.name!r}",
            )
            return
        self._state = target
        self._document_id = document_id
        self._peer_id = request.peer_id
        self._display_name = request.display_name
        self._client_version_vector = request.version_vector
        self._secret_hash = secret_hash(document_id, request.peer_id, request.replica_secret)
        self._events.append(HandshakeRequested(request, document_id))

    def refuse_upload(self, message: str) -> None:
        """Refuse a snapshot upload with ``FORBIDDEN_PEER`` but keep the connection:
        it held ops of a claimed peer that the server lacks, which an honest replica
        that joined from a snapshot may hold (``server.trust.upload_violation``).
        Nothing was merged; the client sends its own changes instead."""
        if self._require_open("refuse_upload"):
            self._queue(Error(ErrorCode.FORBIDDEN_PEER, message))

    def _refuse_read_only(self, what: str, count: int) -> None:
        """A read-only client tried to write: refuse it, apply nothing, stay open."""
        self._queue(
            Error(
                ErrorCode.READ_ONLY,
                f"this connection is read-only: {what} refused and not applied",
            )
        )
        self._events.append(ReadOnlyRefused(what, count))

    def _receive_error(self, message: Error) -> None:
        self._events.append(ErrorReceived(message.code, message.message))
        if message.code is ErrorCode.OUT_OF_SYNC:
            return  # not final: nothing to close
        self._close(
            SessionInput.ERROR_RECEIVED, CloseCode.NORMAL, f"client error {message.code.name}"
        )

    def _receive_status_request(self, message: DocumentStatusRequest) -> None:
        if not self._status_rate.take():
            self._fail(
                ErrorCode.RATE_LIMITED,
                f"more than {self.limits.status_burst} document status requests in a burst"
                f" ({self.limits.status_per_second:g} per second allowed)",
            )
            return
        document = self._require_document("answering a status request")
        # One answer per document version and requester vector, encoded once: a
        # client asking in a loop costs a dictionary lookup, not an encoding.
        cache = _cache_of(document)
        key = (message.version_vector, self._compressor.name)
        answer = cache.answers.get(key)
        if answer is None:
            payload = payload_for(document, message.version_vector)
            frames = [
                encode_message(
                    DocumentStatus(document.version_vector, payload.changes, payload.snapshot),
                    self._compressor,
                )
            ]
            if payload.then:
                frames.append(encode_changes_frame(payload.then, self._compressor))
            answer = (tuple(frames), payload.snapshot is not None, len(payload.changes))
            if len(cache.answers) >= _MAX_CACHED_ANSWERS:
                cache.answers.pop(next(iter(cache.answers)))
            cache.answers[key] = answer
        frames_sent, sent_snapshot, count = answer
        self._outgoing.extend(frames_sent)
        self._events.append(DocumentStatusSent(message.version_vector, sent_snapshot, count))

    def _require_document(self, what: str) -> CRDTDocument:
        if self._document is None:  # pragma: no cover - OPEN implies a document
            raise LocalProtocolError(f"{what} needs an accepted handshake")
        return self._document

    # -- driver actions -------------------------------------------------------------------

    def accept_handshake(
        self,
        document: CRDTDocument,
        epoch: str,
        version_vector: VersionVector | None = None,
        role: Role = Role.WRITE,
    ) -> None:
        """Admit the client to ``document`` and queue the handshake response.

        Args:
            document: the server's document (the session keeps it to answer
                status requests).
            epoch: the document's epoch id.
            version_vector: what the server has *durably* stored (the client
                treats it as acknowledged); defaults to the document's
                version vector. Must be covered by the document's.
            role: what the client may do; a READ client's changes and snapshot
                uploads are refused with ``READ_ONLY`` (nothing applied, the
                connection stays open).

        Raises:
            LocalProtocolError: not in HANDSHAKING.
        """
        self._advance(SessionInput.HANDSHAKE_ACCEPTED, "accept_handshake")
        self._document = document
        self._role = role
        payload = payload_for(document, self._client_version_vector)
        self._client_version_vector = VersionVector()  # not kept for the connection's life
        stored = version_vector if version_vector is not None else document.version_vector
        self._queue(
            HandshakeResponse(
                self.session_id,
                stored,
                epoch,
                payload.changes,
                payload.snapshot,
                self._compressor.name,
                role,
            )
        )
        if payload.then:
            # What the document applied since its cached snapshot: like a relay.
            self._outgoing.append(encode_changes_frame(payload.then, self._compressor))

    def reject_handshake(self, code: ErrorCode, message: str) -> None:
        """Refuse the client (DOCUMENT_NOT_FOUND, UNAUTHORIZED, ...): Error and close.

        Raises:
            LocalProtocolError: not in HANDSHAKING.
        """
        if self._next_state(SessionInput.HANDSHAKE_REJECTED) is None:
            raise LocalProtocolError(f"reject_handshake is not allowed in state {self._state.name}")
        self._queue(Error(code, message))
        self._close(SessionInput.HANDSHAKE_REJECTED, close_code_for(code), _reason(code, message))

    def _require_open(self, what: str) -> bool:
        """True to go on; False when CLOSED (ignored); raises before the handshake."""
        if self._state is SessionState.OPEN:
            return True
        if self._state is SessionState.CLOSED:
            return False
        raise LocalProtocolError(f"{what} is not allowed in state {self._state.name}")

    def send_changes(self, changes: Iterable[Change]) -> None:
        """Relay changes applied on the server (from other clients) to this client."""
        if self._require_open("send_changes"):
            batch = tuple(changes)
            if batch:
                self._queue(Changes(batch))

    def send_frame(self, frame: bytes) -> None:
        """Queue an already encoded frame (one encoding shared by many relay targets).

        The frame must have been encoded with this session's compressor.
        """
        if self._state is SessionState.OPEN:  # _require_open's common case, inline
            self._outgoing.append(frame)
        else:
            self._require_open("send_frame")  # CLOSED: ignored; before the handshake: raises

    def writable_now(self) -> bool:
        """Whether a frame handed straight to the socket leaves in order: the session
        is OPEN (:meth:`send_frame` would queue it) and nothing is queued before it."""
        return self._state is SessionState.OPEN and not self._outgoing

    def send_history(self, frame: bytes, next_cursor: int) -> None:
        """Queue an encoded ``HistoryResponse`` (``encode_history_frame`` with this
        session's compressor) whose next page starts at ``next_cursor`` (0: none):
        a request for exactly that page is not rate limited."""
        if self._require_open("send_history"):
            self._outgoing.append(frame)
            self._history_next = next_cursor

    def send_snapshot_push(self, version_vector: VersionVector, snapshot: Snapshot) -> None:
        """Push state this client lacks and no change describes (another client's
        snapshot upload): an unsolicited ``DocumentStatus`` with ``snapshot``.

        ``version_vector`` is what the server durably stores; the client merges
        the snapshot, then sends what that vector does not cover.
        """
        if self._require_open("send_snapshot_push"):
            self._queue(DocumentStatus(version_vector, snapshot=snapshot))

    def send_acknowledgement(self, version_vector: VersionVector, *, whole: bool = False) -> None:
        """Tell the client the server durably stored its changes up to ``version_vector``.

        ``version_vector`` is the server's durable vector. The ``Ack`` for changes
        carries only its entry for the client's own peer (protocol version 2):
        the client's changes are all of its own peer, that entry is all it
        counts, and the whole vector is about 2 KB at 50 writers, on every
        acknowledgement. With ``whole`` (the answer to a snapshot upload, which
        may hold any peer's ops) it carries the whole vector.
        """
        if self._require_open("send_acknowledgement"):
            if whole:
                self._queue(Ack(version_vector))
            else:
                peer = self._peer_id
                counter = version_vector.get(peer, 0) if peer is not None else 0
                self._outgoing.append(encode_ack_frame(peer, counter, self._compressor))

    def send_out_of_sync(self, message: str) -> None:
        """Report that the client's changes could not be applied (missing
        dependencies). The connection stays open: the client resynchronises."""
        if self._require_open("send_out_of_sync"):
            self._queue(Error(ErrorCode.OUT_OF_SYNC, message))

    def send_awareness(self, update: AwarenessUpdate) -> None:
        """Relay another peer's presence update."""
        if self._require_open("send_awareness"):
            self._queue(update)

    def send_awareness_state(self, states: Iterable[AwarenessUpdate]) -> None:
        """Send the presence of every peer on the document (answer to a query)."""
        if self._require_open("send_awareness_state"):
            self._queue(AwarenessState(tuple(states)))

    def send_ping(self, nonce: int, timestamp_ms: int = 0) -> None:
        """Queue a Ping (the client answers with a Pong: :class:`PongReceived`)."""
        if self._require_open("send_ping"):
            self._queue(Ping(nonce, timestamp_ms))

    def fail(self, code: ErrorCode, message: str) -> None:
        """End the session because of a server-side decision (limit exceeded,
        timeout, internal error): Error to the client and close. Allowed in
        every state but CLOSED, where it is ignored."""
        if self._state is SessionState.CLOSED:
            return
        self._queue(Error(code, message))
        self._close(SessionInput.LOCAL_CLOSE, close_code_for(code), _reason(code, message))

    def close(self, code: CloseCode = CloseCode.GOING_AWAY, reason: str = "server closing") -> None:
        """Close without an error (server shutting down). Idempotent."""
        if self._state is not SessionState.CLOSED:
            self._close(SessionInput.LOCAL_CLOSE, code, reason)

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The transport is gone. Idempotent; pending output is dropped."""
        if self._state is not SessionState.CLOSED:
            self._outgoing.clear()
            self._close(SessionInput.CONNECTION_LOST, CloseCode.GOING_AWAY, reason)
