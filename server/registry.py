"""Document registries: where the server keeps its documents.

Theory of operation
-------------------
The server holds one :class:`~crdt_sync.CRDTDocument` per document id and asks
a *registry* for it. A registry answers three questions (the ones the Dart
reference's README asks of a custom registry) and this module derives the
rest from them:

* :meth:`CRDTServerRegistry.get_document` -- the document under an id, or None;
* :meth:`CRDTServerRegistry.set_document` -- store a document under an id;
* :meth:`CRDTServerRegistry.document_ids` -- every id stored.

Everything else (creating documents with an epoch, applying a client's
changes, snapshots, unloading, flushing, closing) has a default built on
those three, so a dict-backed registry is a dozen lines (see
``docs/server.md``). Persistent registries override the defaults to keep
their promises:

* **Durability before acknowledgement.** :meth:`apply_changes` returns only
  once the changes it reports as applied are durably stored; the server
  acknowledges a client's changes after that call returns, never before.
* **Epochs.** Every document gets a random *epoch* id when it is created.
  Clients remember it; a server that lost a document and recreated it has a
  new epoch, so a client can tell "the server is behind me" (send it my
  history) from "this is a different document that happens to have the same
  name" (do not merge blindly).

Every method is a coroutine so a registry may do I/O; the server only ever
calls them from its event loop.

:class:`SqliteServerRegistry` layout: a WAL-mode SQLite file with an
append-only ``changes`` log (one row per batch of changes applied together,
encoded with :func:`crdt_sync.encode_changes`), one ``snapshots`` row per
document, and ``documents`` rows holding the epoch. Every ``snapshot_every``
logged changes it writes a fresh snapshot and deletes the log rows the
snapshot covers (compaction), in one transaction. Writes go through a single
writer thread with *group commit*: writes that arrive while a commit is in
flight share the next commit, so many clients cost few fsyncs and the event
loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTError,
    DecodeError,
    Snapshot,
    UpdateEvent,
    VersionVector,
    decode_changes,
    encode_changes,
)

from .exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    DocumentNotFoundError,
    ForeignStorageError,
    InvalidDocumentIdError,
    RegistryClosedError,
    StorageCorruptError,
    StorageError,
)

__all__ = [
    "MAX_DOCUMENT_ID_LENGTH",
    "CRDTServerRegistry",
    "InMemoryServerRegistry",
    "SnapshotListener",
    "SqliteServerRegistry",
    "merge_snapshot_checked",
    "new_epoch",
    "validate_document_id",
    "version_vector_of",
]

_T = TypeVar("_T")

#: ``listener(document_id, snapshot)``, see :meth:`CRDTServerRegistry.add_snapshot_listener`.
SnapshotListener = Callable[[str, Snapshot], None]

#: Longest accepted document id, in characters (all ASCII, so also bytes).
MAX_DOCUMENT_ID_LENGTH = 128

# URL-unreserved characters only: a document id is the path of the URL
# (``ws://host:port/<document-id>``), so it must need no escaping and cannot
# smuggle a ``/``, ``..`` or a query.
_DOCUMENT_ID_RE = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


def validate_document_id(document_id: object) -> str:
    """Return ``document_id`` if it is an allowed document id.

    Allowed: 1 to :data:`MAX_DOCUMENT_ID_LENGTH` characters from
    ``A-Z a-z 0-9 . _ ~ -``, not starting with a dot.

    Raises:
        InvalidDocumentIdError: anything else (also a ``ValueError``).
    """
    if not isinstance(document_id, str):
        raise InvalidDocumentIdError(f"a document id is a str, not {type(document_id).__name__}")
    if not 0 < len(document_id) <= MAX_DOCUMENT_ID_LENGTH:
        raise InvalidDocumentIdError(
            f"a document id has 1 to {MAX_DOCUMENT_ID_LENGTH} characters, not {len(document_id)}"
        )
    if _DOCUMENT_ID_RE.fullmatch(document_id) is None:
        raise InvalidDocumentIdError(
            f"invalid document id {document_id!r}: use letters, digits, '.', '_', '~', '-'"
            " and do not start with '.'"
        )
    return document_id


def new_epoch() -> str:
    """A fresh random epoch id (32 lowercase hex digits)."""
    return uuid.uuid4().hex


def version_vector_of(changes: Iterable[Change]) -> VersionVector:
    """The smallest version vector that includes every op of ``changes``."""
    ends: dict[str, int] = {}
    for change in changes:
        end = change.counter + change.size
        if end > ends.get(change.peer, 0):
            ends[change.peer] = end
    return VersionVector(ends)


class _ChangeCollector:
    """Collects the changes a remote import applied (pending ones that became ready too)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, event: UpdateEvent) -> None:
        if not event.local:
            self.changes.extend(event.changes)


