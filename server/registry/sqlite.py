"""The SQLite registry: documents in one WAL-mode file, nothing acknowledged lost.

Layout: an append-only ``changes`` log (one row per batch of changes applied
together, encoded with :func:`crdt_sync.encode_changes`), one ``snapshots`` row
per document, and ``documents`` rows holding the epoch. Every
``snapshot_every`` logged changes it writes a fresh snapshot and deletes the
log rows the snapshot covers (compaction), in one transaction, once the log
since the last snapshot also outweighs that snapshot (so compaction costs O(1)
per logged byte however large the document grows). Writes go through a single
writer thread with *group commit*: writes that arrive while a commit is in
flight share the next commit, so many clients cost few fsyncs and the event
loop never blocks on the disk.

Compaction stays off the event loop: the loop only copies the document's
state (:meth:`crdt_sync.Snapshot.capture`, a slice per span); the writer
thread encodes and compresses it (zlib releases the GIL), in a transaction of
its own so the writes queued ahead of it are committed (and acknowledged)
without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from crdt_sync import (
    Change,
    ChangeBatch,
    CRDTDocument,
    CRDTError,
    DecodeError,
    Snapshot,
    VersionVector,
    decode_changes,
)

try:  # POSIX: the lock that keeps a second server off the file
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock (documented)
    fcntl = None  # type: ignore[assignment]

from ..exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    DocumentNotFoundError,
    ForeignStorageError,
    RegistryClosedError,
    StorageCorruptError,
    StorageError,
    StorageInUseError,
)
from .base import (
    Applied,
    CRDTServerRegistry,
    HistoryPage,
    applied_result,
    check_secret_hash,
    encoding_of,
    import_and_collect,
    merge_snapshot_checked,
    new_epoch,
    validate_document_id,
)

__all__ = ["SqliteServerRegistry"]

_T = TypeVar("_T")

_log = logging.getLogger(__name__)

_APPLICATION_ID = 0x43525344  # "CRSD": marks files written by this server
_SCHEMA_VERSION = 3
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
CREATE TABLE peers (
    document_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (document_id, peer_id)
) WITHOUT ROWID;
CREATE TABLE history (
    seq INTEGER PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    change_count INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX history_by_document ON history(document_id, seq);
CREATE TABLE history_bases (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    data BLOB NOT NULL
) WITHOUT ROWID;
"""
# Format 1 -> 2: the replica identity claims (claim_peer).
_UPGRADE_TO_2 = """
CREATE TABLE IF NOT EXISTS peers (
    document_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (document_id, peer_id)
) WITHOUT ROWID
"""
# Format 2 -> 3: the kept history (log rows a snapshot covers, moved on
# compaction) and where it starts. History before the upgrade was not kept: it
# starts at each document's snapshot.
_UPGRADE_TO_3 = (
    """CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    change_count INTEGER NOT NULL,
    data BLOB NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS history_by_document ON history(document_id, seq)",
    """CREATE TABLE IF NOT EXISTS history_bases (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    data BLOB NOT NULL
) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO history_bases (document_id, data)"
    " SELECT document_id, data FROM snapshots",
)

# One unit of work for the writer thread: runs inside an open transaction.
_WriteOp = Callable[[sqlite3.Connection], object]
# What a queued op is: a write (shares the next group commit), a slow write (a
# snapshot to encode: a transaction of its own, so the ops ahead of it commit
# first), a read (runs alone, outside any transaction, in queue order), or an
# urgent write (a peer id claim, which a client's handshake waits for: it shares
# a commit like a write but does not wait for the commit interval; one per peer
# and document, so it adds no fsyncs under load).
_WRITE, _SLOW, _READ, _URGENT = 0, 1, 2, 3
# A queued op: the op, its future, its kind, and the log row it writes (None: a
# plain op, whose future gets the op's result).
_Queued = tuple[_WriteOp, "asyncio.Future[object]", int, "_LogRow | None"]
#: Seconds the writer thread's job waits for more work before it ends.
_LINGER = 0.5


class _Append:
    """The op that writes one batch's log row. Consecutive ones in a group commit
    are written with one ``executemany`` (:meth:`SqliteServerRegistry._run_batch`)."""

    __slots__ = ("params",)

    SQL = "INSERT INTO changes (document_id, change_count, data) VALUES (?, ?, ?)"

    def __init__(self, document_id: str, count: int, data: bytes) -> None:
        self.params = (document_id, count, data)

    def __call__(self, connection: sqlite3.Connection) -> None:
        connection.execute(self.SQL, self.params)


