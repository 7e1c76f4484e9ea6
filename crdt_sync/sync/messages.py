"""Sync protocol messages and their binary codec.

Theory of operation
-------------------
One WebSocket binary frame carries exactly one message. A frame is a fixed
5-byte header followed by the message body::

    offset 0  2 bytes  magic b"CS" (0x43 0x53)
    offset 2  1 byte   frame format version (FORMAT_VERSION = 1)
    offset 3  1 byte   message type (MessageType)
    offset 4  1 byte   flags: bit 0 = body compressed with the negotiated compressor;
                       every other bit must be 0
    offset 5  ...      body: the message's fields, in order, with the encodings below

Field encodings: ``uint`` is an unsigned LEB128 varint (at most 10 bytes, value
< 2**64); ``bytes`` is a uint length then that many bytes; ``str`` is ``bytes``
holding strict UTF-8; ``opt<T>`` is one byte 0 (absent) or 1 (present) then T;
``peer`` is a peer id: byte 0 then 16 raw bytes for a canonical (lowercase) UUID,
else ``str`` (``crdt_sync.codec.Writer.peer``); ``vv`` (version vector) is a uint
count then, sorted by peer, that many ``(peer, uint counter)`` pairs;
``changes`` is ``bytes`` holding
:func:`crdt_sync.encode_changes` output; ``snapshot`` is ``bytes`` holding
``Snapshot.to_bytes()``; ``json`` is ``str`` holding a JSON object.
``docs/protocol.md`` gives every message's layout; this module is its reference.

Decoding trusts nothing: every length is checked against what remains and
against a per-field bound, the whole frame against ``max_size``, a decompressed
body against ``max_size`` too, and any failure raises a subclass of
:class:`RemoteProtocolError` (malformed bytes: :class:`MessageDecodeError`, which
is also a :class:`crdt_sync.DecodeError`). Nothing else escapes
:func:`decode_message`.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from crdt_sync import Change, Snapshot, VersionVector, encode_changes
from crdt_sync.change_batch import ChangeBatch, decode_change_batch
from crdt_sync.changes import _one_change, decode_batch_within
from crdt_sync.codec import Reader, Writer, load_json
from crdt_sync.exceptions import DecodeError

from .access import Role
from .compression import Compressor, NoCompression
from .exceptions import (
    DecompressionError,
    ErrorCode,
    MessageDecodeError,
    MessageTooLarge,
    RemoteProtocolError,
    UnknownMessageType,
    UnsupportedProtocolVersion,
)
from .relay import MAX_ENTRIES, MAX_ENTRY_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Ack",
    "AwarenessQuery",
    "AwarenessState",
    "AwarenessUpdate",
    "Changes",
    "Dictionary",
    "DocumentStatus",
    "DocumentStatusRequest",
    "Error",
    "HandshakeRequest",
    "HandshakeResponse",
    "HistoryRequest",
    "HistoryResponse",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "Relay",
    "SnapshotUpload",
    "decode_message",
    "encode_ack_frame",
    "encode_changes_frame",
    "encode_dictionary_frame",
    "encode_history_frame",
    "encode_message",
    "encode_relay_frame",
    "peek_message_type",
]

MAGIC: Final = b"CS"
FORMAT_VERSION: Final = 1
"""Version of the frame header layout (magic, version, type, flags)."""
PROTOCOL_VERSION: Final = 4
"""Version of the message semantics and body layouts, negotiated in the handshake.
Version 3 writes peer ids (in version vectors, change batches, the handshake and
presence) as ``crdt_sync.codec.Writer.peer`` does: a canonical UUID as 16 raw bytes.
Version 4 adds the server's relay frames (:class:`Relay`, :class:`Dictionary`): peer
ids and handler names as references into a per-document dictionary."""
SUPPORTED_PROTOCOL_VERSIONS: Final = (4,)
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
"""Default bound on a frame and on a decompressed body (16 MiB)."""

HEADER_SIZE: Final = 5
FLAG_COMPRESSED: Final = 0x01
_KNOWN_FLAGS: Final = FLAG_COMPRESSED
# Bodies shorter than this are never worth compressing (gzip adds ~20 bytes).
_MIN_COMPRESS_SIZE: Final = 128

# Per-field bounds, in encoded bytes. They keep hostile input from making us hold
# absurd identifiers; the frame bound covers everything else.
MAX_ID_BYTES: Final = 256
"""document ids, peer ids, session ids, epochs, compression names."""
MAX_NAME_BYTES: Final = 1024
"""display names."""
MAX_TOKEN_BYTES: Final = 16 * 1024
"""auth tokens."""
MAX_ERROR_TEXT_BYTES: Final = 16 * 1024
"""human-readable error messages."""
MAX_AWARENESS_BYTES: Final = 64 * 1024
"""one peer's awareness state, as JSON."""
MIN_SECRET_BYTES: Final = 16
MAX_SECRET_BYTES: Final = 64
"""bounds of a replica secret (the handshake's proof that a peer id is this replica's)."""
MAX_COMPRESSIONS: Final = 16
"""compression names a client may offer in its handshake."""
MAX_COUNTER: Final = (1 << 63) - 1
"""version-vector counters, clocks, nonces and timestamps."""
_MAX_JSON_DEPTH: Final = 32


