"""Changes: their public view and the binary change encoding (round trips, header checks)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from network import document_values, exchange

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    DecodeError,
    PeerId,
    decode_changes,
    encode_changes,
)
from crdt_sync.codec import ZLIB_LEVEL


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


text_st = st.lists(
    st.sampled_from(["a", "é", "e\u0301", "😀", "\U0001d538", "中", "\n", "\x00"]),
    min_size=1,
    max_size=6,
).map("".join)
value_st: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text_st,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text_st, inner, max_size=3),
    max_leaves=5,
)
ops_st = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 999), st.integers(0, 999), text_st, value_st),
    min_size=1,
    max_size=30,
)


def build(ops: list[tuple[int, int, int, str, Any]]) -> tuple[CRDTDocument, CRDTDocument]:
    """Two peers editing every kind of handler, exchanging now and then."""
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    handlers = {
        d: (CRDTTextHandler(d, "t"), CRDTListHandler(d, "l"), CRDTMapHandler(d, "m😀"))
        for d in (a, b)
    }
    for n, (kind, i, j, s, v) in enumerate(ops):
        doc = a if n % 3 else b
        text, lst, meta = handlers[doc]
        if kind == 0:
            text.insert(i % (len(text) + 1), s)
        elif kind == 1 and len(text):
            k = i % len(text)
            text.delete(k, 1 + j % (len(text) - k))
        elif kind == 2:
            lst.insert(i % (len(lst) + 1), v)
        elif kind == 3 and len(lst):
            lst.delete(i % len(lst))
        elif kind == 4 and len(lst):
            lst.move(i % len(lst), j % len(lst))
        elif kind == 5 and len(lst):
            lst.update(i % len(lst), v)
        elif kind == 6:
            meta.set(s, v)
        elif s in meta:
            meta.delete(s)
        if j % 4 == 0:
            exchange(a, b)
    return a, b


@given(ops_st)
def test_encode_decode_round_trip_of_every_op_kind(
    ops: list[tuple[int, int, int, str, Any]],
) -> None:
    a, b = build(ops)
    for doc in (a, b):
        changes = doc.export_changes()
        for compress in (None, False, True):
            data = encode_changes(changes, compress=compress)
            assert data[:4] == b"CRDC"
            assert decode_changes(data) == changes
        fresh = CRDTDocument()
        fresh.binary_import_changes(doc.binary_export_changes())
        assert document_values(fresh) == document_values(doc)
        for change in changes:
            assert Change.from_bytes(change.to_bytes()) == change


def test_change_properties() -> None:
    a = CRDTDocument(peer(1))
    text = CRDTTextHandler(a, "t")
    text.insert(0, "héllo")
    text.insert(5, "!")
    first, second = a.export_changes()
    assert first.id == (str(peer(1)), 0) and first.peer == str(peer(1)) and first.counter == 0
    assert first.size == 5 and second.size == 1 and second.counter == 5
    assert second.deps == ((str(peer(1)), 4),)
    assert isinstance(first.timestamp, int) and second.timestamp > first.timestamp
    assert first != second and hash(first) == hash(Change.from_bytes(first.to_bytes()))
    assert "Change(" in repr(first)


def test_empty_batch_round_trips() -> None:
    assert decode_changes(encode_changes([])) == []


def test_large_batches_are_compressed_and_still_round_trip() -> None:
    a = CRDTDocument()
    text = CRDTTextHandler(a, "t")
    for i in range(2000):
        text.insert(i, "ab😀"[i % 3])
    changes = a.export_changes()
    data = encode_changes(changes)
    assert data[5] & 1, "bodies over 4 KiB are compressed by default"
    assert decode_changes(data) == changes
    body = encode_changes(changes, compress=False)
    assert len(body) > len(data)
    # At the package's one level (codec.ZLIB_LEVEL), as a document's export too.
    assert data[6:] == zlib.compress(body[6:], ZLIB_LEVEL)
    exported = a.binary_export_changes()
    assert exported[6:] == zlib.compress(zlib.decompress(exported[6:]), ZLIB_LEVEL)
    # Asked not to compress (bytes decoded again at once), the same body as it is.
    plain = a.binary_export_changes(compress=False)
    assert not plain[5] & 1 and plain[6:] == zlib.decompress(exported[6:])
    assert a.binary_export_changes(compress=True)[5] & 1
    small = CRDTDocument()
    CRDTTextHandler(small, "t").insert(0, "x")
    assert small.binary_export_changes(compress=True)[5] & 1
    assert decode_changes(small.binary_export_changes(compress=True)) == small.export_changes()


def test_header_is_checked() -> None:
    good = encode_changes(CRDTDocument().export_changes())
    with pytest.raises(DecodeError):
        decode_changes(b"XXXX" + good[4:])
    with pytest.raises(DecodeError):
        decode_changes(good[:4] + bytes([99]) + good[5:])
    with pytest.raises(DecodeError):
        decode_changes(good[:5] + bytes([0x80]) + good[6:])
    with pytest.raises(DecodeError):
        decode_changes(good + b"\x00")
    with pytest.raises(DecodeError):
        Change.from_bytes(good)  # zero changes, one expected
    with pytest.raises(TypeError):
        decode_changes("CRDC")  # type: ignore[arg-type]
