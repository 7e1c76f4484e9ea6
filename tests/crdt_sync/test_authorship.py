"""The read-only authorship API: ``CRDTTextHandler.id_runs`` and ``CRDTDocument.timestamp_of``."""

from __future__ import annotations

import random

from network import roundtrip_snapshot

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def check_runs(text: CRDTTextHandler) -> list[tuple[int, int, str, int]]:
    """``text.id_runs()``, checked against the id of every character."""
    runs = text.id_runs()
    pos = 0
    for start, length, author, counter in runs:
        assert start == pos and length > 0
        for k in (0, length - 1):
            assert text.sticky_index(start + k).item == (author, counter + k)
        pos += length
    assert pos == len(text)
    return runs


def test_runs_name_each_author_and_their_op_ids() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta, tb = CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")
    ta.insert(0, "hello world")
    b.import_changes(a.export_changes())
    tb.insert(5, ", dear")
    tb.insert(0, ">> ")
    a.import_changes(b.export_changes(a.version_vector))
    pa, pb = str(a.peer_id), str(b.peer_id)
    assert check_runs(ta) == [
        (0, 3, pb, 6),
        (3, 5, pa, 0),
        (8, 6, pb, 0),
        (14, 6, pa, 5),
    ]
    assert check_runs(tb) == ta.id_runs()


def test_deleting_inside_a_run_splits_it_and_the_next_edit_starts_a_new_one() -> None:
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "abcdef")
    me = str(doc.peer_id)
    assert check_runs(text) == [(0, 6, me, 0)]
    text.delete(2, 2)
    assert check_runs(text) == [(0, 2, me, 0), (2, 2, me, 4)]
    text.insert(4, "gh")  # the delete took op id 6
    assert check_runs(text) == [(0, 2, me, 0), (2, 2, me, 4), (4, 2, me, 7)]
    text.delete(0, 4)
    text.delete(0, 2)
    assert text.id_runs() == []


def test_runs_of_a_lazily_loaded_text_equal_the_original() -> None:
    rng = random.Random(7)
    docs = [CRDTDocument(peer(i + 1)) for i in range(3)]
    texts = [CRDTTextHandler(d, "t") for d in docs]
    for step in range(300):
        k = rng.randrange(3)
        text = texts[k]
        if len(text) and rng.random() < 0.3:
            at = rng.randrange(len(text))
            text.delete(at, min(len(text) - at, rng.randint(1, 4)))
        else:
            text.insert(rng.randint(0, len(text)), "xyz"[: rng.randint(1, 3)])
        if step % 17 == 0:
            for other in docs:
                if other is not docs[k]:
                    other.import_changes(docs[k].export_changes(other.version_vector))
    loaded = CRDTDocument.from_snapshot(roundtrip_snapshot(docs[0]))
    lazy = CRDTTextHandler(loaded, "t")
    runs = lazy.id_runs()  # from the snapshot's columns
    assert runs == texts[0].id_runs() == check_runs(lazy)
    assert len({author for _, _, author, _ in runs}) == 3


def test_a_long_run_is_one_entry() -> None:
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    for _ in range(1000):
        text.insert(len(text), "x" * 100)
    assert text.id_runs() == [(0, 100_000, str(doc.peer_id), 0)]


def test_timestamp_of_is_the_stamp_of_the_change_that_made_the_op() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta = CRDTTextHandler(a, "t")
    made: list[Change] = []
    a.on_change(made.append)
    ta.insert(0, "one")
    ta.insert(3, " two")
    b.import_changes(a.export_changes())
    pa = str(a.peer_id)
    for doc in (a, b):
        assert doc.timestamp_of((pa, 0)) == doc.timestamp_of((pa, 2)) == made[0].timestamp
        assert doc.timestamp_of((pa, 3)) == doc.timestamp_of((pa, 6)) == made[1].timestamp
        assert doc.timestamp_of((pa, 7)) is None
        assert doc.timestamp_of((str(peer(9)), 0)) is None
    assert made[0].timestamp < made[1].timestamp
    with a.transaction():
        ta.insert(0, "!")
        stamp = a.timestamp_of((pa, 7))
        assert stamp is not None and stamp > made[1].timestamp
    assert made[-1].timestamp == stamp == a.timestamp_of((pa, 7))
    for start, _, author, counter in ta.id_runs():
        assert a.timestamp_of((author, counter)) is not None, start


def test_timestamp_of_history_a_document_does_not_hold_is_none() -> None:
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "abc")
    me = str(doc.peer_id)
    loaded = CRDTDocument.from_snapshot(roundtrip_snapshot(doc))
    assert loaded.timestamp_of((me, 0)) is None
    assert doc.timestamp_of((me, 0)) is not None
    doc.compact()
    assert doc.timestamp_of((me, 0)) is None
    text.insert(3, "d")
    assert doc.timestamp_of((me, 3)) is not None
