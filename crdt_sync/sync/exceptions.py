"""Exceptions and error codes of the sync protocol (:mod:`crdt_sync.sync`).

The tree (every class is also a :class:`crdt_sync.CRDTError`)::

    CRDTError
    └── ProtocolError                  base of everything the sync layer raises; has .code
        ├── RemoteProtocolError        the peer sent something we cannot accept
        │   ├── MessageDecodeError     malformed / truncated / hostile frame bytes
        │   │   │                      (also a crdt_sync.DecodeError: carries .offset)
        │   │   ├── DictionaryError    a relay names a dictionary entry never sent, or a
        │   │   │                      dictionary delta does not continue the connection's
        │   │   ├── DecompressionError the body is not valid data for the negotiated
        │   │   │                      compressor, or compression was not negotiated
        │   │   └── UnknownMessageType a type byte this version does not define
        │   ├── MessageTooLarge        a frame or a decompressed body exceeds its bound
        │   ├── UnsupportedProtocolVersion   frame or handshake of a version we do not speak
        │   └── UnexpectedMessage      a well-formed message that is not allowed in the
        │                              current state (e.g. changes before the handshake)
        ├── LocalProtocolError         our own code misused the protocol object: an action
        │                              not allowed in the current state (names both)
        └── RemoteError                the peer sent an Error message (code + message);
                                       raised by the client driver, never by the codec

Remote garbage never escapes :meth:`ClientProtocol.receive_message`: it is turned
into an ``ErrorOccurred`` event, an ``Error`` message to send, and the closed state.
Every exception carries the :class:`ErrorCode` that goes on the wire for it.
"""

from __future__ import annotations

import enum

from crdt_sync.exceptions import CRDTError, DecodeError

__all__ = [
    "FINAL_ERROR_CODES",
    "DecompressionError",
    "DictionaryError",
    "ErrorCode",
    "LocalProtocolError",
    "MessageDecodeError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "UnexpectedMessage",
    "UnknownMessageType",
    "UnsupportedProtocolVersion",
]


class ErrorCode(enum.IntEnum):
    """Error codes carried by ``Error`` messages. The integer is the wire value.

    Values are part of the protocol: never renumber, only append.
    """

    HANDSHAKE_FAILED = 1
    """The handshake request was refused for a reason not covered below."""
    UNSUPPORTED_PROTOCOL_VERSION = 2
    """The frame format or the handshake's protocol version is not spoken here."""
    INVALID_MESSAGE = 3
    """Malformed bytes, an unknown message type, or a message out of order."""
    MESSAGE_TOO_LARGE = 4
    """A frame (or its decompressed body) exceeds the receiver's size bound."""
    DOCUMENT_NOT_FOUND = 5
    """The document does not exist and the server does not create documents."""
    OUT_OF_SYNC = 6
    """The server could not apply changes (missing dependencies): resync."""
    UNAUTHORIZED = 7
    """The auth token is missing or wrong."""
    TIMEOUT = 8
    """The handshake or a ping was not answered in time."""
    INTERNAL_ERROR = 9
    """A bug or failure on the sender's side (also used for unknown codes)."""
    UNSUPPORTED_COMPRESSION = 10
    """Client and server do not use the same compression."""
    TOO_MANY_CONNECTIONS = 11
    """The server is at its connection limit; try again later."""
    LIMIT_EXCEEDED = 12
    """Another bound was exceeded (pending changes, document size, quota); try again later."""
    PEER_ID_IN_USE = 13
    """The peer id belongs to another replica (another secret claimed it first), or a
    live connection already uses it. Final: continue under a fresh peer id
    (:func:`crdt_sync.sync.fork_with_new_peer`)."""
    READ_ONLY = 14
    """The connection is read-only: the changes sent were refused, nothing applied.
    Not final and not closing: the connection stays open."""
    RATE_LIMITED = 15
    """The client sent more messages or bytes than its rate allows; reconnect later."""
    FORBIDDEN_PEER = 16
    """A change, snapshot or awareness update speaks for another peer than the
    connection's own. Final (an honest client never sends one), except for a
    snapshot upload holding a claimed peer's ops the server lacks, which an
    honest replica that joined from a snapshot may hold: the server then keeps
    the connection, and the client sends its own changes instead."""
    STORAGE_UNAVAILABLE = 17
    """The server cannot reach its store (its database or Redis) right now: what the
    client sent was not acknowledged (it keeps it). Reconnect later and resend."""

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """The code for a wire value; an unknown value maps to INTERNAL_ERROR."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


FINAL_ERROR_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.DOCUMENT_NOT_FOUND,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
        ErrorCode.UNSUPPORTED_COMPRESSION,
        ErrorCode.HANDSHAKE_FAILED,
        ErrorCode.PEER_ID_IN_USE,
        ErrorCode.FORBIDDEN_PEER,
    }
)
"""Errors after which reconnecting cannot help: a client stops in the ERROR state."""


class ProtocolError(CRDTError):
    """Base of the sync layer's errors. ``code`` is the wire code that reports it."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message we cannot accept."""

    code = ErrorCode.INVALID_MESSAGE


class MessageDecodeError(RemoteProtocolError, DecodeError):
    """A frame could not be decoded. ``offset`` is the byte where decoding stopped (or -1)."""

    code = ErrorCode.INVALID_MESSAGE

    def __init__(self, message: str, offset: int = -1) -> None:
        DecodeError.__init__(self, message, offset)
        self.message = str(self)


class DictionaryError(MessageDecodeError):
    """Protocol version 4's peer dictionary misused by the server: a relay refers to
    an entry this connection was never sent, or a ``Dictionary`` delta skips or
    repeats indices, or would grow it past its bound (``crdt_sync/sync/relay.py``)."""


class DecompressionError(MessageDecodeError):
    """A compressed body is corrupt, or arrived when no compression was negotiated."""


class UnknownMessageType(MessageDecodeError):
    """The frame's type byte names no message of this protocol version."""

    def __init__(self, type_code: int, offset: int = -1) -> None:
        super().__init__(f"unknown message type 0x{type_code:02x}", offset)
        self.type_code = type_code


class MessageTooLarge(RemoteProtocolError):
    """A frame, or a body after decompression, is larger than the receiver accepts."""

    code = ErrorCode.MESSAGE_TOO_LARGE

    def __init__(self, size: int, limit: int, what: str = "message") -> None:
        super().__init__(f"{what} of at least {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnsupportedProtocolVersion(RemoteProtocolError):
    """The peer speaks a frame format or protocol version we do not."""

    code = ErrorCode.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(self, version: int, supported: tuple[int, ...], what: str = "protocol") -> None:
        super().__init__(
            f"unsupported {what} version {version}; supported: "
            + ", ".join(str(v) for v in supported)
        )
        self.version = version
        self.supported = supported


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed message arrived in a state that does not allow it."""

    code = ErrorCode.INVALID_MESSAGE

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"{event} is not allowed in state {state}")
        self.state = state
        self.event = event


class LocalProtocolError(ProtocolError):
    """Our own code asked the protocol object for something the current state forbids."""

    code = ErrorCode.INTERNAL_ERROR

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"{event} is not allowed in state {state}")
        self.state = state
        self.event = event


class RemoteError(ProtocolError):
    """The peer reported an error with an ``Error`` message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}", code)
        self.remote_message = message

    @property
    def final(self) -> bool:
        """True when reconnecting cannot help (see :data:`FINAL_ERROR_CODES`)."""
        return self.code in FINAL_ERROR_CODES
