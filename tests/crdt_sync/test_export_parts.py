"""``CRDTDocument.export_changes_in_parts``: the whole history, a part at a time."""

from __future__ import annotations

import pytest

from crdt_sync import CRDTDocument, CRDTTextHandler
from crdt_sync.exceptions import HistoryCompactedError
from crdt_sync.history import FREEZE


def test_the_parts_join_into_export_changes_and_ignore_later_edits() -> None:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    for i in range(2 * FREEZE + 300):
        text.insert(i // 3, "é" if i % 5 else "😀")
    parts = doc.export_changes_in_parts()
    everything = doc.export_changes()
    first = next(parts)
    assert 0 < len(first) <= FREEZE
    # Edits while the parts are read: not in them, even once the tail freezes.
    for _ in range(FREEZE):
        text.insert(0, "x")
    rest = [change for part in parts for change in part]
    assert first + rest == everything
    assert len(everything) == 2 * FREEZE + 300


def test_a_compacted_history_has_no_parts() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "abc")
    doc.compact()
    with pytest.raises(HistoryCompactedError):
        doc.export_changes_in_parts()
