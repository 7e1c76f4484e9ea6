"""Snapshot upload end to end: real servers on 127.0.0.1, real SQLite files, real clients.

A document that cannot serve the server's missing changes as changes (it was
rebuilt from a snapshot, imported one, or was compacted) uploads its state; the
server merges it, stores it durably, acknowledges it and pushes it to the other
clients. Nothing here sleeps to synchronise: every wait is on a condition,
re-checked when a document or an event stream fires, with a timeout.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    PeerId,
    VersionVector,
)
from crdt_sync.sync import (
    Ack,
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    decode_message,
    encode_message,
)
from crdt_sync.sync.client import ConnectionStatus, ReconnectPolicy, WebSocketClient
from crdt_sync.sync.events import ClientEvent, SnapshotReceived
from crdt_sync.sync.messages import SnapshotUpload
from crdt_sync.sync.streams import EventStream
from server import (
    CRDTServerRegistry,
    InMemoryServerRegistry,
    ServerEvent,
    ServerEventType,
    SqliteServerRegistry,
    WebSocketServer,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

WAIT = 15.0  # bound for one condition; each normally holds within milliseconds
FAST_RECONNECT = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.3, jitter=0.5)


async def wait_for(
    condition: Callable[[], bool],
    *,
    documents: tuple[CRDTDocument, ...] = (),
    streams: tuple[EventStream[Any], ...] = (),
    what: str = "condition",
) -> None:
    """Wait until ``condition()`` holds, looking again whenever a source fires."""
    wake = asyncio.Event()
    cancels = [d.on_update(lambda _: wake.set()).cancel for d in documents]
    cancels += [s.subscribe(lambda _: wake.set()).cancel for s in streams]
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                wake.clear()
                await wake.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    finally:
        for cancel in cancels:
            cancel()


async def receive(ws: ClientConnection) -> Message:
    """The next frame from the server, decoded (a text frame fails the test)."""
    data = await ws.recv()
    assert isinstance(data, bytes), f"text frame {data!r}"
    return decode_message(data)


class Peer:
    """A user: a document with a shared text, list and map, and a client for one server."""

    def __init__(self, name: str, document: CRDTDocument | None = None) -> None:
        self.name = name
        self.document = document if document is not None else CRDTDocument()
        self.text = CRDTTextHandler(self.document, "text")
        self.items = CRDTListHandler(self.document, "items")
        self.meta = CRDTMapHandler(self.document, "meta")
        self.client: WebSocketClient | None = None
        self.events: list[ClientEvent] = []

    def state(self) -> tuple[str, list[Any], dict[str, Any]]:
        return self.text.value, list(self.items.value), dict(self.meta.value)

    async def connect(self, url: str) -> WebSocketClient:
        """Connect to ``url`` (leaving any earlier server first)."""
        await self.disconnect()
        client = WebSocketClient(url, self.document, self.name, reconnect=FAST_RECONNECT)
        client.events.subscribe(self.events.append)
        self.client = client
        assert await client.connect(), f"{self.name} could not connect: {client.status}"
        return client

    async def disconnect(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
            self.client.close()
            self.client = None

    async def wait_covered(self) -> None:
        """Until the server acknowledged the whole document (an upload's Ack does)."""
        client = self.client
        assert client is not None
        await wait_for(
            lambda: client.acknowledged >= self.document.version_vector,
            streams=(client.events,),
            what=f"{self.name}'s whole document acknowledged",
        )

    async def wait_acknowledged(self) -> None:
        client = self.client
        assert client is not None
        await wait_for(
            lambda: client.unacknowledged_changes == 0,
            streams=(client.events,),
            what=f"{self.name} acknowledged",
        )


async def wait_converged(*group: Peer) -> None:
    await wait_for(
        lambda: all(p.state() == group[0].state() for p in group),
        documents=tuple(p.document for p in group),
        what="convergence of " + ", ".join(p.name for p in group),
    )


class RunningServer:
    """A real server on 127.0.0.1 (a free port) over a SQLite file, restartable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.registry: SqliteServerRegistry | None = None
        self.server: WebSocketServer | None = None
        self.events: list[ServerEvent] = []

    async def start(self) -> None:
        self.registry = SqliteServerRegistry(self.path)
        self.server = WebSocketServer("127.0.0.1", 0, self.registry)
        self.server.server_events.subscribe(self.events.append)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.registry is not None:
            await self.registry.close()
        self.server = self.registry = None

    def url(self, document_id: str = "notes") -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.port}/{document_id}"

    async def stored_state(self, document_id: str = "notes") -> tuple[Any, ...]:
        """What is committed in the file right now, read through a second registry
        (as a restarted server would load it, without any clean shutdown) on a
        copy of the file: the running server holds the file's lock."""
        copy = self.path.with_name(self.path.name + ".probe")
        for suffix in ("", "-wal"):
            source = Path(str(self.path) + suffix)
            target = Path(str(copy) + suffix)
            target.unlink(missing_ok=True)
            if source.exists():
                shutil.copyfile(source, target)
        probe = SqliteServerRegistry(copy)
        try:
            document = await probe.get_document(document_id)
            assert document is not None
            return tuple(
                document.get_value(name) if name in document.state_names else None
                for name in ("text", "items", "meta")
            )
        finally:
            await probe.close()

    def snapshot_uploads(self) -> list[ServerEvent]:
        return [
            e
            for e in self.events
            if e.type is ServerEventType.CLIENT_CHANGE_APPLIED and e.data.get("snapshot")
        ]


@pytest_asyncio.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Callable[[str], RunningServer]]:
    """Make servers over SQLite files in ``tmp_path``; all are stopped at the end."""
    made: list[RunningServer] = []

    def make(name: str) -> RunningServer:
        server = RunningServer(tmp_path / f"{name}.sqlite3")
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            await server.stop()


