"""Clients joining an open document at once share the commits of their peer id
claims (server/rooms.py join): the claim is made before the document's lock, so
a crowd of joins does not wait for one commit each in turn (real SQLite file,
real server, real clients)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from server_helpers import CountingRegistry, Peer, wait_converged

from server import SqliteServerRegistry, WebSocketServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_joins_at_once_share_their_claim_commits(tmp_path: Any) -> None:
    # Claims made while one commits share the next commit.
    registry = CountingRegistry(tmp_path / "store.sqlite3", commit_interval=0.3)
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        url = f"ws://127.0.0.1:{server.port}/notes"
        first = Peer(url, "first")
        await first.connect()  # opens (creates) the document
        first.text.insert(0, "here")
        await first.wait_acknowledged()
        crowd = [Peer(url, f"user{i}") for i in range(6)]
        try:
            before = CountingRegistry.commits
            await asyncio.gather(*(peer.connect() for peer in crowd))
            claims = CountingRegistry.commits - before
            await wait_converged([first, *crowd])
        finally:
            for peer in (first, *crowd):
                await peer.client.disconnect()
    await registry.close()
    # One commit per claim in turn would be 6; shared, two or three.
    assert claims <= 3, f"{claims} commits for 6 joins"
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM peers").fetchone()
    assert stored == 7  # every claim is stored


async def test_a_claim_is_not_held_back_by_the_commit_interval(tmp_path: Any) -> None:
    # Commits an hour apart at most: an edit's Ack would wait, a joining client
    # not (its handshake waits for its claim, which does not wait for the
    # interval). Nothing here measures time: had the claim to wait for the
    # interval, the server's own handshake timeout would refuse the join.
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3", commit_interval=3600.0)
    try:
        async with WebSocketServer("127.0.0.1", 0, registry) as server:
            url = f"ws://127.0.0.1:{server.port}/notes"
            first = Peer(url, "first")
            second = Peer(url, "second")
            try:
                await first.connect()  # creates the document: its writes commit at once
                first.text.insert(0, "typed")
                await second.connect()  # its claim commits without the hour's wait
                await wait_converged([first, second])
            finally:
                for peer in (first, second):
                    await peer.client.disconnect()
    finally:
        await registry.close()  # ends the writer's sleep in any case