def import_and_collect(
    document: CRDTDocument, changes: Iterable[Change]
) -> tuple[list[Change], CRDTError | None]:
    """Import ``changes`` into ``document``; return (the changes applied, the refusal).

    The list includes earlier pending changes that this import made ready,
    in the order the document applied them, and excludes duplicates and
    changes left pending for missing dependencies. The second item is the
    core's error if it refused part of the input (an invalid change, a full
    pending buffer); what it applied before that is still in the list, and
    the caller must store it before reporting the error.
    """
    collector = _ChangeCollector()
    subscription = document.on_update(collector)
    refusal: CRDTError | None = None
    try:
        document.import_changes(changes)
    except CRDTError as error:
        refusal = error
    finally:
        subscription.cancel()
    return collector.changes, refusal


def merge_snapshot_checked(
    document: CRDTDocument, snapshot: Snapshot
) -> tuple[bool, list[Change], CRDTError | None]:
    """Merge a client's ``snapshot`` into ``document``, refusing it while nothing changed.

    Returns ``(merged, ready, refusal)``: ``merged`` is False when the snapshot
    held nothing the document lacks (nothing was touched); ``ready`` lists the
    changes that waited for missing dependencies and that the snapshot made
    applicable (applied too, in order); ``refusal`` is the core's error if
    applying one of those failed after the merge (the merged state stands and
    must still be stored before the error is reported).

    The merge is first tried on a scratch copy of the document, because a
    snapshot that decodes can still be impossible to merge (a name that is text
    here and a list there, elements whose origins are nowhere) and the core
    could fail half-way through. Uploads are rare, so the copy is affordable.

    Raises:
        CRDTError: the snapshot cannot be merged; ``document`` is untouched.
    """
    if snapshot.version_vector <= document.version_vector:
        return False, [], None
    try:
        scratch = CRDTDocument.from_snapshot(document.take_snapshot())
        scratch.import_snapshot(snapshot)
    except CRDTError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as error:
        # Remote input: whatever the core trips on is a refusal, not a crash.
        raise DecodeError(f"the snapshot cannot be merged: {error!r}") from error
    collector = _ChangeCollector()
    subscription = document.on_update(collector)
    refusal: CRDTError | None = None
    try:
        document.import_snapshot(snapshot)
    except CRDTError as error:
        refusal = error
    finally:
        subscription.cancel()
    return True, collector.changes, refusal


