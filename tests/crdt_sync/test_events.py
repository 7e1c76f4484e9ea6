"""Events: deltas that turn the old value into the new one, origin and local flags."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from network import exchange

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    Delete,
    Insert,
    ListEvent,
    MapEvent,
    PeerId,
    Retain,
    Snapshot,
    TextEvent,
    apply_delta,
)
from crdt_sync.events import DeltaBuilder


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


class Recorder:
    """Checks each event's delta against the value before and after it."""

    def __init__(self, handler: CRDTTextHandler | CRDTListHandler) -> None:
        self.handler = handler
        self.before: Any = handler.value
        self.events: list[TextEvent | ListEvent] = []
        handler.observe(self)

    def __call__(self, event: TextEvent | ListEvent) -> None:
        self.events.append(event)
        after = apply_delta(self.before, event.delta)
        assert after == self.handler.value, f"delta {event.delta} from {self.before!r}"
        self.before = after


def test_apply_delta_on_str_and_list() -> None:
    delta = (Retain(1), Delete(2), Insert("😀X"), Retain(1), Insert("!"))
    assert apply_delta("abcde", delta) == "a😀Xd!e"
    assert apply_delta([1, 2, 3, 4, 5], (Retain(1), Delete(2), Insert([9]))) == [1, 9, 4, 5]
    assert apply_delta("abc", ()) == "abc"


def test_local_text_events_carry_origin_and_local() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    rec = Recorder(text)
    text.insert(0, "héllo")
    with doc.transaction(origin="typing"):
        text.insert(5, " 😀")
        text.delete(0, 1)
        text.insert(0, "J")
    assert [e.local for e in rec.events] == [True, True]
    assert rec.events[0].origin is None and rec.events[1].origin == "typing"
    assert rec.events[0].delta == (Insert("héllo"),)
    # Replacing at one place may list its insert and delete in either order.
    assert rec.events[1].delta in (
        (Delete(1), Insert("J"), Retain(4), Insert(" 😀")),
        (Insert("J"), Delete(1), Retain(4), Insert(" 😀")),
    )


def test_remote_events_are_not_local_and_match_the_change() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta, tb = CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")
    ta.insert(0, "hello")
    exchange(a, b)
    rec = Recorder(tb)
    with a.transaction(origin="remote origin stays home"):
        ta.delete(1, 3)
        ta.insert(1, "ipp")
    tb.insert(0, ">")  # concurrent local edit shifts the remote delta
    b.import_changes(a.export_changes(b.version_vector))
    assert [e.local for e in rec.events] == [True, False]
    assert rec.events[1].origin is None
    assert tb.value == ">hippo"


def test_one_event_per_handler_per_transaction() -> None:
    doc = CRDTDocument()
    text, lst = CRDTTextHandler(doc, "t"), CRDTListHandler(doc, "l")
    t_rec, l_rec = Recorder(text), Recorder(lst)
    with doc.transaction():
        text.insert(0, "a")
        lst.append(1)
        text.insert(1, "b")
        lst.append(2)
    assert len(t_rec.events) == 1 and len(l_rec.events) == 1


def test_list_update_and_move_deltas() -> None:
    doc = CRDTDocument()
    lst = CRDTListHandler(doc, "l")
    lst.extend(["a", "b", "c"])
    rec = Recorder(lst)
    lst.update(1, "B")
    assert rec.events[-1].delta in (
        (Retain(1), Delete(1), Insert(["B"])),
        (Retain(1), Insert(["B"]), Delete(1)),
    )
    lst.move(0, 2)
    assert lst.value == ["B", "c", "a"]
    assert apply_delta(["a", "B", "c"], rec.events[-1].delta) == ["B", "c", "a"]


def test_map_events_name_the_changed_keys() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ma, mb = CRDTMapHandler(a, "m"), CRDTMapHandler(b, "m")
    seen: list[MapEvent] = []
    mb.observe(seen.append)
    with a.transaction(origin="x"):
        ma.set("k", 1)
        ma.set("🔑", [1])
    ma.delete("k")
    b.import_changes(a.export_changes())
    assert seen[-1].keys_changed == frozenset({"k", "🔑"}) and not seen[-1].local
    local: list[MapEvent] = []
    ma.observe(local.append)
    with a.transaction(origin="o"):
        ma.set("z", None)
    assert local == [MapEvent(frozenset({"z"}), "o", True)]


def test_unobserve_stops_events() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    seen: list[TextEvent] = []
    sub = text.observe(seen.append)
    text.insert(0, "a")
    text.unobserve(sub)
    text.insert(0, "b")
    assert len(seen) == 1


edits = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 50),
        st.integers(0, 50),
        st.sampled_from(["x", "é😀", "\U0001d538b"]),
    ),
    min_size=1,
    max_size=12,
)


# The explicit example is core bug 2's shrunk counterexample (fixed in cb33089).
@given(steps=st.lists(st.tuples(st.booleans(), edits), min_size=1, max_size=6))
@example(
    steps=[
        (False, [(0, 0, 0, "x")]),
        (False, [(0, 1, 0, "x"), (0, 0, 0, "x"), (0, 0, 0, "x"), (1, 0, 3, "x")]),
    ]
)
def test_deltas_rebuild_values_for_local_and_remote_multi_op_transactions(
    steps: list[tuple[bool, list[tuple[int, int, int, str]]]],
) -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    docs = {True: a, False: b}
    texts = {d: CRDTTextHandler(d, "t") for d in (a, b)}
    lists = {d: CRDTListHandler(d, "l") for d in (a, b)}
    recorders = [Recorder(t) for t in texts.values()] + [Recorder(li) for li in lists.values()]
    for on_a, ops in steps:
        doc = docs[on_a]
        text, lst = texts[doc], lists[doc]
        with doc.transaction(origin=on_a):
            for kind, i, j, s in ops:
                if kind == 0:
                    text.insert(i % (len(text) + 1), s)
                elif kind == 1 and len(text):
                    k = i % len(text)
                    text.delete(k, 1 + j % (len(text) - k))
                elif kind == 2:
                    lst.insert(i % (len(lst) + 1), s)
                elif kind == 3 and len(lst):
                    if j % 3 == 0:
                        lst.delete(i % len(lst))
                    elif j % 3 == 1:
                        lst.move(i % len(lst), j % len(lst))
                    else:
                        lst.update(i % len(lst), j)
        exchange(a, b)
    for rec in recorders:
        assert rec.before == rec.handler.value
    assert texts[a].value == texts[b].value and lists[a].value == lists[b].value


