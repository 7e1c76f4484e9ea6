"""The one-change fast path of ``crdt_sync/changes.py`` (``_one_change``): a batch of
one text insert or delete, what a client sends for each keystroke, decoded straight
from its bytes. It must give exactly what the general decoder gives, and decline
(so the general decoder raises its own error) anything else."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, encode_changes
from crdt_sync.batch import decode_segments
from crdt_sync.changes import (
    FORMAT_VERSION,
    ChangeTuple,
    _batch_reader,
    _one_change,
    decode_change_tuples,
    encode_change_tuples,
)
from crdt_sync.codec import Writer
from crdt_sync.exceptions import DecodeError

BOUND = 1 << 20


def general(data: bytes, max_size: int = BOUND) -> list[ChangeTuple]:
    """The general way: segments, then their tuples (version 2-3); version 1 rows
    (which the fast path never takes: it reads only version 3)."""
    version, r = _batch_reader(data, max_size)
    if version == FORMAT_VERSION:
        assert _one_change(data, max_size) is None
        return decode_change_tuples(data, max_size)
    return [t for segment in decode_segments(r) for t in segment.tuples()]


def outcome(decode: Any, data: bytes, max_size: int = BOUND) -> Any:
    try:
        return ("ok", decode(data, max_size))
    except DecodeError as error:
        return ("error", type(error), str(error))


def keystrokes(seed: int, peers: int = 3, edits: int = 40) -> list[bytes]:
    """One-change batches as clients send them: replicas typing and deleting at
    random places of a shared text, each seeing the others' earlier changes."""
    rng = random.Random(seed)
    docs = [CRDTDocument() for _ in range(peers)]
    texts = [CRDTTextHandler(doc, "text") for doc in docs]
    made: list[list[Change]] = [[] for _ in range(peers)]
    for doc, box in zip(docs, made, strict=True):
        doc.on_change(box.append)
    out: list[bytes] = []
    for k in range(edits):
        s = k % peers
        text = texts[s]
        if len(text) and rng.random() < 0.3:
            text.delete(rng.randrange(len(text)), 1)
        else:
            text.insert(rng.randint(0, len(text)), rng.choice(["a", "é", "ß", "\U0001f600"]))
        change = made[s].pop()
        out.append(encode_changes([change]))
        for other in range(peers):
            if other != s and rng.random() < 0.7:
                docs[other].import_changes(docs[s].export_changes(docs[other].version_vector))
    return out


def test_keystrokes_take_the_fast_path_with_the_general_result() -> None:
    for seed in range(5):
        for data in keystrokes(seed):
            one = _one_change(data, BOUND)
            assert one is not None
            assert [one] == general(data)
            assert decode_change_tuples(data, BOUND) == [one]


def test_large_counters_and_stamps_take_the_fast_path() -> None:
    peer = "00000000-0000-4000-8000-000000000001"
    other = "00000000-0000-4000-8000-000000000002"
    big = (1 << 40) + 5
    change = (
        peer,
        big,
        (1 << 62) + 7,
        ((peer, big - 1), (other, 1 << 35)),
        ((1, "text", (peer, big - 1), (other, 1 << 35), "xyz"),),
        3,
    )
    data = encode_change_tuples([change])
    assert _one_change(data, BOUND) == change
    assert general(data) == [change]


def test_other_batches_decline() -> None:
    peer = "00000000-0000-4000-8000-000000000001"
    insert = (peer, 0, 5, (), ((1, "text", None, None, "a"),), 1)
    typing = (peer, 1, 6, ((peer, 0),), ((1, "text", (peer, 0), None, "b"),), 1)
    map_set = (peer, 0, 5, (), ((7, "m", "k", 1),), 1)
    named = ("not-a-uuid", 0, 5, (), ((1, "text", None, None, "a"),), 1)
    for changes in ([insert, typing], [map_set], [named]):
        data = encode_change_tuples(changes)
        assert _one_change(data, BOUND) is None
        assert decode_change_tuples(data, BOUND) == general(data)
    compressed = encode_change_tuples([insert], compress=True)
    assert _one_change(compressed, BOUND) is None
    assert decode_change_tuples(compressed, BOUND) == [insert]
    # Over the bound: the general way's error.
    plain = encode_change_tuples([insert])
    assert _one_change(plain, len(plain) - 7) is None
    with pytest.raises(DecodeError, match="exceed"):
        decode_change_tuples(plain, len(plain) - 7)
    # A bytearray or a memoryview goes the general way too.
    assert _one_change(bytearray(plain), BOUND) is None
    assert decode_change_tuples(memoryview(plain), BOUND) == [insert]


