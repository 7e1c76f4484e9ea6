"""Floods: rates are charged as frames arrive (not as the server gets round to them),
reconnecting does not refill a refused peer's budget, and big frames are decoded
a few at a time. Attackers on 127.0.0.2, honest users on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from security_helpers import Attacker, honest_users, keep_editing_and_converge, wait_for
from websockets.exceptions import ConnectionClosed

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId
from crdt_sync.sync import Ack, Changes, ErrorCode, encode_message
from server import SqliteServerRegistry, WebSocketServer
from server.trust import Limits

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


@asynccontextmanager
async def serving(tmp_path: Path, limits: Limits) -> AsyncIterator[WebSocketServer]:
    # A real SQLite file: every frame of changes waits for its commit before the
    # next is applied, so a flood arrives much faster than it is processed.
    registry = SqliteServerRegistry(tmp_path / "documents.sqlite3")
    running = WebSocketServer("127.0.0.1", 0, registry, limits=limits)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
        await registry.close()


def text_of(server: WebSocketServer) -> Any:
    def read() -> str:
        room = server.room("notes")
        assert room is not None
        return str(room.document.get_value("text"))

    return read


def appends(peer: str, count: int) -> list[Change]:
    document = CRDTDocument(PeerId.parse(peer), "notes")
    text = CRDTTextHandler(document, "text")
    made: list[Change] = []
    document.on_change(made.append)
    for _ in range(count):
        text.insert(len(text), "!")
    return made


async def test_a_flood_is_refused_as_it_arrives_and_reconnecting_does_not_refill(
    tmp_path: Path,
) -> None:
    # A rate far above what one connection's stored changes reach: only counting
    # frames as they arrive can see this flood.
    limits = Limits(messages_per_second=2_000, message_burst=200, abuse_cooldown=30)
    async with serving(tmp_path, limits) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        frames = [encode_message(Changes((c,))) for c in appends(attacker.peer, 3_000)]
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await attacker.send(frame)
        acked = 0
        with pytest.raises(ConnectionClosed):
            while True:
                message = await attacker.recv()
                if isinstance(message, Ack):
                    acked = max(acked, message.version_vector.get(attacker.peer, 0))
                elif getattr(message, "code", None) is not None:
                    assert message.code is ErrorCode.RATE_LIMITED, message
        room = server.room("notes")
        assert room is not None
        held = room.document.version_vector.get(attacker.peer, 0)
        # Refused within about its burst, long before the 3,000th frame; what was
        # acknowledged is kept.
        assert held <= 600, f"{held} of the flood's changes were applied"
        assert acked <= held
        # Reconnecting at once gets nothing applied: the peer cools down.
        again = await Attacker.join(url(server), peer=attacker.peer)
        await again.expect_error(ErrorCode.RATE_LIMITED)
        await keep_editing_and_converge(users, text_of(server))
        assert room.document.version_vector.get(attacker.peer, 0) == held


async def test_big_frames_are_decoded_a_few_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.session import ServerSession

    lock = threading.Lock()
    running = [0]
    peak = [0]
    decode = ServerSession.decode

    def counting(self: ServerSession, data: Any) -> Any:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return decode(self, data)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(ServerSession, "decode", counting)
    async with serving(tmp_path, Limits()) as server, honest_users(url(server)) as users:
        attackers = [await Attacker.join(url(server)) for _ in range(6)]
        for attacker in attackers:
            await attacker.joined()
        # Each inflates (the change format's zlib layer) to the frame bound.
        bombs = [encode_message(Changes((c,))) for c in appends_big([a.peer for a in attackers])]
        await asyncio.gather(*(a.send(b) for a, b in zip(attackers, bombs, strict=True)))
        for attacker in attackers:
            await attacker.expect_error(ErrorCode.INVALID_MESSAGE)
        assert 1 <= peak[0] <= 2, f"{peak[0]} big frames decoded at once"
        await keep_editing_and_converge(users, text_of(server))


def appends_big(peers: list[str]) -> list[Change]:
    """One change per peer inserting 20 MB of one character (a few KB compressed)."""
    out = []
    for peer in peers:
        document = CRDTDocument(PeerId.parse(peer), "notes")
        text = CRDTTextHandler(document, "text")
        made: list[Change] = []
        document.on_change(made.append)
        text.insert(0, "z" * 20_000_000)
        out += made
    return out


def url(server: WebSocketServer) -> str:
    return f"ws://127.0.0.1:{server.port}/notes"


async def test_one_address_gets_a_few_handshakes_worked_on_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.rooms import Rooms

    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    join = Rooms.join

    async def counting(self: Rooms, member: Any, *args: Any, **kwargs: Any) -> None:
        host = member.host
        running[host] = running.get(host, 0) + 1
        peak[host] = max(peak.get(host, 0), running[host])
        try:
            for _ in range(5):
                await asyncio.sleep(0)  # let every other waiting handshake in, if it may
            await join(self, member, *args, **kwargs)
        finally:
            running[host] -= 1

    monkeypatch.setattr(Rooms, "join", counting)
    limits = Limits(handshakes_per_ip=2)
    async with serving(tmp_path, limits) as server, honest_users(url(server)) as users:
        crowd = await asyncio.gather(*(Attacker.join(url(server)) for _ in range(12)))
        for attacker in crowd:
            await attacker.joined()  # every one gets in, in turn
        assert peak["127.0.0.2"] == 2, peak
        await keep_editing_and_converge(users, text_of(server))


async def test_a_peer_refused_for_speaking_for_another_cools_down(tmp_path: Path) -> None:
    from crdt_sync.sync import AwarenessUpdate

    async with serving(tmp_path, Limits()) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        await attacker.send(encode_message(AwarenessUpdate(users[0].peer, 1, {"name": "me"})))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        again = await Attacker.join(url(server), peer=attacker.peer)
        await again.expect_error(ErrorCode.RATE_LIMITED)
        await keep_editing_and_converge(users, text_of(server))


async def test_a_client_with_many_frames_queued_lets_others_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.rooms import Rooms

    order: list[str] = []
    apply = Rooms.apply

    async def recording(self: Rooms, member: Any, changes: Any, *args: Any, **kw: Any) -> None:
        order.append(str(changes[0].peer))
        await apply(self, member, changes, *args, **kw)

    monkeypatch.setattr(Rooms, "apply", recording)
    limits = Limits(messages_per_second=10_000, message_burst=10_000)
    async with serving(tmp_path, limits) as server, honest_users(url(server)) as users:
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        burst = [encode_message(Changes((c,))) for c in appends(attacker.peer, 400)]
        await asyncio.gather(*(attacker.send(frame) for frame in burst))
        users[0].text.insert(0, "mine ")  # sent now, behind the attacker's burst
        await users[0].wait_acknowledged()
        mine = order.index(users[0].peer)
        # Applied between the attacker's frames, not after all of them.
        assert order[mine + 1 :].count(attacker.peer) > 0, "the burst held the loop"
        while True:  # the whole burst is applied and acknowledged
            message = await attacker.recv()
            if isinstance(message, Ack) and message.version_vector.get(attacker.peer, 0) >= 400:
                break
        read = text_of(server)
        await wait_for(
            lambda: all(u.text.value == read() for u in users),
            documents=tuple(u.document for u in users),
            what="the burst relayed to everyone",
        )
        await keep_editing_and_converge(users, read)
        # It reads nothing more: with frames unread it stops reading (websockets'
        # flow control) and would never see the server's close.
        attacker.ws.transport.abort()
