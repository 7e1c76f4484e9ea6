"""Handlers: argument checking, the container protocols, and concurrent list semantics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from network import exchange, fingerprint

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    HandlerError,
    PeerId,
)


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def pair() -> tuple[CRDTDocument, CRDTDocument]:
    return CRDTDocument(peer(1)), CRDTDocument(peer(2))


# ------------------------------------------------------------ bad arguments


def filled() -> tuple[CRDTDocument, CRDTTextHandler, CRDTListHandler, CRDTMapHandler]:
    doc = CRDTDocument()
    text, lst, meta = CRDTTextHandler(doc, "t"), CRDTListHandler(doc, "l"), CRDTMapHandler(doc, "m")
    text.insert(0, "h😀llo")
    lst.insert(0, "a")
    lst.insert(1, {"b": [1, 2.5, None, True]})
    meta.set("k", "v")
    return doc, text, lst, meta


Bad = tuple[
    str, type[Exception], Callable[[CRDTTextHandler, CRDTListHandler, CRDTMapHandler], object]
]

BAD_CALLS: list[Bad] = [
    ("text insert before 0", IndexError, lambda t, ls, m: t.insert(-1, "x")),
    ("text insert past end", IndexError, lambda t, ls, m: t.insert(6, "x")),
    ("text insert float index", TypeError, lambda t, ls, m: t.insert(1.0, "x")),  # type: ignore[arg-type]
    ("text insert bool index", TypeError, lambda t, ls, m: t.insert(True, "x")),
    ("text insert bytes", TypeError, lambda t, ls, m: t.insert(0, b"x")),  # type: ignore[arg-type]
    ("text insert None", TypeError, lambda t, ls, m: t.insert(0, None)),  # type: ignore[arg-type]
    ("text delete negative count", ValueError, lambda t, ls, m: t.delete(0, -1)),
    ("text delete past end", IndexError, lambda t, ls, m: t.delete(3, 4)),
    ("text delete start past end", IndexError, lambda t, ls, m: t.delete(7, 0)),
    ("text delete negative start", IndexError, lambda t, ls, m: t.delete(-1, 1)),
    ("text delete str count", TypeError, lambda t, ls, m: t.delete(0, "1")),  # type: ignore[arg-type]
    ("text sticky past end", IndexError, lambda t, ls, m: t.sticky_index(7)),
    ("list insert past end", IndexError, lambda t, ls, m: ls.insert(3, 1)),
    ("list insert before 0", IndexError, lambda t, ls, m: ls.insert(-1, 1)),
    ("list insert object", TypeError, lambda t, ls, m: ls.insert(0, object())),
    ("list insert set", TypeError, lambda t, ls, m: ls.insert(0, {1, 2})),
    ("list insert bytes", TypeError, lambda t, ls, m: ls.insert(0, b"x")),
    ("list insert nan", ValueError, lambda t, ls, m: ls.insert(0, math.nan)),
    ("list insert inf", ValueError, lambda t, ls, m: ls.insert(0, [math.inf])),
    ("list insert int dict key", TypeError, lambda t, ls, m: ls.insert(0, {1: "x"})),
    ("list append nested object", TypeError, lambda t, ls, m: ls.append([{"a": object()}])),
    ("list delete negative count", ValueError, lambda t, ls, m: ls.delete(0, -1)),
    ("list delete past end", IndexError, lambda t, ls, m: ls.delete(1, 2)),
    ("list delete index past end", IndexError, lambda t, ls, m: ls.delete(3)),
    ("list update past end", IndexError, lambda t, ls, m: ls.update(2, 1)),
    ("list update at len 0 slot", IndexError, lambda t, ls, m: ls.update(-1, 1)),
    ("list update non-JSON", TypeError, lambda t, ls, m: ls.update(0, object())),
    ("list move from past end", IndexError, lambda t, ls, m: ls.move(2, 0)),
    ("list move to past end", IndexError, lambda t, ls, m: ls.move(0, 2)),
    ("list move negative", IndexError, lambda t, ls, m: ls.move(-1, 0)),
    ("list getitem past end", IndexError, lambda t, ls, m: ls[2]),
    ("list getitem str", TypeError, lambda t, ls, m: ls["0"]),  # type: ignore[call-overload]
    ("map set int key", TypeError, lambda t, ls, m: m.set(1, "x")),  # type: ignore[arg-type]
    ("map set non-JSON", TypeError, lambda t, ls, m: m.set("k", object())),
    ("map set nan", ValueError, lambda t, ls, m: m.set("k", math.nan)),
    ("map delete missing", KeyError, lambda t, ls, m: m.delete("nope")),
    ("map getitem missing", KeyError, lambda t, ls, m: m["nope"]),
]


@pytest.mark.parametrize(("case", "error", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_invalid_arguments_raise_and_change_nothing(
    case: str, error: type[Exception], call: Callable[..., object]
) -> None:
    doc, text, lst, meta = filled()
    before = fingerprint(doc)
    changes: list[Change] = []
    doc.on_change(changes.append)
    with pytest.raises(error):
        call(text, lst, meta)
    assert fingerprint(doc) == before, case
    assert changes == []
    doc.check_invariants()
    # The document still works and its counters were not consumed.
    next_counter = doc.version_vector.get(str(doc.peer_id), 0)
    text.insert(0, "!")
    assert changes[-1].counter == next_counter


def test_invalid_argument_inside_a_transaction_keeps_earlier_edits_of_it() -> None:
    doc, text, lst, _ = filled()
    changes: list[Change] = []
    doc.on_change(changes.append)
    with pytest.raises(IndexError), doc.transaction():
        text.insert(0, "A")
        lst.insert(99, "never")
    assert text.value.startswith("A")
    assert "never" not in lst.value
    assert len(changes) == 1
    remote = CRDTDocument()
    remote.import_changes(doc.export_changes())
    assert remote.get_value("t") == text.value
    assert "never" not in remote.get_value("l")


def test_empty_edits_create_no_change() -> None:
    doc, text, lst, _ = filled()
    changes: list[Change] = []
    doc.on_change(changes.append)
    text.insert(2, "")
    text.delete(2, 0)
    lst.delete(1, 0)
    lst.move(1, 1)
    with doc.transaction():
        pass
    assert changes == []


# ---------------------------------------------------------------- protocols


def test_text_protocol() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "héllo")
    assert str(text) == text.value == "héllo"
    assert len(text) == 5
    assert text.name == "t" and text.doc is doc


def test_list_protocol() -> None:
    doc = CRDTDocument()
    lst = CRDTListHandler(doc, "l")
    lst.append(1)
    lst.extend([2, 3])
    lst.insert(0, 0)
    lst.insert_many(4, ["a", "b"])
    assert lst.value == [0, 1, 2, 3, "a", "b"]
    assert lst[0] == 0 and lst[-1] == "b" and lst[1:3] == [1, 2]
    assert list(lst) == lst.value and len(lst) == 6
    del lst[-1]
    assert lst.value == [0, 1, 2, 3, "a"]
    lst.update(4, {"x": ["y"]})
    assert lst[4] == {"x": ["y"]}


def test_map_protocol() -> None:
    doc = CRDTDocument()
    meta = CRDTMapHandler(doc, "m")
    meta["a"] = 1
    meta.set("ключ", "значение")
    assert meta["a"] == 1 and meta.get("ключ") == "значение"
    assert meta.get("missing") is None and meta.get("missing", 5) == 5
    assert "a" in meta and "b" not in meta and 3 not in meta
    assert len(meta) == 2 and set(meta) == {"a", "ключ"}
    assert sorted(meta.keys()) == ["a", "ключ"]
    assert dict(meta.items()) == meta.value == {"a": 1, "ключ": "значение"}
    del meta["a"]
    assert meta.value == {"ключ": "значение"}
    meta.set("n", None)
    assert "n" in meta and meta["n"] is None


def test_registering_the_same_handler_again_is_a_no_op() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    doc.register_handler(text)
    assert doc.handlers == {("t", "text"): text}


def test_a_taken_name_and_kind_raises_and_another_kind_is_another_object() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t")
    with pytest.raises(HandlerError):
        CRDTTextHandler(doc, "t")
    other = CRDTDocument()
    CRDTListHandler(other, "x").append(1)
    server = CRDTDocument()
    server.import_changes(other.export_changes())
    # The kind is part of the identity: a text "x" is not the list "x".
    text = CRDTTextHandler(server, "x")
    assert text.value == "" and server.get_value("x", "list") == [1]
    CRDTListHandler(server, "x").append(2)
    with pytest.raises(HandlerError):
        CRDTListHandler(server, "x")
    assert server.get_value("x", "list") == [1, 2] and text.value == ""


def test_bad_handler_names_and_documents_raise() -> None:
    with pytest.raises(ValueError):
        CRDTTextHandler(CRDTDocument(), "")
    with pytest.raises(TypeError):
        CRDTTextHandler(object(), "t")  # type: ignore[arg-type]


def test_a_handler_created_later_binds_to_state_applied_without_one() -> None:
    a = CRDTDocument()
    CRDTTextHandler(a, "t").insert(0, "héllo")
    CRDTListHandler(a, "l").append([1])
    CRDTMapHandler(a, "m").set("k", "v")
    server = CRDTDocument()
    server.import_changes(a.export_changes())
    assert server.state_names == {"t": ("text",), "l": ("list",), "m": ("map",)}
    assert server.get_value("t") == "héllo"
    later = CRDTTextHandler(server, "t")
    assert later.value == "héllo"
    later.insert(5, "!")
    a.import_changes(server.export_changes(a.version_vector))
    assert a.get_value("t") == "héllo!"
    assert CRDTListHandler(server, "l").value == [[1]]
    assert CRDTMapHandler(server, "m").value == {"k": "v"}


# ------------------------------------------------------ concurrent list edits


def lists() -> tuple[CRDTDocument, CRDTDocument, CRDTListHandler, CRDTListHandler]:
    a_doc, b_doc = pair()
    a, b = CRDTListHandler(a_doc, "l"), CRDTListHandler(b_doc, "l")
    a.extend(["p", "q", "r", "s", "t"])
    exchange(a_doc, b_doc)
    return a_doc, b_doc, a, b


@pytest.mark.parametrize(("a_to", "b_to"), [(0, 4), (4, 0), (2, 3), (3, 3), (1, 0)])
def test_concurrent_moves_of_one_item_keep_exactly_one_copy(a_to: int, b_to: int) -> None:
    a_doc, b_doc, a, b = lists()
    a.move(1, a_to)
    b.move(1, b_to)
    a_local, b_local = a.value, b.value
    exchange(a_doc, b_doc)
    assert a.value == b.value
    assert sorted(a.value) == ["p", "q", "r", "s", "t"]
    assert a.value in (a_local, b_local), "one of the two moves wins"
    a_doc.check_invariants()
    b_doc.check_invariants()


@given(
    n=st.integers(1, 6),
    moves=st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 50)), max_size=8),
)
def test_concurrent_moves_never_duplicate_or_lose_items(
    n: int, moves: list[tuple[bool, int, int]]
) -> None:
    a_doc, b_doc = pair()
    a, b = CRDTListHandler(a_doc, "l"), CRDTListHandler(b_doc, "l")
    a.extend(list(range(n)))
    exchange(a_doc, b_doc)
    for on_a, src, dst in moves:
        target = a if on_a else b
        target.move(src % n, dst % n)
    exchange(a_doc, b_doc)
    assert a.value == b.value
    assert sorted(a.value) == list(range(n))


def test_update_survives_a_concurrent_delete() -> None:
    a_doc, b_doc, a, b = lists()
    a.update(2, "R!")
    b.delete(2)
    exchange(a_doc, b_doc)
    assert a.value == b.value
    assert "R!" in a.value, "the concurrent update is not lost silently"
    assert a.value.count("R!") == 1 and "r" not in a.value


def test_update_survives_a_concurrent_move() -> None:
    a_doc, b_doc, a, b = lists()
    a.update(1, "Q!")
    b.move(1, 4)
    exchange(a_doc, b_doc)
    assert a.value == b.value == ["p", "r", "s", "t", "Q!"]


def test_move_of_a_concurrently_deleted_item_does_not_resurrect_or_duplicate_it() -> None:
    a_doc, b_doc, a, b = lists()
    a.move(0, 3)
    b.delete(0)
    exchange(a_doc, b_doc)
    assert a.value == b.value == ["q", "r", "s", "t"]


def test_concurrent_deletes_of_one_item_delete_only_it() -> None:
    a_doc, b_doc, a, b = lists()
    a.delete(1, 2)
    b.delete(2, 2)
    exchange(a_doc, b_doc)
    assert a.value == b.value == ["p", "t"]


def test_later_update_wins_over_an_earlier_concurrent_one_on_both_peers() -> None:
    a_doc, b_doc, a, b = lists()
    a.update(0, "A")
    b.update(0, "B")
    exchange(a_doc, b_doc)
    assert a.value == b.value
    assert a.value[0] in ("A", "B")


def test_concurrent_map_writes_converge_to_one_value() -> None:
    a_doc, b_doc = pair()
    a, b = CRDTMapHandler(a_doc, "m"), CRDTMapHandler(b_doc, "m")
    for i, (x, y) in enumerate(itertools.product(["set", "del"], repeat=2)):
        key = f"k{i}"
        a.set(key, "base")
        exchange(a_doc, b_doc)
        if x == "set":
            a.set(key, "a")
        else:
            a.delete(key)
        if y == "set":
            b.set(key, "b")
        else:
            b.delete(key)
    exchange(a_doc, b_doc)
    assert a.value == b.value


def test_list_values_are_copied_not_aliased() -> None:
    doc = CRDTDocument()
    lst = CRDTListHandler(doc, "l")
    item: dict[str, Any] = {"x": [1]}
    lst.append(item)
    remote = CRDTDocument()
    remote.import_changes(doc.export_changes())
    assert CRDTListHandler(remote, "l").value == [{"x": [1]}]
