"""Helpers for the server tests: peers (document + real client), waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from crdt_sync import CRDTDocument, CRDTListHandler, CRDTMapHandler, CRDTTextHandler
from crdt_sync.sync import Compressor
from crdt_sync.sync.client import ConnectionStatus, ReconnectPolicy, WebSocketClient
from crdt_sync.sync.streams import EventStream
from server import SqliteServerRegistry

WAIT = 15.0  # generous bound for one condition; tests normally finish in milliseconds

FAST_RECONNECT = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.3, jitter=0.5)


class Trigger:
    """Something that says "look again": a document update or a stream event."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.cancels: list[Callable[[], None]] = []

    def watch_document(self, document: CRDTDocument) -> None:
        subscription = document.on_update(lambda _: self.event.set())
        self.cancels.append(subscription.cancel)

    def watch_stream(self, stream: EventStream[Any]) -> None:
        subscription = stream.subscribe(lambda _: self.event.set())
        self.cancels.append(subscription.cancel)

    def close(self) -> None:
        for cancel in self.cancels:
            cancel()


async def wait_for(
    condition: Callable[[], bool],
    *,
    documents: tuple[CRDTDocument, ...] = (),
    streams: tuple[EventStream[Any], ...] = (),
    timeout: float = WAIT,
    what: str = "condition",
) -> None:
    """Wait until ``condition()`` holds, re-checking whenever a watched source fires."""
    trigger = Trigger()
    for document in documents:
        trigger.watch_document(document)
    for stream in streams:
        trigger.watch_stream(stream)
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                trigger.event.clear()
                await trigger.event.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    finally:
        trigger.close()


class Peer:
    """A user: a document with the shared text, list and map, and a real client."""

    def __init__(
        self,
        url: str,
        name: str = "peer",
        compressor: Compressor | None = None,
        reconnect: ReconnectPolicy = FAST_RECONNECT,
        **client_options: Any,
    ) -> None:
        self.document = CRDTDocument()
        self.text = CRDTTextHandler(self.document, "text")
        self.items = CRDTListHandler(self.document, "items")
        self.meta = CRDTMapHandler(self.document, "meta")
        self.client = WebSocketClient(
            url, self.document, name, compressor, reconnect, **client_options
        )

    def state(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.text.value, list(self.items.value), dict(self.meta.value))

    async def connect(self) -> None:
        assert await self.client.connect(), f"connect failed: {self.client.status}"

    async def wait_status(self, status: ConnectionStatus) -> None:
        await wait_for(
            lambda: self.client.status is status,
            streams=(self.client.connection_status,),
            what=f"status {status}",
        )

    async def wait_acknowledged(self) -> None:
        await wait_for(
            lambda: self.client.unacknowledged_changes == 0,
            streams=(self.client.events,),
            what="acknowledgement",
        )


async def wait_converged(peers: list[Peer], timeout: float = WAIT) -> None:
    """Wait until every peer shows the same text, list and map."""
    await wait_for(
        lambda: all(p.state() == peers[0].state() for p in peers),
        documents=tuple(p.document for p in peers),
        timeout=timeout,
        what="convergence",
    )


@contextlib.asynccontextmanager
async def peers(url: str, count: int, **options: Any) -> AsyncIterator[list[Peer]]:
    """``count`` connected peers, disconnected at the end."""
    made = [Peer(url, f"user{i}", **options) for i in range(count)]
    try:
        for peer in made:
            await peer.connect()
        yield made
    finally:
        for peer in made:
            await peer.client.disconnect()


class CountingRegistry(SqliteServerRegistry):
    """A SQLite registry that counts the group commits of its writer thread (read
    it before and after: the count is shared by every instance)."""

    commits = 0

    def _run_batch(
        self, ops: Sequence[Any]
    ) -> list[tuple[bool, object]]:  # runs on the writer thread
        type(self).commits += 1
        return super()._run_batch(ops)
