"""Decoders on hostile bytes: truncations, bit flips, random bytes.

Decoding may only raise :class:`DecodeError`. Importing hostile bytes into a
document either applies something well-formed (the invariants still hold) or
raises a typed error and leaves the document exactly as it was: same values,
version, pending buffer and snapshot bytes.

Snapshots and large change batches are zlib-compressed, where almost every flip
just breaks the checksum, so the structure-aware cases mutate the *inflated*
body and compress it again, reaching the parsers behind the compression.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import cache
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from network import exchange, fingerprint

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTError,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    DecodeError,
    PeerId,
    Snapshot,
    VersionVector,
    decode_changes,
    encode_changes,
)
from crdt_sync.changes import MAX_INFLATED
from crdt_sync.snapshot import _decode as snapshot_decode

HEADER = 6  # magic (4), format version, flags


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


FIXED_NOW_NS = 1_700_000_000_000_000_000


@cache
def sources() -> tuple[CRDTDocument, CRDTDocument]:
    """``base`` holds the first half of the edits, ``full`` all of them (never mutated).

    The clock is frozen while they are built, so their bytes (and so every
    mutation below, and any counterexample) are the same on every run.
    """
    with mock.patch("crdt_sync.ids.time.time_ns", return_value=FIXED_NOW_NS):
        return _build_sources()


def _build_sources() -> tuple[CRDTDocument, CRDTDocument]:
    full, other = CRDTDocument(peer(1), "doc"), CRDTDocument(peer(2), "doc")
    text, lst, meta = (
        CRDTTextHandler(full, "t"),
        CRDTListHandler(full, "l"),
        CRDTMapHandler(full, "m"),
    )
    text.insert(0, "h\u00e9llo \U0001f600 e\u0301")
    lst.extend([1, "\U0001d538", {"k": [None, True, 2.5]}])
    meta.set("\U0001f511", "v")
    exchange(full, other)
    ot = CRDTTextHandler(other, "t")
    ot.insert(3, "XYZ")
    ot.delete(0, 2)
    with full.transaction():
        text.insert(len(text), "!")
        lst.move(0, 2)
        lst.update(1, "u")
        lst.delete(0)
        meta.delete("\U0001f511")
    exchange(full, other)
    base = CRDTDocument(peer(3), "doc")
    CRDTTextHandler(base, "t")
    base.import_changes(full.export_changes()[:2])
    return base, full


def change_bytes(compress: bool) -> bytes:
    base, full = sources()
    return encode_changes(full.export_changes(base.version_vector), compress=compress)


def snapshot_payload() -> bytes:
    data = sources()[1].take_snapshot().to_bytes()
    return zlib.decompress(data[HEADER:])


def recompress(header: bytes, payload: bytes) -> bytes:
    return header[:5] + b"\x01" + zlib.compress(payload)


def only_decode_errors(decode: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return decode(data)
    except DecodeError:
        return None


def import_or_unchanged(doc: CRDTDocument, apply: Callable[[], Any]) -> None:
    """Apply hostile input: success, or a typed error that left ``doc`` untouched."""
    before = fingerprint(doc)
    try:
        apply()
    except CRDTError:
        assert fingerprint(doc) == before, "a refused import changed the document"
    doc.check_invariants()


def fresh_base() -> CRDTDocument:
    base = sources()[0]
    return CRDTDocument.from_snapshot(Snapshot.from_bytes(base.take_snapshot().to_bytes()))


def flip(data: bytes, position: int, bit: int) -> bytes:
    i = position % len(data)
    return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]


# ------------------------------------------------------------ all or nothing


def test_a_batch_with_an_invalid_change_applies_nothing() -> None:
    sender = CRDTDocument(peer(1))
    CRDTMapHandler(sender, "m").set("k", "applied?")
    valid = sender.export_changes()[0]
    # Well-formed bytes, but the insert's left origin exists nowhere.
    bogus = Change((str(peer(2)), 0, valid.timestamp, (), ((1, "t", ("ghost", 5), None, "z"),), 1))
    data = encode_changes([valid, bogus])
    doc = CRDTDocument(peer(3))
    before = fingerprint(doc)
    with pytest.raises(CRDTError):
        doc.binary_import_changes(data)
    assert fingerprint(doc) == before, "no half-applied import"


# ------------------------------------------------------- every single bit flip


def test_every_single_bit_flip_of_a_change_batch_is_refused_cleanly_or_applies() -> None:
    data = change_bytes(False)
    for position in range(len(data)):
        for bit in range(8):
            import_changes_into_base(flip(data, position, bit))


@pytest.mark.slow
def test_every_single_bit_flip_of_a_snapshot_body_is_refused_cleanly_or_loads() -> None:
    header = sources()[1].take_snapshot().to_bytes()[:HEADER]
    payload = snapshot_payload()
    for position in range(len(payload)):
        for bit in range(8):
            data = recompress(header, flip(payload, position, bit))
            if only_decode_errors(Snapshot.from_bytes, data) is None:
                continue
            try:
                CRDTDocument.from_snapshot(Snapshot.from_bytes(data)).check_invariants()
            except CRDTError:
                pass
            import_snapshot_into_base(data)


def import_changes_into_base(data: bytes) -> None:
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.binary_import_changes(data))


def import_snapshot_into_base(data: bytes) -> None:
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.import_snapshot(Snapshot.from_bytes(data)))


def test_a_list_delete_of_a_move_position_is_refused_cleanly() -> None:
    """A delete naming the id of a move made earlier in the same change (core bug 6)."""
    a, b = CRDTDocument(peer(1)), CRDTDocument(peer(2))
    CRDTListHandler(a, "l").extend(["x", "y"])
    lb = CRDTListHandler(b, "l")
    b.import_changes(a.export_changes())
    p, c = str(a.peer_id), a.version_vector[str(a.peer_id)]
    ts = a.export_changes()[-1].timestamp + 1
    move, delete = 5, 4  # op kinds (changes.py)
    ops = ((move, "l", (p, 0), None, None), (delete, "l", ((p, c, (ts, p, c)),)))
    bogus = Change((p, c, ts, ((p, c - 1),), ops, 2))
    before = fingerprint(b)
    with pytest.raises(CRDTError):
        b.binary_import_changes(encode_changes([bogus]))
    assert fingerprint(b) == before and lb.value == ["x", "y"]


def flipped_snapshot(position: int, bit: int) -> bytes:
    """The fixture's snapshot with one bit of its (inflated) body flipped, recompressed."""
    header = sources()[1].take_snapshot().to_bytes()[:HEADER]
    return recompress(header, flip(snapshot_payload(), position, bit))