class MessageType(enum.IntEnum):
    """The type byte of a frame. Values are wire values: never renumber, only append."""

    HANDSHAKE_REQUEST = 0x01
    HANDSHAKE_RESPONSE = 0x02
    CHANGES = 0x03
    ACK = 0x04
    DOCUMENT_STATUS_REQUEST = 0x05
    DOCUMENT_STATUS = 0x06
    PING = 0x07
    PONG = 0x08
    SNAPSHOT_UPLOAD = 0x09
    AWARENESS_UPDATE = 0x10
    AWARENESS_QUERY = 0x11
    AWARENESS_STATE = 0x12
    HISTORY_REQUEST = 0x13
    HISTORY_RESPONSE = 0x14
    DICTIONARY = 0x15
    RELAY = 0x16
    ERROR = 0x7F


# The type byte's value -> its MessageType (a dict lookup: the enum's call costs
# a microsecond, on every frame).
_MESSAGE_TYPES: dict[int, MessageType] = {kind.value: kind for kind in MessageType}

# Frames of these types are never compressed, so they stay readable whatever the
# peers believe about compression (a mismatch must be reported, not garbled).
# The handshake response too: it names the compression the server chose, so the
# client must read it before it knows which one that is.

_NEVER_COMPRESSED: Final = frozenset(
    {MessageType.HANDSHAKE_REQUEST, MessageType.HANDSHAKE_RESPONSE, MessageType.ERROR}
)

AwarenessStateValue: TypeAlias = dict[str, Any]
"""One peer's presence state: a JSON object (name, colour, cursor, ...)."""


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """Client -> server, first message of a connection.

    ``version_vector`` is what the client's document holds; ``compressions`` the
    names of the compressors the client accepts, in its order of preference (the
    server picks the first it supports and names it in its response; at most
    :data:`MAX_COMPRESSIONS`). ``protocol_version``
    is the first field of the body so a server can refuse a version it does not
    speak before parsing the rest. ``replica_secret`` (16 to 64 bytes) proves that
    ``peer_id`` belongs to this replica: the server keeps a hash of the first
    secret presented for a peer id on a document and refuses any other
    (``PEER_ID_IN_USE``). It defaults to a fresh random secret (a one-off replica).
    """

    document_id: str
    peer_id: str
    version_vector: VersionVector
    display_name: str = ""
    auth_token: str | None = None
    compressions: tuple[str, ...] = ("none",)
    protocol_version: int = PROTOCOL_VERSION
    replica_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    TYPE = MessageType.HANDSHAKE_REQUEST

    def __post_init__(self) -> None:
        if isinstance(self.compressions, str):
            raise TypeError("compressions is a sequence of names, not one str")
        object.__setattr__(self, "compressions", tuple(self.compressions))


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """Server -> client, answer to a successful handshake.

    ``version_vector`` is the server document's version vector after the
    handshake; ``epoch`` a random id fixed when the server document was created
    (a change of epoch means the server's document was reset). Either
    ``changes`` (what the client lacks, causal order) or ``snapshot`` (the whole
    state, when smaller) is set, never both; both empty means nothing to send.
    ``compression`` is the compressor the server chose from the client's list
    (every later frame of the connection may use it); ``role`` what the client
    may do (:class:`~crdt_sync.sync.access.Role`: a READ client's changes are
    refused with ``READ_ONLY``).
    """

    session_id: str
    version_vector: VersionVector
    epoch: str
    changes: Sequence[Change] = ()
    snapshot: Snapshot | None = None
    compression: str = "none"
    role: Role = Role.WRITE

    TYPE = MessageType.HANDSHAKE_RESPONSE

    def __post_init__(self) -> None:
        _check_payload(self.changes, self.snapshot)


@dataclass(frozen=True, slots=True)
class Changes:
    """Either direction, after the handshake: changes in causal order.

    ``encoded``, set by :func:`decode_message`, is the change batch the frame
    carried (the bytes ``changes`` were decoded from: a server that applies
    exactly these changes stores and relays those bytes instead of encoding
    them again). It takes no part in equality. Decoded, ``changes`` is a
    :class:`~crdt_sync.ChangeBatch` (as in :class:`HandshakeResponse` and
    :class:`DocumentStatus`): checked whole, each change built only when
    asked for, and imported by runs (``crdt_sync/change_batch.py``)."""

    changes: Sequence[Change]
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    TYPE = MessageType.CHANGES


@dataclass(frozen=True, slots=True)
class Ack:
    """Server -> client: the server has applied and durably stored everything in
    ``version_vector`` (cumulative; a later Ack never covers less).

    Since protocol version 2 the Ack of ``Changes`` holds only the receiving
    client's own peer (what it counts as acknowledged), not the server's whole
    vector (the Ack of a ``SnapshotUpload`` still holds the whole vector); a
    client merges it into what it already knows is stored."""

    version_vector: VersionVector

    TYPE = MessageType.ACK


@dataclass(frozen=True, slots=True)
class DocumentStatusRequest:
    """Client -> server: "send me what I lack"; carries the client's version vector."""

    version_vector: VersionVector

    TYPE = MessageType.DOCUMENT_STATUS_REQUEST


