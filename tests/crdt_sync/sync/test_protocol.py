"""The sans-I/O client protocol against an in-memory fake server: no sockets, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync import Change, CRDTDocument, CRDTMapHandler, CRDTTextHandler, VersionVector
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
    LocalProtocolError,
    Message,
    NoCompression,
    Ping,
    Pong,
    Role,
    decode_message,
    encode_message,
)
from crdt_sync.sync.events import (
    Acknowledged,
    AwarenessReceived,
    ChangesReceived,
    ChangesSent,
    ErrorOccurred,
    HandshakeCompleted,
    PongReceived,
    ResyncCompleted,
    ResyncRequested,
    SnapshotReceived,
)
from crdt_sync.sync.messages import SnapshotUpload
from crdt_sync.sync.protocol import TRANSITIONS, ClientProtocol, ClientState, Trigger

from .fake_server import FakeServer, FakeSession


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ProtocolPair:
    """A client protocol joined to one session of a fake server, in memory."""

    def __init__(self, server: FakeServer, client: ClientProtocol) -> None:
        self.server = server
        self.client = client
        self.session: FakeSession = server.open_session()
        self.events: list[object] = []
        self.to_server: list[Message] = []

    def pump(self) -> None:
        """Deliver frames both ways until neither side has anything to say."""
        for _ in range(100):
            moved = False
            for frame in self.client.messages_to_send():
                self.to_server.append(decode_message(frame, self.client.compressor))
                self.server.receive(self.session, frame)
                moved = True
            outbox, self.session.outbox = self.session.outbox, []
            for frame in outbox:
                self.client.receive_message(frame)
                moved = True
            self.events.extend(self.client.events_received())
            if not moved:
                return
        raise AssertionError("the pair never went quiet")

    def connect(self) -> None:
        self.client.send_handshake()
        self.pump()


def make_client(doc: CRDTDocument | None = None, **kwargs: object) -> ClientProtocol:
    return ClientProtocol(doc or CRDTDocument(), document_id="doc", **kwargs)  # type: ignore[arg-type]


def connected_pair(**server_kwargs: object) -> ProtocolPair:
    pair = ProtocolPair(FakeServer(**server_kwargs), make_client())  # type: ignore[arg-type]
    pair.connect()
    assert pair.client.state is ClientState.CONNECTED
    return pair


def events_of(pair: ProtocolPair, kind: type) -> list[object]:
    return [e for e in pair.events if isinstance(e, kind)]


# --------------------------------------------------------------------------- handshake


def test_handshake_request_carries_identity_version_vector_and_compression() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "hi")
    client = ClientProtocol(
        doc,
        document_id="notes",
        display_name="Zoë",
        auth_token="secret",
        compressor=GzipCompressor(),
    )
    client.send_handshake()
    (frame,) = client.messages_to_send()
    request = decode_message(frame)
    assert isinstance(request, HandshakeRequest)
    assert request.document_id == "notes"
    assert request.peer_id == str(doc.peer_id)
    assert request.version_vector == doc.version_vector
    assert request.display_name == "Zoë"
    assert request.auth_token == "secret"
    assert request.compressions == ("gzip",)
    assert client.state is ClientState.HANDSHAKING


def test_handshake_exchanges_exactly_what_each_side_lacks() -> None:
    server = FakeServer()
    CRDTTextHandler(server.document, "t").insert(0, "server ")
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "offline")  # made before connecting: no queue, the handshake sends it
    pair = ProtocolPair(server, make_client(doc))
    pair.connect()

    assert pair.client.state is ClientState.CONNECTED
    (completed,) = events_of(pair, HandshakeCompleted)
    assert isinstance(completed, HandshakeCompleted)
    assert completed.session_id == pair.session.session_id
    assert completed.epoch == "epoch-1"
    assert pair.client.session_id == pair.session.session_id
    assert server.document.version_vector == doc.version_vector
    sent = [m for m in pair.to_server if isinstance(m, Changes)]
    assert len(sent) == 1 and [c.peer for c in sent[0].changes] == [str(doc.peer_id)]
    received = events_of(pair, ChangesReceived)
    assert len(received) == 1
    assert pair.client.unacknowledged_changes == 0  # the Ack covered the offline edit


@pytest.mark.parametrize("shape", ["keystrokes", "many ops", "long inserts"])
def test_offline_work_goes_in_frames_a_server_accepts_in_order(
    shape: str, changes_built: list[int]
) -> None:
    # More than a frame may hold (a server refuses a Changes frame of more than
    # 10,000 changes or 100,000 operations): several frames, each within the
    # client's bounds, together exactly the changes, in order. Typing goes as
    # the history's segments, whole, with no change built.
    from crdt_sync.sync.protocol import FRAME_CHANGES, FRAME_ELEMENTS, FRAME_OPS

    server = FakeServer()
    doc = CRDTDocument()
    text, meta = CRDTTextHandler(doc, "t"), CRDTMapHandler(doc, "m")
    if shape == "keystrokes":
        for index in range(2 * FRAME_CHANGES + 100):
            text.insert(index, "x")
    elif shape == "many ops":  # transactions of 1,000 map sets each
        for round_ in range(40):
            with doc.transaction():
                for key in range(1000):
                    meta.set(str(key), round_)
    else:  # inserts of 300,000 characters, one larger than a frame's bound
        for _ in range(6):
            text.insert(0, "y" * 300_000)
        text.insert(0, "z" * (FRAME_ELEMENTS + 1))
    everything = doc.export_changes()
    pair = ProtocolPair(server, make_client(doc))
    built = changes_built[0]
    pair.client.send_handshake()
    sent = pair.client.messages_to_send()
    pair.server.receive(pair.session, sent[0])
    for frame in pair.session.outbox:
        pair.client.receive_message(frame)
    pair.session.outbox = []
    uploads = pair.client.messages_to_send()
    if shape == "keystrokes":
        assert changes_built[0] == built, "the upload builds no change"
    for frame in uploads:
        pair.to_server.append(decode_message(frame))
        pair.server.receive(pair.session, frame)
    pair.pump()
    frames = [m.changes for m in pair.to_server if isinstance(m, Changes)]
    assert len(frames) > 1
    assert [c.id for frame in frames for c in frame] == [c.id for c in everything]
    for frame in frames:
        assert len(frame) <= FRAME_CHANGES
        assert len(frame) == 1 or sum(len(c.ops) for c in frame) <= FRAME_OPS
        assert len(frame) == 1 or sum(c.size for c in frame) <= FRAME_ELEMENTS
    assert events_of(pair, ChangesSent) == [ChangesSent(len(everything), len(everything))]
    assert server.document.version_vector == doc.version_vector


def test_handshake_with_snapshot_merges_it() -> None:
    server = FakeServer(use_snapshot=True)
    CRDTTextHandler(server.document, "t").insert(0, "from snapshot")
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    pair = ProtocolPair(server, make_client(doc))
    pair.connect()
    assert events_of(pair, SnapshotReceived)
    assert text.value == "from snapshot"
    assert doc.version_vector == server.document.version_vector


def test_epoch_change_is_reported_and_resets_acknowledgement() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "x")
    stale = VersionVector({str(doc.peer_id): 99})
    client = make_client(doc, acknowledged=stale, known_epoch="old-epoch")
    server = FakeServer(epoch="new-epoch")
    server.ack = False
    pair = ProtocolPair(server, client)
    pair.connect()
    (completed,) = events_of(pair, HandshakeCompleted)
    assert isinstance(completed, HandshakeCompleted) and completed.epoch_changed
    # The stale acknowledgement from the old epoch is dropped: the edit counts again.
    assert client.acknowledged == VersionVector()
    assert client.unacknowledged_changes == 1
    # The reset server got the edit again through the handshake.
    assert server.document.version_vector == doc.version_vector


def test_same_epoch_is_not_reported_as_changed() -> None:
    pair = ProtocolPair(FakeServer(epoch="e"), make_client(known_epoch="e"))
    pair.connect()
    (completed,) = events_of(pair, HandshakeCompleted)
    assert isinstance(completed, HandshakeCompleted) and not completed.epoch_changed


# --------------------------------------------------------------------------- steady state


def test_local_changes_are_sent_acknowledged_and_counted() -> None:
    pair = connected_pair()
    pair.server.ack = False
    text = CRDTTextHandler(pair.client.document, "t")
    changes: list[Change] = []
    sub = pair.client.document.on_change(changes.append)
    text.insert(0, "a")
    text.insert(1, "b")
    sub.cancel()
    assert pair.client.unacknowledged_changes == 2
    pair.client.send_changes(changes)
    pair.pump()
    assert events_of(pair, ChangesSent) == [ChangesSent(2, 2)]
    assert pair.client.unacknowledged_changes == 2  # not acknowledged yet
    pair.session.outbox.append(encode_message(Ack(pair.server.document.version_vector)))
    pair.pump()
    (ack,) = events_of(pair, Acknowledged)
    assert isinstance(ack, Acknowledged) and ack.unacknowledged == 0
    assert pair.client.unacknowledged_changes == 0


def test_send_changes_with_nothing_sends_nothing() -> None:
    pair = connected_pair()
    pair.client.send_changes([])
    assert pair.client.messages_to_send() == []


def test_changes_from_the_server_are_imported() -> None:
    pair = connected_pair()
    other = CRDTDocument()
    changes: list[Change] = []
    other.on_change(changes.append)
    CRDTTextHandler(other, "t").insert(0, "remote")
    text = CRDTTextHandler(pair.client.document, "t")
    pair.session.outbox.append(encode_message(Changes(tuple(changes))))
    pair.pump()
    assert text.value == "remote"
    assert events_of(pair, ChangesReceived)[-1] == ChangesReceived(1, 1)


def test_gap_in_received_changes_starts_a_resync_that_fills_it() -> None:
    pair = connected_pair()
    other = CRDTDocument()
    changes: list[Change] = []
    other.on_change(changes.append)
    remote_text = CRDTTextHandler(other, "t")
    remote_text.insert(0, "a")
    remote_text.insert(1, "b")
    pair.server.document.import_changes(changes)
    text = CRDTTextHandler(pair.client.document, "t")
    # Only the second change arrives: it waits for the first.
    pair.session.outbox.append(encode_message(Changes((changes[1],))))
    pair.pump()
    assert events_of(pair, ResyncRequested)
    assert any(isinstance(m, DocumentStatusRequest) for m in pair.to_server)
    assert events_of(pair, ResyncCompleted)
    assert pair.client.state is ClientState.CONNECTED
    assert text.value == "ab"
    assert pair.client.document.pending_count == 0


def test_out_of_sync_error_resyncs_and_sends_what_the_server_lacks() -> None:
    pair = connected_pair()
    text = CRDTTextHandler(pair.client.document, "t")
    changes: list[Change] = []
    pair.client.document.on_change(changes.append)
    text.insert(0, "lost")
    pair.server.out_of_sync_next = True  # the server drops this batch and complains
    pair.client.send_changes(changes)
    pair.pump()
    errors = events_of(pair, ErrorOccurred)
    assert errors and isinstance(errors[0], ErrorOccurred)
    assert errors[0].code is ErrorCode.OUT_OF_SYNC and errors[0].remote
    assert events_of(pair, ResyncCompleted)
    assert pair.client.state is ClientState.CONNECTED
    assert pair.server.document.version_vector == pair.client.document.version_vector


def test_out_of_sync_while_resyncing_sends_no_second_request() -> None:
    pair = connected_pair()
    pair.client.request_resync("test")
    assert pair.client.state is ClientState.RESYNCING
    pair.client.messages_to_send()
    pair.client.receive_message(encode_message(Error(ErrorCode.OUT_OF_SYNC, "again")))
    assert pair.client.state is ClientState.RESYNCING
    assert pair.client.messages_to_send() == []


def test_server_ping_is_answered_with_the_same_nonce() -> None:
    pair = connected_pair()
    pair.client.receive_message(encode_message(Ping(42, 7)))
    (frame,) = pair.client.messages_to_send()
    assert decode_message(frame) == Pong(42, 7)


def test_ping_round_trip_is_measured_with_the_given_clock() -> None:
    clock = FakeClock()
    pair = ProtocolPair(FakeServer(), make_client(clock=clock))
    pair.connect()
    nonce = pair.client.send_ping()
    (frame,) = pair.client.messages_to_send()
    assert isinstance(decode_message(frame), Ping)
    clock.now += 0.25
    assert pair.client.oldest_unanswered_ping_age() == pytest.approx(0.25)
    pair.client.receive_message(encode_message(Pong(nonce, 0)))
    pair.events.extend(pair.client.events_received())
    (pong,) = events_of(pair, PongReceived)
    assert isinstance(pong, PongReceived) and pong.round_trip_ms == pytest.approx(250.0)
    assert pair.client.oldest_unanswered_ping_age() is None


def test_pong_for_an_unknown_ping_is_ignored() -> None:
    pair = connected_pair()
    pair.client.receive_message(encode_message(Pong(999, 0)))
    assert pair.client.state is ClientState.CONNECTED
    assert not [e for e in pair.client.events_received() if isinstance(e, PongReceived)]


def test_awareness_messages_become_events() -> None:
    pair = connected_pair()
    update = AwarenessUpdate("peer-b", 3, {"name": "B"})
    pair.client.receive_message(encode_message(update))
    pair.client.receive_message(encode_message(AwarenessState((update,))))
    events = pair.client.events_received()
    assert AwarenessReceived((update,), full=False) in events
    assert AwarenessReceived((update,), full=True) in events
    pair.client.send_awareness_update(AwarenessUpdate(str(pair.client.document.peer_id), 1, {}))
    pair.client.send_awareness_query()
    sent = [decode_message(f) for f in pair.client.messages_to_send()]
    assert isinstance(sent[0], AwarenessUpdate) and sent[1] == AwarenessQuery()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.DOCUMENT_NOT_FOUND,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
        ErrorCode.UNSUPPORTED_COMPRESSION,
    ],
)
def test_refusals_are_final(code: ErrorCode) -> None:
    client = make_client()
    client.send_handshake()
    client.messages_to_send()
    client.receive_message(encode_message(Error(code, "no")))
    assert client.state is ClientState.CLOSED
    assert client.final and client.error_code is code
    (event,) = client.events_received()
    assert event == ErrorOccurred(code, "no", remote=True, final=True)
    assert client.messages_to_send() == []  # nothing is sent back to an Error


def test_transient_errors_are_not_final() -> None:
    pair = connected_pair()
    pair.client.receive_message(encode_message(Error(ErrorCode.INTERNAL_ERROR, "oops")))
    assert pair.client.is_closed and not pair.client.final


def test_unknown_document_is_refused_by_server() -> None:
    pair = ProtocolPair(FakeServer(known_documents={"other"}), make_client())
    pair.connect()
    assert pair.client.state is ClientState.CLOSED
    assert pair.client.error_code is ErrorCode.DOCUMENT_NOT_FOUND and pair.client.final


def test_compression_mismatch_is_a_clear_final_error() -> None:
    pair = ProtocolPair(
        FakeServer(compressor=GzipCompressor()), make_client(compressor=NoCompression())
    )
    pair.connect()
    assert pair.client.error_code is ErrorCode.UNSUPPORTED_COMPRESSION
    assert "gzip" in pair.client.error_message and "none" in pair.client.error_message
    assert pair.client.final


def test_both_ends_compressing_sync_large_changes() -> None:
    server = FakeServer(compressor=GzipCompressor())
    CRDTTextHandler(server.document, "t").insert(0, "x" * 5000)
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    pair = ProtocolPair(server, make_client(doc, compressor=GzipCompressor()))
    pair.client.send_handshake()
    pair.client.messages_to_send  # noqa: B018 - the frames go through pump below
    pair.pump()
    assert pair.client.state is ClientState.CONNECTED
    assert text.value == "x" * 5000


def test_compressed_frame_without_negotiated_compression_is_invalid() -> None:
    pair = connected_pair()
    frame = encode_message(Changes(()), GzipCompressor())
    big = (
        encode_message(Ping(1, 0))[:3]
        + bytes([0x03, 0x01])
        + GzipCompressor().compress(frame[5:] * 50)
    )
    pair.client.receive_message(big)
    assert pair.client.state is ClientState.CLOSED
    (error_frame,) = pair.client.messages_to_send()
    error = decode_message(error_frame)
    assert isinstance(error, Error) and error.code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", ErrorCode.INVALID_MESSAGE),
        (b"XX\x01\x03\x00", ErrorCode.INVALID_MESSAGE),
        (b"CS\x09\x03\x00", ErrorCode.UNSUPPORTED_PROTOCOL_VERSION),
        (b"CS\x01\x55\x00", ErrorCode.INVALID_MESSAGE),
        (b"CS\x01\x07\x80", ErrorCode.INVALID_MESSAGE),
        (b"CS\x01\x07\x00\x01", ErrorCode.INVALID_MESSAGE),
    ],
)
def test_garbage_closes_with_a_typed_error(frame: bytes, code: ErrorCode) -> None:
    pair = connected_pair()
    pair.client.receive_message(frame)
    assert pair.client.state is ClientState.CLOSED
    (sent,) = pair.client.messages_to_send()
    error = decode_message(sent)
    assert isinstance(error, Error) and error.code is code
    (event,) = pair.client.events_received()
    assert isinstance(event, ErrorOccurred) and event.code is code and not event.remote
    # Later input is discarded.
    pair.client.receive_message(encode_message(Ping(1, 0)))
    assert pair.client.messages_to_send() == [] and pair.client.events_received() == []


def test_oversize_frame_is_refused_as_too_large() -> None:
    client = make_client(max_message_size=64)
    client.send_handshake()
    client.messages_to_send()
    client.receive_message(encode_message(Error(ErrorCode.INTERNAL_ERROR, "x" * 100)))
    error = decode_message(client.messages_to_send()[0])
    assert isinstance(error, Error) and error.code is ErrorCode.MESSAGE_TOO_LARGE


def test_invalid_change_from_the_server_closes_the_connection() -> None:
    pair = connected_pair()
    frame = bytearray(encode_message(Changes(())))
    # A changes field that the core decoder must reject.
    frame[5:] = b"\x04junk"
    pair.client.receive_message(bytes(frame))
    assert pair.client.state is ClientState.CLOSED
    assert pair.client.error_code is ErrorCode.INVALID_MESSAGE


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_receive_message_never_raises_on_random_bytes(data: bytes) -> None:
    client = make_client()
    client.send_handshake()
    client.messages_to_send()
    client.receive_message(data)
    client.receive_message(b"CS\x01" + data)
    assert client.state in (ClientState.HANDSHAKING, ClientState.CLOSED)


def test_close_with_code_tells_the_server_once() -> None:
    pair = connected_pair()
    pair.client.close(ErrorCode.TIMEOUT, "no pong")
    (frame,) = pair.client.messages_to_send()
    assert decode_message(frame) == Error(ErrorCode.TIMEOUT, "no pong")
    pair.client.close(ErrorCode.TIMEOUT, "again")
    assert pair.client.messages_to_send() == []
    assert pair.client.error_code is ErrorCode.TIMEOUT and not pair.client.final


# --------------------------------------------------------------------------- the table


def _to_state(state: ClientState) -> ClientProtocol:
    client = make_client()
    if state is ClientState.IDLE:
        return client
    client.send_handshake()
    client.messages_to_send()
    if state is ClientState.HANDSHAKING:
        return client
    if state is ClientState.CLOSED:
        client.close()
        client.messages_to_send()
        return client
    client.receive_message(encode_message(HandshakeResponse("s", VersionVector(), "e")))
    if state is ClientState.RESYNCING:
        client.request_resync()
    assert client.state is state
    client.messages_to_send()
    client.events_received()
    return client


LOCAL_ACTIONS = {
    Trigger.SEND_HANDSHAKE: lambda c: c.send_handshake(),
    Trigger.SEND_CHANGES: lambda c: c.send_changes([]),
    Trigger.SEND_SNAPSHOT: lambda c: c.send_snapshot(),
    Trigger.SEND_PING: lambda c: c.send_ping(),
    Trigger.SEND_DOCUMENT_STATUS_REQUEST: lambda c: c.request_resync(),
    Trigger.SEND_AWARENESS: lambda c: c.send_awareness_query(),
    Trigger.CLOSE: lambda c: c.close(),
    Trigger.CONNECTION_LOST: lambda c: c.connection_lost(),
}


@pytest.mark.parametrize("state", list(ClientState))
@pytest.mark.parametrize("trigger", list(LOCAL_ACTIONS))
def test_local_actions_follow_the_table(state: ClientState, trigger: Trigger) -> None:
    client = _to_state(state)
    allowed = TRANSITIONS[state].get(trigger)
    if allowed is None:
        with pytest.raises(LocalProtocolError) as info:
            LOCAL_ACTIONS[trigger](client)
        assert state.name in str(info.value) and trigger.value in str(info.value)
        assert client.state is state
    else:
        LOCAL_ACTIONS[trigger](client)
        assert client.state is allowed


REMOTE_MESSAGES: dict[Trigger | str, Message] = {
    Trigger.RECEIVE_HANDSHAKE_RESPONSE: HandshakeResponse("s", VersionVector(), "e"),
    Trigger.RECEIVE_CHANGES: Changes(()),
    Trigger.RECEIVE_ACK: Ack(VersionVector()),
    Trigger.RECEIVE_DOCUMENT_STATUS: DocumentStatus(VersionVector()),
    Trigger.RECEIVE_PING: Ping(1, 0),
    Trigger.RECEIVE_PONG: Pong(1, 0),
    Trigger.RECEIVE_AWARENESS: AwarenessUpdate("p", 1, None),
    Trigger.RECEIVE_OUT_OF_SYNC: Error(ErrorCode.OUT_OF_SYNC, ""),
    Trigger.RECEIVE_ERROR: Error(ErrorCode.INTERNAL_ERROR, ""),
    Trigger.RECEIVE_READ_ONLY: Error(ErrorCode.READ_ONLY, ""),
    # Messages a server never sends: a protocol violation in every state.
    "HandshakeRequest": HandshakeRequest("d", "p", VersionVector()),
    "DocumentStatusRequest": DocumentStatusRequest(VersionVector()),
    "AwarenessQuery": AwarenessQuery(),
    "SnapshotUpload": SnapshotUpload(CRDTDocument().take_snapshot()),
}


@pytest.mark.parametrize("state", list(ClientState))
@pytest.mark.parametrize("trigger", list(REMOTE_MESSAGES))
def test_received_messages_follow_the_table(state: ClientState, trigger: Trigger | str) -> None:
    client = _to_state(state)
    client.receive_message(encode_message(REMOTE_MESSAGES[trigger]))
    allowed = TRANSITIONS[state].get(trigger) if isinstance(trigger, Trigger) else None
    if state is ClientState.CLOSED:
        assert client.state is ClientState.CLOSED
        assert client.messages_to_send() == []  # input after the close is discarded
    elif allowed is not None:
        assert client.state is allowed
    else:
        assert client.state is ClientState.CLOSED
        (frame,) = client.messages_to_send()
        error = decode_message(frame)
        assert isinstance(error, Error) and error.code is ErrorCode.INVALID_MESSAGE
        assert state.name in error.message


def test_every_state_is_reachable_and_closed_is_terminal() -> None:
    targets = {s for row in TRANSITIONS.values() for s in row.values()}
    assert targets | {ClientState.IDLE} == set(ClientState)
    assert set(TRANSITIONS[ClientState.CLOSED].values()) == {ClientState.CLOSED}


# --------------------------------------------------------------------------- snapshot upload


class SnapshotServer(FakeServer):
    """The fake server plus what the real one does with snapshots: it answers with a
    snapshot when its history cannot serve the client, merges uploads, acknowledges
    them and pushes them to its other clients as an unsolicited DocumentStatus."""

    def receive(self, session: FakeSession, data: bytes) -> None:
        if session.peer_id is None or session.closed:
            super().receive(session, data)
            return
        message = decode_message(data, self.compressor)
        if isinstance(message, SnapshotUpload):
            session.received.append(message)
            self.document.import_snapshot(message.snapshot)
            if self.ack:
                self._send(session, Ack(self.document.version_vector))
            push = DocumentStatus(self.document.version_vector, snapshot=message.snapshot)
            for other in self._others(session):
                self._send(other, push)
        elif isinstance(message, DocumentStatusRequest) and not self.document.can_export(
            message.version_vector
        ):
            session.received.append(message)
            snapshot = self.document.take_snapshot()
            self._send(session, DocumentStatus(self.document.version_vector, snapshot=snapshot))
        else:
            super().receive(session, data)


def offline_copy(source: CRDTDocument, edit: str) -> tuple[CRDTDocument, CRDTTextHandler]:
    """A document rebuilt from ``source``'s snapshot (new peer) with one offline edit."""
    doc = CRDTDocument.from_snapshot(source.take_snapshot())
    text = CRDTTextHandler(doc, "t")
    text.insert(len(text), edit)
    return doc, text


