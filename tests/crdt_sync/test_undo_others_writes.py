"""Undo takes back only this peer's own effect (issue 11, item 2).

Bob renames a list item, Alice renames it later, Bob undoes: Alice's name
stays, in both replicas. The same for a map key and for text; and when nobody
else wrote since, undo and redo still work as before.
"""

from __future__ import annotations

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


def pair() -> tuple[CRDTDocument, CRDTDocument]:
    return CRDTDocument(peer(1)), CRDTDocument(peer(2))


def test_list_update_undo_leaves_a_later_rename_by_someone_else() -> None:
    bob, alice = pair()
    lb, la = CRDTListHandler(bob, "l"), CRDTListHandler(alice, "l")
    lb.append("milk")
    exchange(bob, alice)
    undo = UndoManager(bob, [lb], capture_timeout_ms=0)
    lb.update(0, "oat milk")
    exchange(bob, alice)
    la.update(0, "soy milk")
    exchange(bob, alice)
    assert undo.undo()
    exchange(bob, alice)
    assert lb.value == la.value == ["soy milk"]
    bob.check_invariants()


def test_list_update_undo_without_a_later_write_restores_and_redo_reapplies() -> None:
    bob, alice = pair()
    lb, la = CRDTListHandler(bob, "l"), CRDTListHandler(alice, "l")
    lb.append("milk")
    exchange(bob, alice)
    undo = UndoManager(bob, [lb], capture_timeout_ms=0)
    lb.update(0, "oat milk")
    lb.update(0, "rice milk")
    exchange(bob, alice)
    assert undo.undo()
    exchange(bob, alice)
    assert lb.value == la.value == ["oat milk"]
    assert undo.undo()
    assert undo.redo()
    exchange(bob, alice)
    assert lb.value == la.value == ["oat milk"]


def test_list_update_undo_does_not_bring_back_an_item_someone_deleted() -> None:
    bob, alice = pair()
    lb, la = CRDTListHandler(bob, "l"), CRDTListHandler(alice, "l")
    lb.extend(["a", "b"])
    exchange(bob, alice)
    undo = UndoManager(bob, [lb], capture_timeout_ms=0)
    lb.update(0, "A")
    exchange(bob, alice)
    la.delete(0)
    exchange(bob, alice)
    undo.undo()
    exchange(bob, alice)
    assert lb.value == la.value == ["b"]


def test_list_move_undo_leaves_a_later_move_by_someone_else() -> None:
    bob, alice = pair()
    lb, la = CRDTListHandler(bob, "l"), CRDTListHandler(alice, "l")
    lb.extend(["a", "b", "c"])
    exchange(bob, alice)
    undo = UndoManager(bob, [lb], capture_timeout_ms=0)
    lb.move(0, 2)  # b c a
    exchange(bob, alice)
    la.move(2, 1)  # b a c
    exchange(bob, alice)
    undo.undo()
    exchange(bob, alice)
    assert lb.value == la.value == ["b", "a", "c"]


def test_map_set_undo_leaves_a_later_value_by_someone_else() -> None:
    bob, alice = pair()
    mb, ma = CRDTMapHandler(bob, "m"), CRDTMapHandler(alice, "m")
    mb.set("title", "Draft")
    exchange(bob, alice)
    undo = UndoManager(bob, [mb], capture_timeout_ms=0)
    mb.set("title", "Plan")
    exchange(bob, alice)
    ma.set("title", "Roadmap")
    exchange(bob, alice)
    undo.undo()
    exchange(bob, alice)
    assert mb.value == ma.value == {"title": "Roadmap"}
    # Without a collaborator's write in between, undo restores as before.
    mb.set("owner", "Bob")
    mb.set("owner", "Bo")
    undo.undo()
    assert mb.get("owner") == "Bob"
    undo.undo()
    assert "owner" not in mb


def test_map_step_writing_one_key_twice_is_undone_in_full() -> None:
    bob, _ = pair()
    mb = CRDTMapHandler(bob, "m")
    undo = UndoManager(bob, [mb], capture_timeout_ms=0)
    with bob.transaction():
        mb.set("k", 1)
        mb.set("k", 2)
    undo.undo()
    assert "k" not in mb
    undo.redo()
    assert mb.get("k") == 2


def test_text_undo_leaves_a_collaborators_later_edit_of_the_same_words() -> None:
    bob, alice = pair()
    tb, ta = CRDTTextHandler(bob, "t"), CRDTTextHandler(alice, "t")
    tb.insert(0, "the cat sat")
    exchange(bob, alice)
    undo = UndoManager(bob, [tb], capture_timeout_ms=0)
    tb.delete(4, 3)
    tb.insert(4, "dog")  # Bob: "the dog sat"
    exchange(bob, alice)
    ta.delete(4, 3)
    ta.insert(4, "fox")  # Alice rewrites Bob's word later
    exchange(bob, alice)
    assert tb.value == "the fox sat"
    undo.undo()  # Bob's "dog" is already gone: nothing of Alice's is touched
    exchange(bob, alice)
    assert tb.value == ta.value == "the fox sat"