async def test_snapshot_loaded_document_restores_reset_and_behind_servers(
    servers: Callable[[str], RunningServer],
) -> None:
    first = servers("first")
    await first.start()
    alice, bob = Peer("alice"), Peer("bob")
    await alice.connect(first.url())
    await bob.connect(first.url())
    alice.text.insert(0, "hello ")
    bob.items.append("bob's item")
    alice.meta.set("title", "Notes")
    await wait_converged(alice, bob)
    await alice.wait_acknowledged()
    await bob.wait_acknowledged()

    # Alice edits offline; her snapshot (a file she shares) holds that edit too.
    await alice.disconnect()
    alice.text.insert(len(alice.text), "offline-alice ")
    carol = Peer("carol", CRDTDocument.from_snapshot(alice.document.take_snapshot()))
    carol.text.insert(len(carol.text), "offline-carol")
    carol.items.append("carol's item")
    assert not carol.document.can_export(VersionVector())

    # A fresh server (new database: a reset server) learns everything from Carol.
    fresh = servers("fresh")
    await fresh.start()
    await carol.connect(fresh.url())
    await carol.wait_acknowledged()
    await carol.wait_covered()
    # Stored before the Ack: the file already holds the merged state.
    assert await fresh.stored_state() == carol.state()
    [upload] = fresh.snapshot_uploads()
    assert upload.data["document_id"] == "notes"
    assert upload.data["peer_id"] == str(carol.document.peer_id)
    dave = Peer("dave")
    await dave.connect(fresh.url())
    await wait_converged(carol, dave)
    assert any(isinstance(e, SnapshotReceived) for e in dave.events)
    # Edits after the upload flow as changes, on top of the uploaded state.
    carol.meta.set("after", "upload")
    await wait_converged(carol, dave)
    await carol.wait_acknowledged()

    # The upload is durable: restart the fresh server on its file, a new client gets it all.
    expected = carol.state()
    await carol.disconnect()
    await dave.disconnect()
    await fresh.stop()
    await fresh.start()
    erin = Peer("erin")
    await erin.connect(fresh.url())
    await wait_for(lambda: erin.state() == expected, documents=(erin.document,), what="erin")
    await erin.disconnect()

    # The first server lacks Alice's offline edit and Carol's. Alice holds a claim
    # there, so only her replica may bring her ops (the identity rule,
    # docs/protocol.md): she reconnects and sends them; then Carol uploads, and
    # Bob (connected) gets the merged state pushed.
    await alice.connect(first.url())
    await alice.wait_acknowledged()
    carol.document.compact()  # her history is gone: she can only upload her state
    await carol.connect(first.url())
    await carol.wait_covered()
    assert len(first.snapshot_uploads()) == 1
    stored_text, stored_items, _ = await first.stored_state()
    assert "offline-alice" in stored_text and "offline-carol" in stored_text
    assert sorted(stored_items) == ["bob's item", "carol's item"]
    await wait_converged(carol, bob)
    assert any(isinstance(e, SnapshotReceived) for e in bob.events)
    bob.text.insert(0, "> ")
    await wait_converged(alice, bob, carol)
    await alice.wait_acknowledged()
    await bob.wait_acknowledged()

    text, items, meta = alice.state()
    for piece in ("> ", "hello ", "offline-alice ", "offline-carol"):
        assert piece in text, (piece, text)
    assert sorted(items) == ["bob's item", "carol's item"]
    assert meta == {"title": "Notes", "after": "upload"}

    # Restart the first server on its file: a new (lagging) client gets everything,
    # as a snapshot, since the history no longer covers the uploaded state.
    expected = alice.state()
    for peer in (alice, bob, carol):
        await peer.disconnect()
    await first.stop()
    await first.start()
    frank = Peer("frank")
    await frank.connect(first.url())
    await wait_for(lambda: frank.state() == expected, documents=(frank.document,), what="frank")
    assert any(isinstance(e, SnapshotReceived) for e in frank.events)
    await frank.disconnect()


