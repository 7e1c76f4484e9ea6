"""The server's kept history, fetched on demand (HistoryRequest / HistoryResponse).

Real servers on 127.0.0.1 with real SQLite files; the client is the real
WebSocketClient. A history is checked by replaying it: its base (if any) plus
its changes must give exactly the text the writer had.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from server_helpers import Peer, peers

from crdt_sync import CRDTDocument, CRDTTextHandler, VersionVector
from crdt_sync.sync import History, Role
from server import InMemoryServerRegistry, WebSocketServer
from server.auth import TokenAuthority
from server.registry import CRDTServerRegistry, HistoryPage, SqliteServerRegistry

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def serving(
    registry: CRDTServerRegistry, auth: TokenAuthority | None = None
) -> AsyncIterator[WebSocketServer]:
    server = WebSocketServer("127.0.0.1", 0, registry, auth=auth)
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
    """One change per word, each acknowledged before the next (one log row each)."""
    for index in range(words):
        writer.text.insert(len(writer.text.value), f"w{index} ")
        await writer.wait_acknowledged()


def history_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM history").fetchone()[0])


@pytest.mark.asyncio
async def test_history_survives_compaction_and_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with (
        serving(SqliteServerRegistry(path, snapshot_every=5)) as server,
        peers(url_of(server), 1) as (writer,),
    ):
        await type_words(writer, 40)
        expected = writer.text.value
    # Compaction moved the covered log rows into the history.
    assert history_rows(path) > 0
    # A new server on the same file: the document loads from its snapshot, and
    # a replica that joins now receives a snapshot, not the history.
    async with (
        serving(SqliteServerRegistry(path, snapshot_every=5)) as server,
        peers(url_of(server), 1) as (joiner,),
    ):
        assert joiner.text.value == expected
        assert not joiner.document.can_export(VersionVector())
        history = await joiner.client.fetch_history()
    assert history.complete and history.base is None
    assert replay(history) == expected


@pytest.mark.asyncio
async def test_retention_drops_old_history_and_says_where_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path, snapshot_every=5, history_retention=10)
    async with serving(registry) as server, peers(url_of(server), 2) as (writer, reader):
        await type_words(writer, 60)
        history = await reader.client.fetch_history()
        expected = writer.text.value
    assert not history.complete
    assert history.base is not None
    assert history.start == history.base.version_vector
    assert history.start.get(str(writer.document.peer_id), 0) > 0
    # Kept: at least the newest 10 changes (plus the log since the last snapshot).
    assert 10 <= len(history.changes) < 60
    assert history_rows(path) >= 10
    assert replay(history) == expected


@pytest.mark.asyncio
async def test_history_comes_in_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.connection

    monkeypatch.setattr(server.connection, "HISTORY_PAGE_BYTES", 1)
    path = tmp_path / "store.sqlite3"
    async with (
        serving(SqliteServerRegistry(path, snapshot_every=4)) as running,
        peers(url_of(running), 2) as (writer, reader),
    ):
        await type_words(writer, 12)
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


@pytest.mark.asyncio
async def test_memory_registry_serves_the_history_it_holds() -> None:
    async with (
        serving(InMemoryServerRegistry()) as server,
        peers(url_of(server), 2) as (writer, reader),
    ):
        await type_words(writer, 15)
        history = await reader.client.fetch_history()
        assert history.complete
        assert replay(history) == writer.text.value


@pytest.mark.asyncio
async def test_a_read_only_connection_may_fetch_the_history(tmp_path: Path) -> None:
    authority = TokenAuthority.generate()
    path = tmp_path / "store.sqlite3"
    async with (
        serving(SqliteServerRegistry(path, snapshot_every=5), authority) as server,
        peers(url_of(server), 1, auth_token=authority.issue("notes")) as (writer,),
    ):
        await type_words(writer, 20)
        async with peers(url_of(server), 1, auth_token=authority.issue("notes", Role.READ)) as (
            reader,
        ):
            assert reader.client.role is Role.READ
            history = await reader.client.fetch_history()
        assert replay(history) == writer.text.value


@pytest.mark.asyncio
async def test_fetching_while_disconnected_is_a_connection_error() -> None:
    client = Peer("ws://127.0.0.1:9/notes").client
    with pytest.raises(ConnectionError):
        await client.fetch_history()
    client.close()


@pytest.mark.asyncio
async def test_a_format_2_file_is_upgraded_and_its_history_starts_at_its_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path)
    writer = CRDTDocument()
    text = CRDTTextHandler(writer, "text")
    await registry.create_document("notes")
    text.insert(0, "old words")
    await registry.apply_changes("notes", writer.export_changes())
    await registry.create_snapshot("notes")
    await registry.close()
    with sqlite3.connect(path) as connection:  # what a format-2 server wrote
        connection.execute("DROP TABLE history")
        connection.execute("DROP TABLE history_bases")
        connection.execute("PRAGMA user_version = 2")
    registry = SqliteServerRegistry(path)
    try:
        page = await registry.history_page("notes", 0, 1 << 20)
        assert page.base is not None and page.start == writer.version_vector
        assert page.batches == () and page.next_cursor == 0
    finally:
        await registry.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3


@pytest.mark.asyncio
async def test_the_cli_passes_history_retention_to_the_sqlite_store(tmp_path: Path) -> None:
    from server.cli import DEFAULT_HISTORY_RETENTION, _make_registry, build_parser

    parser = build_parser()
    default = parser.parse_args(["--db", str(tmp_path / "a.sqlite3")])
    assert default.history_retention == DEFAULT_HISTORY_RETENTION
    args = parser.parse_args(["--db", str(tmp_path / "b.sqlite3"), "--history-retention", "0"])
    registry = _make_registry(args)
    try:
        assert isinstance(registry, SqliteServerRegistry) and registry.history_retention == 0
    finally:
        await registry.close()
    with pytest.raises(SystemExit):
        parser.parse_args(["--history-retention", "-1"])
