"""Undo / redo: only this peer's own edits, correct with remote edits in between.

``capture_timeout_ms=0`` makes every transaction its own undo step without
depending on the clock; capture merging is tested with a long timeout.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from network import exchange

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    PeerId,
    UndoManager,
)


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def text_pair() -> tuple[CRDTDocument, CRDTDocument, CRDTTextHandler, CRDTTextHandler]:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    return a, b, CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")


def test_undo_removes_only_own_typing_in_both_replicas() -> None:
    a, b, ta, tb = text_pair()
    undo = UndoManager(a, [ta], capture_timeout_ms=0)
    ta.insert(0, "hello")
    exchange(a, b)
    tb.insert(5, " world")
    tb.insert(0, ">")
    exchange(a, b)
    assert ta.value == ">hello world"
    assert undo.can_undo and not undo.can_redo
    assert undo.undo()
    exchange(a, b)
    assert ta.value == tb.value == "> world"
    assert undo.can_redo and not undo.can_undo
    assert undo.redo()
    exchange(a, b)
    assert ta.value == tb.value == ">hello world"
    a.check_invariants()
    b.check_invariants()


def test_undo_of_a_delete_restores_the_text_where_it_was() -> None:
    a, b, ta, tb = text_pair()
    ta.insert(0, "abcdef")
    exchange(a, b)
    undo = UndoManager(a, [ta], capture_timeout_ms=0)
    ta.delete(2, 2)  # "abef"
    exchange(a, b)
    tb.insert(2, "XY")  # remote insert exactly where the deleted text was
    tb.insert(0, "😀")
    exchange(a, b)
    assert undo.undo()
    exchange(a, b)
    assert ta.value == tb.value
    assert ta.value.replace("XY", "") == "😀abcdef"
    assert undo.redo()
    exchange(a, b)
    assert ta.value == tb.value == "😀abXYef"


def test_remote_edits_are_never_undone() -> None:
    a, b, ta, tb = text_pair()
    undo = UndoManager(a, [ta], capture_timeout_ms=0)
    tb.insert(0, "remote")
    exchange(a, b)
    assert not undo.can_undo
    assert not undo.undo()
    assert ta.value == "remote"


def test_redo_is_cleared_by_a_new_edit() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    undo = UndoManager(doc, [text], capture_timeout_ms=0)
    text.insert(0, "a")
    undo.undo()
    assert undo.can_redo
    text.insert(0, "b")
    assert not undo.can_redo
    assert not undo.redo()


def test_edits_within_the_capture_timeout_form_one_step() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    undo = UndoManager(doc, [text], capture_timeout_ms=60_000)
    for i, ch in enumerate("abc"):
        text.insert(i, ch)
    undo.stop_capturing()
    text.insert(3, "d")
    undo.undo()
    assert text.value == "abc"
    undo.undo()
    assert text.value == ""
    undo.redo()
    undo.redo()
    assert text.value == "abcd"


def test_clear_and_ignored_origins_and_untracked_handlers() -> None:
    doc = CRDTDocument()
    text, other = CRDTTextHandler(doc, "t"), CRDTTextHandler(doc, "u")
    undo = UndoManager(doc, [text], capture_timeout_ms=0, ignored_origins=["sync"])
    with doc.transaction(origin="sync"):
        text.insert(0, "ignored")
    other.insert(0, "untracked")
    assert not undo.can_undo
    text.insert(0, "x")
    undo.clear()
    assert not undo.can_undo and not undo.undo()
    assert text.value == "xignored" and other.value == "untracked"


def test_a_handler_of_another_document_is_refused() -> None:
    with pytest.raises(ValueError):
        UndoManager(CRDTDocument(), [CRDTTextHandler(CRDTDocument(), "t")])


def list_and_map_history() -> tuple[
    CRDTDocument,
    CRDTDocument,
    CRDTListHandler,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTMapHandler,
    UndoManager,
    list[tuple[list[object], dict[str, object]]],
]:
    """a edits a list and a map in six undo steps; b edits both before and after."""
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    la, lb = CRDTListHandler(a, "l"), CRDTListHandler(b, "l")
    ma, mb = CRDTMapHandler(a, "m"), CRDTMapHandler(b, "m")
    lb.extend(["r1", "r2"])
    mb.set("k", "remote")
    exchange(a, b)
    undo = UndoManager(a, [la, ma], capture_timeout_ms=0)
    history = [(la.value, ma.value)]
    la.insert(1, "mine")
    history.append((la.value, ma.value))
    la.move(0, 2)
    history.append((la.value, ma.value))
    la.update(1, {"v": "😀"})
    history.append((la.value, ma.value))
    la.delete(0)
    history.append((la.value, ma.value))
    ma.set("k", "mine")
    history.append((la.value, ma.value))
    ma.delete("k")
    history.append((la.value, ma.value))
    lb.append("r3")  # a remote edit after all of a's steps
    exchange(a, b)
    return a, b, la, lb, ma, mb, undo, history


def test_list_and_map_edits_undo_with_remote_edits_between() -> None:
    a, b, la, lb, ma, mb, undo, history = list_and_map_history()
    for expected_list, expected_map in reversed(history[:-1]):
        assert undo.undo()
        exchange(a, b)
        assert la.value == lb.value
        assert [v for v in la.value if v != "r3"] == expected_list
        assert ma.value == mb.value == expected_map
    assert not undo.can_undo
    a.check_invariants()
    b.check_invariants()


def test_list_and_map_edits_redo_with_remote_edits_between() -> None:
    a, b, la, lb, ma, mb, undo, history = list_and_map_history()
    while undo.undo():
        exchange(a, b)
    for expected_list, expected_map in history[1:]:
        assert undo.redo()
        exchange(a, b)
        assert la.value == lb.value
        assert [v for v in la.value if v != "r3"] == expected_list
        assert ma.value == mb.value == expected_map


def test_redo_of_a_list_delete_deletes_again() -> None:
    doc = CRDTDocument()
    lst = CRDTListHandler(doc, "l")
    undo = UndoManager(doc, [lst], capture_timeout_ms=0)
    lst.extend(["x", "y"])
    undo.clear()
    lst.delete(0)
    undo.undo()
    assert lst.value == ["x", "y"]
    undo.redo()
    assert lst.value == ["y"]


def test_undo_of_an_insert_after_undo_of_its_partial_delete() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    undo = UndoManager(doc, [text], capture_timeout_ms=0)
    text.insert(0, "abc")
    text.delete(1, 1)
    undo.undo()
    assert text.value == "abc"
    undo.undo()
    assert text.value == ""
    undo.redo()
    undo.redo()
    assert text.value == "ac"


@given(
    script=st.lists(
        st.tuples(st.booleans(), st.booleans(), st.integers(0, 40), st.integers(1, 4)),
        min_size=1,
        max_size=20,
    )
)
@example(script=[(True, False, 0, 1), (True, False, 0, 1)])  # core bug 3, shrunk
def test_undoing_every_own_step_leaves_exactly_the_remote_text(
    script: list[tuple[bool, bool, int, int]],
) -> None:
    a, b, ta, tb = text_pair()
    undo = UndoManager(a, [ta], capture_timeout_ms=0)
    for by_a, insert, where, n in script:
        if by_a:
            if insert or not len(ta):
                ta.insert(where % (len(ta) + 1), "a" * n)
            else:
                i = where % len(ta)
                ta.delete(i, min(n, len(ta) - i))
        else:
            tb.insert(where % (len(tb) + 1), "B" * n)  # the remote peer only types
        if where % 3 == 0:
            exchange(a, b)
    exchange(a, b)
    done = ta.value
    remote_only = "".join(ch for ch in done if ch == "B")
    steps = 0
    while undo.undo():
        steps += 1
        exchange(a, b)
    assert ta.value == tb.value
    # Every own insert is gone, every remote character (even ones a deleted) is back.
    assert ta.value == "B" * tb.value.count("B")
    assert len(ta.value) >= len(remote_only)
    for _ in range(steps):
        assert undo.redo()
    exchange(a, b)
    assert ta.value == tb.value == done
    a.check_invariants()


def test_a_text_and_a_list_of_one_name_undo_each_their_own_edits() -> None:
    # Kind is part of an object's identity: the text "x" and the list "x" are
    # two objects, and the undo manager keeps them apart.
    doc = CRDTDocument(peer(1))
    text, items = CRDTTextHandler(doc, "x"), CRDTListHandler(doc, "x")
    undo = UndoManager(doc, [text, items], capture_timeout_ms=0)
    text.insert(0, "abc")
    items.insert(0, "one")
    items.insert(1, "two")
    text.delete(0, 1)
    assert undo.undo()  # the text delete
    assert (text.value, items.value) == ("abc", ["one", "two"])
    assert undo.undo()  # the second list insert
    assert (text.value, items.value) == ("abc", ["one"])
    assert undo.undo() and undo.undo()
    assert (text.value, items.value) == ("", [])
    assert undo.redo() and undo.redo()
    assert (text.value, items.value) == ("abc", ["one"])


def test_only_the_tracked_kind_of_a_name_is_undone() -> None:
    doc = CRDTDocument(peer(1))
    text, items = CRDTTextHandler(doc, "x"), CRDTListHandler(doc, "x")
    undo = UndoManager(doc, [items], capture_timeout_ms=0)
    text.insert(0, "abc")
    assert not undo.can_undo
    items.insert(0, 1)
    text.insert(3, "d")
    assert undo.undo()
    assert (text.value, items.value) == ("abcd", [])
    assert not undo.undo()
