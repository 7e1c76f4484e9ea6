"""The Redis registry against a real redis-server: two registries play two server processes."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis_helpers import RedisServer
from server_helpers import wait_for

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTTextHandler,
    Snapshot,
    VersionVector,
    decode_changes,
)
from crdt_sync.sync import AwarenessUpdate
from server import StorageError
from server.registry import RedisServerRegistry, RegistryObserver

pytestmark = [pytest.mark.redis, pytest.mark.asyncio, pytest.mark.timeout(60)]


class Recorder(RegistryObserver):
    """Remembers what a registry reports unasked."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, list[Change], bytes]] = []
        self.snapshots: list[tuple[str, Snapshot]] = []
        self.presence: list[tuple[str, AwarenessUpdate]] = []
        self.durable: list[tuple[str, VersionVector]] = []
        self.problems: list[tuple[str | None, str]] = []
        self.event = asyncio.Event()

    def remote_changes(
        self, document_id: str, changes: Sequence[Change], encoded: bytes, appended_at: float
    ) -> None:
        self.changes.append((document_id, list(changes), encoded))
        self.event.set()

    def remote_snapshot(self, document_id: str, snapshot: Snapshot) -> None:
        self.snapshots.append((document_id, snapshot))
        self.event.set()

    def remote_presence(self, document_id: str, update: AwarenessUpdate) -> None:
        self.presence.append((document_id, update))
        self.event.set()

    def durable_advanced(self, document_id: str, durable: VersionVector) -> None:
        self.durable.append((document_id, durable))
        self.event.set()

    def storage_problem(self, document_id: str | None, message: str) -> None:
        self.problems.append((document_id, message))
        self.event.set()

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(15):
            while not condition():
                self.event.clear()
                await self.event.wait()


class Editor:
    def __init__(self) -> None:
        self.doc = CRDTDocument()
        self.text = CRDTTextHandler(self.doc, "text")
        self.items = CRDTListHandler(self.doc, "items")
        self.made: list[Change] = []
        self.doc.on_change(self.made.append)

    def take(self) -> list[Change]:
        out = list(self.made)
        self.made.clear()
        return out


_TEXTS: weakref.WeakKeyDictionary[CRDTDocument, CRDTTextHandler] = weakref.WeakKeyDictionary()


def text_of(document: CRDTDocument) -> str:
    """The document's shared text (a handler is bound once per document)."""
    handler = _TEXTS.get(document)
    if handler is None:
        handler = _TEXTS[document] = CRDTTextHandler(document, "text")
    return str(handler.value)


@pytest_asyncio.fixture
async def pair(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[RedisServerRegistry, RedisServerRegistry]]:
    """Two registries on one Redis, as two server processes would have."""
    made = (
        RedisServerRegistry(redis_server.url, process_id="a", block=0.2, retry_max=0.2),
        RedisServerRegistry(redis_server.url, process_id="b", block=0.2, retry_max=0.2),
    )
    yield made
    for registry in made:
        await registry.close()


async def test_changes_reach_the_other_process_once_and_not_back(
    pair: tuple[RedisServerRegistry, RedisServerRegistry],
) -> None:
    a, b = pair
    seen_a, seen_b = Recorder(), Recorder()
    a.add_observer(seen_a)
    b.add_observer(seen_b)
    await a.create_document("notes")
    document_b = await b.get_document("notes")
    assert document_b is not None
    editor = Editor()
    editor.text.insert(0, "hello")
    result = await a.apply("notes", editor.take())
    # The sender's wait ends once the entry is in Redis.
    assert await result.stored == editor.doc.version_vector
    await seen_b.wait(lambda: bool(seen_b.changes), "b hears a's changes")
    [(document_id, changes, encoded)] = seen_b.changes
    assert document_id == "notes" and changes == list(result.applied)
    assert encoded == result.encoded  # the entry's own bytes are relayed
    assert text_of(document_b) == "hello"
    assert await b.durable_version_vector("notes") == editor.doc.version_vector
    # a skips its own entry: no relay loop.
    editor.items.append(1)
    await (await b.apply("notes", editor.take())).stored
    await seen_a.wait(lambda: bool(seen_a.changes), "a hears b's changes")
    assert len(seen_a.changes) == 1 and len(seen_b.changes) == 1


