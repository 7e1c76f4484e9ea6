"""Registries: the in-memory one, a Dart-README-style custom one, and SQLite on a real file."""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTError,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    VersionVector,
    decode_change_batch,
    decode_changes,
    encode_changes,
)
from server.exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    DocumentNotFoundError,
    ForeignStorageError,
    InvalidDocumentIdError,
    RegistryClosedError,
    StorageCorruptError,
)
from server.registry import (
    CRDTServerRegistry,
    InMemoryServerRegistry,
    RedisServerRegistry,
    SqliteServerRegistry,
    validate_document_id,
    version_vector_of,
)
from server.registry.base import import_and_collect

pytestmark = pytest.mark.timeout(30)


class Editor:
    """A client-side document that records every change it makes."""

    def __init__(self) -> None:
        self.doc = CRDTDocument()
        self.text = CRDTTextHandler(self.doc, "text")
        self.items = CRDTListHandler(self.doc, "items")
        self.meta = CRDTMapHandler(self.doc, "meta")
        self.changes: list[Change] = []
        self.doc.on_change(self.changes.append)

    def take(self) -> list[Change]:
        out = list(self.changes)
        self.changes.clear()
        return out


_TEXTS: weakref.WeakKeyDictionary[CRDTDocument, CRDTTextHandler] = weakref.WeakKeyDictionary()


def text_of(document: CRDTDocument) -> str:
    """The document's shared text (a handler is bound once per document)."""
    handler = _TEXTS.get(document)
    if handler is None:
        handler = _TEXTS[document] = CRDTTextHandler(document, "text")
    return str(handler.value)


class DictRegistry(CRDTServerRegistry):
    """The custom registry from the reference README, in Python: three methods."""

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, CRDTDocument] = {}
        self.stores = 0

    async def get_document(self, document_id: str) -> CRDTDocument | None:
        return self.documents.get(document_id)

    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        self.stores += 1
        self.documents[document_id] = document

    async def document_ids(self) -> list[str]:
        return list(self.documents)


class NoInitRegistry(DictRegistry):
    """A subclass that forgets super().__init__(): the defaults still work."""

    def __init__(self) -> None:
        self.documents = {}
        self.stores = 0


# ------------------------------------------------------------------------ document ids


# The whole rule is tested in tests/crdt_sync/sync/test_document_ids.py; these check
# that the registry uses it and raises its own typed error.
@pytest.mark.parametrize("good", ["a", "doc-1", "Team_Notes.v2", "with space", "é", "A" * 128])
def test_valid_document_ids_are_accepted(good: str) -> None:
    assert validate_document_id(good) == good


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "..", "A" * 129, "a\x00", "a\x7f"])
def test_invalid_document_ids_are_refused_with_a_typed_error(bad: str) -> None:
    with pytest.raises(InvalidDocumentIdError):
        validate_document_id(bad)
    with pytest.raises(ValueError):  # also a ValueError, as Python callers expect
        validate_document_id(bad)


def test_a_non_string_document_id_is_refused() -> None:
    with pytest.raises(InvalidDocumentIdError):
        validate_document_id(42)


# ------------------------------------------------------------ behaviour of every registry


def memory(tmp_path: Path) -> CRDTServerRegistry:
    return InMemoryServerRegistry()


def custom(tmp_path: Path) -> CRDTServerRegistry:
    return DictRegistry()


def no_init(tmp_path: Path) -> CRDTServerRegistry:
    return NoInitRegistry()


def sqlite(tmp_path: Path) -> CRDTServerRegistry:
    return SqliteServerRegistry(tmp_path / "store.sqlite3")


def redis(tmp_path: Path) -> CRDTServerRegistry:
    raise AssertionError("made by the fixture: it needs a redis-server")


REGISTRIES = [memory, custom, no_init, sqlite, redis]