class CRDTServerRegistry(ABC):
    """Where a server keeps its documents (abstract base).

    Subclasses must implement :meth:`get_document`, :meth:`set_document` and
    :meth:`document_ids`; every other method has a working default built on
    those three. A subclass that defines ``__init__`` should call
    ``super().__init__()`` (the defaults keep a little state: epochs and the
    latest snapshots); one that does not still works.

    Document ids passed in by the server have already been checked with
    :func:`validate_document_id`.
    """

    def __init__(self) -> None:
        self._default_epochs: dict[str, str] = {}
        self._default_snapshots: dict[str, Snapshot] = {}
        self._snapshot_listeners: list[SnapshotListener] = []

    # -- the three required operations ----------------------------------------------------

    @abstractmethod
    async def get_document(self, document_id: str) -> CRDTDocument | None:
        """Return the document stored under ``document_id``, or None if there is none."""

    @abstractmethod
    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        """Store ``document`` under ``document_id``, replacing any earlier one."""

    @abstractmethod
    async def document_ids(self) -> list[str]:
        """Every document id stored (loaded or not), in no particular order."""

    # -- derived operations, override for efficiency or durability --------------------------

    def _epochs(self) -> dict[str, str]:
        # Tolerate subclasses that skipped super().__init__().
        try:
            return self._default_epochs
        except AttributeError:
            self._default_epochs = {}
            return self._default_epochs

    def _listeners(self) -> list[SnapshotListener]:
        try:
            return self._snapshot_listeners
        except AttributeError:
            self._snapshot_listeners = []
            return self._snapshot_listeners

    def add_snapshot_listener(self, listener: SnapshotListener) -> Callable[[], None]:
        """Call ``listener(document_id, snapshot)`` after every stored snapshot.

        Returns a function that removes the listener. The server uses this to
        emit ``SNAPSHOT_CREATED``. Listeners run on the event loop and must
        not raise (an exception propagates to whoever triggered the snapshot).
        """
        listeners = self._listeners()
        listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                listeners.remove(listener)

        return remove

    def notify_snapshot(self, document_id: str, snapshot: Snapshot) -> None:
        """Tell the listeners a snapshot of ``document_id`` was stored (subclasses call it)."""
        for listener in list(self._listeners()):
            listener(document_id, snapshot)

    def _snapshots(self) -> dict[str, Snapshot]:
        try:
            return self._default_snapshots
        except AttributeError:
            self._default_snapshots = {}
            return self._default_snapshots

    async def has_document(self, document_id: str) -> bool:
        """Whether a document is stored under ``document_id``."""
        return await self.get_document(document_id) is not None

    async def document_count(self) -> int:
        """How many documents are stored."""
        return len(await self.document_ids())

    async def create_document(self, document_id: str) -> CRDTDocument:
        """Create, store and return an empty document with a fresh epoch.

        Raises:
            DocumentExistsError: a document with that id exists.
            InvalidDocumentIdError: the id is not valid.
        """
        validate_document_id(document_id)
        if await self.has_document(document_id):
            raise DocumentExistsError(document_id)
        document = CRDTDocument(document_id=document_id)
        self._epochs()[document_id] = new_epoch()
        await self.set_document(document_id, document)
        return document

    async def get_epoch(self, document_id: str) -> str:
        """The epoch id the document got when it was created.

        The default keeps epochs in memory, so a custom in-memory registry
        gets a new epoch per process (which is right: its documents do not
        survive a restart either). A document stored behind this default's
        back (``set_document`` without ``create_document``) gets an epoch on
        first request.

        Raises:
            DocumentNotFoundError: no such document.
        """
        if not await self.has_document(document_id):
            raise DocumentNotFoundError(document_id)
        return self._epochs().setdefault(document_id, new_epoch())

    async def apply_changes(self, document_id: str, changes: Sequence[Change]) -> list[Change]:
        """Import a client's ``changes`` into the document; return what got applied.

        The result lists every change newly applied by this call, in
        application order (earlier pending changes made ready included;
        duplicates and changes still waiting for dependencies excluded).
        When this returns, those changes are stored as durably as the
        registry can store them: the server acknowledges them next.

        The default imports into the document from :meth:`get_document`
        and then stores it again with :meth:`set_document` (the only
        persistence hook a minimal custom registry has).

        Raises:
            DocumentNotFoundError: no such document.
            ChangesRejectedError: the document refused part of the input; the
                changes applied before the refusal are stored and listed in
                the error's ``applied``.
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(document, changes)
        if applied:
            await self.set_document(document_id, document)
        if refusal is not None:
            raise ChangesRejectedError(refusal, applied) from refusal
        return applied

    async def apply_snapshot(
        self, document_id: str, snapshot: Snapshot
    ) -> tuple[bool, list[Change]]:
        """Merge a client's uploaded ``snapshot`` into the document and store the result.

        Returns ``(merged, ready)``: ``merged`` is False when the snapshot held
        nothing new (nothing stored); ``ready`` lists changes that waited for
        dependencies the snapshot brought, now applied. When this returns, the
        merged state is stored as durably as the registry can store it, and
        :meth:`durable_version_vector` covers ``snapshot.version_vector``: the
        server acknowledges the upload next. The document's history no longer
        covers everything it holds, so clients lagging behind get a snapshot.

        The default merges into the document from :meth:`get_document` and
        stores it again with :meth:`set_document`.

        Raises:
            DocumentNotFoundError: no such document.
            ChangesRejectedError: the snapshot cannot be merged (the document is
                untouched, ``applied`` is empty), or applying a change it made
                ready failed after the merge (the merged state is stored, the
                changes applied are in ``applied``).
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        try:
            merged, ready, refusal = merge_snapshot_checked(document, snapshot)
        except CRDTError as error:
            raise ChangesRejectedError(error, []) from error
        if merged:
            await self.set_document(document_id, document)
        if refusal is not None:
            raise ChangesRejectedError(refusal, ready) from refusal
        return merged, ready

    async def durable_version_vector(self, document_id: str) -> VersionVector:
        """What of the document is durably stored (the server acknowledges up to this).

        Never covers more than the in-memory document's version vector, and
        never shrinks while the document stays loaded. The default (for
        registries that store on every :meth:`apply_changes`) is the
        document's version vector.

        Raises:
            DocumentNotFoundError: no such document.
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        return document.version_vector

    async def create_snapshot(self, document_id: str) -> Snapshot:
        """Take a snapshot of the document, remember it as the latest, and return it.

        Raises:
            DocumentNotFoundError: no such document.
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        snapshot = document.take_snapshot()
        self._snapshots()[document_id] = snapshot
        self.notify_snapshot(document_id, snapshot)
        return snapshot

    async def get_latest_snapshot(self, document_id: str) -> Snapshot | None:
        """The latest snapshot made by :meth:`create_snapshot`, or None."""
        return self._snapshots().get(document_id)

    async def remove_document(self, document_id: str) -> bool:
        """Delete the document; return whether there was one.

        The default cannot delete through the three required operations and
        raises ``NotImplementedError``; registries that support deletion
        override it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot remove documents")

    async def release_document(self, document_id: str) -> None:
        """The server no longer needs the document in memory (its last client left).

        A persistent registry flushes it and drops it from memory; the next
        :meth:`get_document` loads it again. The default keeps it (a memory
        registry has nowhere else to keep it).
        """
        return None

    async def flush(self) -> None:
        """Wait until everything written so far is durably stored."""
        return None

    async def close(self) -> None:
        """Flush and release resources. The registry must not be used afterwards."""
        await self.flush()


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


# --------------------------------------------------------------------------------------------
# SQLite


_APPLICATION_ID = 0x43525344  # "CRSD": marks files written by this server
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshots (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    data BLOB NOT NULL,
    change_count INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    change_count INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX changes_by_document ON changes(document_id, seq);
"""

