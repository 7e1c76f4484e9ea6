"""How frames reach a connection's session (server/connection.py FrameConnection):
straight from websockets' parser, fragmented messages joined, text refused, the
idle bound kept by one timer (real server, raw WebSocket clients on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crdt_sync import PeerId, VersionVector
from crdt_sync.sync import (
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    Ping,
    Pong,
    decode_message,
    encode_message,
)
from server import WebSocketServer
from server.trust import Limits

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[WebSocketServer]:
    async with WebSocketServer("127.0.0.1", 0, limits=Limits(idle_timeout=0.6)) as running:
        yield running


def handshake() -> bytes:
    return encode_message(HandshakeRequest("notes", str(PeerId.generate()), VersionVector()))


async def next_message(ws: ClientConnection) -> Message:
    data = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(data, bytes)
    return decode_message(data)


async def test_a_fragmented_handshake_is_one_message(server: WebSocketServer) -> None:
    ws = await connect(f"ws://127.0.0.1:{server.port}/notes", ping_interval=None)
    frame = handshake()
    # websockets sends an iterable as one message in several frames.
    await ws.send([frame[:3], frame[3:10], frame[10:]])
    assert isinstance(await next_message(ws), HandshakeResponse)
    await ws.send(encode_message(Ping(7, 1)))
    assert await next_message(ws) == Pong(7, 1)
    await ws.close()


async def test_a_fragmented_text_message_is_refused(server: WebSocketServer) -> None:
    ws = await connect(f"ws://127.0.0.1:{server.port}/notes", ping_interval=None)
    await ws.send(handshake())
    assert isinstance(await next_message(ws), HandshakeResponse)
    await ws.send(["not ", "the protocol"])
    error = await next_message(ws)
    assert isinstance(error, Error) and error.code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)


async def test_frames_sent_with_the_handshake_are_all_answered(server: WebSocketServer) -> None:
    ws = await connect(f"ws://127.0.0.1:{server.port}/notes", ping_interval=None)
    # In one burst: the handshake and pings behind it (some arrive in the same read).
    await ws.send(handshake())
    for nonce in range(5):
        await ws.send(encode_message(Ping(nonce, 0)))
    assert isinstance(await next_message(ws), HandshakeResponse)
    assert [await next_message(ws) for _ in range(5)] == [Pong(n, 0) for n in range(5)]
    await ws.close()


async def test_a_talking_connection_outlives_the_idle_bound_a_silent_one_does_not(
    server: WebSocketServer,
) -> None:
    ws = await connect(f"ws://127.0.0.1:{server.port}/notes", ping_interval=None)
    await ws.send(handshake())
    assert isinstance(await next_message(ws), HandshakeResponse)
    # A frame every ~0.15 s for four idle bounds (0.6 s): each one moves the bound on.
    for nonce in range(16):
        await ws.send(encode_message(Ping(nonce, 0)))
        assert await next_message(ws) == Pong(nonce, 0)
        await asyncio.sleep(0.15)  # pacing the client, not synchronising
    # Then silence: the server ends the session.
    error = await next_message(ws)
    assert isinstance(error, Error) and error.code is ErrorCode.TIMEOUT
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