def test_a_negative_stamp_gets_the_general_error() -> None:
    peer = "00000000-0000-4000-8000-000000000001"
    data = bytearray(encode_change_tuples([(peer, 0, 5, (), ((1, "text", None, None, "a"),), 1)]))
    at = data.index(b"text") + 6  # after the name, the change count and its kind
    data[at : at + 8] = (-1).to_bytes(8, "little", signed=True)
    assert _one_change(bytes(data), BOUND) is None
    with pytest.raises(DecodeError, match="negative time stamp"):
        decode_change_tuples(bytes(data), BOUND)


def test_a_counter_past_the_bound_gets_the_general_error() -> None:
    peer = "00000000-0000-4000-8000-000000000001"
    ctr = (1 << 53) - 1
    data = encode_change_tuples(
        [(peer, ctr, 5, ((peer, ctr - 1),), ((1, "text", (peer, ctr - 1), None, "ab"),), 2)]
    )
    assert _one_change(data, BOUND) is None
    assert outcome(decode_change_tuples, data) == outcome(general, data)
    assert outcome(general, data)[0] == "error"


SEEDS = [data for seed in range(3) for data in keystrokes(seed, edits=20)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], head: int | None = None) -> bytes:
    """One of ``seeds`` with a few bytes changed, inserted, removed or cut off
    (often in its first ``head`` bytes, when given)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        anywhere = st.integers(0, len(data))
        at = draw(anywhere if head is None else st.one_of(st.integers(0, head), anywhere))
        if how == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SEEDS))
def test_mutated_batches_decode_as_the_general_way_does(data: bytes) -> None:
    one = _one_change(data, BOUND)
    expected = outcome(general, data)
    if one is not None:
        assert expected == ("ok", [one])
    got = outcome(decode_change_tuples, data)
    assert got[0] == expected[0]
    if got[0] == "ok":
        assert got == expected
    else:
        assert got[1] is expected[1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_after_the_header(tail: bytes) -> None:
    data = b"CRDC\x03\x00\x01" + tail
    one = _one_change(data, BOUND)
    expected = outcome(general, data)
    if one is not None:
        assert expected == ("ok", [one])
    assert outcome(decode_change_tuples, data)[0] == expected[0]


@pytest.mark.slow
@pytest.mark.timeout(900)
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SEEDS))
def test_mutated_batches_long_run(data: bytes) -> None:
    test_mutated_batches_decode_as_the_general_way_does.hypothesis.inner_test(data)  # type: ignore[attr-defined]


# ------------------------------------------------ forged batches, one field at a time

PEER_RAW = bytes(range(16))
OTHER_RAW = bytes(range(16, 32))


def varint(value: int) -> bytes:
    w = Writer()
    w.uint(value)
    return w.getvalue()


def forged(
    row: bytes,
    *,
    peer_table: bytes | None = None,
    names: bytes = b"\x01\x04text",
    stamp: int = 5,
) -> bytes:
    """A version 3 batch of one segment holding one head row ``row``, with the
    tables and stamp given (default: two raw-UUID peers, the name "text")."""
    if peer_table is None:
        peer_table = b"\x02\x00" + PEER_RAW + b"\x00" + OTHER_RAW
    return (
        b"CRDC\x03\x00\x01"
        + peer_table
        + names
        + b"\x01\x00"
        + stamp.to_bytes(8, "little", signed=True)
        + b"\x00\x00\x00"
        + row
    )


def insert_row(
    ctr: int, left: bytes = b"\x00", right: bytes = b"\x00", text: bytes = b"\x01a"
) -> bytes:
    # flags 0 (deps listed), peer 0, the counter, no deps, one op: insert of name 0.
    return b"\x00\x00" + varint(ctr) + b"\x00\x01\x01\x00" + left + right + text


def delete_row(length: int, tail: bytes = b"") -> bytes:
    # One op: a delete of one range (peer 1, counter 3, ``length``).
    return b"\x00\x00\x05\x00\x01\x02\x00\x01\x01\x03" + varint(length) + tail


def agree(data: bytes) -> tuple[bool, Any]:
    """Whether the fast path took ``data``, and the general outcome (checked equal)."""
    one = _one_change(data, BOUND)
    expected = outcome(general, data)
    if one is not None:
        assert expected == ("ok", [one])
    return one is not None, expected


def test_forged_rows_the_fast_path_takes_or_declines_as_the_general_way_reads_them() -> None:
    cases = [
        # (taken, general outcome) for a valid row and its invalid neighbour.
        (insert_row(1, left=b"\x01"), insert_row(0, left=b"\x01")),  # left origin: the op before
        (insert_row(1, right=b"\x01"), insert_row(0, right=b"\x01")),  # right origin likewise
        (
            b"\x04\x00\x01\x01\x01\x00\x00\x00\x01a",
            b"\x04\x00\x00\x01\x01\x00\x00\x00\x01a",
        ),  # chained
        (insert_row(4, text=b"\x01a"), insert_row(4, text=b"\x00")),  # an empty insert
        (delete_row(1 << 24), delete_row((1 << 24) + 1)),  # a range's length bound
        (delete_row(2), delete_row(2, b"\x00")),  # a byte after the delete
        (delete_row(0x90), delete_row(0)),  # an empty range
        (insert_row(3), insert_row(3).replace(b"\x01\x01\x00", b"\x01\x01\x01", 1)),  # name 1
        (insert_row((1 << 53) - 1), insert_row(1 << 53)),  # the counter bound
        (insert_row(7, left=b"\x02\x01\x09"), insert_row(7, left=b"\x02\x02\x09")),  # peer index
    ]
    for valid, invalid in cases:
        taken, expected = agree(forged(valid))
        assert taken and expected[0] == "ok", valid
        taken, expected = agree(forged(invalid))
        assert not taken and expected[0] == "error", invalid
    # A delete of no range is what the general way reads too.
    taken, expected = agree(forged(b"\x00\x00\x07\x00\x01\x02\x00\x00"))
    assert taken and expected[0] == "ok"
    taken, expected = agree(forged(insert_row(3), stamp=-1))
    assert not taken and expected[0] == "error"


def test_forged_lengths_in_long_form_the_fast_path_must_not_read_as_one_byte() -> None:
    # A deps count of two bytes (0x80 0x00: zero deps) followed by 128 deps the
    # count's one byte would claim: the general way reads no deps, then the
    # first "dep" as the op count, and fails.
    deps = b"\x00\x01" + b"\x00\x01\x00\x05" * 63 + b"\x00\x01"
    row = b"\x00\x00\x07\x80" + deps + b"\x01\x01\x00\x00\x00\x01a"
    taken, expected = agree(forged(row))
    assert not taken and expected[0] == "error"
    # A delete's range count likewise (0x80 0x00: no ranges), then 128 ranges.
    ranges = b"\x00\x03\x01" + b"\x01\x03\x01" * 127
    row = b"\x00\x00\x07\x00\x01\x02\x00\x80" + ranges
    taken, expected = agree(forged(row))
    assert not taken and expected[0] == "error"
    # A peer count of two bytes (0x80 0x00: no peers) followed by 128 raw peers.
    table = b"\x80" + b"".join(b"\x00" + bytes([i]) * 16 for i in range(128))
    taken, expected = agree(forged(insert_row(3), peer_table=table))
    assert not taken and expected[0] == "error"
    # A name length of two bytes (128), the name ending in what a one-byte length
    # (0x80) would take for the one-change count, before a zero change count.
    name = b"a" * 127 + b"\x01"
    data = forged(insert_row(3), names=b"\x01\x80\x01" + name)
    data = data.replace(name + b"\x01\x00", name + b"\x00", 1)
    taken, expected = agree(data)
    assert not taken and expected[0] == "error"
    # The longest one-byte name is taken.
    taken, expected = agree(forged(insert_row(3), names=b"\x01\x7f" + b"n" * 127))
    assert taken and expected[0] == "ok"