def sent_of(pair: ProtocolPair, kind: type) -> list[Message]:
    return [m for m in pair.to_server if isinstance(m, kind)]


def test_snapshot_loaded_document_uploads_a_snapshot_to_a_server_that_lacks_its_state() -> None:
    origin = CRDTDocument()
    CRDTTextHandler(origin, "t").insert(0, "from the file ")
    doc, text = offline_copy(origin, "and offline")
    server = SnapshotServer()  # a reset server: it has nothing
    server.ack = False
    pair = ProtocolPair(server, make_client(doc))
    pair.connect()

    assert pair.client.state is ClientState.CONNECTED
    (upload,) = sent_of(pair, SnapshotUpload)
    assert isinstance(upload, SnapshotUpload)
    assert upload.snapshot.version_vector == doc.version_vector
    assert sent_of(pair, Changes) == []  # export_changes would have raised
    assert server.document.get_value("t") == text.value == "from the file and offline"
    # Before the Ack: only the offline edit is this peer's own change, counted exactly.
    assert pair.client.unacknowledged_changes == 1
    pair.session.outbox.append(encode_message(Ack(server.document.version_vector)))
    pair.pump()
    (ack,) = events_of(pair, Acknowledged)
    assert isinstance(ack, Acknowledged) and ack.unacknowledged == 0
    assert pair.client.unacknowledged_changes == 0


