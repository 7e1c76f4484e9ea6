"""Decoder and session fuzz over the validation paths of the identity rules and limits.

Frames are hand-built with the library's encoders, then truncated, bit-flipped or
spliced; the codec may only raise its typed errors, and the server session never
raises, answers only with well-formed frames, and closes only with a typed Error.
"""

from __future__ import annotations

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import (
    AwarenessUpdate,
    Changes,
    DocumentStatusRequest,
    Error,
    ErrorCode,
    HandshakeRequest,
    RemoteProtocolError,
    SnapshotUpload,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import MAX_COUNTER
from server.session import ProtocolViolation, ServerSession, SessionState
from server.trust import Limits

PEER = "3f1b6a52-8d1e-4c55-9a51-0d6f7e1a2b3c"
OTHER = "9a0c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"
SECRET = bytes(range(32))


def _changes(peer: str, count: int) -> tuple[Change, ...]:
    document = CRDTDocument(PeerId.parse(peer), "notes")
    made: list[Change] = []
    document.on_change(made.append)
    text = CRDTTextHandler(document, "text")
    for index in range(count):
        text.insert(index, "é")
    return tuple(made)


def _snapshot(peer: str) -> SnapshotUpload:
    document = CRDTDocument(PeerId.parse(peer), "notes")
    CRDTTextHandler(document, "text").insert(0, "snapshot")
    return SnapshotUpload(document.take_snapshot())


HANDSHAKE = encode_message(
    HandshakeRequest("notes", PEER, VersionVector({OTHER: 3}), "Zoë", replica_secret=SECRET)
)
# Built once, so Hypothesis replays the same bytes on every run.
SEEDS = [
    HANDSHAKE,
    encode_message(Changes(_changes(PEER, 3))),
    encode_message(Changes(_changes(OTHER, 2))),  # another peer's: FORBIDDEN_PEER
    encode_message(_snapshot(PEER)),
    encode_message(_snapshot(OTHER)),
    encode_message(AwarenessUpdate(PEER, MAX_COUNTER, {"cursor": [1, 2]})),
    encode_message(AwarenessUpdate(OTHER, 1, {"name": "x"})),
    encode_message(DocumentStatusRequest(VersionVector({PEER: 1, OTHER: 5}))),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(SEEDS)))
    how = draw(st.sampled_from(["keep", "truncate", "flip", "splice"]))
    if how == "truncate":
        return bytes(base[: draw(st.integers(0, len(base) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 3))):
            index = draw(st.integers(0, len(base) - 1))
            base[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(base)
    if how == "splice":
        other = draw(st.sampled_from(SEEDS))
        cut = draw(st.integers(5, len(base)))
        return bytes(base[:cut]) + other[draw(st.integers(5, len(other))) :]
    return bytes(base)


@seed(7007)
@settings(max_examples=150, deadline=None, database=None)
@given(frame=mutated())
def test_the_codec_only_raises_its_typed_errors(frame: bytes) -> None:
    try:
        message = decode_message(frame, max_size=1 << 20)
    except RemoteProtocolError:
        return
    if isinstance(message, HandshakeRequest):
        assert 16 <= len(message.replica_secret) <= 64


@seed(7008)
@settings(max_examples=60, deadline=None, database=None)
@given(frames=st.lists(mutated(), min_size=1, max_size=6), open_first=st.booleans())
def test_the_session_never_raises_and_closes_only_with_a_typed_error(
    frames: list[bytes], open_first: bool
) -> None:
    session = ServerSession(
        "notes", limits=Limits(max_changes_per_frame=2, status_burst=2, max_handshake_peers=4)
    )
    if open_first:
        session.receive_message(HANDSHAKE)
        session.events_received()
        server_document = CRDTDocument(document_id="notes")
        CRDTTextHandler(server_document, "text").insert(0, "server")
        session.accept_handshake(server_document, "epoch")
        session.messages_to_send()
    for frame in frames:
        session.receive_message(frame)  # never raises
        if session.state is SessionState.HANDSHAKING:
            session.reject_handshake(ErrorCode.DOCUMENT_NOT_FOUND, "no such document")
        sent = [decode_message(out, max_size=1 << 24) for out in session.messages_to_send()]
        for event in session.events_received():
            if isinstance(event, ProtocolViolation):
                # A violation is answered by a typed Error with its code, then a close.
                assert isinstance(sent[-1], Error) and sent[-1].code is event.code
                assert session.state is SessionState.CLOSED
    assert session.messages_to_send() == []


pytestmark = pytest.mark.timeout(120)
