"""Merging snapshots: the plan of a sequence merge, its order, and refusals.

A merge plans each sequence first (which incoming elements are new, which
known ones it deletes) and integrates the new pieces in an order where every
piece's origins exist before it. The plan is checked here against the plain
way (pass after pass over the pieces left, placing each whose origins exist):
the same pieces, each placed after its origins; and merges by snapshot
against merges by changes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from network import document_values, roundtrip_snapshot

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTTextHandler,
    DecodeError,
    PeerId,
    Snapshot,
    apply_delta,
)
from crdt_sync.sequence import C, D, N, Sequence
from crdt_sync.snapshot import _integration_order, _plan_sequence, merge_introduces
from crdt_sync.snapshot_codec import SnapshotCapture, _decode


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def reference_plan(seq: Sequence, spans: list[list[Any]], is_list: bool) -> tuple[list, list]:
    """``(deletions, pieces)`` the plain way: one existence check per piece and
    pass (the pieces in the order of the passes: any order that places each
    piece after its origins merges the same)."""
    deletions: list[tuple[str, int, int]] = []
    todo: list[tuple[Any, ...]] = []
    for sp in spans:
        p, ctr, n, content, deleted, left, right = sp[:7]
        k = 0
        while k < n:
            found = seq.find(p, ctr + k)
            if found is not None:
                take = min(found[C] + found[N] - (ctr + k), n - k)
                if deleted and not is_list and not found[D]:
                    deletions.append((p, ctr + k, take))
                k += take
                continue
            j = k + 1
            while j < n and seq.find(p, ctr + j) is None:
                j += 1
            piece = content[k:j] if (not deleted or is_list) else range(j - k)
            todo.append((p, ctr + k, piece, left if k == 0 else (p, ctr + k - 1), right, deleted))
            k = j
    placed: set[tuple[str, int]] = set()

    def exists(ident: Any) -> bool:
        return ident is None or ident in placed or seq.contains(*ident)

    pieces = []
    while todo:
        rest = []
        for piece in todo:
            if exists(piece[3]) and exists(piece[4]):
                pieces.append(piece)
                placed.update((piece[0], piece[1] + i) for i in range(len(piece[2])))
            else:
                rest.append(piece)
        if len(rest) == len(todo):
            raise DecodeError("stuck")
        todo = rest
    return deletions, pieces


def assert_placeable(seq: Sequence, pieces: list[tuple[Any, ...]]) -> None:
    """Every origin of each piece is in ``seq`` or in a piece before it."""
    placed: set[tuple[str, int]] = set()
    for piece in pieces:
        for origin in piece[3:5]:
            assert origin is None or origin in placed or seq.contains(*origin), (piece, origin)
        placed.update((piece[0], piece[1] + i) for i in range(len(piece[2])))


def check_plans(into: CRDTDocument, snap: Snapshot) -> int:
    """Compare the plan of every sequence ``snap`` merges into ``into`` with the
    reference; returns how many pieces the plans hold."""
    decoded = _decode(snap.to_bytes())
    total = 0
    for key, value in decoded.states.items():
        state = into._states.get(key)
        if key[1] == "map" or state is None or not state.seq.span_count():  # type: ignore[union-attr]
            continue
        seq = state.seq  # type: ignore[union-attr]
        spans = value.spans() if key[1] == "text" else value[0]
        plan = _plan_sequence(seq, spans, key[1] == "list")
        deletions, pieces = reference_plan(seq, spans, key[1] == "list")
        assert plan.deletions == deletions
        assert Counter(plan.pieces) == Counter(pieces)
        assert_placeable(seq, plan.pieces)
        total += len(pieces)
    return total


def text_of(doc: CRDTDocument) -> CRDTTextHandler:
    handler = doc.handlers.get(("t", "text"))
    return handler if isinstance(handler, CRDTTextHandler) else CRDTTextHandler(doc, "t")


def edit(doc: CRDTDocument, ops: list[tuple[int, int, int, str]]) -> None:
    handler = doc.handlers.get(("l", "list"))
    text = text_of(doc)
    lst = handler if isinstance(handler, CRDTListHandler) else CRDTListHandler(doc, "l")
    for kind, i, j, s in ops:
        if kind == 0:
            # Typing a run, a character at a time (one span, many changes).
            at = i % (len(text) + 1)
            for k, ch in enumerate(s):
                text.insert(at + k, ch)
        elif kind == 1 and len(text):
            k = i % len(text)
            text.delete(k, 1 + j % min(3, len(text) - k))
        elif kind == 2:
            lst.insert(i % (len(lst) + 1), s)
        elif kind == 3 and len(lst):
            lst.move(i % len(lst), j % len(lst))
        elif kind == 4 and len(lst):
            lst.delete(i % len(lst))
        else:
            text.insert(i % (len(text) + 1), s)


#: Runs typed a character at a time: a prefix of their changes ends inside a run.
runs = st.lists(
    st.tuples(st.just(0), st.integers(0, 1000), st.just(0), st.text("pqr", min_size=2, max_size=8)),
    min_size=1,
    max_size=4,
)

edits = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(0, 1000),
        st.integers(0, 1000),
        st.text("abcXYZ\u00e9\U0001f600", min_size=1, max_size=5),
    ),
    max_size=20,
)


def merge_observed(into: CRDTDocument, snap: Snapshot) -> None:
    """``into.import_snapshot(snap)``, checking the text and list deltas it reports."""
    handler = into.handlers.get(("l", "list"))
    handlers = [text_of(into), handler if handler is not None else CRDTListHandler(into, "l")]
    before = [h.value for h in handlers]
    deltas: list[list[Any]] = [[], []]
    subs = [
        h.observe(lambda e, out=out: out.append(e.delta))
        for h, out in zip(handlers, deltas, strict=True)
    ]
    into.import_snapshot(snap)
    for sub in subs:
        sub.cancel()
    for h, old, got in zip(handlers, before, deltas, strict=True):
        for delta in got:
            old = apply_delta(old, delta)
        assert old == h.value


def merge_by_changes(into: CRDTDocument, source: CRDTDocument) -> CRDTDocument:
    copy = CRDTDocument(peer(9))
    copy.import_changes(into.export_changes())
    copy.import_changes(source.export_changes(copy.version_vector))
    return copy


@given(base=edits, shared=runs, ops_a=edits, ops_b=edits, split=st.integers(0, 1000))
def test_replicas_sharing_history_merge_by_snapshot_as_by_changes(
    base: list[tuple[int, int, int, str]],
    shared: list[tuple[int, int, int, str]],
    ops_a: list[tuple[int, int, int, str]],
    ops_b: list[tuple[int, int, int, str]],
    split: int,
) -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    edit(a, base)
    b.import_changes(a.export_changes())
    # b gets part of a's later typing: a run is then partly known to b.
    edit(a, shared)
    later = a.export_changes(b.version_vector)
    b.import_changes(later[: split % (len(later) + 1)])
    edit(a, ops_a)
    edit(b, ops_b)
    expected = document_values(merge_by_changes(a, b))
    for into, source in ((a, b), (b, a)):
        snap = roundtrip_snapshot(source)
        check_plans(into, snap)
        merge_observed(into, snap)
        into.check_invariants()
        assert document_values(into) == expected


typing = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 1000), st.integers(1, 4)), max_size=40
)


@given(ops=typing)
def test_runs_typed_before_older_text_need_several_passes_and_keep_their_order(
    ops: list[tuple[int, int, int]],
) -> None:
    # Two halves typed apart (no history in common), with runs typed before
    # older text, so pieces wait for pieces after them in document order.
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    for doc, letters in ((a, "ab"), (b, "xy")):
        text = text_of(doc)
        for kind, at, n in ops:
            pos = 0 if kind == 0 else at % (len(text) + 1)
            text.insert(pos, letters[kind] * n)
    if not len(text_of(a)):
        return
    expected = document_values(merge_by_changes(a, b))
    for into, source in ((a, b), (b, a)):
        snap = roundtrip_snapshot(source)
        check_plans(into, snap)
        merge_observed(into, snap)
        assert document_values(into) == expected


def test_pieces_are_placed_depth_first_in_document_order() -> None:
    seq = Sequence("", keep_deleted_content=False)
    seq.integrate("s", 0, "ab", None, None)
    # X's right origin is Y, after it: Y is placed first, then X. Z's left
    # origin is X just before it, V's is X further back: each follows in
    # document order. W only needs the sequence.
    x = ("p", 0, "x", ("s", 0), ("p", 5), False)
    z = ("p", 7, "z", ("p", 0), ("s", 1), False)
    y = ("p", 5, "y", ("s", 0), ("s", 1), False)
    v = ("p", 8, "v", ("p", 0), ("s", 1), False)
    w = ("q", 0, "w", ("s", 1), None, False)
    assert _integration_order(seq, [x, z, y, v, w]) == [y, x, z, v, w]


def test_a_chain_of_pieces_waiting_for_later_ones_is_placed_from_its_end() -> None:
    seq = Sequence("", keep_deleted_content=False)
    seq.integrate("s", 0, "ab", None, None)
    # Each piece's right origin is the next one's first element: the last
    # is placed first (typing backwards, one piece per keystroke).
    pieces = [
        ("p", 9 - i, "x", ("s", 0), ("p", 10 - i) if i else ("s", 1), False) for i in range(10)
    ]
    pieces.reverse()
    order = _integration_order(seq, pieces)
    assert order == pieces[::-1]
    assert_placeable(seq, order)


def test_an_origin_inside_a_piece_makes_it_wait_for_that_piece() -> None:
    seq = Sequence("", keep_deleted_content=False)
    seq.integrate("s", 0, "ab", None, None)
    # U's origins are the middle and the last element of M, after it in
    # document order (neither is a piece's first element, nor the last one of
    # a piece before it): M is placed first.
    u = ("r", 5, "u", ("r", 1), ("r", 2), False)
    m = ("r", 0, "abc", ("s", 0), ("s", 1), False)
    w = ("q", 0, "w", ("s", 1), None, False)
    assert _integration_order(seq, [u, m, w]) == [m, u, w]


@pytest.mark.parametrize(
    "pieces",
    [
        # Each waits for the other.
        [("p", 0, "x", ("s", 0), ("p", 5), False), ("p", 5, "y", ("p", 0), ("s", 1), False)],
        # A piece whose right origin is inside itself.
        [("p", 0, "xyz", ("s", 0), ("p", 1), False)],
        # An origin no piece holds and the sequence lacks.
        [("p", 0, "x", ("s", 0), ("q", 3), False)],
        [("p", 0, "x", ("p", 9), None, False)],
    ],
)
def test_pieces_that_can_never_be_placed_are_refused(pieces: list[tuple[Any, ...]]) -> None:
    seq = Sequence("", keep_deleted_content=False)
    seq.integrate("s", 0, "ab", None, None)
    with pytest.raises(DecodeError, match="nowhere"):
        _integration_order(seq, pieces)


def forged_snapshot(source: CRDTDocument, forge: Any) -> Snapshot:
    capture = SnapshotCapture(source)
    name, kind, spans = capture._states[0]
    forged = [list(s) for s in spans]
    forge(forged)
    capture._states[0] = (name, kind, forged)
    return Snapshot.from_bytes(capture.encode().to_bytes())


def test_a_snapshot_whose_spans_wait_for_each_other_is_refused_untouched() -> None:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta = CRDTTextHandler(a, "t")
    ta.insert(0, "base")
    b.import_changes(a.export_changes())
    ta.insert(2, "abc")
    ta.insert(0, "XY")
    # New to b: XY and abc. XY's right origin is forged into abc, abc's left
    # origin into XY: neither can be placed first.
    a_id = str(peer(1))

    def forge(spans: list[list[Any]]) -> None:
        xy = next(s for s in spans if s[3] == "XY")
        abc = next(s for s in spans if s[3] == "abc")
        xy[6] = (a_id, abc[1] + 1)
        abc[5] = (a_id, xy[1])

    snap = forged_snapshot(a, forge)
    tb = CRDTTextHandler(b, "t")
    before = b.take_snapshot().to_bytes()
    with pytest.raises(DecodeError):
        merge_introduces(b, snap)
    with pytest.raises(DecodeError):
        b.import_snapshot(snap)
    assert b.take_snapshot().to_bytes() == before
    assert tb.value == "base"


@pytest.mark.slow
@settings(parent=settings.get_profile("slow"))
@given(base=edits, shared=runs, ops_a=edits, ops_b=edits, split=st.integers(0, 1000))
def test_replicas_sharing_history_merge_by_snapshot_as_by_changes_long(
    base: list[tuple[int, int, int, str]],
    shared: list[tuple[int, int, int, str]],
    ops_a: list[tuple[int, int, int, str]],
    ops_b: list[tuple[int, int, int, str]],
    split: int,
) -> None:
    test_replicas_sharing_history_merge_by_snapshot_as_by_changes.hypothesis.inner_test(  # type: ignore[attr-defined]
        base, shared, ops_a, ops_b, split
    )
