"""The Redis registry: several server processes serve the same documents.

Theory of operation
-------------------
Every process keeps the documents its clients use in memory (it needs them
to tell a joining client what it lacks), and Redis holds the truth. Per
document (``K`` is the percent-encoded id, ``P`` the key prefix):

* ``P:doc:K:stream`` -- a stream; every batch of changes a process applies is
  appended to it (``XADD``) with the process's id (``o``), a kind (``t``:
  ``c`` changes, ``s`` a client's merged snapshot upload) and the encoded
  bytes (``d``). The sender's ``Ack`` waits for the append: what Redis has
  is as durable as its persistence setting (``docs/server.md``).
* ``P:doc:K:meta`` -- a hash: the ``epoch`` and ``upto``, the last stream
  entry the stored snapshot covers;
* ``P:doc:K:snapshot`` -- the latest snapshot;
* ``P:doc:K:peers`` -- the replica identity claims (:meth:`claim_peer`);
* ``P:doc:K:lock`` -- the compaction lock (a random token with an expiry);
* ``P:doc:K:history`` -- the kept history: a stream of the batches compaction
  trimmed from ``P:doc:K:stream`` (same ids; fields ``d`` and ``n``, the change
  count), and ``P:doc:K:hbase``, the state it starts at when it does not reach
  back to the creation (meta ``hbase_id``: the last entry that state holds;
  ``hcount``: changes in the history; ``hv``: the document keeps a history);
* ``P:documents`` -- the set of document ids; ``P:presence:K`` -- a pub/sub
  channel for presence.

**Loading** reads meta, snapshot and stream in one ``MULTI`` and applies the
entries after ``upto``. **Reading**: a *reader* task follows the streams of up
to ``streams_per_read`` loaded documents with one blocking ``XREAD`` (from the
last entry seen of each), so a process holds one connection per 500 documents,
not one per document; entries this process appended are skipped (they are in
its document already: no relay loops), the others are applied and handed to
the server (:class:`~server.registry.base.RegistryObserver`) to relay. Each
reader also reads ``P:process:ID:wake:N``, a stream of this process alone: a
document that starts being followed while the reader blocks appends to it, so
the read ends and the next one includes the new stream. A malformed entry is
reported and skipped for its document only; a key of the wrong type fails the
whole ``XREAD``, so the reader then asks the ``TYPE`` of its documents' keys,
reports the culprit and leaves it out of the reads for a few seconds (then
looks again): one document's bad key never stalls the others.

**Appending** keeps the order of calls per document. A batch that cannot be
appended (Redis unreachable) fails its sender's wait (the server tells the
client, which keeps the changes unacknowledged and reconnects) but stays
queued and is retried, in order, until Redis answers; the durable version
vector only ever covers appended batches, so an ``Ack`` never claims what a
failed append holds. When a retry succeeds the observers hear
``durable_advanced`` and acknowledge.

**Compaction** (snapshot + trim) runs every ``snapshot_every`` entries, in at
most one process at a time per document: it takes ``P:doc:K:lock`` with a
random token (``SET NX PX``), snapshots its document (which holds every entry
up to the one its tail read last, when nothing waits for dependencies), and
commits with a script that first checks the token is still its own (a
process whose lock expired cannot write: *fenced*), stores the snapshot and
``upto``, and trims only entries that the snapshot covers *and* that are older
than ``retention``; the lock is released by a script that deletes it only if
it still holds the token. The same script first moves the entries it trims
into the history stream; history retention then folds the oldest history
batches into ``P:doc:K:hbase`` under the same lock (``_keep_history_within``).
A process whose reader fell behind a trim (it was cut off from Redis for
longer than ``retention``) merges the snapshot instead of the entries it
missed.

**Presence** goes over pub/sub (at most once, which is enough for state that
is renewed every few seconds); messages carry the process id so a process
ignores its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTError,
    DecodeError,
    Snapshot,
    VersionVector,
    decode_changes,
    encode_changes,
)
from crdt_sync.sync import AwarenessUpdate, decode_message, encode_message

from ..exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    DocumentNotFoundError,
    RegistryClosedError,
    StorageError,
    StorageUnavailableError,
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
    version_vector_of,
)

__all__ = ["RedisServerRegistry", "RedisStats"]

_log = logging.getLogger(__name__)

# Redis errors and the socket errors under them: "Redis cannot be used right now".
_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)

# Shared by the scripts: stream ids as (ms, seq) and their order; a stream entry's fields.
_LUA_IDS = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms) or 0, tonumber(seq) or 0
end
local function after(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am > bm or (am == bm and as > bs)
end
local function fields(flat)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
"""

# KEYS: lock, snapshot, meta, stream, history, history base. ARGV: token, snapshot
# bytes, upto, retention ms. Returns 1 (stored), 0 (the lock is not ours: fenced
# off), -1 (a snapshot as new exists). The entries it trims go to the history first.
_COMMIT_SNAPSHOT = (
    _LUA_IDS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local upto = ARGV[3]
if not after(upto, redis.call('HGET', KEYS[3], 'upto') or '0-0') then return -1 end
if not redis.call('HGET', KEYS[3], 'hv') then
  -- Kept by an older build (no history): the history starts at the stored snapshot.
  local old = redis.call('GET', KEYS[2])
  if old then redis.call('SET', KEYS[6], old) end
  redis.call('HSET', KEYS[3], 'hv', 1, 'hbase_id', redis.call('HGET', KEYS[3], 'upto') or '0-0')
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'upto', upto)
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
local up_ms, up_seq = parse(upto)
local min_ms, min_seq = up_ms, up_seq + 1
if cutoff < min_ms then min_ms, min_seq = cutoff, 0 end
if min_ms > 0 then
  local minid = string.format('%d-%d', min_ms, min_seq)
  local base_id = redis.call('HGET', KEYS[3], 'hbase_id') or '0-0'
  local top = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
  local last = top[1] and top[1][1] or '0-0'
  if after(base_id, last) then last = base_id end
  local moved = 0
  for _, entry in ipairs(redis.call('XRANGE', KEYS[4], '-', '(' .. minid)) do
    local f = fields(entry[2])
    if f['t'] == 'c' and f['d'] and after(entry[1], last) then
      redis.call('XADD', KEYS[5], entry[1], 'd', f['d'], 'n', f['n'] or '1')
      moved = moved + (tonumber(f['n']) or 1)
    end
  end
  if moved > 0 then redis.call('HINCRBY', KEYS[3], 'hcount', moved) end
  redis.call('XTRIM', KEYS[4], 'MINID', minid)
end
return 1
"""
)

# KEYS: stream, meta, history, history base. ARGV: origin, upload bytes, merged
# state (snapshot bytes), the last entry it covers, that id's successor.
# Appends a client's snapshot upload; the kept history restarts at the merged state.
_APPEND_UPLOAD = """
local id = redis.call('XADD', KEYS[1], '*', 'o', ARGV[1], 't', 's', 'd', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[5])
local count = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'n' then count = count + (tonumber(entry[2][i + 1]) or 1) end
  end
end
redis.call('HSET', KEYS[2], 'hv', 1, 'hbase_id', ARGV[4], 'hcount', count)
return id
"""

# KEYS: lock, meta, history, history base. ARGV: token, the base id read, the new
# base id, the new base (snapshot bytes), that id's successor, changes dropped.
# History retention: the oldest history batches give way to a base holding them.
_DROP_HISTORY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[2], 'hbase_id') or '0-0') ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[2], 'hbase_id', ARGV[3])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[5])
redis.call('HINCRBY', KEYS[2], 'hcount', -tonumber(ARGV[6]))
return 1
"""

