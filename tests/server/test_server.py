"""The real server on 127.0.0.1 with real clients (and raw WebSocket connections for abuse)."""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from server_helpers import Peer, peers, wait_converged, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import (
    Ack,
    AwarenessQuery,
    AwarenessState,
    AwarenessUpdate,
    Changes,
    Dictionary,
    DocumentStatus,
    DocumentStatusRequest,
    Error,
    ErrorCode,
    GzipCompressor,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    Ping,
    Pong,
    Relay,
    decode_message,
    encode_message,
)
from crdt_sync.sync.client import ConnectionStatus
from crdt_sync.sync.document_ids import document_url_path
from crdt_sync.sync.events import ErrorOccurred
from crdt_sync.sync.relay import decode_relay
from server import (
    InMemoryServerRegistry,
    ServerEvent,
    ServerEventType,
    ServerStateError,
    SqliteServerRegistry,
    WebSocketServer,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def url_of(server: WebSocketServer, document_id: str = "notes") -> str:
    return f"ws://127.0.0.1:{server.port}/{document_id}"


def handshake(document_id: str = "notes", **fields: object) -> bytes:
    request = HandshakeRequest(document_id, str(PeerId.generate()), VersionVector())
    if fields:
        request = HandshakeRequest(**{**_fields(request), **fields})  # type: ignore[arg-type]
    return encode_message(request)


def _fields(request: HandshakeRequest) -> dict[str, object]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}


#: The relay dictionary each raw connection was sent (protocol version 4).
_DICTIONARIES: weakref.WeakKeyDictionary[ClientConnection, list[str]] = weakref.WeakKeyDictionary()


async def recv_message(ws: ClientConnection) -> Message:
    """The next message, with a ``Relay`` resolved into the ``Changes`` it carries (as a
    client does, against the dictionary deltas the connection was sent)."""
    dictionary = _DICTIONARIES.setdefault(ws, [])
    while True:
        data = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(data, bytes)
        message = decode_message(data)
        if isinstance(message, Dictionary):
            assert message.first == len(dictionary)
            dictionary.extend(message.entries)
        elif isinstance(message, Relay):
            return Changes(decode_relay(message.body, dictionary, 1 << 24))
        else:
            return message


async def expect_error_and_close(ws: ClientConnection, code: ErrorCode) -> Error:
    """The next message is an Error with ``code``, then the server closes."""
    message = await recv_message(ws)
    assert isinstance(message, Error), message
    assert message.code is code, message
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return message


async def raw_joined(
    server: WebSocketServer, document_id: str = "notes", peer_id: str | None = None
) -> ClientConnection:
    ws = await connect(url_of(server, document_id), ping_interval=None)
    await ws.send(handshake(document_id, **({"peer_id": peer_id} if peer_id else {})))
    assert isinstance(await recv_message(ws), HandshakeResponse)
    return ws


def edits(peer: Peer, rng: random.Random, count: int) -> None:
    """A burst of random local edits on the text, list and map."""
    for _ in range(count):
        kind = rng.choice(["text", "text", "list", "map"])
        if kind == "text":
            if peer.text.value and rng.random() < 0.3:
                index = rng.randrange(len(peer.text.value))
                peer.text.delete(index, 1)
            else:
                peer.text.insert(rng.randint(0, len(peer.text.value)), rng.choice("ab🌍é "))
        elif kind == "list":
            if len(peer.items) and rng.random() < 0.3:
                peer.items.delete(rng.randrange(len(peer.items)))
            else:
                peer.items.insert(rng.randint(0, len(peer.items)), rng.randint(0, 99))
        else:
            peer.meta.set(rng.choice("xyz"), rng.randint(0, 9))


