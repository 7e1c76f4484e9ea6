"""Peer ids are claimed by a replica secret; one live connection per peer id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from security_helpers import (
    FAST_RECONNECT,
    Attacker,
    Honest,
    honest_users,
    keep_editing_and_converge,
)

from crdt_sync import CRDTDocument
from crdt_sync.sync import ErrorCode, fork_with_new_peer
from crdt_sync.sync.client import ConnectionStatus, WebSocketClient
from server import SqliteServerRegistry, WebSocketServer
from server.trust import Limits

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest_asyncio.fixture
async def server(tmp_path: object) -> AsyncIterator[WebSocketServer]:
    registry = SqliteServerRegistry(f"{tmp_path}/documents.sqlite3")
    running = WebSocketServer("127.0.0.1", 0, registry, limits=Limits(peer_check_timeout=2.0))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
        await registry.close()


def url(server: WebSocketServer) -> str:
    return f"ws://127.0.0.1:{server.port}/notes"


def server_text(server: WebSocketServer) -> str:
    room = server.room("notes")
    assert room is not None
    return str(room.document.get_value("text"))


async def test_another_secret_cannot_take_a_peer_id_online_or_offline(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await bob.type("bob ")
        # Online: the attacker presents Bob's peer id with its own secret.
        attacker = await Attacker.join(url(server), peer=bob.peer)
        await attacker.expect_error(ErrorCode.PEER_ID_IN_USE)
        # Offline: Bob leaves and edits; the attacker tries again.
        await bob.client.disconnect()
        bob.text.insert(0, "offline ")
        attacker = await Attacker.join(url(server), peer=bob.peer)
        await attacker.expect_error(ErrorCode.PEER_ID_IN_USE)
        # Bob's replica (the same document, a new client: an app restart) is accepted.
        bob.client.close()
        bob.client = WebSocketClient(url(server), bob.document, "user1", reconnect=FAST_RECONNECT)
        await bob.connect()
        await bob.wait_acknowledged()
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
        assert alice.text.value.startswith("offline ")


async def test_the_secret_persists_with_the_replica(server: WebSocketServer) -> None:
    async with honest_users(url(server), 1) as (alice,):
        await alice.type("one ")
        await alice.client.disconnect()
        alice.client.close()
        # Reopened from storage: the history, the peer id and the secret.
        reopened = CRDTDocument(
            alice.document.peer_id, "notes", replica_secret=alice.document.replica_secret
        )
        reopened.binary_import_changes(alice.document.binary_export_changes())
        again = Honest(url(server), "alice", reopened)
        await again.connect()
        await again.type("two ")
        assert server_text(server) == "one two "
        await again.client.disconnect()
        again.client.close()


async def test_a_second_window_of_a_replica_is_refused_then_forks(
    server: WebSocketServer,
) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await bob.type("bob ")
        # The same replica opened twice (a second window, loaded from the same
        # storage) with an edit of its own: the live connection stays.
        copy = CRDTDocument(bob.peer, "notes", replica_secret=bob.document.replica_secret)
        copy.binary_import_changes(bob.document.binary_export_changes())
        persisted_ack = bob.client.acknowledged  # what the app stored beside it
        window = Honest(url(server), "bob2", copy)
        window.text.insert(0, "twin ")
        assert not await window.client.connect()
        assert window.client.status is ConnectionStatus.ERROR
        assert window.client.last_error is not None
        assert window.client.last_error.code is ErrorCode.PEER_ID_IN_USE
        await bob.type("still bob ")
        # The refused window continues under a new peer id, keeping its unsent
        # edit; it passes what the app persisted as acknowledged.
        twin = fork_with_new_peer(copy, persisted_ack)
        window.client.close()
        forked = Honest(url(server), "twin", twin)
        await forked.connect()
        await forked.wait_acknowledged()
        await keep_editing_and_converge([alice, bob, forked], lambda: server_text(server))
        assert alice.text.value.count("twin ") == 1
        assert alice.text.value.count("bob ") == 2  # "bob " and "still bob ", once each
        await forked.client.disconnect()
        forked.client.close()


async def test_a_dead_connection_is_replaced_by_its_replica(server: WebSocketServer) -> None:
    async with honest_users(url(server)) as (alice, bob):
        await bob.type("bob ")
        # Bob's network drops without a close: his socket is half-open.
        ws = bob.client._ws  # the test plays a broken network
        assert ws is not None
        ws.transport.pause_reading()
        bob.client.reconnect = FAST_RECONNECT
        replacement = WebSocketClient(url(server), bob.document, "bob", reconnect=FAST_RECONNECT)
        assert await replacement.connect()
        await bob.client.disconnect()
        bob.client.close()
        ws.transport.abort()  # the broken network's socket, at last
        bob.client = replacement
        await keep_editing_and_converge([alice, bob], lambda: server_text(server))
