"""The server's counters (server/metrics.py): plain numbers on the hot path, the
Prometheus text format at scrape time (a real server, a real client, SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from server_helpers import peers, wait_for

from server import SqliteServerRegistry, WebSocketServer
from server.metrics import Histogram, ServerMetrics
from server.registry import InMemoryServerRegistry


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET on the WebSocket port: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        lines = head.split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return int(lines[0].split()[1]), body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def samples(text: str) -> dict[str, float]:
    """Every sample line of an exposition: name with labels -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_histogram_buckets_are_inclusive_upper_bounds_and_cumulative() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [
        ("0.001", 2.0),  # 0.0005 and 0.001 (a value on a bound counts in that bucket)
        ("0.01", 4.0),
        ("0.1", 4.0),
        ("+Inf", 6.0),
    ]
    assert histogram.count == 6
    assert abs(histogram.sum - 7.5135) < 1e-9


def test_exposition_has_every_metric_with_its_labels() -> None:
    metrics = ServerMetrics(InMemoryServerRegistry(), connections=lambda: 3)
    metrics.changes_applied.inc(4)
    metrics.refusals.labels("RATE_LIMITED").inc()
    metrics.refusals.labels("RATE_LIMITED").inc()
    metrics.propagation.labels("local").observe(0.003)
    metrics.storage_up.set(0)
    values = samples(metrics.exposition().decode())
    assert values["crdt_connections"] == 3
    assert values["crdt_changes_applied_total"] == 4
    assert values["crdt_changes_relayed_total"] == 0
    assert values['crdt_refusals_total{code="RATE_LIMITED"}'] == 2
    assert values['crdt_propagation_seconds_bucket{le="0.0025",source="local"}'] == 0
    assert values['crdt_propagation_seconds_bucket{le="0.005",source="local"}'] == 1
    assert values['crdt_propagation_seconds_count{source="local"}'] == 1
    assert values["crdt_store_seconds_count"] == 0
    assert values["crdt_storage_up"] == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_served_edit_is_counted(tmp_path: Any) -> None:
    registry = SqliteServerRegistry(tmp_path / "store.sqlite3")
    async with WebSocketServer("127.0.0.1", 0, registry, metrics=True) as server:
        url = f"ws://127.0.0.1:{server.port}/notes"
        async with peers(url, 2) as [writer, reader]:
            writer.text.insert(0, "counted")
            await writer.wait_acknowledged()
            await wait_for(
                lambda: reader.text.value == "counted",
                documents=(reader.document,),
                what="the relay",
            )
            status, body = await http_get(server.port, "/metrics")
    await registry.close()
    assert status == 200
    values = samples(body.decode())
    assert values["crdt_connections"] == 2
    assert values["crdt_changes_applied_total"] >= 1
    assert values["crdt_changes_relayed_total"] >= 1
    assert values["crdt_bytes_received_total"] > 0
    assert values["crdt_bytes_sent_total"] > 0
    assert values["crdt_store_seconds_count"] >= 1
    local = values['crdt_propagation_seconds_count{source="local"}']
    assert local >= 1
    assert values['crdt_propagation_seconds_bucket{le="+Inf",source="local"}'] == local
    assert values["crdt_storage_up"] == 1