@dataclass(frozen=True, slots=True)
class DocumentStatus:
    """Server -> client, answer to :class:`DocumentStatusRequest`: the server's version
    vector and either the changes the requester lacks or a snapshot (as in
    :class:`HandshakeResponse`)."""

    version_vector: VersionVector
    changes: Sequence[Change] = ()
    snapshot: Snapshot | None = None

    TYPE = MessageType.DOCUMENT_STATUS

    def __post_init__(self) -> None:
        _check_payload(self.changes, self.snapshot)


@dataclass(frozen=True, slots=True)
class Ping:
    """Either direction: liveness probe. ``nonce`` is echoed by the Pong;
    ``timestamp_ms`` is the sender's clock (informational)."""

    nonce: int
    timestamp_ms: int = 0

    TYPE = MessageType.PING


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to :class:`Ping`, echoing its ``nonce`` and ``timestamp_ms``."""

    nonce: int
    timestamp_ms: int = 0

    TYPE = MessageType.PONG


@dataclass(frozen=True, slots=True)
class SnapshotUpload:
    """Client -> server: the client's whole document state, sent instead of
    :class:`Changes` when the client cannot serve the server's missing changes as
    changes (``document.can_export(server_vv)`` is False: the document was loaded
    from a snapshot, imported one, or was compacted).

    The server merges it (``import_snapshot``: safe with concurrent edits),
    stores the merged state durably, then answers with an :class:`Ack` covering
    ``snapshot.version_vector`` and pushes the new state to the document's other
    clients (an unsolicited :class:`DocumentStatus` carrying a snapshot).
    """

    snapshot: Snapshot

    TYPE = MessageType.SNAPSHOT_UPLOAD


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    """Either direction: one peer's presence. ``clock`` grows with every update
    from that peer; ``state`` None means the peer left."""

    peer_id: str
    clock: int
    state: AwarenessStateValue | None

    TYPE = MessageType.AWARENESS_UPDATE


@dataclass(frozen=True, slots=True)
class AwarenessQuery:
    """Client -> server: ask for every peer's presence (answered by AwarenessState)."""

    TYPE = MessageType.AWARENESS_QUERY


@dataclass(frozen=True, slots=True)
class AwarenessState:
    """Server -> client: the presence of every peer on the document (all of it:
    a peer absent from ``states`` is gone)."""

    states: tuple[AwarenessUpdate, ...] = field(default=())

    TYPE = MessageType.AWARENESS_STATE


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """Client -> server: send the document's kept history, one page at a time.

    ``cursor`` 0 asks for the first page (from where the server's kept history
    starts); later pages pass the ``next_cursor`` of the previous answer. The
    cursor is the server's own position (opaque to the client)."""

    cursor: int = 0

    TYPE = MessageType.HISTORY_REQUEST


@dataclass(frozen=True, slots=True)
class HistoryResponse:
    """Server -> client, answer to :class:`HistoryRequest`: one page of the history.

    ``start`` is where the server's kept history starts: empty when it reaches
    back to the document's creation, else the version vector of the state
    ``base`` (sent on the first page only) from which ``changes`` replay; the
    history before it was dropped (retention, snapshot upload). ``changes`` are
    in causal order; ``next_cursor`` is 0 on the last page, else the cursor of
    the next :class:`HistoryRequest`.
    """

    start: VersionVector
    changes: tuple[Change, ...] = ()
    base: Snapshot | None = None
    next_cursor: int = 0

    TYPE = MessageType.HISTORY_RESPONSE


@dataclass(frozen=True, slots=True)
class Dictionary:
    """Server -> client (version 4): entries of the document's dictionary this
    connection has not been sent yet, numbered from ``first``, which must be the
    count the connection already holds (``crdt_sync/sync/relay.py``)."""

    first: int
    entries: tuple[str, ...]

    TYPE = MessageType.DICTIONARY


@dataclass(frozen=True, slots=True)
class Relay:
    """Server -> client (version 4): changes other clients made, as relay records
    (``body``) whose ids may be references into the connection's dictionary.

    Decoding the frame keeps the body as it is: only the receiving connection,
    which holds the dictionary, resolves it
    (:func:`crdt_sync.sync.relay.decode_relay`) into changes with full ids."""

    body: bytes

    TYPE = MessageType.RELAY


@dataclass(frozen=True, slots=True)
class Error:
    """Either direction: something went wrong. The sender closes the connection
    after sending it, except for ``OUT_OF_SYNC`` (the client resyncs)."""

    code: ErrorCode
    message: str = ""

    TYPE = MessageType.ERROR


Message: TypeAlias = (
    HandshakeRequest
    | HandshakeResponse
    | Changes
    | Ack
    | DocumentStatusRequest
    | DocumentStatus
    | Ping
    | Pong
    | SnapshotUpload
    | AwarenessUpdate
    | AwarenessQuery
    | AwarenessState
    | HistoryRequest
    | HistoryResponse
    | Dictionary
    | Relay
    | Error
)


