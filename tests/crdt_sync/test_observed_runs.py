"""The delta an observed text reports for a batch imported by runs
(``crdt_sync/remote.py``: the checked run path applies every run unobserved,
then ``_report_edits`` finds each observed text's delta in one walk over its
spans now and before).

The reference is the check-first run path, which splices each run into the
text's delta as it applies it. The two deltas may order an insert and a
delete at one place differently (both rebuild the text), so they are
compared by their changed places: each place's position in the text before,
the characters it removes and the text it inserts must be the same.
"""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import pytest

from crdt_sync import CRDTDocument, CRDTTextHandler, remote
from crdt_sync.events import Delete, Insert, Retain, apply_delta

PEERS = [f"00000000-0000-4000-8000-00000000000{k}" for k in range(1, 4)]


def _edit(text: CRDTTextHandler, rng: random.Random, steps: int, cursor: int) -> int:
    """Type, backspace, forward delete and jump about; returns the cursor."""
    for _ in range(steps):
        r = rng.random()
        if r < 0.6:
            text.insert(cursor, rng.choice("abcdé😀 "))
            cursor += 1
        elif r < 0.8 and cursor:
            text.delete(cursor - 1, 1)
            cursor -= 1
        elif r < 0.85 and cursor < len(text):
            text.delete(cursor, min(3, len(text) - cursor))
        else:
            cursor = rng.randrange(len(text) + 1)
    return cursor


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


def _taken(patch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each import took the checked run path (its return values)."""
    taken: list[bool] = []
    checked = remote._apply_runs_checked

    def spy(doc: CRDTDocument, segments: Any) -> bool:
        taken.append(checked(doc, segments))
        return taken[-1]

    patch.setattr(remote, "_apply_runs_checked", spy)
    return taken


def _replicas(seed: int) -> tuple[CRDTDocument, CRDTDocument]:
    """An author and a replica that shared a base, then edited apart: the author
    continues its own typing (remote runs that extend spans the replica holds),
    and both delete parts of the base (some elements deleted twice)."""
    rng = random.Random(seed)
    author = CRDTDocument(PEERS[0])
    texts = [CRDTTextHandler(author, "t"), CRDTTextHandler(author, "u")]
    cursors = [_edit(text, rng, 200, 0) for text in texts]
    other = CRDTDocument(PEERS[1])
    other.import_changes(author.export_changes())
    for name in ("t", "u"):
        text = CRDTTextHandler(other, name)
        _edit(text, rng, 250, rng.randrange(len(text) + 1))
    for _ in range(6):  # the two texts in turn, several runs each
        for k, text in enumerate(texts):
            cursors[k] = _edit(text, rng, 60, min(cursors[k], len(text)))
    return author, other


@pytest.mark.parametrize("seed", range(12))
def test_the_delta_of_runs_applied_unobserved_is_the_one_their_splices_give(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    author, other = _replicas(seed)
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
            if way == "walk":
                taken = _taken(patch)
            else:
                patch.setattr(remote, "_apply_runs_checked", lambda doc, segments: False)
            copy.binary_import_changes(data)
        if way == "walk":
            assert taken == [True]
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


def test_deleting_what_an_observed_text_had_deleted_already_reports_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The other replica deleted both texts whole; the author's deletes (by runs,
    # the two texts in turn: a run each) change nothing visible there.
    author = CRDTDocument(PEERS[0])
    texts = [CRDTTextHandler(author, name) for name in ("t", "u")]
    for text in texts:
        text.insert(0, "abcdefghijklmnopqrstuvwxyz")
    other = CRDTDocument(PEERS[1])
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
    taken = _taken(monkeypatch)
    other.binary_import_changes(author.binary_export_changes(other.version_vector))
    assert taken == [True]
    assert seen == []
    assert [text.value for text in others] == ["", ""]
    other.check_invariants()
