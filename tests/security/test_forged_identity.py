"""Forged authorship and spoofed presence: a connection speaks only for its own peer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from security_helpers import Attacker, Honest, honest_users, keep_editing_and_converge, wait_for

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId
from crdt_sync.sync import AwarenessUpdate, Changes, ErrorCode, encode_message
from crdt_sync.sync.messages import MAX_COUNTER
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


def forged_change(victim: Honest, words: str) -> Change:
    """A change under the victim's peer id with its next counter (as seen now)."""
    forger = CRDTDocument(victim.document.peer_id, "notes")
    forger.import_changes(victim.document.export_changes())
    made: list[Change] = []
    forger.on_change(made.append)
    CRDTTextHandler(forger, "text").insert(0, words)
    [change] = made
    assert change.peer == victim.peer
    return change


async def test_changes_under_another_peer_are_refused(server: WebSocketServer) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await alice.type("alice ")
        await bob.type("bob ")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        forged = forged_change(bob, "FORGED ")
        await attacker.send(encode_message(Changes((forged,))))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        # Bob's next edit uses the very counter the forger tried to take: it is his.
        await bob.type("bob-again ")
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
        assert "FORGED" not in alice.text.value


async def test_a_batch_mixing_own_and_foreign_changes_applies_nothing(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await alice.type("hello ")
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        own = CRDTDocument(PeerId.parse(attacker.peer), "notes")
        made: list[Change] = []
        own.on_change(made.append)
        CRDTTextHandler(own, "text").insert(0, "mine ")
        await attacker.send(encode_message(Changes((made[0], forged_change(alice, "X")))))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
        assert "mine" not in alice.text.value


async def test_presence_for_another_peer_is_refused(server: WebSocketServer) -> None:
    async with honest_users(url(server)) as (alice, bob):
        bob.client.awareness.set_local_state({"name": "Bob"})
        await wait_for(
            lambda: alice.client.awareness.states.get(bob.peer) == {"name": "Bob"},
            streams=(alice.client.awareness.changes,),
            what="Bob's presence at Alice",
        )
        attacker = await Attacker.join(url(server))
        await attacker.joined()
        spoof = AwarenessUpdate(bob.peer, MAX_COUNTER, {"name": "Mallory"})
        await attacker.send(encode_message(spoof))
        await attacker.expect_error(ErrorCode.FORBIDDEN_PEER)
        # Bob's own updates still reach Alice, and nobody sees the fake state.
        bob.client.awareness.set_local_state({"name": "Bob", "cursor": 3})
        await wait_for(
            lambda: alice.client.awareness.states.get(bob.peer) == {"name": "Bob", "cursor": 3},
            streams=(alice.client.awareness.changes,),
            what="Bob's new presence at Alice",
        )
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
