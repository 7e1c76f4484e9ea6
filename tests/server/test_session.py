"""The server-side protocol object, in memory: no sockets, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import (
    Ack,
    AwarenessQuery,
    AwarenessState,
    AwarenessUpdate,
    Changes,
    DocumentStatus,
    DocumentStatusRequest,
    Error,
    ErrorCode,
    GzipCompressor,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    Ping,
    Pong,
    Role,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import SnapshotUpload
from server.exceptions import LocalProtocolError
from server.session import (
    TRANSITIONS,
    AwarenessQueried,
    AwarenessReceived,
    ChangesReceived,
    CloseCode,
    DocumentStatusSent,
    ErrorReceived,
    HandshakeRequested,
    PingReceived,
    PongReceived,
    ProtocolViolation,
    ReadOnlyRefused,
    ServerSession,
    SessionClosed,
    SessionInput,
    SessionState,
    SnapshotUploaded,
)
from server.trust import Limits

pytestmark = pytest.mark.timeout(60)

PEER = str(PeerId.generate())


def frame(message: Message, compressor: GzipCompressor | None = None) -> bytes:
    return encode_message(message, compressor)


def sent(session: ServerSession, compressor: GzipCompressor | None = None) -> list[Message]:
    return [decode_message(data, compressor) for data in session.messages_to_send()]


def handshake(
    document_id: str = "notes",
    *,
    peer_id: str = PEER,
    vv: VersionVector | None = None,
    compression: str = "none",
) -> HandshakeRequest:
    return HandshakeRequest(
        document_id=document_id,
        peer_id=peer_id,
        version_vector=vv if vv is not None else VersionVector(),
        display_name="Ada",
        compressions=(compression,),
    )


def server_document(text: str = "") -> CRDTDocument:
    document = CRDTDocument(document_id="notes")
    if text:
        CRDTTextHandler(document, "text").insert(0, text)
    return document


def open_session(document: CRDTDocument | None = None) -> ServerSession:
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.events_received()
    session.accept_handshake(document or server_document(), "epoch-1")
    session.messages_to_send()
    return session


def state_of(session: ServerSession) -> SessionState:
    # A function call, so mypy does not carry a narrowed state across actions.
    return session.state


def assert_refused(session: ServerSession, code: ErrorCode) -> None:
    [message] = sent(session)
    assert isinstance(message, Error) and message.code is code, message
    assert session.state is SessionState.CLOSED
    events = session.events_received()
    assert [type(e) for e in events] == [ProtocolViolation, SessionClosed]
    violation = events[0]
    assert isinstance(violation, ProtocolViolation) and violation.code is code


# ------------------------------------------------------------------------------ the table


def test_every_state_has_a_row_and_closed_accepts_nothing() -> None:
    assert set(TRANSITIONS) == set(SessionState)
    assert TRANSITIONS[SessionState.CLOSED] == {}
    for state, row in TRANSITIONS.items():
        if state is not SessionState.CLOSED:
            for closing in (
                SessionInput.PROTOCOL_ERROR,
                SessionInput.LOCAL_CLOSE,
                SessionInput.CONNECTION_LOST,
            ):
                assert row[closing] is SessionState.CLOSED
    # Only the handshake opens a session, and only accepting it makes it OPEN.
    assert TRANSITIONS[SessionState.AWAITING_HANDSHAKE][SessionInput.HANDSHAKE_REQUEST] is (
        SessionState.HANDSHAKING
    )
    assert [
        (state, event)
        for state, row in TRANSITIONS.items()
        for event, target in row.items()
        if target is SessionState.OPEN and state is not SessionState.OPEN
    ] == [(SessionState.HANDSHAKING, SessionInput.HANDSHAKE_ACCEPTED)]
    assert all(SessionInput.SERVER_MESSAGE not in row for row in TRANSITIONS.values())


# ----------------------------------------------------------------------------- handshake


def test_handshake_is_accepted_with_the_changes_the_client_lacks() -> None:
    document = server_document("hello")
    session = ServerSession("notes")
    assert state_of(session) is SessionState.AWAITING_HANDSHAKE
    session.receive_message(frame(handshake()))
    assert state_of(session) is SessionState.HANDSHAKING
    events = session.events_received()
    assert len(events) == 1 and isinstance(events[0], HandshakeRequested)
    assert events[0].document_id == "notes"
    assert session.peer_id == PEER and session.display_name == "Ada"
    assert session.messages_to_send() == []  # nothing until the driver decides

    session.accept_handshake(document, "epoch-1")
    assert session.state is SessionState.OPEN
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse)
    assert response.session_id == session.session_id
    assert response.epoch == "epoch-1"
    assert response.version_vector == document.version_vector
    assert response.snapshot is None
    client = CRDTDocument()
    client.import_changes(response.changes)
    assert CRDTTextHandler(client, "text").value == "hello"


def test_handshake_sends_nothing_to_a_client_that_is_up_to_date() -> None:
    document = server_document("hello")
    session = ServerSession("notes")
    session.receive_message(frame(handshake(vv=document.version_vector)))
    session.accept_handshake(document, "e")
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse)
    assert response.changes == () and response.snapshot is None


def test_handshake_sends_a_snapshot_when_history_was_compacted() -> None:
    document = server_document("compacted")
    document.compact()
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.accept_handshake(document, "e")
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse)
    assert response.changes == () and response.snapshot is not None
    client = CRDTDocument()
    client.import_snapshot(response.snapshot)
    assert CRDTTextHandler(client, "text").value == "compacted"


def test_handshake_reports_the_durable_version_vector_when_given() -> None:
    document = server_document("abc")
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.accept_handshake(document, "e", VersionVector())
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse)
    assert response.version_vector == VersionVector()


def test_a_url_without_a_document_uses_the_handshake_document() -> None:
    session = ServerSession(None)
    session.receive_message(frame(handshake("other")))
    assert session.document_id == "other"
    assert session.state is SessionState.HANDSHAKING


def test_rejected_handshake_sends_the_error_and_closes() -> None:
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.events_received()
    session.reject_handshake(ErrorCode.DOCUMENT_NOT_FOUND, "no such document")
    assert sent(session) == [Error(ErrorCode.DOCUMENT_NOT_FOUND, "no such document")]
    assert session.state is SessionState.CLOSED
    assert session.close_code is CloseCode.POLICY_VIOLATION
    [closed] = session.events_received()
    assert isinstance(closed, SessionClosed)


@pytest.mark.parametrize(
    ("url_id", "request_", "code"),
    [
        ("notes", handshake("other"), ErrorCode.HANDSHAKE_FAILED),
        ("notes", handshake("bad/id"), ErrorCode.HANDSHAKE_FAILED),
        (".hidden", handshake(".hidden"), ErrorCode.HANDSHAKE_FAILED),
        ("notes", handshake(peer_id="not-a-uuid"), ErrorCode.HANDSHAKE_FAILED),
        ("notes", handshake(compression="gzip"), ErrorCode.UNSUPPORTED_COMPRESSION),
    ],
    ids=["url-mismatch", "bad-id", "bad-url-id", "bad-peer", "compression"],
)
def test_bad_handshakes_are_refused(
    url_id: str, request_: HandshakeRequest, code: ErrorCode
) -> None:
    session = ServerSession(url_id)
    session.receive_message(frame(request_))
    assert_refused(session, code)


def test_a_wrong_protocol_version_is_refused_with_its_own_code() -> None:
    session = ServerSession("notes")
    request = HandshakeRequest("notes", PEER, VersionVector(), protocol_version=99)
    session.receive_message(frame(request))
    assert_refused(session, ErrorCode.UNSUPPORTED_PROTOCOL_VERSION)


def test_a_wrong_frame_format_version_is_refused() -> None:
    data = bytearray(frame(handshake()))
    data[2] = 9
    session = ServerSession("notes")
    session.receive_message(bytes(data))
    assert_refused(session, ErrorCode.UNSUPPORTED_PROTOCOL_VERSION)


def test_compression_mismatch_error_names_both_sides() -> None:
    session = ServerSession("notes", GzipCompressor())
    session.receive_message(frame(handshake(compression="none")))
    messages = sent(session)
    assert isinstance(messages[0], Error)
    assert messages[0].code is ErrorCode.UNSUPPORTED_COMPRESSION
    assert "'none'" in messages[0].message and "'gzip'" in messages[0].message


@pytest.mark.parametrize(
    "message",
    [
        Changes(()),
        DocumentStatusRequest(VersionVector()),
        AwarenessQuery(),
        Pong(1, 2),
        Ack(VersionVector()),
        HandshakeResponse("s", VersionVector(), "e"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_anything_but_a_handshake_first_is_invalid(message: Message) -> None:
    session = ServerSession("notes")
    session.receive_message(frame(message))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_a_message_while_the_handshake_is_being_decided_is_invalid() -> None:
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.events_received()
    session.receive_message(frame(Changes(())))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_pings_are_answered_in_every_live_state() -> None:
    session = ServerSession("notes")
    session.receive_message(frame(Ping(7, 1234)))
    assert sent(session) == [Pong(7, 1234)]
    assert state_of(session) is SessionState.AWAITING_HANDSHAKE
    session.receive_message(frame(handshake()))
    session.receive_message(frame(Ping(8)))
    assert sent(session) == [Pong(8, 0)]
    assert state_of(session) is SessionState.HANDSHAKING
    session.accept_handshake(server_document(), "e")
    session.messages_to_send()
    session.receive_message(frame(Ping(9)))
    assert sent(session) == [Pong(9, 0)]
    assert [e for e in session.events_received() if isinstance(e, PingReceived)] == [
        PingReceived(7),
        PingReceived(8),
        PingReceived(9),
    ]


# ------------------------------------------------------------------------ the open session


def test_changes_from_the_client_become_an_event() -> None:
    session = open_session()
    client = CRDTDocument(PEER)
    made: list[Change] = []
    client.on_change(made.append)
    CRDTTextHandler(client, "text").insert(0, "hi")
    session.receive_message(frame(Changes(tuple(made))))
    [event] = session.events_received()
    assert isinstance(event, ChangesReceived)
    assert [c.id for c in event.changes] == [c.id for c in made]
    session.receive_message(frame(Changes(())))  # an empty batch is nothing
    assert session.events_received() == []


def one_change(peer: str, inserts: int) -> Changes:
    """A batch of one change of ``peer`` holding ``inserts`` text inserts."""
    client = CRDTDocument(peer)
    made: list[Change] = []
    client.on_change(made.append)
    text = CRDTTextHandler(client, "text")
    with client.transaction():
        for _ in range(inserts):
            text.insert(0, "x")
    [change] = made
    assert len(change.ops) == inserts
    return Changes((change,))


@pytest.mark.parametrize("inserts", [2, 3])
def test_a_lone_change_gets_every_check_a_batch_gets(inserts: int) -> None:
    # One change (a keystroke) takes a shorter way through the checks: the same ones.
    session = open_session()
    session.receive_message(frame(one_change(str(PeerId.generate()), inserts)))
    assert_refused(session, ErrorCode.FORBIDDEN_PEER)
    for limit, accepted in ((inserts, True), (inserts - 1, False)):
        session = ServerSession("notes", limits=Limits(max_ops_per_frame=limit))
        session.receive_message(frame(handshake()))
        session.events_received()
        session.accept_handshake(server_document(), "epoch-1")
        session.messages_to_send()
        session.receive_message(frame(one_change(PEER, inserts)))
        if accepted:
            [event] = session.events_received()
            assert isinstance(event, ChangesReceived) and len(event.changes) == 1
        else:
            assert_refused(session, ErrorCode.LIMIT_EXCEEDED)


def test_status_request_is_answered_with_what_the_client_lacks() -> None:
    document = server_document("abc")
    session = open_session(document)
    session.receive_message(frame(DocumentStatusRequest(VersionVector())))
    [status] = sent(session)
    assert isinstance(status, DocumentStatus)
    assert status.version_vector == document.version_vector
    assert len(status.changes) == 1
    [event] = session.events_received()
    assert isinstance(event, DocumentStatusSent) and event.change_count == 1


def test_awareness_about_the_senders_own_peer_is_accepted() -> None:
    session = open_session()
    update = AwarenessUpdate(PEER, 1, {"name": "Ada", "cursor": None})
    session.receive_message(frame(update))
    assert session.events_received() == [AwarenessReceived(update)]
    session.receive_message(frame(AwarenessQuery()))
    assert session.events_received() == [AwarenessQueried()]
    session.send_awareness_state([update])
    assert sent(session) == [AwarenessState((update,))]


def test_awareness_about_another_peer_is_refused() -> None:
    session = open_session()
    session.receive_message(frame(AwarenessUpdate(str(PeerId.generate()), 1, {"name": "Eve"})))
    assert_refused(session, ErrorCode.FORBIDDEN_PEER)


def test_pong_from_the_client_is_reported() -> None:
    session = open_session()
    session.send_ping(5, 99)
    assert sent(session) == [Ping(5, 99)]
    session.receive_message(frame(Pong(5, 99)))
    assert session.events_received() == [PongReceived(5, 99)]


def test_out_of_sync_error_from_the_client_keeps_the_session_open() -> None:
    session = open_session()
    session.receive_message(frame(Error(ErrorCode.OUT_OF_SYNC, "gap")))
    assert session.events_received() == [ErrorReceived(ErrorCode.OUT_OF_SYNC, "gap")]
    assert session.state is SessionState.OPEN


def test_any_other_error_from_the_client_closes_the_session() -> None:
    session = open_session()
    session.receive_message(frame(Error(ErrorCode.INVALID_MESSAGE, "garbage from you")))
    events = session.events_received()
    assert events[0] == ErrorReceived(ErrorCode.INVALID_MESSAGE, "garbage from you")
    assert isinstance(events[1], SessionClosed)
    assert session.state is SessionState.CLOSED
    assert session.messages_to_send() == []  # no error ping-pong


@pytest.mark.parametrize(
    "message",
    [
        handshake(),
        Ack(VersionVector()),
        DocumentStatus(VersionVector()),
        AwarenessState(()),
        HandshakeResponse("s", VersionVector(), "e"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_server_messages_and_a_second_handshake_are_invalid_when_open(message: Message) -> None:
    session = open_session()
    session.receive_message(frame(message))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


# ------------------------------------------------------------------------ snapshot upload


def client_snapshot_document(text: str) -> CRDTDocument:
    """A client document that cannot export its history: loaded from a snapshot."""
    origin = CRDTDocument()
    CRDTTextHandler(origin, "text").insert(0, text)
    return CRDTDocument.from_snapshot(origin.take_snapshot())


def test_snapshot_upload_becomes_an_event_for_the_driver() -> None:
    session = open_session()
    snapshot = client_snapshot_document("uploaded").take_snapshot()
    session.receive_message(frame(SnapshotUpload(snapshot)))
    assert session.state is SessionState.OPEN
    [event] = session.events_received()
    assert isinstance(event, SnapshotUploaded)
    assert event.snapshot == snapshot
    assert event.snapshot.version_vector == snapshot.version_vector
    assert session.messages_to_send() == []  # the driver acknowledges once stored


def test_compressed_snapshot_upload_is_accepted_after_the_handshake() -> None:
    gzip = GzipCompressor()
    session = ServerSession("notes", gzip)
    session.receive_message(frame(handshake(compression="gzip")))
    session.accept_handshake(server_document(), "e")
    session.messages_to_send()
    session.events_received()
    snapshot = client_snapshot_document("squeeze me " * 100).take_snapshot()
    plain = frame(SnapshotUpload(snapshot))
    # Compressed whether or not gzip wins on this body: the receiver must accept it.
    session.receive_message(plain[:4] + b"\x01" + gzip.compress(plain[5:]))
    [event] = session.events_received()
    assert isinstance(event, SnapshotUploaded) and event.snapshot == snapshot


def test_snapshot_upload_before_the_handshake_is_invalid() -> None:
    session = ServerSession("notes")
    session.receive_message(frame(SnapshotUpload(client_snapshot_document("x").take_snapshot())))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_snapshot_upload_while_the_handshake_is_decided_is_invalid() -> None:
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.events_received()
    session.receive_message(frame(SnapshotUpload(client_snapshot_document("x").take_snapshot())))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_snapshot_upload_that_does_not_decode_is_refused_and_nothing_reaches_the_driver() -> None:
    data = bytearray(frame(SnapshotUpload(client_snapshot_document("broken").take_snapshot())))
    data[7] ^= 0xFF  # inside the snapshot's magic
    session = open_session()
    session.receive_message(bytes(data))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_snapshot_upload_over_the_size_bound_is_refused() -> None:
    words = " ".join(str(PeerId.generate()) for _ in range(100))  # does not compress away
    snapshot = client_snapshot_document(words).take_snapshot()
    session = ServerSession("notes", max_message_size=len(snapshot) // 2)
    session.receive_message(frame(handshake()))
    session.accept_handshake(server_document(), "e")
    session.messages_to_send()
    session.events_received()
    session.receive_message(frame(SnapshotUpload(snapshot)))
    assert_refused(session, ErrorCode.MESSAGE_TOO_LARGE)


def test_snapshot_push_is_an_unsolicited_document_status_with_the_snapshot() -> None:
    document = server_document()
    session = open_session(document)
    snapshot = client_snapshot_document("from another client").take_snapshot()
    document.import_snapshot(snapshot)
    session.send_snapshot_push(document.version_vector, snapshot)
    [push] = sent(session)
    assert isinstance(push, DocumentStatus)
    assert push.version_vector == document.version_vector
    assert push.snapshot == snapshot and push.changes == ()
    session.close()
    session.send_snapshot_push(document.version_vector, snapshot)  # closed: ignored
    assert session.messages_to_send() == []
    with pytest.raises(LocalProtocolError):
        ServerSession("notes").send_snapshot_push(VersionVector(), snapshot)


def test_after_a_merged_upload_lagging_clients_get_a_snapshot_not_changes() -> None:
    document = server_document("server history ")
    history = document.version_vector
    uploaded = client_snapshot_document("uploaded state")
    document.import_snapshot(uploaded.take_snapshot())
    # The server's history no longer covers what the upload brought.
    assert not document.can_export(VersionVector())
    for client_vv in (VersionVector(), history):
        session = ServerSession("notes")
        session.receive_message(frame(handshake(vv=client_vv)))
        session.accept_handshake(document, "e")
        [response] = sent(session)
        assert isinstance(response, HandshakeResponse)
        assert response.snapshot is not None and response.changes == ()
        client = CRDTDocument()
        client.import_snapshot(response.snapshot)
        assert client.get_value("text") == document.get_value("text")
        # The same holds for a resync.
        session.receive_message(frame(DocumentStatusRequest(client_vv)))
        [status] = sent(session)
        assert isinstance(status, DocumentStatus) and status.snapshot is not None
    # A client that has everything the upload brought still gets plain changes.
    session = ServerSession("notes")
    session.receive_message(frame(handshake(vv=uploaded.version_vector)))
    session.accept_handshake(document, "e")
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse)
    assert response.snapshot is None and len(response.changes) == 1


# ------------------------------------------------------------------------------ garbage


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"CS",
        b"\x00\x01\x02\x03\x04\x05",
        b"XX\x01\x03\x00",
        b"CS\x01\x03\x80",
        b"CS\x01\x42\x00",
    ],
    ids=["empty", "short", "random", "magic", "flags", "unknown-type"],
)
def test_garbage_is_answered_and_closes_in_any_live_state(data: bytes) -> None:
    for session in (ServerSession("notes"), open_session()):
        session.receive_message(data)
        assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_a_text_frame_is_invalid() -> None:
    session = open_session()
    session.receive_message("hello")
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_a_truncated_handshake_is_invalid() -> None:
    data = frame(handshake())
    session = ServerSession("notes")
    session.receive_message(data[: len(data) - 3])
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_an_oversize_frame_is_refused_with_message_too_large() -> None:
    session = ServerSession("notes", max_message_size=64)
    session.receive_message(frame(handshake()) + b"\x00" * 100)
    assert_refused(session, ErrorCode.MESSAGE_TOO_LARGE)
    assert session.close_code is CloseCode.MESSAGE_TOO_BIG


def test_a_compressed_frame_before_negotiation_is_invalid() -> None:
    gzip = GzipCompressor()
    big = Changes(())
    data = bytearray(frame(big))
    data[4] = 1  # claims a compressed body
    session = ServerSession("notes", gzip)
    session.receive_message(bytes(data))
    assert_refused(session, ErrorCode.INVALID_MESSAGE)


def test_input_after_close_is_discarded() -> None:
    session = open_session()
    session.close()
    session.events_received()
    session.receive_message(frame(Ping(1)))
    session.receive_message(b"garbage")
    assert session.messages_to_send() == []
    assert session.events_received() == []


# ---------------------------------------------------------------------- driver actions


def test_driver_misuse_raises_local_protocol_error() -> None:
    session = ServerSession("notes")
    with pytest.raises(LocalProtocolError):
        session.accept_handshake(server_document(), "e")
    with pytest.raises(LocalProtocolError):
        session.reject_handshake(ErrorCode.UNAUTHORIZED, "no")
    with pytest.raises(LocalProtocolError):
        session.send_changes([])
    with pytest.raises(LocalProtocolError):
        session.send_acknowledgement(VersionVector())
    session.receive_message(frame(handshake()))
    with pytest.raises(LocalProtocolError):
        session.send_awareness(AwarenessUpdate(PEER, 1, None))
    session.accept_handshake(server_document(), "e")
    with pytest.raises(LocalProtocolError):
        session.accept_handshake(server_document(), "e")


def test_sending_to_a_closed_session_is_ignored() -> None:
    session = open_session()
    session.connection_lost()
    session.send_changes([])
    session.send_acknowledgement(VersionVector())
    session.send_out_of_sync("gap")
    session.send_frame(b"x")
    session.fail(ErrorCode.INTERNAL_ERROR, "late")
    session.close()
    assert session.messages_to_send() == []
    assert session.close_code is CloseCode.GOING_AWAY


def test_relay_ack_and_out_of_sync_messages() -> None:
    document = server_document("xyz")
    session = open_session()
    changes = tuple(document.export_changes())
    session.send_changes(changes)
    session.send_changes(())  # nothing to send
    session.send_acknowledgement(document.version_vector.merge(VersionVector({PEER: 7})))
    session.send_out_of_sync("gap")
    messages = sent(session)
    assert isinstance(messages[0], Changes)
    assert [c.id for c in messages[0].changes] == [c.id for c in changes]
    assert messages[1:] == [
        Ack(VersionVector({PEER: 7})),  # only the client's own peer (protocol version 2)
        Error(ErrorCode.OUT_OF_SYNC, "gap"),
    ]
    assert session.state is SessionState.OPEN


def test_an_ack_carries_only_the_clients_own_counter_however_many_writers() -> None:
    others = {str(PeerId.generate()): 10 + index for index in range(50)}
    session = open_session()
    session.send_acknowledgement(VersionVector(others))  # nothing of the client's own yet
    session.send_acknowledgement(VersionVector({**others, PEER: 3}))
    acks = session.messages_to_send()
    assert [decode_message(ack) for ack in acks] == [
        Ack(VersionVector()),
        Ack(VersionVector({PEER: 3})),
    ]
    full = encode_message(Ack(VersionVector({**others, PEER: 3})))
    assert len(acks[1]) < 60 < 900 < len(full)  # 18 bytes a peer (protocol version 3)


@pytest.mark.parametrize(
    ("code", "close_code"),
    [
        (ErrorCode.LIMIT_EXCEEDED, CloseCode.TRY_AGAIN_LATER),
        (ErrorCode.TOO_MANY_CONNECTIONS, CloseCode.TRY_AGAIN_LATER),
        (ErrorCode.TIMEOUT, CloseCode.POLICY_VIOLATION),
        (ErrorCode.INTERNAL_ERROR, CloseCode.INTERNAL_ERROR),
    ],
)
def test_server_side_failure_sends_the_error_and_closes(
    code: ErrorCode, close_code: CloseCode
) -> None:
    session = ServerSession("notes")
    session.fail(code, "because")
    assert sent(session) == [Error(code, "because")]
    assert session.state is SessionState.CLOSED
    assert session.close_code is close_code


def test_close_is_quiet_and_idempotent() -> None:
    session = open_session()
    session.close(CloseCode.GOING_AWAY, "bye")
    session.close()
    assert session.messages_to_send() == []
    assert session.events_received() == [SessionClosed(CloseCode.GOING_AWAY, "bye")]


def test_a_long_error_message_still_makes_a_valid_close_reason() -> None:
    session = ServerSession("notes")
    session.fail(ErrorCode.INTERNAL_ERROR, "é" * 500)
    assert len(session.close_reason.encode()) <= 123


def test_gzip_session_compresses_after_the_handshake() -> None:
    gzip = GzipCompressor()
    document = server_document("compress me " * 50)
    session = ServerSession("notes", gzip)
    session.receive_message(frame(handshake(compression="gzip")))
    session.accept_handshake(document, "e")
    [data] = session.messages_to_send()
    # The response names the compression, so it is readable without knowing it.
    assert not data[4] & 1
    response = decode_message(data, None)
    assert isinstance(response, HandshakeResponse)
    assert response.compression == "gzip"
    # The client's compressed frames are accepted from now on, and ours are compressed.
    session.receive_message(frame(DocumentStatusRequest(VersionVector()), gzip))
    [data] = session.messages_to_send()
    assert data[4] & 1  # the compressed flag
    status = decode_message(data, gzip)
    assert isinstance(status, DocumentStatus)


# --------------------------------------------------------------------------------- fuzz


# Built once, so every run draws from the same bytes (Hypothesis replays examples).
VALID_FRAMES = [
    frame(handshake()),
    frame(Ping(1)),
    frame(DocumentStatusRequest(VersionVector())),
    frame(AwarenessUpdate(PEER, 3, {"name": "Ada"})),
    frame(Changes(tuple(server_document("fuzz").export_changes()))),
    frame(SnapshotUpload(server_document("snapshot fuzz").take_snapshot())),
]


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    how = draw(st.sampled_from(["truncate", "flip", "random", "append", "as is"]))
    if how == "truncate":
        return bytes(base[: draw(st.integers(0, len(base)))])
    if how == "flip" and base:
        index = draw(st.integers(0, len(base) - 1))
        base[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(base)
    if how == "random":
        return draw(st.binary(max_size=64))
    if how == "append":
        return bytes(base) + draw(st.binary(min_size=1, max_size=16))
    return bytes(base)


@seed(20240607)
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(hostile_frames(), min_size=1, max_size=6), st.booleans())
def test_no_input_ever_raises_out_of_receive_message(frames: list[bytes], opened: bool) -> None:
    session = open_session() if opened else ServerSession("notes")
    for data in frames:
        session.receive_message(data)
        if session.state is SessionState.HANDSHAKING:
            session.accept_handshake(server_document(), "e")
        for out in session.messages_to_send():
            decode_message(out)  # whatever we send is a valid frame
        events = session.events_received()
        if session.state is SessionState.CLOSED:
            assert events == [] or isinstance(events[-1], SessionClosed)


# ------------------------------------------------------------------------------ roles


def test_a_read_only_session_refuses_changes_and_snapshots_and_stays_open() -> None:
    session = ServerSession("notes")
    session.receive_message(frame(handshake()))
    session.events_received()
    session.accept_handshake(server_document(), "epoch-1", role=Role.READ)
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse) and response.role is Role.READ
    assert session.role is Role.READ
    writer = CRDTDocument(PEER)  # the session's own peer: only its role forbids writing
    CRDTTextHandler(writer, "text").insert(0, "mine")
    session.receive_message(frame(Changes(tuple(writer.export_changes()))))
    session.receive_message(frame(SnapshotUpload(writer.take_snapshot())))
    errors = sent(session)
    assert [e.code for e in errors if isinstance(e, Error)] == [ErrorCode.READ_ONLY] * 2
    events = session.events_received()
    assert [type(e) for e in events] == [ReadOnlyRefused, ReadOnlyRefused]
    assert session.state is SessionState.OPEN
    # Reading still works: a status request is answered.
    session.receive_message(frame(DocumentStatusRequest(VersionVector())))
    [status] = sent(session)
    assert isinstance(status, DocumentStatus)


def test_a_writer_session_names_its_role_and_the_chosen_compression() -> None:
    session = ServerSession("notes", GzipCompressor())
    request = HandshakeRequest("notes", PEER, VersionVector(), compressions=("none", "gzip"))
    session.receive_message(frame(request))
    session.events_received()
    session.accept_handshake(server_document(), "epoch-1")
    [response] = sent(session)
    assert isinstance(response, HandshakeResponse)
    assert (response.role, response.compression) == (Role.WRITE, "gzip")
