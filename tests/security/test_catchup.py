"""New clients of a long document: the snapshot they get is encoded once per document
version range and off the event loop (server/catchup.py), so a crowd of joiners
cannot stall the others."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from security_helpers import Attacker, Honest, keep_editing_and_converge, wait_for

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId
from crdt_sync.snapshot_codec import SnapshotCapture
from crdt_sync.sync import Ack, Changes, encode_message
from server import InMemoryServerRegistry, WebSocketServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


@asynccontextmanager
async def serving() -> AsyncIterator[WebSocketServer]:
    running = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def typed(peer: str, count: int) -> list[Change]:
    """``count`` one-character changes of ``peer`` (a long history to export)."""
    document = CRDTDocument(PeerId.parse(peer), "notes")
    text = CRDTTextHandler(document, "text")
    made: list[Change] = []
    document.on_change(made.append)
    for index in range(count):
        text.insert(index // 2, "abcdefghij"[index % 10])
    return made


async def preload(url: str, count: int) -> None:
    seed = await Attacker.join(url, source="127.0.0.1")
    await seed.joined()
    changes = typed(seed.peer, count)
    for first in range(0, count, 500):
        await seed.send(encode_message(Changes(tuple(changes[first : first + 500]))))
    while True:
        message = await seed.recv()
        if isinstance(message, Ack) and message.version_vector.get(seed.peer, 0) >= count:
            break
    await seed.close()


async def test_joiners_of_a_long_document_share_a_snapshot_encoded_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encodes: list[threading.Thread] = []
    on_loop: list[str] = []
    encode = SnapshotCapture.encode
    take = CRDTDocument.take_snapshot

    def recording_encode(self: SnapshotCapture) -> Any:
        encodes.append(threading.current_thread())
        return encode(self)

    def recording_take(self: CRDTDocument) -> Any:
        if threading.current_thread() is threading.main_thread():
            on_loop.append(str(self.peer_id))
        return take(self)

    async with serving() as server:
        url = f"ws://127.0.0.1:{server.port}/notes"
        await preload(url, 3_000)
        monkeypatch.setattr(SnapshotCapture, "encode", recording_encode)
        monkeypatch.setattr(CRDTDocument, "take_snapshot", recording_take)
        writer = Honest(url, "writer")
        joiners = [Honest(url, f"joiner{i}") for i in range(8)]
        try:
            await writer.connect()
            for index, joiner in enumerate(joiners):
                writer.text.insert(0, str(index))  # the document moves on meanwhile
                await joiner.connect()
                # Each joiner got the long document (a snapshot, then what came after).
                assert len(joiner.text.value) >= 3_000
            assert on_loop == [], "a snapshot was taken on the event loop"
            assert encodes and all(t is not threading.main_thread() for t in encodes)
            assert len(encodes) <= len(joiners) // 2, f"{len(encodes)} encodings for 8 joiners"
            users = [writer, *joiners]
            await writer.wait_acknowledged()

            def server_text() -> str:
                room = server.room("notes")
                assert room is not None
                return str(room.document.get_value("text"))

            await wait_for(
                lambda: all(u.text.value == server_text() for u in users),
                documents=tuple(u.document for u in users),
                what="every joiner up to date",
            )
            await keep_editing_and_converge(users, server_text)
        finally:
            for user in (writer, *joiners):
                await user.client.disconnect()
                user.client.close()
