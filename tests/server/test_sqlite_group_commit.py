"""Several writers' batches in one SQLite group commit (server/registry/sqlite.py):
their log rows go in one statement, each batch is acknowledged with the durable
vector, and a row that cannot be written fails alone (real SQLite file)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from server_helpers import CountingRegistry

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, VersionVector
from server import SqliteServerRegistry

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

T = TypeVar("T")


def typed(text: str) -> tuple[str, list[Change]]:
    """A writer's peer id and the changes of typing ``text``."""
    document = CRDTDocument()
    made: list[Change] = []
    document.on_change(made.append)
    CRDTTextHandler(document, "text").insert(0, text)
    return str(document.peer_id), made


def text_of(document: CRDTDocument | None) -> str:
    assert document is not None
    return str(document.get_value("text"))


async def test_batches_in_one_commit_are_stored_and_a_failing_row_fails_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    # Commits at least 0.3 s apart: what is applied meanwhile shares the next one.
    registry = CountingRegistry(path, commit_interval=0.3)
    names = ["a", "b", "bad", "c", "d"]
    for name in names:
        await registry.create_document(name)
    await registry.flush()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON changes WHEN NEW.document_id = 'bad'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    writers = {name: typed(f"text of {name}") for name in names}
    before = CountingRegistry.commits
    # Applied one after the other in one turn of the loop: one group commit.
    results = [await registry.apply(name, writers[name][1]) for name in names]
    outcomes = await asyncio.gather(*(r.stored for r in results), return_exceptions=True)
    assert CountingRegistry.commits - before == 1
    for name, outcome in zip(names, outcomes, strict=True):
        peer, changes = writers[name]
        if name == "bad":
            assert isinstance(outcome, Exception) and "refused by the test" in str(outcome)
        else:
            assert isinstance(outcome, VersionVector), outcome
            assert outcome.get(peer, 0) == changes[-1].counter + changes[-1].size
    with sqlite3.connect(path) as db:  # before close(), which compacts every document
        logged = sorted(row[0] for row in db.execute("SELECT document_id FROM changes"))
    assert logged == ["a", "b", "c", "d"]
    # A commit where every row can be written: all of them in one statement.
    more = {name: typed(f"more {name} ") for name in ["a", "b", "c", "d"]}
    before = CountingRegistry.commits
    results = [await registry.apply(name, more[name][1]) for name in more]
    for name, stored in zip(more, await asyncio.gather(*(r.stored for r in results)), strict=True):
        assert stored.get(more[name][0], 0) == len(f"more {name} ")
    assert CountingRegistry.commits - before == 1
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM changes").fetchone()
    assert rows == 8
    await registry.close()
    reopened = SqliteServerRegistry(path)
    for name in ["a", "b", "c", "d"]:
        text = text_of(await reopened.get_document(name))
        assert sorted([text.replace(f"more {name} ", ""), f"more {name} "]) == sorted(
            [f"text of {name}", f"more {name} "]
        ), text
    await reopened.close()


async def test_a_replaced_document_between_log_rows_keeps_their_order(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = CountingRegistry(path, commit_interval=0.3)
    await registry.create_document("notes")
    await registry.flush()
    _, first = typed("old ")
    replacement = CRDTDocument()
    CRDTTextHandler(replacement, "text").insert(0, "new")
    _, second = typed("x")
    before = CountingRegistry.commits
    # Queued in this order: a log row, the replacement (which drops the log rows
    # before it), a log row on the replacement. Only the rows' order keeps "x".
    early = await registry.apply("notes", first)
    replaced = asyncio.ensure_future(registry.set_document("notes", replacement))
    await asyncio.sleep(0)  # it queues its write, behind the first row
    late = await registry.apply("notes", second)
    await asyncio.gather(early.stored, replaced, late.stored)
    assert CountingRegistry.commits - before <= 2
    await registry.close()
    reopened = SqliteServerRegistry(path)
    final = text_of(await reopened.get_document("notes"))
    assert "x" in final and "new" in final and "old" not in final, final
    await reopened.close()


async def test_reads_and_snapshots_are_not_held_back_by_the_commit_interval(
    tmp_path: Path,
) -> None:
    # Commits an hour apart at most: only plain log rows wait for that. Nothing
    # here measures time: had a read or a snapshot to wait for the interval, the
    # guard (_settled) would turn the hour's hang into a failure.
    registry = CountingRegistry(tmp_path / "store.sqlite3", commit_interval=3600.0)
    try:
        await _settled(registry.create_document("notes"))  # the first commits at once
        # The writer thread now sleeps out the interval: a read ends that sleep.
        assert await _settled(registry.document_ids()) == ["notes"]
        peer, typing = typed("typed")
        applied = await registry.apply("notes", typing)
        assert not applied.stored.done()  # its commit waits for the interval ...
        # ... but a read queued behind it does not wait: the row commits with it.
        assert await _settled(registry.document_ids()) == ["notes"]
        stored = await _settled(applied.stored)
        assert stored.get(peer, 0) == len("typed")
        # A snapshot (a slow write) does not wait either.
        snapshot = await _settled(registry.create_snapshot("notes"))
        assert snapshot.version_vector.get(peer, 0) == len("typed")
    finally:
        await registry.close()  # ends the writer's sleep in any case


async def _settled(awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result; a hang guard, far inside the hour the interval is."""
    return await asyncio.wait_for(awaitable, 30)


async def test_a_commit_moves_the_durable_vector_only_for_the_peers_it_holds(
    tmp_path: Path,
) -> None:
    # Each commit merges what it stored into the document's durable vector: the
    # peers whose changes it does not hold keep what earlier commits made durable.
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3", commit_interval=0.0)
    await registry.create_document("notes")
    peer_a, typed_a = typed("first writer")
    peer_b, typed_b = typed("second")
    first = await (await registry.apply("notes", typed_a)).stored
    assert first == VersionVector({peer_a: len("first writer")})
    second = await (await registry.apply("notes", typed_b)).stored
    both = VersionVector({peer_a: len("first writer"), peer_b: len("second")})
    assert second == both == await registry.durable_version_vector("notes")
    # Two rows of one peer in one commit: the later end wins.
    peer_c, typed_c = typed("abc")
    rows = [await registry.apply("notes", typed_c[:1]), await registry.apply("notes", typed_c[1:])]
    stored = await asyncio.gather(*(row.stored for row in rows))
    assert stored[-1] == VersionVector({**both, peer_c: 3})
    await registry.close()