# ---------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("count", [2, 3, 5])
async def test_clients_converge_on_text_list_and_map(server: WebSocketServer, count: int) -> None:
    rng = random.Random(count)
    async with peers(url_of(server), count) as group:
        for round_ in range(3):
            for peer in group:
                edits(peer, rng, 5 + round_)
            await asyncio.sleep(0)  # let some batches interleave with the next round
        await wait_converged(group)
        for peer in group:
            await peer.wait_acknowledged()
        document = await server.registry.get_document("notes")
        assert document is not None
        assert document.version_vector == group[0].document.version_vector


async def test_a_late_joiner_gets_everything(server: WebSocketServer) -> None:
    async with peers(url_of(server), 2) as group:
        group[0].text.insert(0, "before you came")
        group[1].items.append("item")
        await wait_converged(group)
        async with peers(url_of(server), 1) as [late]:
            await wait_converged([*group, late])


async def test_edits_made_offline_arrive_after_reconnecting(server: WebSocketServer) -> None:
    async with peers(url_of(server), 3) as group:
        first, second, third = group
        first.text.insert(0, "shared ")
        await wait_converged(group)
        await first.client.disconnect()
        first.text.insert(len(first.text.value), "offline")
        first.items.append("offline item")
        second.text.insert(0, "online ")
        third.meta.set("title", "Agenda")
        await wait_converged([second, third])
        await first.connect()
        await wait_converged(group)
        assert "offline" in first.text.value and "online" in first.text.value
        assert first.meta.value == {"title": "Agenda"}


async def test_more_offline_changes_than_a_frame_may_hold_arrive_after_reconnecting(
    server: WebSocketServer,
) -> None:
    # An afternoon offline: more changes than a server takes in one frame. The
    # client sends them in several; in one, each reconnection was refused.
    async with peers(url_of(server), 2) as group:
        away, stayed = group
        away.text.insert(0, "shared ")
        await wait_converged(group)
        await away.client.disconnect()
        for index in range(server.limits.max_changes_per_frame + 2000):
            away.text.insert(len(away.text.value), "abc"[index % 3])
        stayed.text.insert(0, "meanwhile ")
        await away.connect()
        await wait_converged(group)
        await away.wait_acknowledged()
        assert away.text.value.startswith("meanwhile shared abcabc")


async def test_documents_are_isolated(server: WebSocketServer) -> None:
    async with (
        peers(url_of(server, "one"), 2) as ones,
        peers(url_of(server, "two"), 1) as [two],
    ):
        ones[0].text.insert(0, "only in one")
        await wait_converged(ones)
        two.text.insert(0, "two")
        await wait_for(
            lambda: two.client.unacknowledged_changes == 0,
            streams=(two.client.events,),
        )
        assert two.text.value == "two"
        assert sorted(server.loaded_document_ids()) == ["one", "two"]


# ---------------------------------------------------------------------------- compression


async def test_gzip_on_both_ends_converges() -> None:
    async with (
        WebSocketServer("127.0.0.1", 0, compressor=GzipCompressor()) as gzip_server,
        peers(url_of(gzip_server), 2, compressor=GzipCompressor()) as group,
    ):
        group[0].text.insert(0, "compressible " * 200)
        group[1].items.append({"big": "x" * 1000})
        await wait_converged(group)


async def test_mismatched_compression_is_a_clear_final_error(server: WebSocketServer) -> None:
    peer = Peer(url_of(server), compressor=GzipCompressor())
    errors: list[ErrorOccurred] = []
    peer.client.events.subscribe(
        lambda e: errors.append(e) if isinstance(e, ErrorOccurred) else None
    )
    assert not await peer.client.connect()
    await peer.wait_status(ConnectionStatus.ERROR)
    assert any(e.code is ErrorCode.UNSUPPORTED_COMPRESSION and e.final for e in errors)
    await peer.client.disconnect()
    # Everyone else is unaffected.
    async with peers(url_of(server), 2) as group:
        group[0].text.insert(0, "fine")
        await wait_converged(group)


# ------------------------------------------------------------------------------ awareness


