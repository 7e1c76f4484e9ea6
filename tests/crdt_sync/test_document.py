"""The document: transactions, change history, causal delivery, pending buffer, compaction."""

from __future__ import annotations

import pytest
from network import document_values, exchange

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    HistoryCompactedError,
    PeerId,
    PendingBufferFullError,
    Snapshot,
    UpdateEvent,
    VersionVector,
)


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def test_ids_default_to_fresh_uuids_and_validate() -> None:
    a, b = CRDTDocument(), CRDTDocument()
    assert a.peer_id != b.peer_id and a.document_id != b.document_id
    named = CRDTDocument(str(peer(1)), "doc-1")
    assert named.peer_id == peer(1) and named.document_id == "doc-1"
    with pytest.raises(ValueError):
        CRDTDocument("not a uuid")
    with pytest.raises(ValueError):
        CRDTDocument(document_id="")
    with pytest.raises(TypeError):
        CRDTDocument(42)  # type: ignore[arg-type]


# --------------------------------------------------------------- transactions


def test_a_transaction_is_one_change_with_every_op() -> None:
    doc = CRDTDocument()
    text, lst, meta = CRDTTextHandler(doc, "t"), CRDTListHandler(doc, "l"), CRDTMapHandler(doc, "m")
    changes: list[Change] = []
    doc.on_change(changes.append)
    with doc.transaction(origin="me"):
        text.insert(0, "ab")
        with doc.transaction(origin="ignored"):  # nested: joins the open one
            lst.append(1)
        meta.set("k", "v")
        assert changes == []  # nothing is sent before the outermost block ends
    assert len(changes) == 1
    change = changes[0]
    assert change.peer == str(doc.peer_id) and change.counter == 0
    assert change.id == (str(doc.peer_id), 0)
    assert change.size == 4  # two characters, one list item, one map write
    assert change.deps == ()
    assert doc.version_vector == VersionVector({str(doc.peer_id): 4})
    text.insert(2, "c")
    assert changes[1].counter == 4
    assert changes[1].deps == ((str(doc.peer_id), 3),)
    assert changes[1].timestamp > change.timestamp


def test_every_edit_outside_a_transaction_is_its_own_change() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    changes: list[Change] = []
    doc.on_change(changes.append)
    text.insert(0, "a")
    text.insert(1, "b")
    text.delete(0, 1)
    assert [c.counter for c in changes] == [0, 1, 2]
    assert doc.export_changes() == changes


def test_on_update_reports_local_commits_and_remote_imports() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    events: list[UpdateEvent] = []
    b.on_update(events.append)
    local: list[Change] = []
    b.on_change(local.append)
    CRDTTextHandler(a, "t").insert(0, "x")
    with b.transaction(origin="o"):
        CRDTTextHandler(b, "t").insert(0, "y")
    assert events[-1].local and events[-1].origin == "o" and events[-1].changes == tuple(local)
    b.import_changes(a.export_changes())
    assert not events[-1].local
    assert events[-1].changes == tuple(a.export_changes())
    assert len(local) == 1, "on_change reports only local changes"
    count = len(events)
    assert b.import_changes(a.export_changes()) == 0
    assert len(events) == count, "an import that applied nothing is not an update"


def test_cancelled_subscriptions_are_not_called() -> None:
    doc = CRDTDocument()
    seen: list[Change] = []
    with doc.on_change(seen.append):
        CRDTTextHandler(doc, "t").insert(0, "a")
    doc.get_value("t")
    CRDTTextHandler(doc, "u").insert(0, "b")
    assert len(seen) == 1


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    doc = CRDTDocument()
    seen: list[Change] = []

    def boom(change: Change) -> None:
        raise RuntimeError("observer bug")

    doc.on_change(boom)
    doc.on_change(seen.append)
    CRDTTextHandler(doc, "t").insert(0, "a")
    assert len(seen) == 1
    assert "observer bug" in caplog.text


def test_imports_and_compaction_are_refused_inside_a_transaction() -> None:
    a, b = CRDTDocument(), CRDTDocument()
    CRDTTextHandler(a, "t").insert(0, "x")
    with b.transaction():
        with pytest.raises(RuntimeError):
            b.import_changes(a.export_changes())
        with pytest.raises(RuntimeError):
            b.import_snapshot(a.take_snapshot())
        with pytest.raises(RuntimeError):
            b.compact()
    assert b.version_vector == VersionVector()


# ------------------------------------------------------------ causal delivery


def three_changes() -> tuple[CRDTDocument, list[Change]]:
    a = CRDTDocument(peer(1))
    text = CRDTTextHandler(a, "t")
    text.insert(0, "a")
    text.insert(1, "b")
    text.insert(2, "c")
    return a, a.export_changes()


def test_duplicates_are_ignored() -> None:
    _, changes = three_changes()
    b = CRDTDocument()
    assert b.import_changes(changes) == 3
    assert b.import_changes(changes) == 0
    assert b.import_changes(changes[1:2] + changes[1:2]) == 0
    assert b.get_value("t") == "abc"


