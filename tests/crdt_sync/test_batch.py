"""Change format version 2 (columns and runs) and the history kept as segments."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import pytest
from network import document_values, fingerprint, session

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    DecodeError,
    InvalidChangeError,
    PeerId,
    VersionVector,
    decode_changes,
    encode_changes,
    remote,
)
from crdt_sync.batch import DELETING, FULL, TYPING
from crdt_sync.causal import coalesce
from crdt_sync.changes import (
    MAP_SET,
    TEXT_DELETE,
    TEXT_INSERT,
    decode_batch,
    encode_change_tuples,
    encode_change_tuples_v1,
)
from crdt_sync.events import Delete, Insert, Retain, apply_delta
from crdt_sync.history import FREEZE


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


@pytest.mark.parametrize("seed", range(3))
def test_round_trips_of_runs_with_derived_deps(seed: int) -> None:
    docs = session(seed)
    for doc in docs:
        changes = doc.export_changes()
        for compress in (False, True):
            assert decode_changes(encode_changes(changes, compress)) == changes
        # Version 1 batches still decode to the same changes.
        data_v1 = encode_change_tuples_v1([c._data for c in changes])
        assert data_v1[4] == 1 and decode_changes(data_v1) == changes
        fresh = CRDTDocument()
        fresh.binary_import_changes(data_v1)
        assert document_values(fresh) == document_values(doc)


def test_typing_and_backspacing_are_runs_of_continuations() -> None:
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    for i in range(500):
        text.insert(i, "x")
    for i in range(100):
        text.delete(499 - i, 1)
    data = doc.binary_export_changes()
    (segment,) = decode_batch(data)
    assert [run[2] for run in segment.runs] == [TYPING, DELETING]
    assert segment.n == 600
    assert len(data) < 600 * 12  # columns: about 10 bytes a change before zlib
    assert decode_changes(data) == doc.export_changes()


def test_imports_by_runs_and_change_by_change_agree() -> None:
    docs = session(7, 1500)
    source = docs[0]
    data = source.binary_export_changes()
    assert any(run[2] != FULL for seg in decode_batch(data) for run in seg.runs)
    fast, slow = CRDTDocument(peer(9), "d"), CRDTDocument(peer(9), "d")
    fast.binary_import_changes(data)  # by runs: everything is next
    slow.import_changes(source.export_changes())  # change by change
    assert fingerprint(fast) == fingerprint(slow)
    assert document_values(fast) == document_values(source)
    assert fast.export_changes() == slow.export_changes() == source.export_changes()
    fast.check_invariants()


def test_a_batch_that_is_not_next_is_imported_change_by_change() -> None:
    docs = session(3, 800)
    source = docs[1]
    changes = source.export_changes()
    half = len(changes) // 2
    target = CRDTDocument()
    # The second half first: it waits; then the first half: everything applies.
    assert target.binary_import_changes(encode_changes(changes[half:])) == 0
    assert target.pending_count == len(changes) - half
    assert target.binary_import_changes(encode_changes(changes)) == len(changes)
    assert target.pending_count == 0
    assert document_values(target) == document_values(source)
    # Duplicates are ignored, whichever way they come.
    assert target.binary_import_changes(encode_changes(changes)) == 0


def test_history_export_since_any_version_through_frozen_segments() -> None:
    doc = CRDTDocument(peer(1))
    other = CRDTDocument(peer(2))
    text, their = CRDTTextHandler(doc, "t"), CRDTTextHandler(other, "t")
    rng = random.Random(5)
    versions = [VersionVector()]
    for step in range(3 * FREEZE):
        if step % 97 == 0:
            other.import_changes(doc.export_changes(other.version_vector))
            their.insert(rng.randrange(len(their) + 1), "OTHER")
            doc.import_changes(other.export_changes(doc.version_vector))
        text.insert(rng.randrange(len(text) + 1), "z")
        if step % 700 == 0:
            versions.append(doc.version_vector)
    everything = doc.export_changes()
    assert len(everything) > 2 * FREEZE
    for since in versions:
        expected = [c for c in everything if since.get(c.peer, 0) < c.counter + c.size]
        assert doc.export_changes(since) == expected
        assert decode_changes(doc.binary_export_changes(since)) == expected
        receiver = CRDTDocument()
        receiver.import_changes(
            [c for c in everything if not since.get(c.peer, 0) < c.counter + c.size]
        )
        receiver.binary_import_changes(doc.binary_export_changes(since))
        assert document_values(receiver) == document_values(doc)


@pytest.mark.parametrize("seed", range(4))
def test_joined_bodies_decode_to_both_segments_changes(seed: int) -> None:
    # One writer typing, backspacing and forward deleting in one text: its
    # segments share their tables, and two joined decode to both's changes.
    from crdt_sync.batch import decode_segment, encode_segment, join_bodies
    from crdt_sync.codec import Reader

    rng = random.Random(seed)
    doc = CRDTDocument(peer(1))
    _edit_about(CRDTTextHandler(doc, "t"), rng, 900, 0)
    changes = [c._data for c in doc.export_changes()]
    cut = rng.randrange(1, len(changes))
    first, second = encode_segment(changes[:cut]), encode_segment(changes[cut:])
    joined = join_bodies(first, second)
    assert joined is not None
    segment = decode_segment(Reader(joined))
    assert segment.tuples() == changes and segment.n == len(changes)
    assert segment.max_ts == changes[-1][2] and segment.body == joined
    assert segment.summary == {str(peer(1)): (changes[0][1], changes[-1][1] + changes[-1][5])}
    # Not joined: other tables (a list op names another object), or a second
    # segment whose first stamp is below the first's last.
    CRDTListHandler(doc, "l").append(1)
    listed = doc.export_changes()[-1]._data
    assert join_bodies(first, encode_segment([listed])) is None
    earlier = (listed[0], listed[1], changes[cut - 1][2] - 1, *listed[3:])
    typed = [(*c[:2], earlier[2], *c[3:]) if c is changes[cut] else c for c in changes[cut:]]
    assert join_bodies(first, encode_segment(typed)) is None


def test_a_history_joins_segments_of_the_same_tables_and_reads_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Frozen tails (and imported segments) of the same tables join up to JOIN
    # changes; lookups, exports since any version and parts are what the
    # history without joining gives.
    from crdt_sync import history

    def written(join: int) -> CRDTDocument:
        monkeypatch.setattr(history, "JOIN", join)
        rng = random.Random(8)
        doc = CRDTDocument(peer(1))
        _edit_about(CRDTTextHandler(doc, "t"), rng, 5 * FREEZE + 100, 0)
        return doc

    joined, apart = written(history.JOIN), written(FREEZE)
    monkeypatch.setattr(history, "JOIN", 4 * FREEZE)
    sizes = [f.n for f in joined._history._frozen]
    assert sizes[0] == 4 * FREEZE and all(
        n == FREEZE for n in (f.n for f in apart._history._frozen)
    )
    everything = apart.export_changes()
    assert [c.data[:2] + c.data[3:] for c in joined.export_changes()] == [
        c.data[:2] + c.data[3:] for c in everything
    ]
    rng = random.Random(2)
    for _ in range(40):
        change = rng.choice(everything)
        since = VersionVector({change.peer: change.counter + rng.randrange(change.size + 1)})
        ours = [c.id for c in decode_changes(joined.binary_export_changes(since))]
        assert ours == [c.id for c in apart.export_changes(since)]
        assert joined.timestamp_of(change.id) is not None
        assert joined._history.has_start(*change.id) is not None
    parts = list(joined.export_changes_in_parts())
    assert all(0 < len(part) <= FREEZE for part in parts)
    assert [c.id for part in parts for c in part] == [c.id for c in everything]
    # A receiver keeps the segments it imports as they came (the sender's
    # tail, encoded for the export, too big to join the full first one).
    receiver = CRDTDocument(peer(2))
    receiver.binary_import_changes(joined.binary_export_changes())
    assert [f.n for f in receiver._history._frozen] == [*sizes, len(joined._history._tail)]
    assert document_values(receiver) == document_values(joined)


def test_timestamps_and_reused_op_ids_are_found_in_frozen_segments() -> None:
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    stamps: list[Change] = []
    doc.on_change(stamps.append)
    for i in range(FREEZE + 10):
        text.insert(i, "a")
    for i in range(20):
        text.delete(FREEZE - i, 1)
    me = str(doc.peer_id)
    for change in stamps[:5] + stamps[FREEZE - 3 : FREEZE + 30]:
        assert doc.timestamp_of((me, change.counter)) == change.timestamp
    copy = CRDTDocument(peer(2))
    copy.binary_import_changes(doc.binary_export_changes())
    for change in stamps[:: FREEZE // 4]:
        assert copy.timestamp_of((me, change.counter)) == change.timestamp
    # An op id reused with other content is refused, though the original is frozen.
    forged = list(stamps[3]._data)
    forged[4] = ((forged[4][0][0], "t", forged[4][0][2], forged[4][0][3], "B"),)
    before = fingerprint(copy)
    with pytest.raises(InvalidChangeError):
        copy.import_changes([Change(tuple(forged))])  # type: ignore[arg-type]
    assert fingerprint(copy) == before
    assert copy.import_changes(stamps[:10]) == 0  # true duplicates are fine


def test_continuations_that_do_not_fit_their_run_are_refused() -> None:
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    for i in range(20):
        text.insert(i, "x")
    data = bytearray(encode_changes(doc.export_changes(), compress=False))
    (segment,) = decode_batch(bytes(data))
    assert segment.n == 20
    kinds_at = bytes(data).index(bytes([FULL] + [TYPING] * 19))
    for bad in (DELETING, 3):
        broken = bytearray(data)
        broken[kinds_at + 5] = bad
        with pytest.raises(DecodeError):
            decode_changes(bytes(broken))
    broken = bytearray(data)
    broken[kinds_at] = TYPING  # a segment cannot start with a continuation
    with pytest.raises(DecodeError):
        decode_changes(bytes(broken))


@pytest.mark.parametrize("order", ["typing then deleting", "deleting then typing"])
def test_a_run_that_mixes_typing_and_deleting_is_refused(order: str) -> None:
    # Kinds [0, 1, 1, 0, 2, 2] rearranged: every count still adds up (two
    # heads, two continuations of each kind), but a run mixes the kinds.
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    for i in range(3):
        text.insert(i, "x")
    text.delete(2, 1)
    text.delete(1, 1)
    text.delete(0, 1)
    data = encode_changes(doc.export_changes(), compress=False)
    kinds = bytes([FULL, TYPING, TYPING, FULL, DELETING, DELETING])
    at = data.index(kinds)
    decode_changes(data)  # as written: fine
    if order == "typing then deleting":  # only the pair (1, 2) occurs
        swapped = bytes([FULL, TYPING, DELETING, FULL, TYPING, DELETING])
    else:  # only the pair (2, 1)
        swapped = bytes([FULL, DELETING, TYPING, FULL, DELETING, TYPING])
    broken = data[:at] + swapped + data[at + len(kinds) :]
    with pytest.raises(DecodeError, match="a run mixes typing and deleting"):
        decode_changes(broken)


def _decode_outcome(data: bytes) -> object:
    try:
        return [seg.tuples() for seg in decode_batch(data)]
    except DecodeError as exc:
        return ("DecodeError", exc.detail, exc.offset)


def _far_edits() -> bytes:
    """Runs of typing and deleting whose origins and deleted ids have counters
    of two and three varint bytes (16,384 and past), uncompressed."""
    rng = random.Random(8)
    docs = [CRDTDocument(peer(1)), CRDTDocument(peer(2))]
    texts = [CRDTTextHandler(d, "t") for d in docs]
    texts[0].insert(0, "a" * 17000)
    docs[1].import_changes(docs[0].export_changes())
    since = docs[0].version_vector
    for _ in range(40):
        k = rng.randrange(2)
        at = rng.choice([rng.randrange(100, 16000), rng.randrange(16500, len(texts[k]))])
        for i in range(rng.randrange(1, 4)):
            texts[k].insert(at + i, "xy")
        for i in range(rng.randrange(0, 3)):
            texts[k].delete(at + 2 - i, 1)
        docs[1 - k].import_changes(docs[k].export_changes(docs[1 - k].version_vector))
    return encode_changes(docs[0].export_changes(since), compress=False)


@pytest.mark.parametrize("batch_of", ["session", "far counters"])
def test_the_fast_head_reader_decodes_exactly_what_the_checked_one_does(
    monkeypatch: pytest.MonkeyPatch, batch_of: str
) -> None:
    # ``decode_segment`` reads the usual head rows itself from a short window
    # (``_CHAINED``), ``_fast_row`` the other text-run heads without the
    # per-field calls; on anything else each defers to the next, the last to
    # ``_read_row``. Every bit flip of a batch (uncompressed, so flips land in
    # rows) must decode to the same changes, or fail, with all three readers,
    # without the first, and with ``_read_row`` alone.
    import crdt_sync.batch as batch

    if batch_of == "session":
        data = encode_changes(session(3, 150)[0].export_changes(), compress=False)
    else:
        data = _far_edits()
    assert data[5] == 0  # not compressed
    rng = random.Random(5)
    flips = [(rng.randrange(6, len(data)), rng.randrange(8)) for _ in range(1500)]
    variants = [data] + [data[:i] + bytes([data[i] ^ (1 << b)]) + data[i + 1 :] for i, b in flips]
    used: list[bool] = []
    real = batch._fast_row

    def counting(*args: Any) -> Any:
        row = real(*args)
        used.append(row is not None)
        return row

    monkeypatch.setattr(batch, "_fast_row", counting)
    fast = [_decode_outcome(v) for v in variants]
    inline_calls = len(used)
    monkeypatch.setattr(batch, "_CHAINED", False)
    del used[:]
    without_inline = [_decode_outcome(v) for v in variants]
    # The inline reader took most heads, and the fast one both read and declined.
    assert inline_calls < len(used) // 2
    assert any(used) and not all(used)
    monkeypatch.setattr(batch, "_fast_row", lambda *args: None)
    checked = [_decode_outcome(v) for v in variants]
    assert fast == without_inline == checked
    # (The same error too: its message and where decoding stopped.)
    errors = [outcome for outcome in fast if isinstance(outcome, tuple)]
    assert fast[0] != errors and len(errors) > len(variants) // 10
    assert len({detail for _, detail, _ in errors}) > 5


def _random_head_op(rng: random.Random, peers: list[str], ctr: int) -> Any:
    """A text insert or delete (now and then another op) as a head row may hold,
    with counters of one to five varint bytes and texts of every UTF-8 width."""

    def counter() -> int:
        return rng.choice([0, 1, 127, 128, 16383, 16384, (1 << 21) - 1, 1 << 21, 1 << 40])

    def ref() -> Any:
        return rng.choice([None, (peers[0], ctr - 1), (rng.choice(peers), counter())])

    r = rng.random()
    if r < 0.5:
        size = rng.choice([1, 1, 2, 5, 40, 127, 128, 300])
        text = "".join(rng.choice("ab\né€😀\ud800") for _ in range(size))
        return (TEXT_INSERT, rng.choice(["t", "u"]), ref(), ref(), text)
    if r < 0.9:
        ranges = tuple(
            (rng.choice(peers), counter(), rng.choice([1, 2, 127, 128, 1 << 20]))
            for _ in range(rng.choice([1, 1, 1, 2]))
        )
        return (TEXT_DELETE, rng.choice(["t", "u"]), ranges)
    return (MAP_SET, "m", "k", rng.randrange(1000))


def _count_fast_rows(patch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of ``batch._fast_row`` (the rows the inline reader declines)."""
    import crdt_sync.batch as batch

    calls = [0]
    real = batch._fast_row

    def counting(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    patch.setattr(batch, "_fast_row", counting)
    return calls


def _segment_of_rows(peers: list[str], names: list[str], first: bytes, row: bytes) -> bytes:
    """A segment body of two heads (no continuations, stamps 0): ``first``, a
    full row, and ``row``, whatever its bytes; then nothing."""
    from crdt_sync.codec import Writer

    w = Writer()
    w.uint(len(peers))
    for p in peers:
        w.peer(p)
    w.uint(len(names))
    for name in names:
        w.str(name)
    w.uint(2)
    w.raw(b"\x00\x00" + bytes(16))  # two heads, their stamp deltas
    w.uint(0)  # no typing continuations
    w.uint(0)  # no deleting ones
    w.str("")
    w.raw(first)
    w.raw(row)
    return w.getvalue()


def test_the_inline_head_reader_reads_what_the_fast_one_does_or_declines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ``decode_segment`` reads a head row of the usual shape itself; it must
    # give exactly the change and position ``_fast_row`` (or ``_read_row``)
    # gives, or decline, whatever the bytes: rows written by the encoder (every
    # origin form, varints of one to five bytes, texts up to 300 bytes), the
    # same rows with bytes flipped, cut short or followed by garbage, and
    # random bytes after the usual first two. Each row is the second head of a
    # segment, after a head that makes its counter the next one.
    import crdt_sync.batch as batch
    from crdt_sync.changes import _Tables, _write_deps_and_ops
    from crdt_sync.codec import Reader, Writer

    rng = random.Random(21)
    peers = [str(peer(n)) for n in range(1, 4)]
    names = ["t", "u", "m"]
    rows = []
    for _ in range(3000):
        tables = _Tables()
        for p in peers:
            tables.peer(p)
        for name in names:
            tables.name(name)
        ctr = rng.choice([1, 2, 200, 20000, 3_000_000])
        w = Writer()
        w.byte(7)  # the previous peer, the next counter, deps chained
        ops = [_random_head_op(rng, peers, ctr) for _ in range(rng.choice([1, 1, 1, 2]))]
        _write_deps_and_ops(w, tables, peers[0], ctr, (), ops, False)
        rows.append((w.getvalue(), ctr))
    cases = []
    for row, ctr in rows:
        cases.append((row, ctr))
        at = rng.randrange(len(row))
        cases.append((row[:at] + bytes([row[at] ^ (1 << rng.randrange(8))]) + row[at + 1 :], ctr))
        cases.append((row[: rng.randrange(len(row))], ctr))
        cases.append((row + rng.randbytes(rng.randrange(1, 50)), ctr))
        cases.append((b"\x07\x01" + rng.randbytes(rng.randrange(30)), ctr))
    calls = _count_fast_rows(monkeypatch)

    def outcome(body: bytes) -> object:
        r = Reader(body, 0)
        try:
            seg = batch.decode_segment(r)
        except DecodeError:
            return "DecodeError"
        return seg.head(seg.runs[1]), r.pos

    accepted = {TEXT_INSERT: 0, TEXT_DELETE: 0}
    for row, ctr in cases:
        # The first head: peers[0] inserting a text of 1-3 characters ending
        # at ``ctr`` (so the row's lead varies), no origins.
        size = min(ctr, rng.randrange(1, 4))
        tables = _Tables()
        for p in peers:
            tables.peer(p)
        for name in names:
            tables.name(name)
        w = Writer()
        w.byte(0)
        w.uint(0)  # peers[0]
        w.uint(ctr - size)
        op = (TEXT_INSERT, "t", None, None, "x" * size)
        _write_deps_and_ops(w, tables, peers[0], ctr - size, (), [op], True)
        body = _segment_of_rows(peers, names, w.getvalue(), row)
        calls[0] = 0
        got = outcome(body)
        inline = calls[0] == 1  # only the first head went to _fast_row
        monkeypatch.setattr(batch, "_CHAINED", False)
        assert got == outcome(body), row
        monkeypatch.setattr(batch, "_CHAINED", True)
        if inline:
            assert got != "DecodeError"
            accepted[got[0][4][0][0]] += 1  # type: ignore[index]
    assert min(accepted.values()) > len(cases) // 20, accepted


def test_a_head_of_one_text_byte_is_read_inline_when_ascii_else_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The inline reader looks a one-byte text up (``_ASCII``) instead of
    # decoding it: every byte value must give what ``_fast_row`` and
    # ``_read_row`` give (the character, or DecodeError past 0x7f), for each
    # origin form before it.
    import crdt_sync.batch as batch
    from crdt_sync.changes import _Tables, _write_deps_and_ops
    from crdt_sync.codec import Reader, Writer

    peers = [str(peer(n)) for n in range(1, 3)]
    names = ["t"]
    calls = _count_fast_rows(monkeypatch)

    def outcome(body: bytes) -> object:
        try:
            seg = batch.decode_segment(Reader(body, 0))
            return seg.head(seg.runs[1])
        except DecodeError:
            return "DecodeError"

    for right in [None, (peers[0], 4), (peers[1], 70000)]:
        tables = _Tables()
        for p in peers:
            tables.peer(p)
        tables.name("t")
        first = Writer()
        first.byte(0)
        first.uint(0)  # peers[0]
        first.uint(0)
        _write_deps_and_ops(
            first, tables, peers[0], 0, (), [(TEXT_INSERT, "t", None, None, "xyzab")], True
        )
        w = Writer()
        w.byte(7)  # the previous peer, the next counter, deps chained
        _write_deps_and_ops(
            w, tables, peers[0], 5, (), [(TEXT_INSERT, "t", None, right, "?")], False
        )
        row = w.getvalue()
        assert row[-2:] == b"\x01?"
        for value in range(256):
            body = _segment_of_rows(peers, names, first.getvalue(), row[:-1] + bytes([value]))
            calls[0] = 0
            got = outcome(body)
            assert (calls[0] == 1) == (value < 0x80)  # read inline, or declined
            monkeypatch.setattr(batch, "_CHAINED", False)
            assert got == outcome(body)
            monkeypatch.setattr(batch, "_CHAINED", True)
            if value < 0x80:
                assert got == (
                    peers[0],
                    5,
                    0,
                    ((peers[0], 4),),
                    ((TEXT_INSERT, "t", None, right, chr(value)),),
                    1,
                )
            else:
                assert got == "DecodeError"


def test_the_column_checks_by_bytes_agree_with_max_and_min() -> None:
    from array import array

    from crdt_sync.batch import _all_below, _all_ones, _non_negative

    rng = random.Random(11)
    for _ in range(3000):
        stamps = array(
            "q",
            [
                rng.choice(
                    [
                        0,
                        1,
                        7,
                        1 << 62,
                        (1 << 63) - 1,
                        -1,
                        -(1 << 63),
                        rng.randrange(-(1 << 63), 1 << 63),
                    ]
                )
                for _ in range(rng.randrange(6))
            ],
        )
        lead = bytes(rng.randrange(9))
        data = lead + stamps.tobytes() + bytes(rng.randrange(9))
        assert _non_negative(data, len(lead), len(lead) + 8 * len(stamps)) == all(
            v >= 0 for v in stamps
        )
    limits = [0, 1, 2, 5, 255, 256, 257, 1000, 1 << 16, 1 << 24, (1 << 24) + 3, 1 << 53]
    for _ in range(3000):
        code = rng.choice("IQ")
        top = rng.choice([1, 2, 256, 1 << 20, 1 << 32, 1 << 54])
        top = min(top, 1 << (8 * array(code).itemsize))
        values = array(code, [rng.choice([1, rng.randrange(top)]) for _ in range(rng.randrange(6))])
        for limit in limits:
            assert _all_below(values, limit) == all(v < limit for v in values), (values, limit)
        if code == "I":
            assert _all_ones(values) == all(v == 1 for v in values), values
    for size in (4095, 4096, 4097, 9000):  # past the memcmp prefix: counted
        ones = array("I", [1] * size)
        assert _all_ones(ones)
        for at in (0, size // 2, size - 1):
            other = array("I", ones)
            other[at] = 257
            assert not _all_ones(other)


def test_runs_merged_into_concurrent_content_agree_with_change_by_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two replicas type, backspace and jump about apart from each other; each
    # then takes the other's history by runs (bytes, everything next) and, on
    # a copy, change by change: the same document either way.
    a, b = _apart(21, 1500)
    for target, source in ((a, b), (b, a)):
        data = source.binary_export_changes(target.version_vector)
        assert {run[2] for seg in decode_batch(data) for run in seg.runs} >= {TYPING, DELETING}
        fast, slow = CRDTDocument(target.peer_id, "d"), CRDTDocument(target.peer_id, "d")
        for copy in (fast, slow):
            copy.import_changes(target.export_changes())
        general = remote.import_tuples
        with monkeypatch.context() as patch:
            # By runs: the general path must not be taken.
            patch.setattr(remote, "import_tuples", None)
            fast.binary_import_changes(data)
        assert remote.import_tuples is general
        slow.import_changes(source.export_changes())
        assert fingerprint(fast) == fingerprint(slow)
        assert fast.get_value("t") == slow.get_value("t")
        fast.check_invariants()
    a.binary_import_changes(b.binary_export_changes(a.version_vector))
    b.binary_import_changes(a.binary_export_changes(b.version_vector))
    assert a.get_value("t") == b.get_value("t")


def test_a_batch_invalid_late_leaves_a_document_with_concurrent_content_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Typing runs (next, valid), then a change deleting "text" that is a map
    # entry's op id: refused, and nothing of the runs before it is applied.
    author, target = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    CRDTMapHandler(author, "m").set("k", 1)  # op (peer 1, 0)
    target.import_changes(author.export_changes())
    mine = CRDTTextHandler(target, "t")
    mine.insert(0, "concurrent")
    typed = CRDTTextHandler(author, "t")
    for i in range(300):
        typed.insert(i, "x")
    for i in range(40):
        typed.delete(299 - i, 1)
    me = str(author.peer_id)
    good = author.export_changes(target.version_vector)
    last = good[-1]
    delete = (TEXT_DELETE, "t", ((me, 0, 1),))
    forged = (me, last.counter + last.size, last.timestamp, ((me, 0),), (delete,), 1)
    changes = [c._data for c in good] + [forged]
    data = encode_change_tuples(changes)
    assert len(decode_batch(data)[0].runs) >= 3
    before = fingerprint(target)
    with pytest.raises(InvalidChangeError), monkeypatch.context() as patch:
        patch.setattr(remote, "import_tuples", None)  # refused by the run path itself
        target.binary_import_changes(data)
    assert fingerprint(target) == before
    target.check_invariants()
    assert target.binary_import_changes(encode_change_tuples(changes[:-1])) == len(good)


def _apart(seed: int, steps: int) -> tuple[CRDTDocument, CRDTDocument]:
    """Two replicas that typed, backspaced and jumped about apart from each other."""
    rng = random.Random(seed)
    replicas = (CRDTDocument(peer(1)), CRDTDocument(peer(2)))
    for doc in replicas:
        _edit_about(CRDTTextHandler(doc, "t"), rng, steps, 0, 0.65, 0.85, None)
    return replicas


def _edit_about(
    text: CRDTTextHandler,
    rng: random.Random,
    steps: int,
    cursor: int,
    typed: float = 0.6,
    backspaced: float = 0.8,
    forward: float | None = 0.85,
) -> int:
    """Type, backspace, forward delete (unless ``forward`` is None) and jump
    about, each below its threshold of a random number; returns the cursor."""
    for _ in range(steps):
        r = rng.random()
        if r < typed:
            text.insert(cursor, rng.choice("abcdé😀 "))
            cursor += 1
        elif r < backspaced and cursor:
            text.delete(cursor - 1, 1)
            cursor -= 1
        elif forward is not None and r < forward and cursor < len(text):
            text.delete(cursor, min(3, len(text) - cursor))
        else:
            cursor = rng.randrange(len(text) + 1)
    return cursor


def _spy_checked(patch: pytest.MonkeyPatch) -> list[bool]:
    """Record what each call of the checked run path returned."""
    results: list[bool] = []
    checked = remote._apply_runs_checked

    def spy(doc: CRDTDocument, segments: Any) -> bool:
        results.append(checked(doc, segments))
        return results[-1]

    patch.setattr(remote, "_apply_runs_checked", spy)
    return results


def test_checked_runs_agree_with_checking_first_and_with_change_by_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each replica takes the other's history three ways: by runs checked as
    # they apply, by runs checked before (the checked path declined), and
    # change by change. Observed, so the text events are compared too.
    a, b = _apart(33, 1200)
    for target, source in ((a, b), (b, a)):
        data = source.binary_export_changes(target.version_vector)
        copies = [CRDTDocument(target.peer_id, "d") for _ in range(3)]
        mirrors = []
        for copy in copies:
            copy.import_changes(target.export_changes())
            handler = CRDTTextHandler(copy, "t")
            mirror = [handler.value]
            mirrors.append(mirror)

            def follow(event: Any, mirror: list[str] = mirror) -> None:
                mirror[0] = apply_delta(mirror[0], event.delta)

            handler.observe(follow)
        checked, first, by_change = copies
        with monkeypatch.context() as patch:
            results = _spy_checked(patch)
            checked.binary_import_changes(data)
        assert results == [True]
        with monkeypatch.context() as patch:
            patch.setattr(remote, "_apply_runs_checked", lambda doc, segments: False)
            first.binary_import_changes(data)
        by_change.import_changes(source.export_changes())
        assert fingerprint(checked) == fingerprint(first) == fingerprint(by_change)
        assert mirrors[0] == mirrors[1] == mirrors[2] == [checked.get_value("t")]
        checked.check_invariants()


def _forged(author: CRDTDocument, op: tuple[Any, ...], gap: int = 0) -> tuple[Any, ...]:
    """A change after ``author``'s last, with one op."""
    last = author.export_changes()[-1]
    me = str(author.peer_id)
    ctr = last.counter + last.size + gap
    size = len(op[4]) if op[0] == TEXT_INSERT else 1
    return (me, ctr, last.timestamp, ((me, ctr - 1 - gap),), (op,), size)


@pytest.mark.parametrize(
    "late", ["unknown left", "unknown right", "map op deleted", "gap", "own dep ahead"]
)
def test_a_batch_refused_late_by_the_checked_path_is_rolled_back(
    monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    # Many runs apply (each checked as it goes), then the last change cannot:
    # everything is put back, and the careful path gives exactly its result
    # (the typed error with nothing changed, or the change left pending).
    a, b = _apart(34, 600)
    CRDTMapHandler(b, "m").set("k", 1)
    map_op = b.export_changes()[-1].counter
    a.import_changes(b.export_changes())
    target = CRDTDocument(a.peer_id, "d")
    target.import_changes(a.export_changes())
    events: list[Any] = []
    CRDTTextHandler(target, "t").observe(events.append)
    typed: Any = b.handlers[("t", "text")]
    for i in range(40):
        typed.insert((i * 7) % (len(typed) + 1), "xy")
        typed.delete((i * 5) % len(typed), 1)
    good = b.export_changes(target.version_vector)
    me, other = str(b.peer_id), "00000000-0000-4000-8000-000000000077"
    *_, end = typed._state.seq.spans()
    known = (end[0], end[1] + end[2] - 1)  # the last character (nothing after it)
    ops = {
        "unknown left": (TEXT_INSERT, "t", (me, 10**6), None, "z"),
        "unknown right": (TEXT_INSERT, "t", known, (other, 3), "z"),
        "map op deleted": (TEXT_DELETE, "t", ((me, map_op, 1),)),
        "gap": (TEXT_INSERT, "t", known, None, "z"),
        "own dep ahead": (TEXT_INSERT, "t", known, None, "z"),
    }
    last = _forged(b, ops[late], gap=5 if late == "gap" else 0)
    if late == "own dep ahead":
        # A dep on its own peer at or past its own counter: never known first.
        last = (*last[:3], ((me, last[1]),), *last[4:])
    changes = [c._data for c in good] + [last]
    data = encode_change_tuples(changes)
    assert sum(len(seg.runs) for seg in decode_batch(data)) >= 60
    waits = late in ("gap", "own dep ahead")
    _refused_late_as_the_careful_path_refuses(
        monkeypatch, target, data, len(good) if waits else None
    )
    if not waits:
        assert events == []  # refused: the observer heard nothing


def _refused_late_as_the_careful_path_refuses(
    monkeypatch: pytest.MonkeyPatch, target: CRDTDocument, data: bytes, waits: int | None
) -> None:
    """Import ``data`` into ``target``: the checked run path declines it (after
    applying some runs) and the result is the careful path's, on a copy of
    ``target`` taken before: ``waits`` changes applied and the last left
    waiting, or (None) an InvalidChangeError with ``target`` untouched."""
    careful = CRDTDocument(target.peer_id, "d")
    careful.import_changes(target.export_changes())
    before = fingerprint(target)
    with monkeypatch.context() as patch:
        results = _spy_checked(patch)
        if waits is not None:
            assert target.binary_import_changes(data) == waits
        else:
            with pytest.raises(InvalidChangeError):
                target.binary_import_changes(data)
            assert fingerprint(target) == before
    assert results == [False]
    with monkeypatch.context() as patch:
        patch.setattr(remote, "_apply_runs_checked", lambda doc, segments: False)
        if waits is not None:
            careful.binary_import_changes(data)
        else:
            with pytest.raises(InvalidChangeError):
                careful.binary_import_changes(data)
    assert fingerprint(target) == fingerprint(careful)
    target.check_invariants()


@pytest.mark.parametrize("late", ["unknown left", "gap"])
def test_segments_applied_and_released_before_a_late_refusal_are_decoded_again(
    monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    # The checked path drops each segment's runs once it applied them; when a
    # later segment cannot apply, the careful path decodes them again from
    # their bytes and gives exactly its own result.
    from crdt_sync.batch import decode_segment, encode_segment
    from crdt_sync.changes import encode_bodies
    from crdt_sync.codec import Reader

    a, b = _apart(35, 900)
    good = [c._data for c in b.export_changes()]
    me = str(b.peer_id)
    *_, end = b.handlers[("t", "text")]._state.seq.spans()
    known = (end[0], end[1] + end[2] - 1)
    op = (TEXT_INSERT, "t", (me, 10**6) if late == "unknown left" else known, None, "z")
    last = _forged(b, op, gap=5 if late == "gap" else 0)
    thirds = [good[: len(good) // 3], good[len(good) // 3 : -40], [*good[-40:], last]]
    data = encode_bodies([encode_segment(part) for part in thirds])
    segments = decode_batch(data)
    assert len(segments) == 3 and all(len(seg.runs) > 5 for seg in segments)
    released = decode_segment(Reader(segments[0].body))
    runs = list(released.runs)
    released.release()
    assert released.runs == runs
    target = CRDTDocument(a.peer_id, "d")
    target.import_changes(a.export_changes())
    _refused_late_as_the_careful_path_refuses(
        monkeypatch, target, data, len(good) if late == "gap" else None
    )


def test_run_heads_get_their_time_stamps_when_asked_for() -> None:
    """A decoded segment keeps the stamps as deltas: the run heads are built
    without them, and :meth:`Segment.head` (used by ``tuples``, ``find`` and the
    check-first import of map ops, whose last writer wins by stamp) adds them up.
    A map write merged through the runs path wins or loses exactly as it does
    change by change."""
    older, newer = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    older_text = CRDTTextHandler(older, "t")
    newer_text = CRDTTextHandler(newer, "t")
    CRDTMapHandler(older, "m").set("k", "older")
    older_text.insert(0, "abc")
    newer.binary_import_changes(older.binary_export_changes())
    for i in range(12):  # runs of typing around a later map write
        newer_text.insert((i * 5) % (len(newer_text) + 1), "xy")
        if i == 6:
            CRDTMapHandler(newer, "m").set("k", "newer")
    data = newer.binary_export_changes(older.version_vector)
    changes = newer.export_changes(older.version_vector)
    assert [c.timestamp for seg in decode_batch(data) for c in map(Change, seg.tuples())] == [
        c.timestamp for c in changes
    ]
    assert len({c.timestamp for c in changes}) > 1
    by_runs = CRDTDocument(peer(3), "d")
    by_runs.binary_import_changes(older.binary_export_changes())
    by_changes = CRDTDocument(peer(3), "d")
    by_changes.binary_import_changes(older.binary_export_changes())
    by_runs.binary_import_changes(data)
    for change in changes:
        by_changes.import_changes([change])
    assert CRDTMapHandler(by_runs, "m").get("k") == "newer"
    assert fingerprint(by_runs) == fingerprint(by_changes)


@pytest.mark.parametrize("seed", range(4))
def test_merged_delete_ranges_of_a_run_are_its_continuations_ranges_coalesced(seed: int) -> None:
    """``Segment.delete_ranges`` merges a deleting run's one-element deletes from
    the columns (stretches found in the order deleted, then joined): the same
    ranges as coalescing each continuation's own, for backspacing and forward
    deleting over text typed in many places (counters far apart)."""
    rng = random.Random(seed)
    doc = CRDTDocument(peer(1))
    text = CRDTTextHandler(doc, "t")
    for i in range(60):  # text typed in many places: counters out of order
        text.insert(rng.randrange(len(text) + 1), "abcdef"[: 1 + i % 6])
    for _ in range(40):
        at = rng.randrange(len(text))
        for _ in range(rng.randrange(1, 9)):
            if rng.random() < 0.5 and at > 0:
                at -= 1
                text.delete(at, 1)  # backspace
            elif at < len(text):
                text.delete(at, 1)  # forward delete
        text.insert(rng.randrange(len(text) + 1), "x")
    checked = 0
    for seg in decode_batch(doc.binary_export_changes()):
        for run in seg.runs:
            if run[2] != DELETING:
                continue
            ranges = [r for change in seg.run_changes(run)[1:] for r in change[4][0][2]]
            assert seg.delete_ranges(run) == coalesce(ranges)
            checked += 1
    assert checked > 10


def test_delete_ranges_from_columns_of_every_shape_agree_with_coalescing() -> None:
    """``Segment.delete_ranges`` takes a run of one continuation, and a falling or
    rising stretch of one-element deletes, without sorting: whatever the
    columns, it gives the coalesced ranges of the continuations when they all
    delete one element of one peer (``deletes_one_each``), else each
    continuation's range in order."""
    from crdt_sync.batch import _delete_deps, decode_segment, encode_segment
    from crdt_sync.codec import Reader

    rng = random.Random(12)
    me, other, third = str(peer(1)), str(peer(2)), str(peer(3))

    def column(shape: str, m: int) -> list[tuple[str, int, int]]:
        base = rng.choice([5, 300, 70000, 1 << 40])
        if shape == "falling":
            return [(other, base + m - 1 - k, 1) for k in range(m)]
        if shape == "rising":
            return [(other, base + k, 1) for k in range(m)]
        if shape == "falling with gaps":
            ctrs = sorted(rng.sample(range(base, base + 3 * m), m), reverse=True)
            return [(other, c, 1) for c in ctrs]
        if shape == "near a stretch":  # top - bottom == m - 1, not in order or repeated
            ctrs = [base + m - 1 - k for k in range(m)]
            a, b = rng.sample(range(m), 2)
            if rng.random() < 0.5:
                ctrs[a], ctrs[b] = ctrs[b], ctrs[a]
            elif 0 < a < m - 1:
                ctrs[a] = ctrs[a + 1]
            return [(other, c, 1) for c in ctrs]
        if shape == "stretches":  # backspacing and forward deleting in a few places
            ctrs = []
            while len(ctrs) < m:
                at, step = base + rng.randrange(3 * m), rng.choice([-1, 1])
                for _ in range(rng.randrange(1, 12)):
                    ctrs.append(at)
                    at += step
            return [(other, c, 1) for c in ctrs[:m]]
        if shape == "shuffled":
            ctrs = rng.sample(range(base, base + 2 * m), m)
            return [(other, c, 1) for c in ctrs]
        if shape == "two peers":
            return [(rng.choice([other, third]), base + k, 1) for k in range(m)]
        return [(other, base + 2 * k, rng.choice([1, 1, 3])) for k in range(m)]  # lengths

    shapes = ["falling", "rising", "falling with gaps", "near a stretch", "stretches", "shuffled"]
    shapes += ["two peers", "lengths"]
    checked = 0
    for _ in range(400):
        shape = rng.choice(shapes)
        m = rng.choice([1, 1, 2, 3, 7, 40]) if shape != "near a stretch" else rng.choice([3, 9])
        ranges = column(shape, m)
        ctr = 10
        head_op = (TEXT_DELETE, "t", ((other, 1, 1),))
        changes = [(me, ctr, 0, ((me, ctr - 1),), (head_op,), 1)]
        for k, (p, c, n) in enumerate(ranges, ctr + 1):
            op = (TEXT_DELETE, "t", ((p, c, n),))
            changes.append((me, k, 0, _delete_deps(me, k, p, c, n), (op,), 1))
        seg = decode_segment(Reader(encode_segment(changes)))
        assert [run[2] for run in seg.runs] == [DELETING]
        run = seg.runs[0]
        one_each = m > 1 and len({p for p, _, _ in ranges}) == 1 and {n for *_, n in ranges} == {1}
        assert seg.delete_ranges(run) == (coalesce(ranges) if one_each else ranges), ranges
        assert seg.deletes_one_each(run) == one_each
        checked += one_each
    assert checked > 100


def test_runs_into_an_unobserved_text_match_an_observed_one_and_roll_back_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A text nobody observes and an observed one (whose delta the checked run
    # path finds after the runs, from the spans and their backup): the same
    # batch gives the same document either way, and a batch whose last change
    # deletes a map op's id is refused by either with nothing changed (rolled
    # back after delete_known raised) and no event.
    a, b = _apart(35, 900)
    CRDTMapHandler(b, "m").set("k", 1)
    map_op = b.export_changes()[-1].counter
    a.import_changes(b.export_changes())
    typed: Any = b.handlers[("t", "text")]
    for i in range(60):  # runs of typing and deleting all over the text
        typed.insert((i * 7) % (len(typed) + 1), "xy")
        typed.delete((i * 11) % len(typed), 1 + i % 3)
    data = b.binary_export_changes(a.version_vector)
    observed, unobserved = (CRDTDocument(a.peer_id, "d") for _ in range(2))
    mirror: list[str] = []
    for copy in (observed, unobserved):
        copy.import_changes(a.export_changes())
        handler = CRDTTextHandler(copy, "t")
        if copy is observed:
            mirror.append(handler.value)
            handler.observe(lambda event: mirror.append(apply_delta(mirror[-1], event.delta)))
    before = fingerprint(unobserved)
    me = str(b.peer_id)
    forged = _forged(b, (TEXT_DELETE, "t", ((me, map_op, 1),)))
    bad = encode_change_tuples([c._data for c in b.export_changes(a.version_vector)] + [forged])
    for copy in (observed, unobserved):
        with monkeypatch.context() as patch:
            results = _spy_checked(patch)
            with pytest.raises(InvalidChangeError):
                copy.binary_import_changes(bad)
        assert results == [False]
        copy.check_invariants()
    assert fingerprint(unobserved) == before == fingerprint(observed)
    assert len(mirror) == 1
    for copy in (observed, unobserved):
        with monkeypatch.context() as patch:
            results = _spy_checked(patch)
            copy.binary_import_changes(data)
        assert results == [True]
    assert fingerprint(observed) == fingerprint(unobserved)
    assert mirror[-1] == observed.get_value("t") == unobserved.get_value("t")
    unobserved.check_invariants()


def _three_writers(seed: int, steps: int) -> tuple[list[CRDTDocument], list[list[Change]]]:
    """Three replicas typing into, and deleting, each other's text (text only,
    so their batches go the checked run path), exchanging now and then; and
    each one's history a fifth of the way through."""
    rng = random.Random(seed)
    docs = [CRDTDocument(peer(i + 1)) for i in range(3)]
    texts = [CRDTTextHandler(d, "t") for d in docs]
    cursors = [0, 0, 0]
    early: list[list[Change]] = []
    for step in range(steps):
        if step == steps // 5:
            early = [d.export_changes() for d in docs]
        k = rng.randrange(3)
        text = texts[k]
        cursors[k] = min(cursors[k], len(text))
        r = rng.random()
        if r < 0.55:
            text.insert(cursors[k], rng.choice("abcdé😀 "))
            cursors[k] += 1
        elif r < 0.75 and cursors[k]:
            text.delete(cursors[k] - 1, 1)  # backspace
            cursors[k] -= 1
        elif r < 0.85 and len(text) > cursors[k]:
            text.delete(cursors[k], 1)  # forward delete
        elif len(text):
            cursors[k] = rng.randrange(len(text) + 1)
        if rng.random() < 0.04:
            j = rng.randrange(3)
            if j != k:
                docs[j].import_changes(docs[k].export_changes(docs[j].version_vector))
    return docs, early


@pytest.mark.parametrize("seed", range(4))
def test_checked_runs_leave_the_frontier_change_by_change_leaves(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Runs whose deps, right origins and deleted elements name other writers'
    # newest ops take those off the frontier (and the checked path does that
    # before it applies each run). Each replica, as it was early on, takes each
    # other one's changes since then by runs, all applied by the checked path,
    # and on a copy change by change: the same frontier, in the same order (the
    # snapshot bytes of the fingerprint hold it too).
    docs, early = _three_writers(seed, 900)
    for t, target in enumerate(docs):
        for source in docs:
            if source is target:
                continue
            fast, slow = CRDTDocument(target.peer_id, "d"), CRDTDocument(target.peer_id, "d")
            for copy in (fast, slow):
                copy.import_changes(early[t])
            changes = source.export_changes(fast.version_vector)
            data = encode_changes(changes)
            runs = [run for seg in decode_batch(data) for run in seg.runs]
            assert len(runs) >= 8 and {run[2] for run in runs} >= {TYPING, DELETING}
            with monkeypatch.context() as patch:
                results = _spy_checked(patch)
                fast.binary_import_changes(data)
            assert results == [True]
            slow.import_changes(changes)
            assert list(fast._frontier.items()) == list(slow._frontier.items())
            assert fingerprint(fast) == fingerprint(slow)
            fast.check_invariants()


@pytest.mark.parametrize("ending", ["typing", "deleting"])
def test_run_heads_that_name_no_other_writer_still_leave_the_frontier_as_their_runs_do(
    monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    # As another encoder may write them: every run head names only its author's
    # previous op, while a typing run's continuations depend on its right
    # origin (another writer's newest op) or a deleting run's continuation on
    # the other writer's element it deletes. Change by change those deps take
    # the op off the frontier; by runs the checked path must do the same.
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    CRDTTextHandler(b, "t").insert(0, "xyz")  # b's newest op: "z"
    a.import_changes(b.export_changes())
    text = CRDTTextHandler(a, "t")
    if ending == "typing":
        for i, ch in enumerate("pqr"):  # before "z", its right origin
            text.insert(2 + i, ch)
    else:
        text.insert(3, "s")  # after "z", then backspaced with it
        text.delete(3, 1)
        text.delete(2, 1)
    for i in range(9):  # runs of a's own, at other places in its text
        at = 0 if i % 2 else len(text)
        text.insert(at, "uv"[i % 2])
        text.insert(at + 1, "w")
    me = str(a.peer_id)
    genuine = [c._data for c in a.export_changes(b.version_vector)]
    heads = {run[9] for seg in decode_batch(encode_change_tuples(genuine)) for run in seg.runs}
    forged = [
        (*t[:3], tuple(d for d in t[3] if d[0] == me), *t[4:]) if t[1] in heads else t
        for t in genuine
    ]
    data = encode_change_tuples(forged)
    runs = [run for seg in decode_batch(data) for run in seg.runs]
    assert {run[9] for run in runs} == heads and len(runs) >= 8
    first = runs[0] if ending == "typing" else runs[1]  # (after the lone "s")
    assert first[2] == (TYPING if ending == "typing" else DELETING) and first[1] - first[0] > 1
    fast, slow = CRDTDocument(peer(3), "d"), CRDTDocument(peer(3), "d")
    for copy in (fast, slow):
        copy.import_changes(b.export_changes())
    assert fast._frontier == {str(b.peer_id): 2}
    with monkeypatch.context() as patch:
        results = _spy_checked(patch)
        fast.binary_import_changes(data)
    assert results == [True]
    slow.import_changes([Change(t) for t in forged])
    assert str(b.peer_id) not in slow._frontier
    assert list(fast._frontier.items()) == list(slow._frontier.items())
    assert fingerprint(fast) == fingerprint(slow)
    assert fast.get_value("t") == a.get_value("t")


def test_a_writer_whose_runs_are_applied_moves_to_the_end_of_the_frontier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The frontier's order is the order of a next local change's deps (and of
    # the snapshot bytes): a writer whose changes arrive is taken off it and
    # put back last, change by change. By runs, its entry before them is
    # replaced the same way, not where it stood.
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    text = CRDTTextHandler(a, "t")
    text.insert(0, "ab")
    CRDTTextHandler(b, "u").insert(0, "xy")
    fast, slow = CRDTDocument(peer(3), "d"), CRDTDocument(peer(3), "d")
    for copy in (fast, slow):
        copy.import_changes(a.export_changes())
        copy.import_changes(b.export_changes())
    assert list(fast._frontier) == [str(a.peer_id), str(b.peer_id)]
    for i in range(10):  # runs of a's, each at another place
        at = 0 if i % 2 else len(text)
        text.insert(at, "c")
        text.insert(at + 1, "d")
    data = a.binary_export_changes(fast.version_vector)
    # The checked path leaves a usual head's dep (its peer's previous change)
    # in place, for the run to replace: a run of its peer came just before it
    # in its segment and put that change last.
    for seg in decode_batch(data):
        assert seg.runs[0][3] is not None
        for before, run in pairwise(seg.runs):
            if run[3] is None:
                assert before[8] == run[8] and before[7] == run[9]
    with monkeypatch.context() as patch:
        results = _spy_checked(patch)
        fast.binary_import_changes(data)
    assert results == [True]
    slow.import_changes(a.export_changes(slow.version_vector))
    assert list(slow._frontier) == [str(b.peer_id), str(a.peer_id)]
    assert list(fast._frontier.items()) == list(slow._frontier.items())
    assert fingerprint(fast) == fingerprint(slow)


@pytest.mark.parametrize("seed", range(3))
def test_coalesced_ranges_cover_exactly_the_elements_of_the_ranges_given(seed: int) -> None:
    # Against the elements themselves: coalesce gives sorted ranges, each one
    # separated from the next by a gap (or of another peer), covering exactly
    # the elements the given ranges name (overlapping, touching, empty, repeated
    # and out of order among them).
    rng = random.Random(seed)
    for _ in range(3000):
        ranges = [
            (rng.choice("pq"), rng.randint(0, 20), rng.randint(0, 5))
            for _ in range(rng.randint(0, 7))
        ]
        out = coalesce(list(ranges))
        assert {(p, c + k) for p, c, n in out for k in range(n)} == {
            (p, c + k) for p, c, n in ranges for k in range(n)
        }
        assert out == sorted(out)
        for (p, c, n), (q, d, _) in pairwise(out):
            assert p != q or c + n < d
        assert all(n > 0 for _, _, n in out) or any(n == 0 for _, _, n in ranges)


# ------------------------------------------------ deltas of an observed text
#
# The checked run path applies every run unobserved, then finds each observed
# text's delta in one walk over its spans now and before (remote._report_edits).
# The reference is the check-first run path, which splices each run into the
# text's delta as it applies it. The two deltas may order an insert and a
# delete at one place differently (both rebuild the text), so they are
# compared by their changed places: each place's position in the text before,
# the characters it removes and the text it inserts must be the same.


def _places(delta: Any) -> list[tuple[int, int, str]]:
    """The changed places of ``delta``: (position before, removed, inserted), with
    the inserts and deletes between two retains gathered into one place."""
    places: list[tuple[int, int, str]] = []
    before = 0
    at = -1
    removed = 0
    inserted: list[str] = []
    for op in delta:
        if isinstance(op, Retain):
            if at >= 0:
                places.append((at, removed, "".join(inserted)))
                at, removed, inserted = -1, 0, []
            before += op.count
            continue
        if at < 0:
            at = before
        if isinstance(op, Delete):
            removed += op.count
            before += op.count
        else:
            assert isinstance(op, Insert)
            inserted.append(op.content)
    if at >= 0:
        places.append((at, removed, "".join(inserted)))
    return places


def _canonical(delta: Any) -> bool:
    """No empty op, no two retains or two deletes or two inserts in a row, no
    retain at the end."""
    kinds = [type(op) for op in delta]
    if delta and isinstance(delta[-1], Retain):
        return False
    if any(a is b for a, b in pairwise(kinds)):
        return False
    return all(op.count if not isinstance(op, Insert) else op.content for op in delta)


def _continued_apart(seed: int) -> tuple[CRDTDocument, CRDTDocument]:
    """An author and a replica that shared a base, then edited apart: the author
    continues its own typing (remote runs that extend spans the replica holds),
    and both delete parts of the base (some elements deleted twice)."""
    rng = random.Random(seed)
    author = CRDTDocument(peer(1))
    texts = [CRDTTextHandler(author, "t"), CRDTTextHandler(author, "u")]
    cursors = [_edit_about(text, rng, 200, 0) for text in texts]
    other = CRDTDocument(peer(2))
    other.import_changes(author.export_changes())
    for name in ("t", "u"):
        text = CRDTTextHandler(other, name)
        _edit_about(text, rng, 250, rng.randrange(len(text) + 1))
    for _ in range(6):  # the two texts in turn, several runs each
        for k, text in enumerate(texts):
            cursors[k] = _edit_about(text, rng, 60, min(cursors[k], len(text)))
    return author, other


def _import_one_way(patch: pytest.MonkeyPatch, way: str, doc: CRDTDocument, data: bytes) -> None:
    """Import ``data`` by the checked run path (``walk``: it must take the batch)
    or by the check-first one (``splices``)."""
    if way == "walk":
        taken = _spy_checked(patch)
    else:
        patch.setattr(remote, "_apply_runs_checked", lambda doc, segments: False)
    doc.binary_import_changes(data)
    if way == "walk":
        assert taken == [True]


@pytest.mark.parametrize("seed", range(12))
def test_the_delta_of_runs_applied_unobserved_is_the_one_their_splices_give(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    author, other = _continued_apart(seed)
    data = author.binary_export_changes(other.version_vector)
    found: dict[str, list[Any]] = {}
    for way in ("walk", "splices"):
        copy = CRDTDocument(other.peer_id, "d")
        copy.import_changes(other.export_changes())
        handlers = [CRDTTextHandler(copy, name) for name in ("t", "u")]
        befores = [handler.value for handler in handlers]
        events: list[list[Any]] = [[], []]
        for handler, seen in zip(handlers, events, strict=True):
            handler.observe(seen.append)
        with monkeypatch.context() as patch:
            _import_one_way(patch, way, copy, data)
        copy.check_invariants()
        found[way] = []
        for handler, before, seen in zip(handlers, befores, events, strict=True):
            assert len(seen) == 1
            delta = seen[0].delta
            assert apply_delta(before, delta) == handler.value
            found[way].append(delta)
    for walked, spliced in zip(found["walk"], found["splices"], strict=True):
        assert _canonical(walked)
        assert _places(walked) == _places(spliced)
        assert walked  # the author's edits changed both texts


class _Compared(list):  # type: ignore[type-arg]
    """A chunk's spans in a backup, counting the comparisons that find them unchanged."""

    equal = 0

    def __eq__(self, other: object) -> bool:
        same = list.__eq__(self, other)
        if same is True:
            _Compared.equal += 1
        return same  # type: ignore[return-value]

    __hash__ = None  # type: ignore[assignment]


def _compared_backup(backup: Any) -> Any:
    return lambda self: [_Compared(spans) for spans in backup(self)]


@pytest.mark.parametrize("seed", range(6))
def test_the_walk_passes_unchanged_chunks_whole_and_finds_the_same_delta(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # A text of many chunks, edited apart in a few places on each side: the
    # walk passes the chunks no run touched whole, and still reports the same
    # changed places as splicing each run would.
    rng = random.Random(seed)
    author = CRDTDocument(peer(1))
    text = CRDTTextHandler(author, "t")
    _edit_about(text, rng, 4000, 0, typed=0.7, backspaced=0.75, forward=0.8)
    other = CRDTDocument(peer(2))
    other.import_changes(author.export_changes())
    mine = CRDTTextHandler(other, "t")
    for _ in range(3):
        _edit_about(mine, rng, 30, rng.randrange(len(mine) + 1), forward=None)
    for _ in range(3):  # many short runs about each of three places
        place = rng.randrange(len(text) + 1)
        for _ in range(120):
            at = min(len(text), max(0, place + rng.randrange(-20, 21)))
            if rng.random() < 0.6 or not at:
                text.insert(at, "xyz"[: rng.randrange(1, 4)])
            else:
                text.delete(at - 1, 1)
    data = author.binary_export_changes(other.version_vector)
    found: dict[str, Any] = {}
    for way in ("walk", "splices"):
        copy = CRDTDocument(other.peer_id, "d")
        copy.import_changes(other.export_changes())
        handler = CRDTTextHandler(copy, "t")
        before = handler.value
        seq = copy._state(("t", "text")).seq
        assert len(seq.chunks) > 20
        seen: list[Any] = []
        handler.observe(seen.append)
        _Compared.equal = 0
        with monkeypatch.context() as patch:
            if way == "walk":
                patch.setattr(type(seq), "backup", _compared_backup(type(seq).backup))
            _import_one_way(patch, way, copy, data)
        if way == "walk":
            # Most chunks untouched by the few places edited, and passed whole.
            assert _Compared.equal > len(seq.chunks) // 2
        copy.check_invariants()
        assert len(seen) == 1
        assert apply_delta(before, seen[0].delta) == handler.value
        found[way] = seen[0].delta
    assert _canonical(found["walk"])
    assert _places(found["walk"]) == _places(found["splices"])
    assert len(_places(found["walk"])) >= 2


def test_deleting_what_an_observed_text_had_deleted_already_reports_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other replica deleted both texts whole; the author's deletes (by runs,
    # the two texts in turn: a run each) change nothing visible there.
    author = CRDTDocument(peer(1))
    texts = [CRDTTextHandler(author, name) for name in ("t", "u")]
    for text in texts:
        text.insert(0, "abcdefghijklmnopqrstuvwxyz")
    other = CRDTDocument(peer(2))
    other.import_changes(author.export_changes())
    others = [CRDTTextHandler(other, name) for name in ("t", "u")]
    for text in others:
        text.delete(0, 26)
    for k in range(10):
        for text in texts:
            text.delete(k, 1)
    seen: list[Any] = []
    for text in others:
        text.observe(seen.append)
    taken = _spy_checked(monkeypatch)
    other.binary_import_changes(author.binary_export_changes(other.version_vector))
    assert taken == [True]
    assert seen == []
    assert [text.value for text in others] == ["", ""]
    other.check_invariants()
