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
from array import array
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
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
    VersionVector,
)
from crdt_sync.codec import ZLIB_LEVEL, Reader, Writer
from crdt_sync.exceptions import DecodeError
from crdt_sync.snapshot_codec import (
    SnapshotCapture,
    TextColumns,
    _all_below,
    _decode,
    _zero_at,
)

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
    assert data[6:] == zlib.compress(zlib.decompress(data[6:]), ZLIB_LEVEL)


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


# ------------------------------------------------------- decoding text columns


def text_part(
    spans: list[tuple[int, int, int, int]],
    lefts: Sequence[tuple[int, int]] = (),
    rights: Sequence[tuple[int, int]] = (),
    text: str = "",
) -> bytes:
    """A text part from raw columns: ``(flags, peer index, counter, length)`` per span."""
    w = Writer()
    w.uint(len(spans))
    w.uint(len(lefts))
    w.uint(len(rights))
    w.raw(bytes(f for f, _, _, _ in spans))
    w.raw(array("I", [p for _, p, _, _ in spans]).tobytes())
    w.raw(array("Q", [c for _, _, c, _ in spans]).tobytes())
    w.raw(array("I", [n for _, _, _, n in spans]).tobytes())
    w.raw(array("I", [p for p, _ in lefts]).tobytes())
    w.raw(array("Q", [c for _, c in lefts]).tobytes())
    w.raw(array("I", [p for p, _ in rights]).tobytes())
    w.raw(array("Q", [c for _, c in rights]).tobytes())
    w.str(text)
    return w.getvalue()


def columns(part: bytes, npeers: int = 2, counter: int = 1 << 53) -> TextColumns:
    peers = [f"p{i}" for i in range(npeers)]
    return TextColumns(Reader(part), peers, VersionVector(dict.fromkeys(peers, counter)))


DEL, LNONE, LPREV, RNONE = 1, 2, 4, 8


@pytest.mark.parametrize(
    ("spans", "npeers", "message"),
    [
        ([(DEL | LNONE | RNONE, 2, 0, 1)], 2, "peer index out of range"),
        ([(DEL | LNONE | RNONE, 1, 0, 1)], 1, "peer index out of range"),
        ([(DEL | LNONE | RNONE, 300, 0, 1)], 300, "peer index out of range"),
        ([(DEL | LNONE | RNONE, 256, 0, 1)], 256, "peer index out of range"),
        ([(DEL | LNONE | RNONE, 1 << 16, 0, 1)], 1 << 16, "peer index out of range"),
        ([(DEL | LNONE | RNONE, 0, 5, 0)], 2, "empty span"),
        ([(DEL | LNONE | RNONE, 0, 1 << 53, 1)], 2, "counter out of range"),
        ([(DEL | LNONE | RNONE, 0, 1 << 63, 1)], 2, "counter out of range"),
        ([(32 | DEL | LNONE | RNONE, 0, 0, 1)], 2, "unknown span flags"),
        ([(255, 0, 0, 1)], 2, "unknown span flags"),
        ([(DEL | LNONE | RNONE, 0, 3, 1), (DEL | LPREV | RNONE, 1, 0, 1)], 2, "before counter 0"),
    ],
)
def test_bad_text_columns_are_refused_with_their_error(
    spans: list[tuple[int, int, int, int]], npeers: int, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        columns(text_part(spans), npeers)


def test_text_columns_at_the_edges_of_the_range_checks_decode() -> None:
    # The largest counter, peer indexes just below the bounds, counters whose
    # zero bytes straddle two values (a search for eight zero bytes finds
    # them unaligned), a zero counter without a previous-left flag.
    spans = [
        (DEL | LNONE | RNONE, 0, (1 << 53) - 1, 1),
        (DEL | LNONE | RNONE, 1, 1 << 8, 1),
        (DEL | LNONE | RNONE, 1, 1 << 48, 1),
        (DEL | LNONE | RNONE, 1, 0, 1),
        (DEL | LPREV | RNONE, 1, 1 << 16, 1),
    ]
    for npeers in (2, 255, 256, 257, 300, 1 << 16):
        last = npeers - 1
        decoded = columns(text_part([*spans, (DEL | LNONE | RNONE, last, 7, 1)]), npeers)
        assert list(decoded.peer) == [0, 1, 1, 1, 1, last]
    assert [s[1] for s in decoded.spans()] == [c for _, _, c, _ in spans] + [7]


@given(
    width=st.sampled_from([4, 8]),
    values=st.lists(
        st.one_of(
            st.integers(0, 3),
            st.sampled_from([1 << k for k in range(0, 64, 4)]),
            st.integers(0, (1 << 64) - 1),
        ),
        max_size=12,
    ),
    bound=st.one_of(
        st.integers(0, 600),
        st.sampled_from([1 << k for k in range(64)]),
        st.integers(0, 1 << 64),
    ),
)
def test_the_byte_plane_checks_agree_with_int_comparisons(
    width: int, values: list[int], bound: int
) -> None:
    values = [v & ((1 << (8 * width)) - 1) for v in values]
    col = array("I" if width == 4 else "Q", values)
    raw = b"".join(v.to_bytes(width, "little") for v in values)
    assert _all_below(raw, width, bound, col) == all(v < bound for v in values)
    assert _zero_at(raw, width) == [i for i, v in enumerate(values) if v == 0]
