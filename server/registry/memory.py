"""The in-memory registry: documents in a dict, gone when the process exits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from crdt_sync import Change, CRDTDocument, VersionVector

from ..exceptions import DocumentNotFoundError
from .base import (
    Applied,
    CRDTServerRegistry,
    applied_result,
    encoding_of,
    import_and_collect,
    validate_document_id,
)

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
        return applied_result(
            document, changes, applied, refusal, stored, encoding_of(applied, changes, encoded)
        )

    async def remove_document(self, document_id: str) -> bool:
        self._epochs().pop(document_id, None)
        self._snapshots().pop(document_id, None)
        for key in [key for key in self._claims() if key[0] == document_id]:
            del self._claims()[key]
        return self._documents.pop(document_id, None) is not None
