"""The one-change import of ``crdt_sync/remote.py`` (``import_one``):
a lone change that is ready while nothing waits (a keystroke arriving from the
network) is applied without the batch machinery. It must leave the document
exactly as the general way does (state, version vector, pending buffer, count,
events, error), and leave every other case to the general way."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    remote,
)
from crdt_sync.changes import TEXT_INSERT

PEERS = [f"00000000-0000-4000-8000-00000000000{k}" for k in range(1, 4)]


def authored(seed: int, edits: int = 60) -> list[Change]:
    """Changes of three replicas editing a text, a list and a map (some
    transactions of several ops), each seeing the others' changes now and then."""
    rng = random.Random(seed)
    docs = [CRDTDocument(peer_id=peer) for peer in PEERS]
    texts = [CRDTTextHandler(doc, "text") for doc in docs]
    lists = [CRDTListHandler(doc, "list") for doc in docs]
    maps = [CRDTMapHandler(doc, "map") for doc in docs]
    made: list[Change] = []
    for doc in docs:
        doc.on_change(made.append)
    for _ in range(edits):
        s = rng.randrange(3)
        text, items, entries = texts[s], lists[s], maps[s]
        what = rng.random()
        if what < 0.45:
            text.insert(rng.randint(0, len(text)), rng.choice(["a", "bc", "é"]))
        elif what < 0.6 and len(text):
            at = rng.randrange(len(text))
            text.delete(at, min(len(text) - at, rng.randint(1, 3)))
        elif what < 0.7:
            with docs[s].transaction():
                text.insert(0, "x")
                items.append(rng.randrange(9))
        elif what < 0.8:
            items.insert(rng.randint(0, len(items)), rng.randrange(9))
        elif what < 0.85 and len(items) > 1:
            items.move(0, len(items) - 1)
        elif what < 0.9 and len(items):
            items.delete(rng.randrange(len(items)))
        else:
            entries.set(rng.choice("kl"), rng.randrange(9))
        if rng.random() < 0.5:
            other = rng.randrange(3)
            docs[other].import_changes(docs[s].export_changes(docs[other].version_vector))
    return made


class Receiver:
    """A document with observers on every handler and on updates, recording all."""

    def __init__(self) -> None:
        self.doc = CRDTDocument(
            peer_id="00000000-0000-4000-8000-0000000000ff",
            document_id="d",
            replica_secret=bytes(16),
        )
        self.seen: list[Any] = []
        self.text = CRDTTextHandler(self.doc, "text")
        self.list = CRDTListHandler(self.doc, "list")
        self.map = CRDTMapHandler(self.doc, "map")
        for handler in (self.text, self.list, self.map):
            handler.observe(self.seen.append)
        self.doc.on_update(lambda event: self.seen.append(("update", event.changes)))

    def feed(self, changes: list[Change]) -> Any:
        try:
            return ("ok", self.doc.import_changes(changes))
        except Exception as error:  # the same error both ways, whatever it is
            return ("error", type(error), str(error))

    def state(self) -> Any:
        return (
            self.doc.take_snapshot().to_bytes(),
            dict(self.doc.version_vector),
            self.doc.pending_count,
            self.text.value,
            self.list.value,
            self.map.value,
            list(self.seen),
        )


