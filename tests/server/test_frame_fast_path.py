"""The fast path for incoming frames (server/connection.py FrameConnection.data_received)
against websockets' own parser: the same byte streams, cut into the same chunks,
must give the same messages, the same state and the same close code. Real
connections on 127.0.0.1; the chunks are handed to the server's connection as
its socket would hand them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.utils import apply_mask

from server.connection import FrameConnection, _at_frame_boundary

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

# Small enough that frames over it are cheap to make (websockets closes with 1009).
LIMIT = 1000


def frame(first: int, payload: bytes, rng: random.Random, *, masked: bool = True) -> bytes:
    """One frame: ``first`` byte (FIN, reserved bits, opcode), any length encoding."""
    n = len(payload)
    bit = 0x80 if masked else 0
    style = rng.random()
    if n < 126 and style < 0.7:
        head = bytes((first, bit | n))
    elif n < 65536 and style < 0.95:  # 16-bit, minimal or not
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = rng.randbytes(4)
    return head + mask + apply_mask(payload, mask)


def random_frames(rng: random.Random) -> bytes:
    """A stream of mostly well-formed frames, with now and then something else."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        pick = rng.random()
        size = rng.choice([0, 1, 5, 40, 125, 126, 300, LIMIT, LIMIT + 1])
        payload = rng.randbytes(size)
        if pick < 0.55:
            parts.append(frame(0x82, payload, rng))
        elif pick < 0.62:  # fragmented: binary without FIN, then continuations
            parts.append(frame(0x02, payload[:3], rng))
            parts.append(frame(0x00, payload[3:8], rng))
            parts.append(frame(0x80 if rng.random() < 0.8 else 0x82, payload[8:], rng))
        elif pick < 0.67:
            parts.append(frame(0x81, "é text".encode() if rng.random() < 0.7 else b"\xff", rng))
        elif pick < 0.74:
            parts.append(frame(0x89, payload[:20], rng))  # ping: answered with a pong
        elif pick < 0.78:
            parts.append(frame(0x8A, payload[:20], rng))  # unsolicited pong
        elif pick < 0.81:
            parts.append(frame(0x82, payload, rng, masked=False))
        elif pick < 0.84:
            parts.append(frame(0x82 | rng.choice([0x40, 0x20, 0x10]), payload, rng))
        elif pick < 0.86:
            parts.append(frame(0x83, payload, rng))  # a reserved opcode
        elif pick < 0.88:
            parts.append(frame(0x88, (1000).to_bytes(2, "big") + b"bye", rng))
        elif pick < 0.90:
            parts.append(rng.randbytes(rng.randint(1, 12)))
        else:
            parts.append(frame(0x80, payload, rng))  # a stray continuation
    return b"".join(parts)