async def test_client_that_merged_a_push_restores_a_reset_server_by_itself(
    servers: Callable[[str], RunningServer],
) -> None:
    first = servers("first")
    await first.start()
    bob = Peer("bob")
    await bob.connect(first.url())
    bob.text.insert(0, "bob ")
    await bob.wait_acknowledged()
    origin = CRDTDocument()
    CRDTTextHandler(origin, "text").insert(0, "from a file")
    carol = Peer("carol", CRDTDocument.from_snapshot(origin.take_snapshot()))
    await carol.connect(first.url())
    await wait_converged(bob, carol)
    await carol.disconnect()

    # The server's database is lost: a new one on the same port. Bob reconnects by
    # himself; his document merged a snapshot, so he uploads his state.
    assert first.server is not None
    port = first.server.port
    client = bob.client
    assert client is not None
    await first.stop()
    await wait_for(
        lambda: client.status is ConnectionStatus.RECONNECTING,
        streams=(client.connection_status,),
        what="bob reconnecting",
    )
    reset = RunningServer(first.path.with_name("reset.sqlite3"))
    reset.registry = SqliteServerRegistry(reset.path)
    reset.server = WebSocketServer("127.0.0.1", port, reset.registry)
    reset.server.server_events.subscribe(reset.events.append)
    try:
        await reset.server.start()
        await wait_for(
            lambda: client.status is ConnectionStatus.CONNECTED,
            streams=(client.connection_status,),
            what="bob reconnected",
        )
        await bob.wait_acknowledged()
        assert len(reset.snapshot_uploads()) == 1
        dave = Peer("dave")
        await dave.connect(reset.url())
        await wait_converged(bob, dave)
        assert "bob " in dave.text.value and "from a file" in dave.text.value
        await dave.disconnect()
        await bob.disconnect()
    finally:
        await reset.stop()