async def test_a_fresh_process_loads_snapshot_and_stream(
    pair: tuple[RedisServerRegistry, RedisServerRegistry], redis_server: RedisServer
) -> None:
    a, _ = pair
    await a.create_document("notes")
    editor = Editor()
    for word in ("one ", "two ", "three"):
        editor.text.insert(len(editor.text.value), word)
        await (await a.apply("notes", editor.take())).stored
    await a.create_snapshot("notes")
    editor.text.insert(0, ">")
    await (await a.apply("notes", editor.take())).stored
    fresh = RedisServerRegistry(redis_server.url, process_id="c")
    try:
        document = await fresh.get_document("notes")
        assert document is not None and text_of(document) == ">one two three"
        assert await fresh.get_epoch("notes") == await a.get_epoch("notes")
        assert await fresh.document_ids() == ["notes"]
    finally:
        await fresh.close()


async def test_a_peer_id_claim_holds_on_every_process(
    pair: tuple[RedisServerRegistry, RedisServerRegistry],
) -> None:
    a, b = pair
    await a.create_document("notes")
    assert await a.claim_peer("notes", "peer-1", b"\x01" * 32)
    assert not await b.claim_peer("notes", "peer-1", b"\x02" * 32)
    assert await b.claim_peer("notes", "peer-1", b"\x01" * 32)


async def test_presence_crosses_processes(
    pair: tuple[RedisServerRegistry, RedisServerRegistry],
) -> None:
    a, b = pair
    seen_a, seen_b = Recorder(), Recorder()
    a.add_observer(seen_a)
    b.add_observer(seen_b)
    await a.create_document("notes")
    await b.get_document("notes")
    update = AwarenessUpdate("peer-1", 3, {"name": "Ada"})
    # Pub/sub delivers at most once, to subscribers that are already listening:
    # publish until b hears it (b subscribes in the background when it loads).
    async with asyncio.timeout(15):
        while not seen_b.presence:
            a.publish_presence("notes", update)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await seen_b.wait(lambda: bool(seen_b.presence), "presence")
    assert seen_b.presence[0] == ("notes", update)
    assert seen_a.presence == []  # its own message is ignored


async def test_concurrent_compaction_commits_once_at_a_time_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    a = RedisServerRegistry(redis_server.url, process_id="a", retention=0)
    b = RedisServerRegistry(redis_server.url, process_id="b", retention=0)
    try:
        await a.create_document("notes")
        await b.get_document("notes")
        editor = Editor()
        for index in range(30):
            editor.text.insert(index, "x")
            target = a if index % 2 else b
            await (await target.apply("notes", editor.take())).stored
        documents = [await r.get_document("notes") for r in (a, b)]
        await wait_for(
            lambda: all(d is not None and text_of(d) == "x" * 30 for d in documents),
            documents=tuple(d for d in documents if d is not None),
            what="both processes have every change",
        )
        snapshots = await asyncio.gather(a.create_snapshot("notes"), b.create_snapshot("notes"))
        assert all(text_of(CRDTDocument.from_snapshot(s)) == "x" * 30 for s in snapshots)
        assert a.stats.compactions + b.stats.compactions >= 1
        fresh = RedisServerRegistry(redis_server.url, process_id="c")
        try:
            document = await fresh.get_document("notes")
            assert document is not None and text_of(document) == "x" * 30
        finally:
            await fresh.close()
    finally:
        await a.close()
        await b.close()


async def test_a_process_whose_lock_was_taken_cannot_commit(
    pair: tuple[RedisServerRegistry, RedisServerRegistry], redis_server: RedisServer
) -> None:
    a, _ = pair
    await a.create_document("notes")
    editor = Editor()
    editor.text.insert(0, "kept")
    await (await a.apply("notes", editor.take())).stored
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        # Another process holds the lock: a skips compaction and writes nothing.
        await client.set("crdt:doc:notes:lock", "someone-else", px=30_000)
        await a.create_snapshot("notes")
        assert await client.get("crdt:doc:notes:snapshot") is None
        assert await client.get("crdt:doc:notes:lock") == b"someone-else"  # not released by a
        # A commit with a token that no longer holds the lock is fenced off.
        doc = a._loaded["notes"]
        outcome = await a._commit_snapshot(doc, "stale-token", doc.document.take_snapshot(), "9-0")
        assert outcome == 0
        assert await client.get("crdt:doc:notes:snapshot") is None
        assert await client.xlen("crdt:doc:notes:stream") == 1
    finally:
        await client.aclose()