def test_out_of_order_changes_wait_and_apply_when_their_deps_arrive() -> None:
    _, (c0, c1, c2) = three_changes()
    b = CRDTDocument()
    assert b.import_changes([c2]) == 0
    assert b.pending_count == 1
    assert b.import_changes([c1, c2]) == 0  # a pending duplicate is not held twice
    assert b.pending_count == 2
    assert b.version_vector == VersionVector()
    assert b.import_changes([c0]) == 3, "the call that unblocks them counts them"
    assert b.pending_count == 0
    assert b.get_value("t") == "abc"
    b.check_invariants()


def test_a_change_waits_for_deps_from_other_peers() -> None:
    a, b, c = CRDTDocument(peer(1)), CRDTDocument(peer(2)), CRDTDocument(peer(3))
    CRDTTextHandler(a, "t").insert(0, "a")
    b.import_changes(a.export_changes())
    CRDTTextHandler(b, "t").insert(1, "b")
    from_b = b.export_changes(a.version_vector)
    assert c.import_changes(from_b) == 0 and c.pending_count == 1
    assert c.import_changes(a.export_changes()) == 2
    assert c.get_value("t") == "ab" and c.pending_count == 0


def test_the_pending_buffer_is_bounded() -> None:
    a = CRDTDocument(peer(1))
    text = CRDTTextHandler(a, "t")
    for i in range(6):
        text.insert(i, "x")
    changes = a.export_changes()
    b = CRDTDocument(max_pending=3)
    with pytest.raises(PendingBufferFullError) as raised:
        b.import_changes(changes[1:])
    # A refused batch changes nothing: not even the buffer keeps part of it.
    assert raised.value.applied == 0
    assert b.pending_count == 0
    assert b.version_vector == VersionVector()
    assert b.import_changes(changes[1:4]) == 0
    assert b.pending_count == 3
    # Once the gap is filled everything still arrives.
    assert b.import_changes(changes) == 6
    assert b.get_value("t") == "xxxxxx" and b.pending_count == 0


def test_import_changes_rejects_non_changes() -> None:
    doc = CRDTDocument()
    with pytest.raises(TypeError):
        doc.import_changes(["not a change"])  # type: ignore[list-item]


def test_a_transaction_deleting_old_and_new_text_applies_remotely() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    text = CRDTTextHandler(a, "t")
    text.insert(0, "ab")
    exchange(a, b)
    with a.transaction():
        text.insert(2, "cd")  # extends a's run
        text.delete(1, 2)  # "b" (old) and "c" (new in this very change)
    assert text.value == "ad"
    exchange(a, b)
    assert b.get_value("t") == "ad"
    b.check_invariants()


def test_a_transaction_deleting_old_and_new_list_items_applies_remotely() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    lst = CRDTListHandler(a, "l")
    lst.extend([1, 2])
    exchange(a, b)
    with a.transaction():
        lst.extend([3, 4])
        lst.delete(1, 2)
        lst.move(1, 0)
        lst.update(0, "x")
    exchange(a, b)
    assert b.get_value("l") == lst.value == ["x", 1]


# -------------------------------------------------------------- export since


def test_export_since_returns_only_what_the_receiver_lacks() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta = CRDTTextHandler(a, "t")
    ta.insert(0, "hello")
    exchange(a, b)
    seen = b.version_vector
    ta.insert(5, " world")
    CRDTMapHandler(a, "m").set("k", 1)
    missing = a.export_changes(seen)
    assert [c.counter for c in missing] == [5, 11]
    assert a.export_changes(a.version_vector) == []
    assert b.import_changes(missing) == 2
    assert document_values(a) == document_values(b)


def test_export_since_a_vector_in_the_middle_of_a_change_includes_it() -> None:
    a = CRDTDocument(peer(1))
    CRDTTextHandler(a, "t").insert(0, "abcdef")  # one change, counters 0..5
    since = VersionVector({str(a.peer_id): 3})
    assert [c.counter for c in a.export_changes(since)] == [0]


def test_binary_export_and_import_match_the_object_api() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    CRDTTextHandler(a, "t").insert(0, "héllo 😀")
    CRDTListHandler(a, "l").append({"ключ": ["\U0001d538"]})
    assert b.binary_import_changes(a.binary_export_changes()) == 2
    assert document_values(a) == document_values(b)
    assert b.binary_import_changes(a.binary_export_changes(b.version_vector)) == 0


# ------------------------------------------------------------------ compaction


def test_compact_drops_history_but_still_merges_concurrent_edits() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta, tb = CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")
    ta.insert(0, "hello")
    exchange(a, b)
    old = b.version_vector
    tb.insert(5, " there")  # concurrent with what a does next
    ta.delete(0, 1)
    ta.insert(0, "J")
    a.compact()
    assert not a.can_export(VersionVector())
    with pytest.raises(HistoryCompactedError):
        a.export_changes()
    with pytest.raises(HistoryCompactedError):
        a.export_changes(old)
    assert a.can_export(a.version_vector)
    a.import_changes(b.export_changes(a.version_vector))
    assert ta.value == "Jello there"
    # b catches up from a's snapshot, since a's history is gone.
    b.import_snapshot(Snapshot.from_bytes(a.take_snapshot().to_bytes()))
    assert tb.value == "Jello there"
    a.check_invariants()
    b.check_invariants()
    # Edits after compaction are exported again.
    ta.insert(0, ">")
    assert a.can_export(b.version_vector)
    b.import_changes(a.export_changes(b.version_vector))
    assert tb.value == ">Jello there"


