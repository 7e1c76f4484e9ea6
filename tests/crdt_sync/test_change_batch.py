"""Decoded change batches (``crdt_sync/change_batch.py``) and their imports by runs."""

from __future__ import annotations

import random
from typing import Any

import pytest
from network import document_values, session

from crdt_sync import (
    Change,
    ChangeBatch,
    CRDTDocument,
    CRDTTextHandler,
    DecodeError,
    PeerId,
    decode_change_batch,
    decode_changes,
    encode_changes,
)
from crdt_sync.changes import encode_change_tuples_v1


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def _batches() -> dict[str, tuple[bytes, list[Change]]]:
    """One peer's history as every kind of batch."""
    docs = session(1, 300)
    changes = docs[0].export_changes()
    one = changes[:1]
    return {
        "compressed": (encode_changes(changes), changes),
        "uncompressed": (encode_changes(changes, compress=False), changes),
        "version 1": (encode_change_tuples_v1([c.data for c in changes]), changes),
        "one change": (encode_changes(one), one),
        "empty": (encode_changes([]), []),
    }


@pytest.mark.parametrize("form", list(_batches()))
def test_a_decoded_batch_is_the_sequence_of_changes_decode_changes_gives(form: str) -> None:
    data, changes = _batches()[form]
    batch = decode_change_batch(data)
    assert isinstance(batch, ChangeBatch) and batch.encoded == data
    expected = tuple(decode_changes(data))
    assert expected == tuple(changes)
    assert len(batch) == len(expected) and bool(batch) == bool(expected)
    assert batch == expected and expected == batch and batch == decode_change_batch(data)
    assert batch != (*expected[:-1], None) if expected else batch != (None,)
    assert list(batch) == list(expected) and hash(batch) == hash(expected)
    assert batch[1:3] == expected[1:3] and batch[::-1] == expected[::-1]
    if expected:
        assert batch[0] == expected[0] and batch[-1] == expected[-1]
    assert batch.tuples() == [c.data for c in expected]
    # Read without building: the peers in the order they first appear, the op count.
    assert batch.peers() == list(dict.fromkeys(c.peer for c in expected))
    assert batch.op_count() == sum(len(c.ops) for c in expected)
    assert repr(batch) == f"ChangeBatch({len(expected)} changes)"
    assert (batch.segments is None) == (form == "version 1" and bool(expected))


def test_bad_bytes_fail_with_a_decode_error_exactly_as_decode_changes_does() -> None:
    data = encode_changes(session(2, 200)[1].export_changes(), compress=False)
    rng = random.Random(9)
    outcomes = []
    for _ in range(600):
        i = rng.randrange(len(data))
        variant = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
        if rng.random() < 0.2:
            variant = variant[: rng.randrange(len(variant))]
        try:
            expected: Any = tuple(decode_changes(variant))
        except DecodeError as error:
            expected = ("error", str(error))
        try:
            got: Any = decode_change_batch(variant)
        except DecodeError as error:
            got = ("error", str(error))
        assert got == expected
        outcomes.append(isinstance(expected, tuple) and expected[:1] == ("error",))
    assert any(outcomes) and not all(outcomes)


@pytest.mark.parametrize("seed", range(4))
def test_importing_a_batch_agrees_with_importing_its_changes(seed: int) -> None:
    # Into replicas that hold part of it (duplicates), that miss some of what it
    # depends on (it waits, then applies), and that hold concurrent edits.
    docs = session(seed)
    rng = random.Random(seed)
    source = docs[0]
    everything = source.export_changes()
    for target in docs[1:]:
        cut = rng.randrange(len(everything))
        for part in (everything[cut:], everything[:cut], everything):
            by_list, by_batch = CRDTDocument(target.peer_id), CRDTDocument(target.peer_id)
            for doc in (by_list, by_batch):
                doc.import_changes(target.export_changes())
            data = encode_changes(part)
            assert by_list.import_changes(decode_changes(data)) == by_batch.import_changes(
                decode_change_batch(data)
            )
            assert by_batch.pending_count == by_list.pending_count
            assert by_batch.version_vector == by_list.version_vector
            assert document_values(by_batch) == document_values(by_list)
            assert by_batch.export_changes() == by_list.export_changes()


def test_a_batch_is_imported_by_runs_and_its_changes_built_only_when_read(
    changes_built: list[int], segment_imports: list[int]
) -> None:
    a = session(5)[0]
    history = a.export_changes()
    b = CRDTDocument(peer(9))  # (its text observed through a handler of its own)
    b.import_changes(history[: len(history) // 3])
    data = a.binary_export_changes(b.version_vector)
    batch = decode_change_batch(data)
    expected = tuple(decode_changes(data))
    events: list[Any] = []
    b.on_update(events.append)
    CRDTTextHandler(b, "t").observe(lambda event: None)
    built = changes_built[0]
    assert b.import_changes(batch) == len(expected) > 100
    assert segment_imports == [len(batch.segments or ())] and events and not events[-1].local
    assert changes_built[0] == built, "no change is built for subscribers that do not read them"
    # Read, they are the changes of the batch, built once (the batch's own).
    assert events[-1].changes == expected
    assert changes_built[0] == built + len(expected)
    assert events[-1].changes is batch.built()
    assert changes_built[0] == built + len(expected)


def test_an_update_event_of_changes_imported_one_by_one_builds_them_when_read(
    changes_built: list[int],
) -> None:
    a, b = session(6)[:2]
    changes = a.export_changes(b.version_vector)
    events: list[Any] = []
    b.on_update(events.append)
    built = changes_built[0]
    b.import_changes(changes)
    assert changes_built[0] == built and events
    assert events[-1].changes == tuple(changes)
    assert changes_built[0] == built + len(changes)
    assert "UpdateEvent(changes=(" in repr(events[-1])
