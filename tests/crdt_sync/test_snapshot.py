"""Snapshots: lossless round trips through bytes, loading, and merging with concurrent edits."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from network import assert_rebuilds_equal, document_values, exchange, roundtrip_snapshot

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    PeerId,
    Snapshot,
    VersionVector,
)


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


UNICODE = "h\u00e9llo \U0001f600 \U0001f469\u200d\U0001f4bb e\u0301 \U0001d538 \u4e2d \u0000"


def rich_document() -> CRDTDocument:
    doc = CRDTDocument(peer(1), "doc-\U0001f600")
    text, lst, meta = CRDTTextHandler(doc, "t"), CRDTListHandler(doc, "l"), CRDTMapHandler(doc, "m")
    text.insert(0, UNICODE)
    text.delete(2, 3)
    lst.extend([None, True, -(2**70), 1.5, UNICODE, [{"\U0001f511": []}], {}])
    lst.move(0, 6)
    lst.update(1, "updated")
    lst.delete(2)
    meta.set("\u043a\u043b\u044e\u0447", UNICODE)
    meta.set("gone", 1)
    meta.delete("gone")
    return doc


def test_snapshot_round_trip_keeps_values_version_and_document_id() -> None:
    doc = rich_document()
    snap = doc.take_snapshot()
    data = snap.to_bytes()
    assert len(snap) == len(data)
    again = Snapshot.from_bytes(data)
    assert again == snap and hash(again) == hash(snap)
    assert again.version_vector == doc.version_vector
    assert again.document_id == doc.document_id
    loaded = CRDTDocument.from_snapshot(again)
    assert loaded.document_id == doc.document_id
    assert document_values(loaded) == document_values(doc)
    assert loaded.get_value("t") == doc.get_value("t")
    assert_rebuilds_equal(doc)


def test_an_empty_document_round_trips() -> None:
    doc = CRDTDocument()
    loaded = CRDTDocument.from_snapshot(roundtrip_snapshot(doc))
    assert loaded.version_vector == VersionVector()
    assert document_values(loaded) == {}


def test_a_snapshot_can_be_used_once_decoded_and_again() -> None:
    doc = rich_document()
    snap = Snapshot.from_bytes(doc.take_snapshot().to_bytes())
    first = CRDTDocument.from_snapshot(snap)
    second = CRDTDocument.from_snapshot(snap)
    assert document_values(first) == document_values(second) == document_values(doc)
    first.check_invariants()
    second.check_invariants()


def test_import_snapshot_merges_with_concurrent_local_edits_both_ways() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta, tb = CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")
    la, lb = CRDTListHandler(a, "l"), CRDTListHandler(b, "l")
    ta.insert(0, "shared")
    la.extend([1, 2, 3])
    exchange(a, b)
    ta.insert(0, "A:")
    la.move(0, 2)
    tb.insert(6, ":B")
    lb.delete(1)
    lb.append("b")
    CRDTMapHandler(b, "m").set("only b", True)
    snap_a, snap_b = roundtrip_snapshot(a), roundtrip_snapshot(b)
    assert a.import_snapshot(snap_b)
    assert b.import_snapshot(snap_a)
    assert document_values(a) == document_values(b)
    assert a.version_vector == b.version_vector
    assert ta.value == "A:shared:B"
    assert sorted(la.value, key=str) == [1, 3, "b"]
    assert not a.import_snapshot(roundtrip_snapshot(b)), "nothing new: returns False"
    a.check_invariants()
    b.check_invariants()
    # Both still exchange changes afterwards.
    ta.insert(0, ">")
    b.import_snapshot(roundtrip_snapshot(a))
    assert tb.value == ">A:shared:B"


def test_snapshots_merge_into_a_document_that_never_saw_the_origins() -> None:
    a, b, c = CRDTDocument(peer(1)), CRDTDocument(peer(2)), CRDTDocument(peer(3))
    ta = CRDTTextHandler(a, "t")
    ta.insert(0, "abc")
    exchange(a, b)
    CRDTTextHandler(b, "t").insert(1, "X")
    ta.delete(0, 3)
    c.import_snapshot(roundtrip_snapshot(b))
    c.import_snapshot(roundtrip_snapshot(a))
    exchange(a, b)
    assert c.get_value("t") == a.get_value("t") == b.get_value("t") == "X"


def test_from_snapshot_with_a_new_peer_id_keeps_editing_and_syncing() -> None:
    a = rich_document()
    b = CRDTDocument.from_snapshot(roundtrip_snapshot(a), peer_id=peer(2))
    assert b.peer_id == peer(2)
    CRDTTextHandler(b, "t").insert(0, "b:")
    a.import_changes(b.export_changes(a.version_vector))
    assert a.get_value("t") == b.get_value("t")
    assert a.get_value("t").startswith("b:")


snap_ops = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(0, 1000),
        st.integers(0, 1000),
        st.text(max_size=4).filter(bool),
    ),
    max_size=25,
)


@given(ops_a=snap_ops, ops_b=snap_ops)
def test_snapshot_round_trip_property(
    ops_a: list[tuple[int, int, int, str]], ops_b: list[tuple[int, int, int, str]]
) -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    for doc, ops in ((a, ops_a), (b, ops_b)):
        text = CRDTTextHandler(doc, "t")
        lst = CRDTListHandler(doc, "l")
        meta = CRDTMapHandler(doc, "m")
        for kind, i, j, s in ops:
            value: Any = [s, i] if i % 2 else s
            if kind == 0:
                text.insert(i % (len(text) + 1), s)
            elif kind == 1 and len(text):
                k = i % len(text)
                text.delete(k, 1 + j % (len(text) - k))
            elif kind == 2:
                lst.insert(i % (len(lst) + 1), value)
            elif kind == 3 and len(lst):
                lst.move(i % len(lst), j % len(lst))
            elif kind == 4 and len(lst):
                lst.update(i % len(lst), value) if j % 2 else lst.delete(i % len(lst))
            else:
                meta.set(s, value)
    a.import_snapshot(roundtrip_snapshot(b))
    assert_rebuilds_equal(a)
    assert_rebuilds_equal(b)
    b.import_snapshot(roundtrip_snapshot(a))
    assert document_values(a) == document_values(b)