def test_handshake_upload_is_acknowledged_by_the_ack_covering_the_snapshot() -> None:
    origin = CRDTDocument()
    CRDTTextHandler(origin, "t").insert(0, "x")
    doc, _ = offline_copy(origin, "y")
    pair = ProtocolPair(SnapshotServer(), make_client(doc))
    pair.connect()
    assert sent_of(pair, SnapshotUpload)
    assert pair.client.acknowledged >= doc.version_vector
    assert pair.client.unacknowledged_changes == 0


def test_snapshot_loaded_document_sends_only_changes_when_the_server_has_the_snapshot() -> None:
    origin = CRDTDocument()
    CRDTTextHandler(origin, "t").insert(0, "shared ")
    server = SnapshotServer()
    server.document.import_changes(origin.export_changes())
    doc, text = offline_copy(origin, "edit")
    pair = ProtocolPair(server, make_client(doc))
    pair.connect()
    assert sent_of(pair, SnapshotUpload) == []
    (sent,) = sent_of(pair, Changes)
    assert isinstance(sent, Changes) and [c.peer for c in sent.changes] == [str(doc.peer_id)]
    assert server.document.get_value("t") == text.value == "shared edit"


def test_compacted_document_uploads_a_snapshot_after_the_handshake() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "compacted")
    doc.compact()
    server = SnapshotServer()
    CRDTTextHandler(server.document, "t").insert(0, "server ")
    pair = ProtocolPair(server, make_client(doc))
    pair.connect()
    assert len(sent_of(pair, SnapshotUpload)) == 1
    assert text.value == server.document.get_value("t")
    assert set(text.value) == set("server compacted")
    assert server.document.version_vector == doc.version_vector
    assert pair.client.unacknowledged_changes == 0


