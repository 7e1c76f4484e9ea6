"""The asyncio WebSocketClient against a tiny in-test websockets server on 127.0.0.1:0.

The server wraps the in-memory FakeServer (the real server lives in server/);
nothing waits on time: every wait is on a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from crdt_sync import CRDTDocument, CRDTTextHandler
from crdt_sync.sync import ErrorCode, GzipCompressor, NoCompression
from crdt_sync.sync.client import ConnectionStatus, ReconnectPolicy, WebSocketClient
from crdt_sync.sync.events import (
    ClientEvent,
    ConnectionLost,
    ErrorOccurred,
    HandshakeCompleted,
    PongReceived,
    ReconnectScheduled,
)

from .fake_server import FakeServer, FakeSession

FAST = ReconnectPolicy(initial_delay_s=0.01, max_delay_s=0.05)
TIMEOUT = 10.0


class Hub:
    """Runs a FakeServer behind a real WebSocket server."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.sockets: dict[str, ServerConnection] = {}
        self.server: Server | None = None
        self.port = 0

    async def _flush(self) -> None:
        for session in list(self.fake.sessions.values()):
            ws = self.sockets.get(session.session_id)
            outbox, session.outbox = session.outbox, []
            if ws is None:
                continue
            for frame in outbox:
                try:
                    await ws.send(frame)
                except Exception:
                    break
            if session.closed:
                await ws.close()

    async def handler(self, ws: ServerConnection) -> None:
        session: FakeSession = self.fake.open_session()
        self.sockets[session.session_id] = ws
        try:
            async for frame in ws:
                data = frame.encode() if isinstance(frame, str) else frame
                self.fake.receive(session, data)
                await self._flush()
        except Exception:
            pass
        finally:
            self.fake.close_session(session)
            del self.sockets[session.session_id]
            await self._flush()

    async def drop_all(self) -> None:
        """Close every connection as a network failure would (no Error message)."""
        for ws in list(self.sockets.values()):
            ws.transport.abort()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/{self.fake.document_id}"


@asynccontextmanager
async def running(fake: FakeServer | None = None) -> AsyncIterator[Hub]:
    hub = Hub(fake or FakeServer())
    async with serve(hub.handler, "127.0.0.1", 0, compression=None) as server:
        hub.server = server
        hub.port = server.sockets[0].getsockname()[1] if server.sockets else 0
        yield hub


