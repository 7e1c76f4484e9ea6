"""Several servers on one real redis-server: convergence, failures, /healthz and /metrics.

In-process servers (one registry each, as separate processes would have) cover
convergence and the HTTP endpoints; real OS processes cover kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis_helpers import RedisServer, ServerProcess
from server_helpers import FAST_RECONNECT, Peer, peers, wait_converged, wait_for

from crdt_sync import CRDTDocument, CRDTTextHandler
from crdt_sync.sync import ErrorCode
from crdt_sync.sync.client import ConnectionStatus, WebSocketClient
from server import SqliteServerRegistry, WebSocketServer
from server.registry import RedisServerRegistry
from server.trust import Limits

pytestmark = [pytest.mark.redis, pytest.mark.asyncio, pytest.mark.timeout(90)]


def url_of(server: WebSocketServer, document_id: str = "notes") -> str:
    return f"ws://127.0.0.1:{server.port}/{document_id}"


@contextlib.asynccontextmanager
async def redis_servers(
    redis_url: str, count: int, **options: Any
) -> AsyncIterator[list[WebSocketServer]]:
    """``count`` servers on one Redis, each with its own registry (as processes have)."""
    registries = [
        RedisServerRegistry(redis_url, process_id=f"p{i}", block=0.2, retry_max=0.2)
        for i in range(count)
    ]
    servers = [WebSocketServer("127.0.0.1", 0, registry, **options) for registry in registries]
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()
        for registry in registries:
            await registry.close()


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET on the WebSocket port: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        pairs = [
            (key.strip().lower(), value.strip())
            for key, _, value in (line.partition(":") for line in lines[1:] if line)
        ]
        headers = dict(pairs)
        assert len(headers) == len(pairs), f"a header is repeated: {pairs}"
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        return status, headers, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample (or the sum over a metric's labelled samples)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise AssertionError(f"{name} is not in the metrics:\n{text}")
    return total


def edit(group: list[Peer], round_: int) -> None:
    for index, peer in enumerate(group):
        peer.text.insert(len(peer.text.value), f"{round_}{index} ")
        peer.items.append(f"{round_}-{index}")
        peer.meta.set(f"k{index}", round_)


@pytest.mark.parametrize("count", [2, 3])
async def test_clients_spread_over_servers_converge(redis_server: RedisServer, count: int) -> None:
    async with redis_servers(redis_server.url, count) as servers:
        group = [Peer(url_of(servers[i % count]), f"user{i}") for i in range(2 * count)]
        try:
            for peer in group:
                await peer.connect()
            for round_ in range(3):
                edit(group, round_)
            await wait_converged(group)
            _, items, meta = group[0].state()
            assert len(items) == 3 * len(group) and len(meta) == len(group)
            for peer in group:
                await peer.wait_acknowledged()
            # Presence crosses processes too.
            group[0].client.awareness.set_local_state({"name": "Ada", "cursor": 3})
            others = group[1:]
            await wait_for(
                lambda: all(
                    p.client.awareness.states.get(str(group[0].document.peer_id), {}).get("name")
                    == "Ada"
                    for p in others
                ),
                streams=tuple(p.client.awareness.changes for p in others),
                what="presence everywhere",
            )
        finally:
            for peer in group:
                await peer.client.disconnect()


async def test_healthz_and_metrics_over_http(redis_server: RedisServer) -> None:
    async with redis_servers(redis_server.url, 2, metrics=True) as (first, second):
        status, headers, body = await http_get(first.port, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["storage"] == "ok"
        assert health["registry"] == "RedisServerRegistry"
        async with peers(url_of(first), 1) as [writer], peers(url_of(second), 1) as [reader]:
            writer.text.insert(0, "measured")
            await writer.wait_acknowledged()
            await wait_for(
                lambda: reader.text.value == "measured",
                documents=(reader.document,),
                what="the change crosses",
            )
            status, headers, body = await http_get(first.port, "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain")
            text = body.decode()
            assert metric(text, "crdt_connections") == 1
            assert metric(text, "crdt_documents_loaded") == 1
            assert metric(text, "crdt_changes_applied_total") >= 1
            assert metric(text, "crdt_bytes_received_total") > 0
            assert metric(text, "crdt_redis_appends_total") >= 1
            assert metric(text, "crdt_store_seconds_count") >= 1
            assert metric(text, "crdt_redis_lag_seconds") >= 0
            _, _, body = await http_get(second.port, "/metrics")
            text = body.decode()
            assert metric(text, "crdt_redis_entries_received_total") >= 1
            assert metric(text, "crdt_changes_relayed_total") >= 1
            assert metric(text, 'crdt_propagation_seconds_count{source="remote"}') >= 1
        redis_server.stop()
        status, _, body = await http_get(first.port, "/healthz")
        assert status == 503 and json.loads(body)["storage"].startswith("unavailable")
        redis_server.start()
        status, _, _ = await http_get(first.port, "/healthz")
        assert status == 200


async def test_metrics_are_off_unless_asked_and_healthz_checks_sqlite(tmp_path: Any) -> None:
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3")
    async with WebSocketServer("127.0.0.1", 0, registry) as server:
        status, _, body = await http_get(server.port, "/healthz")
        assert status == 200 and json.loads(body)["registry"] == "SqliteServerRegistry"
        status, _, body = await http_get(server.port, "/metrics")
        assert status == 404 and b"--metrics" in body
    await registry.close()


async def test_redis_stopped_and_restarted_mid_session(redis_server: RedisServer) -> None:
    async with (
        redis_servers(redis_server.url, 2) as (first, second),
        peers(url_of(first), 1) as [a],
        peers(url_of(second), 1) as [b],
    ):
        a.text.insert(0, "before ")
        await a.wait_acknowledged()
        redis_server.stop()
        a.text.insert(len(a.text.value), "during ")
        # The server cannot store it: the client hears why and retries.
        await wait_for(
            lambda: a.client.status is not ConnectionStatus.CONNECTED,
            streams=(a.client.connection_status,),
            what="the client sees that storing failed",
        )
        assert a.client.unacknowledged_changes > 0  # nothing acknowledged is lost
        # A typed, transient status: the client reconnects by itself (not ERROR).
        error = a.client.last_error
        assert error is not None and error.code is ErrorCode.STORAGE_UNAVAILABLE
        assert not error.final and a.client.status is not ConnectionStatus.ERROR
        # A document no process has loaded cannot be opened meanwhile: same status.
        c = Peer(url_of(second, "other"), "late")
        assert not await c.client.connect()
        error = c.client.last_error
        assert error is not None and error.code is ErrorCode.STORAGE_UNAVAILABLE
        assert c.client.status is not ConnectionStatus.ERROR
        c.text.insert(0, "offline ")
        redis_server.start()
        # Both recover without anyone's help, and nothing is lost.
        await a.wait_status(ConnectionStatus.CONNECTED)
        await a.wait_acknowledged()
        await c.wait_status(ConnectionStatus.CONNECTED)
        await c.wait_acknowledged()
        await c.client.disconnect()
        b.items.append("after")
        await wait_converged([a, b])
        assert a.text.value == "before during "
    fresh = RedisServerRegistry(redis_server.url, process_id="check")
    try:
        document = await fresh.get_document("notes")
        assert document is not None
        other = await fresh.get_document("other")
        assert other is not None and str(CRDTTextHandler(other, "text").value) == "offline "
    finally:
        await fresh.close()


async def test_kill_9_of_a_server_process_loses_nothing_acknowledged(
    redis_server: RedisServer,
) -> None:
    processes: list[ServerProcess] = []
    try:
        for _ in range(2):
            processes.append(ServerProcess(redis_server.url))
        writer = Peer(processes[0].url(), "writer")
        watcher = Peer(processes[1].url(), "watcher")
        await writer.connect()
        await watcher.connect()
        try:
            for round_ in range(5):
                writer.text.insert(len(writer.text.value), f"w{round_} ")
                writer.items.append(round_)
            await writer.wait_acknowledged()
            acknowledged = writer.state()
            writer.text.insert(0, "unacked? ")  # maybe acknowledged, maybe not: both fine
            processes[0].kill()
            await writer.client.disconnect()
            # The same replica comes back through a new client on the other process.
            moved = Peer(processes[1].url(), "writer again")
            moved.document = writer.document
            moved.text, moved.items, moved.meta = writer.text, writer.items, writer.meta
            moved.client = type(writer.client)(processes[1].url(), writer.document, "writer")
            await moved.connect()
            try:
                await wait_converged([moved, watcher])
                text, items, _ = watcher.state()
                assert acknowledged[0] in text and items == acknowledged[1]
                assert text.startswith("unacked? ")
            finally:
                await moved.client.disconnect()
        finally:
            await watcher.client.disconnect()
    finally:
        for process in processes:
            process.stop()


async def test_three_server_processes_converge(redis_server: RedisServer) -> None:
    processes: list[ServerProcess] = []
    try:
        for _ in range(3):
            processes.append(ServerProcess(redis_server.url))
        group = [Peer(processes[i % 3].url(), f"user{i}") for i in range(6)]
        try:
            for peer in group:
                await peer.connect()
            for round_ in range(3):
                edit(group, round_)
            await wait_converged(group)
            for peer in group:
                await peer.wait_acknowledged()
        finally:
            for peer in group:
                await peer.client.disconnect()
    finally:
        for process in processes:
            process.stop()


async def test_a_live_peer_id_on_one_process_is_refused_on_another(
    redis_server: RedisServer,
) -> None:
    async with (
        redis_servers(redis_server.url, 2, limits=Limits(peer_check_timeout=2.0)) as (
            first,
            second,
        ),
        peers(url_of(first), 1) as [a],
    ):
        a.text.insert(0, "a ")
        await a.wait_acknowledged()
        # The same replica opened a second time, on the other process: the live
        # connection (it answers first's ping) keeps its place.
        copy = CRDTDocument(a.document.peer_id, replica_secret=a.document.replica_secret)
        copy.binary_import_changes(a.document.binary_export_changes())
        window = WebSocketClient(url_of(second), copy, "twin", reconnect=FAST_RECONNECT)
        try:
            assert not await window.connect()
            error = window.last_error
            assert error is not None and error.code is ErrorCode.PEER_ID_IN_USE
        finally:
            window.close()
        a.text.insert(0, "still ")
        await a.wait_acknowledged()
        assert a.client.status is ConnectionStatus.CONNECTED


async def test_a_dead_connection_on_one_process_is_replaced_from_another(
    redis_server: RedisServer,
) -> None:
    async with (
        redis_servers(redis_server.url, 2, limits=Limits(peer_check_timeout=1.0)) as (
            first,
            second,
        ),
        peers(url_of(first), 1) as [a],
        peers(url_of(second), 1) as [b],
    ):
        a.text.insert(0, "a ")
        await a.wait_acknowledged()
        # a's network drops without a close: its socket on first is half-open.
        ws = a.client._ws  # the test plays a broken network
        assert ws is not None
        ws.transport.pause_reading()
        replacement = WebSocketClient(url_of(second), a.document, "a", reconnect=FAST_RECONNECT)
        try:
            assert await replacement.connect()  # first pinged, got nothing, dropped it
            a.text.insert(len(a.text.value), "again")
            await wait_for(
                lambda: replacement.unacknowledged_changes == 0,
                streams=(replacement.events,),
                what="the replacement's acknowledgement",
            )
            await wait_converged([a, b])
        finally:
            await a.client.disconnect()
            ws.transport.abort()
            await replacement.disconnect()
            replacement.close()
