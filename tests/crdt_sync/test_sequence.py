"""The sequence CRDT: FugueMax ordering (no interleaving), run-length spans, code points.

Most tests drive the sequence through text and list handlers (its public face)
and compare with a plain Python ``str`` / ``list`` model; the run-length and
invariant checks look at the :class:`Sequence` behind a handler.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from network import exchange

from crdt_sync import CRDTDocument, CRDTListHandler, CRDTTextHandler, PeerId
from crdt_sync.sequence import SI, Sequence, SortedInts


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def texts(count: int) -> tuple[list[CRDTDocument], list[CRDTTextHandler]]:
    docs = [CRDTDocument(peer(i + 1)) for i in range(count)]
    return docs, [CRDTTextHandler(d, "t") for d in docs]


def seq_of(text: CRDTTextHandler | CRDTListHandler) -> Sequence:
    seq: Sequence = text._state.seq
    return seq


def type_forwards(text: CRDTTextHandler, index: int, word: str) -> None:
    """One keystroke (one transaction) per character, cursor moving right."""
    for i, ch in enumerate(word):
        text.insert(index + i, ch)


def type_backwards(text: CRDTTextHandler, index: int, word: str) -> None:
    """One keystroke per character, each typed at the same index (cursor moved left)."""
    for ch in reversed(word):
        text.insert(index, ch)


# ------------------------------------------------------------ non-interleaving


@pytest.mark.parametrize("base", ["", "xy", "0123456789"])
@pytest.mark.parametrize(
    "typing",
    [
        (type_forwards, type_forwards),
        (type_backwards, type_backwards),
        (type_forwards, type_backwards),
        (type_backwards, type_forwards),
    ],
    ids=["forwards", "backwards", "forwards-vs-backwards", "backwards-vs-forwards"],
)
def test_two_concurrent_runs_of_typing_never_interleave(base: str, typing: Any) -> None:
    docs, (a, b) = texts(2)
    a.insert(0, base)
    exchange(*docs)
    pos = len(base) // 2
    typing[0](a, pos, "hello")
    typing[1](b, pos, "WORLD")
    assert a.value == base[:pos] + "hello" + base[pos:]
    assert b.value == base[:pos] + "WORLD" + base[pos:]
    exchange(*docs)
    assert a.value == b.value
    assert a.value in (
        base[:pos] + "helloWORLD" + base[pos:],
        base[:pos] + "WORLDhello" + base[pos:],
    )
    for doc in docs:
        doc.check_invariants()


def test_concurrent_runs_stay_whole_when_typed_in_several_bursts() -> None:
    docs, (a, b) = texts(2)
    type_forwards(a, 0, "abc")
    type_backwards(b, 0, "XYZ")
    exchange(*docs)
    first = a.value
    # Both keep typing where they were, after seeing each other's text.
    type_forwards(a, a.value.index("c") + 1, "def")
    type_backwards(b, b.value.index("X"), "UVW")
    exchange(*docs)
    assert a.value == b.value
    assert "abcdef" in a.value and "UVWXYZ" in a.value
    assert len(a.value) == len(first) + 6


@given(
    base=st.text(alphabet="0123456789", max_size=6),
    runs=st.lists(
        st.tuples(st.integers(0, 100), st.booleans(), st.integers(1, 6)), min_size=2, max_size=4
    ),
)
def test_concurrent_runs_of_any_number_of_peers_never_interleave(
    base: str, runs: list[tuple[int, bool, int]]
) -> None:
    docs, handlers = texts(len(runs))
    handlers[0].insert(0, base)
    exchange(*docs)
    words = []
    for k, (where, backwards, length) in enumerate(runs):
        # Each peer's word uses letters nobody else uses.
        word = "".join(
            chr(0x3B1 + 8 * k + i) if k % 2 else chr(0x41 + 8 * k + i) for i in range(length)
        )
        words.append(word)
        index = where % (len(base) + 1)
        (type_backwards if backwards else type_forwards)(handlers[k], index, word)
    exchange(*docs)
    value = handlers[0].value
    assert all(h.value == value for h in handlers)
    rest = value
    for word in words:
        assert word in value, f"{word!r} interleaved in {value!r}"
        rest = rest.replace(word, "")
    assert rest == base
    for doc in docs:
        doc.check_invariants()


def test_concurrent_list_inserts_keep_each_run_together() -> None:
    a_doc, b_doc = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    a, b = CRDTListHandler(a_doc, "l"), CRDTListHandler(b_doc, "l")
    for i in range(3):
        a.insert(i, f"a{i}")
        b.insert(0, f"b{2 - i}")  # typed backwards
    exchange(a_doc, b_doc)
    assert a.value == b.value
    assert a.value in (["a0", "a1", "a2", "b0", "b1", "b2"], ["b0", "b1", "b2", "a0", "a1", "a2"])


# ----------------------------------------------------------- code points


ASTRAL = "😀👩\u200d💻\U0001d538e\u0301\U0001f1eb\U0001f1f7中"


def test_text_indexes_count_code_points_through_every_operation() -> None:
    docs, (a, b) = texts(2)
    a.insert(0, ASTRAL)
    assert len(a) == len(ASTRAL) == 10
    a.delete(1, 3)  # the ZWJ sequence, code point by code point
    assert a.value == ASTRAL[:1] + ASTRAL[4:]
    a.insert(2, "🎉")
    expected = ASTRAL[:1] + ASTRAL[4:5] + "🎉" + ASTRAL[5:]
    assert a.value == expected
    exchange(*docs)
    assert b.value == expected
    b.delete(4, 1)  # the combining acute accent alone
    assert b.value == expected[:4] + expected[5:]
    exchange(*docs)
    assert a.value == b.value
    for doc in docs:
        doc.check_invariants()


# -------------------------------------------------------------- model-based


text_ops = st.lists(
    st.tuples(
        st.booleans(),
        st.integers(0, 1000),
        st.integers(0, 1000),
        st.text(
            alphabet=["a", "b", "é", "\u0301", "😀", "\U0001d538", "\n"], min_size=1, max_size=8
        ),
    ),
    max_size=40,
)


@given(text_ops)
def test_text_matches_a_python_str_under_random_splices(
    ops: list[tuple[bool, int, int, str]],
) -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    model = ""
    for is_insert, a, b, chars in ops:
        if is_insert or not model:
            i = a % (len(model) + 1)
            text.insert(i, chars)
            model = model[:i] + chars + model[i:]
        else:
            i = a % len(model)
            n = 1 + b % (len(model) - i)
            text.delete(i, n)
            model = model[:i] + model[i + n :]
        assert text.value == model
        assert len(text) == len(model)
        doc.check_invariants()
    remote = CRDTDocument()
    remote_text = CRDTTextHandler(remote, "t")
    remote.import_changes(doc.export_changes())
    assert remote_text.value == model
    remote.check_invariants()


list_ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "move", "update"]),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
    max_size=40,
)


@given(list_ops)
def test_list_matches_a_python_list_under_random_edits(ops: list[tuple[str, int, int]]) -> None:
    doc = CRDTDocument()
    lst = CRDTListHandler(doc, "l")
    model: list[Any] = []
    for k, (kind, a, b) in enumerate(ops):
        if kind == "insert" or not model:
            i = a % (len(model) + 1)
            lst.insert(i, k)
            model.insert(i, k)
        elif kind == "delete":
            i = a % len(model)
            n = 1 + b % min(3, len(model) - i)
            lst.delete(i, n)
            del model[i : i + n]
        elif kind == "move":
            i, j = a % len(model), b % len(model)
            lst.move(i, j)
            model.insert(j, model.pop(i))
        else:
            i = a % len(model)
            lst.update(i, {"v": k})
            model[i] = {"v": k}
        assert lst.value == model
        assert len(lst) == len(model)
        doc.check_invariants()
    remote = CRDTDocument()
    remote_list = CRDTListHandler(remote, "l")
    remote.import_changes(doc.export_changes())
    assert remote_list.value == model
    remote.check_invariants()


# ----------------------------------------------------------- run-length spans


def test_typing_forwards_is_one_span_locally_and_remotely() -> None:
    docs, (a, b) = texts(2)
    for i in range(500):
        a.insert(i, "x")
    assert seq_of(a).span_count() == 1
    exchange(*docs)
    assert b.value == "x" * 500
    assert seq_of(b).span_count() == 1


def test_an_edit_inside_a_run_splits_it_once() -> None:
    docs, (a, b) = texts(2)
    a.insert(0, "abcdef")
    exchange(*docs)
    b.insert(3, "X")
    exchange(*docs)
    assert a.value == b.value == "abcXdef"
    assert seq_of(a).span_count() == 3
    a.delete(1, 1)
    assert seq_of(a).span_count() == 5  # a | b (tombstone) | c | X | def
    for doc in docs:
        doc.check_invariants()


def test_deleted_text_keeps_its_ids_for_later_inserts() -> None:
    docs, (a, b) = texts(2)
    a.insert(0, "abc")
    exchange(*docs)
    a.delete(0, 3)
    b.insert(2, "Z")  # concurrently, between b and c, both deleted on a
    exchange(*docs)
    assert a.value == b.value == "Z"


def test_concurrent_appends_delivered_one_by_one_grow_one_span_per_author() -> None:
    """Issue 9: a remote insert right after a concurrent one extends its author's
    span. Three authors append concurrently; an observer (a server) receives their
    keystrokes interleaved, one change at a time. It used to make one span and
    one scan per character."""
    docs, texts_ = texts(4)
    texts_[0].insert(0, "start:")
    exchange(*docs)
    sent: list[list[Any]] = [[], [], []]
    for k in range(3):
        docs[k].on_change(sent[k].append)
        for _ in range(300):
            texts_[k].insert(len(texts_[k]), "abc"[k])
    observer = docs[3]
    for i in range(300):
        for k in range(3):
            observer.import_changes([sent[k][i]])
    body = texts_[3].value.removeprefix("start:")
    assert sorted(body.split("a" * 300 + "b" * 300 + "c" * 300)) == ["", ""] or all(
        ch * 300 in body for ch in "abc"
    )
    assert seq_of(texts_[3]).span_count() == 4  # start: | a run | b run | c run
    exchange(*docs)
    assert len({t.value for t in texts_}) == 1
    for doc in docs:
        doc.check_invariants()


def test_remote_runs_find_their_slot_through_wrong_slot_hints() -> None:
    """A span's slot in its chunk is a hint checked by identity (``Sequence._span_index``)
    and each chunk knows its index: remote runs landing among many spans, in many
    chunks, with every hint made wrong first, still go to the right places."""
    docs, (a, b) = texts(2)
    for i in range(600):  # scattered typing: hundreds of spans, several chunks
        a.insert((i * 7919) % (len(a) + 1), "xyz"[i % 3])
    docs[1].binary_import_changes(docs[0].binary_export_changes(docs[1].version_vector))
    seq = seq_of(b)
    assert len(seq.chunks) > 3
    for k, span in enumerate(seq.spans()):
        span[SI] = (k * 31 + 5) % 67
    before = docs[1].version_vector
    for i in range(300):  # runs of typing and deleting all over the text
        at = (i * 104729) % len(a)
        if i % 3:
            a.insert(at, "ab" * (1 + i % 4))
        else:
            a.delete(at, min(1 + i % 5, len(a) - at))
    docs[1].binary_import_changes(docs[0].binary_export_changes(before))
    assert b.value == a.value
    for doc in docs:
        doc.check_invariants()  # includes every chunk's index


def test_span_index_finds_a_span_whatever_its_hint_says() -> None:
    """``Sequence._span_index`` searches from a little before a wrong hint, then from
    the start: every span is found at its own index, whichever way the hint is off."""
    seq = Sequence("", False)
    for k in range(40):  # 40 spans of one peer in one chunk, not mergeable
        seq.integrate("p", 2 * k, "a", None if not k else ("p", 2 * k - 2), ("p", 2 * k + 1))
    chunk = seq.chunks[0]
    spans = chunk.spans
    assert len(spans) == 40
    for wrong in (lambda k: 0, lambda k: 39, lambda k: k + 1, lambda k: k - 4, lambda k: 500):
        for k, span in enumerate(spans):
            span[SI] = max(wrong(k), 0)
        for k, span in enumerate(spans):
            assert Sequence._span_index(chunk, span) == k
            assert span[SI] == k


def test_checked_integrate_finds_right_origins_near_the_left_one_and_refuses_unknown_ones() -> None:
    """With ``check_right``, a right origin in the left origin's span or in the span
    after it is accepted without an index lookup; one that is not there (past the
    end of either span, or of another peer) still raises KeyError before any change."""
    seq = Sequence("", False)
    seq.integrate("p", 0, "abcdef", None, None)
    seq.integrate("q", 0, "X", ("p", 2), ("p", 3))  # abc | X | def
    seq.integrate("r", 0, "mn", ("p", 5), None)
    assert seq.value() == "abcXdefmn"
    refused = [(("q", 0), ("p", 6)), (("q", 0), ("q", 1)), (("q", 0), ("s", 0))]
    refused += [(("p", 1), ("p", 6)), (("p", 1), ("r", 2)), (("r", 0), ("r", 7))]
    for left, right in refused:
        with pytest.raises(KeyError):
            seq.integrate("t", 0, "Z", left, right, False, True)
        assert seq.value() == "abcXdefmn"
        assert seq.span_count() == 4
    seq.integrate("t", 0, "1", ("p", 0), ("p", 2), False, True)  # right in the left span
    seq.integrate("t", 1, "2", ("q", 0), ("p", 4), False, True)  # right in the next span
    seq.integrate("t", 2, "3", ("p", 4), ("r", 1), False, True)  # found through the index
    assert seq.value() == "ab1cX2defm3n"  # FugueMax: past b, f and m (siblings, right later)
    seq.check_invariants()


def test_a_remote_run_finds_its_left_origin_in_the_piece_the_last_run_split_off() -> None:
    """``Sequence.integrate`` looks for the left origin in the last span found, then
    in the span after it (the piece a run typed mid-span split off), then in the
    index: runs typed here and there in one text, merged into a copy with
    concurrent content, give the text that change-by-change delivery gives."""
    docs, (a, b) = texts(2)
    a.insert(0, "the quick brown fox jumps over the lazy dog")
    b.insert(0, "concurrent ")
    before = docs[1].version_vector
    for i in range(60):  # type mid-text, then a little to the right, and so on
        at = (i * 37) % len(a)
        a.insert(at, "<" + str(i))
        a.insert(min(at + 4, len(a)), ">")
    one_by_one = CRDTDocument(peer(3))
    one_by_one.binary_import_changes(docs[1].binary_export_changes())
    for change in docs[0].export_changes(before):
        one_by_one.import_changes([change])
    docs[1].binary_import_changes(docs[0].binary_export_changes(before))
    assert b.value == CRDTTextHandler(one_by_one, "t").value
    for doc in (docs[1], one_by_one):
        doc.check_invariants()


def _span_fields(seq: Sequence) -> list[list[Any]]:
    """Every span's fields but its chunk and slot hint, in document order."""
    return [s[: SI - 1] for s in seq.spans()]


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_delete_known_leaves_the_spans_set_deleted_leaves(seed: int, keep: bool) -> None:
    """``Sequence.delete_known`` (a remote delete nobody observes) is
    ``set_deleted(..., True, False)`` without the pieces it returns: on texts of
    two peers' runs, typed, split and partly deleted already (so boundaries shift
    into tombstones, pieces merge on either side, ranges cross spans and chunks,
    and some elements are deleted twice), the same ranges give the same spans,
    field by field, after every call."""
    rng = random.Random(seed)
    empty: Any = [] if keep else ""
    copies = [Sequence(empty, keep), Sequence(empty, keep)]
    ctrs = {"p": 0, "q": 0}
    ids: list[tuple[str, int]] = []
    for _ in range(150):  # runs typed at random places, each one span when integrated
        who = rng.choice("pq")
        size = rng.randint(1, 6)
        content: Any = "".join(rng.choice("abc") for _ in range(size))
        if keep:
            content = list(content)
        at = rng.randrange(len(ids) + 1)
        left = ids[at - 1] if at else None
        right = ids[at] if at < len(ids) else None
        for seq in copies:
            seq.integrate(who, ctrs[who], content, left, right)
        new = [(who, ctrs[who] + k) for k in range(size)]
        ids[at:at] = new
        ctrs[who] += size
    order = sorted(ids)
    assert len(copies[0].chunks) > 2
    for _ in range(120):
        who, ctr = order[rng.randrange(len(order))]
        count = rng.randint(1, 9)
        while (who, ctr + count - 1) not in ids:
            count -= 1
        copies[0].set_deleted(who, ctr, count, True, False)
        copies[1].delete_known(who, ctr, count)
        assert _span_fields(copies[1]) == _span_fields(copies[0])
        assert copies[1].length == copies[0].length
        copies[1].check_invariants()
    assert copies[1].value() == copies[0].value()
    with pytest.raises(KeyError):
        copies[1].delete_known("r", 0, 1)