@pytest_asyncio.fixture(
    params=[
        pytest.param(factory, marks=[pytest.mark.redis] if factory is redis else [])
        for factory in REGISTRIES
    ],
    ids=lambda f: f.__name__,
)
async def registry(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[CRDTServerRegistry]:
    if request.param is redis:
        made: CRDTServerRegistry = RedisServerRegistry(request.getfixturevalue("redis_server").url)
    else:
        made = request.param(tmp_path)
    yield made
    await made.close()


@pytest.mark.asyncio
async def test_created_document_is_found_with_a_stable_epoch(registry: CRDTServerRegistry) -> None:
    assert await registry.get_document("notes") is None
    assert not await registry.has_document("notes")
    document = await registry.create_document("notes")
    assert await registry.get_document("notes") is document
    assert await registry.has_document("notes")
    epoch = await registry.get_epoch("notes")
    assert len(epoch) == 32
    assert await registry.get_epoch("notes") == epoch
    assert await registry.document_ids() == ["notes"]
    assert await registry.document_count() == 1


@pytest.mark.asyncio
async def test_each_document_gets_its_own_epoch(registry: CRDTServerRegistry) -> None:
    await registry.create_document("a")
    await registry.create_document("b")
    assert await registry.get_epoch("a") != await registry.get_epoch("b")


@pytest.mark.asyncio
async def test_creating_an_existing_document_is_refused(registry: CRDTServerRegistry) -> None:
    await registry.create_document("notes")
    with pytest.raises(DocumentExistsError):
        await registry.create_document("notes")


@pytest.mark.asyncio
async def test_creating_with_an_invalid_id_is_refused(registry: CRDTServerRegistry) -> None:
    with pytest.raises(InvalidDocumentIdError):
        await registry.create_document("../etc/passwd")


@pytest.mark.asyncio
async def test_unknown_documents_raise_not_found(registry: CRDTServerRegistry) -> None:
    with pytest.raises(DocumentNotFoundError):
        await registry.get_epoch("missing")
    with pytest.raises(DocumentNotFoundError):
        await registry.apply_changes("missing", [])
    with pytest.raises(KeyError):  # DocumentNotFoundError is also a KeyError
        await registry.create_snapshot("missing")


@pytest.mark.asyncio
async def test_apply_changes_reports_exactly_what_was_new(registry: CRDTServerRegistry) -> None:
    await registry.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "hello")
    editor.items.append({"done": False})
    first = editor.take()
    applied = await registry.apply_changes("notes", first)
    assert [c.id for c in applied] == [c.id for c in first]
    # Duplicates are not applied twice, and not reported.
    assert await registry.apply_changes("notes", first) == []
    document = await registry.get_document("notes")
    assert document is not None
    assert text_of(document) == "hello"
    assert await registry.durable_version_vector("notes") == editor.doc.version_vector


@pytest.mark.asyncio
async def test_a_frames_batch_is_applied_stored_and_counted_without_building_its_changes(
    registry: CRDTServerRegistry, changes_built: list[int]
) -> None:
    # What a Changes frame decodes to (a ChangeBatch): imported by runs, and,
    # applied exactly, it is the Applied's changes itself, stored and relayed as
    # the bytes it came in, its durable vector read from its segments.
    await registry.create_document("notes")
    editor = Editor()
    for index in range(300):
        editor.text.insert(index, "ab"[index % 2])
    editor.text.delete(10, 30)
    changes = editor.take()
    data = encode_changes(changes)
    batch = decode_change_batch(data)
    built = changes_built[0]
    result = await registry.apply("notes", batch, encoded=data)
    assert await result.stored == editor.doc.version_vector
    assert changes_built[0] == built
    assert result.applied is batch and result.encoded == data and result.refusal is None
    assert result.unblocked == () and result.waiting == 0
    document = await registry.get_document("notes")
    assert document is not None and text_of(document) == editor.text.value
    assert await registry.durable_version_vector("notes") == editor.doc.version_vector
    # Applied again, it is all duplicates: nothing applied.
    again = await registry.apply("notes", decode_change_batch(data), encoded=data)
    assert len(again.applied) == 0 and again.encoded == b""