def test_compacted_document_counts_its_own_unacknowledged_ops_as_an_upper_bound() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "ab")  # one change, two op ids
    doc.compact()  # our own history is gone: only op ids can be counted
    client = make_client(doc)
    assert client.unacknowledged_changes == 2
    text.insert(2, "c")
    assert client.unacknowledged_changes == 3


def test_resync_after_importing_a_snapshot_while_connected_uploads_it() -> None:
    pair = ProtocolPair(SnapshotServer(), make_client())
    pair.connect()
    outside = CRDTDocument()
    CRDTTextHandler(outside, "t").insert(0, "opened file")
    text = CRDTTextHandler(pair.client.document, "t")
    pair.client.document.import_snapshot(outside.take_snapshot())
    # The server knows nothing of the file; a local edit on top of it cannot apply there.
    changes: list[Change] = []
    pair.client.document.on_change(changes.append)
    text.insert(0, "> ")
    server = pair.server
    pair.client.send_changes(changes)
    pair.pump()
    # The fake server holds the change (missing dependencies) and says OUT_OF_SYNC;
    # the DocumentStatus that follows shows the server lacks the file: upload.
    assert events_of(pair, ResyncRequested)
    assert len(sent_of(pair, SnapshotUpload)) == 1
    assert server.document.pending_count == 0
    assert server.document.get_value("t") == text.value == "> opened file"
    assert pair.client.state is ClientState.CONNECTED