# ----------------------------------------------------- snapshots and counters


def test_import_after_snapshot_applies_only_later_changes() -> None:
    a = CRDTDocument(peer(1))
    text = CRDTTextHandler(a, "t")
    text.insert(0, "base")
    snap = Snapshot.from_bytes(a.take_snapshot().to_bytes())
    text.insert(4, "+later")
    b = CRDTDocument.from_snapshot(snap, peer_id=peer(2))
    assert b.get_value("t") == "base"
    assert b.import_changes(a.export_changes()) == 1, "changes in the snapshot are duplicates"
    assert b.get_value("t") == "base+later"
    assert b.pending_count == 0
    b.check_invariants()


def test_changes_waiting_for_a_snapshot_apply_when_it_is_imported() -> None:
    a = CRDTDocument(peer(1))
    text = CRDTTextHandler(a, "t")
    text.insert(0, "ab")
    snap = a.take_snapshot()
    text.insert(2, "c")
    b = CRDTDocument(peer(2))
    b.import_changes(a.export_changes(snap.version_vector))
    assert b.pending_count == 1
    assert b.import_snapshot(snap)
    assert b.pending_count == 0
    assert b.get_value("t") == "abc"


def test_reloading_from_a_snapshot_never_reissues_an_op_id() -> None:
    a, c = CRDTDocument(peer(1)), CRDTDocument(peer(3))
    CRDTTextHandler(a, "t").insert(0, "one")
    with a.transaction():
        CRDTListHandler(a, "l").append(1)
        CRDTMapHandler(a, "m").set("k", "v")
    exchange(a, c)
    used = a.version_vector[str(a.peer_id)]
    reloaded = CRDTDocument.from_snapshot(
        Snapshot.from_bytes(a.take_snapshot().to_bytes()), peer_id=a.peer_id, resume=True
    )
    assert reloaded.version_vector == a.version_vector
    changes: list[Change] = []
    reloaded.on_change(changes.append)
    CRDTTextHandler(reloaded, "t").insert(3, " two")
    assert changes[0].counter == used
    assert changes[0].peer == str(a.peer_id)
    assert c.import_changes(changes) == 1
    assert c.get_value("t") == "one two"
    reloaded.check_invariants()


def test_a_server_document_without_handlers_keeps_every_state() -> None:
    a = CRDTDocument(peer(1))
    CRDTTextHandler(a, "t").insert(0, "x")
    CRDTListHandler(a, "l").append(["y"])
    CRDTMapHandler(a, "m").set("z", {"w": 1})
    server = CRDTDocument()
    server.binary_import_changes(a.binary_export_changes())
    assert server.handlers == {}
    rebuilt = CRDTDocument.from_snapshot(server.take_snapshot())
    assert document_values(rebuilt) == document_values(a)


def test_reloading_with_a_new_peer_id_is_safe_even_from_an_old_snapshot() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta = CRDTTextHandler(a, "t")
    ta.insert(0, "a")
    old = a.take_snapshot()
    ta.insert(1, "b")
    exchange(a, b)
    reloaded = CRDTDocument.from_snapshot(old)  # default: a fresh peer id
    assert reloaded.peer_id != a.peer_id
    CRDTTextHandler(reloaded, "t").insert(1, "X")
    exchange(reloaded, b)
    assert reloaded.get_value("t") == b.get_value("t")
    assert sorted(b.get_value("t")) == ["X", "a", "b"]


def test_continuing_as_a_peer_of_the_snapshot_needs_resume() -> None:
    """Core bug 10: reloading an *older* snapshot under the same peer id would
    reissue op ids that replicas already hold, and they would diverge silently.
    Ids alone cannot reveal that later, so reusing a peer id is an explicit choice."""
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta = CRDTTextHandler(a, "t")
    ta.insert(0, "a")
    old = a.take_snapshot()  # e.g. the last save before a crash
    ta.insert(1, "b")  # sent, but not in the saved snapshot
    exchange(a, b)
    with pytest.raises(ValueError, match="resume"):
        CRDTDocument.from_snapshot(old, peer_id=a.peer_id)
    # The default, a new peer id, is always safe: everyone converges.
    reloaded = CRDTDocument.from_snapshot(old)
    CRDTTextHandler(reloaded, "t").insert(1, "X")
    exchange(reloaded, b)
    exchange(a, b)
    assert reloaded.get_value("t") == b.get_value("t") == a.get_value("t")
    # A peer resuming from its latest snapshot continues its counters.
    latest = CRDTDocument.from_snapshot(a.take_snapshot(), peer_id=a.peer_id, resume=True)
    assert latest.version_vector.get(str(a.peer_id)) == a.version_vector.get(str(a.peer_id))
