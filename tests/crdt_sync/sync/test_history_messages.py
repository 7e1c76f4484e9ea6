"""HistoryRequest / HistoryResponse: round trips, stored batches, hostile bytes and
the client's sans-I/O handling.

The server session's side: tests/server/test_server_history_session.py."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from crdt_sync import CRDTDocument, CRDTTextHandler, VersionVector, encode_changes
from crdt_sync.sync import (
    ClientProtocol,
    ErrorCode,
    GzipCompressor,
    HandshakeResponse,
    HistoryReceived,
    HistoryRequest,
    HistoryResponse,
    MessageDecodeError,
    MessageType,
    decode_message,
    encode_message,
)
from crdt_sync.sync.exceptions import RemoteProtocolError
from crdt_sync.sync.messages import encode_history_frame


def typed(words: int) -> CRDTDocument:
    document = CRDTDocument(document_id="notes")
    text = CRDTTextHandler(document, "text")
    for index in range(words):
        text.insert(len(text.value), f"w{index} ")
    return document


def test_type_codes_follow_the_existing_ones() -> None:
    assert MessageType.HISTORY_REQUEST == 0x13
    assert MessageType.HISTORY_RESPONSE == 0x14


@pytest.mark.parametrize("cursor", [0, 1, 2**63 - 1])
def test_history_request_round_trips(cursor: int) -> None:
    assert decode_message(encode_message(HistoryRequest(cursor))) == HistoryRequest(cursor)


def test_history_response_round_trips_with_and_without_a_base() -> None:
    document = typed(8)
    changes = tuple(document.export_changes())
    plain = decode_message(encode_message(HistoryResponse(VersionVector(), changes, None, 5)))
    assert isinstance(plain, HistoryResponse)
    assert [c.id for c in plain.changes] == [c.id for c in changes]
    assert plain.start == VersionVector() and plain.base is None and plain.next_cursor == 5
    base = typed(3).take_snapshot()
    gzip = GzipCompressor()
    framed = encode_message(HistoryResponse(base.version_vector, changes, base, 0), gzip)
    decoded = decode_message(framed, gzip)
    assert isinstance(decoded, HistoryResponse)
    assert decoded.base is not None and decoded.base.to_bytes() == base.to_bytes()
    assert decoded.start == base.version_vector


def test_stored_batches_are_sent_as_they_are_and_read_in_order() -> None:
    changes = typed(10).export_changes()
    batches = [
        encode_changes(changes[:3]),
        encode_changes(changes[3:7]),
        encode_changes(changes[7:]),
    ]
    frame = encode_history_frame(VersionVector(), None, batches, 42)
    for batch in batches:
        assert batch in frame
    decoded = decode_message(frame)
    assert isinstance(decoded, HistoryResponse) and decoded.next_cursor == 42
    assert [c.id for c in decoded.changes] == [c.id for c in changes]


def test_a_page_of_batches_may_not_inflate_past_the_frame_bound_together() -> None:
    # Each batch alone inflates to under the bound; together they exceed it.
    document = CRDTDocument(document_id="notes")
    CRDTTextHandler(document, "text").insert(0, "a" * 40_000)
    batch = encode_changes(document.export_changes())
    assert len(batch) < 5_000  # compressed: a bomb in miniature
    frame = encode_history_frame(VersionVector(), None, [batch] * 4, 0)
    decode_message(frame, max_size=200_000)  # 4 x ~40 KB fits
    with pytest.raises(MessageDecodeError, match="history changes"):
        decode_message(frame, max_size=100_000)


def test_each_batch_of_a_page_is_inflated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    changes = typed(400).export_changes()
    batches = [encode_changes(changes[:200], True), encode_changes(changes[200:], True)]
    assert all(batch[5] & 1 for batch in batches)  # compressed
    frame = encode_history_frame(VersionVector(), None, batches, 0)
    calls: list[int] = []
    decompressor = zlib.decompressobj

    def counting(*args: int) -> Any:
        calls.append(1)
        return decompressor(*args)

    # Every inflate of the package goes through zlib.decompressobj (codec.inflate).
    monkeypatch.setattr(zlib, "decompressobj", counting)
    decoded = decode_message(frame)
    assert isinstance(decoded, HistoryResponse)
    assert [c.id for c in decoded.changes] == [c.id for c in changes]
    assert len(calls) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"",  # nothing at all
        b"\x00\x00\x05",  # five batches announced, none there
        b"\x00\x00\x01\x03abc\x00",  # a batch that is not the change format
        b"\x00\x02\x00",  # base presence flag 2
        b"\x00\x01\x03abc\x00\x00",  # a base that is not a snapshot
        b"\x00\x00\x00\x00\x00",  # trailing bytes
        b"\x00\x00\x00" + b"\xff" * 11,  # a cursor over 2**64
    ],
)
def test_hostile_history_responses_are_typed_errors(body: bytes) -> None:
    frame = b"CS\x01" + bytes((MessageType.HISTORY_RESPONSE, 0)) + body
    with pytest.raises(RemoteProtocolError):
        decode_message(frame)
    # Still bytes of zlib garbage inside a compressed batch: typed too.
    bomb = b"CRDC\x01\x01" + zlib.compress(b"\xff" * 100)[:-3]
    raw = b"\x00\x00\x01" + bytes((len(bomb),)) + bomb + b"\x00"
    with pytest.raises(MessageDecodeError):
        decode_message(b"CS\x01" + bytes((MessageType.HISTORY_RESPONSE, 0)) + raw)


def connected_client(document: CRDTDocument) -> ClientProtocol:
    protocol = ClientProtocol(document)
    protocol.send_handshake()
    protocol.messages_to_send()
    protocol.receive_message(encode_message(HandshakeResponse("s", document.version_vector, "e")))
    protocol.events_received()
    protocol.messages_to_send()
    return protocol


def test_the_client_asks_and_reports_a_page_without_importing_it() -> None:
    document = CRDTDocument(document_id="notes")
    protocol = connected_client(document)
    protocol.request_history(7)
    [request] = [decode_message(frame) for frame in protocol.messages_to_send()]
    assert request == HistoryRequest(7)
    changes = tuple(typed(4).export_changes())
    protocol.receive_message(encode_message(HistoryResponse(VersionVector(), changes, None, 0)))
    [event] = protocol.events_received()
    assert isinstance(event, HistoryReceived) and len(event.changes) == 4
    assert document.version_vector == VersionVector()  # history is not imported
    assert protocol.is_synced


def test_a_history_response_before_the_handshake_is_a_violation() -> None:
    protocol = ClientProtocol(CRDTDocument(document_id="notes"))
    protocol.send_handshake()
    protocol.messages_to_send()
    protocol.receive_message(encode_message(HistoryResponse(VersionVector())))
    assert protocol.is_closed and protocol.error_code is ErrorCode.INVALID_MESSAGE