def test_send_snapshot_uploads_the_whole_document_while_connected() -> None:
    pair = connected_pair(use_snapshot=True)
    text = CRDTTextHandler(pair.client.document, "t")
    text.insert(0, "state")
    pair.client.send_snapshot()
    (frame,) = pair.client.messages_to_send()
    message = decode_message(frame)
    assert isinstance(message, SnapshotUpload)
    assert message.snapshot.version_vector == pair.client.document.version_vector


def _server_with_two_clients() -> tuple[SnapshotServer, ProtocolPair, ProtocolPair]:
    server = SnapshotServer()
    first = ProtocolPair(server, make_client())
    first.connect()
    second = ProtocolPair(server, make_client())
    second.connect()
    return server, first, second


def test_uploaded_snapshot_is_pushed_to_the_other_clients_while_connected() -> None:
    server, first, second = _server_with_two_clients()
    first_text = CRDTTextHandler(first.client.document, "t")
    second_text = CRDTTextHandler(second.client.document, "t")
    origin = CRDTDocument()
    CRDTTextHandler(origin, "t").insert(0, "uploaded")
    uploader = ProtocolPair(server, make_client(offline_copy(origin, "!")[0]))
    uploader.connect()
    first.pump()
    second.pump()
    for pair, text in ((first, first_text), (second, second_text)):
        assert pair.client.state is ClientState.CONNECTED  # a push is not a violation
        assert events_of(pair, SnapshotReceived)
        assert text.value == "uploaded!"
        # They lacked nothing the server has: they answer the push with nothing.
        assert sent_of(pair, SnapshotUpload) == []
        assert [m for m in pair.to_server if isinstance(m, Changes) and m.changes] == []