async def test_awareness_join_update_leave(server: WebSocketServer) -> None:
    async with peers(url_of(server), 2) as (ada, bob):
        ada_id = str(ada.document.peer_id)

        def bob_sees(state: object) -> bool:
            return bob.client.awareness.states.get(ada_id) == state

        ada.client.awareness.set_local_state({"name": "Ada", "color": "#f00"})
        await wait_for(
            lambda: bob_sees({"name": "Ada", "color": "#f00"}),
            streams=(bob.client.awareness.changes,),
            what="join",
        )
        ada.client.awareness.set_local_state({"name": "Ada", "color": "#0f0"})
        await wait_for(
            lambda: bob_sees({"name": "Ada", "color": "#0f0"}),
            streams=(bob.client.awareness.changes,),
            what="update",
        )
        await ada.client.disconnect()
        await wait_for(
            lambda: ada_id not in bob.client.awareness.states,
            streams=(bob.client.awareness.changes,),
            what="leave",
        )


async def test_awareness_of_a_vanished_peer_is_removed_on_disconnect(
    server: WebSocketServer,
) -> None:
    async with peers(url_of(server), 1) as [bob]:
        # A raw client announces a presence, then drops without saying goodbye.
        ghost = str(PeerId.generate())
        ws = await connect(url_of(server), ping_interval=None)
        await ws.send(encode_message(HandshakeRequest("notes", ghost, VersionVector())))
        assert isinstance(await recv_message(ws), HandshakeResponse)
        await ws.send(encode_message(AwarenessUpdate(ghost, 1, {"name": "Ghost"})))
        await wait_for(
            lambda: ghost in bob.client.awareness.states,
            streams=(bob.client.awareness.changes,),
            what="ghost appears",
        )
        ws.transport.abort()  # no close frame, no leave message
        await wait_for(
            lambda: ghost not in bob.client.awareness.states,
            streams=(bob.client.awareness.changes,),
            what="ghost removed",
        )


async def test_awareness_not_renewed_times_out_on_the_server(server: WebSocketServer) -> None:
    async with peers(url_of(server), 2) as (ada, bob):
        ada_id = str(ada.document.peer_id)
        ada.client.awareness.set_local_state({"name": "Ada"})
        await wait_for(
            lambda: ada_id in bob.client.awareness.states,
            streams=(bob.client.awareness.changes,),
        )
        # Drive the sweeper as if the timeout had passed without a renewal.
        assert server.expire_awareness(time.monotonic() + server.awareness_timeout + 1) == 1
        await wait_for(
            lambda: ada_id not in bob.client.awareness.states,
            streams=(bob.client.awareness.changes,),
            what="timeout removal",
        )


async def test_awareness_query_returns_every_state(server: WebSocketServer) -> None:
    async with peers(url_of(server), 1) as [ada]:
        ada.client.awareness.set_local_state({"name": "Ada"})
        ws = await raw_joined(server)
        await ws.send(encode_message(AwarenessQuery()))
        while True:
            message = await recv_message(ws)
            if isinstance(message, AwarenessState) and message.states:
                break
        assert [u.state for u in message.states] == [{"name": "Ada"}]
        await ws.close()


# ------------------------------------------------------------------------------ liveness


async def test_ping_is_answered_with_pong(server: WebSocketServer) -> None:
    ws = await raw_joined(server)
    await ws.send(encode_message(Ping(42, 7)))
    assert await recv_message(ws) == Pong(42, 7)
    await ws.close()


async def test_a_peer_that_stops_answering_pings_is_dropped() -> None:
    async with WebSocketServer(
        "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.2, close_timeout=0.2
    ) as server:
        disconnected: list[ServerEvent] = []
        server.server_events.subscribe(
            lambda e: (
                disconnected.append(e) if e.type is ServerEventType.CLIENT_DISCONNECTED else None
            )
        )
        async with peers(url_of(server), 2) as group:
            silent = await raw_joined(server)
            silent.transport.pause_reading()  # alive TCP, but answers nothing
            await wait_for(
                lambda: len(disconnected) == 1,
                streams=(server.server_events,),
                what="the silent peer dropped",
            )
            assert "1011" in disconnected[0].data["reason"] or "ping" in str(disconnected[0])
            group[0].text.insert(0, "still working")
            await wait_converged(group)
            silent.transport.abort()