# KEYS: live-connection marks. ARGV: process id, expiry ms. Renews the marks still ours.
_RENEW_LIVE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 0
"""

# KEYS: lock. ARGV: token. Deletes the lock only if it still holds our token.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: Entries one read takes per stream at most.
_READ_COUNT = 1000
#: Entries one round trip of a history page reads from each of history and stream.
_HISTORY_READ = 256
#: Attempts at a history page while retention keeps moving its base.
_HISTORY_TRIES = 5
#: Seconds a document whose keys hold the wrong type is left out of reads.
_BROKEN_PAUSE = 5.0
#: Milliseconds a live-connection mark lives unless renewed (a third of it, each time).
_LIVE_TTL_MS = 10_000
#: Longest wait of the presence subscriber before it looks at what to subscribe to.
_PRESENCE_POLL = 0.25
#: Milliseconds a process's wake stream outlives its last use (a killed process's).
_WAKE_TTL_MS = 3_600_000


def _valid_id(entry_id: str) -> bool:
    """Whether ``entry_id`` is a stream id ("1700000000000-3")."""
    ms, dash, seq = entry_id.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()


def _cursor_id(cursor: int) -> str:
    """The stream id a history cursor stands for (0: before the first entry)."""
    return f"{cursor >> 20}-{cursor & 0xFFFFF}"


def _id_cursor(entry_id: str) -> int:
    """A history cursor for a stream id (``ms << 20 | seq``; ids Redis makes have a
    sequence far below 2**20 within one millisecond)."""
    ms, seq = _id_key(entry_id)
    return ms << 20 | min(seq, 0xFFFFF)


def _replay(document_id: str, base: bytes | None, batches: Sequence[bytes]) -> bytes:
    """The state ``base`` (an encoded snapshot, or empty) plus ``batches``, as an encoded
    snapshot (history retention; runs in a worker thread, on its own objects).

    Raises:
        CRDTError: a batch does not decode or does not apply.
    """
    if base is None:
        document = CRDTDocument(document_id=document_id)
    else:
        document = CRDTDocument.from_snapshot(Snapshot.from_bytes(bytes(base)))
    for batch in batches:
        _, refusal = import_and_collect(document, decode_changes(batch))
        if refusal is not None:
            raise refusal
    return document.take_snapshot().to_bytes()


def _next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id``."""
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair ("1700000000000-3" -> (1700000000000, 3))."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class RedisStats:
    """Counters for monitoring (``/metrics``); they only grow, except the lag."""

    #: Batches appended to streams (one XADD each) and the round trips that took.
    appends: int = 0
    append_round_trips: int = 0
    #: Blocking reads of streams (one round trip each, over many documents).
    read_round_trips: int = 0
    #: Every round trip to Redis (appends, reads, loads, claims, compaction, presence).
    round_trips: int = 0
    #: Entries of other processes read from streams, and the changes they held.
    entries_received: int = 0
    changes_received: int = 0
    #: Malformed stream entries skipped, and presence messages dropped as malformed.
    malformed_entries: int = 0
    #: Compactions committed, and ones skipped because another process held the lock.
    compactions: int = 0
    compactions_skipped: int = 0
    #: Failed Redis operations (appends, reads, presence).
    errors: int = 0
    #: Seconds between an entry's append and this process reading it (latest).
    lag_seconds: float = 0.0


@dataclass
class _Append:
    """A batch queued for the stream, and who waits for it."""

    kind: bytes
    data: bytes
    covers: VersionVector
    #: Changes in it (``c``); for an upload (``s``): the merged state and the last
    #: stream entry that state had read (the kept history restarts there).
    count: int = 0
    merged: bytes = b""
    merged_upto: str = "0-0"
    waiters: list[asyncio.Future[VersionVector]] = field(default_factory=list)


@dataclass(eq=False)
class _Doc:
    """A loaded document with its bookkeeping."""

    document_id: str
    document: CRDTDocument
    epoch: str
    durable: VersionVector
    last_id: str
    snapshot: Snapshot | None = None
    since_snapshot: int = 0
    outbox: collections.deque[_Append] = field(default_factory=collections.deque)
    flusher: asyncio.Task[None] | None = None
    compaction: asyncio.Task[Snapshot | None] | None = None
    failed_appends: bool = False
    # Ids of this process's clients' changes that wait for dependencies: not in
    # Redis yet. Whoever makes them ready (a later apply, or another process's
    # entry) must append them.
    local_pending: set[Any] = field(default_factory=set)
    # The reader that follows the document's stream (None once it stops following).
    reader: _Reader | None = None
    # When (time.monotonic()) the latest read that reached the end of the stream
    # began: entries after last_id were appended after that, so none of them can
    # have been trimmed within ``retention`` of it.
    caught_up_at: float = 0.0
    # Until when (time.monotonic()) reads leave the document out: one of its keys
    # holds the wrong type (checked again then).
    broken_until: float = 0.0


@dataclass(eq=False)
class _Reader:
    """One blocking ``XREAD`` over the streams of up to ``streams_per_read`` documents.

    ``wake_key`` is a stream of this process alone, read with the documents'
    streams: appending to it ends the blocking read at once, so a document
    that starts being followed joins the next read without waiting ``block``.
    """

    wake_key: str
    docs: dict[str, _Doc] = field(default_factory=dict)
    wake_id: str = "0-0"
    task: asyncio.Task[None] | None = None
    # True while a read is in flight whose set of streams is out of date.
    stale: bool = False
    reading: bool = False


