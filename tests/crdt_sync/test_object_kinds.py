"""The kind is part of a shared object's identity: ``"x"`` as text and ``"x"`` as list
are two objects. Nobody can block a name by using it with another kind first."""

from __future__ import annotations

import zlib

import pytest
from network import assert_rebuilds_equal, document_values, exchange, roundtrip_snapshot

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    DecodeError,
    HandlerError,
    Snapshot,
    decode_changes,
    encode_changes,
)


def both_kinds() -> tuple[CRDTDocument, CRDTTextHandler, CRDTListHandler, CRDTMapHandler]:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "x")
    lst = CRDTListHandler(doc, "x")
    meta = CRDTMapHandler(doc, "x")
    text.insert(0, "hello")
    lst.extend([1, "two", [3]])
    meta.set("k", "v")
    with doc.transaction():
        text.delete(0, 1)
        lst.move(0, 2)
        text.insert(0, "H")
    return doc, text, lst, meta


def test_one_name_holds_a_text_a_list_and_a_map_apart() -> None:
    doc, text, lst, meta = both_kinds()
    assert text.value == "Hello" and lst.value == ["two", [3], 1] and meta.value == {"k": "v"}
    assert doc.state_names == {"x": ("list", "map", "text")}
    assert doc.get_value("x", "text") == "Hello"
    assert doc.get_value("x", "list") == ["two", [3], 1]
    with pytest.raises(HandlerError):
        doc.get_value("x")  # ambiguous without the kind
    with pytest.raises(KeyError):
        doc.get_value("y")
    with pytest.raises(KeyError):
        CRDTDocument().get_value("x", "text")
    with pytest.raises(ValueError):
        doc.get_value("x", "tree")
    assert set(doc.handlers) == {("x", "text"), ("x", "list"), ("x", "map")}
    doc.check_invariants()


def test_both_kinds_round_trip_through_change_bytes_and_snapshot_bytes() -> None:
    doc, _, _, _ = both_kinds()
    expected = document_values(doc)
    by_bytes = CRDTDocument()
    by_bytes.binary_import_changes(doc.binary_export_changes())
    assert document_values(by_bytes) == expected
    by_objects = CRDTDocument()
    by_objects.import_changes(decode_changes(encode_changes(doc.export_changes())))
    assert document_values(by_objects) == expected
    loaded = CRDTDocument.from_snapshot(roundtrip_snapshot(doc))
    assert document_values(loaded) == expected
    assert CRDTTextHandler(loaded, "x").value == "Hello"
    assert CRDTListHandler(loaded, "x").value == ["two", [3], 1]
    assert_rebuilds_equal(doc)


def test_snapshots_holding_one_name_as_two_kinds_merge_with_concurrent_edits() -> None:
    a = CRDTDocument()
    CRDTTextHandler(a, "x").insert(0, "text of a")
    b = CRDTDocument()
    CRDTListHandler(b, "x").extend(["list", "of", "b"])
    CRDTTextHandler(b, "x").insert(0, "text of b")
    base = CRDTDocument.from_snapshot(roundtrip_snapshot(b))
    CRDTTextHandler(base, "x").insert(0, "> ")
    a.import_snapshot(roundtrip_snapshot(b))
    b.import_snapshot(roundtrip_snapshot(a))
    a.import_snapshot(roundtrip_snapshot(base))
    b.import_snapshot(roundtrip_snapshot(base))
    assert document_values(a) == document_values(b)
    assert a.get_value("x", "list") == ["list", "of", "b"]
    text = a.get_value("x", "text")
    assert "text of a" in text and "text of b" in text and text.count("> ") == 1
    a.check_invariants()
    b.check_invariants()


def test_a_hostile_change_using_a_name_as_another_kind_blocks_nobody() -> None:
    """Issue 7, kind hijack: a ~100-byte change used ``shared_list`` as text in a
    document whose list was still empty, and every honest import then failed."""
    honest = CRDTDocument()
    items = CRDTListHandler(honest, "shared_list")
    server = CRDTDocument()
    hostile = CRDTDocument()
    CRDTTextHandler(hostile, "shared_list").insert(0, "mine now")
    hijack = hostile.binary_export_changes()
    assert len(hijack) < 200
    server.binary_import_changes(hijack)
    honest.binary_import_changes(hijack)  # imports: another object
    assert items.value == [] and honest.get_value("shared_list", "text") == "mine now"
    items.append("still a list")
    server.import_changes(honest.export_changes(server.version_vector))
    late = CRDTDocument()
    late.binary_import_changes(server.binary_export_changes())
    late_items = CRDTListHandler(late, "shared_list")
    assert late_items.value == ["still a list"]
    late_items.append("and more")
    exchange(honest, server, late, hostile)
    for doc in (server, late, hostile):
        assert document_values(doc) == document_values(honest)
    assert items.value == ["still a list", "and more"]


def test_a_hostile_snapshot_using_a_name_as_another_kind_merges_as_another_object() -> None:
    honest = CRDTDocument()
    text = CRDTTextHandler(honest, "text")
    text.insert(0, "keep me")
    hostile = CRDTDocument()
    CRDTListHandler(hostile, "text").append("not text")
    CRDTTextHandler(hostile, "other").insert(0, "half of a merge")
    assert honest.import_snapshot(roundtrip_snapshot(hostile))
    assert text.value == "keep me"
    assert honest.get_value("text", "list") == ["not text"]
    assert honest.get_value("other") == "half of a merge"
    text.insert(0, "still ")
    hostile.import_changes(honest.export_changes(hostile.version_vector))
    assert document_values(hostile) == document_values(honest)


def _rewrite_snapshot(data: bytes, old: bytes, new: bytes) -> bytes:
    """The snapshot ``data`` with ``old`` replaced by ``new`` in its inflated body."""
    body = zlib.decompress(data[6:])
    assert body.count(old) == 1
    return data[:6] + zlib.compress(body.replace(old, new))


def test_a_snapshot_naming_one_object_twice_is_refused() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "name-one").insert(0, "a")
    CRDTTextHandler(doc, "name-two").insert(0, "b")
    CRDTListHandler(doc, "name-one").append(1)
    data = doc.take_snapshot().to_bytes()
    Snapshot.from_bytes(data)  # one name as two kinds is fine
    with pytest.raises(DecodeError, match="repeated text 'name-one'"):
        Snapshot.from_bytes(_rewrite_snapshot(data, b"name-two", b"name-one"))