def _encoded(changes: Sequence[Change]) -> bytes:
    """The change batch of ``changes``: the one they were decoded from, if they
    are a :class:`ChangeBatch` of one (nothing built or encoded again)."""
    if isinstance(changes, ChangeBatch) and changes.encoded is not None:
        return changes.encoded
    return encode_changes(list(changes))


def _check_payload(changes: Sequence[Change], snapshot: Snapshot | None) -> None:
    if changes and snapshot is not None:
        raise ValueError("a message carries changes or a snapshot, not both")


# --------------------------------------------------------------------------- writing


class _Writer(Writer):
    """The core's writer, with the wire's bounds on integers and named fields."""

    __slots__ = ()

    def uint(self, value: int) -> None:
        if value < 0 or value > MAX_COUNTER:
            raise ValueError(f"{value} is out of range for a wire integer")
        super().uint(value)

    def blob(self, data: bytes) -> None:
        self.bytes(data)

    def text(self, text: str, limit: int, what: str) -> None:
        data = text.encode("utf-8")
        if len(data) > limit:
            raise ValueError(f"{what} is {len(data)} bytes; the limit is {limit}")
        self.blob(data)

    def opt_str(self, text: str | None, limit: int, what: str) -> None:
        if text is None:
            self.byte(0)
        else:
            self.byte(1)
            self.text(text, limit, what)

    def peer_id(self, peer: str, what: str) -> None:
        size = len(peer.encode("utf-8"))
        if not 0 < size <= MAX_ID_BYTES:
            raise ValueError(f"{what} is {size} bytes; it must be 1 to {MAX_ID_BYTES}")
        self.peer(peer)

    def vv(self, vv: Mapping[str, int]) -> None:
        # The package's one version-vector layout (crdt_sync.codec), with the wire's bounds.
        for peer in vv:
            size = len(peer.encode("utf-8"))
            if size > MAX_ID_BYTES:
                raise ValueError(
                    f"a version vector peer is {size} bytes; the limit is {MAX_ID_BYTES}"
                )
        self.version_vector(vv)

    def payload(self, changes: Sequence[Change], snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            self.byte(1)
            self.blob(snapshot.to_bytes())
        else:
            self.byte(0)
            self.blob(_encoded(changes))

    def awareness(self, update: AwarenessUpdate) -> None:
        self.peer_id(update.peer_id, "an awareness peer id")
        self.uint(update.clock)
        if update.state is None:
            self.byte(0)
        else:
            if not isinstance(update.state, dict):
                raise TypeError("an awareness state must be a dict (a JSON object)")
            text = json.dumps(update.state, ensure_ascii=False, separators=(",", ":"))
            self.byte(1)
            self.text(text, MAX_AWARENESS_BYTES, "an awareness state")


def _encode_body(message: Message) -> bytes:
    w = _Writer()
    if isinstance(message, HandshakeRequest):
        w.uint(message.protocol_version)
        w.text(message.document_id, MAX_ID_BYTES, "the document id")
        w.peer_id(message.peer_id, "the peer id")
        w.vv(message.version_vector)
        w.text(message.display_name, MAX_NAME_BYTES, "the display name")
        w.opt_str(message.auth_token, MAX_TOKEN_BYTES, "the auth token")
        if len(message.compressions) > MAX_COMPRESSIONS:
            raise ValueError(f"at most {MAX_COMPRESSIONS} compressions may be offered")
        w.uint(len(message.compressions))
        for name in message.compressions:
            w.text(name, MAX_ID_BYTES, "a compression name")
        secret = bytes(message.replica_secret)
        if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"a replica secret is {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes,"
                f" not {len(secret)}"
            )
        w.blob(secret)
    elif isinstance(message, HandshakeResponse):
        w.text(message.session_id, MAX_ID_BYTES, "the session id")
        w.text(message.epoch, MAX_ID_BYTES, "the epoch")
        w.vv(message.version_vector)
        w.payload(message.changes, message.snapshot)
        w.text(message.compression, MAX_ID_BYTES, "the compression name")
        w.byte(int(message.role))
    elif isinstance(message, Changes):
        w.blob(_encoded(message.changes))
    elif isinstance(message, Ack | DocumentStatusRequest):
        w.vv(message.version_vector)
    elif isinstance(message, DocumentStatus):
        w.vv(message.version_vector)
        w.payload(message.changes, message.snapshot)
    elif isinstance(message, Ping | Pong):
        w.uint(message.nonce)
        w.uint(message.timestamp_ms)
    elif isinstance(message, SnapshotUpload):
        if not isinstance(message.snapshot, Snapshot):
            raise TypeError("a SnapshotUpload carries a crdt_sync.Snapshot")
        w.blob(message.snapshot.to_bytes())
    elif isinstance(message, AwarenessUpdate):
        w.awareness(message)
    elif isinstance(message, AwarenessQuery):
        pass
    elif isinstance(message, AwarenessState):
        w.uint(len(message.states))
        for update in message.states:
            w.awareness(update)
    elif isinstance(message, HistoryRequest):
        w.uint(message.cursor)
    elif isinstance(message, HistoryResponse):
        _history_body(w, message.start, message.base, [encode_changes(list(message.changes))])
        w.uint(message.next_cursor)
    elif isinstance(message, Dictionary):
        _dictionary_body(w, message.first, message.entries)
    elif isinstance(message, Relay):
        w.raw(message.body)
    elif isinstance(message, Error):
        w.uint(int(message.code))
        # Truncate rather than fail: an error report must always be sendable.
        text = message.message.encode("utf-8")[:MAX_ERROR_TEXT_BYTES]
        w.blob(text.decode("utf-8", "ignore").encode("utf-8"))
    else:
        raise TypeError(f"not a sync message: {type(message).__name__}")
    return bytes(w.buf)