def test_a_snapshot_with_overlapping_spans_is_refused_cleanly() -> None:
    """Core bug 7 (fixed): two text spans claimed the same ids, corrupting the sequence."""
    data = flipped_snapshot(116, 0)
    with pytest.raises(DecodeError, match="overlap"):
        Snapshot.from_bytes(data)
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.import_snapshot(Snapshot.from_bytes(data)))


def test_a_snapshot_whose_span_claims_ids_beyond_its_version_is_refused() -> None:
    """Core bug 8 (fixed): one span claimed 8 million ids while the vector says 19.

    Without a bound a few bytes make a replica spin for hours (the length is a
    varint); such a snapshot is malformed and must be a DecodeError.
    """
    data = flipped_snapshot(174, 7)
    with pytest.raises(DecodeError, match=r"overlap|beyond"):
        CRDTDocument.from_snapshot(Snapshot.from_bytes(data))
    doc = fresh_base()
    before = fingerprint(doc)
    with pytest.raises(DecodeError):
        doc.import_snapshot(Snapshot.from_bytes(data))
    assert fingerprint(doc) == before


def test_a_snapshot_span_whose_origin_is_inside_itself_is_refused_cleanly() -> None:
    """Core bug 9 (fixed): the refused merge had already integrated part of the snapshot."""
    data = flipped_snapshot(192, 0)
    spans = snapshot_decode(data).states[("t", "text")].spans()
    xyz = next(s for s in spans if s[3] == "XYZ")
    assert xyz[5] == (str(peer(2)), 2), "the flip no longer points XYZ's origin into itself"
    doc = fresh_base()
    with pytest.raises(DecodeError):
        doc.import_snapshot(Snapshot.from_bytes(data))
    import_or_unchanged(doc, lambda: doc.import_snapshot(Snapshot.from_bytes(data)))