async def until(client: WebSocketClient, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, re-checking after every client event."""
    changed = asyncio.Event()
    subscriptions = [
        client.events.subscribe(lambda _e: changed.set()),
        client.connection_status.subscribe(lambda _s: changed.set()),
    ]
    try:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                changed.clear()
                await changed.wait()
    finally:
        for subscription in subscriptions:
            subscription.cancel()


def status_of(client: WebSocketClient) -> ConnectionStatus:
    """The status now (a call, so type checkers do not carry an earlier narrowing over)."""
    return client.status


def record(client: WebSocketClient) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    client.events.subscribe(events.append)
    return events


@asynccontextmanager
async def client_for(
    hub: Hub, doc: CRDTDocument | None = None, **kwargs: object
) -> AsyncIterator[WebSocketClient]:
    kwargs.setdefault("reconnect", FAST)
    client = WebSocketClient(hub.url, doc or CRDTDocument(), **kwargs)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.disconnect()
        client.close()


@pytest.mark.asyncio
async def test_connect_completes_the_handshake_and_reports_status() -> None:
    async with running() as hub, client_for(hub, author="Ada") as client:
        statuses: list[ConnectionStatus] = []
        client.connection_status.subscribe(statuses.append)
        events = record(client)
        assert await client.connect() is True
        assert client.status is ConnectionStatus.CONNECTED
        assert statuses == [ConnectionStatus.CONNECTING, ConnectionStatus.CONNECTED]
        assert client.session_id is not None
        assert any(isinstance(e, HandshakeCompleted) for e in events)
        request = hub.fake.sessions[client.session_id].received[0]
        assert getattr(request, "display_name", None) == "Ada"
        assert await client.connect() is True  # already connected
        await client.disconnect()
        assert status_of(client) is ConnectionStatus.DISCONNECTED
        assert client.session_id is None


@pytest.mark.asyncio
async def test_status_stream_works_with_async_for() -> None:
    async with running() as hub, client_for(hub) as client:
        seen: list[ConnectionStatus] = []
        # The iterator's queue exists from aiter() on: nothing emitted after is missed.
        statuses = aiter(client.connection_status)

        async def watch() -> None:
            async for status in statuses:
                seen.append(status)
                if status is ConnectionStatus.CONNECTED:
                    return

        watcher = asyncio.create_task(watch())
        assert await client.connect()
        await asyncio.wait_for(watcher, TIMEOUT)
        assert seen == [ConnectionStatus.CONNECTING, ConnectionStatus.CONNECTED]


@pytest.mark.asyncio
async def test_two_clients_converge_and_changes_get_acknowledged() -> None:
    async with running() as hub, client_for(hub) as a, client_for(hub) as b:
        text_a = CRDTTextHandler(a.document, "t")
        text_b = CRDTTextHandler(b.document, "t")
        assert await a.connect() and await b.connect()
        text_a.insert(0, "hello ")
        text_b.insert(0, "world")
        await until(a, lambda: text_a.value == text_b.value and len(text_a.value) == 11)
        await until(b, lambda: text_a.value == text_b.value and len(text_a.value) == 11)
        await until(a, lambda: a.unacknowledged_changes == 0)
        await until(b, lambda: b.unacknowledged_changes == 0)
        assert hub.fake.document.version_vector == a.document.version_vector


@pytest.mark.asyncio
async def test_offline_edits_go_out_at_the_next_handshake() -> None:
    async with running() as hub, client_for(hub) as client:
        text = CRDTTextHandler(client.document, "t")
        assert await client.connect()
        text.insert(0, "online ")
        await until(client, lambda: client.unacknowledged_changes == 0)
        await client.disconnect()
        text.insert(len(text.value), "offline")
        assert client.unacknowledged_changes == 1
        assert await client.connect()
        await until(client, lambda: client.unacknowledged_changes == 0)
        server_text = CRDTTextHandler(hub.fake.document, "t")
        assert server_text.value == "online offline"


@pytest.mark.asyncio
async def test_network_failure_reconnects_with_backoff_and_resyncs() -> None:
    async with running() as hub, client_for(hub) as client:
        events = record(client)
        text = CRDTTextHandler(client.document, "t")
        assert await client.connect()
        first_session = client.session_id
        await hub.drop_all()
        await until(client, lambda: any(isinstance(e, ReconnectScheduled) for e in events))
        text.insert(0, "made while reconnecting")
        await until(
            client,
            lambda: (
                client.status is ConnectionStatus.CONNECTED and client.session_id != first_session
            ),
        )
        await until(client, lambda: client.unacknowledged_changes == 0)
        scheduled = [e for e in events if isinstance(e, ReconnectScheduled)]
        assert scheduled[0].attempt == 1
        assert 0 <= scheduled[0].delay_s <= FAST.max_delay_s
        assert any(isinstance(e, ConnectionLost) for e in events)
        assert CRDTTextHandler(hub.fake.document, "t").value == "made while reconnecting"


@pytest.mark.asyncio
async def test_unreachable_server_keeps_retrying_until_disconnect() -> None:
    async with running() as hub:
        url = hub.url
    # The server is gone: nothing listens on that port any more.
    client = WebSocketClient(url, CRDTDocument(), reconnect=FAST)
    events = record(client)
    try:
        assert await client.connect() is False
        await until(client, lambda: sum(isinstance(e, ReconnectScheduled) for e in events) >= 2)
        assert client.status is ConnectionStatus.RECONNECTING
        attempts = [e.attempt for e in events if isinstance(e, ReconnectScheduled)]
        assert attempts[:2] == [1, 2]
    finally:
        await client.disconnect()
        client.close()
    assert status_of(client) is ConnectionStatus.DISCONNECTED


@pytest.mark.asyncio
async def test_limited_attempts_end_in_error() -> None:
    async with running() as hub:
        url = hub.url
    policy = ReconnectPolicy(initial_delay_s=0.0, max_delay_s=0.0, max_attempts=2)
    client = WebSocketClient(url, CRDTDocument(), reconnect=policy)
    events = record(client)
    try:
        assert await client.connect() is False
        await until(client, lambda: client.status is ConnectionStatus.ERROR)
        assert [e.attempt for e in events if isinstance(e, ReconnectScheduled)] == [1, 2]
    finally:
        await client.disconnect()
        client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fake", "kwargs", "code"),
    [
        (lambda: FakeServer(known_documents={"other"}), {}, ErrorCode.DOCUMENT_NOT_FOUND),
        (lambda: FakeServer(auth_token="good"), {"auth_token": "bad"}, ErrorCode.UNAUTHORIZED),
        (
            lambda: FakeServer(compressor=GzipCompressor()),
            {"compressor": NoCompression()},
            ErrorCode.UNSUPPORTED_COMPRESSION,
        ),
    ],
)
async def test_final_errors_stop_without_reconnecting(
    fake: Callable[[], FakeServer], kwargs: dict[str, object], code: ErrorCode
) -> None:
    async with running(fake()) as hub, client_for(hub, **kwargs) as client:  # type: ignore[arg-type]
        events = record(client)
        assert await client.connect() is False
        assert client.status is ConnectionStatus.ERROR
        errors = [e for e in events if isinstance(e, ErrorOccurred)]
        assert errors and errors[0].code is code and errors[0].remote and errors[0].final
        assert not any(isinstance(e, ReconnectScheduled) for e in events)


@pytest.mark.asyncio
async def test_compression_on_both_ends_syncs() -> None:
    fake = FakeServer(compressor=GzipCompressor())
    CRDTTextHandler(fake.document, "t").insert(0, "z" * 4000)
    async with running(fake) as hub, client_for(hub, compressor=GzipCompressor()) as client:
        text = CRDTTextHandler(client.document, "t")
        assert await client.connect()
        assert text.value == "z" * 4000


@pytest.mark.asyncio
async def test_a_default_client_adopts_the_compression_the_server_uses() -> None:
    fake = FakeServer(compressor=GzipCompressor())
    CRDTTextHandler(fake.document, "t").insert(0, "y" * 4000)
    async with running(fake) as hub, client_for(hub) as client:
        text = CRDTTextHandler(client.document, "t")
        assert await client.connect()
        assert text.value == "y" * 4000
        text.insert(0, "x" * 500)  # sent compressed: the fake decodes it with gzip
        await until(client, lambda: fake.document.version_vector == client.document.version_vector)


@pytest.mark.asyncio
async def test_pings_measure_round_trips() -> None:
    async with running() as hub, client_for(hub, ping_interval=0.02) as client:
        events = record(client)
        assert await client.connect()
        await until(client, lambda: any(isinstance(e, PongReceived) for e in events))
        pong = next(e for e in events if isinstance(e, PongReceived))
        assert pong.round_trip_ms >= 0


@pytest.mark.asyncio
async def test_unanswered_pings_drop_the_connection_and_reconnect() -> None:
    fake = FakeServer()
    fake.answer_pings = False
    async with running(fake) as hub, client_for(hub, ping_interval=0.02, ping_timeout=0.1) as c:
        events = record(c)
        assert await c.connect()
        await until(
            c,
            lambda: any(
                isinstance(e, ErrorOccurred) and e.code is ErrorCode.TIMEOUT for e in events
            ),
        )
        await until(c, lambda: any(isinstance(e, ReconnectScheduled) for e in events))


@pytest.mark.asyncio
async def test_awareness_join_update_and_leave() -> None:
    async with running() as hub, client_for(hub) as a, client_for(hub) as b:
        assert await a.connect() and await b.connect()
        peer_a = str(a.document.peer_id)
        a.awareness.set_local_state({"name": "A", "cursor": 3})
        await until(b, lambda: b.awareness.states.get(peer_a, {}).get("cursor") == 3)
        a.awareness.set_local_state({"name": "A", "cursor": 5})
        await until(b, lambda: b.awareness.states.get(peer_a, {}).get("cursor") == 5)
        await a.disconnect()
        await until(b, lambda: peer_a not in b.awareness.states)


@pytest.mark.asyncio
async def test_awareness_of_earlier_peers_arrives_on_join() -> None:
    async with running() as hub, client_for(hub) as a, client_for(hub) as b:
        a.awareness.set_local_state({"name": "A"})  # before connecting: sent after handshake
        assert await a.connect()
        peer_a = str(a.document.peer_id)
        await until(a, lambda: peer_a in hub.fake.awareness)
        assert await b.connect()
        await until(b, lambda: peer_a in b.awareness.states)


def test_bad_url_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        WebSocketClient("http://example.com/doc", CRDTDocument())


def test_url_without_path_names_the_document() -> None:
    doc = CRDTDocument(document_id="my doc")
    client = WebSocketClient("ws://127.0.0.1:9", doc)
    assert client.url == "ws://127.0.0.1:9/my%20doc"
    assert client.document_id == "my doc"
    client.close()
    named = WebSocketClient("ws://127.0.0.1:9/notes", doc)
    assert named.document_id == "notes"
    named.close()


@pytest.mark.parametrize("attempt", [1, 2, 3, 10, 1000])
def test_backoff_grows_is_capped_and_jittered(attempt: int) -> None:
    import random

    policy = ReconnectPolicy(initial_delay_s=1.0, max_delay_s=8.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay(attempt, rng) for _ in range(50)]
    nominal = min(8.0, 2.0 ** (attempt - 1))
    assert all(nominal * 0.5 <= d <= nominal for d in delays)
    assert len(set(delays)) > 1  # jitter spreads clients out


def test_backoff_policy_limits() -> None:
    assert ReconnectPolicy().allows(10**6)
    assert not ReconnectPolicy(max_attempts=3).allows(4)
    assert not ReconnectPolicy(enabled=False).allows(1)
    with pytest.raises(ValueError):
        ReconnectPolicy(jitter=2.0)
