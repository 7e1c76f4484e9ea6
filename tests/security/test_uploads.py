"""Snapshot uploads cannot claim what they do not hold, nor speak for claimed peers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from security_helpers import Attacker, honest_users, keep_editing_and_converge

from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId, Snapshot
from crdt_sync.sync import ErrorCode, SnapshotUpload, encode_message
from server import InMemoryServerRegistry, WebSocketServer
from server.trust import Limits

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[WebSocketServer]:
    running = WebSocketServer(
        "127.0.0.1", 0, InMemoryServerRegistry(), limits=Limits(max_counter_jump=100_000)
    )
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


def inflated_snapshot(base: CRDTDocument, peer: str, claims: dict[str, int]) -> Snapshot:
    """A snapshot of ``base``'s state as ``peer`` whose version vector claims ``claims``:
    what an attacker would hand-craft (content proves none of it)."""
    forger = CRDTDocument.from_snapshot(base.take_snapshot(), PeerId.parse(peer), resume=True)
    forger._vv.update(claims)  # the attacker writes the bytes it likes
    return forger.take_snapshot()


async def test_an_inflated_version_vector_is_refused(server: WebSocketServer) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await alice.type("alice ")
        await bob.type("bob ")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        huge = {alice.peer: 1 << 53, bob.peer: 1 << 53}
        upload = inflated_snapshot(alice.document, attacker.peer, huge)
        await attacker.send(encode_message(SnapshotUpload(upload)))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        room = server.room("notes")
        assert room is not None and room.document.version_vector[alice.peer] < 1 << 20
        # Bob's offline work (counters the attacker tried to shadow) arrives.
        await bob.client.disconnect()
        bob.text.insert(0, "offline ")
        await bob.connect()
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
        assert alice.text.value.startswith("offline ")


async def test_an_upload_may_not_bring_a_claimed_peers_missing_ops(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await bob.type("bob ")
        # Ops under Bob's id with his next counters, as content of a snapshot.
        forger = CRDTDocument(bob.document.peer_id, "notes")
        forger.import_changes(bob.document.export_changes())
        CRDTTextHandler(forger, "text").insert(0, "FORGED ")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        upload = forger.take_snapshot()
        await attacker.send(encode_message(SnapshotUpload(upload)))
        # Not final (an honest replica that joined from a snapshot may hold such
        # ops): nothing merged, the connection stays.
        error = await attacker.expect_error(ErrorCode.FORBIDDEN_PEER, closed=False)
        assert "only that peer's replica" in error.message
        await bob.type("mine ")
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
        assert "FORGED" not in alice.text.value


async def test_an_own_counter_far_ahead_is_refused(server: WebSocketServer) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await alice.type("alice ")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        upload = inflated_snapshot(alice.document, attacker.peer, {attacker.peer: 10**9})
        await attacker.send(encode_message(SnapshotUpload(upload)))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