def general_only(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """Make ``receiver``'s document decline the one-change way (others keep it)."""
    other = remote.import_one

    def declining(doc: CRDTDocument, t: Any) -> bool:
        return False if doc is receiver.doc else other(doc, t)

    monkeypatch.setattr(remote, "import_one", declining)


def deliveries(seed: int) -> list[list[Change]]:
    """The changes one at a time, mostly in order, with duplicates, some held back
    (so later ones wait for them), and now and then two together."""
    rng = random.Random(seed)
    changes = authored(seed)
    out: list[list[Change]] = []
    held: list[Change] = []
    for change in changes:
        roll = rng.random()
        if roll < 0.1:
            held.append(change)
            continue
        out.append([change])
        if roll < 0.2:
            out.append([change])  # a duplicate
        if held and rng.random() < 0.3:
            out.append([held.pop(0)])
        if roll > 0.95 and held:
            out.append([held.pop(0), change])
    out.extend([change] for change in held)
    return out


def test_one_change_at_a_time_leaves_the_document_as_the_general_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken = 0
    real = remote.import_one

    def counting(doc: CRDTDocument, t: Any) -> bool:
        nonlocal taken
        done = real(doc, t)
        taken += done
        return done

    monkeypatch.setattr(remote, "import_one", counting)
    for seed in range(6):
        fast, general = Receiver(), Receiver()
        general_only(monkeypatch, general)
        for batch in deliveries(seed):
            assert fast.feed(batch) == general.feed(batch)
            assert fast.state() == general.state()
    assert taken > 200  # the usual case does take it


def forged(change: Change, **fields: Any) -> Change:
    peer, ctr, ts, deps, ops, size = change.data
    values = {"peer": peer, "ctr": ctr, "ts": ts, "deps": deps, "ops": ops, "size": size}
    values.update(fields)
    return Change(tuple(values.values()))  # type: ignore[arg-type]


def test_invalid_lone_changes_raise_what_the_general_way_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes = authored(1, edits=10)
    first = changes[0]
    peer = first.peer
    ghost = (PEERS[2], 999)
    insert = (TEXT_INSERT, "text", None, None, "ab")
    cases = [
        forged(first, ops=(insert,), size=3),  # the size does not match the ops
        forged(first, ops=((TEXT_INSERT, "text", ghost, None, "a"),), size=1),  # no such origin
        forged(first, ops=((99, "text", None, None, "a"),), size=1),  # an unknown kind
        forged(first, ops=(), size=1),  # no ops
        forged(first, ops=((TEXT_INSERT, "text", None, None, "a"),), size=(1 << 53) + 1),
    ]
    for bad in cases:
        fast, general = Receiver(), Receiver()
        general_only(monkeypatch, general)
        got, expected = fast.feed([bad]), general.feed([bad])
        assert got == expected and got[0] == "error", bad
        assert fast.state() == general.state()
        # Nothing applied: the valid change still applies.
        assert fast.feed([first]) == general.feed([first]) == ("ok", 1)
        assert fast.state() == general.state()
    assert peer == first.peer


def test_a_change_inside_a_transaction_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    change = authored(2, edits=1)[0]
    fast, general = Receiver(), Receiver()
    general_only(monkeypatch, general)
    for receiver in (fast, general):
        with (
            receiver.doc.transaction(),
            pytest.raises(RuntimeError, match="inside a transaction"),
        ):
            receiver.doc.import_changes([change])
        assert receiver.doc.version_vector.get(change.peer, 0) == 0


def typed(count: int) -> list[Change]:
    """One replica typing ``count`` characters: each change depends on the one before."""
    doc = CRDTDocument(peer_id=PEERS[0])
    text = CRDTTextHandler(doc, "text")
    made: list[Change] = []
    doc.on_change(made.append)
    for k in range(count):
        text.insert(k, "abcdefghij"[k % 10])
    return made


def test_a_ready_change_that_unblocks_waiting_ones_applies_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes = typed(8)
    first, rest = changes[0], changes[1:]
    fast, general = Receiver(), Receiver()
    general_only(monkeypatch, general)
    for receiver in (fast, general):
        assert receiver.feed(rest) == ("ok", 0)  # all wait for the first
        assert receiver.doc.pending_count == len(rest)
        assert receiver.feed([first]) == ("ok", len(changes))
        assert receiver.doc.pending_count == 0
        assert receiver.text.value == "abcdefgh"
    assert fast.state() == general.state()


def test_duplicates_gaps_and_missing_deps_go_the_general_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes = typed(4)
    fast, general = Receiver(), Receiver()
    general_only(monkeypatch, general)
    for batch in ([changes[0]], [changes[0]], [changes[2]], [changes[1]], [changes[3]]):
        assert fast.feed(batch) == general.feed(batch)
        assert fast.state() == general.state()
    assert fast.text.value == "abcd"


def test_a_change_whose_other_deps_are_missing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    a = CRDTDocument(peer_id=PEERS[0])
    b = CRDTDocument(peer_id=PEERS[1])
    text_a, text_b = CRDTTextHandler(a, "text"), CRDTTextHandler(b, "text")
    text_a.insert(0, "x")
    b.import_changes(a.export_changes())
    text_b.insert(1, "y")
    (from_a,), (from_b,) = a.export_changes(), b.export_changes(a.version_vector)
    assert from_b.counter == 0 and from_b.deps  # ready by its own counter, not by its deps
    fast, general = Receiver(), Receiver()
    general_only(monkeypatch, general)
    for batch, result in (([from_b], ("ok", 0)), ([from_a], ("ok", 2))):
        assert fast.feed(batch) == general.feed(batch) == result
        assert fast.state() == general.state()
    assert fast.text.value == "xy"
