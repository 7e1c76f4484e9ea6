"""The memory registry keeps each document's history as the SQLite one does:
across snapshot merges, and bounded by ``history_retention``."""

from __future__ import annotations

import pytest

from crdt_sync import CRDTDocument, CRDTTextHandler, VersionVector, decode_changes
from server.registry import HistoryPage, InMemoryServerRegistry

pytestmark = pytest.mark.timeout(60)


def text_of(document: CRDTDocument) -> CRDTTextHandler:
    """The document's text "text" (its handler, made on first use)."""
    handler = document.handlers.get(("text", "text"))
    return handler if isinstance(handler, CRDTTextHandler) else CRDTTextHandler(document, "text")


async def all_pages(registry: InMemoryServerRegistry, max_bytes: int) -> list[HistoryPage]:
    pages = [await registry.history_page("notes", 0, max_bytes)]
    while pages[-1].next_cursor:
        pages.append(await registry.history_page("notes", pages[-1].next_cursor, max_bytes))
    return pages


def replayed(pages: list[HistoryPage]) -> tuple[str, int]:
    """The text the pages replay to, and how many changes they hold."""
    base = pages[0].base
    document = CRDTDocument.from_snapshot(base) if base is not None else CRDTDocument()
    text = CRDTTextHandler(document, "text")
    count = 0
    for page in pages:
        for batch in page.batches:
            changes = decode_changes(batch)
            count += len(changes)
            document.import_changes(changes)
    assert document.pending_count == 0, "the history does not replay: changes wait"
    return text.value, count


async def type_into(registry: InMemoryServerRegistry, writer: CRDTDocument, words: int) -> None:
    """One change per word, each applied by its own call (one batch each)."""
    text = text_of(writer)
    for index in range(words):
        before = writer.version_vector
        text.insert(len(text), f"w{index} ")
        await registry.apply_changes("notes", writer.export_changes(before))


@pytest.mark.asyncio
async def test_retention_drops_the_oldest_history_and_says_where_it_starts() -> None:
    registry = InMemoryServerRegistry(history_retention=10)
    await registry.create_document("notes")
    writer = CRDTDocument(document_id="notes")
    await type_into(registry, writer, 400)
    pages = await all_pages(registry, 64)
    assert len(pages) > 1
    base = pages[0].base
    assert base is not None and pages[0].start == base.version_vector
    assert all(page.base is None for page in pages[1:])
    text, count = replayed(pages)
    # At least the newest 10 changes stay, and the history stays bounded.
    assert 10 <= count < 400
    assert text == text_of(writer).value


@pytest.mark.asyncio
async def test_history_after_a_snapshot_merge_starts_there_and_grows() -> None:
    registry = InMemoryServerRegistry()
    await registry.create_document("notes")
    writer = CRDTDocument(document_id="notes")
    await type_into(registry, writer, 5)
    pages = await all_pages(registry, 1 << 20)
    assert pages[0].start == VersionVector() and pages[0].base is None
    assert replayed(pages) == (text_of(writer).value, 5)
    # Another replica uploads its state as a snapshot: no change describes it.
    other = CRDTDocument(document_id="notes")
    other.import_changes(writer.export_changes())
    text_of(other).insert(0, "uploaded ")
    merged, _ = await registry.apply_snapshot("notes", other.take_snapshot())
    assert merged
    writer.import_changes(other.export_changes(writer.version_vector))
    await type_into(registry, writer, 7)
    pages = await all_pages(registry, 1 << 20)
    base = pages[0].base
    assert base is not None and pages[0].start == base.version_vector
    # The history goes on from the merged state: the 7 later changes are served.
    assert replayed(pages) == (text_of(writer).value, 7)


def test_a_negative_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="history_retention"):
        InMemoryServerRegistry(history_retention=-1)


@pytest.mark.asyncio
async def test_the_cli_passes_history_retention_to_the_memory_store() -> None:
    from server.cli import _make_registry, build_parser

    args = build_parser().parse_args(["--memory", "--history-retention", "25"])
    registry = _make_registry(args)
    try:
        assert isinstance(registry, InMemoryServerRegistry) and registry.history_retention == 25
    finally:
        await registry.close()
