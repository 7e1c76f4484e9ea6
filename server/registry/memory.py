"""The in-memory registry: documents in a dict, gone when the process exits."""

from __future__ import annotations

from collections.abc import Sequence

from crdt_sync import Change, CRDTDocument

from ..exceptions import ChangesRejectedError, DocumentNotFoundError
from .base import CRDTServerRegistry, import_and_collect, validate_document_id

__all__ = ["InMemoryServerRegistry"]


class InMemoryServerRegistry(CRDTServerRegistry):
    """Documents in a dict: fast, and gone when the process exits.

    "Durable" here means "in this process's memory"; use
    :class:`SqliteServerRegistry` to survive restarts.
    """

    def __init__(self) -> None:
        super().__init__()
        self._documents: dict[str, CRDTDocument] = {}

    async def get_document(self, document_id: str) -> CRDTDocument | None:
        return self._documents.get(document_id)

    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        validate_document_id(document_id)
        self._documents[document_id] = document

    async def document_ids(self) -> list[str]:
        return list(self._documents)

    async def has_document(self, document_id: str) -> bool:
        return document_id in self._documents

    async def apply_changes(self, document_id: str, changes: Sequence[Change]) -> list[Change]:
        document = self._documents.get(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(document, changes)
        if refusal is not None:
            raise ChangesRejectedError(refusal, applied) from refusal
        return applied

    async def remove_document(self, document_id: str) -> bool:
        self._epochs().pop(document_id, None)
        self._snapshots().pop(document_id, None)
        return self._documents.pop(document_id, None) is not None
