"""Peer ids on the wire: a canonical UUID as 16 raw bytes, anything else as text
(``crdt_sync.codec.Writer.peer`` / ``Reader.peer``), and older batches still read."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync import (
    CRDTDocument,
    CRDTTextHandler,
    DecodeError,
    VersionVector,
    decode_changes,
    encode_changes,
)
from crdt_sync.codec import PEER_UUID, Reader, Writer

ALICE = "d012819f-0549-4459-9ecd-8a69aca016d2"
BOB = "63498316-877c-45db-b698-6fee686a514d"

# A version 2 batch (peer ids as 36-character text), as written before version 3:
# Bob inserts "x" between "he" and "llo" of Alice's "hello".
V2_BATCH = (
    b"CRDC\x02\x00\x01\x02$63498316-877c-45db-b698-6fee686a514d$d012819f-0549-4459-9ecd-"
    b"8a69aca016d2\x01\x04text\x01\x00\x00\x00\xe9p\xc0,\xa2\x01\x00\x00\x00\x00\x00\x00"
    b"\x01\x01\x02\x01\x01\x00\x02\x01\x01\x02\x01\x02\x01x"
)


def _peer_bytes(peer: str) -> bytes:
    w = Writer()
    w.peer(peer)
    return w.getvalue()


def _read_peer(data: bytes) -> str:
    r = Reader(data)
    peer = r.peer()
    r.expect_end()
    return peer


def test_canonical_uuid_is_written_as_sixteen_raw_bytes() -> None:
    data = _peer_bytes(ALICE)
    assert data == bytes([PEER_UUID]) + uuid.UUID(ALICE).bytes
    assert _read_peer(data) == ALICE


@pytest.mark.parametrize(
    "peer", [ALICE.upper(), "{" + ALICE + "}", "peer-ü", "x", "😀" * 9, ALICE.replace("-", "")]
)
def test_other_peer_ids_stay_text(peer: str) -> None:
    data = _peer_bytes(peer)
    assert data[0] != PEER_UUID
    assert _read_peer(data) == peer


def test_empty_peer_id_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="empty peer id"):
        _peer_bytes("")


@pytest.mark.parametrize("cut", range(1, 17))
def test_truncated_raw_peer_id_is_a_decode_error(cut: int) -> None:
    with pytest.raises(DecodeError):
        _read_peer(_peer_bytes(BOB)[:cut])


def test_text_peer_id_over_the_bound_is_refused() -> None:
    with pytest.raises(DecodeError, match="limit"):
        Reader(_peer_bytes("p" * 300)).peer(256)
    assert Reader(_peer_bytes(BOB)).peer(16) == BOB  # the raw form is always 36 characters


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.uuids().map(str) | st.text(min_size=1, max_size=40))
def test_peer_round_trip(peer: str) -> None:
    assert _read_peer(_peer_bytes(peer)) == peer


def test_version_vector_uses_the_raw_form_and_reads_the_text_form() -> None:
    vv = VersionVector({ALICE: 5, "other": 2})
    data = vv.to_bytes()
    assert len(data) == 1 + (17 + 1) + (6 + 1)
    assert VersionVector.from_bytes(data) == vv
    old = b"\x01$" + ALICE.encode() + b"\x05"  # the text form, as written before
    assert VersionVector.from_bytes(old) == VersionVector({ALICE: 5})


def _bob_inserts_x() -> list[object]:
    alice, bob = CRDTDocument(peer_id=ALICE), CRDTDocument(peer_id=BOB)
    CRDTTextHandler(alice, "text").insert(0, "hello")
    bob.import_changes(alice.export_changes(bob.version_vector))
    before = bob.version_vector
    CRDTTextHandler(bob, "text").insert(2, "x")
    return list(bob.export_changes(before))


def test_version_2_batch_is_still_read_and_rewritten_smaller() -> None:
    old = decode_changes(V2_BATCH)
    assert [(c.peer, c.counter, c.size) for c in old] == [(BOB, 0, 1)]
    assert old[0].deps == ((ALICE, 2),)  # the right origin's author is in the peer table
    new = encode_changes(old)
    assert new[4] == 3
    assert len(new) == len(V2_BATCH) - 2 * (37 - 17)
    assert decode_changes(new) == old


def test_new_batch_holds_no_peer_id_text() -> None:
    changes = _bob_inserts_x()
    data = encode_changes(changes)  # type: ignore[arg-type]
    assert ALICE.encode() not in data and BOB.encode() not in data
    assert uuid.UUID(ALICE).bytes in data and uuid.UUID(BOB).bytes in data
    assert decode_changes(data) == changes
