"""Helpers of the hostile-client tests: raw frames from an attacker, honest real clients.

The attacker speaks raw frames built with :mod:`crdt_sync.sync.messages`; the
honest users are real :class:`~crdt_sync.sync.WebSocketClient`s editing a text,
and every test ends by checking that they still edit, converge with the server,
and lost nothing the server acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import (
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    decode_message,
    encode_message,
)
from crdt_sync.sync.client import ConnectionStatus, ReconnectPolicy, WebSocketClient
from crdt_sync.sync.streams import EventStream

WAIT = 15.0
FAST_RECONNECT = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.3, jitter=0.5)


async def wait_for(
    condition: Callable[[], bool],
    *,
    documents: tuple[CRDTDocument, ...] = (),
    streams: tuple[EventStream[Any], ...] = (),
    timeout: float = WAIT,
    what: str = "condition",
) -> None:
    """Wait until ``condition()`` holds, looking again whenever a source fires."""
    event = asyncio.Event()
    cancels: list[Callable[[], None]] = []
    for document in documents:
        cancels.append(document.on_update(lambda _: event.set()).cancel)
    for stream in streams:
        cancels.append(stream.subscribe(lambda _: event.set()).cancel)
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                event.clear()
                await event.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    finally:
        for cancel in cancels:
            cancel()


class Honest:
    """A user: a document with a shared text and a real client."""

    def __init__(self, url: str, name: str, document: CRDTDocument | None = None) -> None:
        self.document = document if document is not None else CRDTDocument()
        self.text = CRDTTextHandler(self.document, "text")
        self.client = WebSocketClient(url, self.document, name, reconnect=FAST_RECONNECT)

    @property
    def peer(self) -> str:
        return str(self.document.peer_id)

    async def connect(self) -> None:
        assert await self.client.connect(), (
            f"connect failed: {self.client.status} {self.client.last_error}"
        )

    async def type(self, words: str) -> None:
        self.text.insert(len(self.text.value), words)
        await self.wait_acknowledged()

    async def wait_acknowledged(self) -> None:
        await wait_for(
            lambda: (
                self.client.unacknowledged_changes == 0
                and self.client.status is ConnectionStatus.CONNECTED
            ),
            streams=(self.client.events, self.client.connection_status),
            what=f"acknowledgement of {self.client.author}",
        )


@contextlib.asynccontextmanager
async def honest_users(url: str, count: int = 2) -> AsyncIterator[list[Honest]]:
    users = [Honest(url, f"user{i}") for i in range(count)]
    try:
        for user in users:
            await user.connect()
        yield users
    finally:
        for user in users:
            await user.client.disconnect()
            user.client.close()


async def keep_editing_and_converge(users: list[Honest], server_text: Callable[[], str]) -> None:
    """Every honest user types once more; all converge with each other and the
    server; nothing any of them typed is missing."""
    for user in users:
        await user.type(f"[{user.client.author}]")
    await wait_for(
        lambda: all(u.text.value == users[0].text.value for u in users),
        documents=tuple(u.document for u in users),
        what="convergence",
    )
    for user in users:
        assert f"[{user.client.author}]" in users[0].text.value
        assert user.client.unacknowledged_changes == 0
    assert server_text() == users[0].text.value


class Attacker:
    """A raw WebSocket connection speaking hand-built frames."""

    def __init__(self, ws: ClientConnection, peer: str) -> None:
        self.ws = ws
        self.peer = peer

    @classmethod
    async def join(
        cls,
        url: str,
        document_id: str = "notes",
        *,
        peer: str | None = None,
        secret: bytes | None = None,
        source: str = "127.0.0.2",
    ) -> Attacker:
        ws = await connect(url, ping_interval=None, max_size=None, local_addr=(source, 0))
        attacker = cls(ws, peer or str(PeerId.generate()))
        fields: dict[str, Any] = {} if secret is None else {"replica_secret": secret}
        frame = encode_message(
            HandshakeRequest(document_id, attacker.peer, VersionVector(), **fields)
        )
        with contextlib.suppress(ConnectionClosed):  # refused at the door: the Error waits
            await attacker.send(frame)
        return attacker

    async def send(self, frame: bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = WAIT) -> Message:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes)
        return decode_message(data, max_size=1 << 30)

    async def joined(self) -> HandshakeResponse:
        message = await self.recv()
        assert isinstance(message, HandshakeResponse), message
        return message

    async def expect_error(self, code: ErrorCode, *, closed: bool = True) -> Error:
        """Skip relayed traffic until an Error arrives; it has ``code``; then the close."""
        while True:
            message = await self.recv()
            if isinstance(message, Error):
                break
        assert message.code is code, message
        if closed:
            try:
                while True:
                    await asyncio.wait_for(self.ws.recv(), WAIT)
            except ConnectionClosed:
                pass
        return message

    async def close(self) -> None:
        await self.ws.close()