def encode_message(message: Message, compressor: Compressor | None = None) -> bytes:
    """Encode ``message`` as one frame.

    With a ``compressor`` (other than :class:`NoCompression`) the body is
    compressed when that makes it smaller, except for ``HandshakeRequest`` and
    ``Error`` frames, which are never compressed. Raises ``ValueError`` /
    ``TypeError`` for a message that cannot be encoded (a field over its bound,
    a negative integer, a non-dict awareness state).
    """
    return _frame(message.TYPE, _encode_body(message), compressor)


def encode_changes_frame(encoded_changes: bytes, compressor: Compressor | None = None) -> bytes:
    """A ``Changes`` frame around changes already encoded by :func:`crdt_sync.encode_changes`.

    Equal to ``encode_message(Changes(changes), compressor)``; lets a server that
    stored ``encoded_changes`` relay the same bytes without encoding them again.
    """
    w = _Writer()
    w.blob(encoded_changes)
    return _frame(MessageType.CHANGES, bytes(w.buf), compressor)


def encode_ack_frame(peer: str | None, counter: int, compressor: Compressor | None = None) -> bytes:
    """An ``Ack`` frame carrying one peer's counter (none when ``counter`` is 0 or
    ``peer`` None): equal to ``encode_message(Ack(VersionVector({peer: counter})))``,
    without building the vector (a server acknowledges every batch it stores).
    The frame up to the counter is made once per peer (:func:`_ack_prefix`)."""
    if counter and peer is not None:
        prefix = _ACK_PREFIX.get(peer)
        if prefix is None:
            prefix = _ack_prefix(peer)
            if prefix is not None:
                if len(_ACK_PREFIX) >= _ACK_PREFIX_CACHE:
                    _ACK_PREFIX.clear()
                _ACK_PREFIX[peer] = prefix
        if prefix is not None:
            w = _Writer()
            w.buf += prefix
            w.uint(counter)
            return bytes(w.buf)
    w = _Writer()
    if counter and peer is not None:
        w.uint(1)
        w.peer_id(peer, "the peer id")
        w.uint(counter)
    else:
        w.uint(0)
    return _frame(MessageType.ACK, bytes(w.buf), compressor)


#: Ack frames up to the counter, by peer id (ids short enough that an Ack is never
#: compressed: every UUID): bounded.
_ACK_PREFIX: dict[str, bytes] = {}
_ACK_PREFIX_CACHE = 4096


def _ack_prefix(peer: str) -> bytes | None:
    """The Ack frame of ``peer`` without its counter, when that frame is never
    compressed whatever the counter (else None)."""
    w = _Writer()
    w.uint(1)
    w.peer_id(peer, "the peer id")
    if len(w.buf) + 9 >= _MIN_COMPRESS_SIZE:
        return None
    return MAGIC + bytes((FORMAT_VERSION, MessageType.ACK, 0)) + bytes(w.buf)


def _dictionary_body(w: _Writer, first: int, entries: Sequence[str]) -> None:
    if not entries or len(entries) > MAX_ENTRIES:
        raise ValueError(f"a dictionary delta holds 1 to {MAX_ENTRIES} entries")
    w.uint(first)
    w.uint(len(entries))
    for entry in entries:
        if len(entry.encode("utf-8", "surrogatepass")) > MAX_ENTRY_BYTES:
            raise ValueError(f"a dictionary entry is at most {MAX_ENTRY_BYTES} bytes")
        w.peer(entry)


def encode_dictionary_frame(
    first: int, entries: Sequence[str], compressor: Compressor | None = None
) -> bytes:
    """A ``Dictionary`` frame: equal to ``encode_message(Dictionary(first, entries))``."""
    w = _Writer()
    _dictionary_body(w, first, entries)
    return _frame(MessageType.DICTIONARY, bytes(w.buf), compressor)


def encode_relay_frame(
    count: int, base: int, records: Sequence[bytes], compressor: Compressor | None = None
) -> bytes:
    """A ``Relay`` frame holding ``count`` relay records of time ``base``, the
    concatenation of ``records`` (each part made once by
    :func:`crdt_sync.sync.relay.encode_records` with that base, and shared by every
    frame it goes in)."""
    w = _Writer()
    w.uint(count)
    if count:
        w.uint(base)
    for part in records:
        w.raw(part)
    return _frame(MessageType.RELAY, bytes(w.buf), compressor)


def _history_body(
    w: _Writer, start: Mapping[str, int], base: Snapshot | None, batches: Sequence[bytes]
) -> None:
    w.vv(start)
    if base is None:
        w.byte(0)
    else:
        w.byte(1)
        w.blob(base.to_bytes())
    w.uint(len(batches))
    for batch in batches:
        w.blob(batch)