# ------------------------------------------------------------------ truncations


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_of_changes_is_a_decode_error(compress: bool) -> None:
    data = change_bytes(compress)
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            decode_changes(data[:end])


def test_every_truncation_of_a_snapshot_is_a_decode_error() -> None:
    data = sources()[1].take_snapshot().to_bytes()
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            Snapshot.from_bytes(data[:end])
    payload = snapshot_payload()
    for end in range(len(payload)):
        with pytest.raises(DecodeError):
            Snapshot.from_bytes(recompress(data[:HEADER], payload[:end]))


def test_every_truncation_of_a_version_vector_is_a_decode_error() -> None:
    data = sources()[1].version_vector.to_bytes()
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            VersionVector.from_bytes(data[:end])


def test_a_truncated_import_leaves_the_document_as_it_was() -> None:
    data = change_bytes(False)
    doc = fresh_base()
    before = fingerprint(doc)
    for end in range(0, len(data), 7):
        with pytest.raises(DecodeError):
            doc.binary_import_changes(data[:end])
    assert fingerprint(doc) == before


# -------------------------------------------------------------------- bit flips

flips = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=4)


def mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    for position, bit in changes:
        data = flip(data, position, bit)
    return data


@given(flips, st.booleans())
def test_flipped_changes_only_raise_decode_errors_and_never_half_apply(
    changes: list[tuple[int, int]], compress: bool
) -> None:
    data = mutate(change_bytes(compress), changes)
    only_decode_errors(decode_changes, data)
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.binary_import_changes(data))


@given(flips)
def test_flipped_snapshots_only_raise_decode_errors(changes: list[tuple[int, int]]) -> None:
    data = sources()[1].take_snapshot().to_bytes()
    only_decode_errors(Snapshot.from_bytes, mutate(data, changes))


@given(flips)
def test_snapshots_with_flipped_bodies_load_or_fail_cleanly(changes: list[tuple[int, int]]) -> None:
    header = sources()[1].take_snapshot().to_bytes()[:HEADER]
    data = recompress(header, mutate(snapshot_payload(), changes))
    snap = only_decode_errors(Snapshot.from_bytes, data)
    if snap is None:
        return
    try:
        loaded = CRDTDocument.from_snapshot(Snapshot.from_bytes(data))
    except CRDTError:
        pass
    else:
        loaded.check_invariants()
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.import_snapshot(Snapshot.from_bytes(data)))


@given(flips)
def test_flipped_version_vectors_only_raise_decode_errors(changes: list[tuple[int, int]]) -> None:
    only_decode_errors(
        VersionVector.from_bytes, mutate(sources()[1].version_vector.to_bytes(), changes)
    )


# ---------------------------------------------------------------- random bytes


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    only_decode_errors(decode_changes, data)
    only_decode_errors(Snapshot.from_bytes, data)
    only_decode_errors(VersionVector.from_bytes, data)


