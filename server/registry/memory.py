"""The in-memory registry: documents in a dict, gone when the process exits.

It keeps each document's history as the SQLite registry does (the batches
applied, as they were encoded for the relay), for ``HistoryRequest``:
complete from the document's creation, or from the state where it was last
replaced or merged with an uploaded snapshot (no change describes that
state), or from where ``history_retention`` dropped the oldest batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTError,
    DecodeError,
    Snapshot,
    VersionVector,
    decode_changes,
    encode_changes,
)

from ..exceptions import DocumentNotFoundError
from .base import (
    Applied,
    CRDTServerRegistry,
    HistoryPage,
    applied_result,
    encoding_of,
    import_and_collect,
    validate_document_id,
)

__all__ = ["InMemoryServerRegistry"]

_log = logging.getLogger(__name__)

#: Changes per batch when a stored document's own history is kept.
_HISTORY_CHUNK = 256

#: The oldest batches are dropped once the history holds this many changes
#: more than ``history_retention`` (or ``history_retention`` more, if larger):
#: a drop replays the dropped batches onto the base and snapshots it, a cost of
#: the document's size, so it is paid once per that many changes, not per change.
_RETENTION_SLACK = 128


@dataclass(slots=True)
class _History:
    """A document's kept history: the state it starts at, then batches in order."""

    base: Snapshot | None = None  # None: the document's creation
    # (sequence number, change count, encoded batch); numbers start at 1.
    batches: list[tuple[int, int, bytes]] = field(default_factory=list)
    changes: int = 0
    next_seq: int = 1


class InMemoryServerRegistry(CRDTServerRegistry):
    """Documents in a dict: fast, and gone when the process exits.

    "Durable" here means "in this process's memory"; use
    :class:`SqliteServerRegistry` to survive restarts.

    Args:
        history_retention: how many of a document's newest changes its kept
            history holds at least (None: all). Once it holds more than that
            (by a margin), its oldest whole batches are dropped and the state
            before the first kept one becomes the history's base, as in
            :class:`SqliteServerRegistry`.
    """

    runs_outside_tasks = True

    def __init__(self, *, history_retention: int | None = None) -> None:
        super().__init__()
        if history_retention is not None and history_retention < 0:
            raise ValueError("history_retention must be at least 0 (or None: keep all)")
        self.history_retention = history_retention
        self._documents: dict[str, CRDTDocument] = {}
        self._histories: dict[str, _History] = {}

    async def get_document(self, document_id: str) -> CRDTDocument | None:
        return self._documents.get(document_id)

    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        """Store ``document``; its kept history restarts from what it holds (all of
        its changes when it has them from its creation, else its current state)."""
        validate_document_id(document_id)
        self._documents[document_id] = document
        history = _History()
        if document.can_export(VersionVector()):
            changes = document.export_changes()
            for start in range(0, len(changes), _HISTORY_CHUNK):
                batch = changes[start : start + _HISTORY_CHUNK]
                history.batches.append((history.next_seq, len(batch), encode_changes(batch)))
                history.next_seq += 1
            history.changes = len(changes)
        else:
            history.base = document.take_snapshot()
        self._histories[document_id] = history

    async def document_ids(self) -> list[str]:
        return list(self._documents)

    async def has_document(self, document_id: str) -> bool:
        return document_id in self._documents

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        document = self._documents.get(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(document, changes)
        # Stored as soon as it is in the document: this process's memory is the store.
        stored: asyncio.Future[VersionVector] = asyncio.get_running_loop().create_future()
        stored.set_result(document.version_vector)
        result = applied_result(
            document, changes, applied, refusal, stored, encoding_of(applied, changes, encoded)
        )
        if applied:
            self._keep(document_id, len(applied), result.encoded)
        return result

    def _keep(self, document_id: str, count: int, encoded: bytes) -> None:
        history = self._histories.setdefault(document_id, _History())
        history.batches.append((history.next_seq, count, encoded))
        history.next_seq += 1
        history.changes += count
        retention = self.history_retention
        if retention is not None and history.changes > retention + max(_RETENTION_SLACK, retention):
            _drop_oldest(document_id, history, retention)

    async def history_page(self, document_id: str, cursor: int, max_bytes: int) -> HistoryPage:
        """A page of the kept history: the batches as they were applied (encoded
        once, for the relay), from the sequence number ``cursor`` (0: the start)."""
        if document_id not in self._documents:
            raise DocumentNotFoundError(document_id)
        history = self._histories.get(document_id) or _History()
        batches = history.batches
        first = batches[0][0] if batches else history.next_seq
        position = max(0, cursor - first) if cursor else 0
        out: list[bytes] = []
        size = 0
        while position < len(batches) and (not out or size < max_bytes):
            out.append(batches[position][2])
            size += len(batches[position][2])
            position += 1
        next_cursor = batches[position][0] if position < len(batches) else 0
        base = history.base
        if base is None:
            return HistoryPage(VersionVector(), None, tuple(out), next_cursor)
        return HistoryPage(
            base.version_vector, base if cursor == 0 else None, tuple(out), next_cursor
        )

    async def remove_document(self, document_id: str) -> bool:
        self._epochs().pop(document_id, None)
        self._snapshots().pop(document_id, None)
        self._histories.pop(document_id, None)
        for key in [key for key in self._claims() if key[0] == document_id]:
            del self._claims()[key]
        return self._documents.pop(document_id, None) is not None


def _drop_oldest(document_id: str, history: _History, retention: int) -> None:
    """Drop the oldest whole batches while at least ``retention`` changes stay;
    the state before the first kept batch becomes the base."""
    excess = history.changes - retention
    dropped = 0
    while dropped < len(history.batches) and history.batches[dropped][1] <= excess:
        excess -= history.batches[dropped][1]
        dropped += 1
    if not dropped:
        return
    if history.base is None:
        replica = CRDTDocument(document_id=document_id)
    else:
        replica = CRDTDocument.from_snapshot(history.base)
    try:
        for _seq, _count, encoded in history.batches[:dropped]:
            replica.import_changes(decode_changes(encoded))
    except (DecodeError, CRDTError) as error:
        # Nothing is dropped that the base would not hold.
        _log.error(
            "history of %r kept whole: its oldest batches do not replay: %s", document_id, error
        )
        return
    history.base = replica.take_snapshot()
    history.changes -= sum(count for _seq, count, _data in history.batches[:dropped])
    del history.batches[:dropped]