async def test_trimmed_entries_a_lagging_process_missed_come_from_the_snapshot(
    redis_server: RedisServer,
) -> None:
    a = RedisServerRegistry(redis_server.url, process_id="a", retention=0)
    b = RedisServerRegistry(redis_server.url, process_id="b", retention=0)
    try:
        await a.create_document("notes")
        document_b = await b.get_document("notes")
        assert document_b is not None
        # b stops reading (as if cut off); a writes, compacts and trims meanwhile.
        await b._stop_following(b._loaded["notes"])
        editor = Editor()
        for index in range(10):
            editor.text.insert(index, "y")
            await (await a.apply("notes", editor.take())).stored
        await a.create_snapshot("notes")
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await client.xlen("crdt:doc:notes:stream") == 0  # all trimmed
        finally:
            await client.aclose()
        b._start_following(b._loaded["notes"])
        await wait_for(
            lambda: text_of(document_b) == "y" * 10, documents=(document_b,), what="catch-up"
        )
    finally:
        await a.close()
        await b.close()


async def test_a_poisoned_entry_affects_only_its_document(
    pair: tuple[RedisServerRegistry, RedisServerRegistry], redis_server: RedisServer
) -> None:
    a, b = pair
    seen_b = Recorder()
    b.add_observer(seen_b)
    for document_id in ("poisoned", "wrong-type", "healthy"):
        await a.create_document(document_id)
        await b.get_document(document_id)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.xadd("crdt:doc:poisoned:stream", {"o": "x", "t": "c", "d": b"\xff garbage"})
        await client.xadd("crdt:doc:poisoned:stream", {"o": "x", "t": "?", "d": b""})
        await client.xadd("crdt:doc:poisoned:stream", {"unrelated": "fields"})
        await client.delete("crdt:doc:wrong-type:stream")
        await client.set("crdt:doc:wrong-type:stream", "not a stream")
    finally:
        await client.aclose()
    editor = Editor()
    editor.text.insert(0, "still fine")
    changes = editor.take()
    for document_id in ("poisoned", "healthy"):
        await (await a.apply(document_id, changes)).stored
    await seen_b.wait(
        lambda: {d for d, _, _ in seen_b.changes} == {"poisoned", "healthy"},
        "good entries after the bad ones still arrive",
    )
    await seen_b.wait(
        lambda: (
            sum(1 for d, _ in seen_b.problems if d == "poisoned") >= 3
            and any(d == "wrong-type" for d, _ in seen_b.problems)
        ),
        "the bad entries are reported against their own document",
    )
    assert b.stats.malformed_entries >= 3
    assert {d for d, _ in seen_b.problems} <= {"poisoned", "wrong-type"}
    for document_id in ("poisoned", "healthy"):
        document = await b.get_document(document_id)
        assert document is not None and text_of(document) == "still fine"


async def test_redis_down_fails_the_wait_keeps_the_batch_and_recovers(
    redis_server: RedisServer,
) -> None:
    a = RedisServerRegistry(redis_server.url, process_id="a", block=0.2, retry_max=0.2)
    seen = Recorder()
    a.add_observer(seen)
    try:
        await a.create_document("notes")
        editor = Editor()
        editor.text.insert(0, "before ")
        await (await a.apply("notes", editor.take())).stored
        redis_server.stop()
        editor.text.insert(7, "during")
        result = await a.apply("notes", editor.take())
        with pytest.raises(StorageError, match="unavailable"):
            await result.stored
        # Nothing acknowledged covers the batch that failed.
        assert await a.durable_version_vector("notes") != editor.doc.version_vector
        with pytest.raises(StorageError):
            await a.check_health()
        redis_server.start()
        await seen.wait(lambda: bool(seen.durable), "the queued batch is appended on recovery")
        assert seen.durable[-1] == ("notes", editor.doc.version_vector)
        await a.check_health()
        fresh = RedisServerRegistry(redis_server.url, process_id="c")
        try:
            document = await fresh.get_document("notes")
            assert document is not None and text_of(document) == "before during"
        finally:
            await fresh.close()
    finally:
        await a.close()