async def test_a_connection_without_handshake_times_out() -> None:
    async with WebSocketServer("127.0.0.1", 0, handshake_timeout=0.2) as server:
        ws = await connect(url_of(server), ping_interval=None)
        await expect_error_and_close(ws, ErrorCode.TIMEOUT)


# ------------------------------------------------------------------ hostile input, bounds


HOSTILE: dict[str, bytes | str] = {
    "garbage": b"\x00\xffnot a frame at all",
    "truncated": handshake()[:-4],
    "unknown type": b"CS\x01\x55\x00",
    "text frame": "hello, is this JSON?",
    "changes first": encode_message(Changes(())),
    "server message": encode_message(Pong(1, 1)),
}

# After the handshake, Changes and Pong are legal: use other illegal frames there.
AFTER_HANDSHAKE: dict[str, bytes | str] = {
    "changes first": b"CS\x01\x02\x00",  # a handshake response, truncated
    "server message": encode_message(Ack(VersionVector())),
}


async def assert_others_keep_editing(server: WebSocketServer, group: list[Peer], tag: str) -> None:
    group[0].text.insert(0, tag)
    group[1].items.append(tag)
    await wait_converged(group)
    stored = await server.registry.get_document("notes")
    assert stored is not None
    assert stored.version_vector <= group[0].document.version_vector
    await group[0].wait_acknowledged()


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_first_frames_get_a_typed_error_and_a_close(
    server: WebSocketServer, name: str
) -> None:
    async with peers(url_of(server), 2) as group:
        group[0].text.insert(0, "precious ")
        await wait_converged(group)
        ws = await connect(url_of(server), ping_interval=None)
        await ws.send(HOSTILE[name])
        await expect_error_and_close(ws, ErrorCode.INVALID_MESSAGE)
        await assert_others_keep_editing(server, group, name)
        assert "precious" in group[1].text.value


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_frames_after_the_handshake_get_a_typed_error(
    server: WebSocketServer, name: str
) -> None:
    async with peers(url_of(server), 2) as group:
        ws = await raw_joined(server)
        await ws.send(AFTER_HANDSHAKE.get(name, HOSTILE[name]))
        await expect_error_and_close(ws, ErrorCode.INVALID_MESSAGE)
        await assert_others_keep_editing(server, group, name)


async def test_wrong_protocol_version_is_refused(server: WebSocketServer) -> None:
    ws = await connect(url_of(server), ping_interval=None)
    await ws.send(handshake(protocol_version=7))
    await expect_error_and_close(ws, ErrorCode.UNSUPPORTED_PROTOCOL_VERSION)


@pytest.mark.parametrize("path", ["/bad%20id", "/.hidden", "/a/b"])
async def test_bad_document_ids_are_refused(server: WebSocketServer, path: str) -> None:
    ws = await connect(f"ws://127.0.0.1:{server.port}{path}", ping_interval=None)
    await ws.send(handshake("notes"))
    message = await expect_error_and_close(ws, ErrorCode.HANDSHAKE_FAILED)
    assert "document" in message.message
    assert server.loaded_document_ids() == []


async def test_oversize_frames_are_refused_and_others_carry_on() -> None:
    async with (
        WebSocketServer("127.0.0.1", 0, max_message_size=4096) as server,
        peers(url_of(server), 2) as group,
    ):
        ws = await raw_joined(server)
        await ws.send(b"CS\x01\x03\x00" + b"\x00" * 5000)
        await expect_error_and_close(ws, ErrorCode.MESSAGE_TOO_LARGE)
        # Far over the bound: cut off by the WebSocket layer itself.
        ws = await raw_joined(server)
        await ws.send(b"\x00" * 20000)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await assert_others_keep_editing(server, group, "after big frames")