@pytest.mark.asyncio
async def test_a_change_with_missing_dependencies_waits_then_applies(
    registry: CRDTServerRegistry,
) -> None:
    await registry.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "ab")
    first = editor.take()
    editor.text.insert(2, "cd")
    second = editor.take()
    assert await registry.apply_changes("notes", second) == []
    document = await registry.get_document("notes")
    assert document is not None
    assert document.pending_count == 1
    applied = await registry.apply_changes("notes", first)
    assert [c.id for c in applied] == [first[0].id, second[0].id]
    assert text_of(document) == "abcd"
    assert document.pending_count == 0


@pytest.mark.asyncio
async def test_apply_says_what_it_applied_unblocked_and_left_waiting(
    registry: CRDTServerRegistry,
) -> None:
    await registry.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "ab")
    first = editor.take()
    editor.text.insert(2, "cd")
    second = editor.take()
    held = await registry.apply("notes", second)
    assert held.applied == () and held.encoded == b"" and held.refusal is None
    assert held.waiting == 1 and held.pending_count == 1
    assert await held.stored == VersionVector()
    made_ready = await registry.apply("notes", first)
    assert [c.id for c in made_ready.applied] == [first[0].id, second[0].id]
    assert [c.id for c in made_ready.unblocked] == [second[0].id]
    assert made_ready.waiting == 0 and made_ready.pending_count == 0
    # The one encoding the store and the relay share.
    assert decode_changes(made_ready.encoded) == list(made_ready.applied)
    assert await made_ready.stored == editor.doc.version_vector
    assert await registry.durable_version_vector("notes") == editor.doc.version_vector


def _collected_from_update_events(
    document: CRDTDocument, changes: list[Change] | tuple[Change, ...]
) -> tuple[list[Change], CRDTError | None]:
    """What the import applied, read from its update events (the general way)."""
    seen: list[Change] = []
    subscription = document.on_update(lambda event: seen.extend(event.changes))
    try:
        document.import_changes(changes)
    except CRDTError as error:
        return seen, error
    finally:
        subscription.cancel()
    return seen, None


def test_import_and_collect_of_a_lone_change_says_what_the_update_events_say() -> None:
    # A lone change with nothing waiting takes a path without an update subscription;
    # every outcome must be what the events report, on a twin document.
    editor = Editor()
    editor.text.insert(0, "ab")
    first = editor.take()
    editor.text.insert(2, "cd")
    second = editor.take()
    editor.text.insert(4, "ef")
    third = editor.take()
    impostor = CRDTDocument(peer_id=editor.doc.peer_id)
    fake: list[Change] = []
    impostor.on_change(fake.append)
    CRDTTextHandler(impostor, "text").insert(0, "other and longer")
    assert len(first) == len(second) == len(third) == len(fake) == 1
    steps: list[tuple[list[Change] | tuple[Change, ...], list[Change], bool]] = [
        (second, [], False),  # waits for first: nothing applied
        (list(first), [first[0], second[0]], False),  # something waits: the general way
        (tuple(first), [], False),  # a duplicate
        (tuple(third), [third[0]], False),  # applied
        (fake, [], True),  # same ids, other content: refused, nothing applied
        (first + third, [], False),  # a batch of two duplicates: the general way
    ]
    ours, twin = CRDTDocument(), CRDTDocument()
    for changes, expected, refused in steps:
        applied, refusal = import_and_collect(ours, changes)
        reference, reference_refusal = _collected_from_update_events(twin, changes)
        assert [c.id for c in applied] == [c.id for c in reference] == [c.id for c in expected]
        assert applied == reference
        assert (refusal is not None) is (reference_refusal is not None) is refused
        assert ours.version_vector == twin.version_vector
        assert ours.pending_count == twin.pending_count
    assert text_of(ours) == text_of(twin) == "abcdef"


