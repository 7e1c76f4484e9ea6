"""The per-document peer dictionary of protocol version 4, on real sockets: relays name
peers and handlers by dictionary entry, every connection is sent the entries it
needs before a relay that uses them (a late joiner and a reconnecting client too),
and what clients keep holds full ids."""

from __future__ import annotations

import asyncio
import random

import pytest
from server_helpers import Peer, peers, wait_converged
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdt_sync import CRDTDocument, PeerId, VersionVector, decode_changes
from crdt_sync.sync import (
    Dictionary,
    Error,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    Relay,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import encode_dictionary_frame, encode_relay_frame
from server import WebSocketServer
from server.rooms import Room

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def url_of(server: WebSocketServer) -> str:
    return f"ws://127.0.0.1:{server.port}/notes"


def room_of(server: WebSocketServer) -> Room:
    room = server.rooms.get("notes")
    assert room is not None
    return room


def typing(group: list[Peer], rng: random.Random, count: int) -> None:
    """Each peer inserts ``count`` characters at random places (so origins name others)."""
    for _ in range(count):
        for peer in group:
            peer.text.insert(rng.randint(0, len(peer.text.value)), rng.choice("abcé😀"))


def dictionary_sent(server: WebSocketServer, peer: Peer) -> int:
    """How many dictionary entries the server sent ``peer``'s live connection."""
    room = room_of(server)
    (member,) = [m for m in room.members if m.session.peer_id == str(peer.document.peer_id)]
    return member.session.dictionary_sent


async def test_three_clients_converge_on_relays_that_name_peers_by_entry(
    server: WebSocketServer,
) -> None:
    rng = random.Random(12)
    async with peers(url_of(server), 3) as group:
        for _ in range(4):
            typing(group, rng, 3)
            await wait_converged(group)
        room = room_of(server)
        # Every peer and the handler names were entered once, and each client was
        # sent them all (each relayed someone else's edits to it).
        assert {str(p.document.peer_id) for p in group} <= set(room.dictionary.entries)
        assert "text" in room.dictionary.entries
        assert len(set(room.dictionary.entries)) == len(room.dictionary.entries)
        for peer in group:
            assert dictionary_sent(server, peer) == len(room.dictionary)
        # What the clients keep holds full ids: an export decodes on its own.
        for peer in group:
            await peer.wait_acknowledged()
            exported = peer.document.binary_export_changes(VersionVector())
            fresh = CRDTDocument()
            fresh.binary_import_changes(exported)
            assert fresh.version_vector == peer.document.version_vector
        stored = await server.registry.get_document("notes")
        assert stored is not None and stored.version_vector == group[0].document.version_vector


async def test_a_late_joiner_and_a_reconnecting_client_are_sent_the_entries_they_need(
    server: WebSocketServer,
) -> None:
    rng = random.Random(4)
    async with peers(url_of(server), 3) as group:
        typing(group, rng, 4)
        await wait_converged(group)
        room = room_of(server)
        known = len(room.dictionary)
        async with peers(url_of(server), 1) as [late]:
            # It joined with the document in its handshake (full ids) and has been
            # sent no entry yet; the next relay brings every entry it refers to.
            await wait_converged([*group, late])
            assert dictionary_sent(server, late) == 0
            typing(group, rng, 2)
            await wait_converged([*group, late])
            assert dictionary_sent(server, late) == len(room.dictionary) >= known
            # A reconnecting client starts a new connection, hence a new dictionary.
            leaver = group[0]
            await leaver.client.disconnect()
            typing(group[1:], rng, 2)
            await wait_converged([*group[1:], late])
            await leaver.connect()
            await wait_converged([*group, late])
            assert dictionary_sent(server, leaver) == 0
            typing([group[1], late], rng, 2)
            await wait_converged([*group, late])
            assert dictionary_sent(server, leaver) == len(room.dictionary)
            history = decode_changes(leaver.document.binary_export_changes(VersionVector()))
            assert {c.peer for c in history} == {str(p.document.peer_id) for p in [*group, late]}


async def test_a_client_sending_relays_or_dictionaries_is_refused(
    server: WebSocketServer,
) -> None:
    frames = [encode_dictionary_frame(0, ["text"]), encode_relay_frame(0, 0, [])]
    for frame in frames:
        async with connect(url_of(server), compression=None) as ws:
            peer = str(PeerId.generate())
            request = HandshakeRequest("notes", peer, VersionVector(), compressions=("none",))
            await ws.send(encode_message(request))
            assert isinstance(decode_message(await ws.recv()), HandshakeResponse)
            await ws.send(frame)
            async with asyncio.timeout(10):
                message = decode_message(await ws.recv())
                while isinstance(message, Dictionary | Relay):
                    message = decode_message(await ws.recv())
            assert isinstance(message, Error) and message.code is ErrorCode.INVALID_MESSAGE
            with pytest.raises(ConnectionClosed):  # and the server closed
                await asyncio.wait_for(ws.recv(), 10)


async def test_a_version_3_client_is_refused_with_a_clear_error(server: WebSocketServer) -> None:
    async with connect(url_of(server), compression=None) as ws:
        request = HandshakeRequest(
            "notes", str(PeerId.generate()), VersionVector(), protocol_version=3
        )
        await ws.send(encode_message(request))
        message = decode_message(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(message, Error)
        assert message.code is ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
        assert "4" in message.message
