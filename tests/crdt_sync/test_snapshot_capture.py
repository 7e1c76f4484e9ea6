"""Snapshot.capture: a copy taken now encodes to the snapshot of that moment, whatever
the document does afterwards (a server encodes it on another thread)."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    PeerId,
    Snapshot,
)


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def edited_document() -> tuple[CRDTDocument, CRDTTextHandler, CRDTListHandler, CRDTMapHandler]:
    doc = CRDTDocument(peer(1), "doc")
    text, items, meta = (
        CRDTTextHandler(doc, "t"),
        CRDTListHandler(doc, "l"),
        CRDTMapHandler(doc, "m"),
    )
    text.insert(0, "h\u00e9llo \U0001f600 world")
    text.delete(2, 3)
    items.extend([1, "two", {"three": [3]}, None])
    items.move(0, 3)
    items.update(1, "updated")
    meta.set("key", "value")
    return doc, text, items, meta


def test_a_capture_encodes_the_state_it_was_taken_in_after_later_edits() -> None:
    doc, text, items, meta = edited_document()
    expected = doc.take_snapshot()
    capture = Snapshot.capture(doc)
    # Every kind of later edit: inserts that split and extend spans, deletes that
    # flag them, list moves, updates and deletes, map writes.
    text.insert(3, "XYZ")
    text.insert(len(text.value), "!")
    text.delete(0, 4)
    items.insert(1, "new")
    items.move(2, 0)
    items.update(0, 99)
    items.delete(1)
    meta.set("key", "other")
    meta.delete("key")
    assert capture.version_vector == expected.version_vector
    assert capture.encode() == expected
    assert doc.take_snapshot() != expected


def test_a_capture_encodes_on_another_thread_to_the_same_bytes() -> None:
    doc, *_ = edited_document()
    capture = Snapshot.capture(doc)
    out: list[Snapshot] = []
    worker = threading.Thread(target=lambda: out.append(capture.encode()))
    worker.start()
    worker.join(timeout=10)
    assert out == [doc.take_snapshot()]
    loaded = CRDTDocument.from_snapshot(out[0])
    for name in ("t", "l", "m"):
        assert loaded.get_value(name) == doc.get_value(name)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.text(min_size=1, max_size=3)), max_size=20),
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=10),
)
def test_capture_then_any_edits_property(
    inserts: list[tuple[int, str]], later: list[tuple[int, int]]
) -> None:
    doc, text, *_ = edited_document()
    for at, chars in inserts:
        text.insert(min(at, len(text.value)), chars)
    expected = doc.take_snapshot()
    capture = Snapshot.capture(doc)
    for at, length in later:
        size = len(text.value)
        if length and size:
            text.delete(min(at, size - 1), min(length, size - min(at, size - 1)))
        else:
            text.insert(min(at, size), "+")
    assert capture.encode() == expected
