"""A frame handled in the socket's callback (server/connection.py Connection._handle_now):
on the memory and SQLite registries a frame that comes while its connection waits
for one is applied there, without a task switch; what suspends or raises goes on
in the connection's task, and the frames of a connection keep their order. And a
relay written straight to the socket (Connection.relay) never overtakes what the
session queued before it (real server, raw WebSocket clients on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, VersionVector
from crdt_sync.sync import (
    Ack,
    Changes,
    Dictionary,
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    Ping,
    Pong,
    Relay,
    decode_message,
    encode_message,
)
from crdt_sync.sync.relay import decode_relay
from server import InMemoryServerRegistry, SqliteServerRegistry, WebSocketServer
from server.registry import Applied

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


class Recording(InMemoryServerRegistry):
    """A memory registry that notes the task each ``apply`` runs in, and what it
    finished applying, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[object] | None] = []
        self.done: list[str] = []

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        self.tasks.append(asyncio.current_task())
        result = await super().apply(document_id, changes, encoded=encoded)
        self.done.append("".join(str(op) for change in changes for op in change.ops))
        return result


class InTasks(Recording):
    """The same, declared unfit to run outside a task."""

    runs_outside_tasks = False


class RecordingSqlite(SqliteServerRegistry):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.tasks: list[asyncio.Task[object] | None] = []

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        self.tasks.append(asyncio.current_task())
        return await super().apply(document_id, changes, encoded=encoded)


class Gated(Recording):
    """Its first ``apply`` waits for :attr:`gate` before importing (it suspends)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.first_in: asyncio.Task[object] | None = None

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        if not self.entered.is_set():
            self.entered.set()
            self.first_in = asyncio.current_task()
            await self.gate.wait()
        return await super().apply(document_id, changes, encoded=encoded)


class Held(InMemoryServerRegistry):
    """A memory registry whose writes are durable only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[asyncio.Future[VersionVector]] = []

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        result = await super().apply(document_id, changes, encoded=encoded)
        stored: asyncio.Future[VersionVector] = asyncio.get_running_loop().create_future()
        self.writes.append(stored)
        return dataclasses.replace(result, stored=stored)


class Broken(InMemoryServerRegistry):
    """A registry with a bug: ``apply`` raises something that is not a RegistryError."""

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        raise RuntimeError("a bug in the registry")


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (nothing to subscribe to) until it holds, for 10 s at most."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


