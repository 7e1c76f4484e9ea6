"""The server session's side of HistoryRequest: any role may ask, first pages are
rate limited, a walk through the pages is not, a client's HistoryResponse is refused."""

from __future__ import annotations

from crdt_sync import CRDTDocument, PeerId, VersionVector
from crdt_sync.sync import (
    ErrorCode,
    HandshakeRequest,
    HistoryRequest,
    HistoryResponse,
    Role,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import encode_history_frame
from server.session import HistoryRequested, ServerSession, SessionState


def open_session(role: Role = Role.WRITE) -> ServerSession:
    session = ServerSession("notes")
    peer = str(PeerId.generate())
    session.receive_message(encode_message(HandshakeRequest("notes", peer, VersionVector())))
    session.events_received()
    session.accept_handshake(CRDTDocument(document_id="notes"), "epoch", role=role)
    session.messages_to_send()
    return session


def test_first_pages_are_rate_limited_and_a_walk_is_not() -> None:
    session = open_session()
    burst = session.limits.status_burst
    # A walk through a long history: one token for the first page, then each
    # next page (the cursor the server handed out) is free.
    session.receive_message(encode_message(HistoryRequest(0)))
    assert session.events_received() == [HistoryRequested(0)]
    for cursor in range(1, 3 * burst):
        session.send_history(encode_history_frame({}, None, [], cursor), cursor)
        session.messages_to_send()
        session.receive_message(encode_message(HistoryRequest(cursor)))
        assert session.events_received() == [HistoryRequested(cursor)]
    # Asking for the start again and again is not.
    for _ in range(burst - 1):
        session.receive_message(encode_message(HistoryRequest(0)))
    assert session.state is SessionState.OPEN
    session.receive_message(encode_message(HistoryRequest(0)))
    assert session.state is SessionState.CLOSED
    [*_, last] = [decode_message(frame) for frame in session.messages_to_send()]
    assert getattr(last, "code", None) is ErrorCode.RATE_LIMITED


def test_a_server_never_accepts_a_history_response() -> None:
    session = open_session()
    session.receive_message(encode_message(HistoryResponse(VersionVector())))
    assert session.state is SessionState.CLOSED


def test_a_read_only_session_may_ask_for_history() -> None:
    session = open_session(Role.READ)
    session.receive_message(encode_message(HistoryRequest(0)))
    assert session.events_received() == [HistoryRequested(0)]
    assert session.state is SessionState.OPEN
