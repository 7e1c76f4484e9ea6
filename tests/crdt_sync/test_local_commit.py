"""Committing local transactions: the deps of a local change, and the transaction object."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync import CRDTDocument, CRDTListHandler, CRDTTextHandler, PeerId, TextEvent
from crdt_sync.changes import (
    LIST_DELETE,
    LIST_INSERT,
    LIST_MOVE,
    LIST_SET,
    MAP_DELETE,
    MAP_SET,
    TEXT_DELETE,
    TEXT_INSERT,
)
from crdt_sync.transaction import deps_of

ME = "me"


def named_ids(op: tuple[Any, ...]) -> list[tuple[str, int] | None]:
    """The element ids an op names, as ``crdt_sync/changes.py`` documents its fields."""
    kind = op[0]
    if kind in (TEXT_INSERT, LIST_INSERT):
        return [op[2], op[3]]
    if kind == TEXT_DELETE:
        return [(p, c + n - 1) for p, c, n in op[2]]  # the last element of each range
    if kind == LIST_DELETE:
        return [(p, c) for p, c, _ in op[2]]
    if kind == LIST_MOVE:
        return [op[2], op[3], op[4]]
    if kind == LIST_SET:
        return [op[2]]
    return []


def expected_deps(first: int, ops: list[tuple[Any, ...]]) -> tuple[tuple[str, int], ...]:
    newest: dict[str, int] = {}
    for op in ops:
        for ident in named_ids(op):
            if ident is not None and ident[0] != ME:
                newest[ident[0]] = max(newest.get(ident[0], -1), ident[1])
    own = [(ME, first - 1)] if first else []
    return tuple(own + list(newest.items()))


ids = st.one_of(st.none(), st.tuples(st.sampled_from([ME, "a", "b", "c"]), st.integers(0, 50)))
ranges = st.lists(
    st.tuples(st.sampled_from([ME, "a", "b"]), st.integers(0, 50), st.integers(1, 5)),
    min_size=1,
    max_size=3,
)
ops = st.one_of(
    st.tuples(st.just(TEXT_INSERT), st.just("t"), ids, ids, st.just("x")),
    st.tuples(st.just(LIST_INSERT), st.just("l"), ids, ids, st.just((1,))),
    st.tuples(st.just(TEXT_DELETE), st.just("t"), ranges.map(tuple)),
    st.tuples(
        st.just(LIST_DELETE),
        st.just("l"),
        ranges.map(lambda rs: tuple((p, c, (1, p, c)) for p, c, _ in rs)),
    ),
    st.tuples(st.just(LIST_MOVE), st.just("l"), ids.filter(bool), ids, ids),
    st.tuples(st.just(LIST_SET), st.just("l"), ids.filter(bool), st.just(3)),
    st.tuples(st.just(MAP_SET), st.just("m"), st.just("k"), st.just(1)),
    st.tuples(st.just(MAP_DELETE), st.just("m"), st.just("k")),
)


@settings(max_examples=300)  # deps_of is cheap; the op shapes are many
@given(first=st.integers(0, 3), ops=st.lists(ops, max_size=6))
def test_deps_are_the_previous_own_op_and_the_newest_named_op_of_each_other_peer(
    first: int, ops: list[tuple[Any, ...]]
) -> None:
    assert deps_of(ME, first, ops) == expected_deps(first, ops)


OTHER = ("a", 9)
MINE = (ME, 4)


@pytest.mark.parametrize(
    "op",
    [
        (TEXT_INSERT, "t", OTHER, MINE, "x"),
        (TEXT_INSERT, "t", MINE, OTHER, "x"),
        (TEXT_INSERT, "t", None, OTHER, "x"),
        (LIST_INSERT, "l", OTHER, None, (1,)),
        (LIST_INSERT, "l", MINE, OTHER, (1,)),
        (TEXT_DELETE, "t", ((ME, 0, 3), ("a", 7, 3))),
        (LIST_DELETE, "l", ((ME, 1, (1, ME, 1)), ("a", 9, (2, "a", 9)))),
        (LIST_MOVE, "l", OTHER, MINE, None),
        (LIST_MOVE, "l", MINE, OTHER, MINE),
        (LIST_MOVE, "l", MINE, None, OTHER),
        (LIST_SET, "l", OTHER, 5),
    ],
)
def test_each_id_an_op_names_is_a_dep(op: tuple[Any, ...]) -> None:
    assert deps_of(ME, 5, [op]) == ((ME, 4), OTHER)
    assert deps_of(ME, 0, [(MAP_SET, "m", "k", 1), op, (MAP_DELETE, "m", "k")]) == (OTHER,)


def test_one_object_serves_every_plain_transaction_and_blocks_nest() -> None:
    doc = CRDTDocument(PeerId.parse("00000000-0000-4000-8000-000000000001"))
    text = CRDTTextHandler(doc, "t")
    events: list[TextEvent] = []
    text.observe(events.append)
    assert doc.transaction() is doc.transaction()
    with doc.transaction() as inner_doc:
        assert inner_doc is doc and doc.in_transaction
        text.insert(0, "ab")
        with doc.transaction("nested origin"):
            text.insert(2, "c")
        assert doc.in_transaction and not events
    assert not doc.in_transaction
    assert len(doc.export_changes()) == 1 and len(events) == 1
    assert events[0].origin is None
    marker = object()
    with doc.transaction(marker) as same:
        assert same is doc
        text.delete(0, 1)
    assert events[-1].origin is marker
    assert [c.counter for c in doc.export_changes()] == [0, 3]
    assert text.value == "bc"


def test_a_block_that_raises_still_commits_its_edits() -> None:
    doc = CRDTDocument()
    text, lst = CRDTTextHandler(doc, "t"), CRDTListHandler(doc, "l")
    try:
        with doc.transaction():
            text.insert(0, "x")
            lst.insert(0, 1)
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert not doc.in_transaction
    (change,) = doc.export_changes()
    assert change.size == 2 and text.value == "x" and lst.value == [1]