class Writer:
    """A raw WebSocket client with a document whose keystrokes it sends one per frame."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.document = CRDTDocument()
        self.text = CRDTTextHandler(self.document, "text")
        self.made: list[Change] = []
        self.document.on_change(self.made.append)

    @classmethod
    async def join(cls, port: int) -> Writer:
        ws = await connect(f"ws://127.0.0.1:{port}/notes", ping_interval=None)
        writer = cls(ws)
        peer = str(writer.document.peer_id)
        await ws.send(encode_message(HandshakeRequest("notes", peer, VersionVector())))
        assert isinstance(await writer.next(), HandshakeResponse)
        # A round trip: the connection's task waits for the next frame now.
        await ws.send(encode_message(Ping(1, 0)))
        assert await writer.next() == Pong(1, 0)
        return writer

    def keystroke(self, char: str) -> bytes:
        self.made.clear()
        self.text.insert(len(self.text.value), char)
        (change,) = self.made
        return encode_message(Changes((change,)))

    async def next(self) -> Message:
        while True:
            data = await asyncio.wait_for(self.ws.recv(), 10)
            assert isinstance(data, bytes)
            message = decode_message(data)
            if not isinstance(message, Changes):  # relays are not the point here
                return message

    async def acks(self, count: int) -> list[int]:
        """The counters of the next ``count`` Acks (other messages skipped)."""
        out: list[int] = []
        while len(out) < count:
            message = await self.next()
            if isinstance(message, Ack):
                out.append(message.version_vector.get(str(self.document.peer_id), 0))
        return out


async def test_a_keystroke_is_applied_in_the_sockets_callback() -> None:
    registry = Recording()
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        writer = await Writer.join(server.port)
        for char in "abc":
            await writer.ws.send(writer.keystroke(char))
            assert await writer.acks(1) == [len(writer.text.value)]
        # No task: applied straight from the read of the socket.
        assert registry.tasks == [None, None, None]
        assert registry.done == [str(c.ops[0]) for c in writer.document.export_changes()]
        await writer.ws.close()


async def test_on_sqlite_too(tmp_path: Path) -> None:
    registry = RecordingSqlite(tmp_path / "docs.db")
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        writer = await Writer.join(server.port)
        for char in "ab":
            await writer.ws.send(writer.keystroke(char))
            assert await writer.acks(1) == [len(writer.text.value)]
        assert registry.tasks == [None, None]
        await writer.ws.close()


async def test_a_registry_unfit_for_it_is_called_from_the_connections_task() -> None:
    registry = InTasks()
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        writer = await Writer.join(server.port)
        await writer.ws.send(writer.keystroke("a"))
        assert await writer.acks(1) == [1]
        (task,) = registry.tasks
        assert task is not None
        await writer.ws.close()


async def test_frames_that_come_while_one_is_suspended_wait_for_it_in_order() -> None:
    registry = Gated()
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        writer = await Writer.join(server.port)
        frames = [writer.keystroke(char) for char in "abcd"]
        received = server.metrics.bytes_received.value
        try:
            await in_order(writer, registry, frames, received, server)
        finally:
            registry.gate.set()  # the server's close waits for the connection
        await writer.ws.close()


async def in_order(
    writer: Writer, registry: Gated, frames: list[bytes], received: float, server: WebSocketServer
) -> None:
    """Send four keystrokes, the first suspended in the callback until the gate opens."""
    await writer.ws.send(frames[0])
    await asyncio.wait_for(registry.entered.wait(), 10)  # suspended in the callback
    assert registry.first_in is None
    for frame in frames[1:]:
        await writer.ws.send(frame)
    await until(
        lambda: server.metrics.bytes_received.value - received == sum(map(len, frames)),
        "the later frames at the server",
    )
    assert registry.done == []  # nothing overtook the suspended frame
    registry.gate.set()
    # Applied and acknowledged in the order sent, each Ack covering one more.
    assert await writer.acks(4) == [1, 2, 3, 4]
    expected = [str(c.ops[0]) for c in writer.document.export_changes()]
    assert registry.done == expected
    # The first was carried on in the connection's task, the others too.
    assert None not in registry.tasks


async def test_an_exception_in_the_callback_ends_only_that_connection() -> None:
    async with WebSocketServer("127.0.0.1", 0, Broken()) as server:
        writer = await Writer.join(server.port)
        await writer.ws.send(writer.keystroke("a"))
        error = await writer.next()
        assert isinstance(error, Error) and error.code is ErrorCode.INTERNAL_ERROR
        # The server is still up: another client joins and is answered.
        other = await Writer.join(server.port)
        await other.ws.send(encode_message(Ping(2, 0)))
        assert await other.next() == Pong(2, 0)
        await other.ws.close()


async def read_until_relay(writer: Writer, entries: list[str]) -> list[str]:
    """What ``writer`` gets up to and including its next relay: "ack N" (its own
    counter) or "relay PEER"; dictionary entries go to ``entries``."""
    got: list[str] = []
    while not got or not got[-1].startswith("relay"):
        data = await asyncio.wait_for(writer.ws.recv(), 10)
        assert isinstance(data, bytes)
        message = decode_message(data)
        if isinstance(message, Dictionary):
            entries.extend(message.entries)
        elif isinstance(message, Relay):
            (change,) = decode_relay(message.body, entries, 1 << 20)
            got.append(f"relay {change.peer}")
        else:
            assert isinstance(message, Ack)
            got.append(f"ack {message.version_vector.get(str(writer.document.peer_id), 0)}")
    return got


async def test_an_ack_queued_for_a_waiting_relay_leaves_before_it_in_one_write() -> None:
    registry = Held()
    # Relays wait an hour after the first: the test flushes them itself.
    async with WebSocketServer("127.0.0.1", 0, registry, relay_interval=3600.0) as server:
        a, b = await Writer.join(server.port), await Writer.join(server.port)
        seen_by_a: list[str] = []
        seen_by_b: list[str] = []
        peer_b = str(b.document.peer_id)
        await a.ws.send(a.keystroke("a"))  # relayed to b at once (the room's first relay)
        assert await read_until_relay(b, seen_by_b) == [f"relay {a.document.peer_id}"]
        await b.ws.send(b.keystroke("b"))  # its relay to a waits for the hour
        await until(lambda: len(registry.writes) == 2, "b applied")
        room = server.rooms.get("notes")
        assert room is not None and room.relay_flush is not None
        server.rooms.flush_relays(room)
        # Both peers are in a's dictionary now: the next relay to a needs no entries.
        assert await read_until_relay(a, seen_by_a) == [f"relay {peer_b}"]
        await b.ws.send(b.keystroke("c"))
        await until(lambda: len(registry.writes) == 3, "c applied")
        await a.ws.send(a.keystroke("d"))
        await until(lambda: len(registry.writes) == 4, "d applied")
        # a's writes are durable while a relay to a waits: its Acks are queued to ride it.
        registry.writes[0].set_result(VersionVector({str(a.document.peer_id): 1}))
        registry.writes[3].set_result(a.document.version_vector)
        await until(lambda: all(registry.writes[i].done() for i in (0, 3)), "stored")
        await asyncio.sleep(0)  # the futures' callbacks: the Acks queued, not written
        server.rooms.flush_relays(room)
        assert await read_until_relay(a, seen_by_a) == ["ack 1", "ack 2", f"relay {peer_b}"]
        for write in registry.writes:
            if not write.done():
                write.set_result(VersionVector())
        await a.ws.close()
        await b.ws.close()


async def test_a_relay_skips_a_client_whose_session_closed_and_counts_the_others() -> None:
    async with WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry()) as server:
        a, b, c = [await Writer.join(server.port) for _ in range(3)]
        room = server.rooms.get("notes")
        assert room is not None
        (leaving,) = [m for m in room.members if m.session.peer_id == str(c.document.peer_id)]
        seen_by_b: list[str] = []
        await a.ws.send(a.keystroke("a"))  # to b and c, with the dictionary's entries
        assert await read_until_relay(b, seen_by_b) == [f"relay {a.document.peer_id}"]
        assert await read_until_relay(c, []) == [f"relay {a.document.peer_id}"]
        # Closed but still in the room: nothing has flushed it or woken its task yet.
        leaving.session.fail(ErrorCode.INTERNAL_ERROR, "closed by the test")
        relayed = server.rooms.metrics.changes_relayed
        before = relayed.value
        await a.ws.send(a.keystroke("b"))
        assert await read_until_relay(b, seen_by_b) == [f"relay {a.document.peer_id}"]
        assert relayed.value - before == 1  # b only
        assert leaving.relay(b"not sent") is False
        leaving.flush()  # now the Error, and nothing before it
        error = await c.next()
        assert isinstance(error, Error) and error.code is ErrorCode.INTERNAL_ERROR
        for writer in (a, b):
            await writer.ws.close()