@pytest.mark.parametrize("seed", range(3))
def test_sorted_ints_take_members_in_order_and_out_of_order_alike(seed: int) -> None:
    """``SortedInts.add`` appends a member above every other one to the last block
    directly (the usual case: a peer's spans come in counter order), splitting
    a block that grows past twice ``BLOCK`` as the general way does: mixed with
    members added out of order and removed, floor and ceiling answer as a
    sorted list would, and the blocks stay sorted and bounded."""
    rng = random.Random(seed)
    ints = SortedInts()
    model: list[int] = []
    top = 0
    for step in range(6 * SortedInts.BLOCK):
        r = rng.random()
        if r < 0.7 or not model:
            top += rng.randint(1, 5)
            value = top  # above every member
        elif r < 0.9:
            value = rng.randrange(top)
            if value in model:
                continue
        else:
            value = model[rng.randrange(len(model))]
            ints.remove(value)
            model.remove(value)
            continue
        ints.add(value)
        model.append(value)
        model.sort()
        if step % 97 == 0:
            assert list(ints) == model
    assert list(ints) == model
    assert len(ints.blocks) > 2
    assert all(0 < len(b) <= 2 * SortedInts.BLOCK for b in ints.blocks)
    assert ints.maxes == [b[-1] for b in ints.blocks]
    for probe in range(-1, top + 2, 7):
        below = [v for v in model if v <= probe]
        above = [v for v in model if v >= probe]
        assert ints.floor(probe) == (below[-1] if below else None)
        assert ints.ceiling(probe) == (above[0] if above else None)