def test_push_sends_back_what_the_server_lacks() -> None:
    server, first, _ = _server_with_two_clients()
    first.server.ack = False
    text = CRDTTextHandler(first.client.document, "t")
    text.insert(0, "unsent ")  # made locally, not yet handed to the protocol
    origin = CRDTDocument()
    CRDTTextHandler(origin, "t").insert(0, "pushed")
    snapshot = origin.take_snapshot()
    server.document.import_snapshot(snapshot)  # another client uploaded it
    first.session.outbox.append(
        encode_message(DocumentStatus(server.document.version_vector, snapshot=snapshot))
    )
    first.pump()
    (sent,) = sent_of(first, Changes)
    assert isinstance(sent, Changes) and len(sent.changes) == 1
    assert server.document.get_value("t") == text.value


def test_push_while_resyncing_completes_the_resync_and_the_answer_is_merged_later() -> None:
    pair = connected_pair()
    text = CRDTTextHandler(pair.client.document, "t")
    pair.client.request_resync("test")
    pair.client.messages_to_send()  # the request stays unanswered for now
    origin = CRDTDocument()
    CRDTTextHandler(origin, "t").insert(0, "pushed")
    pair.client.receive_message(
        encode_message(DocumentStatus(origin.version_vector, snapshot=origin.take_snapshot()))
    )
    assert pair.client.state is ClientState.CONNECTED
    assert text.value == "pushed"
    # The answer to the request arrives after the push: still fine.
    pair.client.receive_message(encode_message(DocumentStatus(origin.version_vector)))
    assert pair.client.state is ClientState.CONNECTED
    events = pair.client.events_received()
    assert [type(e) for e in events].count(ResyncCompleted) == 2


