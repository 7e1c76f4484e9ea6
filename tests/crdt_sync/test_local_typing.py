"""Typing on at the cursor (``Sequence._extend_at_cursor``) does what the general insert does."""

from __future__ import annotations

import itertools
import random
import zlib
from types import SimpleNamespace
from typing import Any

import pytest
from network import exchange

import crdt_sync.ids as ids_module
from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId, UndoManager
from crdt_sync.sequence import Sequence, X


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def session(seed: int) -> tuple[Any, ...]:
    """Two peers typing runs, deleting, moving the cursor, syncing and undoing.

    Everything is fixed by ``seed`` (the clock is patched by the caller), so two
    runs give the same bytes unless the inserts behave differently.
    """
    rng = random.Random(seed)
    docs = [CRDTDocument(peer(n), "typing") for n in (1, 2)]
    texts = [CRDTTextHandler(doc, "t") for doc in docs]
    undo = UndoManager(docs[0], [texts[0]], capture_timeout_ms=0)
    cursors = [0, 0]
    for _ in range(60):
        i = rng.randrange(2)
        text, doc = texts[i], docs[i]
        roll = rng.random()
        if roll < 0.5:
            # A run of typing, a character (or a few) per transaction or several in one.
            pos = min(cursors[i], len(text))
            together = rng.random() < 0.3
            with doc.transaction() if together else _nothing():
                for _ in range(rng.randrange(1, 12)):
                    chunk = rng.choice(["a", "b", "cd", "\u00e9", " "])
                    text.insert(pos, chunk)
                    pos += len(chunk)
            cursors[i] = pos
        elif roll < 0.7 and len(text):
            # Backspace, a delete forward at the cursor, or one somewhere else.
            pos = min(cursors[i], len(text))
            roll = rng.random()
            if pos and roll < 0.5:
                count = min(pos, rng.randrange(1, 4))
                text.delete(pos - count, count)
                cursors[i] = pos - count
            elif pos < len(text) and roll < 0.8:
                text.delete(pos, min(len(text) - pos, rng.randrange(1, 4)))
            else:
                start = rng.randrange(len(text))
                text.delete(start, min(len(text) - start, rng.randrange(1, 4)))
        elif roll < 0.85:
            cursors[i] = rng.randrange(len(text) + 1)
        elif roll < 0.95:
            exchange(*docs)
        else:
            undo.undo()
    for doc in docs:
        doc.check_invariants()
    return (
        [text.value for text in texts],
        [doc.binary_export_changes() for doc in docs],
        [zlib.decompress(doc.take_snapshot().to_bytes()[6:]) for doc in docs],
    )


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("seed", range(12))
def test_typing_on_at_the_cursor_gives_what_the_general_insert_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = itertools.count(1_700_000_000_000)
    clock = SimpleNamespace(time_ns=lambda: next(ticks) * 10**6)
    monkeypatch.setattr(ids_module, "time", clock)
    taken = 0
    fast = Sequence._extend_at_cursor

    def counted(self: Sequence, *args: Any) -> Any:
        nonlocal taken
        result = fast(self, *args)
        taken += result is not None
        return result

    monkeypatch.setattr(Sequence, "_extend_at_cursor", counted)
    with_fast = session(seed)
    assert taken > 10  # the fast path was exercised
    ticks = itertools.count(1_700_000_000_000)
    monkeypatch.setattr(Sequence, "_extend_at_cursor", lambda self, *args: None)
    assert session(seed) == with_fast


def typed(tombstone_after: bool) -> Sequence:
    """``a X b`` typed by ``p`` (X between a and b, so X's right origin is b), with
    b deleted remotely if ``tombstone_after``, and the cursor set on X by hand."""
    seq = Sequence("", keep_deleted_content=False)
    seq.local_insert(0, "p", 0, "a")
    seq.local_insert(1, "p", 1, "b")
    seq.local_insert(1, "p", 2, "X")
    if tombstone_after:
        seq.set_deleted("p", 1, 1, True, False)
    seq._cur = (0, 1, 1)  # X: chunk 0, span 1, one visible element before it
    seq.check_invariants()
    return seq


@pytest.mark.parametrize("tombstone_after", [False, True])
@pytest.mark.parametrize("where", ["after X", "inside X's run", "at the start"])
def test_the_cursor_path_declines_what_the_general_insert_does_otherwise(
    tombstone_after: bool, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Typing right after X grows X only if the raw element after it is the
    # visible b (its right origin); after b's tombstone a new span is needed.
    pos, ctr = {"after X": (2, 3), "inside X's run": (1, 3), "at the start": (0, 3)}[where]
    fast = typed(tombstone_after)
    origins = fast.local_insert(pos, "p", ctr, "Y")
    monkeypatch.setattr(Sequence, "_extend_at_cursor", lambda self, *args: None)
    general = typed(tombstone_after)
    assert general.local_insert(pos, "p", ctr, "Y") == origins
    assert [s[:7] for s in fast.spans()] == [s[:7] for s in general.spans()]
    assert fast._cur == general._cur
    fast.check_invariants()
    grown = [s for s in fast.spans() if s[X] == "XY"]
    assert bool(grown) == (where == "after X" and not tombstone_after)