# One unit of work for the writer thread: runs inside an open transaction.
_WriteOp = Callable[[sqlite3.Connection], object]


@dataclass
class _Loaded:
    """A document in memory, with its bookkeeping."""

    document: CRDTDocument
    epoch: str
    # Changes logged since the last snapshot (decides when to compact).
    changes_since_snapshot: int = 0
    snapshot: Snapshot | None = None
    # Covers every change whose log row is committed (see durable_version_vector).
    durable: VersionVector = field(default_factory=VersionVector)
    # Writes queued or in flight for this document: release waits for them.
    in_flight: set[asyncio.Future[object]] = field(default_factory=set)


@dataclass(frozen=True)
class _StoredDocument:
    epoch: str
    snapshot: bytes | None
    logged_batches: tuple[bytes, ...]
    logged_changes: int


class SqliteServerRegistry(CRDTServerRegistry):
    """Documents in one SQLite file (WAL): nothing acknowledged is lost across a restart.

    Args:
        path: the database file; created (with its directory) if missing.
        snapshot_every: write a snapshot and compact the change log of a
            document after this many logged changes.
        synchronous: SQLite ``synchronous`` pragma. ``"FULL"`` (default)
            survives power loss; ``"NORMAL"`` survives a killed process only.

    Raises (from the constructor):
        StorageCorruptError: the file is not a SQLite database or is damaged.
        ForeignStorageError: a SQLite database that another program (or a
            newer version of this one) wrote.
        StorageError: the file cannot be opened at all (permissions, ...).

    Every public coroutine raises :class:`RegistryClosedError` after
    :meth:`close`. Loading a document whose rows do not decode raises
    :class:`StorageCorruptError` naming the document.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        snapshot_every: int = 500,
        synchronous: str = "FULL",
    ) -> None:
        super().__init__()
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self.snapshot_every = snapshot_every
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, asyncio.Future[_Loaded | None]] = {}
        self._closed = False
        # Group commit state: ops waiting for the next transaction.
        self._queue: list[tuple[_WriteOp, asyncio.Future[object]]] = []
        self._writer: asyncio.Task[None] | None = None
        # One thread owns the connection (sqlite3 objects are not shared).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdt-sqlite")
        try:
            self._connection = self._executor.submit(self._open, synchronous.upper()).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    # -- the writer thread -------------------------------------------------------------

    def _open(self, synchronous: str) -> sqlite3.Connection:
        path = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise StorageError(f"cannot open {path}: {error}", path=path) from error
        try:
            self._check_and_prepare(connection, synchronous)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_and_prepare(self, connection: sqlite3.Connection, synchronous: str) -> None:
        path = str(self.path)
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            user_version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as error:
            raise StorageCorruptError(
                f"{path} is not a crdt-sync-server database (or it is damaged): {error}",
                path=path,
            ) from error
        if application_id == 0 and not tables:
            # A new (empty) file: make it ours.
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            connection.execute("COMMIT")
        elif application_id != _APPLICATION_ID:
            raise ForeignStorageError(
                f"{path} is a SQLite database written by another program"
                f" (application_id {application_id:#x}); refusing to use it",
                path=path,
            )
        elif user_version > _SCHEMA_VERSION:
            raise ForeignStorageError(
                f"{path} uses storage format {user_version}; this server reads up to"
                f" {_SCHEMA_VERSION}: upgrade the server",
                path=path,
            )
        elif not {"documents", "snapshots", "changes"} <= tables:
            raise StorageCorruptError(f"{path} is missing tables: damaged database", path=path)
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            connection.execute(f"PRAGMA synchronous = {synchronous}")
            connection.execute("PRAGMA foreign_keys = ON")
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise StorageCorruptError(f"{path} is damaged: {error}", path=path) from error
        if str(mode).lower() != "wal":
            raise StorageError(f"{path}: cannot switch to WAL mode (got {mode})", path=path)
        if check != "ok":
            raise StorageCorruptError(f"{path} is damaged: {check}", path=path)

    def _run_batch(self, ops: Sequence[_WriteOp]) -> list[tuple[bool, object]]:
        """Run ``ops`` in one transaction; per op (ok, result-or-exception).

        An op that raises is rolled back to its savepoint so the others still
        commit. If the commit itself fails every op fails.
        """
        connection = self._connection
        outcomes: list[tuple[bool, object]] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                connection.execute("SAVEPOINT op")
                try:
                    result = op(connection)
                except Exception as error:
                    connection.execute("ROLLBACK TO op")
                    connection.execute("RELEASE op")
                    outcomes.append((False, error))
                else:
                    connection.execute("RELEASE op")
                    outcomes.append((True, result))
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        return outcomes

    # -- group commit (event loop side) ---------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError(f"registry {self.path} is closed")

    def _write(self, op: _WriteOp, loaded: _Loaded | None = None) -> asyncio.Future[object]:
        """Queue ``op`` for the next group commit; the future resolves once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._queue.append((op, future))
        if loaded is not None:
            loaded.in_flight.add(future)
            future.add_done_callback(loaded.in_flight.discard)
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="crdt-sqlite-writer")
        return future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            ops = [op for op, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, ops)
            except Exception as error:
                failure = StorageError(
                    f"writing to {self.path} failed: {error}", path=str(self.path)
                )
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), (ok, result) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(result)
                elif isinstance(result, BaseException):
                    future.set_exception(result)

    async def _read(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, self._connection)
        except sqlite3.DatabaseError as error:
            raise StorageCorruptError(
                f"reading {self.path} failed: {error}", path=str(self.path)
            ) from error

    # -- loading ------------------------------------------------------------------------

    @staticmethod
    def _select_document(
        connection: sqlite3.Connection, document_id: str
    ) -> _StoredDocument | None:
        row = connection.execute(
            "SELECT epoch FROM documents WHERE id = ?", (document_id,)
        ).fetchone()
        if row is None:
            return None
        snapshot_row = connection.execute(
            "SELECT data FROM snapshots WHERE document_id = ?", (document_id,)
        ).fetchone()
        batches = connection.execute(
            "SELECT data, change_count FROM changes WHERE document_id = ? ORDER BY seq",
            (document_id,),
        ).fetchall()
        return _StoredDocument(
            epoch=str(row[0]),
            snapshot=None if snapshot_row is None else bytes(snapshot_row[0]),
            logged_batches=tuple(bytes(data) for data, _ in batches),
            logged_changes=sum(int(count) for _, count in batches),
        )

    def _build(self, document_id: str, stored: _StoredDocument) -> _Loaded:
        try:
            snapshot: Snapshot | None = None
            if stored.snapshot is not None:
                snapshot = Snapshot.from_bytes(stored.snapshot)
                document = CRDTDocument.from_snapshot(snapshot)
            else:
                document = CRDTDocument(document_id=document_id)
            for batch in stored.logged_batches:
                document.import_changes(decode_changes(batch))
        except DecodeError as error:
            raise StorageCorruptError(
                f"document {document_id!r} in {self.path} does not decode: {error}",
                path=str(self.path),
            ) from error
        return _Loaded(
            document=document,
            epoch=stored.epoch,
            changes_since_snapshot=stored.logged_changes,
            snapshot=snapshot,
            durable=document.version_vector,
        )

    async def _load(self, document_id: str) -> _Loaded | None:
        """The loaded document, loading it from disk on first use (once, even if raced)."""
        self._check_open()
        loaded = self._loaded.get(document_id)
        if loaded is not None:
            return loaded
        pending = self._loading.get(document_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Loaded | None] = asyncio.get_running_loop().create_future()
        self._loading[document_id] = future
        try:
            stored = await self._read(lambda c: self._select_document(c, document_id))
            result = None if stored is None else self._build(document_id, stored)
            if result is not None:
                self._loaded[document_id] = result
            future.set_result(result)
            return result
        except BaseException as error:
            future.set_exception(error)
            # Nobody else may be waiting; do not leave "exception never retrieved" noise.
            future.exception()
            raise
        finally:
            del self._loading[document_id]

    # -- CRDTServerRegistry -------------------------------------------------------------

    async def get_document(self, document_id: str) -> CRDTDocument | None:
        loaded = await self._load(document_id)
        return None if loaded is None else loaded.document

    async def has_document(self, document_id: str) -> bool:
        self._check_open()
        if document_id in self._loaded:
            return True
        row = await self._read(
            lambda c: c.execute("SELECT 1 FROM documents WHERE id = ?", (document_id,)).fetchone()
        )
        return row is not None

    async def document_ids(self) -> list[str]:
        self._check_open()
        await self.flush()
        rows = await self._read(lambda c: c.execute("SELECT id FROM documents").fetchall())
        return [str(row[0]) for row in rows]

    async def document_count(self) -> int:
        return len(await self.document_ids())

    async def get_epoch(self, document_id: str) -> str:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        return loaded.epoch

    async def create_document(self, document_id: str) -> CRDTDocument:
        validate_document_id(document_id)
        if await self.has_document(document_id):
            raise DocumentExistsError(document_id)
        epoch = new_epoch()
        loaded = _Loaded(document=CRDTDocument(document_id=document_id), epoch=epoch)

        def insert(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(
                    "INSERT INTO documents (id, epoch, created_at) VALUES (?, ?, ?)",
                    (document_id, epoch, time.time()),
                )
            except sqlite3.IntegrityError as error:
                raise DocumentExistsError(document_id) from error

        # Registered before the commit so a concurrent get_document sees one object;
        # removed again if the insert fails.
        if document_id in self._loaded:
            raise DocumentExistsError(document_id)
        self._loaded[document_id] = loaded
        try:
            await self._write(insert, loaded)
        except BaseException:
            if self._loaded.get(document_id) is loaded:
                del self._loaded[document_id]
            raise
        return loaded.document

    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        """Store ``document`` under the id as a snapshot, replacing the stored state.

        Keeps the epoch of an existing document; a new id gets a new epoch.
        """
        validate_document_id(document_id)
        existing = await self._load(document_id)
        epoch = existing.epoch if existing is not None else new_epoch()
        snapshot = document.take_snapshot()
        data = snapshot.to_bytes()
        loaded = _Loaded(document=document, epoch=epoch, snapshot=snapshot)
        if existing is not None:
            loaded.in_flight = existing.in_flight
            loaded.durable = existing.durable
        self._loaded[document_id] = loaded

        def store(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR IGNORE INTO documents (id, epoch, created_at) VALUES (?, ?, ?)",
                (document_id, epoch, time.time()),
            )
            connection.execute("DELETE FROM changes WHERE document_id = ?", (document_id,))
            connection.execute(
                "INSERT OR REPLACE INTO snapshots (document_id, data, change_count, created_at)"
                " VALUES (?, ?, 0, ?)",
                (document_id, data, time.time()),
            )

        await self._write(store, loaded)
        loaded.durable = loaded.durable.merge(snapshot.version_vector)

    async def durable_version_vector(self, document_id: str) -> VersionVector:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        return loaded.durable

    async def apply_changes(self, document_id: str, changes: Sequence[Change]) -> list[Change]:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(loaded.document, changes)
        if applied:
            await self._log(document_id, loaded, applied)
        if refusal is not None:
            raise ChangesRejectedError(refusal, applied) from refusal
        return applied

    async def apply_snapshot(
        self, document_id: str, snapshot: Snapshot
    ) -> tuple[bool, list[Change]]:
        """Merge the upload, then store a snapshot of the merged document (which
        replaces the change log, as compaction does) and wait for the commit."""
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        try:
            merged, ready, refusal = merge_snapshot_checked(loaded.document, snapshot)
        except CRDTError as error:
            raise ChangesRejectedError(error, []) from error
        if merged:
            # The stored snapshot covers every change in memory: each one's log
            # row is queued ahead of it, so deleting the log stays exact.
            committed = self._queue_snapshot(document_id, loaded)
            stored = loaded.snapshot
            await committed
            if stored is not None:
                loaded.durable = loaded.durable.merge(stored.version_vector)
        if refusal is not None:
            raise ChangesRejectedError(refusal, ready) from refusal
        return merged, ready

    async def _log(self, document_id: str, loaded: _Loaded, applied: list[Change]) -> None:
        """Append ``applied`` to the log (compacting when due) and wait for the commit."""
        data = encode_changes(applied)
        count = len(applied)

        def append(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO changes (document_id, change_count, data) VALUES (?, ?, ?)",
                (document_id, count, data),
            )

        committed = self._write(append, loaded)
        loaded.changes_since_snapshot += count
        if loaded.changes_since_snapshot >= self.snapshot_every:
            # Queued right behind the append, so it lands in the same or the next commit.
            self._queue_snapshot(document_id, loaded)
        await committed
        loaded.durable = loaded.durable.merge(version_vector_of(applied))

    def _queue_snapshot(self, document_id: str, loaded: _Loaded) -> asyncio.Future[object]:
        """Snapshot the in-memory document now and queue "store it, drop the log it covers".

        Every change in memory has had its log row queued before this point
        and the writer runs ops in queue order, so at the moment the op runs
        every row already in the table for this document is covered by the
        snapshot: deleting them all is exact.
        """
        snapshot = loaded.document.take_snapshot()
        data = snapshot.to_bytes()
        loaded.snapshot = snapshot
        loaded.changes_since_snapshot = 0

        def store(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR REPLACE INTO snapshots (document_id, data, change_count, created_at)"
                " VALUES (?, ?, 0, ?)",
                (document_id, data, time.time()),
            )
            connection.execute("DELETE FROM changes WHERE document_id = ?", (document_id,))

        committed = self._write(store, loaded)

        def stored(future: asyncio.Future[object]) -> None:
            # Periodic snapshots are not awaited by anyone: retrieve the
            # outcome here (a failure leaves the log in place, nothing lost).
            if not future.cancelled() and future.exception() is None:
                self.notify_snapshot(document_id, snapshot)

        committed.add_done_callback(stored)
        return committed

    async def create_snapshot(self, document_id: str) -> Snapshot:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        committed = self._queue_snapshot(document_id, loaded)
        await committed
        snapshot = loaded.snapshot  # set by _queue_snapshot just above
        if snapshot is None:
            raise StorageError(f"snapshot of {document_id!r} vanished while being stored")
        return snapshot

    async def get_latest_snapshot(self, document_id: str) -> Snapshot | None:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        return loaded.snapshot

    async def remove_document(self, document_id: str) -> bool:
        self._check_open()
        loaded = self._loaded.pop(document_id, None)
        if loaded is not None and loaded.in_flight:
            await asyncio.gather(*loaded.in_flight, return_exceptions=True)

        def delete(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM changes WHERE document_id = ?", (document_id,))
            connection.execute("DELETE FROM snapshots WHERE document_id = ?", (document_id,))
            cursor = connection.execute("DELETE FROM documents WHERE id = ?", (document_id,))
            return cursor.rowcount > 0

        return bool(await self._write(delete))

    async def release_document(self, document_id: str) -> None:
        """Flush the document's writes, compact it if it has a log, drop it from memory.

        Safe against a concurrent apply: if a write is queued after the
        flush started, the document stays loaded (the caller may release
        again later).
        """
        self._check_open()
        loaded = self._loaded.get(document_id)
        if loaded is None:
            return
        if loaded.changes_since_snapshot:
            self._queue_snapshot(document_id, loaded)
        while loaded.in_flight:
            await asyncio.gather(*list(loaded.in_flight), return_exceptions=True)
        if self._loaded.get(document_id) is loaded and not loaded.in_flight:
            del self._loaded[document_id]

    def loaded_document_ids(self) -> list[str]:
        """Ids of the documents currently held in memory (for tests and monitoring)."""
        return list(self._loaded)

    async def flush(self) -> None:
        self._check_open()
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        """Snapshot every document with logged changes, commit, checkpoint the WAL, close.

        Idempotent. Afterwards every method raises :class:`RegistryClosedError`.
        """
        if self._closed:
            return
        for document_id, loaded in list(self._loaded.items()):
            if loaded.changes_since_snapshot:
                self._queue_snapshot(document_id, loaded)
        await self.flush()
        self._closed = True
        loop = asyncio.get_running_loop()

        def finish(connection: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.close()

        await loop.run_in_executor(self._executor, finish, self._connection)
        self._executor.shutdown(wait=True)
        self._loaded.clear()