async def test_entries_decode_to_what_was_applied(
    pair: tuple[RedisServerRegistry, RedisServerRegistry], redis_server: RedisServer
) -> None:
    a, _ = pair
    await a.create_document("notes")
    editor = Editor()
    editor.items.append({"k": 1})
    result = await a.apply("notes", editor.take())
    await result.stored
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        [(_, fields)] = await client.xrange("crdt:doc:notes:stream")
    finally:
        await client.aclose()
    assert fields[b"o"] == b"a" and fields[b"t"] == b"c"
    assert decode_changes(fields[b"d"]) == list(result.applied)


async def test_releasing_documents_leaves_the_loop_free(redis_server: RedisServer) -> None:
    # Regression: a presence reader that reconnected with nothing left to follow
    # spun on a set event without yielding, and the event loop stood still (this
    # test hung).
    a = RedisServerRegistry(redis_server.url, process_id="a", block=0.2, retry_max=0.2)
    try:
        await a.create_document("one")
        a.publish_presence("one", AwarenessUpdate("peer-1", 1, {"name": "x"}))
        redis_server.stop()  # the presence reader loses its connection
        await a.release_document("one")
        redis_server.start()
        ticks = 0
        async with asyncio.timeout(10):
            while ticks < 50:  # longer than the reader's retry pause
                await asyncio.sleep(0.01)
                ticks += 1
        await a.create_document("two")  # and it follows documents again
        assert a.loaded_document_ids() == ["two"]
    finally:
        await a.close()


async def test_many_documents_are_followed_over_a_few_connections(
    redis_server: RedisServer,
) -> None:
    a = RedisServerRegistry(redis_server.url, process_id="a", block=0.2, retry_max=0.2)
    b = RedisServerRegistry(
        redis_server.url, process_id="b", block=0.2, retry_max=0.2, streams_per_read=50
    )
    seen_b = Recorder()
    b.add_observer(seen_b)
    names = [f"doc-{index}" for index in range(120)]
    try:
        for name in names:
            await a.create_document(name)
            await b.get_document(name)
        assert len(b._readers) == 3  # 120 documents, 50 per read
        editor = Editor()
        editor.text.insert(0, "same")
        changes = editor.take()
        for name in names:
            await (await a.apply(name, changes)).stored
        await seen_b.wait(
            lambda: {d for d, _, _ in seen_b.changes} == set(names), "every document heard"
        )
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            readers = [c for c in await client.client_list() if c.get("cmd") == "xread"]
        finally:
            await client.aclose()
        # b's three reads, and a's one (it follows its 120 documents in one read).
        assert len(readers) <= 4
    finally:
        await a.close()
        await b.close()


async def test_a_document_loaded_during_a_blocking_read_is_followed_at_once(
    redis_server: RedisServer,
) -> None:
    a = RedisServerRegistry(redis_server.url, process_id="a", block=0.2, retry_max=0.2)
    # b's reads block for a minute: only the wake-up can make it read "second" in time.
    b = RedisServerRegistry(redis_server.url, process_id="b", block=60, retry_max=0.2)
    seen_b = Recorder()
    b.add_observer(seen_b)
    try:
        for name in ("first", "second"):
            await a.create_document(name)
        await b.get_document("first")
        reader = b._readers[0]
        await asyncio.sleep(0)  # the reader's first step: it sends its blocking read
        assert reader.reading
        await b.get_document("second")
        editor = Editor()
        editor.text.insert(0, "news")
        await (await a.apply("second", editor.take())).stored
        await seen_b.wait(lambda: bool(seen_b.changes), "b hears the second document")
        assert [d for d, _, _ in seen_b.changes] == ["second"]
        assert b._readers == [reader]  # the same read follows both documents
    finally:
        await a.close()
        await b.close()