async def test_unknown_documents_are_not_found_when_creation_is_off() -> None:
    registry = InMemoryServerRegistry()
    await registry.create_document("exists")
    async with WebSocketServer("127.0.0.1", 0, registry, allow_create=False) as server:
        peer = Peer(url_of(server, "missing"))
        errors: list[ErrorOccurred] = []
        peer.client.events.subscribe(
            lambda e: errors.append(e) if isinstance(e, ErrorOccurred) else None
        )
        assert not await peer.client.connect()
        await peer.wait_status(ConnectionStatus.ERROR)
        assert [e.code for e in errors if e.remote] == [ErrorCode.DOCUMENT_NOT_FOUND]
        await peer.client.disconnect()
        assert await registry.document_ids() == ["exists"]
        async with peers(url_of(server, "exists"), 1):
            pass


async def test_connection_limit_refuses_extra_clients() -> None:
    async with (
        WebSocketServer("127.0.0.1", 0, max_connections=2) as server,
        peers(url_of(server), 2) as group,
    ):
        ws = await connect(url_of(server), ping_interval=None)
        await expect_error_and_close(ws, ErrorCode.TOO_MANY_CONNECTIONS)
        await assert_others_keep_editing(server, group, "at the limit")


def client_changes(count: int) -> list[Change]:
    document = CRDTDocument()
    text = CRDTTextHandler(document, "text")
    made: list[Change] = []
    document.on_change(made.append)
    for index in range(count):
        text.insert(index, "x")
    return made


async def test_changes_with_missing_dependencies_get_out_of_sync_and_resync(
    server: WebSocketServer,
) -> None:
    made = client_changes(2)
    ws = await raw_joined(server, peer_id=made[0].peer)
    await ws.send(encode_message(Changes((made[1],))))
    replies = [await recv_message(ws), await recv_message(ws)]
    assert any(isinstance(m, Error) and m.code is ErrorCode.OUT_OF_SYNC for m in replies)
    # The connection stays open: the client resynchronises, then sends the gap.
    await ws.send(encode_message(DocumentStatusRequest(VersionVector())))
    status = await recv_message(ws)
    assert isinstance(status, DocumentStatus)
    await ws.send(encode_message(Changes((made[0],))))
    await recv_message(ws)  # Ack
    stored = await server.registry.get_document("notes")
    assert stored is not None and stored.version_vector == VersionVector(
        {made[0].peer: made[1].counter + made[1].size}
    )
    await ws.close()


@pytest.mark.parametrize("document_id", ["Notizen über 🌍", "a?b#c%20d", "メモ"])
async def test_document_ids_of_any_script_travel_percent_encoded(
    server: WebSocketServer, document_id: str
) -> None:
    url = f"ws://127.0.0.1:{server.port}{document_url_path(document_id)}"
    async with peers(url, 2) as group:
        group[0].text.insert(0, "hello")
        await wait_converged(group)
    assert server.loaded_document_ids() == [document_id]
    assert await server.registry.has_document(document_id)


async def test_changes_a_client_unblocks_are_relayed_to_that_client_too(
    server: WebSocketServer,
) -> None:
    # The server holds B (its dependency A is missing). When another client sends
    # A, B becomes applicable: it must reach every client, including the one whose
    # change unblocked it (issue 12's delivery bug: it was relayed to everyone but
    # that client, which then lacked B until its next resynchronisation).
    # (Each change comes from its own author's connection: the identity rule.)
    [first] = client_changes(1)
    holder_document = CRDTDocument()
    holder_document.import_changes([first])
    made: list[Change] = []
    holder_document.on_change(made.append)
    CRDTTextHandler(holder_document, "text").insert(1, "y")
    [second] = made
    holder = await raw_joined(server, peer_id=second.peer)
    unblocker = await raw_joined(server, peer_id=first.peer)
    watcher = await raw_joined(server)
    await holder.send(encode_message(Changes((second,))))
    replies = [await recv_message(holder), await recv_message(holder)]
    assert any(isinstance(m, Error) and m.code is ErrorCode.OUT_OF_SYNC for m in replies)
    await unblocker.send(encode_message(Changes((first,))))
    received: list[Change] = []
    while not isinstance(message := await recv_message(unblocker), Ack):
        if isinstance(message, Changes):
            received.extend(message.changes)
    # Relays go out before the sender's Ack, so by now it has what it unblocked.
    assert [change.id for change in received] == [second.id]
    seen: list[Change] = []
    while len(seen) < 2:
        message = await recv_message(watcher)
        if isinstance(message, Changes):
            seen.extend(message.changes)
    assert {change.id for change in seen} == {first.id, second.id}
    for ws in (holder, unblocker, watcher):
        await ws.close()