# ------------------------------------------------------------------------ identity


def test_the_handshake_carries_the_documents_replica_secret() -> None:
    doc = CRDTDocument()
    client = make_client(doc)
    client.send_handshake()
    (frame,) = client.messages_to_send()
    request = decode_message(frame)
    assert isinstance(request, HandshakeRequest)
    assert request.replica_secret == doc.replica_secret


def _doc_with_a_foreign_change() -> CRDTDocument:
    other = CRDTDocument()
    CRDTTextHandler(other, "t").insert(0, "theirs ")
    doc = CRDTDocument()
    doc.import_changes(other.export_changes())
    CRDTTextHandler(doc, "t").insert(0, "mine ")
    return doc


def test_a_client_sends_only_its_own_changes() -> None:
    doc = _doc_with_a_foreign_change()
    pair = ProtocolPair(FakeServer(), make_client(doc))
    pair.connect()
    sent = [c for m in pair.to_server if isinstance(m, Changes) for c in m.changes]
    assert sent and {c.peer for c in sent} == {str(doc.peer_id)}
    assert not any(isinstance(m, SnapshotUpload) for m in pair.to_server)


def test_after_a_server_reset_a_client_restores_everyone_with_a_snapshot() -> None:
    doc = _doc_with_a_foreign_change()
    pair = ProtocolPair(FakeServer(epoch="new"), make_client(doc, known_epoch="old"))
    pair.connect()
    assert any(isinstance(m, SnapshotUpload) for m in pair.to_server)
    assert not any(isinstance(m, Changes) for m in pair.to_server)