#: Log rows a commit writes with one multi-row INSERT (more take the general way:
#: each row count is a statement SQLite compiles and the sqlite3 module caches).
_ROWS_PER_INSERT = 32


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_rows_sql(count: int) -> str:
    """The INSERT of ``count`` log rows in one statement."""
    return _Append.SQL + ", (?, ?, ?)" * (count - 1)


class _Wake:
    """A flag the writer thread sleeps on, with a timeout, and the loop raises:
    :class:`threading.Event` for one sleeper, on a bare lock (held while the
    flag is down). ``Event.wait`` makes a lock and runs a Condition in Python
    for every wait, and the writer waits once per commit."""

    __slots__ = ("_down",)

    def __init__(self) -> None:
        self._down = threading.Lock()
        self._down.acquire()

    def set(self) -> None:
        """Raise the flag (a no-op if it is up)."""
        with contextlib.suppress(RuntimeError):  # already up
            self._down.release()

    def wait(self, timeout: float) -> None:
        """Sleep until the flag is up or ``timeout`` seconds passed (it stays up)."""
        if self._down.acquire(timeout=timeout):
            with contextlib.suppress(RuntimeError):  # set() raised it meanwhile
                self._down.release()

    def clear(self) -> None:
        """Lower the flag (a no-op if it is down)."""
        self._down.acquire(blocking=False)


class _LogRow:
    """A batch of changes whose log row waits for its commit: the document, the
    changes (what the row makes durable), and the future of the durable vector."""

    __slots__ = ("changes", "loaded", "stored")

    def __init__(
        self, loaded: _Loaded, changes: Sequence[Change], stored: asyncio.Future[VersionVector]
    ) -> None:
        self.loaded = loaded
        self.changes = changes
        self.stored = stored

    def fail(self, error: BaseException) -> None:
        self.loaded.in_flight.discard(self.stored)
        if not self.stored.done():
            self.stored.set_exception(error)


def _settle(batch: Sequence[_Queued], outcomes: Sequence[tuple[bool, object]]) -> None:
    """On the loop: resolve the futures of a committed batch.

    A document's durable vector moves once per commit, past every log row of it
    that the commit holds, and each row's future gets that vector (a new
    vector per row would copy the whole vector for each batch)."""
    rows: list[tuple[_LogRow, bool, object]] = []
    advanced: dict[int, tuple[_Loaded, dict[str, int]]] = {}
    for (_, future, _, row), (ok, result) in zip(batch, outcomes, strict=True):
        if row is not None:
            rows.append((row, ok, result))
            if ok:
                entry = advanced.get(id(row.loaded))
                if entry is None:
                    entry = advanced[id(row.loaded)] = (row.loaded, {})
                ends = entry[1]
                # Each change's end, for the commit's one merge into the document's
                # vector (no vector per row, and only the peers that moved here;
                # a batch's read from its segments, its changes not built).
                if isinstance(row.changes, ChangeBatch):
                    for peer, end in row.changes.ends().items():
                        if end > ends.get(peer, 0):
                            ends[peer] = end
                    continue
                for change in row.changes:
                    end = change.counter + change.size
                    if end > ends.get(change.peer, 0):
                        ends[change.peer] = end
            continue
        if future.done():
            continue
        if ok:
            future.set_result(result)
        elif isinstance(result, BaseException):
            future.set_exception(result)
    for loaded, ends in advanced.values():
        loaded.durable = loaded.durable.merge(ends)
    for row, ok, result in rows:
        if not ok:
            row.fail(result if isinstance(result, BaseException) else RuntimeError(result))
            continue
        row.loaded.in_flight.discard(row.stored)
        if not row.stored.done():
            row.stored.set_result(row.loaded.durable)