@given(st.binary(max_size=300))
def test_random_bodies_behind_valid_headers_only_raise_decode_errors(body: bytes) -> None:
    for magic in (b"CRDC", b"CRDS"):
        for flags in (b"\x00", b"\x01"):
            data = magic + b"\x01" + flags + (zlib.compress(body) if flags == b"\x01" else body)
            only_decode_errors(decode_changes, data)
            only_decode_errors(Snapshot.from_bytes, data)
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.binary_import_changes(b"CRDC\x01\x00" + body))


def test_huge_claimed_counts_fail_fast_without_allocating() -> None:
    # A count of 2**24 items in a few bytes must be refused, not allocated.
    for body in (b"\xff\xff\xff\x07", b"\x01\x01a\x00\xff\xff\xff\x07"):
        with pytest.raises(DecodeError):
            decode_changes(b"CRDC\x01\x00" + body)
        with pytest.raises(DecodeError):
            Snapshot.from_bytes(b"CRDS\x01\x00\x03doc" + body)


def test_a_compressed_bomb_is_refused() -> None:
    # Just over the inflate bound, a megabyte of zeros at a time (about 64 KB compressed).
    packer = zlib.compressobj(1)
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk) for _ in range((MAX_INFLATED >> 20) + 1)]
    bomb = b"".join(parts) + packer.flush()
    with pytest.raises(DecodeError):
        decode_changes(b"CRDC\x01\x01" + bomb)
    with pytest.raises(DecodeError):
        Snapshot.from_bytes(b"CRDS\x01\x01" + bomb)


def test_the_caller_bounds_what_a_batch_or_snapshot_may_inflate_to() -> None:
    """A server passes its message size limit: the change format's own zlib layer
    (and the snapshot's) must not inflate past it."""
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "abc" * 5000)
    packed = doc.binary_export_changes()
    plain = encode_changes(doc.export_changes(), compress=False)
    snap = doc.take_snapshot().to_bytes()
    assert packed[5] == 1 and plain[5] == 0 and len(packed) < 1000
    for data in (packed, plain):
        with pytest.raises(DecodeError, match=r"beyond 10000|limit of 10000"):
            decode_changes(data, max_size=10_000)
        before = fingerprint(doc)
        with pytest.raises(DecodeError):
            doc.binary_import_changes(data, max_size=10_000)
        assert fingerprint(doc) == before
        assert len(decode_changes(data, max_size=20_000)) == 1
        fresh = CRDTDocument()
        assert fresh.binary_import_changes(data, max_size=20_000) == 1
    with pytest.raises(DecodeError):
        Snapshot.from_bytes(snap, max_size=1_000)
    assert Snapshot.from_bytes(snap, max_size=100_000).version_vector == doc.version_vector
    with pytest.raises(ValueError):
        decode_changes(packed, max_size=-1)


@pytest.mark.slow
# 20,000 examples take 6-7 minutes on a busy 2-core machine: the suite-wide
# 120 s guard against hangs would cut the run short, not find a hang.
@pytest.mark.timeout(900)
@settings(parent=settings.get_profile("slow"), max_examples=20_000)
@given(flips, st.booleans())
def test_many_flipped_change_batches(changes: list[tuple[int, int]], compress: bool) -> None:
    data = mutate(change_bytes(compress), changes)
    only_decode_errors(decode_changes, data)
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.binary_import_changes(data))


@pytest.mark.slow
# 20,000 examples take 6-7 minutes on a busy 2-core machine: the suite-wide
# 120 s guard against hangs would cut the run short, not find a hang.
@pytest.mark.timeout(900)
@settings(parent=settings.get_profile("slow"), max_examples=20_000)
@given(flips)
def test_many_snapshots_with_flipped_bodies(changes: list[tuple[int, int]]) -> None:
    header = sources()[1].take_snapshot().to_bytes()[:HEADER]
    data = recompress(header, mutate(snapshot_payload(), changes))
    if only_decode_errors(Snapshot.from_bytes, data) is None:
        return
    doc = fresh_base()
    import_or_unchanged(doc, lambda: doc.import_snapshot(Snapshot.from_bytes(data)))