def test_snapshot_merge_reports_text_changes() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta, tb = CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")
    ta.insert(0, "hello")
    exchange(a, b)
    ta.delete(0, 1)
    ta.insert(4, "!")
    tb.insert(5, "?")
    rec = Recorder(tb)
    assert b.import_snapshot(Snapshot.from_bytes(a.take_snapshot().to_bytes()))
    assert rec.events and not rec.events[-1].local
    assert tb.value == "ello!?"


def test_snapshot_merge_reports_list_updates() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    la, lb = CRDTListHandler(a, "l"), CRDTListHandler(b, "l")
    la.extend(["x", "y"])
    exchange(a, b)
    la.update(0, "X")
    rec = Recorder(lb)
    b.import_snapshot(Snapshot.from_bytes(a.take_snapshot().to_bytes()))
    assert lb.value == ["X", "y"]
    assert rec.events, "the update reached the value but no event reported it"


def test_snapshot_merge_reports_list_moves_and_deletes() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    la, lb = CRDTListHandler(a, "l"), CRDTListHandler(b, "l")
    la.extend(["p", "q", "r"])
    exchange(a, b)
    la.move(0, 2)
    la.delete(0)
    rec = Recorder(lb)
    b.import_snapshot(Snapshot.from_bytes(a.take_snapshot().to_bytes()))
    assert lb.value == ["r", "p"]
    assert rec.before == ["r", "p"]


class _FlatDeltaBuilder:
    """The delta builder as one list of ops, walked from its start at every splice
    (crdt_sync/events.py before its ops were cut into blocks): the reference the
    blocks must give the same delta as."""

    def __init__(self) -> None:
        self.ops: list[list[Any]] = []

    def splice(self, pos: int, delete: int, content: Any) -> None:
        ops = self.ops
        k = 0
        cur = 0
        while cur < pos:
            if k == len(ops):
                ops.append(["r", pos - cur])
                k += 1
                break
            kind, v = ops[k]
            w = v if kind == "r" else (len(v) if kind == "i" else 0)
            if cur + w <= pos:
                cur += w
                k += 1
                continue
            off = pos - cur
            if kind == "r":
                ops[k : k + 1] = [["r", off], ["r", v - off]]
            else:
                ops[k : k + 1] = [["i", v[:off]], ["i", v[off:]]]
            k += 1
            break
        j = k
        rem = delete
        while rem > 0:
            if j == len(ops):
                ops.append(["d", rem])
                break
            kind, v = ops[j]
            if kind == "d":
                j += 1
                continue
            w = v if kind == "r" else len(v)
            take = w if w < rem else rem
            if kind == "r":
                if take < w:
                    ops[j : j + 1] = [["d", take], ["r", w - take]]
                else:
                    ops[j] = ["d", take]
                j += 1
            elif take < w:
                ops[j] = ["i", v[take:]]
            else:
                del ops[j]
            rem -= take
        if len(content):
            ops.insert(k, ["i", content])

    def delta(self) -> tuple[Any, ...]:
        built = DeltaBuilder()
        built._blocks = [self.ops]
        built._widths = [0]
        return built.delta()


@given(st.integers(0, 2**32 - 1), st.booleans())
@example(0, True)
@example(1, False)
def test_the_delta_builder_in_blocks_composes_splices_as_one_list_does(
    seed: int, text: bool
) -> None:
    """Hundreds of splices (inserts, deletes, both, at the ends, past the end,
    deleting across many ops and blocks) into a builder whose ops outgrow one
    block: the same delta as the single list, after every few splices, and that
    delta turns the value before into the value after."""
    rng = random.Random(seed)
    before: Any = "".join(rng.choice("abcdef") for _ in range(rng.randrange(0, 300)))
    if not text:
        before = list(before)
    value = before[:]
    built = DeltaBuilder()
    flat = _FlatDeltaBuilder()
    past = False
    for step in range(rng.choice((300, 700))):
        n = len(value)
        pos = rng.randrange(0, n + 1)
        shape = rng.random()
        if shape < 0.01:
            pos = n + rng.randrange(1, 4)  # past the end (a retain appended)
            past = True
        delete = 0
        if shape > 0.55:
            delete = rng.randrange(1, 4) if shape < 0.9 else rng.randrange(1, 80)
        content: Any = "".join(rng.choice("XYZ") for _ in range(rng.choice((0, 1, 1, 2, 5))))
        if not text:
            content = list(content)
        if pos > n:
            delete = 0
        built.splice(pos, delete, content)
        flat.splice(pos, delete, content)
        value = value[:pos] + content + value[pos + delete :]
        if step % 17 == 0:
            assert built.delta() == flat.delta()
    assert len(built._blocks) > 1
    assert built.delta() == flat.delta()
    assert bool(built) == bool(flat.ops)
    if not past:
        assert apply_delta(before, built.delta()) == value