async def test_snapshot_that_cannot_be_merged_is_refused_and_changes_nothing(
    servers: Callable[[str], RunningServer],
) -> None:
    server = servers("store")
    await server.start()
    bob = Peer("bob")
    await bob.connect(server.url())
    bob.text.insert(0, "keep me")
    await bob.wait_acknowledged()
    before = bob.state()

    # The upload's "text" names a left origin nobody has: decodes, cannot merge.
    hostile = CRDTDocument()
    CRDTListHandler(hostile, "text").append("not text")
    forged = CRDTTextHandler(hostile, "text")
    forged.insert(0, "dangling")
    span = next(forged._state.seq.spans())
    span[5] = (str(PeerId.generate()), 3)  # its left origin (field L)
    CRDTTextHandler(hostile, "other").insert(0, "half of a merge")
    async with connect(server.url()) as ws:
        await ws.send(
            encode_message(HandshakeRequest("notes", str(PeerId.generate()), VersionVector()))
        )
        assert isinstance(await receive(ws), HandshakeResponse)
        await ws.send(encode_message(SnapshotUpload(hostile.take_snapshot())))
        answer = await receive(ws)
        assert isinstance(answer, Error), answer
        assert answer.code is ErrorCode.INVALID_MESSAGE and "snapshot" in answer.message

    # Nothing of it reached the document, the store or Bob; Bob carries on.
    assert server.snapshot_uploads() == []
    bob.text.insert(0, "still ")
    await bob.wait_acknowledged()
    late = Peer("late")
    await late.connect(server.url())
    await wait_converged(bob, late)
    assert late.state() == ("still " + before[0], before[1], before[2])
    assert server.registry is not None
    stored = await server.registry.get_document("notes")
    assert stored is not None and "other" not in stored.state_names
    await late.disconnect()
    await bob.disconnect()


async def test_upload_that_brings_nothing_new_is_only_acknowledged() -> None:
    async with WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry()) as server:
        url = f"ws://127.0.0.1:{server.port}/notes"
        events: list[ServerEvent] = []
        server.server_events.subscribe(events.append)
        bob = Peer("bob")
        await bob.connect(url)
        bob.text.insert(0, "known")
        await bob.wait_acknowledged()
        async with connect(url) as ws:
            await ws.send(
                encode_message(HandshakeRequest("notes", str(PeerId.generate()), VersionVector()))
            )
            assert isinstance(await receive(ws), HandshakeResponse)
            await ws.send(encode_message(SnapshotUpload(bob.document.take_snapshot())))
            ack = await receive(ws)
            assert isinstance(ack, Ack) and ack.version_vector >= bob.document.version_vector
        assert not [e for e in events if e.data.get("snapshot")]
        assert not [e for e in bob.events if isinstance(e, SnapshotReceived)]
        await bob.disconnect()


class CountingRegistry(CRDTServerRegistry):
    """A minimal custom registry (three methods): persists only in ``set_document``."""

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, CRDTDocument] = {}
        self.stored: list[VersionVector] = []

    async def get_document(self, document_id: str) -> CRDTDocument | None:
        return self.documents.get(document_id)

    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        self.documents[document_id] = document
        self.stored.append(document.version_vector)

    async def document_ids(self) -> list[str]:
        return list(self.documents)


async def test_custom_registry_stores_the_merged_upload_before_the_ack() -> None:
    registry = CountingRegistry()
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        origin = CRDTDocument()
        CRDTTextHandler(origin, "text").insert(0, "from a file")
        carol = Peer("carol", CRDTDocument.from_snapshot(origin.take_snapshot()))
        await carol.connect(f"ws://127.0.0.1:{server.port}/notes")
        assert carol.client is not None and carol.client.unacknowledged_changes == 0  # none own
        await carol.wait_covered()
        # Stored (set_document) with the uploaded state before Carol saw her Ack.
        assert any(vv >= carol.document.version_vector for vv in registry.stored)
        assert registry.documents["notes"].get_value("text") == "from a file"
        await carol.disconnect()