async def test_too_many_pending_changes_close_the_sender_only() -> None:
    async with (
        WebSocketServer("127.0.0.1", 0, max_pending_changes=2) as server,
        peers(url_of(server), 2) as group,
    ):
        made = client_changes(5)
        ws = await raw_joined(server, peer_id=made[0].peer)
        await ws.send(encode_message(Changes(tuple(made[1:]))))
        while True:
            message = await recv_message(ws)
            if isinstance(message, Error) and message.code is ErrorCode.LIMIT_EXCEEDED:
                break
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        await assert_others_keep_editing(server, group, "after the flood")


# ------------------------------------------------------------------ fuzz against the server


# Built once: the strategy must draw from the same bytes on every run (no fresh
# random peer ids per example), or Hypothesis cannot replay its examples.
FUZZ_SEEDS = [
    handshake(),
    encode_message(Ping(1)),
    encode_message(Changes(tuple(client_changes(2)))),
    encode_message(DocumentStatusRequest(VersionVector())),
]


@st.composite
def hostile_frame(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(FUZZ_SEEDS)))
    how = draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        return bytes(base[: draw(st.integers(0, len(base) - 1))])
    if how == "flip":
        index = draw(st.integers(0, len(base) - 1))
        base[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(base)
    return draw(st.binary(max_size=48))


@seed(424242)
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(hostile_frame(), min_size=1, max_size=3), join_first=st.booleans())
async def test_fuzzed_frames_never_hurt_the_server(
    server: WebSocketServer, frames: list[bytes], join_first: bool
) -> None:
    ws = await (raw_joined(server) if join_first else connect(url_of(server), ping_interval=None))
    try:
        for data in frames:
            await ws.send(data)
        # Whatever happened, the server answers a well-formed ping or has closed us
        # with a typed error; it never hangs and never dies.
        await ws.send(encode_message(Ping(99)))
        while True:
            message = await recv_message(ws)
            if isinstance(message, Error | Pong):
                break
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
    async with peers(url_of(server, "after-fuzz"), 1) as [peer]:
        peer.text.insert(0, "alive")
        await peer.wait_acknowledged()


# ------------------------------------------------------------------------ lifecycle, events


async def test_server_events_cover_a_session() -> None:
    server = WebSocketServer("127.0.0.1", 0)
    seen: list[ServerEventType] = []

    async def collect() -> None:
        async for event in server.server_events:
            seen.append(event.type)

    collector = asyncio.create_task(collect())
    await asyncio.sleep(0)  # let the iterator start before the first event
    await server.start()
    async with peers(url_of(server), 2) as group:
        group[0].text.insert(0, "x")
        await wait_converged(group)
        await group[0].wait_acknowledged()
    await server.stop()
    await asyncio.wait_for(collector, 10)  # the stream ends when the server stops
    assert seen[0] is ServerEventType.STARTED and seen[-1] is ServerEventType.STOPPED
    for expected in (
        ServerEventType.CLIENT_CONNECTED,
        ServerEventType.CLIENT_HANDSHAKE,
        ServerEventType.CLIENT_CHANGE_APPLIED,
        ServerEventType.CLIENT_DISCONNECTED,
    ):
        assert expected in seen


