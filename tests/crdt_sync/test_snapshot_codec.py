"""The snapshot codec's bytes: the encoder's layout is fixed (``docs/encoding.md``).

The encoder is tuned for speed (one pass per span, the payload compressed piece
by piece); these tests pin what it writes to what the straightforward encoder
of 94a0399 wrote, on a document whose every input is fixed (peer ids, document
id, clock), and check the paths a normal document never takes.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import zlib
from types import SimpleNamespace
from typing import Any

import pytest
from network import document_values, exchange

import crdt_sync.ids as ids_module
from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    PeerId,
    Snapshot,
    UndoManager,
)
from crdt_sync.snapshot_codec import SnapshotCapture, _decode

#: SHA-256 of the inflated payload of :func:`fixed_document`'s snapshot, as the
#: encoder of 94a0399 (before the one-pass encoder) wrote it.
PAYLOAD_SHA256 = "00ddf745ed57a6b16fc320bee25b4df4e03cfa4b284257f4705e5e22944abef6"


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def fixed_document(monkeypatch: pytest.MonkeyPatch) -> CRDTDocument:
    """Three peers editing a text, a list and a map concurrently, synced in rounds.

    The wall clock is replaced by a counter, so every stamp is fixed.
    """
    ticks = itertools.count(1_700_000_000_000)
    monkeypatch.setattr(ids_module, "time", SimpleNamespace(time_ns=lambda: next(ticks) * 10**6))
    rng = random.Random(20261130)
    docs = [CRDTDocument(peer(n), "fixed-document") for n in (1, 2, 3)]
    texts = [CRDTTextHandler(doc, "text") for doc in docs]
    lists = [CRDTListHandler(doc, "list") for doc in docs]
    maps = [CRDTMapHandler(doc, "meta") for doc in docs]
    undo = UndoManager(docs[0], [texts[0]], capture_timeout_ms=0)
    for _ in range(12):
        for i in range(3):
            text, lst = texts[i], lists[i]
            for _ in range(rng.randrange(1, 6)):
                roll = rng.random()
                if roll < 0.55 or not len(text):
                    pos = rng.randrange(len(text) + 1)
                    text.insert(pos, rng.choice(["a", "bc", "d\u00e9f", "\U0001f600", "ghij "]))
                elif roll < 0.85:
                    pos = rng.randrange(len(text))
                    text.delete(pos, rng.randrange(1, min(4, len(text) - pos) + 1))
                elif roll < 0.95:
                    lst.insert(rng.randrange(len(lst) + 1), rng.randrange(100))
                else:
                    maps[i].set(rng.choice("xyz"), rng.randrange(100))
            if i == 0 and rng.random() < 0.3:
                undo.undo()
        exchange(*docs)
    assert len({texts[i].value for i in range(3)}) == 1
    return docs[0]


def payload(snapshot: Snapshot) -> bytes:
    return zlib.decompress(snapshot.to_bytes()[6:])


def test_the_payload_is_the_one_the_previous_encoder_wrote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = fixed_document(monkeypatch)
    data = payload(doc.take_snapshot())
    assert hashlib.sha256(data).hexdigest() == PAYLOAD_SHA256
    # A capture taken for a later encoding writes the same bytes.
    assert payload(SnapshotCapture(doc).encode()) == data


def test_the_compressed_stream_is_the_payload_deflated_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compressing piece by piece gives the bytes of one compress() call.
    data = fixed_document(monkeypatch).take_snapshot().to_bytes()
    assert data[6:] == zlib.compress(zlib.decompress(data[6:]), 4)


def test_an_origin_of_a_peer_not_in_the_version_gets_a_new_peer_index() -> None:
    # A document's origins always name peers of its version vector (which is
    # indexed first); one that does not is given the next index on first use.
    doc = CRDTDocument(peer(1), "doc")
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "abc")
    text.insert(1, "XY")
    capture = SnapshotCapture(doc)
    name, kind, spans = capture._states[0]
    stranger = str(peer(9))
    forged: list[list[Any]] = [list(s) for s in spans]
    forged[-1][5] = (stranger, 4)  # left origin
    forged[1][6] = (stranger, 7)  # right origin
    capture._states[0] = (name, kind, forged)
    decoded = _decode(capture.encode().to_bytes())
    columns = decoded.states[(name, kind)]
    assert columns.peers == [str(peer(1)), stranger]
    assert [s[:7] for s in columns.spans()] == [s[:7] for s in forged]


def test_a_round_trip_keeps_the_fixed_document(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = fixed_document(monkeypatch)
    loaded = CRDTDocument.from_snapshot(Snapshot.from_bytes(doc.take_snapshot().to_bytes()))
    assert document_values(loaded) == document_values(doc)
    assert payload(loaded.take_snapshot()) == payload(doc.take_snapshot())