@pytest.mark.asyncio
async def test_a_peer_id_belongs_to_its_first_claimant(registry: CRDTServerRegistry) -> None:
    await registry.create_document("notes")
    await registry.create_document("other")
    mine, theirs = b"\x01" * 32, b"\x02" * 32
    assert await registry.claim_peer("notes", "peer-a", mine)
    assert await registry.claim_peer("notes", "peer-a", mine)  # the same replica again
    assert not await registry.claim_peer("notes", "peer-a", theirs)
    assert await registry.claim_peer("notes", "peer-b", theirs)
    assert await registry.claim_peer("other", "peer-a", theirs)  # per document
    for bad in (b"", b"x" * 65):
        with pytest.raises(ValueError):
            await registry.claim_peer("notes", "peer-c", bad)


@pytest.mark.asyncio
async def test_snapshots_are_remembered_and_announced(registry: CRDTServerRegistry) -> None:
    await registry.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "snap")
    await registry.apply_changes("notes", editor.take())
    seen: list[str] = []
    remove = registry.add_snapshot_listener(lambda document_id, snapshot: seen.append(document_id))
    snapshot = await registry.create_snapshot("notes")
    await registry.flush()
    assert snapshot.version_vector == editor.doc.version_vector
    latest = await registry.get_latest_snapshot("notes")
    assert latest is not None
    assert latest.version_vector == snapshot.version_vector
    assert seen == ["notes"]
    remove()
    await registry.create_snapshot("notes")
    await registry.flush()
    assert seen == ["notes"]


@pytest.mark.asyncio
async def test_custom_registry_stores_through_set_document_on_every_apply() -> None:
    registry = DictRegistry()
    await registry.create_document("notes")
    stores = registry.stores
    editor = Editor()
    editor.meta.set("title", "Agenda")
    await registry.apply_changes("notes", editor.take())
    assert registry.stores == stores + 1
    with pytest.raises(NotImplementedError):
        await registry.remove_document("notes")


@pytest.mark.asyncio
async def test_memory_registry_removes_documents() -> None:
    registry = InMemoryServerRegistry()
    await registry.create_document("notes")
    assert await registry.remove_document("notes")
    assert not await registry.remove_document("notes")
    assert await registry.document_ids() == []


def test_version_vector_of_covers_every_op() -> None:
    editor = Editor()
    editor.text.insert(0, "abc")
    editor.text.insert(3, "de")
    changes = editor.take()
    assert version_vector_of(changes) == editor.doc.version_vector
    assert version_vector_of([]) == CRDTDocument().version_vector


# --------------------------------------------------------------------------------- SQLite


@pytest.mark.asyncio
async def test_sqlite_reopened_finds_everything(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "store.sqlite3"  # the directory is created
    registry = SqliteServerRegistry(path)
    await registry.create_document("notes")
    await registry.create_document("empty")
    epoch = await registry.get_epoch("notes")
    editor = Editor()
    editor.text.insert(0, "Hello, wörld 🌍")
    editor.items.append("one")
    editor.meta.set("title", "Agenda")
    await registry.apply_changes("notes", editor.take())
    editor.text.delete(0, 7)
    await registry.apply_changes("notes", editor.take())
    await registry.close()

    reopened = SqliteServerRegistry(path)
    try:
        assert sorted(await reopened.document_ids()) == ["empty", "notes"]
        document = await reopened.get_document("notes")
        assert document is not None
        assert text_of(document) == "wörld 🌍"
        assert CRDTListHandler(document, "items").value == ["one"]
        assert CRDTMapHandler(document, "meta").value == {"title": "Agenda"}
        assert document.version_vector == editor.doc.version_vector
        assert await reopened.get_epoch("notes") == epoch
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_sqlite_change_is_committed_when_apply_returns(tmp_path: Path) -> None:
    # No close, no flush: a second registry on the same file (as after a crash)
    # must already see the change, because the server acknowledges right away.
    path = tmp_path / "store.sqlite3"
    writer = SqliteServerRegistry(path)
    await writer.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "durable")
    await writer.apply_changes("notes", editor.take())
    writer._unlock_file()  # as the OS does when the writer's process dies
    reader = SqliteServerRegistry(path)
    try:
        document = await reader.get_document("notes")
        assert document is not None
        assert text_of(document) == "durable"
        assert await reader.get_epoch("notes") == await writer.get_epoch("notes")
    finally:
        await reader.close()
        await writer.close()