async def test_change_events_can_be_turned_off() -> None:
    # One event per edit costs work per edit: the CLI turns them off unless it
    # logs at DEBUG. The edits still travel; the other events still come.
    server = WebSocketServer("127.0.0.1", 0, change_events=False)
    seen: list[ServerEventType] = []
    subscription = server.server_events.subscribe(lambda event: seen.append(event.type))
    await server.start()
    async with peers(url_of(server), 2) as group:
        group[0].text.insert(0, "x")
        await wait_converged(group)
        await group[0].wait_acknowledged()
    await server.stop()
    subscription.cancel()
    assert ServerEventType.CLIENT_HANDSHAKE in seen
    assert ServerEventType.CLIENT_CHANGE_APPLIED not in seen


async def test_idle_documents_are_flushed_and_unloaded(tmp_path: Path) -> None:
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3")
    async with WebSocketServer("127.0.0.1", 0, registry, idle_unload_after=0) as server:
        async with peers(url_of(server), 1) as [peer]:
            peer.text.insert(0, "persist me")
            await peer.wait_acknowledged()
        room = server.room("notes")
        assert room is not None
        if room.unload_task is not None:
            await asyncio.wait_for(room.unload_task, 10)
        assert server.loaded_document_ids() == []
        assert registry.loaded_document_ids() == []
        async with peers(url_of(server), 1) as [again]:
            await wait_for(lambda: again.text.value == "persist me", documents=(again.document,))
    await registry.close()


async def test_stop_closes_clients_and_they_reconnect_to_a_new_server(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    registry = SqliteServerRegistry(path)
    server = WebSocketServer("127.0.0.1", 0, registry)
    await server.start()
    port = server.port
    async with peers(url_of(server), 2) as group:
        group[0].text.insert(0, "before restart")
        await group[0].wait_acknowledged()
        await server.stop()
        await registry.close()
        await group[0].wait_status(ConnectionStatus.RECONNECTING)
        group[1].items.append("while down")
        registry = SqliteServerRegistry(path)
        server = WebSocketServer("127.0.0.1", port, registry)
        await server.start()
        await group[0].wait_status(ConnectionStatus.CONNECTED)
        await group[1].wait_status(ConnectionStatus.CONNECTED)
        await wait_converged(group)
        assert group[0].items.value == ["while down"]
    await server.stop()
    await registry.close()


async def test_start_twice_is_refused() -> None:
    server = WebSocketServer("127.0.0.1", 0)
    with pytest.raises(ServerStateError):
        _ = server.port
    await server.start()
    try:
        with pytest.raises(ServerStateError):
            await server.start()
    finally:
        await server.stop()
    await server.stop()  # idempotent


async def test_a_leave_without_a_presence_is_not_relayed(server: WebSocketServer) -> None:
    # Relaying it would cost one message per other client for every departure:
    # N clients leaving together would cost N squared messages.
    watcher_id, quiet_id = str(PeerId.generate()), str(PeerId.generate())
    watcher = await connect(url_of(server), ping_interval=None)
    quiet = await connect(url_of(server), ping_interval=None)
    try:
        for ws, peer in ((watcher, watcher_id), (quiet, quiet_id)):
            await ws.send(encode_message(HandshakeRequest("notes", peer, VersionVector())))
            assert isinstance(await recv_message(ws), HandshakeResponse)
        await quiet.send(encode_message(AwarenessUpdate(quiet_id, 1, None)))
        await quiet.send(encode_message(AwarenessUpdate(quiet_id, 2, {"name": "Quiet"})))
        first = await asyncio.wait_for(recv_message(watcher), timeout=10)
        assert isinstance(first, AwarenessUpdate)
        assert first.state == {"name": "Quiet"}, "the presence-less leave was relayed"
    finally:
        await quiet.close()
        await watcher.close()