# ------------------------------------------------------------------ negotiation and roles


def test_the_client_adopts_the_compression_the_server_chose() -> None:
    client = make_client()
    assert [c.name for c in client.offered_compressors] == ["none", "gzip"]
    client.send_handshake()
    (frame,) = client.messages_to_send()
    request = decode_message(frame)
    assert isinstance(request, HandshakeRequest) and request.compressions == ("none", "gzip")
    gzip = GzipCompressor()
    client.receive_message(
        encode_message(HandshakeResponse("s", VersionVector(), "e", compression="gzip"))
    )
    assert client.state is ClientState.CONNECTED
    assert client.compressor.name == "gzip"
    # Compressed frames from the server are read from now on.
    ack = encode_message(Ack(VersionVector({"p" * 200: 1})), gzip)
    assert ack[4] & 1
    client.receive_message(ack)
    assert client.state is ClientState.CONNECTED


def test_a_compression_the_client_did_not_offer_is_refused() -> None:
    client = make_client(compressor=NoCompression())
    client.send_handshake()
    client.messages_to_send()
    client.receive_message(
        encode_message(HandshakeResponse("s", VersionVector(), "e", compression="gzip"))
    )
    assert client.state is ClientState.CLOSED
    assert client.error_code is ErrorCode.UNSUPPORTED_COMPRESSION
    assert "'gzip'" in client.error_message and "'none'" in client.error_message


def test_the_role_is_known_after_the_handshake_and_read_only_refusals_keep_it_open() -> None:
    client = make_client()
    assert client.role is None
    client.send_handshake()
    client.messages_to_send()
    client.receive_message(
        encode_message(HandshakeResponse("s", VersionVector(), "e", role=Role.READ))
    )
    assert client.role is Role.READ
    client.events_received()
    client.receive_message(encode_message(Error(ErrorCode.READ_ONLY, "read-only")))
    assert client.state is ClientState.CONNECTED
    [event] = client.events_received()
    assert isinstance(event, ErrorOccurred)
    assert event.code is ErrorCode.READ_ONLY and event.remote and not event.final
    assert client.error_code is None
