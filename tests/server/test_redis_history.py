"""The Redis registry keeps each document's history across compaction, as SQLite does.

Real servers on 127.0.0.1 on a real redis-server; the client is the real
WebSocketClient. A history is checked by replaying it: its base (if any) plus
its changes must give exactly the text the writer had.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_helpers import RedisServer
from server_helpers import Peer, peers

from crdt_sync import CRDTDocument, CRDTTextHandler, decode_changes
from crdt_sync.sync import History
from server import WebSocketServer
from server.registry import HistoryPage, RedisServerRegistry

pytestmark = [pytest.mark.redis, pytest.mark.asyncio, pytest.mark.timeout(60)]


@asynccontextmanager
async def serving(redis_url: str, **options: Any) -> AsyncIterator[WebSocketServer]:
    """A server on its own Redis registry (as one process of several would be)."""
    registry = RedisServerRegistry(redis_url, block=0.2, retry_max=0.2, **options)
    server = WebSocketServer("127.0.0.1", 0, registry)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await registry.close()


def url_of(server: WebSocketServer) -> str:
    return f"ws://127.0.0.1:{server.port}/notes"


def replay(history: History) -> str:
    """The text a fresh replica holds after the history's base and changes."""
    if history.base is not None:
        document = CRDTDocument.from_snapshot(history.base)
    else:
        document = CRDTDocument(document_id="notes")
    text = CRDTTextHandler(document, "text")
    document.import_changes(history.changes)
    assert document.pending_count == 0, "the history does not replay: changes wait"
    return text.value


async def type_words(writer: Peer, words: int) -> None:
    """One change per word, each acknowledged before the next (one stream entry each)."""
    for index in range(words):
        writer.text.insert(len(writer.text.value), f"w{index} ")
        await writer.wait_acknowledged()


async def lengths(redis_url: str) -> tuple[int, int]:
    """(entries left in the stream, batches in the kept history) of "notes"."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return (
            int(await client.xlen("crdt:doc:notes:stream")),
            int(await client.xlen("crdt:doc:notes:history")),
        )
    finally:
        await client.aclose()


async def test_history_survives_compaction_and_is_served_by_another_process(
    redis_server: RedisServer,
) -> None:
    # retention=0: compaction trims every entry its snapshot covers at once.
    async with (
        serving(redis_server.url, snapshot_every=5, retention=0) as first,
        serving(redis_server.url, snapshot_every=5, retention=0) as second,
        peers(url_of(first), 1) as [writer],
    ):
        await type_words(writer, 30)
        await first.registry.create_snapshot("notes")
        expected = writer.text.value
        left, kept = await lengths(redis_server.url)
        assert left < 30 and kept > 0  # trimmed from the stream, kept as history
        async with peers(url_of(second), 1) as [reader]:
            history = await reader.client.fetch_history()
    assert history.complete  # from the document's creation
    assert len(history.changes) == 30
    assert replay(history) == expected


async def test_retention_drops_old_history_and_says_where_it_starts(
    redis_server: RedisServer,
) -> None:
    async with (
        serving(redis_server.url, snapshot_every=5, retention=0, history_retention=10) as server,
        peers(url_of(server), 2) as (writer, reader),
    ):
        await type_words(writer, 60)
        await server.registry.create_snapshot("notes")
        history = await reader.client.fetch_history()
        expected = writer.text.value
    assert not history.complete
    assert history.base is not None
    assert history.start == history.base.version_vector
    assert history.start.get(str(writer.document.peer_id), 0) > 0
    # Kept: at least the newest 10 changes (plus what the stream still holds).
    assert 10 <= len(history.changes) < 60
    assert replay(history) == expected


async def test_history_comes_in_pages(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.connection

    monkeypatch.setattr(server.connection, "HISTORY_PAGE_BYTES", 1)
    async with (
        serving(redis_server.url, snapshot_every=4, retention=0) as running,
        peers(url_of(running), 2) as (writer, reader),
    ):
        await type_words(writer, 12)
        await running.registry.create_snapshot("notes")
        pages: list[int] = []
        original = running.registry.history_page

        async def counted(document_id: str, cursor: int, max_bytes: int) -> HistoryPage:
            page = await original(document_id, cursor, max_bytes)
            pages.append(len(page.batches))
            return page

        monkeypatch.setattr(running.registry, "history_page", counted)
        history = await reader.client.fetch_history()
        expected = writer.text.value
    assert len(pages) == 12 and all(count == 1 for count in pages)
    assert history.complete
    assert replay(history) == expected


async def test_a_snapshot_upload_restarts_the_history_at_the_merged_state(
    redis_server: RedisServer,
) -> None:
    registry = RedisServerRegistry(redis_server.url, block=0.2, retention=0)
    try:
        await registry.create_document("notes")
        writer = CRDTDocument(document_id="notes")
        text = CRDTTextHandler(writer, "text")
        made: list[Any] = []
        writer.on_change(made.append)
        text.insert(0, "typed ")
        await (await registry.apply("notes", list(made))).stored
        made.clear()
        # Another replica, loaded from a snapshot, can only upload its whole state.
        other = CRDTDocument.from_snapshot(writer.take_snapshot())
        CRDTTextHandler(other, "text").insert(6, "uploaded ")
        merged, _ = await registry.apply_snapshot("notes", other.take_snapshot())
        assert merged
        text.insert(0, ">")  # after the upload: in the history as a change
        await (await registry.apply("notes", list(made))).stored
        page = await registry.history_page("notes", 0, 1 << 20)
        assert page.base is not None and page.next_cursor == 0
        assert page.start == page.base.version_vector
        replayed = CRDTDocument.from_snapshot(page.base)
        for batch in page.batches:
            replayed.import_changes(decode_changes(batch))
        assert str(CRDTTextHandler(replayed, "text").value) == ">typed uploaded "
    finally:
        await registry.close()


async def test_the_cli_passes_history_retention_to_the_redis_store(
    redis_server: RedisServer,
) -> None:
    from server.cli import _make_registry, build_parser

    args = build_parser().parse_args(["--redis", redis_server.url, "--history-retention", "7"])
    registry = _make_registry(args)
    try:
        assert isinstance(registry, RedisServerRegistry) and registry.history_retention == 7
    finally:
        await registry.close()
