"""Sticky indexes: positions that follow the text around them as others edit."""

from __future__ import annotations

import json

import pytest
from network import exchange

from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId, StickyIndex


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def setup() -> tuple[CRDTDocument, CRDTDocument, CRDTTextHandler, CRDTTextHandler]:
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    ta, tb = CRDTTextHandler(a, "t"), CRDTTextHandler(b, "t")
    ta.insert(0, "h😀llo world")
    exchange(a, b)
    return a, b, ta, tb


def test_a_cursor_follows_remote_inserts_and_deletes_before_it() -> None:
    a, b, ta, tb = setup()
    cursor = ta.sticky_index(6)  # before "w"
    tb.insert(0, "¡¡")
    tb.delete(3, 2)
    exchange(a, b)
    assert ta.value == "¡¡hlo world"
    assert ta.resolve(cursor) == ta.value.index("w")


def test_assoc_picks_the_side_of_a_concurrent_insert_at_the_cursor() -> None:
    a, b, ta, tb = setup()
    before_w = ta.sticky_index(6, assoc=0)
    after_space = ta.sticky_index(6, assoc=-1)
    tb.insert(6, "new ")
    exchange(a, b)
    assert ta.value == "h😀llo new world"
    assert ta.resolve(before_w) == 10
    assert ta.resolve(after_space) == 6


def test_a_deleted_anchor_resolves_to_where_it_was() -> None:
    a, b, ta, tb = setup()
    cursor = ta.sticky_index(2)  # before the first "l"
    tb.delete(1, 4)
    exchange(a, b)
    assert ta.value == "h world"
    assert ta.resolve(cursor) == 1


def test_start_and_end_positions() -> None:
    a, b, ta, tb = setup()
    start = ta.sticky_index(0, assoc=-1)
    end = ta.sticky_index(len(ta))
    tb.insert(0, ">")
    tb.insert(len(tb), "<")
    exchange(a, b)
    assert ta.resolve(start) == 0
    assert ta.resolve(end) == len(ta)


def test_sticky_indexes_cross_replicas_as_json() -> None:
    _, _, ta, tb = setup()
    sticky = ta.sticky_index(3, assoc=-1)
    wire = json.loads(json.dumps(sticky.to_json()))
    again = StickyIndex.from_json(wire)
    assert again == sticky
    assert tb.resolve(again) == ta.resolve(sticky) == 3


def test_an_anchor_this_replica_never_saw_resolves_to_none() -> None:
    _, _, ta, tb = setup()
    ta.insert(0, "new")
    assert tb.resolve(ta.sticky_index(1)) is None


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"item": "x"},
        {"item": ["p"]},
        {"item": ["p", -1]},
        {"item": ["p", True]},
        {"item": [1, 2]},
        {"item": None, "assoc": "0"},
        {"item": None, "assoc": False},
    ],
)
def test_from_json_rejects_anything_else(bad: object) -> None:
    with pytest.raises(ValueError):
        StickyIndex.from_json(bad)
