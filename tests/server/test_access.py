"""Access through real sockets: tokens, roles, TLS with pins, Origin (issue 8)."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme
from server_helpers import Peer, peers, wait_converged, wait_for
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from crdt_sync.sync import ErrorCode, Role
from crdt_sync.sync.client import ConnectionStatus, ReconnectPolicy
from crdt_sync.sync.events import ErrorOccurred, ReconnectScheduled
from server import InMemoryServerRegistry, WebSocketServer
from server.auth import TokenAuthority
from server.tls import create_self_signed_certificate, server_ssl_context

NO_RETRY_NEEDED = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.1)


@pytest_asyncio.fixture
async def secured() -> AsyncIterator[tuple[WebSocketServer, TokenAuthority]]:
    """A real server on 127.0.0.1 that requires tokens."""
    authority = TokenAuthority.generate()
    server = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry(), auth=authority)
    await server.start()
    try:
        yield server, authority
    finally:
        await server.stop()


def url_of(server: WebSocketServer, document: str = "notes") -> str:
    return f"{server.scheme}://127.0.0.1:{server.port}/{document}"


def record(peer: Peer) -> list[Any]:
    events: list[Any] = []
    peer.client.events.subscribe(events.append)
    return events


async def refused(url: str, **options: Any) -> Peer:
    """A peer whose connection is refused for good: ERROR, no retry scheduled."""
    peer = Peer(url, "mallory", reconnect=NO_RETRY_NEEDED, **options)
    events = record(peer)
    assert await peer.client.connect() is False
    assert peer.client.status is ConnectionStatus.ERROR
    assert not any(isinstance(e, ReconnectScheduled) for e in events)
    return peer


def why(peer: Peer) -> str:
    error = peer.client.last_error
    return error.message if error is not None else ""


def code(peer: Peer) -> ErrorCode | None:
    error = peer.client.last_error
    return error.code if error is not None else None


# ------------------------------------------------------------------------------ tokens


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "requires an invite token"),
        ("not-a-token", "malformed"),
        ("eyJhbGciOiJIUzI1NiJ9.e30.AAAA", "not signed by this server"),
    ],
    ids=["missing", "malformed", "forged"],
)
async def test_bad_tokens_are_refused_for_good_with_the_reason(
    secured: tuple[WebSocketServer, TokenAuthority], token: str | None, reason: str
) -> None:
    server, _ = secured
    peer = await refused(url_of(server), auth_token=token)
    assert code(peer) is ErrorCode.UNAUTHORIZED
    assert reason in why(peer)
    assert server.loaded_document_ids() == []  # nothing was opened for it
    peer.client.close()


@pytest.mark.asyncio
async def test_a_token_for_another_document_or_another_server_is_refused(
    secured: tuple[WebSocketServer, TokenAuthority],
) -> None:
    server, authority = secured
    peer = await refused(url_of(server, "secret-plans"), auth_token=authority.issue("notes"))
    assert "opens 'notes', not document 'secret-plans'" in why(peer)
    other = TokenAuthority.generate().issue("notes")
    peer = await refused(url_of(server), auth_token=other)
    assert "not signed by this server" in why(peer)


@pytest.mark.asyncio
async def test_an_expired_token_is_refused(
    secured: tuple[WebSocketServer, TokenAuthority],
) -> None:
    server, _ = secured
    past = TokenAuthority(b"k" * 32, clock=lambda: time.time() - 3600)
    server.auth = TokenAuthority(b"k" * 32)
    peer = await refused(url_of(server), auth_token=past.issue("notes", lifetime=60))
    assert "expired at" in why(peer)


@pytest.mark.asyncio
async def test_a_valid_token_opens_its_document_and_a_prefix_token_several(
    secured: tuple[WebSocketServer, TokenAuthority],
) -> None:
    server, authority = secured
    team = authority.issue("team-*")
    async with (
        peers(url_of(server, "team-a"), 2, auth_token=team) as group,
        peers(url_of(server, "team-b"), 1, auth_token=team) as (other,),
    ):
        assert all(p.client.role is Role.WRITE for p in [*group, other])
        group[0].text.insert(0, "hello")
        await wait_converged(group)
        assert other.text.value == ""


@pytest.mark.asyncio
async def test_the_token_never_appears_in_the_request_line(
    secured: tuple[WebSocketServer, TokenAuthority],
) -> None:
    server, authority = secured
    token = authority.issue("notes")
    paths: list[str] = []
    server.server_events.subscribe(
        lambda e: paths.append(str(e.data.get("path"))) if "path" in e.data else None
    )
    async with peers(f"{url_of(server)}#token={token}", 1) as (peer,):
        assert peer.client.url == url_of(server)
        assert peer.client.auth_token == token
    assert paths and all(token not in path and "#" not in path for path in paths)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_token_expiring_during_a_session_closes_it_with_unauthorized(
    secured: tuple[WebSocketServer, TokenAuthority],
) -> None:
    server, _ = secured
    # The server's clock stands still until the client is in, so the token (valid
    # for at most one second) is valid at the handshake however slow the machine
    # is; then it moves past the expiry, which the server notices within a second.
    now = [time.time()]
    server.auth = TokenAuthority(b"s" * 32, clock=lambda: now[0])
    peer = Peer(url_of(server), "ada", auth_token=server.auth.issue("notes", lifetime=1))
    events = record(peer)
    await peer.connect()
    now[0] += 2
    await peer.wait_status(ConnectionStatus.ERROR)
    assert code(peer) is ErrorCode.UNAUTHORIZED
    assert "expired" in why(peer)
    assert not any(isinstance(e, ReconnectScheduled) for e in events)
    await peer.client.disconnect()


# ------------------------------------------------------------------------------ roles


@pytest.mark.asyncio
async def test_a_reader_gets_everything_and_can_change_nothing(
    secured: tuple[WebSocketServer, TokenAuthority],
) -> None:
    server, authority = secured
    url = url_of(server)
    async with (
        peers(url, 1, auth_token=authority.issue("notes", Role.WRITE)) as (writer,),
        peers(url, 1, auth_token=authority.issue("notes", Role.READ)) as (reader,),
    ):
        assert (writer.client.role, reader.client.role) == (Role.WRITE, Role.READ)
        writer.text.insert(0, "written")
        await wait_converged([writer, reader])  # the reader receives changes

        events = record(reader)
        reader.text.insert(0, "sneaky ")
        reader.items.append("sneaky item")
        await wait_for(
            lambda: sum(isinstance(e, ErrorOccurred) for e in events) >= 1,
            streams=(reader.client.events,),
            what="READ_ONLY",
        )
        errors = [e for e in events if isinstance(e, ErrorOccurred)]
        assert all(e.code is ErrorCode.READ_ONLY and not e.final for e in errors)
        room = server.room("notes")
        reader_id = str(reader.document.peer_id)
        assert room is not None and room.document.version_vector.get(reader_id, 0) == 0
        assert reader.client.unacknowledged_changes == 2  # refused, kept, not acknowledged
        # The connection stays open: it still receives edits and presence.
        assert reader.client.status is ConnectionStatus.CONNECTED
        writer.text.insert(len(writer.text.value), " and more")
        await wait_for(
            lambda: reader.text.value.endswith(" and more"),
            documents=(reader.document,),
            what="the reader receives later edits",
        )
        writer.client.awareness.set_local_state({"name": "Writer"})
        reader.client.awareness.set_local_state({"name": "Reader", "cursor": 3})
        writer_id = str(writer.document.peer_id)
        await wait_for(
            lambda: writer_id in reader.client.awareness.states,
            streams=(reader.client.awareness.changes,),
            what="the reader sees the writer's presence",
        )
        await wait_for(
            lambda: (
                writer.client.awareness.states.get(reader_id) == {"name": "Reader", "cursor": 3}
            ),
            streams=(writer.client.awareness.changes,),
            what="the writer sees the reader's cursor",
        )
        assert reader.client.status is ConnectionStatus.CONNECTED


@pytest.mark.asyncio
async def test_without_auth_everyone_writes(tmp_path: Path) -> None:
    async with (
        WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry()) as server,
        peers(url_of(server), 2) as group,
    ):
        assert [p.client.role for p in group] == [Role.WRITE, Role.WRITE]
        group[1].text.insert(0, "open")
        await wait_converged(group)


# ------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def authority_ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.asyncio
async def test_tls_with_a_trusted_authority(authority_ca: trustme.CA) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority_ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority_ca.configure_trust(client_context)
    async with (
        WebSocketServer("127.0.0.1", 0, ssl=server_context) as server,
        peers(url_of(server), 2, ssl=client_context) as group,
    ):
        assert url_of(server).startswith("wss://")
        assert all(p.client.encrypted for p in group)
        group[0].text.insert(0, "over TLS")
        await wait_converged(group)
    # A client that does not trust the authority is refused for good, clearly.
    async with WebSocketServer("127.0.0.1", 0, ssl=server_context) as server:
        peer = await refused(url_of(server))
        assert "security error" in why(peer)
        assert "not trusted" in why(peer)


@pytest.mark.asyncio
async def test_tls_with_a_pinned_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pin = create_self_signed_certificate(cert, key, ["127.0.0.1"])
    wrong = create_self_signed_certificate(tmp_path / "other.pem", tmp_path / "other-key.pem")
    authority = TokenAuthority.generate()
    token = authority.issue("notes", Role.READ)
    async with WebSocketServer(
        "127.0.0.1", 0, ssl=server_ssl_context(cert, key), auth=authority
    ) as server:
        url = url_of(server)
        async with peers(f"{url}#token={token}&pin={pin}", 1) as (peer,):
            assert peer.client.tls_pin == pin and peer.client.role is Role.READ
        async with peers(url, 1, tls_pin=pin, auth_token=token) as (peer,):
            assert peer.client.status is ConnectionStatus.CONNECTED
        # The wrong pin: a security error, nothing sent (no client ever joined).
        connections = []
        server.server_events.subscribe(
            lambda e: connections.append(e) if e.type.value == "client_connected" else None
        )
        peer = await refused(url, tls_pin=wrong, auth_token=token)
        assert "security error" in why(peer)
        assert wrong in why(peer) and pin in why(peer)
        assert connections == []  # the upgrade request was never sent
        # Without a pin the self-signed certificate is not trusted.
        peer = await refused(url, auth_token=token)
        assert "not trusted" in why(peer)


def test_no_silent_fallback_to_plain_websockets() -> None:
    with pytest.raises(ValueError, match="wss://"):
        Peer("ws://127.0.0.1:1/notes", tls_pin="sha256:" + "ab" * 32)
    with pytest.raises(ValueError, match="wss://"):
        Peer("ws://127.0.0.1:1/notes#pin=sha256:" + "ab" * 32)


# ------------------------------------------------------------------------------ Origin


@pytest.mark.asyncio
async def test_web_origins_are_refused_unless_allowed() -> None:
    allowed = "https://notes.example"
    async with WebSocketServer("127.0.0.1", 0, allowed_origins=[allowed]) as server:
        url = url_of(server)
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert caught.value.response.status_code == 403
        async with connect(url, origin=allowed) as ws:  # type: ignore[arg-type]
            assert ws.request is not None
        async with peers(url, 1) as (peer,):  # no Origin header at all: a desktop client
            assert peer.client.status is ConnectionStatus.CONNECTED
    async with WebSocketServer("127.0.0.1", 0) as server:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url_of(server), origin=allowed):  # type: ignore[arg-type]
                pass
        assert caught.value.response.status_code == 403
