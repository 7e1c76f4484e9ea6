"""Relaying: changes applied in one turn of the event loop reach each client as one
frame (encoded once, the same bytes for everyone), and the slow-reader bound holds
now that frames are written straight to the sockets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import string
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTTextHandler,
    PeerId,
    VersionVector,
    decode_changes,
    encode_changes,
)
from crdt_sync.changes import encode_change_tuples_v1, join_batches
from crdt_sync.sync import (
    Ack,
    Changes,
    Dictionary,
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    NoCompression,
    Relay,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import encode_relay_frame
from crdt_sync.sync.relay import decode_relay, encode_records, time_base
from server import InMemoryServerRegistry, WebSocketServer
from server.exceptions import StorageError
from server.registry.base import Applied
from server.rooms import Room, Rooms
from server.session import ChangesReceived, HandshakeRequested, ServerSession, SessionState

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def handshake(peer: str) -> HandshakeRequest:
    return HandshakeRequest(
        document_id="notes",
        peer_id=peer,
        version_vector=VersionVector(),
        display_name=peer[-4:],
        compressions=("none",),
        replica_secret=peer.encode()[:32],
    )


class Recorder:
    """A room member that keeps every frame it is sent (the rooms see no sockets)."""

    def __init__(self) -> None:
        self.peer = str(PeerId.generate())
        self.client_id = self.peer
        self.session = ServerSession("notes")
        self.room: Room | None = None
        self.frames: list[bytes] = []
        self.document = CRDTDocument(self.peer)
        self.text = CRDTTextHandler(self.document, "text")
        self.made: list[Change] = []
        self.document.on_change(self.made.append)

    host = "127.0.0.1"
    received_at = 0.0

    def flush(self) -> None:
        self.frames.extend(self.session.messages_to_send())

    def relay(self, frame: bytes) -> bool:
        if self.session.state is not SessionState.OPEN:
            return False
        self.session.send_frame(frame)
        self.flush()
        return True

    async def answers_ping(self, timeout: float) -> bool:
        return self.session.state is SessionState.OPEN

    def drop(self, code: ErrorCode, reason: str) -> None:
        self.session.fail(code, reason)
        self.flush()

    def edit(self, chars: str) -> tuple[Change, ...]:
        self.text.insert(0, chars)
        out = tuple(self.made)
        self.made.clear()
        return out

    def relay_frames(self) -> list[bytes]:
        """The frames sent, but for dictionary deltas."""
        return [f for f in self.frames if not isinstance(decode_message(f), Dictionary)]

    def changes_frames(self) -> list[Changes]:
        """The changes of every Changes or Relay frame sent, references resolved
        against the dictionary deltas sent before them (as a client does)."""
        return relayed_changes(self.frames)


def relayed_changes(frames: Sequence[bytes]) -> list[Changes]:
    dictionary: list[str] = []
    out = []
    for frame in frames:
        message = decode_message(frame)
        if isinstance(message, Dictionary):
            assert message.first == len(dictionary)
            dictionary.extend(message.entries)
        elif isinstance(message, Relay):
            out.append(Changes(decode_relay(message.body, dictionary, 1 << 24)))
        elif isinstance(message, Changes):
            out.append(message)
    return out


async def joined(rooms: Rooms, count: int) -> list[Recorder]:
    members = [Recorder() for _ in range(count)]
    for member in members:
        member.session.receive_message(encode_message(handshake(member.peer)))
        (event,) = member.session.events_received()
        assert isinstance(event, HandshakeRequested)
        await rooms.join(member, event.request, "notes")
        member.flush()
        assert isinstance(decode_message(member.frames[0]), HandshakeResponse)
        member.frames.clear()
    return members


@contextlib.asynccontextmanager
async def running_rooms(
    relay_interval: float = 0.0,
    registry: InMemoryServerRegistry | None = None,
    relay_frames_per_second: float = 0.0,
) -> AsyncIterator[Rooms]:
    """Rooms on a memory registry whose spawned tasks are cancelled on the way out."""
    tasks: list[asyncio.Task[object]] = []

    def spawn(coroutine: object, name: str) -> asyncio.Task[object]:
        task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        tasks.append(task)
        return task

    try:
        yield Rooms(
            registry if registry is not None else InMemoryServerRegistry(),
            NoCompression(),
            allow_create=True,
            max_pending_changes=1000,
            idle_unload_after=60.0,
            awareness_timeout=30.0,
            emit=lambda *args, **kwargs: None,
            spawn=spawn,
            relay_interval=relay_interval,
            relay_frames_per_second=relay_frames_per_second,
        )
    finally:
        for task in tasks:
            task.cancel()


@pytest_asyncio.fixture
async def rooms() -> AsyncIterator[Rooms]:
    async with running_rooms() as rooms:
        yield rooms


async def settle(condition: object, rounds: int = 100) -> None:
    """Let the loop run its pending callbacks until ``condition()`` holds (no timers)."""
    for _ in range(rounds):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("the relay never arrived")


async def test_changes_from_several_clients_in_one_turn_reach_each_other_client_as_one_frame(
    rooms: Rooms,
) -> None:
    writers = await joined(rooms, 3)
    watchers = await joined(rooms, 2)
    batches = [writer.edit(f"from {index}. ") for index, writer in enumerate(writers)]
    await asyncio.gather(
        *(rooms.apply(writer, batch) for writer, batch in zip(writers, batches, strict=True))
    )
    await settle(lambda: all(watcher.frames for watcher in watchers))
    everything = {change.id for batch in batches for change in batch}
    for watcher in watchers:
        assert len(watcher.relay_frames()) == 1  # one frame for the whole turn
        (message,) = watcher.changes_frames()
        assert {change.id for change in message.changes} == everything
    # Encoded once: the very same bytes went to every client that sent nothing.
    assert watchers[0].relay_frames()[0] is watchers[1].relay_frames()[0]
    for writer, own in zip(writers, batches, strict=True):
        acks = [m for m in map(decode_message, writer.frames) if isinstance(m, Ack)]
        assert acks == [
            Ack(VersionVector({writer.peer: writer.document.version_vector[writer.peer]}))
        ]
        got = {change.id for message in writer.changes_frames() for change in message.changes}
        assert got == everything - {change.id for change in own}  # never its own changes
    # Every client ends with the same text as the server.
    for member in writers + watchers:
        for message in member.changes_frames():
            member.document.import_changes(message.changes)
    room = rooms.get("notes")
    assert room is not None
    texts = {CRDTTextHandler(room.document, "text").value}
    texts |= {member.text.value for member in writers + watchers}
    assert len(texts) == 1


async def test_one_clients_batch_is_relayed_alone_and_not_back_to_it(rooms: Rooms) -> None:
    writer, watcher = await joined(rooms, 2)
    batch = writer.edit("solo")
    await rooms.apply(writer, batch)
    await settle(lambda: bool(watcher.frames))
    (message,) = watcher.changes_frames()
    assert [c.id for c in message.changes] == [c.id for c in batch]
    assert writer.changes_frames() == []


async def test_a_document_edited_alone_relays_nothing_and_numbers_nothing(rooms: Rooms) -> None:
    (writer,) = await joined(rooms, 1)
    await rooms.apply(writer, writer.edit("alone"))
    room = rooms.get("notes")
    assert room is not None
    rooms.flush_relays(room)  # what the end of the turn does
    assert not room.relays and room.relay_flush is None
    assert len(room.dictionary) == 0 and writer.changes_frames() == []


async def test_a_busy_room_gathers_changes_for_the_relay_interval_a_quiet_one_does_not() -> None:
    # An interval no test outlives.
    async with running_rooms(relay_interval=3600.0) as rooms:
        first, second, watcher = await joined(rooms, 3)
        # The room was quiet: the first change goes out at the end of the turn.
        early = first.edit("early ")
        await rooms.apply(first, early)
        await settle(lambda: bool(watcher.frames))
        # Right after a relay, changes wait for the interval ...
        later = [first.edit("one "), second.edit("two ")]
        await rooms.apply(first, later[0])
        await rooms.apply(second, later[1])
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(watcher.changes_frames()) == 1
        room = rooms.get("notes")
        assert room is not None and len(room.relays) == 2
        # ... and go out together when it is over (or before anything else is sent).
        rooms.flush_relays(room)
        frames = watcher.changes_frames()
        assert len(frames) == 2
        assert {c.id for c in frames[1].changes} == {c.id for batch in later for c in batch}
        assert room.relay_flush is None and not room.relays


async def test_a_big_room_gathers_for_longer_within_its_frame_budget() -> None:
    # One relay frame per second at most, all clients together: a room of n
    # clients gathers for n seconds after a relay (the interval, 0, is shorter).
    async with running_rooms(relay_frames_per_second=1.0) as rooms:
        members = await joined(rooms, 4)
        room = rooms.get("notes")
        assert room is not None
        await rooms.apply(members[0], members[0].edit("quiet "))
        assert isinstance(room.relay_flush, asyncio.Handle)  # a quiet room: at once
        assert not isinstance(room.relay_flush, asyncio.TimerHandle)
        await settle(lambda: not room.relays)
        await rooms.apply(members[1], members[1].edit("busy "))
        assert isinstance(room.relay_flush, asyncio.TimerHandle)
        assert rooms.gathering_time(room) == 4.0
        rooms.flush_relays(room)
        rooms.leave(members[3])  # three clients: three seconds
        await rooms.apply(members[2], members[2].edit("fewer "))
        assert isinstance(room.relay_flush, asyncio.TimerHandle)
        assert rooms.gathering_time(room) == 3.0
        rooms.flush_relays(room)
    with pytest.raises(ValueError, match="relay_frames_per_second"):
        async with running_rooms(relay_frames_per_second=-1.0):
            pass


async def test_a_gathered_flush_reaches_every_client_once_in_the_order_applied() -> None:
    async with running_rooms(relay_frames_per_second=1.0) as rooms:
        writers = await joined(rooms, 3)
        (watcher,) = await joined(rooms, 1)
        room = rooms.get("notes")
        assert room is not None
        await rooms.apply(writers[0], writers[0].edit("start "))
        await settle(lambda: bool(watcher.frames))
        # Within the room's four seconds: everything waits, in the order applied.
        order: list[Change] = []
        for round_ in range(3):
            for index, writer in enumerate(writers):
                batch = writer.edit(f"{round_}{index} ")
                order.extend(batch)
                await rooms.apply(writer, batch)
        assert len(watcher.changes_frames()) == 1
        rooms.flush_relays(room)
        # One frame more for each client, with each change once, in the order applied.
        (_, gathered) = watcher.changes_frames()
        assert [c.id for c in gathered.changes] == [c.id for c in order]
        for writer in writers:
            frames = writer.changes_frames()
            assert len(frames) <= 2
            got = [c.id for c in frames[-1].changes]
            assert got == [c.id for c in order if str(c.peer) != str(writer.document.peer_id)]
        for member in [*writers, watcher]:
            for message in member.changes_frames():
                member.document.import_changes(message.changes)
        texts = {CRDTTextHandler(room.document, "text").value}
        texts |= {member.text.value for member in [*writers, watcher]}
        assert len(texts) == 1


# ----------------------------------------------------------------- the slow-reader bound


@pytest_asyncio.fixture
async def bounded_server() -> AsyncIterator[WebSocketServer]:
    running = WebSocketServer(
        "127.0.0.1", 0, InMemoryServerRegistry(), max_outbound_bytes=256 * 1024
    )
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_a_client_that_stops_reading_is_dropped_past_the_bound_others_go_on(
    bounded_server: WebSocketServer,
) -> None:
    url = f"ws://127.0.0.1:{bounded_server.port}/notes"
    dictionary: list[str] = []
    # The slow client: a small receive buffer, and it stops reading after its handshake.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bounded_server.port))
    slow_peer = str(PeerId.generate())
    async with connect(url, sock=sock, compression=None, max_size=None) as slow:
        await slow.send(encode_message(handshake(slow_peer)))
        assert isinstance(decode_message(await slow.recv()), HandshakeResponse)
        slow.transport.pause_reading()

        writer_peer = str(PeerId.generate())
        document = CRDTDocument(writer_peer)
        text = CRDTTextHandler(document, "text")
        made: list[Change] = []
        document.on_change(made.append)
        rng = random.Random(3)
        async with connect(url, compression=None, max_size=None) as fast:
            await fast.send(encode_message(handshake(writer_peer)))
            assert isinstance(decode_message(await fast.recv()), HandshakeResponse)
            # 8 MiB of hardly compressible text, in 64 KiB changes: far more than the
            # bound plus what the kernel buffers on both sides.
            rounds = 128
            for _ in range(rounds):
                text.insert(0, "".join(rng.choices(string.ascii_letters, k=64 * 1024)))
                batch, made[:] = tuple(made), []
                await fast.send(encode_message(Changes(batch)))
            acked = 0
            async with asyncio.timeout(30):
                while acked < document.version_vector[writer_peer]:
                    message = decode_message(await fast.recv())
                    if isinstance(message, Ack):
                        acked = message.version_vector.get(writer_peer, 0)
            # The writer was served throughout; now the slow client reads again.
            slow.transport.resume_reading()
            relayed = 0
            error: Error | None = None
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(30):
                    while True:
                        message = decode_message(await slow.recv())
                        if isinstance(message, Dictionary):
                            dictionary.extend(message.entries)
                        elif isinstance(message, Relay):
                            relayed += len(decode_relay(message.body, dictionary, 1 << 24))
                        elif isinstance(message, Error):
                            error = message
    assert error is not None and error.code is ErrorCode.LIMIT_EXCEEDED
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert relayed < rounds  # the backlog past the bound was dropped, not delivered


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
async def test_frames_written_straight_to_the_socket_are_what_websockets_would_write(
    size: int,
) -> None:
    from websockets.frames import Frame, Opcode

    from server.connection import _framed

    payload = random.Random(size).randbytes(size)
    assert _framed(payload) == Frame(Opcode.BINARY, payload).serialize(mask=False)


async def test_a_batch_is_relayed_as_records_naming_ids_by_dictionary_entry(rooms: Rooms) -> None:
    writer, watcher = await joined(rooms, 2)
    writer.session.receive_message(encode_message(Changes(writer.edit("as sent"))))
    (event,) = writer.session.events_received()
    assert isinstance(event, ChangesReceived) and event.encoded is not None
    await rooms.apply(writer, event.changes, event.encoded)
    await settle(lambda: bool(watcher.frames))
    delta, frame = watcher.frames  # the entries it lacks first, in the same write
    assert decode_message(delta) == Dictionary(0, (writer.peer, "text"))
    room = rooms.get("notes")
    assert room is not None
    base = time_base([event.changes])
    records, count = encode_records(event.changes, event.encoded, room.dictionary, base)
    assert frame == encode_relay_frame(count, base, [records])
    assert len(frame) < len(event.encoded)  # no 17-byte peer id, no handler name
    (message,) = watcher.changes_frames()
    assert message.changes == event.changes


async def test_a_batch_applied_in_part_is_encoded_afresh(rooms: Rooms) -> None:
    writer, watcher = await joined(rooms, 2)
    first = writer.edit("one")
    await rooms.apply(writer, first)
    await settle(lambda: bool(watcher.frames))
    seen = len(watcher.frames)
    second = writer.edit("two")
    # The first change again (a duplicate: not applied) with a new one.
    resent = encode_message(Changes(first + second))
    writer.session.receive_message(resent)
    (event,) = writer.session.events_received()
    assert isinstance(event, ChangesReceived) and event.encoded is not None
    await rooms.apply(writer, event.changes, event.encoded)
    await settle(lambda: len(watcher.frames) > seen)
    _, message = watcher.changes_frames()
    assert message.changes == second  # only what was applied, not the bytes received


async def test_batches_gathered_in_one_turn_go_in_one_relay_frame(
    rooms: Rooms,
) -> None:
    writers = await joined(rooms, 3)
    (watcher,) = await joined(rooms, 1)
    events = []
    for index, writer in enumerate(writers):
        writer.session.receive_message(encode_message(Changes(writer.edit(f"w{index} "))))
        (event,) = writer.session.events_received()
        assert isinstance(event, ChangesReceived) and event.encoded is not None
        events.append(event)
    await asyncio.gather(
        *(
            rooms.apply(writer, event.changes, event.encoded)
            for writer, event in zip(writers, events, strict=True)
        )
    )
    await settle(lambda: bool(watcher.frames))
    (message,) = watcher.changes_frames()
    assert message.changes == tuple(c for event in events for c in event.changes)
    assert len(watcher.relay_frames()) == 1


async def test_join_batches_joins_only_uncompressed_batches_of_the_current_version() -> None:
    docs = [CRDTDocument() for _ in range(3)]
    batches, everything = [], []
    for index, doc in enumerate(docs):
        CRDTTextHandler(doc, "text").insert(0, "ab" * index + "ü😀")
        changes = doc.export_changes(VersionVector())
        everything += changes
        batches.append(encode_changes(changes))
    joined_bytes = join_batches(batches)
    assert joined_bytes is not None
    assert decode_changes(joined_bytes) == everything
    assert join_batches([]) is not None and decode_changes(join_batches([]) or b"") == []
    compressed = encode_changes(docs[0].export_changes(VersionVector()), compress=True)
    assert join_batches([batches[0], compressed]) is None
    older = decode_changes(batches[1])
    assert join_batches([batches[0], encode_change_tuples_v1(c._data for c in older)]) is None


class SlowStore(InMemoryServerRegistry):
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


async def test_a_clients_next_batch_is_applied_and_relayed_before_the_last_one_is_stored() -> None:
    store = SlowStore()
    async with running_rooms(registry=store) as rooms:
        writer, watcher = await joined(rooms, 2)
        first, second = writer.edit("one "), writer.edit("two ")
        await rooms.apply(writer, first)  # returns once applied, not once stored
        await rooms.apply(writer, second)
        await settle(lambda: bool(watcher.frames))
        (relayed,) = watcher.changes_frames()  # both, gathered in one turn
        assert relayed.changes == first + second
        assert [decode_message(f) for f in writer.frames] == []  # nothing stored yet
        peer = writer.peer
        for stored, batch in zip(store.writes, (first, second), strict=True):
            stored.set_result(VersionVector({peer: batch[-1].counter + batch[-1].size}))
        await settle(lambda: len(writer.frames) == 2)
        acks = [decode_message(frame) for frame in writer.frames]
        assert acks == [
            Ack(VersionVector({peer: first[-1].counter + first[-1].size})),
            Ack(VersionVector({peer: second[-1].counter + second[-1].size})),
        ]  # in the order of the batches


async def test_a_store_that_fails_after_the_relay_ends_the_senders_session() -> None:
    store = SlowStore()
    async with running_rooms(registry=store) as rooms:
        writer, watcher = await joined(rooms, 2)
        await rooms.apply(writer, writer.edit("lost? "))
        await settle(lambda: bool(watcher.frames))
        store.writes[0].set_exception(StorageError("disk full"))
        await settle(lambda: bool(writer.frames))
        (error,) = [decode_message(frame) for frame in writer.frames]
        assert isinstance(error, Error)
        assert "could not store" in error.message
        assert writer.session.state is SessionState.CLOSED
        assert watcher.session.state is SessionState.OPEN


class CountingRecorder(Recorder):
    """A member that also counts its flushes (each one a write to its socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[bytes]] = []

    def flush(self) -> None:
        frames = self.session.messages_to_send()
        if frames:
            self.writes.append(frames)
            self.frames.extend(frames)


