"""Bounded work: every limit of server/trust.py against a hostile client on 127.0.0.2,
with honest clients on 127.0.0.1 editing on."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from security_helpers import (
    WAIT,
    Attacker,
    Honest,
    honest_users,
    keep_editing_and_converge,
    wait_for,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import (
    Ack,
    AwarenessQuery,
    AwarenessState,
    AwarenessUpdate,
    Changes,
    DocumentStatusRequest,
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    Ping,
    encode_message,
)
from crdt_sync.sync.events import ErrorOccurred
from crdt_sync.sync.messages import MAX_COUNTER
from server import InMemoryServerRegistry, ServerEvent, WebSocketServer
from server.trust import Limits

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[WebSocketServer]:
    limits = options.pop("limits", Limits())
    running = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry(), limits=limits, **options)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def url(server: WebSocketServer, document_id: str = "notes") -> str:
    return f"ws://127.0.0.1:{server.port}/{document_id}"


def text_of(server: WebSocketServer) -> Callable[[], str]:
    def read() -> str:
        room = server.room("notes")
        assert room is not None
        return str(room.document.get_value("text"))

    return read


def own_changes(peer: str, pieces: int, size: int = 1, *, noise: bool = False) -> list[Change]:
    """``pieces`` changes of ``peer`` inserting ``size`` characters each (random ones
    with ``noise``, which the change format's compression cannot shrink)."""
    document = CRDTDocument(PeerId.parse(peer), "notes")
    text = CRDTTextHandler(document, "text")
    made: list[Change] = []
    document.on_change(made.append)
    for index in range(pieces):
        piece = secrets.token_hex(size)[:size] if noise else "z" * size
        text.insert(index * size, piece)
    return made


async def test_a_message_flood_is_rate_limited() -> None:
    limits = Limits(messages_per_second=20, message_burst=40)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        for nonce in range(200):
            try:
                await attacker.send(encode_message(Ping(nonce)))
            except ConnectionClosed:
                break
        await attacker.expect_error(ErrorCode.RATE_LIMITED)
        await keep_editing_and_converge(users, text_of(server))


async def test_a_byte_flood_is_rate_limited() -> None:
    limits = Limits(bytes_per_second=10_000, byte_burst=50_000)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        frame = encode_message(Changes(tuple(own_changes(attacker.peer, 1, 20_000, noise=True))))
        for _ in range(5):
            try:
                await attacker.send(frame)
            except ConnectionClosed:
                break
        await attacker.expect_error(ErrorCode.RATE_LIMITED)
        await keep_editing_and_converge(users, text_of(server))


async def test_a_client_over_its_rate_says_so_and_reconnects() -> None:
    limits = Limits(messages_per_second=5, message_burst=10, abuse_cooldown=1.0)
    async with serving(limits=limits) as server, honest_users(url(server), 1) as (user,):
        seen: list[ErrorOccurred] = []
        user.client.events.subscribe(
            lambda event: seen.append(event) if isinstance(event, ErrorOccurred) else None
        )
        for index in range(30):  # one presence frame each: over the burst
            user.client.awareness.set_local_state({"cursor": index})
        await wait_for(
            lambda: any(e.code is ErrorCode.RATE_LIMITED for e in seen),
            streams=(user.client.events,),
            what="RATE_LIMITED",
        )
        assert not next(e for e in seen if e.code is ErrorCode.RATE_LIMITED).final
        # Not final: the client reconnects by itself (once its peer's cool-down is
        # over; its retries meanwhile do not prolong it), and its edits get through.
        await user.type("after the limit")
        assert text_of(server)() == "after the limit"


async def test_a_zip_bomb_in_the_change_format_is_refused() -> None:
    async with serving(max_message_size=256 * 1024) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        # 4 MB of text inside a change batch that zlib packs to a few KB.
        frame = encode_message(Changes(tuple(own_changes(attacker.peer, 1, 4_000_000))))
        assert len(frame) < 256 * 1024
        await attacker.send(frame)
        error = await attacker.expect_error(ErrorCode.INVALID_MESSAGE)
        assert "inflates beyond" in error.message
        await keep_editing_and_converge(users, text_of(server))


async def test_too_many_changes_in_one_frame_are_refused() -> None:
    limits = Limits(max_changes_per_frame=50)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        await attacker.send(encode_message(Changes(tuple(own_changes(attacker.peer, 60)))))
        await attacker.expect_error(ErrorCode.LIMIT_EXCEEDED)
        await keep_editing_and_converge(users, text_of(server))


async def test_a_status_loop_is_answered_from_cache_then_rate_limited() -> None:
    limits = Limits(status_per_second=1, status_burst=5)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        await users[0].type("some text ")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        answers = []
        for _ in range(20):
            try:
                await attacker.send(encode_message(DocumentStatusRequest(VersionVector())))
            except ConnectionClosed:
                break
        while True:
            message = await attacker.recv()
            if isinstance(message, Error):
                assert message.code is ErrorCode.RATE_LIMITED
                break
            answers.append(message)
        assert 1 <= len(answers) <= 6
        await keep_editing_and_converge(users, text_of(server))


async def test_presence_is_bounded_per_state_and_per_document() -> None:
    limits = Limits(max_presence_bytes=2000, max_presence_total=5000)
    async with serving(limits=limits) as server, honest_users(url(server)) as (alice, bob):
        # One state over the bound: refused.
        big = await Attacker.join(url(server))
        await big.joined()
        await big.send(encode_message(AwarenessUpdate(big.peer, 1, {"x": "y" * 3000})))
        await big.expect_error(ErrorCode.LIMIT_EXCEEDED)
        # Many states within the bound: the document's total stays bounded.
        crowd = []
        for _ in range(5):
            attacker = await Attacker.join(url(server))
            await attacker.joined()
            await attacker.send(
                encode_message(AwarenessUpdate(attacker.peer, 1, {"x": "y" * 1900}))
            )
            crowd.append(attacker)
        # An absurd clock for its own peer is not kept either.
        await crowd[0].send(encode_message(AwarenessUpdate(crowd[0].peer, MAX_COUNTER, {"a": 1})))
        await crowd[0].send(encode_message(AwarenessQuery()))
        while not isinstance(message := await crowd[0].recv(), AwarenessState):
            pass
        total = sum(len(json.dumps(u.state)) for u in message.states if u.state is not None)
        assert total <= 5000
        assert all(u.clock < MAX_COUNTER for u in message.states)
        alice.client.awareness.set_local_state({"name": "Alice"})
        await keep_editing_and_converge([alice, bob], text_of(server))
        for attacker in crowd:
            await attacker.close()


async def test_a_huge_handshake_version_vector_is_refused() -> None:
    limits = Limits(max_handshake_peers=100)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        ws = await connect(url(server), ping_interval=None, local_addr=("127.0.0.2", 0))
        vv = VersionVector({str(PeerId.generate()): 5 for _ in range(101)})
        await ws.send(encode_message(HandshakeRequest("notes", str(PeerId.generate()), vv)))
        attacker = Attacker(ws, "")
        await attacker.expect_error(ErrorCode.HANDSHAKE_FAILED)
        await keep_editing_and_converge(users, text_of(server))


async def test_one_address_cannot_take_every_connection() -> None:
    limits = Limits(max_connections_per_ip=5)
    async with serving(limits=limits, max_connections=50) as server:
        held = [await Attacker.join(url(server)) for _ in range(5)]
        for attacker in held:
            await attacker.joined()
        # Refused before the upgrade: an HTTP reply, no WebSocket session.
        with pytest.raises(InvalidStatus) as refused:
            await Attacker.join(url(server))
        assert refused.value.response.status_code == 429
        assert b"TOO_MANY_CONNECTIONS" in refused.value.response.body
        # Honest clients from another address still get in, and edit.
        async with honest_users(url(server), 3) as users:
            await keep_editing_and_converge(users, text_of(server))
        # A slot freed is a slot again.
        await held[0].close()
        again = await _join_when_counted_down(server, held[0])
        await again.joined()


async def _join_when_counted_down(server: WebSocketServer, closed: Attacker) -> Attacker:
    async with asyncio.timeout(WAIT):
        while server.connection_count > 4:
            await asyncio.sleep(0.01)  # polls the count; no ordering depends on it
    return await Attacker.join(url(server))


async def test_document_creation_is_bounded_per_address_and_in_total() -> None:
    limits = Limits(documents_per_ip_per_minute=3, max_documents=6)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        for index in range(3):
            attacker = await Attacker.join(url(server, f"spam{index}"), f"spam{index}")
            await attacker.joined()
            await attacker.close()
        attacker = await Attacker.join(url(server, "spam3"), "spam3")
        await attacker.expect_error(ErrorCode.RATE_LIMITED)
        # Other addresses have quotas of their own, up to the server's maximum.
        for index in range(2):
            other = await Attacker.join(
                url(server, f"more{index}"), f"more{index}", source="127.0.0.3"
            )
            await other.joined()
            await other.close()
        last = await Attacker.join(url(server, "more2"), "more2", source="127.0.0.3")
        await last.expect_error(ErrorCode.LIMIT_EXCEEDED)
        # Existing documents still open; honest users edit on.
        await keep_editing_and_converge(users, text_of(server))


async def test_a_document_cannot_grow_past_its_bound() -> None:
    limits = Limits(max_document_bytes=10_000)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        # The bound holds for everyone on the grown document; other documents go on.
        attacker = await Attacker.join(url(server, "big"), "big")
        await attacker.joined()
        for change in own_changes(attacker.peer, 3, 10_000, noise=True):
            try:
                await attacker.send(encode_message(Changes((change,))))
            except ConnectionClosed:
                break
        await attacker.expect_error(ErrorCode.LIMIT_EXCEEDED)
        room = server.room("big")
        assert room is not None and len(str(room.document.get_value("text"))) <= 20_000
        await keep_editing_and_converge(users, text_of(server))


async def test_per_document_state_goes_when_the_document_unloads() -> None:
    async with serving(idle_unload_after=0, allow_create=False) as server:
        for index in range(20):
            attacker = await Attacker.join(url(server, f"ghost{index}"), f"ghost{index}")
            await attacker.expect_error(ErrorCode.DOCUMENT_NOT_FOUND)
        assert server.rooms.lock_count == 0
    async with serving(idle_unload_after=0) as server:
        async with honest_users(url(server)) as users:
            await users[0].type("hi")
        async with asyncio.timeout(WAIT):
            while server.loaded_document_ids():
                await asyncio.sleep(0.01)
        assert server.rooms.lock_count == 0


async def test_a_silent_connection_is_closed() -> None:
    async with serving(limits=Limits(idle_timeout=0.3)) as server:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        await attacker.expect_error(ErrorCode.TIMEOUT)


async def test_client_strings_cannot_forge_log_lines() -> None:
    async with serving() as server:
        events: list[ServerEvent] = []
        server.server_events.subscribe(events.append)
        ws = await connect(url(server), ping_interval=None)
        name = "Eve\nINFO forged line\r\x1b[31m"
        await ws.send(
            encode_message(HandshakeRequest("notes", str(PeerId.generate()), VersionVector(), name))
        )
        attacker = Attacker(ws, "")
        assert isinstance(await attacker.recv(), HandshakeResponse)
        await ws.close()
        async with asyncio.timeout(WAIT):
            while not any("Eve" in str(e.data.get("name", "")) for e in events):
                await asyncio.sleep(0.01)
        for event in events:
            assert "\n" not in event.message and "\x1b" not in event.message
            for value in event.data.values():
                assert not (isinstance(value, str) and ("\n" in value or "\x1b" in value))


async def test_the_url_path_is_percent_decoded() -> None:
    async with serving() as server:
        document = CRDTDocument(document_id="notes")
        user = Honest(f"ws://127.0.0.1:{server.port}/%6Eotes", "u", document)
        await user.connect()
        await user.type("decoded")
        assert text_of(server)() == "decoded"
        await user.client.disconnect()
        user.client.close()


async def test_a_big_frame_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from server.session import ServerSession

    threads: list[threading.Thread] = []
    decode = ServerSession.decode

    def recording(self: ServerSession, data: Any) -> Any:
        threads.append(threading.current_thread())
        return decode(self, data)

    monkeypatch.setattr(ServerSession, "decode", recording)
    async with serving() as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        big = encode_message(Changes(tuple(own_changes(attacker.peer, 1, 3_000, noise=True))))
        assert 1024 <= len(big) < 64 * 1024
        threads.clear()
        await attacker.send(big)
        while not isinstance(await attacker.recv(), Ack):
            pass
        assert threads and all(t is not threading.main_thread() for t in threads)
        await keep_editing_and_converge(users, text_of(server))


async def test_a_client_over_its_address_cap_reports_it_and_gets_in_later() -> None:
    limits = Limits(max_connections_per_ip=2)
    async with serving(limits=limits) as server, honest_users(url(server), 2) as users:
        third = Honest(url(server), "third")
        seen: list[ErrorOccurred] = []
        third.client.events.subscribe(
            lambda e: seen.append(e) if isinstance(e, ErrorOccurred) else None
        )
        try:
            assert not await third.client.connect()  # refused, not final: it retries
            assert seen and seen[-1].code is ErrorCode.TOO_MANY_CONNECTIONS
            assert not seen[-1].final
            await users[1].client.disconnect()
            await third.wait_acknowledged()  # connected by itself once a slot freed
            await keep_editing_and_converge([users[0], third], text_of(server))
        finally:
            await third.client.disconnect()
            third.client.close()


async def test_refusals_for_the_address_cap_wait_a_few_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import server.trust as trust

    monkeypatch.setattr(trust, "_TARPIT_SECONDS", 60.0)
    monkeypatch.setattr(trust, "_TARPIT_SLOTS", 2)
    limits = Limits(max_connections_per_ip=2)
    async with serving(limits=limits) as server, honest_users(url(server)) as users:
        for _ in range(2):
            await (await Attacker.join(url(server))).joined()
        attempts = [asyncio.ensure_future(Attacker.join(url(server))) for _ in range(5)]
        for refused, attempt in enumerate(asyncio.as_completed(attempts), 1):
            with pytest.raises(InvalidStatus):
                await attempt
            if refused == 3:
                break
        # Two wait in the tarpit (an address hammering connects at its pace); the
        # others were answered at once, and everyone else carries on meanwhile.
        assert sum(not a.done() for a in attempts) == 2
        await keep_editing_and_converge(users, text_of(server))
    # Stopping the server ends the waits.
    for attempt in attempts:
        with pytest.raises((InvalidStatus, ConnectionClosed, OSError)):
            await attempt