class RedisServerRegistry(CRDTServerRegistry):
    """Documents in Redis, shared by every server process that uses the same Redis.

    Args:
        url: ``redis://HOST:PORT/DB`` (``rediss://`` for TLS, ``unix://`` too).
        snapshot_every: compact a document's stream after this many entries.
        retention: seconds an entry stays in the stream after a snapshot covers
            it (so that a process whose tail lags still reads it).
        key_prefix: prefix of every key and channel (several deployments can
            share one Redis).
        process_id: this process's id in stream entries (default: random).
        block: seconds one blocking read waits for new entries.
        timeout: seconds a Redis command may take before it counts as failed.
        retry_max: longest pause between retries while Redis is unreachable.
        lock_ttl: seconds a compaction lock lives if its holder vanishes.
        streams_per_read: documents one blocking read follows at most (one
            connection each such read: 1,000 loaded documents take two).
        history_retention: how many of a document's newest changes its kept
            history holds at least (None: all); as ``SqliteServerRegistry``.

    Every public coroutine raises :class:`~server.exceptions.RegistryClosedError`
    after :meth:`close`, and :class:`~server.exceptions.StorageError` when
    Redis cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        snapshot_every: int = 500,
        retention: float = 60.0,
        key_prefix: str = "crdt",
        process_id: str | None = None,
        block: float = 1.0,
        timeout: float = 5.0,
        retry_max: float = 2.0,
        lock_ttl: float = 30.0,
        streams_per_read: int = 500,
        history_retention: int | None = None,
    ) -> None:
        super().__init__()
        if snapshot_every < 1 or streams_per_read < 1:
            raise ValueError("snapshot_every and streams_per_read must be at least 1")
        if history_retention is not None and history_retention < 0:
            raise ValueError("history_retention must be at least 0 (or None: keep all)")
        self.history_retention = history_retention
        if retention < 0 or not block > 0 or not timeout > 0 or not retry_max > 0:
            raise ValueError("retention must not be negative; block, timeout, retry_max positive")
        self.url = url
        self.snapshot_every = snapshot_every
        self.retention = retention
        self.key_prefix = key_prefix
        self.process_id = process_id or uuid.uuid4().hex
        self.block = block
        self.timeout = timeout
        self.retry_max = retry_max
        self.lock_ttl = lock_ttl
        self.streams_per_read = streams_per_read
        self.stats = RedisStats()
        self._origin = self.process_id.encode()
        retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1)
        try:
            self._redis = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=retry,
            )
            # Readers block for ``block`` seconds: their own pool, a longer timeout.
            self._tail_redis = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout + block,
                socket_connect_timeout=timeout,
                retry=retry,
            )
        except ValueError as error:
            raise StorageError(f"not a Redis URL: {url!r} ({error})") from error
        self._commit_script = self._redis.register_script(_COMMIT_SNAPSHOT)
        self._release_script = self._redis.register_script(_RELEASE_LOCK)
        self._upload_script = self._redis.register_script(_APPEND_UPLOAD)
        self._renew_script = self._redis.register_script(_RENEW_LIVE)
        self._drop_history_script = self._redis.register_script(_DROP_HISTORY)
        self._loaded: dict[str, _Doc] = {}
        self._loading: dict[str, asyncio.Future[_Doc | None]] = {}
        self._peer_claims: dict[tuple[str, str], bytes] = {}
        self._closed = False
        self._reachable = True
        self._last_error = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        # The readers of the loaded documents' streams (one connection each).
        self._readers: list[_Reader] = []
        self._reader_serial = 0
        # (document id, peer id) of this process's live connections, and their renewer.
        self._live: set[tuple[str, str]] = set()
        self._live_renewer: asyncio.Task[None] | None = None
        # Presence: outgoing messages in order, and one subscriber connection.
        self._presence_out: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._presence_wakeup: asyncio.Event | None = None
        self._presence_publisher: asyncio.Task[None] | None = None
        self._presence_reader: asyncio.Task[None] | None = None
        self._presence_resubscribe: asyncio.Event | None = None

    # -- keys ---------------------------------------------------------------------------

    def _key(self, document_id: str, part: str) -> str:
        return f"{self.key_prefix}:doc:{urllib.parse.quote(document_id, safe='')}:{part}"

    def _channel(self, document_id: str) -> str:
        return f"{self.key_prefix}:presence:{urllib.parse.quote(document_id, safe='')}"

    def _document_id_of_channel(self, channel: str) -> str:
        return urllib.parse.unquote(channel.rsplit(":", 1)[1])

    @property
    def _documents_key(self) -> str:
        return f"{self.key_prefix}:documents"

    # -- plumbing -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError(f"the Redis registry at {self.url} is closed")

    def _unavailable(self, doing: str, error: BaseException) -> StorageUnavailableError:
        self.stats.errors += 1
        self._reachable = False
        self._last_error = f"{doing}: {error!r}"
        return StorageUnavailableError(f"Redis at {self.url} is unavailable ({doing}: {error})")

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _report(self, document_id: str | None, message: str) -> None:
        _log.error("%s", message)
        for observer in self.observers():
            observer.storage_problem(document_id, message)

    @property
    def reachable(self) -> bool:
        """Whether the last Redis operation succeeded."""
        return self._reachable

    async def check_health(self) -> None:
        self._check_open()
        try:
            self.stats.round_trips += 1
            await self._redis.ping()
        except _UNAVAILABLE as error:
            raise self._unavailable("ping", error) from error
        self._reachable = True

    # -- loading ------------------------------------------------------------------------

    async def _load(self, document_id: str) -> _Doc | None:
        self._check_open()
        loaded = self._loaded.get(document_id)
        if loaded is not None:
            return loaded
        pending = self._loading.get(document_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Doc | None] = asyncio.get_running_loop().create_future()
        self._loading[document_id] = future
        try:
            doc = await self._read_document(document_id)
            if doc is not None:
                self._loaded[document_id] = doc
                self._start_following(doc)
            future.set_result(doc)
            return doc
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # nobody else may be waiting
            raise
        finally:
            del self._loading[document_id]

    async def _read_document(self, document_id: str) -> _Doc | None:
        started = time.monotonic()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key(document_id, "meta"))
                pipe.get(self._key(document_id, "snapshot"))
                pipe.xrange(self._key(document_id, "stream"))
                self.stats.round_trips += 1
                meta, snapshot_data, entries = await pipe.execute()
        except _UNAVAILABLE as error:
            raise self._unavailable(f"loading {document_id!r}", error) from error
        self._reachable = True
        epoch = meta.get(b"epoch")
        if epoch is None:
            return None
        upto = _text(meta.get(b"upto", b"0-0"))
        if not _valid_id(upto):
            self._report(document_id, f"the meta of {document_id!r} holds no stream id: {upto!r}")
            upto = "0-0"  # replay the whole stream onto the snapshot: harmless
        snapshot: Snapshot | None = None
        document: CRDTDocument | None = None
        if snapshot_data is not None:
            try:
                snapshot = Snapshot.from_bytes(bytes(snapshot_data))
                document = CRDTDocument.from_snapshot(snapshot)
            except (CRDTError, ValueError) as error:
                self._report(document_id, f"the snapshot of {document_id!r} does not load: {error}")
                snapshot = None
        if document is None:
            document = CRDTDocument(document_id=document_id)
            upto = "0-0"  # no usable snapshot: replay whatever the stream still holds
        doc = _Doc(document_id, document, _text(epoch), VersionVector(), upto, snapshot)
        doc.caught_up_at = started
        for entry_id, fields in entries:
            entry = _text(entry_id)
            if _id_key(entry) <= _id_key(upto):
                continue
            doc.last_id = entry
            self._ingest(doc, entry, fields, notify=False)
        doc.durable = document.version_vector
        return doc

    def _start_following(self, doc: _Doc) -> None:
        """Have a reader follow the document's stream (from ``doc.last_id``)."""
        if doc.reader is None:
            reader = next((r for r in self._readers if len(r.docs) < self.streams_per_read), None)
            if reader is None:
                self._reader_serial += 1
                wake = f"{self.key_prefix}:process:{self.process_id}:wake:{self._reader_serial}"
                reader = _Reader(wake)
                self._readers.append(reader)
            reader.docs[doc.document_id] = doc
            doc.reader = reader
            if reader.task is None or reader.task.done():
                reader.task = self._spawn(self._read_loop(reader), f"crdt-redis-read-{wake}")
            elif reader.reading and not reader.stale:
                # Its blocking read does not include this stream: end that read now.
                reader.stale = True
                self._spawn(self._wake(reader), "crdt-redis-wake")
        self._ensure_presence_tasks()
        if self._presence_resubscribe is not None:
            self._presence_resubscribe.set()

    async def _wake(self, reader: _Reader) -> None:
        """End ``reader``'s blocking read (an entry in its wake stream); best effort:
        if Redis cannot be reached, the read fails too and the next one is up to date."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(reader.wake_key, {"w": b""}, maxlen=1, approximate=False)
                pipe.pexpire(reader.wake_key, _WAKE_TTL_MS)
                self.stats.round_trips += 1
                await pipe.execute()
        except _UNAVAILABLE as error:
            self._unavailable("waking a stream reader", error)

    # -- reading what other processes appended ------------------------------------------

    async def _read_loop(self, reader: _Reader) -> None:
        """Follow the streams of ``reader``'s documents with one blocking ``XREAD``;
        apply and hand over what other processes appended.

        A document whose latest read that reached its stream's end began
        ``retention / 2`` seconds ago or more (its reader was cut off from
        Redis) also has the snapshot's ``upto`` and the oldest entry left read,
        in the same round trip after the ``XREAD``: if entries after our
        position were trimmed before we read them, the snapshot covers them,
        and we merge it instead. A key of the wrong type fails the whole
        ``XREAD``: the reader then finds the document it belongs to, reports it
        and leaves it out for a while, and the others go on.
        """
        delay = 0.05
        # Ends by a flag, not by cancellation: redis-py may swallow a cancellation
        # that lands inside a blocking read.
        while not self._closed and reader.docs:
            started = time.monotonic()
            docs = [d for d in reader.docs.values() if d.broken_until <= started]
            streams: dict[Any, Any] = {self._key(d.document_id, "stream"): d.last_id for d in docs}
            by_stream = {self._key(d.document_id, "stream"): d for d in docs}
            streams[reader.wake_key] = reader.wake_id
            due = [d for d in docs if started - d.caught_up_at >= self.retention / 2]
            block = self.block
            if len(docs) < len(reader.docs):
                # Look at the left-out documents again when their pause is over.
                pause = min(d.broken_until for d in reader.docs.values()) - started
                block = max(0.001, min(block, pause))
            reader.stale = False
            reader.reading = True
            try:
                async with self._tail_redis.pipeline(transaction=False) as pipe:
                    pipe.xread(streams, count=_READ_COUNT, block=max(1, int(block * 1000)))
                    for d in due:
                        pipe.hget(self._key(d.document_id, "meta"), "upto")
                        pipe.xrange(self._key(d.document_id, "stream"), count=1)
                    self.stats.round_trips += 1
                    self.stats.read_round_trips += 1
                    response, *checks = await pipe.execute()
            except asyncio.CancelledError:
                raise
            except ResponseError as error:
                reader.reading = False
                if not await self._leave_out_broken(docs, due, error):
                    self._unavailable("reading streams", error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                continue
            except _UNAVAILABLE as error:
                reader.reading = False
                self._unavailable("reading streams", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            reader.reading = False
            delay = 0.05
            self._reachable = True
            if self._closed:
                return
            behind: set[str] = set()  # documents whose catch-up failed: read again
            for index, doc in enumerate(due):
                upto, oldest = checks[2 * index], checks[2 * index + 1]
                before = streams[self._key(doc.document_id, "stream")]
                if (
                    reader.docs.get(doc.document_id) is doc
                    and upto is not None
                    and _valid_id(_text(upto))
                    and _id_key(_text(upto)) > _id_key(before)
                    and (not oldest or _id_key(_text(oldest[0][0])) > _id_key(before))
                ):
                    try:
                        await self._catch_up(doc, _text(upto))
                    except _UNAVAILABLE as error:
                        self._unavailable(f"reading the snapshot of {doc.document_id!r}", error)
                        behind.add(doc.document_id)
            received: dict[str, list[Any]] = {}
            for name, entries in response or ():
                received[_text(name)] = entries
            wake = received.pop(reader.wake_key, None)
            if wake:
                reader.wake_id = _text(wake[-1][0])
            for stream, doc in by_stream.items():
                if doc.document_id in behind:
                    continue
                entries = received.get(stream, ())
                if len(entries) < _READ_COUNT:
                    doc.caught_up_at = started
                if not entries or reader.docs.get(doc.document_id) is not doc:
                    continue  # no longer followed: what it read is dropped
                for entry_id, fields in entries:
                    entry = _text(entry_id)
                    if _id_key(entry) <= _id_key(doc.last_id):
                        continue  # covered by a snapshot merged just above
                    doc.last_id = entry
                    self._ingest(doc, entry, fields, notify=True)
                self._maybe_compact(doc)
        if not reader.docs and reader in self._readers:
            self._readers.remove(reader)

    async def _leave_out_broken(
        self, docs: Sequence[_Doc], due: Sequence[_Doc], error: ResponseError
    ) -> bool:
        """After a read failed with ``error``: find the documents whose keys hold the
        wrong type, report them and leave them out of reads for a while. Returns
        whether any was found (if not, the error was Redis's, not a document's)."""
        checked: list[tuple[_Doc, str, bytes]] = [
            (d, self._key(d.document_id, "stream"), b"stream") for d in docs
        ]
        checked += [(d, self._key(d.document_id, "meta"), b"hash") for d in due]
        try:
            async with self._tail_redis.pipeline(transaction=False) as pipe:
                for _, key, _ in checked:
                    pipe.type(key)
                self.stats.round_trips += 1
                types = await pipe.execute()
        except _UNAVAILABLE:
            return False
        found = False
        now = time.monotonic()
        for (doc, key, wanted), kind in zip(checked, types, strict=True):
            kind = kind if isinstance(kind, bytes) else str(kind).encode()
            if kind not in (wanted, b"none"):
                found = True
                doc.broken_until = now + _BROKEN_PAUSE
                self._report(
                    doc.document_id,
                    f"{key} of {doc.document_id!r} holds a {kind.decode(errors='replace')},"
                    f" not a {wanted.decode()} ({error}): the document is not followed for"
                    f" {_BROKEN_PAUSE:g} s",
                )
        return found

    async def _catch_up(self, doc: _Doc, upto: str) -> None:
        """Entries after our position were trimmed unread: merge the snapshot that covers them."""
        self.stats.round_trips += 1
        data = await self._redis.get(self._key(doc.document_id, "snapshot"))
        if isinstance(data, bytes):
            self._ingest_snapshot(doc, data, notify=True)
        if _id_key(upto) > _id_key(doc.last_id):
            doc.last_id = upto

    def _ingest(
        self, doc: _Doc, entry_id: str, fields: dict[bytes, bytes], *, notify: bool
    ) -> None:
        """Apply one stream entry of another process to the document (skip our own)."""
        doc.since_snapshot += 1
        origin, kind, data = fields.get(b"o"), fields.get(b"t"), fields.get(b"d")
        if origin == self._origin and notify:
            return  # appended by this process: already in its document
        appended_at = time.time()
        with contextlib.suppress(ValueError):
            appended_at = _id_key(entry_id)[0] / 1000
            self.stats.lag_seconds = max(0.0, time.time() - appended_at)
        if data is None or kind not in (b"c", b"s"):
            self._malformed(doc, entry_id, "fields missing or of an unknown kind")
            return
        self.stats.entries_received += 1
        if kind == b"s":
            self._ingest_snapshot(doc, bytes(data), notify=notify, appended_at=appended_at)
            return
        try:
            changes = decode_changes(bytes(data))
        except DecodeError as error:
            self._malformed(doc, entry_id, str(error))
            return
        applied, refusal = import_and_collect(doc.document, changes)
        if refusal is not None:
            self._malformed(doc, entry_id, f"the document refused it: {refusal}")
        self.stats.changes_received += len(applied)
        if applied:
            self._append_made_ready(doc, applied)
            in_entry = {change.id for change in changes}
            doc.durable = doc.durable.merge(
                version_vector_of(c for c in applied if c.id in in_entry)
            )
            if notify:
                # Relay the entry's own bytes when all of it applied (the usual case).
                encoded = bytes(data) if len(applied) == len(changes) else encode_changes(applied)
                for observer in self.observers():
                    observer.remote_changes(doc.document_id, applied, encoded, appended_at)

    def _ingest_snapshot(
        self, doc: _Doc, data: bytes, *, notify: bool, appended_at: float | None = None
    ) -> None:
        try:
            snapshot = Snapshot.from_bytes(data)
            merged, ready, refusal = merge_snapshot_checked(doc.document, snapshot)
        except (CRDTError, ValueError) as error:
            self._malformed(doc, "snapshot", str(error))
            return
        if refusal is not None:
            self._malformed(doc, "snapshot", f"a change it made ready was refused: {refusal}")
        if merged:
            doc.durable = doc.durable.merge(snapshot.version_vector)
            if notify:
                for observer in self.observers():
                    observer.remote_snapshot(doc.document_id, snapshot)
        if ready:
            self._append_made_ready(doc, ready)
            if notify:
                encoded = encode_changes(ready)
                when = time.time() if appended_at is None else appended_at
                for observer in self.observers():
                    observer.remote_changes(doc.document_id, ready, encoded, when)

    def _append_made_ready(self, doc: _Doc, applied: Sequence[Change]) -> None:
        """Append this process's clients' changes that ``applied`` shows were made ready."""
        if not doc.local_pending:
            return
        ready = [change for change in applied if change.id in doc.local_pending]
        if ready:
            doc.local_pending.difference_update(change.id for change in ready)
            # Nobody waits for this one: a failure is retried like any other batch.
            self._enqueue(
                doc, _Append(b"c", encode_changes(ready), version_vector_of(ready), len(ready))
            )

    def _malformed(self, doc: _Doc, entry_id: str, why: str) -> None:
        self.stats.malformed_entries += 1
        self._report(
            doc.document_id,
            f"skipped malformed stream entry {entry_id} of {doc.document_id!r}: {why}",
        )

    # -- appending ----------------------------------------------------------------------

    def _enqueue(self, doc: _Doc, append: _Append) -> asyncio.Future[VersionVector]:
        future: asyncio.Future[VersionVector] = asyncio.get_running_loop().create_future()
        append.waiters.append(future)
        doc.outbox.append(append)
        self._kick(doc)
        return future

    def _settled(self, doc: _Doc) -> asyncio.Future[VersionVector]:
        """Resolves to the durable version vector once everything queued so far is appended."""
        future: asyncio.Future[VersionVector] = asyncio.get_running_loop().create_future()
        if doc.outbox:
            doc.outbox[-1].waiters.append(future)
            self._kick(doc)
        else:
            future.set_result(doc.durable)
        return future

    def _kick(self, doc: _Doc) -> None:
        if doc.flusher is None or doc.flusher.done():
            doc.flusher = self._spawn(
                self._flush_outbox(doc), f"crdt-redis-append-{doc.document_id}"
            )

    async def _flush_outbox(self, doc: _Doc) -> None:
        """Append the queued batches in order; on failure tell the waiters, keep, retry."""
        stream = self._key(doc.document_id, "stream")
        upload_keys = [
            self._key(doc.document_id, p) for p in ("stream", "meta", "history", "hbase")
        ]
        delay = 0.05
        while doc.outbox:
            batch = list(doc.outbox)[:64]
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for append in batch:
                        if append.kind == b"s":
                            await self._upload_script(
                                keys=upload_keys,
                                args=[
                                    self._origin,
                                    append.data,
                                    append.merged,
                                    append.merged_upto,
                                    _next_id(append.merged_upto),
                                ],
                                client=pipe,
                            )
                        else:
                            fields = {"o": self._origin, "t": append.kind, "d": append.data}
                            fields["n"] = str(append.count).encode()
                            pipe.xadd(stream, fields)  # type: ignore[arg-type]
                    self.stats.round_trips += 1
                    self.stats.append_round_trips += 1
                    await pipe.execute()
            except _UNAVAILABLE as error:
                failure = self._unavailable(f"appending to {doc.document_id!r}", error)
                doc.failed_appends = True
                for append in doc.outbox:
                    for waiter in append.waiters:
                        if not waiter.done():
                            waiter.set_exception(failure)
                            waiter.exception()  # retrieved here: a sender may have left
                    append.waiters.clear()
                if self._closed:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = 0.05
            self._reachable = True
            self.stats.appends += len(batch)
            for append in batch:
                doc.outbox.popleft()
                doc.durable = doc.durable.merge(append.covers)
                for waiter in append.waiters:
                    if not waiter.done():
                        waiter.set_result(doc.durable)
            if doc.failed_appends and not doc.outbox:
                doc.failed_appends = False
                for observer in self.observers():
                    observer.durable_advanced(doc.document_id, doc.durable)

    # -- compaction ---------------------------------------------------------------------

    def _maybe_compact(self, doc: _Doc) -> None:
        if doc.since_snapshot >= self.snapshot_every and (
            doc.compaction is None or doc.compaction.done()
        ):
            doc.compaction = self._spawn(
                self._compact(doc), f"crdt-redis-compact-{doc.document_id}"
            )

    async def _compact(self, doc: _Doc) -> Snapshot | None:
        """Snapshot and trim under the document's lock; None if another process holds it.

        Raises:
            StorageError: Redis is unavailable.
        """
        lock = self._key(doc.document_id, "lock")
        token = uuid.uuid4().hex
        try:
            self.stats.round_trips += 1
            if not await self._redis.set(lock, token, nx=True, px=int(self.lock_ttl * 1000)):
                # Another process is compacting: it covers what we counted.
                self.stats.compactions_skipped += 1
                doc.since_snapshot = 0
                return None
            try:
                await self._read_ahead(doc)
                if doc.document.pending_count:
                    return None  # it would not cover the entries that wait
                upto = doc.last_id
                snapshot = doc.document.take_snapshot()
                outcome = await self._commit_snapshot(doc, token, snapshot, upto)
                doc.since_snapshot = 0  # stored, or a snapshot as new exists
                if outcome == 1:
                    self.stats.compactions += 1
                    doc.snapshot = snapshot
                    self.notify_snapshot(doc.document_id, snapshot)
                    await self._keep_history_within(doc, token)
                    return snapshot
                return None
            finally:
                self.stats.round_trips += 1
                await self._release_script(keys=[lock], args=[token])
        except _UNAVAILABLE as error:
            raise self._unavailable(f"compacting {doc.document_id!r}", error) from error

    async def _read_ahead(self, doc: _Doc) -> None:
        """Read the stream up to its end now (the tail may be a read behind)."""
        stream = self._key(doc.document_id, "stream")
        while True:
            self.stats.round_trips += 1
            entries: Any = await self._redis.xrange(stream, min=f"({doc.last_id}", count=1000)
            fresh = [(_text(i), fields) for i, fields in entries or ()]
            fresh = [(i, fields) for i, fields in fresh if _id_key(i) > _id_key(doc.last_id)]
            if not fresh:
                return
            for entry, fields in fresh:
                doc.last_id = entry
                self._ingest(doc, entry, fields, notify=True)

    async def _commit_snapshot(self, doc: _Doc, token: str, snapshot: Snapshot, upto: str) -> int:
        """Store ``snapshot`` as covering the stream up to ``upto`` and trim, if ``token``
        still holds the lock: 1 stored, 0 fenced off, -1 a snapshot as new exists."""
        parts = ("lock", "snapshot", "meta", "stream", "history", "hbase")
        keys = [self._key(doc.document_id, part) for part in parts]
        self.stats.round_trips += 1
        result = await self._commit_script(
            keys=keys, args=[token, snapshot.to_bytes(), upto, int(self.retention * 1000)]
        )
        return int(result)

    # -- kept history -------------------------------------------------------------------

    async def _keep_history_within(self, doc: _Doc, token: str) -> None:
        """History retention, under the compaction lock (``token``): while the kept
        history holds more than ``history_retention`` changes, its oldest batches
        give way to a base that holds them (replayed off the event loop). A batch
        that does not decode leaves the history as it is (reported)."""
        limit = self.history_retention
        if limit is None:
            return
        meta, history, base_key = (
            self._key(doc.document_id, p) for p in ("meta", "history", "hbase")
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, ["hcount", "hbase_id"])
            pipe.get(base_key)
            self.stats.round_trips += 1
            (count, base_id), base = await pipe.execute()
        excess = int(count or 0) - limit
        if excess <= 0:
            return
        dropped: list[bytes] = []
        changes = 0
        last = ""
        position = "-"
        while True:
            self.stats.round_trips += 1
            entries: Any = await self._redis.xrange(history, min=position, count=256)
            if not entries:
                break
            for entry_id, fields in entries:
                n = int(fields.get(b"n", b"1") or 1)
                if changes + n > excess:
                    break
                dropped.append(bytes(fields.get(b"d", b"")))
                changes += n
                last = _text(entry_id)
            else:
                position = f"({_text(entries[-1][0])}"
                continue
            break
        if not dropped:
            return
        try:
            replayed = await asyncio.to_thread(_replay, doc.document_id, base, dropped)
        except (CRDTError, ValueError) as error:
            self._report(doc.document_id, f"the history of {doc.document_id!r} kept whole: {error}")
            return
        self.stats.round_trips += 1
        await self._drop_history_script(
            keys=[self._key(doc.document_id, "lock"), meta, history, base_key],
            args=[token, _text(base_id or b"0-0"), last, replayed, _next_id(last), changes],
        )

    async def history_page(self, document_id: str, cursor: int, max_bytes: int) -> HistoryPage:
        """A page of the kept history, from Redis: the base the history starts at
        (if any), then the batches compaction moved to ``P:doc:K:history``, then
        the stream's, in stream order (the cursor is the last entry's id, as
        ``ms << 20 | seq``); stored batches are sent as they are. A page is read
        again if history retention moved the base while it was being read."""
        self._check_open()
        try:
            for _ in range(_HISTORY_TRIES):
                page = await self._read_history_page(document_id, cursor, max_bytes)
                if page is not None:
                    return page
        except _UNAVAILABLE as error:
            raise self._unavailable(f"reading the history of {document_id!r}", error) from error
        raise StorageUnavailableError(
            f"the history of {document_id!r} kept changing while it was read: try again"
        )

    async def _read_history_page(
        self, document_id: str, cursor: int, max_bytes: int
    ) -> HistoryPage | None:
        """One attempt of :meth:`history_page`; None if the base moved meanwhile."""
        meta, history, stream = (self._key(document_id, p) for p in ("meta", "history", "stream"))
        position = _cursor_id(cursor)
        base_id: Any = None
        base: Snapshot | None = None
        batches: list[bytes] = []
        size = 0
        more = False
        first = True
        while not more:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hmget(meta, ["epoch", "hv", "hbase_id", "upto"])
                if first:
                    pipe.get(self._key(document_id, "hbase"))
                    pipe.get(self._key(document_id, "snapshot"))
                pipe.xrange(history, min=f"({position}", count=_HISTORY_READ)
                pipe.xrange(stream, min=f"({position}", count=_HISTORY_READ)
                self.stats.round_trips += 1
                (epoch, kept, now_base_id, upto), *rest = await pipe.execute()
            if epoch is None:
                raise DocumentNotFoundError(document_id)
            if kept is None:  # stored by an older build: its history starts at the snapshot
                now_base_id = upto or b"0-0"
            if first:
                base_data = rest[1] if kept is None else rest[0]
                base_id = now_base_id
                if base_data is not None:
                    try:
                        base = Snapshot.from_bytes(bytes(base_data))
                    except (CRDTError, ValueError) as error:
                        raise StorageError(
                            f"the history base of {document_id!r} in Redis does not decode: {error}"
                        ) from error
                start = _text(base_id or b"0-0")
                if _valid_id(start) and _id_key(start) > _id_key(position):
                    # History before the base is gone: read on from the base.
                    position = start
                    first = False
                    continue
                first = False
            elif now_base_id != base_id:
                return None  # retention moved the base: this page would not replay
            older, newer = rest[-2], rest[-1]
            # Read at once: every entry of the stream is newer than the history's.
            entries = list(older) + ([] if len(older) == _HISTORY_READ else list(newer))
            if not entries:
                break
            for entry_id, fields in entries:
                if batches and size >= max_bytes:
                    more = True
                    break
                position = _text(entry_id)
                data = fields.get(b"d")
                if data is None or fields.get(b"t", b"c") != b"c":
                    continue  # an upload: the history restarted at it (the base)
                batches.append(bytes(data))
                size += len(data)
        return HistoryPage(
            VersionVector() if base is None else base.version_vector,
            base if cursor == 0 else None,
            tuple(batches),
            _id_cursor(position) if more else 0,
        )

    # -- CRDTServerRegistry -------------------------------------------------------------

    async def get_document(self, document_id: str) -> CRDTDocument | None:
        doc = await self._load(document_id)
        return None if doc is None else doc.document

    async def has_document(self, document_id: str) -> bool:
        self._check_open()
        if document_id in self._loaded:
            return True
        try:
            self.stats.round_trips += 1
            return bool(await self._redis.hexists(self._key(document_id, "meta"), "epoch"))
        except _UNAVAILABLE as error:
            raise self._unavailable("looking a document up", error) from error

    async def document_ids(self) -> list[str]:
        self._check_open()
        try:
            self.stats.round_trips += 1
            members = await self._redis.smembers(self._documents_key)
        except _UNAVAILABLE as error:
            raise self._unavailable("listing documents", error) from error
        return sorted(_text(member) for member in members)

    async def create_document(self, document_id: str) -> CRDTDocument:
        validate_document_id(document_id)
        self._check_open()
        if document_id in self._loaded:
            raise DocumentExistsError(document_id)
        meta = self._key(document_id, "meta")
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(meta, "epoch", new_epoch())
                pipe.hsetnx(meta, "upto", "0-0")
                pipe.hsetnx(meta, "hv", 1)  # it keeps its history (from its creation)
                pipe.sadd(self._documents_key, document_id)
                self.stats.round_trips += 1
                created, *_ = await pipe.execute()
        except _UNAVAILABLE as error:
            raise self._unavailable(f"creating {document_id!r}", error) from error
        if not created:
            raise DocumentExistsError(document_id)
        doc = await self._load(document_id)
        if doc is None:
            raise StorageError(f"{document_id!r} vanished from Redis while being created")
        return doc.document

    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        """Store ``document`` as the whole state (a snapshot), replacing the stream."""
        validate_document_id(document_id)
        self._check_open()
        snapshot = document.take_snapshot()
        meta = self._key(document_id, "meta")
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(meta, "epoch", new_epoch())
                pipe.delete(self._key(document_id, "stream"))
                pipe.set(self._key(document_id, "snapshot"), snapshot.to_bytes())
                pipe.hset(meta, "upto", "0-0")
                # The kept history restarts at this state (no change describes it).
                pipe.delete(self._key(document_id, "history"))
                pipe.set(self._key(document_id, "hbase"), snapshot.to_bytes())
                pipe.hset(meta, mapping={"hv": 1, "hbase_id": "0-0", "hcount": 0})
                pipe.sadd(self._documents_key, document_id)
                pipe.hget(meta, "epoch")
                self.stats.round_trips += 1
                *_, epoch = await pipe.execute()
        except _UNAVAILABLE as error:
            raise self._unavailable(f"storing {document_id!r}", error) from error
        doc = self._loaded.get(document_id)
        if doc is None:
            await self._load(document_id)
            return
        doc.document = document
        doc.epoch = _text(epoch)
        doc.snapshot = snapshot
        doc.durable = document.version_vector
        doc.last_id = "0-0"

    async def get_epoch(self, document_id: str) -> str:
        doc = await self._load(document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id)
        return doc.epoch

    async def durable_version_vector(self, document_id: str) -> VersionVector:
        doc = await self._load(document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id)
        return doc.durable

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        doc = await self._load(document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(doc.document, changes)
        encoded = encoding_of(applied, changes, encoded)
        if applied:
            stored = self._enqueue(
                doc, _Append(b"c", encoded, version_vector_of(applied), len(applied))
            )
            if doc.local_pending:
                doc.local_pending.difference_update(change.id for change in applied)
        else:
            stored = self._settled(doc)
        result = applied_result(doc.document, changes, applied, refusal, stored, encoded)
        if result.waiting:
            known = doc.document.version_vector
            doc.local_pending.update(c.id for c in changes if not known.includes(c.id))
        return result

    async def apply_snapshot(
        self, document_id: str, snapshot: Snapshot
    ) -> tuple[bool, list[Change]]:
        """Merge the upload, append it to the stream (others merge it too), wait for that."""
        doc = await self._load(document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id)
        upto = doc.last_id  # what the document holds of the stream before the merge
        try:
            merged, ready, refusal = merge_snapshot_checked(doc.document, snapshot)
        except CRDTError as error:
            raise ChangesRejectedError(error, []) from error
        if merged:
            covers = snapshot.version_vector.merge(version_vector_of(ready))
            # The kept history restarts at the merged state (no change describes it).
            state = doc.document.take_snapshot().to_bytes()
            await self._enqueue(
                doc, _Append(b"s", snapshot.to_bytes(), covers, merged=state, merged_upto=upto)
            )
        if refusal is not None:
            raise ChangesRejectedError(refusal, ready) from refusal
        return merged, ready

    async def claim_peer(self, document_id: str, peer_id: str, secret_hash: bytes) -> bool:
        """First claim wins, in Redis (``HSETNX``): the same answer on every process."""
        self._check_open()
        candidate = check_secret_hash(secret_hash)
        key = (document_id, peer_id)
        stored = self._peer_claims.get(key)
        if stored is None:
            peers = self._key(document_id, "peers")
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hsetnx(peers, peer_id, candidate)
                    pipe.hget(peers, peer_id)
                    self.stats.round_trips += 1
                    _, value = await pipe.execute()
            except _UNAVAILABLE as error:
                raise self._unavailable("claiming a peer id", error) from error
            stored = bytes(value) if value is not None else candidate
            self._peer_claims[key] = stored
        return hmac.compare_digest(stored, candidate)

    async def claimed_peers(self, document_id: str, peer_ids: Iterable[str]) -> set[str]:
        """Which of ``peer_ids`` hold a claim (read-only; one ``HMGET``)."""
        self._check_open()
        asked = list(dict.fromkeys(peer_ids))
        found = {peer for peer in asked if (document_id, peer) in self._peer_claims}
        wanted = [peer for peer in asked if peer not in found]
        if wanted:
            try:
                self.stats.round_trips += 1
                values = await self._redis.hmget(self._key(document_id, "peers"), wanted)
            except _UNAVAILABLE as error:
                raise self._unavailable("reading peer claims", error) from error
            for peer, value in zip(wanted, values, strict=True):
                if isinstance(value, bytes):
                    self._peer_claims[(document_id, peer)] = value
                    found.add(peer)
        return found

    async def create_snapshot(self, document_id: str) -> Snapshot:
        """Compact now (unless another process is at it) and return a snapshot of the document."""
        doc = await self._load(document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id)
        await self._drain(doc)
        stored = await self._compact(doc)
        return stored if stored is not None else doc.document.take_snapshot()

    async def get_latest_snapshot(self, document_id: str) -> Snapshot | None:
        doc = await self._load(document_id)
        if doc is None:
            raise DocumentNotFoundError(document_id)
        return doc.snapshot

    async def remove_document(self, document_id: str) -> bool:
        self._check_open()
        doc = self._loaded.pop(document_id, None)
        if doc is not None:
            await self._stop_following(doc)
        for key in [key for key in self._peer_claims if key[0] == document_id]:
            del self._peer_claims[key]
        parts = ("meta", "snapshot", "stream", "peers", "lock", "history", "hbase")
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(self._key(document_id, part) for part in parts))
                pipe.srem(self._documents_key, document_id)
                self.stats.round_trips += 1
                deleted, _ = await pipe.execute()
        except _UNAVAILABLE as error:
            raise self._unavailable(f"removing {document_id!r}", error) from error
        return bool(deleted)

    async def _drain(self, doc: _Doc) -> None:
        """Wait until the document's queued batches are appended (StorageError if they fail)."""
        await self._settled(doc)

    async def release_document(self, document_id: str) -> None:
        """Append what is queued, stop following the document, drop it from memory.

        If the queue cannot be appended (Redis unavailable) the document stays
        loaded and this raises ``StorageError``: nothing is dropped that Redis
        does not hold.
        """
        self._check_open()
        doc = self._loaded.get(document_id)
        if doc is None:
            return
        await self._drain(doc)
        if self._loaded.get(document_id) is doc and not doc.outbox:
            del self._loaded[document_id]
            await self._stop_following(doc)

    async def _stop_following(self, doc: _Doc) -> None:
        """Stop reading the document's stream (a read in flight that includes it is
        dropped; a reader left with nothing to follow ends) and its presence."""
        reader, doc.reader = doc.reader, None
        if reader is not None and reader.docs.get(doc.document_id) is doc:
            del reader.docs[doc.document_id]
        if self._presence_resubscribe is not None:
            self._presence_resubscribe.set()

    def loaded_document_ids(self) -> list[str]:
        """Ids of the documents this process holds in memory."""
        return list(self._loaded)

    async def flush(self) -> None:
        self._check_open()
        for doc in list(self._loaded.values()):
            await self._drain(doc)

    async def close(self) -> None:
        """Append what is queued (best effort), stop every task, close the connections."""
        if self._closed:
            return
        with contextlib.suppress(StorageError):
            async with asyncio.timeout(self.timeout):
                await self.flush()
        if self._live:
            # This process's connections are gone: take their live marks with it.
            with contextlib.suppress(*_UNAVAILABLE):
                async with asyncio.timeout(self.timeout):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for document_id, peer_id in self._live:
                            await self._release_script(
                                keys=[self._live_key(document_id, peer_id)],
                                args=[self.process_id],
                                client=pipe,
                            )
                        await pipe.execute()
            self._live.clear()
        self._closed = True
        for event in (self._presence_wakeup, self._presence_resubscribe):
            if event is not None:
                event.set()
        if self._readers:
            # End the blocking reads now (best effort); the wake streams expire soon.
            with contextlib.suppress(*_UNAVAILABLE):
                async with asyncio.timeout(self.timeout):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for reader in self._readers:
                            pipe.xadd(reader.wake_key, {"w": b""}, maxlen=1, approximate=False)
                        for reader in self._readers:
                            # Not DEL: the read must find the entry first (it ends by itself).
                            pipe.pexpire(reader.wake_key, 60_000)
                        await pipe.execute()
        # The loops see the flag within one blocking read; what is left is cancelled.
        tasks = list(self._tasks)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self.block + self.timeout)
            for task in stuck:
                task.cancel()
        self._loaded.clear()
        await self._redis.aclose()
        await self._tail_redis.aclose()

    # -- presence -----------------------------------------------------------------------

    def publish_presence(self, document_id: str, update: AwarenessUpdate) -> None:
        if self._closed:
            return
        message = self._origin + b"\n" + encode_message(update)
        self._presence_out.append((self._channel(document_id).encode(), message))
        while len(self._presence_out) > 10_000:  # ephemeral: drop the oldest
            self._presence_out.popleft()
        self._ensure_presence_tasks()
        if self._presence_wakeup is not None:
            self._presence_wakeup.set()

    def _ensure_presence_tasks(self) -> None:
        if self._presence_wakeup is None:
            self._presence_wakeup = asyncio.Event()
        if self._presence_resubscribe is None:
            self._presence_resubscribe = asyncio.Event()
        if self._presence_publisher is None or self._presence_publisher.done():
            self._presence_publisher = self._spawn(
                self._publish_presence_loop(self._presence_wakeup), "crdt-redis-presence-out"
            )
        if self._presence_reader is None or self._presence_reader.done():
            self._presence_reader = self._spawn(
                self._read_presence_loop(self._presence_resubscribe), "crdt-redis-presence-in"
            )

    async def _publish_presence_loop(self, wakeup: asyncio.Event) -> None:
        while not self._closed:
            while self._presence_out:
                channel, message = self._presence_out[0]
                try:
                    self.stats.round_trips += 1
                    await self._redis.publish(channel, message)
                except _UNAVAILABLE as error:
                    self._unavailable("publishing presence", error)
                    await asyncio.sleep(self.retry_max)
                    continue
                self._presence_out.popleft()
            wakeup.clear()
            await wakeup.wait()

    async def _read_presence_loop(self, resubscribe: asyncio.Event) -> None:
        """Subscribe to the presence channels of the loaded documents; hand over what comes."""
        delay = 0.05
        while not self._closed:
            pubsub = self._tail_redis.pubsub()
            try:
                subscribed: set[str] = set()
                while not self._closed:
                    # Cleared before reading what is wanted: a change after this wakes us.
                    resubscribe.clear()
                    wanted = {self._channel(d) for d in self._loaded}
                    if wanted:
                        wanted.add(self._control_channel)
                    if wanted != subscribed:
                        if wanted - subscribed:
                            await pubsub.subscribe(*(wanted - subscribed))
                        if subscribed - wanted:
                            await pubsub.unsubscribe(*(subscribed - wanted))
                        subscribed = wanted
                    if not subscribed:
                        await resubscribe.wait()
                        continue
                    # A short wait (no round trip): documents loaded meanwhile are
                    # subscribed to soon, and close() is not held up.
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=min(self.block, _PRESENCE_POLL)
                    )
                    delay = 0.05
                    if message is not None and message.get("type") == "message":
                        if _text(message.get("channel", b"")) == self._control_channel:
                            self._receive_control(message)
                        else:
                            self._receive_presence(message)
            except asyncio.CancelledError:
                raise
            except _UNAVAILABLE as error:
                self._unavailable("reading presence", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- live connections of a peer id (one per peer id, across processes) -------------

    @property
    def _control_channel(self) -> str:
        """This process's channel for questions of other processes."""
        return f"{self.key_prefix}:process:{self.process_id}:control"

    def _live_key(self, document_id: str, peer_id: str) -> str:
        return self._key(document_id, f"live:{urllib.parse.quote(peer_id, safe='')}")

    async def peer_holder(self, document_id: str, peer_id: str) -> str | None:
        """The process whose connection of ``peer_id`` on ``document_id`` is marked live
        (``P:doc:K:live:PEER``, a process id with a short expiry), if not this one."""
        self._check_open()
        try:
            self.stats.round_trips += 1
            value = await self._redis.get(self._live_key(document_id, peer_id))
        except _UNAVAILABLE as error:
            raise self._unavailable("looking up a live connection", error) from error
        holder = None if value is None else _text(value)
        return None if holder == self.process_id else holder

    async def peer_live_elsewhere(self, document_id: str, peer_id: str, timeout: float) -> bool:
        """Ask the process that holds ``peer_id`` live whether its connection answers a
        ping (it drops one that does not): over pub/sub to its control channel, the
        answer in a list this process waits on (``BLPOP``). A holder that is not
        listening (a dead process), or does not answer within ``timeout`` + 1 s,
        counts as gone: its mark is removed so this process can take over."""
        holder = await self.peer_holder(document_id, peer_id)
        if holder is None:
            return False
        key = self._live_key(document_id, peer_id)
        reply = f"{self.key_prefix}:process:{self.process_id}:answer:{uuid.uuid4().hex}"
        request = json.dumps({"d": document_id, "p": peer_id, "r": reply})
        channel = f"{self.key_prefix}:process:{holder}:control"
        try:
            self.stats.round_trips += 1
            listeners = await self._redis.publish(channel, self._origin + b"\n" + request.encode())
            answer: Any = None
            if listeners:
                deadline = time.monotonic() + timeout + 1.0
                while answer is None and time.monotonic() < deadline:
                    wait = max(0.01, min(1.0, deadline - time.monotonic()))
                    self.stats.round_trips += 1
                    answer = await self._tail_redis.blpop([reply], timeout=wait)
            if answer is not None and bytes(answer[1]) == b"1":
                return True
            # Gone: remove its mark (unless it changed meanwhile).
            self.stats.round_trips += 1
            await self._release_script(keys=[key], args=[holder])
        except _UNAVAILABLE as error:
            raise self._unavailable("asking about a live connection", error) from error
        return False

    async def hold_peer(self, document_id: str, peer_id: str) -> bool:
        """Mark this process's new connection of ``peer_id`` live (``SET NX`` with a
        short expiry, renewed while it is connected); False if another process holds
        the mark (a connection that joined there meanwhile)."""
        self._check_open()
        key = self._live_key(document_id, peer_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(key, self.process_id, nx=True, px=_LIVE_TTL_MS)
                pipe.get(key)
                self.stats.round_trips += 1
                _, value = await pipe.execute()
        except _UNAVAILABLE as error:
            raise self._unavailable("marking a live connection", error) from error
        if value is not None and _text(value) != self.process_id:
            return False
        self._live.add((document_id, peer_id))
        if self._live_renewer is None or self._live_renewer.done():
            self._live_renewer = self._spawn(self._renew_live(), "crdt-redis-live")
        return True

    def peer_disconnected(self, document_id: str, peer_id: str) -> None:
        if (document_id, peer_id) not in self._live or self._closed:
            return
        self._live.discard((document_id, peer_id))
        self._spawn(self._unmark(document_id, peer_id), "crdt-redis-unmark")

    async def _unmark(self, document_id: str, peer_id: str) -> None:
        with contextlib.suppress(*_UNAVAILABLE):  # best effort: the mark expires anyway
            self.stats.round_trips += 1
            await self._release_script(
                keys=[self._live_key(document_id, peer_id)], args=[self.process_id]
            )

    async def _renew_live(self) -> None:
        """Renew the marks of this process's live connections (they expire if it dies)."""
        while self._live and not self._closed:
            keys = [self._live_key(d, p) for d, p in self._live]
            with contextlib.suppress(*_UNAVAILABLE):
                self.stats.round_trips += 1
                await self._renew_script(keys=keys, args=[self.process_id, _LIVE_TTL_MS])
            await asyncio.sleep(_LIVE_TTL_MS / 3000)

    def _receive_control(self, message: dict[str, Any]) -> None:
        """Another process asks whether a connection of ours is alive: answer it."""
        _, _, body = bytes(message["data"]).partition(b"\n")
        try:
            request = json.loads(body)
            document_id, peer_id, reply = request["d"], request["p"], request["r"]
        except (ValueError, TypeError, KeyError):
            self.stats.malformed_entries += 1
            return
        if not all(isinstance(v, str) for v in (document_id, peer_id, reply)):
            self.stats.malformed_entries += 1
            return
        if not reply.startswith(f"{self.key_prefix}:process:"):
            self.stats.malformed_entries += 1
            return
        self._spawn(self._answer(document_id, peer_id, reply), "crdt-redis-answer")

    async def _answer(self, document_id: str, peer_id: str, reply: str) -> None:
        alive = False
        for observer in self.observers():
            if await observer.peer_alive(document_id, peer_id):
                alive = True
        with contextlib.suppress(*_UNAVAILABLE):
            async with self._redis.pipeline(transaction=False) as pipe:
                if not alive:  # dropped: the asker may take over at once
                    self._live.discard((document_id, peer_id))
                    await self._release_script(
                        keys=[self._live_key(document_id, peer_id)],
                        args=[self.process_id],
                        client=pipe,
                    )
                pipe.rpush(reply, b"1" if alive else b"0")
                pipe.pexpire(reply, 30_000)
                self.stats.round_trips += 1
                await pipe.execute()

    def _receive_presence(self, message: dict[str, Any]) -> None:
        origin, _, frame = bytes(message["data"]).partition(b"\n")
        if origin == self._origin:
            return
        document_id = self._document_id_of_channel(_text(message["channel"]))
        try:
            update = decode_message(frame)
        except (CRDTError, ValueError):
            update = None
        if not isinstance(update, AwarenessUpdate):
            self.stats.malformed_entries += 1
            return
        for observer in self.observers():
            observer.remote_presence(document_id, update)