def cut(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` in chunks, cut anywhere (inside headers and masks too)."""
    if len(data) < 2 or rng.random() < 0.3:
        return [data]
    points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class Messages:
    """What FrameConnection.process_event makes of websockets' frames."""

    def __init__(self) -> None:
        self.received: list[bytes | str] = []
        self._parts: list[bytes] | None = None
        self._text = False

    def take(self, event: object) -> None:
        if not isinstance(event, Frame):
            return
        if event.opcode is Opcode.BINARY and event.fin:
            self.received.append(bytes(event.data))
        elif event.opcode in (Opcode.BINARY, Opcode.TEXT):
            if event.fin:
                self.received.append(bytes(event.data).decode("utf-8", "replace"))
            else:
                self._parts, self._text = [bytes(event.data)], event.opcode is Opcode.TEXT
        elif event.opcode is Opcode.CONT and self._parts is not None:
            self._parts.append(bytes(event.data))
            if event.fin:
                whole = b"".join(self._parts)
                self._parts = None
                self.received.append(whole.decode("utf-8", "replace") if self._text else whole)


def reference(chunks: list[bytes]) -> tuple[list[bytes | str], State, int | None]:
    """websockets' own parser on ``chunks``: messages, state, close code sent."""
    protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=LIMIT)
    messages = Messages()
    for chunk in chunks:
        if protocol.state is State.CLOSED:
            break
        protocol.receive_data(chunk)
        for event in protocol.events_received():
            messages.take(event)
    sent = protocol.close_sent
    return messages.received, protocol.state, None if sent is None else sent.code


Opened = Callable[[], Awaitable[FrameConnection]]


@pytest_asyncio.fixture
async def opened() -> AsyncIterator[Opened]:
    """Open a connection to a server that uses FrameConnection; returns the server's side."""
    waiting: list[asyncio.Future[FrameConnection]] = []

    async def handler(ws: Any) -> None:
        waiting.pop(0).set_result(ws)
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=FrameConnection,
        max_size=LIMIT,
        compression=None,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        clients = []

        async def open_one() -> FrameConnection:
            future: asyncio.Future[FrameConnection] = asyncio.get_running_loop().create_future()
            waiting.append(future)
            clients.append(
                await connect(f"ws://127.0.0.1:{port}", compression=None, ping_interval=None)
            )
            return await asyncio.wait_for(future, 10)

        yield open_one
        for client in clients:
            client.transport.abort()


async def compare(opened: Opened, chunks: list[bytes]) -> None:
    ws = await opened()
    assert _at_frame_boundary(ws.protocol)  # so the fast path is open to these chunks
    received: list[bytes | str] = []
    ws.listen(received.append)
    for chunk in chunks:
        if ws.protocol.state is State.CLOSED:
            break
        ws.data_received(chunk)
    expected, state, code = reference(chunks)
    sent = ws.protocol.close_sent
    assert received == expected
    assert (ws.protocol.state, None if sent is None else sent.code) == (state, code)


async def test_complete_binary_frames_skip_websockets_parser(opened: Opened) -> None:
    rng = random.Random(1)
    ws = await opened()
    received: list[bytes | str] = []
    ws.listen(received.append)
    fed: list[bytes] = []
    original = ws.protocol.receive_data

    def counted(data: bytes) -> None:
        fed.append(data)
        original(data)

    ws.protocol.receive_data = counted  # type: ignore[method-assign]
    ws.data_received(frame(0x82, b"one", rng) + frame(0x82, bytes(300), rng))
    assert received == [b"one", bytes(300)] and fed == []
    # Half a frame: websockets takes it, and the rest of the frame after it.
    whole = frame(0x82, b"two", rng)
    ws.data_received(whole[:3])
    assert not _at_frame_boundary(ws.protocol)
    ws.data_received(whole[3:] + frame(0x82, b"three", rng))
    assert received[2:] == [b"two", b"three"] and len(fed) == 2
    # Back at a boundary: the fast path again.
    ws.data_received(frame(0x82, b"four", rng))
    assert received[4:] == [b"four"] and len(fed) == 2
    # A ping goes to websockets, which answers it; the frame after it is fast.
    ws.data_received(frame(0x89, b"hi", rng) + frame(0x82, b"five", rng))
    assert received[5:] == [b"five"] and len(fed) == 3


async def test_the_rest_of_a_cut_frame_goes_to_websockets_even_if_it_looks_like_a_frame(
    opened: Opened,
) -> None:
    # The fast path looks at websockets' parser again after each handover (it
    # keeps what it saw only while nothing was parsed): here the rest of a frame
    # cut across two reads is, byte for byte, a complete binary frame itself.
    rng = random.Random(3)
    inner = frame(0x82, b"inside", rng)
    mask = rng.randbytes(4)
    on_the_wire = b"head" + inner  # the outer frame's masked payload
    outer = bytes((0x82, 0x80 | len(on_the_wire))) + mask + on_the_wire
    cut_at = len(outer) - len(inner)
    chunks = [frame(0x82, b"before", rng) + outer[:cut_at], outer[cut_at:]]
    expected = [b"before", apply_mask(on_the_wire, mask)]
    assert reference(chunks)[0] == expected
    await compare(opened, chunks)
    await compare(opened, [outer[:cut_at], outer[cut_at:], frame(0x82, b"after", rng)])


async def test_oversized_unmasked_and_reserved_frames_close_as_websockets_does(
    opened: Opened,
) -> None:
    rng = random.Random(2)
    for bad, code in [
        (frame(0x82, bytes(LIMIT + 1), rng), 1009),
        (frame(0x82, b"x", rng, masked=False), 1002),
        (frame(0xC2, b"x", rng), 1002),
    ]:
        chunks = [frame(0x82, b"ok", rng) + bad + frame(0x82, b"late", rng)]
        assert reference(chunks)[2] == code
        await compare(opened, chunks)


async def test_random_streams_in_random_chunks_match_websockets(opened: Opened) -> None:
    rng = random.Random(12)
    for _ in range(60):
        await compare(opened, cut(random_frames(rng), rng))


@pytest.mark.slow
async def test_random_streams_in_random_chunks_match_websockets_long(opened: Opened) -> None:
    rng = random.Random(1212)
    for _ in range(3000):
        await compare(opened, cut(random_frames(rng), rng))
