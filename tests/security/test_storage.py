"""The SQLite store: one server per file, nothing adopted silently, damage reported."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from server import (
    ForeignStorageError,
    SqliteServerRegistry,
    StorageCorruptError,
    StorageInUseError,
)
from server.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.mark.asyncio
async def test_a_second_registry_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite3"
    first = SqliteServerRegistry(path)
    await first.create_document("notes")
    with pytest.raises(StorageInUseError, match="in use by another"):
        SqliteServerRegistry(path)
    await first.close()
    # Once the first is closed, the file is free again and nothing was lost.
    again = SqliteServerRegistry(path)
    assert await again.document_ids() == ["notes"]
    await again.close()


def test_a_second_server_on_the_same_file_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    path = tmp_path / "documents.sqlite3"

    async def hold() -> SqliteServerRegistry:
        return SqliteServerRegistry(path)

    loop = asyncio.new_event_loop()
    try:
        held = loop.run_until_complete(hold())
        status = main(["--db", str(path), "--port", "0", "--no-auth"])
        assert status == 1
        assert "in use by another crdt-sync-server" in capsys.readouterr().err
        loop.run_until_complete(held.close())
    finally:
        loop.close()


def test_an_empty_file_is_reported_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite3"
    path.write_bytes(b"")
    with pytest.raises(StorageCorruptError, match="empty file"):
        SqliteServerRegistry(path)
    assert path.stat().st_size == 0  # untouched


def test_a_foreign_sqlite_file_is_reported_not_adopted(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).execute("PRAGMA user_version = 7").connection.close()
    with pytest.raises(ForeignStorageError, match="did not create"):
        SqliteServerRegistry(empty)
    other = tmp_path / "other.sqlite3"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE notes (x)")
    connection.commit()
    connection.close()
    with pytest.raises(ForeignStorageError):
        SqliteServerRegistry(other)


@pytest.mark.asyncio
async def test_the_quick_check_says_what_it_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="server.registry.sqlite"):
        registry = SqliteServerRegistry(tmp_path / "documents.sqlite3")
        await registry.close()
    assert any("quick_check found no damage" in r.getMessage() for r in caplog.records)