@pytest.mark.parametrize("seed", range(3))
def test_sorted_ints_take_two_members_with_none_between_as_two_adds(seed: int) -> None:
    """``SortedInts.add_two(low, high)`` (the two new starts of a span deleted
    inside) is ``add(low)`` then ``add(high)`` when no member lies between them:
    in one search, into the block holding the gap, splitting a block that grows
    past twice ``BLOCK``; or above every member. Two copies, one taking pairs
    by ``add_two``, the other by two ``add`` calls, hold the same members, and
    the blocks of the first stay sorted and bounded."""
    rng = random.Random(seed)
    two, one = SortedInts(), SortedInts()
    members = [0]
    two.add(0)
    one.add(0)
    for step in range(8 * SortedInts.BLOCK):
        if rng.random() < 0.3:
            low = members[-1] + rng.randint(1, 99)  # above every member
        else:
            # Between two low members (their blocks fill up), two apart at least.
            k = rng.randrange(len(members) // 4 + 1)
            while k + 1 < len(members) and members[k + 1] - members[k] < 3:
                k += 1
            gap = (members[k + 1] if k + 1 < len(members) else members[k] + 9) - members[k]
            low = members[k] + rng.randint(1, gap - 2)
        high = low + 1 + rng.randrange(2)
        if high in members:
            continue
        two.add_two(low, high)
        one.add(low)
        one.add(high)
        members = sorted([*members, low, high])
        if step % 89 == 0:
            assert list(two) == members
    assert list(two) == list(one) == members
    assert len(two.blocks) > 2
    assert all(0 < len(b) <= 2 * SortedInts.BLOCK for b in two.blocks)
    assert two.maxes == [b[-1] for b in two.blocks]


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_a_run_integrated_inside_a_span_lands_as_if_the_span_were_split_first(
    seed: int, keep: bool
) -> None:
    """``Sequence.integrate`` places a run between two elements of one span (its
    right origin the successor of its left one: typing inside a text) in one
    step; the general way splits the span after the left origin first and then
    finds the new span's slot. Two copies get the same runs, typed at random
    places of two peers' text, some as tombstones; one has every left origin's
    span split beforehand (``_slot_after``, the general way's first step). The
    spans are the same, field by field, and so are the chunks, after every run."""
    rng = random.Random(seed)
    empty: Any = [] if keep else ""
    fast, general = Sequence(empty, keep), Sequence(empty, keep)
    ctrs = {"p": 0, "q": 0}
    ids: list[tuple[str, int]] = []
    inside = 0
    for _ in range(400):
        who = rng.choice("pq")
        size = rng.randint(1, 5)
        content: Any = "".join(rng.choice("abc") for _ in range(size))
        if keep:
            content = list(content)
        at = rng.randrange(len(ids) + 1)
        left = ids[at - 1] if at else None
        right = ids[at] if at < len(ids) else None
        deleted = rng.random() < 0.2
        if left is not None:
            span, off = fast.locate(*left)
            inside += right is not None and off + 1 < span[2] and right == (left[0], left[1] + 1)
            general._slot_after(left)
        for seq in (fast, general):
            seq.integrate(who, ctrs[who], content, left, right, deleted, True)
        ids[at:at] = [(who, ctrs[who] + k) for k in range(size)]
        ctrs[who] += size
        assert _span_fields(fast) == _span_fields(general)
        assert [len(c.spans) for c in fast.chunks] == [len(c.spans) for c in general.chunks]
        fast.check_invariants()
    assert inside > 100 and len(fast.chunks) > 4
    assert fast.value() == general.value()


def _element_ids(seq: Sequence) -> list[tuple[str, int, bool]]:
    """Every element's id and deleted flag, in document order."""
    return [(s[0], s[1] + k, s[4]) for s in seq.spans() for k in range(s[2])]


@pytest.mark.parametrize("seed", range(4))
def test_runs_with_no_left_origin_are_ordered_as_runs_after_a_first_element(seed: int) -> None:
    """A run with no left origin (typed at the start of the text) walks the
    sequence from its first element and looks only at the elements with no
    left origin and at its right origin (found in C); the general walk looks at
    every element. Two copies get the same runs from three peers, many at the
    start and many concurrent (their origins several elements apart, with
    other runs between them), some as tombstones; the second copy holds one
    element more, first, which stands in for "no left origin" in its runs. The
    elements are in the same order in both, after every run."""
    rng = random.Random(seed)
    roots, general = Sequence("", False), Sequence("", False)
    first = ("0", 0)
    general.integrate(*first, "#", None, None)
    ctrs = {"p": 0, "q": 0, "r": 0}
    ids: list[tuple[str, int]] = []
    at_start = 0
    for _ in range(300):
        who = rng.choice("pqr")
        size = rng.randint(1, 3)
        at = 0 if rng.random() < 0.3 else rng.randrange(len(ids) + 1)
        gap = rng.choice([0, 0, 1, 2, 5])
        left = ids[at - 1] if at else None
        right = ids[at + gap] if at + gap < len(ids) else None
        deleted = rng.random() < 0.2
        content = "".join(rng.choice("abc") for _ in range(size))
        at_start += left is None and bool(ids)
        roots.integrate(who, ctrs[who], content, left, right, deleted, True)
        general.integrate(who, ctrs[who], content, left or first, right, deleted, True)
        ctrs[who] += size
        elements = _element_ids(roots)
        assert elements == _element_ids(general)[1:]
        ids = [(p, c) for p, c, _ in elements]
        roots.check_invariants()
    assert at_start > 50 and len(roots.chunks) > 3
    assert sum(s[5] is None for s in roots.spans()) > 50


def test_chunks_split_before_others_are_renumbered_when_asked() -> None:
    """A chunk split renumbers none of the chunks after it: ``Chunk.at`` is
    trusted when the chunk is there, else the chunks from the first one not
    known exact are renumbered up to it. Runs typed at the front of a long
    text split the front chunks again and again; every span's visible index
    (which reads its chunk's index) and every chunk's index stay right, asked
    in any order."""
    rng = random.Random(5)
    seq = Sequence("", False)
    for i in range(600):  # a long text: "ab" of p, a tombstone of q, and so on
        seq.integrate("p", 2 * i, "ab", ("q", i - 1) if i else None, None)
        seq.integrate("q", i, "x", ("p", 2 * i + 1), None, True)
    assert len(seq.chunks) > 20
    stale = 0
    for step in range(300):
        # At the front: between the "a" and "b" of one of the first runs.
        left = ("p", rng.randrange(0, 40, 2))
        seq.integrate("r", step * 2, "yz", left, ("p", left[1] + 1), False, True)
        if step % 7 == 0:
            seq.check_invariants()
            stale += seq._stale < len(seq.chunks)  # some chunk left to renumber
            chunks = list(enumerate(seq.chunks))
            rng.shuffle(chunks)
            for i, chunk in chunks[:5]:
                assert seq._chunk_index(chunk) == i
            visible = 0
            for chunk in seq.chunks:
                for span in chunk.spans:
                    assert seq.span_visible_start(span) == visible
                    visible += 0 if span[4] else span[2]
    assert stale > 5


@pytest.mark.parametrize("seed", range(3))
def test_lookups_by_id_find_the_span_holding_each_element_or_none(seed: int) -> None:
    """``Sequence._find`` and ``_find_indexed`` take a span that starts at the
    counter asked for straight from the id index, and bisect the starts for
    any other. Random runs of three peers, split, deleted and merged again,
    with counters left unused between runs: every id (a span's first element,
    a middle or last one, one in a gap, one past the end, a peer never seen)
    gives the span holding it, or None, as a walk over the spans does."""
    rng = random.Random(seed)
    seq = Sequence("", False)
    ctrs = dict.fromkeys("pqr", 0)
    ids: list[tuple[str, int]] = []
    for step in range(300):
        if ids and rng.random() < 0.3:
            pos = rng.randrange(seq.length) if seq.length else 0
            if seq.length:
                seq.local_delete(pos, min(rng.randint(1, 4), seq.length - pos))
        else:
            who = rng.choice("pqr")
            at = rng.randrange(len(ids) + 1)
            left = ids[at - 1] if at else None
            right = ids[at] if at < len(ids) else None
            size = rng.randint(1, 4)
            seq.integrate(who, ctrs[who], "x" * size, left, right)
            ctrs[who] += size + rng.choice([0, 0, 2])
            ids = [(s[0], s[1] + k) for s in seq.spans() for k in range(s[2])]
        if step % 15 == 14:
            holder = {(s[0], s[1] + k): s for s in seq.spans() for k in range(s[2])}
            for who in "pqrs":
                for ctr in range(ctrs.get(who, 0) + 3):
                    want = holder.get((who, ctr))
                    seq._last = None
                    assert seq._find_indexed(who, ctr) is want
                    seq._last = None
                    assert seq._find(who, ctr) is want
    known = set(ids)
    starts = sum(1 for s in seq.spans() if (s[0], s[1] - 1) in known)
    assert starts > 20  # spans that start inside a run: found by their start


def test_remote_spans_appended_in_counter_order_keep_the_sorted_starts_in_bounded_blocks() -> None:
    """``Sequence.integrate`` appends the start of a new span that comes after
    every start of its peer to the last block of the sorted starts itself,
    while that block has room, and leaves a full block to ``SortedInts.add``,
    which splits it. Runs of two peers, each after the other's last element
    (no span grows), fill several blocks; the starts stay sorted, each block
    within its bound, and every id is found."""
    seq = Sequence("", False)
    left = None
    for k in range(2500):
        seq.integrate("p", 2 * k, "ab", left, None)
        seq.integrate("q", k, "c", ("p", 2 * k + 1), None)
        left = ("q", k)
        if k % 500 == 0:
            seq.check_invariants()
    seq.check_invariants()
    assert len(seq._starts["p"].blocks) > 3
    for k in range(2500):
        assert seq.find("p", 2 * k + 1) is seq.find("p", 2 * k)


@given(
    runs=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 40)), min_size=1, max_size=60),
    probes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60_000)), max_size=40),
)
def test_find_or_next_answers_as_find_then_next_known(
    runs: list[tuple[int, int]], probes: list[tuple[int, int]]
) -> None:
    # Three peers' runs with gaps in their counters, as loaded from a
    # snapshot, enough of them to fill several SortedInts blocks per peer.
    seq = Sequence("", keep_deleted_content=False)
    counters = [0, 0, 0]
    spans: list[list[Any]] = []
    for who, n in runs * (4000 // len(runs)):
        spans.append(["abc"[who], counters[who], n, "x" * n, False, None, None, None, 0])
        counters[who] += n + n % 3  # a gap after most runs
    seq.load_spans(spans)
    # Random probes, every counter around some of them, and every counter
    # before the first start of each block of a peer's starts (whose floor is
    # in the block before).
    near = [(who, c + d) for who, c in probes[:3] for d in range(-50, 50) if c + d >= 0]
    for who in range(3):
        for block in seq._starts["abc"[who]].blocks if "abc"[who] in seq._starts else ():
            near.extend((who, c) for c in range(max(0, block[0] - 60), block[0] + 1))
    for who, ctr in probes + near:
        peer = "abcd"[who]
        seq._last = None  # not the span of the last lookup: the index itself
        found, after = seq.find_or_next(peer, ctr)
        assert found is seq.find(peer, ctr)
        assert after == (None if found is not None else seq.next_known(peer, ctr + 1))