def encode_history_frame(
    start: Mapping[str, int],
    base: Snapshot | None,
    batches: Sequence[bytes],
    next_cursor: int,
    compressor: Compressor | None = None,
) -> bytes:
    """A ``HistoryResponse`` frame around change batches already encoded by
    :func:`crdt_sync.encode_changes` (stored batches are sent as they are, never
    decoded). A client decodes it into one :class:`HistoryResponse` holding the
    batches' changes in order."""
    w = _Writer()
    _history_body(w, start, base, batches)
    w.uint(next_cursor)
    return _frame(MessageType.HISTORY_RESPONSE, bytes(w.buf), compressor)


def _frame(kind: MessageType, body: bytes, compressor: Compressor | None) -> bytes:
    flags = 0
    if (
        compressor is not None
        and not isinstance(compressor, NoCompression)
        and kind not in _NEVER_COMPRESSED
        and len(body) >= _MIN_COMPRESS_SIZE
    ):
        packed = compressor.compress(body)
        if len(packed) < len(body):
            body = packed
            flags |= FLAG_COMPRESSED
    return MAGIC + bytes((FORMAT_VERSION, kind, flags)) + body


# --------------------------------------------------------------------------- reading


class _Reader(Reader):
    """The core's reader, with named fields in its errors and offsets into the frame."""

    __slots__ = ("base", "max_size")

    def __init__(self, data: bytes, base: int, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(data)
        # Offset of data[0] in the frame, so errors point into the frame
        # (meaningful for uncompressed bodies).
        self.base = base
        # Bound on what the change and snapshot formats' own compression may
        # inflate to: the same as the frame's (one limit for every decompression).
        self.max_size = max_size

    def fail(self, message: str) -> MessageDecodeError:
        return MessageDecodeError(message, self.base + self.pos)

    def flag(self, what: str) -> bool:
        value = self.byte()
        if value > 1:
            raise MessageDecodeError(
                f"{what}: expected 0 or 1, got {value}", self.base + self.pos - 1
            )
        return value == 1

    def number(self, what: str, limit: int = MAX_COUNTER) -> int:
        """A varint field named ``what`` (for the error message), at most ``limit``."""
        try:
            return super().uint(limit)
        except DecodeError as exc:
            raise MessageDecodeError(f"{what}: {exc.detail}", self.base + exc.offset) from None

    def blob(self, what: str, limit: int | None = None) -> bytes:
        remaining = self.end - self.pos
        n = self.number(what, remaining if limit is None else min(limit, remaining))
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def text(self, what: str, limit: int) -> str:
        start = self.pos
        raw = self.blob(what, limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageDecodeError(f"{what}: invalid UTF-8", self.base + start) from None

    def opt_str(self, what: str, limit: int) -> str | None:
        return self.text(what, limit) if self.flag(what) else None

    def peer_id(self, what: str, max_bytes: int = MAX_ID_BYTES) -> str:
        # The package's one peer-id codec (crdt_sync.codec), with the wire's bound.
        start = self.pos
        try:
            return self.peer(max_bytes)
        except MessageDecodeError as exc:
            raise MessageDecodeError(f"{what}: {exc.detail}", exc.offset) from None
        except DecodeError as exc:
            raise MessageDecodeError(f"{what}: {exc.detail}", self.base + start) from None

    def dictionary_entry(self) -> str:
        return self.peer_id("dictionary entry", MAX_ENTRY_BYTES)

    def vv(self, what: str) -> VersionVector:
        # The package's one version-vector codec (crdt_sync.codec), with the wire's bounds.
        try:
            vv: VersionVector = self.version_vector(MAX_ID_BYTES, MAX_COUNTER)
        except MessageDecodeError as exc:
            raise MessageDecodeError(f"{what}: {exc.detail}", exc.offset) from None
        except DecodeError as exc:
            offset = self.base + exc.offset if exc.offset >= 0 else -1
            raise MessageDecodeError(f"{what}: {exc.detail}", offset) from None
        return vv

    def changes(self, what: str) -> ChangeBatch:
        return self.changes_and_bytes(what)[0]

    def changes_and_bytes(self, what: str) -> tuple[ChangeBatch, bytes]:
        # Checked whole, kept as decoded segments: the changes are built only
        # if asked for, and an import applies the segments by runs.
        start = self.pos
        raw = self.blob(what)
        try:
            return decode_change_batch(raw, self.max_size), raw
        except DecodeError as exc:
            raise MessageDecodeError(f"{what}: {exc}", self.base + start) from None
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
            # The core decoder should only raise DecodeError; this is a network
            # boundary, so anything else still becomes a typed error.
            raise MessageDecodeError(f"{what}: {exc!r}", self.base + start) from None

    def snapshot(self, what: str) -> Snapshot:
        start = self.pos
        raw = self.blob(what)
        try:
            return Snapshot.from_bytes(raw, self.max_size)
        except DecodeError as exc:
            raise MessageDecodeError(f"{what}: {exc}", self.base + start) from None
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
            raise MessageDecodeError(f"{what}: {exc!r}", self.base + start) from None

    def payload(self, what: str) -> tuple[Sequence[Change], Snapshot | None]:
        if self.flag(f"{what} kind"):
            return (), self.snapshot(f"{what} snapshot")
        return self.changes(f"{what} changes"), None

    def awareness(self) -> AwarenessUpdate:
        peer_id = self.peer_id("awareness peer id")
        clock = self.number("awareness clock")
        state: AwarenessStateValue | None = None
        if self.flag("awareness state presence"):
            start = self.pos
            text = self.text("awareness state", MAX_AWARENESS_BYTES)
            state = _load_state(text, self.base + start)
        return AwarenessUpdate(peer_id, clock, state)

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes")


def _load_state(text: str, offset: int) -> AwarenessStateValue:
    # The package's one JSON validator (crdt_sync.codec.load_json), awareness depth.
    try:
        value = load_json(text, offset, _MAX_JSON_DEPTH + 1)
    except DecodeError as exc:
        raise MessageDecodeError(f"awareness state is not JSON: {exc.detail}", offset) from None
    if not isinstance(value, dict):
        raise MessageDecodeError("awareness state is not a JSON object", offset)
    return value


def _decode_body(kind: MessageType, r: _Reader) -> Message:
    message: Message
    if kind is MessageType.HANDSHAKE_REQUEST:
        version = r.number("protocol version")
        if version not in SUPPORTED_PROTOCOL_VERSIONS:
            raise UnsupportedProtocolVersion(version, SUPPORTED_PROTOCOL_VERSIONS)
        document_id = r.text("document id", MAX_ID_BYTES)
        peer_id = r.peer_id("peer id")
        vv = r.vv("version vector")
        display_name = r.text("display name", MAX_NAME_BYTES)
        auth_token = r.opt_str("auth token", MAX_TOKEN_BYTES)
        count = r.number("compression count", MAX_COMPRESSIONS)
        compressions = tuple(r.text("compression", MAX_ID_BYTES) for _ in range(count))
        start = r.pos
        secret = r.blob("replica secret", MAX_SECRET_BYTES)
        if len(secret) < MIN_SECRET_BYTES:
            raise MessageDecodeError(
                f"replica secret: {len(secret)} bytes, at least {MIN_SECRET_BYTES} needed",
                r.base + start,
            )
        message = HandshakeRequest(
            document_id, peer_id, vv, display_name, auth_token, compressions, version, secret
        )
    elif kind is MessageType.HANDSHAKE_RESPONSE:
        session_id = r.text("session id", MAX_ID_BYTES)
        epoch = r.text("epoch", MAX_ID_BYTES)
        vv = r.vv("version vector")
        changes, snapshot = r.payload("handshake")
        compression = r.text("compression", MAX_ID_BYTES)
        start = r.pos
        role_value = r.byte()
        if role_value not in tuple(Role):
            raise MessageDecodeError(f"role: unknown value {role_value}", r.base + start)
        message = HandshakeResponse(
            session_id, vv, epoch, changes, snapshot, compression, Role(role_value)
        )
    elif kind is MessageType.CHANGES:
        message = Changes(*r.changes_and_bytes("changes"))
    elif kind is MessageType.ACK:
        message = Ack(r.vv("version vector"))
    elif kind is MessageType.DOCUMENT_STATUS_REQUEST:
        message = DocumentStatusRequest(r.vv("version vector"))
    elif kind is MessageType.DOCUMENT_STATUS:
        vv = r.vv("version vector")
        changes, snapshot = r.payload("document status")
        message = DocumentStatus(vv, changes, snapshot)
    elif kind is MessageType.PING:
        message = Ping(r.number("nonce"), r.number("timestamp"))
    elif kind is MessageType.PONG:
        message = Pong(r.number("nonce"), r.number("timestamp"))
    elif kind is MessageType.SNAPSHOT_UPLOAD:
        message = SnapshotUpload(r.snapshot("uploaded snapshot"))
    elif kind is MessageType.AWARENESS_UPDATE:
        message = r.awareness()
    elif kind is MessageType.AWARENESS_QUERY:
        message = AwarenessQuery()
    elif kind is MessageType.AWARENESS_STATE:
        # An entry takes at least 3 bytes (empty peer, clock, presence flag).
        n = r.number("awareness count", (r.end - r.pos) // 3)
        states = tuple(r.awareness() for _ in range(n))
        message = AwarenessState(states)
    elif kind is MessageType.HISTORY_REQUEST:
        message = HistoryRequest(r.number("history cursor"))
    elif kind is MessageType.HISTORY_RESPONSE:
        start_vv = r.vv("history start")
        base = r.snapshot("history base") if r.flag("history base presence") else None
        # A batch takes at least 1 byte (its length), which bounds the count by the input.
        n = r.number("history batch count", r.end - r.pos)
        history: list[Change] = []
        # One bound for the whole page: the batches together inflate to at most
        # max_size (each batch alone could, so a count of them could not). Each
        # is inflated once, measured as it is decoded.
        budget = r.max_size
        for _ in range(n):
            start = r.pos
            raw = r.blob("history changes")
            try:
                decoded, size = decode_batch_within(raw, budget)
                budget -= size
                history.extend(ChangeBatch(decoded))
            except DecodeError as exc:
                raise MessageDecodeError(f"history changes: {exc}", r.base + start) from None
            except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
                raise MessageDecodeError(f"history changes: {exc!r}", r.base + start) from None
        message = HistoryResponse(start_vv, tuple(history), base, r.number("next cursor"))
    elif kind is MessageType.DICTIONARY:
        first = r.number("dictionary first index", MAX_ENTRIES)
        # An entry takes at least 2 bytes (a one-byte string).
        n = r.number("dictionary entry count", min(MAX_ENTRIES, (r.end - r.pos) // 2))
        if not n:
            raise r.fail("an empty dictionary delta")
        message = Dictionary(first, tuple(r.dictionary_entry() for _ in range(n)))
    elif kind is MessageType.RELAY:
        message = Relay(r.raw(r.end - r.pos))
    else:  # MessageType.ERROR
        code = ErrorCode.from_wire(r.number("error code"))
        raw = r.blob("error message", MAX_ERROR_TEXT_BYTES)
        # Error text is for humans: be lenient rather than lose the report.
        message = Error(code, raw.decode("utf-8", "replace"))
    r.expect_end()
    return message


#: The header of an uncompressed ``CHANGES`` frame.
_CHANGES_HEADER: Final = MAGIC + bytes((FORMAT_VERSION, MessageType.CHANGES, 0))


def _keystroke(data: bytes, max_size: int) -> Changes | None:
    """The ``Changes`` of an uncompressed ``CHANGES`` frame ``data`` whose batch
    (its length in one or two bytes, then the batch up to the frame's end) holds
    one change that :func:`crdt_sync.changes._one_change` reads; None otherwise
    (the general way then decodes the frame, errors included)."""
    size = len(data) - HEADER_SIZE - 1
    if size < 1:
        return None
    length = data[HEADER_SIZE]
    if length >= 0x80:
        high = data[HEADER_SIZE + 1] if size > 1 else 0x80
        if high >= 0x80:
            return None
        length = (length & 0x7F) | high << 7
        size -= 1
    if length != size:
        return None
    raw = data[len(data) - size :]
    one = _one_change(raw, max_size)
    if one is None:
        return None
    return Changes((Change(one),), raw)


def peek_message_type(data: bytes) -> MessageType | None:
    """The type of a frame, or None when the header is not a valid frame header."""
    if len(data) < HEADER_SIZE or data[:2] != MAGIC or data[2] != FORMAT_VERSION:
        return None
    try:
        return MessageType(data[3])
    except ValueError:
        return None


def decode_message(
    data: bytes,
    compressor: Compressor | None = None,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> Message:
    """Decode one frame.

    ``compressor`` is the negotiated compressor (None or :class:`NoCompression`
    when none was negotiated: a compressed frame is then an error). Raises only
    subclasses of :class:`RemoteProtocolError`: :class:`MessageTooLarge` (frame or
    decompressed body over ``max_size``), :class:`UnsupportedProtocolVersion`
    (frame format, or a handshake's protocol version), :class:`UnknownMessageType`,
    :class:`DecompressionError`, or :class:`MessageDecodeError` for anything else.
    """
    if type(data) is bytes and data.startswith(_CHANGES_HEADER) and len(data) <= max_size:
        # A keystroke: one change in an uncompressed batch that fills the frame,
        # read by the batch decoder's one-change fast path (which gives what the
        # general way gives, or declines: then the general way reads it).
        one = _keystroke(data, max_size)
        if one is not None:
            return one
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageDecodeError(f"a frame is bytes, not {type(data).__name__}", 0)
    data = bytes(data)
    if len(data) > max_size:
        raise MessageTooLarge(len(data), max_size, "frame")
    if len(data) < HEADER_SIZE:
        raise MessageDecodeError(f"truncated frame header ({len(data)} of 5 bytes)", len(data))
    if data[:2] != MAGIC:
        raise MessageDecodeError("bad magic: not a crdt_sync frame", 0)
    if data[2] != FORMAT_VERSION:
        raise UnsupportedProtocolVersion(data[2], (FORMAT_VERSION,), "frame format")
    kind = _MESSAGE_TYPES.get(data[3])  # MessageType(byte), without the enum's call
    if kind is None:
        raise UnknownMessageType(data[3], 3)
    flags = data[4]
    if flags & ~_KNOWN_FLAGS:
        raise MessageDecodeError(f"unknown flags 0x{flags:02x}", 4)
    body = data[HEADER_SIZE:]
    if flags & FLAG_COMPRESSED:
        if kind in _NEVER_COMPRESSED:
            raise DecompressionError(f"a {kind.name} frame must not be compressed", 4)
        if compressor is None or isinstance(compressor, NoCompression):
            raise DecompressionError("compressed frame, but no compression was negotiated", 4)
        try:
            body = compressor.decompress(body, max_size)
        except RemoteProtocolError:
            raise
        except Exception as exc:  # a plug-in compressor's own error type
            raise DecompressionError(f"{compressor.name}: {exc!r}", HEADER_SIZE) from None
    return _decode_body(kind, _Reader(body, HEADER_SIZE, max_size))