@pytest.mark.asyncio
async def test_sqlite_concurrent_applies_share_commits_and_all_persist(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path, snapshot_every=1000)
    await registry.create_document("notes")
    editors = [Editor() for _ in range(8)]
    batches = []
    for index, editor in enumerate(editors):
        editor.text.insert(0, f"<{index}>")
        batches.append(editor.take())
    results = await asyncio.gather(*(registry.apply_changes("notes", b) for b in batches))
    assert all(len(applied) == 1 for applied in results)
    await registry.close()
    reopened = SqliteServerRegistry(path)
    try:
        document = await reopened.get_document("notes")
        assert document is not None
        for index in range(8):
            assert f"<{index}>" in text_of(document)
    finally:
        await reopened.close()


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@pytest.mark.asyncio
async def test_sqlite_compacts_the_log_into_a_snapshot_every_n_changes(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path, snapshot_every=5)
    snapshots: list[str] = []
    registry.add_snapshot_listener(lambda document_id, _: snapshots.append(document_id))
    await registry.create_document("notes")
    editor = Editor()
    for index in range(12):
        editor.text.insert(index, "x")
        await registry.apply_changes("notes", editor.take())
    await registry.flush()
    assert snapshots == ["notes", "notes"]
    assert count_rows(path, "snapshots") == 1
    assert count_rows(path, "changes") == 2  # the 11th and 12th, after the last snapshot
    # A crash now (no close) loses nothing: snapshot + the log after it.
    registry._unlock_file()  # as the OS does when the process dies
    reader = SqliteServerRegistry(path)
    try:
        document = await reader.get_document("notes")
        assert document is not None
        assert text_of(document) == "x" * 12
    finally:
        await reader.close()
    await registry.close()
    assert count_rows(path, "changes") == 0  # close snapshots what was logged


@pytest.mark.asyncio
async def test_sqlite_release_flushes_and_reloads(tmp_path: Path) -> None:
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3")
    try:
        await registry.create_document("notes")
        editor = Editor()
        editor.text.insert(0, "kept")
        await registry.apply_changes("notes", editor.take())
        before = await registry.get_document("notes")
        await registry.release_document("notes")
        assert registry.loaded_document_ids() == []
        after = await registry.get_document("notes")
        assert after is not None and after is not before
        assert text_of(after) == "kept"
        # A reloaded document still merges a client's later edits.
        editor.text.insert(4, "!")
        assert len(await registry.apply_changes("notes", editor.take())) == 1
        assert text_of(after) == "kept!"
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_sqlite_set_document_keeps_the_epoch(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path)
    await registry.create_document("notes")
    epoch = await registry.get_epoch("notes")
    editor = Editor()
    editor.text.insert(0, "replaced")
    await registry.set_document("notes", editor.doc)
    await registry.set_document("fresh", Editor().doc)
    await registry.close()
    reopened = SqliteServerRegistry(path)
    try:
        document = await reopened.get_document("notes")
        assert document is not None
        assert text_of(document) == "replaced"
        assert await reopened.get_epoch("notes") == epoch
        assert await reopened.has_document("fresh")
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_sqlite_remove_document(tmp_path: Path) -> None:
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3")
    try:
        await registry.create_document("notes")
        editor = Editor()
        editor.text.insert(0, "gone")
        await registry.apply_changes("notes", editor.take())
        assert await registry.remove_document("notes")
        assert not await registry.remove_document("notes")
        assert await registry.get_document("notes") is None
    finally:
        await registry.close()


