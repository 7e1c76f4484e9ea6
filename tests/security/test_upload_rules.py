"""What a snapshot upload may bring: never content under op ids the server already
holds (forged authorship through an upload), and an honest replica that joined from
a snapshot is never locked out for holding a claimed peer's ops the server lacks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from security_helpers import (
    Attacker,
    Honest,
    honest_users,
    keep_editing_and_converge,
    wait_for,
)

from crdt_sync import CRDTDocument, CRDTMapHandler, CRDTTextHandler, PeerId
from crdt_sync.sync import ErrorCode, SnapshotUpload, encode_message
from crdt_sync.sync.client import ConnectionStatus
from crdt_sync.sync.events import ErrorOccurred
from server import InMemoryServerRegistry, WebSocketServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[WebSocketServer]:
    running = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def url(server: WebSocketServer) -> str:
    return f"ws://127.0.0.1:{server.port}/notes"


def server_text(server: WebSocketServer) -> str:
    room = server.room("notes")
    assert room is not None
    return str(room.document.get_value("text"))


async def test_an_upload_cannot_put_content_under_op_ids_the_server_holds(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await alice.type("hello world ")
        room = server.room("notes")
        assert room is not None
        before = room.document.version_vector
        # A replica under Alice's id starting over: its ops reuse ids the server
        # holds (as text of Alice's), as a new text and a map entry. Its vector
        # claims nothing the server lacks.
        forger = CRDTDocument(PeerId.parse(alice.peer), "notes")
        CRDTTextHandler(forger, "forged").insert(0, "EVIL")
        CRDTMapHandler(forger, "meta").set("owner", "mallory")
        upload = forger.take_snapshot()
        assert upload.version_vector <= before
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        await attacker.send(encode_message(SnapshotUpload(upload)))
        error = await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        assert "already holds" in error.message
        for name in ("forged", "meta"):
            with pytest.raises(KeyError):
                room.document.get_value(name)
        assert room.document.version_vector == before
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))


async def test_an_upload_cannot_overwrite_a_map_entry_under_an_old_op_id(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        meta = CRDTMapHandler(alice.document, "meta")
        meta.set("title", "Alice's notes")
        await alice.type("text ")
        await bob.type("bob ")
        room = server.room("notes")
        assert room is not None
        # Bob's old op id, with a later clock: it would win the entry.
        forger = CRDTDocument(PeerId.parse(bob.peer), "notes")
        forger._clock.observe(10**6)  # the attacker writes the bytes it likes
        CRDTMapHandler(forger, "meta").set("title", "FORGED")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        await attacker.send(encode_message(SnapshotUpload(forger.take_snapshot())))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        assert room.document.get_value("meta") == {"title": "Alice's notes"}
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))


async def test_a_replica_joined_from_a_snapshot_is_not_locked_out(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await alice.type("shared ")
        # Alice edits offline, then hands her state to Carol as a snapshot file.
        await alice.client.disconnect()
        alice.text.insert(len(alice.text.value), "offline ")
        carol_document = CRDTDocument.from_snapshot(alice.document.take_snapshot())
        carol = Honest(url(server), "carol", carol_document)
        seen: list[ErrorOccurred] = []
        carol.client.events.subscribe(
            lambda e: seen.append(e) if isinstance(e, ErrorOccurred) else None
        )
        try:
            # Carol's document cannot send Alice's offline ops (only as snapshot
            # content), and Alice holds the claim on them: her upload is refused,
            # but not finally: she stays, and sends her own edits as changes.
            await carol.connect()
            await wait_for(
                lambda: any(e.code is ErrorCode.FORBIDDEN_PEER for e in seen),
                streams=(carol.client.events,),
                what="the refused upload",
            )
            assert not any(e.final for e in seen)
            assert "offline" not in server_text(server)
            carol.text.insert(0, "carol ")
            assert carol.client.status is ConnectionStatus.CONNECTED
            # Alice comes back with her offline ops: everything arrives.
            await alice.connect()
            users = [alice, bob, carol]
            await keep_editing_and_converge(users, lambda: server_text(server))
            assert "carol " in server_text(server) and "offline " in server_text(server)
            assert carol.client.status is ConnectionStatus.CONNECTED
        finally:
            await carol.client.disconnect()
            carol.client.close()