@dataclass
class _Loaded:
    """A document in memory, with its bookkeeping."""

    document: CRDTDocument
    epoch: str
    # Changes and encoded bytes logged since the last snapshot (decide when to compact).
    changes_since_snapshot: int = 0
    logged_bytes: int = 0
    snapshot: Snapshot | None = None
    # Covers every change whose log row is committed (see durable_version_vector).
    durable: VersionVector = field(default_factory=VersionVector)
    # Writes queued or in flight for this document: release waits for them.
    in_flight: set[asyncio.Future[Any]] = field(default_factory=set)


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
        history_retention: how many of a document's newest changes its kept
            history holds at least (None: all). Compaction moves the log rows
            a snapshot covers into the history; once it holds more than this,
            the oldest batches are dropped and the state before the kept ones
            is stored as the history's base (where the history then starts).
        synchronous: SQLite ``synchronous`` pragma. ``"FULL"`` (default)
            survives power loss; ``"NORMAL"`` survives a killed process only.
        commit_interval: seconds between the starts of two group commits at
            least (default 50 ms: at most 20 commits, each an fsync, per
            second however many writers; writes arriving meanwhile share the
            next commit; a write after a quiet spell commits at once). Only
            acknowledgements wait for it, never a relay: under sustained load
            an Ack comes up to this much later, and each commit costs the
            writer thread about half a millisecond of CPU (statements, WAL
            write, fsync: mostly the kernel's) and the loop a wake-up.

    Raises (from the constructor):
        StorageCorruptError: the file is not a SQLite database or is damaged.
        ForeignStorageError: a SQLite database that another program (or a
            newer version of this one) wrote.
        StorageError: the file cannot be opened at all (permissions, ...).

    Every public coroutine raises :class:`RegistryClosedError` after
    :meth:`close`. Loading a document whose rows do not decode raises
    :class:`StorageCorruptError` naming the document.
    """

    runs_outside_tasks = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        snapshot_every: int = 500,
        synchronous: str = "FULL",
        history_retention: int | None = None,
        commit_interval: float = 0.05,
    ) -> None:
        super().__init__()
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        if not commit_interval >= 0:
            raise ValueError(f"commit_interval must be at least 0, not {commit_interval}")
        self.commit_interval = commit_interval
        self._last_commit = float("-inf")
        if history_retention is not None and history_retention < 0:
            raise ValueError("history_retention must be at least 0 (or None: keep all)")
        self.history_retention = history_retention
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self.snapshot_every = snapshot_every
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, asyncio.Future[_Loaded | None]] = {}
        # (document id, peer id) -> secret hash, for claims read or made.
        self._peer_claims: dict[tuple[str, str], bytes] = {}
        self._closed = False
        # Group commit state: the ops for the writer thread, in order (a SimpleQueue:
        # handing one over takes no lock on the loop's side); _draining: a drain
        # job is queued or running (it takes what the inbox holds).
        self._inbox: SimpleQueue[_Queued | None] = SimpleQueue()
        # Ends the writer's wait for the commit interval early (any op but a plain
        # write, and close()).
        self._wake = _Wake()
        self._draining = False
        # The descriptor holding the exclusive lock on the file (POSIX).
        self._lock_fd: int | None = None
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
            existed = self.path.exists()
            if existed and self.path.stat().st_size == 0:
                raise StorageCorruptError(
                    f"{path} is an empty file (0 bytes), not a crdt-sync-server database:"
                    " refusing to adopt it (a failed copy?). Remove it to start afresh.",
                    path=path,
                )
            self._lock_file()
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            self._unlock_file()
            raise StorageError(f"cannot open {path}: {error}", path=path) from error
        except BaseException:
            self._unlock_file()
            raise
        try:
            self._check_and_prepare(connection, synchronous, existed)
        except BaseException:
            connection.close()
            self._unlock_file()
            raise
        return connection

    def _lock_file(self) -> None:
        """Take an exclusive lock on the database file for the registry's life.

        A second server (or registry) on the same file would compact away the
        other's acknowledged rows: it is refused here, with a clear message.
        The lock is ``flock`` on the file itself, independent of SQLite's own
        locks; the OS drops it when the process dies, however it dies.
        """
        if fcntl is None:  # pragma: no cover - Windows
            return
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageInUseError(
                f"{self.path} is in use by another crdt-sync-server (or registry):"
                " two servers must never share a database file",
                path=str(self.path),
            ) from None
        self._lock_fd = fd

    def _unlock_file(self) -> None:
        fd = self._lock_fd
        if fd is not None:
            self._lock_fd = None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock

    def _check_and_prepare(
        self, connection: sqlite3.Connection, synchronous: str, existed: bool = False
    ) -> None:
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
        if application_id == 0 and not tables and existed:
            raise ForeignStorageError(
                f"{path} is an empty SQLite database that this server did not create:"
                " refusing to adopt it. Remove it, or point --db at a new path.",
                path=path,
            )
        if application_id == 0 and not tables:
            # A new file: make it ours.
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
        elif user_version < _SCHEMA_VERSION:
            connection.execute("BEGIN IMMEDIATE")
            if user_version < 2:
                connection.execute(_UPGRADE_TO_2)
            for statement in _UPGRADE_TO_3:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            connection.execute("COMMIT")
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
        _log.info("%s: SQLite quick_check found no damage", path)

    def _run_batch(self, ops: Sequence[_WriteOp]) -> list[tuple[bool, object]]:
        """Run ``ops`` in one transaction; per op (ok, result-or-exception).

        An op that raises is rolled back to its savepoint so the others still
        commit. If the commit itself fails every op fails.
        """
        connection = self._connection
        count = len(ops)
        rows = [op for op in ops if type(op) is _Append] if count <= _ROWS_PER_INSERT else ()
        if len(rows) == count:
            # The usual commit under load: only log rows. One INSERT of them all,
            # which is its own transaction (one statement, no BEGIN, SAVEPOINT,
            # RELEASE or COMMIT of its own: each is a round trip into SQLite and
            # a GIL handover on this thread). A statement is atomic: if it fails
            # nothing is written, and the general way below finds the culprit.
            try:
                connection.execute(
                    _insert_rows_sql(count),
                    [param for row in rows for param in row.params],
                )
            except Exception:  # retried row by row below
                if connection.in_transaction:  # pragma: no cover - SQLite rolled it back
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
            else:
                return [(True, None)] * count
        outcomes: list[tuple[bool, object]] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            if len(ops) == 1:
                # One op: its transaction is its savepoint (two statements fewer).
                try:
                    result = ops[0](connection)
                except Exception as error:
                    connection.execute("ROLLBACK")
                    return [(False, error)]
                connection.execute("COMMIT")
                return [(True, result)]
            index = 0
            while index < count:
                end = index + 1
                if isinstance(ops[index], _Append):
                    while end < count and isinstance(ops[end], _Append):
                        end += 1
                if end - index > 1 and self._append_all(ops[index:end]):
                    # Consecutive log rows (several writers' batches) in one statement.
                    outcomes.extend([(True, None)] * (end - index))
                    index = end
                    continue
                for op in ops[index:end]:
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
                index = end
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        return outcomes

    def _append_all(self, ops: Sequence[_WriteOp]) -> bool:
        """Write the log rows ``ops`` (all :class:`_Append`) with one ``executemany``
        under a savepoint; False (nothing written) if it failed, so the caller writes
        them one by one and only a row that fails alone fails."""
        connection = self._connection
        connection.execute("SAVEPOINT rows")
        try:
            connection.executemany(
                _Append.SQL, [op.params for op in ops if isinstance(op, _Append)]
            )
        except Exception:
            connection.execute("ROLLBACK TO rows")
            connection.execute("RELEASE rows")
            return False
        connection.execute("RELEASE rows")
        return True

    # -- group commit (event loop side) ---------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError(f"registry {self.path} is closed")

    def _write(
        self, op: _WriteOp, loaded: _Loaded | None = None, *, slow: bool = False
    ) -> asyncio.Future[object]:
        """Queue ``op`` for the next group commit; the future resolves once committed.

        A ``slow`` op (encoding a snapshot) gets a transaction of its own, after
        the ops queued before it have committed.
        """
        future = self._enqueue(op, _SLOW if slow else _WRITE)
        if loaded is not None:
            loaded.in_flight.add(future)
            future.add_done_callback(loaded.in_flight.discard)
        return future

    async def _read(self, function: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``function`` on the writer thread, after the writes queued before it."""
        try:
            return await self._enqueue(function, _READ)  # type: ignore[return-value]
        except sqlite3.DatabaseError as error:
            raise StorageCorruptError(
                f"reading {self.path} failed: {error}", path=str(self.path)
            ) from error

    def _enqueue(
        self,
        op: _WriteOp,
        kind: int,
        row: _LogRow | None = None,
    ) -> asyncio.Future[object]:
        """Hand ``op`` to the writer thread: one put on its inbox, and a drain job
        submitted only when none is running. With a log ``row``, its future is the
        row's (settled by :func:`_settle`) instead of a new one."""
        future: asyncio.Future[Any] = (
            asyncio.get_running_loop().create_future() if row is None else row.stored
        )
        self._inbox.put((op, future, kind, row))
        if kind != _WRITE:  # only plain writes wait for the commit interval
            self._wake.set()
        if not self._draining:
            self._draining = True
            try:
                self._executor.submit(self._drain)
            except RuntimeError as error:  # the executor is shut down
                self._draining = False
                closed = RegistryClosedError(f"registry {self.path} is closed: {error}")
                if row is not None:
                    row.fail(closed)
                else:
                    future.set_exception(closed)
        return future

    def _drain(self) -> None:
        """The writer thread's job: run what the inbox holds, in order (writes in
        group commits, a slow write or a read alone), and wait up to ``_LINGER``
        seconds for more before ending (so a busy server hands work over with a
        queue put, not an executor job per commit). Each commit settles its
        futures with one call into their loop.

        The job ends with the inbox empty and ``_draining`` False; a put that
        raced with the ending sees ``_draining`` False and submits the next job
        (the executor's one thread runs them one after the other)."""
        inbox = self._inbox
        carried: _Queued | None = None
        while True:
            if carried is not None:
                first, carried = carried, None
            else:
                try:
                    item = inbox.get(timeout=_LINGER)
                except Empty:
                    self._draining = False
                    if inbox.empty():
                        return
                    self._draining = True
                    continue
                if item is None:  # close(): end now
                    self._draining = False
                    return
                first = item
            kind = first[2]
            batch = [first]
            if kind == _WRITE or kind == _URGENT:
                if kind == _WRITE:
                    # Group commits start commit_interval apart at most: the thread
                    # sleeps to then (not woken by each write that arrives, which
                    # would cost a wake-up and a GIL handover per write), and the
                    # writes queued meanwhile join this commit. An urgent one (a
                    # claim a client's handshake waits for) or close() ends the
                    # sleep (_wake).
                    wait = self._last_commit + self.commit_interval - time.monotonic()
                    if wait > 0:
                        self._wake.wait(wait)
                # Cleared before the queue is drained: a wake-up for an item the
                # drain below misses stays set, so no urgent write waits.
                self._wake.clear()
                # Every write up to the first slow write or read shares the commit.
                while True:
                    try:
                        item = inbox.get_nowait()
                    except Empty:
                        break
                    if item is None:
                        inbox.put(None)  # seen after this commit
                        break
                    if item[2] != _WRITE and item[2] != _URGENT:
                        carried = item
                        break
                    batch.append(item)
            else:
                # A read or a slow write raised the flag: lowered, unless ops wait
                # behind it (one of them may be urgent; at worst a write then
                # commits before its interval is out).
                self._wake.clear()
                if not inbox.empty():
                    self._wake.set()
            outcomes: list[tuple[bool, object]]
            if kind == _READ:
                try:
                    outcomes = [(True, batch[0][0](self._connection))]
                except Exception as error:
                    outcomes = [(False, error)]
            else:
                self._last_commit = time.monotonic()
                try:
                    outcomes = self._run_batch([item[0] for item in batch])
                except Exception as error:
                    path = str(self.path)
                    failure = StorageError(f"writing to {path} failed: {error}", path=path)
                    outcomes = [(False, failure)] * len(batch)
            loop = batch[0][1].get_loop()
            try:
                loop.call_soon_threadsafe(_settle, batch, outcomes)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass
            if kind != _READ and carried is None and inbox.empty():
                # Sleep out the interval now, not blocked on the empty inbox:
                # under load the next writes are waiting when it ends, so no put
                # has to wake this thread first (a futex wake on the loop's side,
                # a wake-up and a GIL handover here, per commit). A write that
                # comes meanwhile commits when the interval ends, as it would
                # have; any other op and close() end the sleep (_wake).
                wait = self._last_commit + self.commit_interval - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)

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
            logged_bytes=sum(len(batch) for batch in stored.logged_batches),
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
            # A replaced state: the kept history restarts at it.
            _restart_history(connection, document_id, data)

        await self._write(store, loaded)
        loaded.durable = loaded.durable.merge(snapshot.version_vector)

    async def durable_version_vector(self, document_id: str) -> VersionVector:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        return loaded.durable

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        """Import, queue the log row (compacting when due); ``stored`` resolves at the commit."""
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(loaded.document, changes)
        encoded = encoding_of(applied, changes, encoded)
        if applied:
            stored = self._log(document_id, loaded, applied, encoded)
        else:
            stored = asyncio.ensure_future(self._settled(loaded))
        return applied_result(loaded.document, changes, applied, refusal, stored, encoded)

    @staticmethod
    async def _settled(loaded: _Loaded) -> VersionVector:
        """The durable version vector once the writes queued so far are committed."""
        if loaded.in_flight:
            await asyncio.gather(*list(loaded.in_flight), return_exceptions=True)
        return loaded.durable

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
            # row is queued ahead of it, so deleting the log stays exact. The
            # merged state is more than its changes: the history restarts there.
            stored = await self._queue_snapshot(document_id, loaded, restart_history=True)
            if isinstance(stored, Snapshot):
                loaded.durable = loaded.durable.merge(stored.version_vector)
        if refusal is not None:
            raise ChangesRejectedError(refusal, ready) from refusal
        return merged, ready

    def _log(
        self, document_id: str, loaded: _Loaded, applied: Sequence[Change], data: bytes
    ) -> asyncio.Future[VersionVector]:
        """Queue ``applied`` (encoded as ``data``) for the log, compacting when due.

        The future resolves to the durable version vector once the row is committed.
        """
        count = len(applied)
        stored: asyncio.Future[VersionVector] = asyncio.get_running_loop().create_future()
        loaded.in_flight.add(stored)
        self._enqueue(_Append(document_id, count, data), _WRITE, _LogRow(loaded, applied, stored))
        loaded.changes_since_snapshot += count
        loaded.logged_bytes += len(data)
        last = loaded.snapshot
        if loaded.changes_since_snapshot >= self.snapshot_every and loaded.logged_bytes >= (
            0 if last is None else len(last)
        ):
            # Queued right behind the append, so it lands in the same or the next commit.
            self._queue_snapshot(document_id, loaded)
        return stored

    def _queue_snapshot(
        self, document_id: str, loaded: _Loaded, *, restart_history: bool = False
    ) -> asyncio.Future[object]:
        """Capture the in-memory document now and queue "encode it, store it, drop
        the log it covers"; the future resolves to the stored :class:`Snapshot`.

        Every change in memory has had its log row queued before this point
        and the writer runs ops in queue order, so at the moment the op runs
        every row already in the table for this document is covered by the
        snapshot: deleting them all is exact. The capture is a copy, so the
        writer thread encodes it while the loop goes on changing the document.
        """
        capture = Snapshot.capture(loaded.document)
        loaded.changes_since_snapshot = 0
        loaded.logged_bytes = 0

        retention = self.history_retention

        def store(connection: sqlite3.Connection) -> Snapshot:
            snapshot = capture.encode()  # the walk and zlib, on the writer thread
            connection.execute(
                "INSERT OR REPLACE INTO snapshots (document_id, data, change_count, created_at)"
                " VALUES (?, ?, 0, ?)",
                (document_id, snapshot.to_bytes(), time.time()),
            )
            if restart_history:
                _restart_history(connection, document_id, snapshot.to_bytes())
            else:
                # The log rows the snapshot covers stay readable as history.
                connection.execute(
                    "INSERT OR IGNORE INTO history (seq, document_id, change_count, data)"
                    " SELECT seq, document_id, change_count, data FROM changes"
                    " WHERE document_id = ?",
                    (document_id,),
                )
                if retention is not None:
                    _apply_retention(connection, document_id, retention)
            connection.execute("DELETE FROM changes WHERE document_id = ?", (document_id,))
            return snapshot

        committed = self._write(store, loaded, slow=True)

        def stored(future: asyncio.Future[object]) -> None:
            # Periodic snapshots are not awaited by anyone: retrieve the
            # outcome here (a failure leaves the log in place, nothing lost).
            if future.cancelled() or future.exception() is not None:
                return
            snapshot = future.result()
            if isinstance(snapshot, Snapshot):
                loaded.snapshot = snapshot
                self.notify_snapshot(document_id, snapshot)

        committed.add_done_callback(stored)
        return committed

    async def create_snapshot(self, document_id: str) -> Snapshot:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        snapshot = await self._queue_snapshot(document_id, loaded)
        if not isinstance(snapshot, Snapshot):  # pragma: no cover - the op returns one
            raise StorageError(f"snapshot of {document_id!r} vanished while being stored")
        return snapshot

    async def history_page(self, document_id: str, cursor: int, max_bytes: int) -> HistoryPage:
        """A page of the kept history straight from the file: the history rows
        and the log since the last snapshot, in log order (the cursor is the
        last row's sequence number), stored batches as they are."""
        self._check_open()

        def read(connection: sqlite3.Connection) -> tuple[bytes | None, list[bytes], int] | None:
            if (
                connection.execute(
                    "SELECT 1 FROM documents WHERE id = ?", (document_id,)
                ).fetchone()
                is None
            ):
                return None
            base_row = connection.execute(
                "SELECT data FROM history_bases WHERE document_id = ?", (document_id,)
            ).fetchone()
            rows = connection.execute(
                "SELECT seq, data FROM history WHERE document_id = ? AND seq > ?"
                " UNION ALL SELECT seq, data FROM changes WHERE document_id = ? AND seq > ?"
                " ORDER BY seq",
                (document_id, cursor, document_id, cursor),
            )
            batches: list[bytes] = []
            size = 0
            last = cursor
            more = False
            for seq, data in rows:
                if batches and size >= max_bytes:
                    more = True
                    break
                batches.append(bytes(data))
                size += len(data)
                last = int(seq)
            rows.close()
            base = None if base_row is None else bytes(base_row[0])
            return base, batches, (last if more else 0)

        found = await self._read(read)
        if found is None:
            raise DocumentNotFoundError(document_id)
        base_data, batches, next_cursor = found
        if base_data is None:
            return HistoryPage(VersionVector(), None, tuple(batches), next_cursor)
        try:
            base = Snapshot.from_bytes(base_data)
        except DecodeError as error:
            raise StorageCorruptError(
                f"the history base of {document_id!r} in {self.path} does not decode: {error}",
                path=str(self.path),
            ) from error
        return HistoryPage(
            base.version_vector, base if cursor == 0 else None, tuple(batches), next_cursor
        )

    async def get_latest_snapshot(self, document_id: str) -> Snapshot | None:
        loaded = await self._load(document_id)
        if loaded is None:
            raise DocumentNotFoundError(document_id)
        return loaded.snapshot

    async def claim_peer(self, document_id: str, peer_id: str, secret_hash: bytes) -> bool:
        """First claim wins, committed before returning (see the contract)."""
        self._check_open()
        candidate = check_secret_hash(secret_hash)
        key = (document_id, peer_id)
        stored = self._peer_claims.get(key)
        if stored is None:

            def claim(connection: sqlite3.Connection) -> bytes:
                connection.execute(
                    "INSERT OR IGNORE INTO peers (document_id, peer_id, secret_hash, claimed_at)"
                    " VALUES (?, ?, ?, ?)",
                    (document_id, peer_id, candidate, time.time()),
                )
                row = connection.execute(
                    "SELECT secret_hash FROM peers WHERE document_id = ? AND peer_id = ?",
                    (document_id, peer_id),
                ).fetchone()
                return bytes(row[0])

            # Answered before the handshake is: not held back by the commit interval.
            result = await self._enqueue(claim, _URGENT)
            stored = result if isinstance(result, bytes) else candidate
            self._peer_claims[key] = stored
        return hmac.compare_digest(stored, candidate)

    async def claimed_peers(self, document_id: str, peer_ids: Iterable[str]) -> set[str]:
        self._check_open()
        asked = list(peer_ids)
        wanted = [peer for peer in asked if (document_id, peer) not in self._peer_claims]
        found = {peer for peer in asked if (document_id, peer) in self._peer_claims}
        if wanted:

            def read(connection: sqlite3.Connection) -> list[tuple[str, bytes]]:
                rows: list[tuple[str, bytes]] = []
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start : start + 500]
                    marks = ", ".join("?" for _ in chunk)
                    rows.extend(
                        (str(peer), bytes(secret))
                        for peer, secret in connection.execute(
                            "SELECT peer_id, secret_hash FROM peers WHERE document_id = ?"
                            f" AND peer_id IN ({marks})",
                            (document_id, *chunk),
                        )
                    )
                return rows

            for peer, secret in await self._read(read):
                self._peer_claims[(document_id, peer)] = secret
                found.add(peer)
        return found

    async def remove_document(self, document_id: str) -> bool:
        self._check_open()
        for key in [key for key in self._peer_claims if key[0] == document_id]:
            del self._peer_claims[key]
        loaded = self._loaded.pop(document_id, None)
        if loaded is not None and loaded.in_flight:
            await asyncio.gather(*loaded.in_flight, return_exceptions=True)

        def delete(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM changes WHERE document_id = ?", (document_id,))
            connection.execute("DELETE FROM snapshots WHERE document_id = ?", (document_id,))
            connection.execute("DELETE FROM history WHERE document_id = ?", (document_id,))
            connection.execute("DELETE FROM history_bases WHERE document_id = ?", (document_id,))
            connection.execute("DELETE FROM peers WHERE document_id = ?", (document_id,))
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

    async def check_health(self) -> None:
        """Read from the file (``/healthz``)."""
        self._check_open()
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    def loaded_document_ids(self) -> list[str]:
        """Ids of the documents currently held in memory (for tests and monitoring)."""
        return list(self._loaded)

    async def flush(self) -> None:
        """Return once every write queued before the call is settled (the writer
        thread runs its inbox in order: a no-op queued last settles last)."""
        self._check_open()
        await self._enqueue(lambda connection: None, _READ)

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
        self._inbox.put(None)  # end the writer thread's job now, not after its linger
        self._wake.set()
        loop = asyncio.get_running_loop()

        def finish(connection: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.close()

        await loop.run_in_executor(self._executor, finish, self._connection)
        self._executor.shutdown(wait=True)
        self._unlock_file()
        self._loaded.clear()


def _restart_history(connection: sqlite3.Connection, document_id: str, base: bytes) -> None:
    """The kept history of ``document_id`` starts at the state ``base`` (encoded snapshot)."""
    connection.execute("DELETE FROM history WHERE document_id = ?", (document_id,))
    connection.execute(
        "INSERT OR REPLACE INTO history_bases (document_id, data) VALUES (?, ?)",
        (document_id, base),
    )


def _apply_retention(connection: sqlite3.Connection, document_id: str, retention: int) -> None:
    """Drop the oldest history batches of ``document_id`` while it holds more than
    ``retention`` changes; the state before the first kept batch becomes the base.

    Runs on the writer thread, inside the compaction's transaction: the dropped
    batches are replayed onto the old base (only they are decoded). A batch
    that does not decode leaves the history as it is (logged): nothing is
    dropped that the base would not hold.
    """
    total = connection.execute(
        "SELECT COALESCE(SUM(change_count), 0) FROM history WHERE document_id = ?",
        (document_id,),
    ).fetchone()[0]
    excess = int(total) - retention
    if excess <= 0:
        return
    dropped: list[bytes] = []
    last = 0
    for seq, count, data in connection.execute(
        "SELECT seq, change_count, data FROM history WHERE document_id = ? ORDER BY seq",
        (document_id,),
    ):
        if excess < int(count):
            break  # dropping it would keep fewer than ``retention``
        dropped.append(bytes(data))
        excess -= int(count)
        last = int(seq)
    if not dropped:
        return
    base_row = connection.execute(
        "SELECT data FROM history_bases WHERE document_id = ?", (document_id,)
    ).fetchone()
    try:
        if base_row is None:
            document = CRDTDocument(document_id=document_id)
        else:
            document = CRDTDocument.from_snapshot(Snapshot.from_bytes(bytes(base_row[0])))
        for data in dropped:
            document.import_changes(decode_changes(data))
    except (DecodeError, CRDTError) as error:
        _log.error(
            "history of %r kept whole: its oldest batches do not replay: %s", document_id, error
        )
        return
    connection.execute(
        "INSERT OR REPLACE INTO history_bases (document_id, data) VALUES (?, ?)",
        (document_id, document.take_snapshot().to_bytes()),
    )
    connection.execute(
        "DELETE FROM history WHERE document_id = ? AND seq <= ?", (document_id, last)
    )
