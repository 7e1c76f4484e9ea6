"""A minimal in-memory, sans-I/O stand-in for the sync server, for client tests.

It follows docs/protocol.md from the server's side just far enough to exercise
the client: handshake (with compression and document checks), changes + Ack +
relay, document status, ping/pong, awareness, and scripted misbehaviour. The
real server lives in ``server/``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from crdt_sync import CRDTDocument
from crdt_sync.sync import (
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
    Message,
    NoCompression,
    Ping,
    Pong,
    RemoteProtocolError,
    decode_message,
    encode_message,
)


@dataclass
class FakeSession:
    session_id: str
    outbox: list[bytes] = field(default_factory=list)
    peer_id: str | None = None
    closed: bool = False
    received: list[Message] = field(default_factory=list)


class FakeServer:
    """One document, many sessions. ``answer_pings`` / ``ack`` can be switched off."""

    def __init__(
        self,
        document_id: str = "doc",
        *,
        compressor: Compressor | None = None,
        epoch: str = "epoch-1",
        use_snapshot: bool = False,
        known_documents: set[str] | None = None,
        auth_token: str | None = None,
    ) -> None:
        self.document = CRDTDocument(document_id=document_id)
        self.document_id = document_id
        self.compressor: Compressor = compressor or NoCompression()
        self.epoch = epoch
        self.use_snapshot = use_snapshot
        self.known_documents = known_documents
        self.auth_token = auth_token
        self.answer_pings = True
        self.ack = True
        self.out_of_sync_next = False
        self.sessions: dict[str, FakeSession] = {}
        self.awareness: dict[str, AwarenessUpdate] = {}
        self._ids = itertools.count(1)

    def open_session(self) -> FakeSession:
        session = FakeSession(f"s{next(self._ids)}")
        self.sessions[session.session_id] = session
        return session

    def _send(self, session: FakeSession, message: Message) -> None:
        session.outbox.append(encode_message(message, self.compressor))

    def _fail(self, session: FakeSession, code: ErrorCode, text: str) -> None:
        session.outbox.append(encode_message(Error(code, text)))
        self.close_session(session)

    def close_session(self, session: FakeSession) -> None:
        if session.closed:
            return
        session.closed = True
        if session.peer_id in self.awareness:
            gone = self.awareness.pop(session.peer_id)
            leave = AwarenessUpdate(gone.peer_id, gone.clock, None)
            for other in self._others(session):
                self._send(other, leave)

    def _others(self, session: FakeSession) -> list[FakeSession]:
        return [
            s
            for s in self.sessions.values()
            if s is not session and not s.closed and s.peer_id is not None
        ]

    def receive(self, session: FakeSession, data: bytes) -> None:
        if session.closed:
            return
        compressor = self.compressor if session.peer_id is not None else None
        try:
            message = decode_message(data, compressor)
        except RemoteProtocolError as exc:
            self._fail(session, exc.code, exc.message)
            return
        session.received.append(message)
        if session.peer_id is None:
            if not isinstance(message, HandshakeRequest):
                self._fail(session, ErrorCode.INVALID_MESSAGE, "handshake first")
                return
            self._handshake(session, message)
            return
        if isinstance(message, Changes):
            if self.out_of_sync_next:
                self.out_of_sync_next = False
                self._send(session, Error(ErrorCode.OUT_OF_SYNC, "missing dependencies"))
                return
            before = self.document.pending_count
            self.document.import_changes(message.changes)
            if self.document.pending_count > before:
                self._send(session, Error(ErrorCode.OUT_OF_SYNC, "missing dependencies"))
            if self.ack:
                self._send(session, Ack(self.document.version_vector))
            for other in self._others(session):
                self._send(other, Changes(message.changes))
        elif isinstance(message, DocumentStatusRequest):
            self._send(
                session,
                DocumentStatus(
                    self.document.version_vector,
                    tuple(self.document.export_changes(message.version_vector)),
                ),
            )
        elif isinstance(message, Ping):
            if self.answer_pings:
                self._send(session, Pong(message.nonce, message.timestamp_ms))
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, AwarenessUpdate):
            self.awareness[message.peer_id] = message
            for other in self._others(session):
                self._send(other, message)
        elif isinstance(message, AwarenessQuery):
            self._send(session, AwarenessState(tuple(self.awareness.values())))
        else:
            self._fail(session, ErrorCode.INVALID_MESSAGE, f"unexpected {type(message).__name__}")

    def _handshake(self, session: FakeSession, request: HandshakeRequest) -> None:
        if self.known_documents is not None and request.document_id not in self.known_documents:
            self._fail(session, ErrorCode.DOCUMENT_NOT_FOUND, request.document_id)
            return
        if self.auth_token is not None and request.auth_token != self.auth_token:
            self._fail(session, ErrorCode.UNAUTHORIZED, "bad token")
            return
        if self.compressor.name not in request.compressions:
            self._fail(
                session,
                ErrorCode.UNSUPPORTED_COMPRESSION,
                f"client accepts {request.compressions!r}, server uses {self.compressor.name!r}",
            )
            return
        session.peer_id = request.peer_id
        if self.use_snapshot:
            response = HandshakeResponse(
                session.session_id,
                self.document.version_vector,
                self.epoch,
                snapshot=self.document.take_snapshot(),
                compression=self.compressor.name,
            )
        else:
            response = HandshakeResponse(
                session.session_id,
                self.document.version_vector,
                self.epoch,
                tuple(self.document.export_changes(request.version_vector)),
                compression=self.compressor.name,
            )
        self._send(session, response)
