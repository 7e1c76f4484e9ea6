"""SQLite compaction off the event loop, and only as often as the log outweighs the snapshot."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import string
import threading
from pathlib import Path

import pytest

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, Snapshot, encode_changes
from crdt_sync.snapshot import SnapshotCapture
from server.registry import SqliteServerRegistry

pytestmark = pytest.mark.timeout(30)


class Writer:
    def __init__(self) -> None:
        self.doc = CRDTDocument()
        self.text = CRDTTextHandler(self.doc, "text")
        self.changes: list[Change] = []
        self.doc.on_change(self.changes.append)

    def insert(self, at: int, chars: str) -> list[Change]:
        self.text.insert(at, chars)
        out = list(self.changes)
        self.changes.clear()
        return out


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.mark.asyncio
async def test_snapshots_are_encoded_on_the_writer_thread_not_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded_on: list[threading.Thread] = []
    original = SnapshotCapture.encode

    def spy(self: SnapshotCapture) -> Snapshot:
        encoded_on.append(threading.current_thread())
        return original(self)

    monkeypatch.setattr(SnapshotCapture, "encode", spy)
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path, snapshot_every=3)
    stored: list[Snapshot] = []
    registry.add_snapshot_listener(lambda _, snapshot: stored.append(snapshot))
    try:
        await registry.create_document("notes")
        writer = Writer()
        for index in range(3):
            await registry.apply_changes("notes", writer.insert(index, "x"))
        await registry.flush()
        loop_thread = threading.current_thread()
        assert encoded_on and all(thread is not loop_thread for thread in encoded_on)
        assert len(stored) == 1
        assert stored[0].version_vector == writer.doc.version_vector
        assert await registry.get_latest_snapshot("notes") == stored[0]
        assert count_rows(path, "changes") == 0
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_changes_queued_ahead_of_a_snapshot_commit_without_waiting_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The snapshot's encoding is held until the change ahead of it is acknowledged:
    # if both shared one transaction, this would never finish.
    release = threading.Event()
    original = SnapshotCapture.encode

    def held(self: SnapshotCapture) -> Snapshot:
        if not release.wait(timeout=10):
            raise TimeoutError("the change ahead of the snapshot was never acknowledged")
        return original(self)

    monkeypatch.setattr(SnapshotCapture, "encode", held)
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3", snapshot_every=2)
    try:
        await registry.create_document("notes")
        writer = Writer()
        await registry.apply_changes("notes", writer.insert(0, "a"))
        result = await registry.apply("notes", writer.insert(1, "b"))  # queues the snapshot
        durable = await asyncio.wait_for(result.stored, timeout=10)
        assert durable == writer.doc.version_vector
        release.set()
        snapshot = await registry.create_snapshot("notes")
        assert snapshot.version_vector == writer.doc.version_vector
    finally:
        release.set()
        await registry.close()


@pytest.mark.asyncio
async def test_compaction_waits_until_the_log_outweighs_the_last_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path, snapshot_every=1)
    snapshots: list[Snapshot] = []
    registry.add_snapshot_listener(lambda _, snapshot: snapshots.append(snapshot))
    try:
        await registry.create_document("notes")
        writer = Writer()
        rng = random.Random(7)
        bulk = "".join(rng.choice(string.ascii_letters) for _ in range(4000))
        await registry.apply_changes("notes", writer.insert(0, bulk))
        await registry.flush()
        assert len(snapshots) == 1  # nothing stored before: the first compacts at once
        size = len(snapshots[0])
        logged = 0
        index = 0
        while True:
            changes = writer.insert(index, "y")
            index += 1
            logged += len(encode_changes(changes))
            await registry.apply_changes("notes", changes)
            await registry.flush()
            if logged >= size:
                break
            assert len(snapshots) == 1, f"compacted after {logged} of {size} bytes"
            assert count_rows(path, "changes") == index
        assert len(snapshots) == 2
        assert snapshots[1].version_vector == writer.doc.version_vector
        assert count_rows(path, "changes") == 0
    finally:
        await registry.close()
    reader = SqliteServerRegistry(path)
    try:
        document = await reader.get_document("notes")
        assert document is not None
        assert document.version_vector == writer.doc.version_vector
    finally:
        await reader.close()