@pytest.mark.asyncio
async def test_sqlite_closed_registry_refuses_use(tmp_path: Path) -> None:
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3")
    await registry.close()
    await registry.close()  # idempotent
    with pytest.raises(RegistryClosedError):
        await registry.get_document("notes")
    with pytest.raises(RegistryClosedError):
        await registry.create_document("notes")


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.write_bytes(b"this is not a database at all, just some text " * 100)
    with pytest.raises(StorageCorruptError) as caught:
        SqliteServerRegistry(path)
    assert str(path) in str(caught.value)


def test_sqlite_refuses_a_database_written_by_another_program(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(ForeignStorageError):
        SqliteServerRegistry(path)


@pytest.mark.asyncio
async def test_sqlite_peer_claims_survive_a_restart_and_leave_with_the_document(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path)
    await registry.create_document("notes")
    assert await registry.claim_peer("notes", "peer-a", b"\x01" * 32)
    await registry.close()
    registry = SqliteServerRegistry(path)
    assert not await registry.claim_peer("notes", "peer-a", b"\x02" * 32)
    assert await registry.claim_peer("notes", "peer-a", b"\x01" * 32)
    assert await registry.remove_document("notes")
    assert await registry.claim_peer("notes", "peer-a", b"\x02" * 32)
    await registry.close()


@pytest.mark.asyncio
async def test_sqlite_upgrades_a_format_1_file(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path)
    editor = Editor()
    await registry.create_document("notes")
    editor.text.insert(0, "kept")
    await registry.apply_changes("notes", editor.take())
    await registry.close()
    with sqlite3.connect(path) as connection:  # what a format-1 server wrote
        connection.execute("DROP TABLE peers")
        connection.execute("PRAGMA user_version = 1")
    registry = SqliteServerRegistry(path)
    document = await registry.get_document("notes")
    assert document is not None and text_of(document) == "kept"
    assert await registry.claim_peer("notes", "peer-a", b"\x01" * 32)
    await registry.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 3


@pytest.mark.asyncio
async def test_sqlite_refuses_a_newer_storage_format(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    await SqliteServerRegistry(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(ForeignStorageError, match="upgrade"):
        SqliteServerRegistry(path)


@pytest.mark.asyncio
async def test_sqlite_rows_that_do_not_decode_are_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path, snapshot_every=1000)
    await registry.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "soon broken")
    await registry.apply_changes("notes", editor.take())
    await registry.release_document("notes")  # snapshots, so break the snapshot row
    await registry.close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE snapshots SET data = x'00ff00ff'")
    reopened = SqliteServerRegistry(path)
    try:
        with pytest.raises(StorageCorruptError, match="notes"):
            await reopened.get_document("notes")
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_sqlite_refused_batch_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path)
    await registry.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "good")
    good = editor.take()
    document = await registry.get_document("notes")
    assert document is not None
    # An overlapping change (same op ids, different content) is invalid.
    impostor = Editor()
    impostor.doc = CRDTDocument(peer_id=editor.doc.peer_id)
    impostor.text = CRDTTextHandler(impostor.doc, "text")
    impostor.doc.on_change(impostor.changes.append)
    impostor.text.insert(0, "evil and longer")
    with pytest.raises(ChangesRejectedError) as caught:
        await registry.apply_changes("notes", [*good, *impostor.take()])
    # The core applies a batch whole or not at all: the good change is refused too
    # (its sender resends it after the error), and nothing reaches the file.
    assert caught.value.applied == []
    await registry.close()
    reopened = SqliteServerRegistry(path)
    try:
        stored = await reopened.get_document("notes")
        assert stored is not None
        assert text_of(stored) == ""
    finally:
        await reopened.close()
    # The good change alone is accepted.
    again = SqliteServerRegistry(path)
    try:
        assert [c.id for c in await again.apply_changes("notes", good)] == [good[0].id]
    finally:
        await again.close()