async def test_an_ack_due_while_a_relay_to_its_client_waits_leaves_in_the_relays_write() -> None:
    store = SlowStore()
    async with running_rooms(relay_interval=3600.0, registry=store) as rooms:
        writer, other = CountingRecorder(), CountingRecorder()
        for member in (writer, other):
            member.session.receive_message(encode_message(handshake(member.peer)))
            (event,) = member.session.events_received()
            assert isinstance(event, HandshakeRequested)
            await rooms.join(member, event.request, "notes")
            member.flush()
            member.writes.clear()
            member.frames.clear()
        mine = writer.edit("mine ")
        await rooms.apply(writer, mine)  # the room was quiet: relayed at once
        await settle(lambda: bool(other.frames))
        theirs = other.edit("theirs ")
        await rooms.apply(other, theirs)  # busy now: waits for the interval
        room = writer.room
        assert room is not None and room.relay_flush is not None
        counter = mine[-1].counter + mine[-1].size
        store.writes[0].set_result(VersionVector({writer.peer: counter}))
        for _ in range(5):
            await asyncio.sleep(0)  # the store's callbacks run
        assert writer.writes == []  # the Ack waits for the relay to its client
        rooms.flush_relays(room)
        (write,) = writer.writes  # one write: the Ack, then the relay
        assert decode_message(write[0]) == Ack(VersionVector({writer.peer: counter}))
        assert isinstance(decode_message(write[-1]), Relay)
        (relayed,) = relayed_changes(write)
        assert relayed.changes == theirs
        # With no relay waiting for its client, an Ack goes at once.
        store.writes[1].set_result(VersionVector({other.peer: 7}))
        await settle(lambda: len(other.writes) == 2)
        assert decode_message(other.writes[-1][0]) == Ack(VersionVector({other.peer: 7}))
