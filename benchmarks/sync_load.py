"""Load the sync server with real clients on one document and print what happened.

    python benchmarks/sync_load.py --clients N --rate R --seconds T [--compare pycrdt-websocket]
    python benchmarks/sync_load.py --idle N [--compare pycrdt-websocket]

Edit mode (the default): starts our server as a child process
(``python -m server --port 0 --memory`` on 127.0.0.1, so its CPU seconds and
peak RSS can be read from outside), connects N real ``WebSocketClient``s to
one document, and has each make R text edits per second for T seconds. Every
edit inserts a unique fixed-width marker (``[ccc:ssssss]``: client, sequence)
at a marker boundary, so markers are never split and each receiver finds the
markers of an arriving edit in its text observer's Insert delta and stamps
its arrival. Then it waits (bounded) for quiescence and prints: propagation
latency of every edit to every other client (p50/p95/p99/max), edits
delivered vs expected, convergence (all final texts equal and holding every
marker), the server's CPU seconds and peak RSS, and the bytes on the wire
(every byte each client's TCP connection wrote and read, WebSocket framing
and the HTTP upgrade included).

With ``--compare pycrdt-websocket`` the same load runs, in the same run,
against a pycrdt-websocket server (child process too) with pycrdt
``Provider`` clients, and the figures are printed side by side with ratios.

Idle mode (``--idle N``): N clients join the document and stay idle for
``--idle-hold`` seconds; prints the server's RSS before and after, per
connection, and how many were still connected at the end.

All clients run in this process on one event loop (so its CPU is printed too:
a saturated client process inflates every latency). Everything is bounded in
count and time, on 127.0.0.1 only, and stops by itself. It prints and never
asserts; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import random
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import websockets
from _common import (  # benchmarks/ is not a package
    fmt_bytes,
    fmt_ratio,
    machine_banner,
    percentile,
    print_table,
)
from websockets.asyncio.client import ClientConnection

from crdt_sync import CRDTDocument, CRDTTextHandler, Insert, TextEvent

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DOCUMENT = "bench-doc"
LISTENING = re.compile(r"listening on ws://[^ ]*:(\d+)/")

#: A marker is exactly MARKER_LEN characters: "[" 3-digit client ":" 6-digit seq "]".
MARKER_LEN = 12
MARKER = re.compile(r"\[(\d{3}):(\d{6})\]")

#: Hard bounds so a typo cannot start a fork bomb of sockets or run for hours.
MAX_CLIENTS = 200
MAX_IDLE = 5000
MAX_SECONDS = 600.0
MAX_EDITS_PER_CLIENT = 100_000

SERVER_START_TIMEOUT = 30.0
CONNECT_TIMEOUT = 60.0


def marker(client: int, seq: int) -> str:
    return f"[{client:03d}:{seq:06d}]"


# ----------------------------------------------------------------- wire bytes


@dataclass
class Wire:
    """Bytes written and read by the clients' TCP connections, and messages by type."""

    sent: int = 0
    received: int = 0
    #: message type -> [count, payload bytes], per direction (WebSocket payloads only).
    sent_by_type: dict[str, list[int]] = field(default_factory=dict)
    received_by_type: dict[str, list[int]] = field(default_factory=dict)

    @staticmethod
    def tally(table: dict[str, list[int]], kind: str, size: int) -> None:
        entry = table.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += size


def our_message_type(data: bytes) -> str:
    from crdt_sync.sync.messages import peek_message_type

    kind = peek_message_type(data)
    return "?" if kind is None else kind.name


#: y-protocols: first byte 0 = sync (second byte: step 1, step 2, update), 1 = awareness.
_Y_SYNC = {0: "SYNC_STEP1", 1: "SYNC_STEP2", 2: "SYNC_UPDATE"}


def y_message_type(data: bytes) -> str:
    if len(data) >= 2 and data[0] == 0:
        return _Y_SYNC.get(data[1], "SYNC_?")
    return {1: "AWARENESS", 2: "AUTH", 3: "QUERY_AWARENESS"}.get(data[0], "?") if data else "?"


class _CountingTransport:
    """Delegates to a transport, counting what is written."""

    def __init__(self, transport: Any, wire: Wire) -> None:
        self._transport = transport
        self._wire = wire

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._wire.sent += len(data)
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def counting_connection(wire: Wire, classify: Callable[[bytes], str]) -> type[ClientConnection]:
    """A websockets ClientConnection class that counts into ``wire``: TCP bytes both
    ways, and binary messages by ``classify(payload)``."""

    class CountingConnection(ClientConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            counted: Any = _CountingTransport(transport, wire)
            super().connection_made(counted)

        def data_received(self, data: bytes) -> None:
            wire.received += len(data)
            super().data_received(data)

        async def recv(self, decode: bool | None = None) -> Any:
            data = await super().recv(decode)
            if isinstance(data, bytes):
                Wire.tally(wire.received_by_type, classify(data), len(data))
            return data

        async def send(self, message: Any, *, text: bool | None = None) -> None:
            if isinstance(message, bytes):
                Wire.tally(wire.sent_by_type, classify(message), len(message))
            await super().send(message, text=text)

    return CountingConnection


# -------------------------------------------------------------- server process


@dataclass
class ServerProcess:
    """A server in a child process, found by psutil for CPU and memory readings."""

    proc: asyncio.subprocess.Process
    port: int
    stderr: IO[bytes]

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def peak_rss(self) -> int:
        """Peak RSS over the process's life (VmHWM on Linux; current RSS elsewhere)."""
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return self.rss()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self.stderr.close()


async def start_server(command: list[str]) -> ServerProcess:
    """Start ``command`` and wait (bounded) for its ``listening on ws://...:PORT/`` line."""
    # Closed by ServerProcess.stop() (or below if the start fails).
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=str(REPO),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    assert proc.stdout is not None  # we asked for a pipe
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("server did not print its listening line in time")
            line = await asyncio.wait_for(proc.stdout.readline(), remaining)
            if not line:
                stderr.seek(0)
                raise RuntimeError(f"server exited: {stderr.read().decode(errors='replace')}")
            found = LISTENING.search(line.decode(errors="replace"))
            if found:
                return ServerProcess(proc, int(found.group(1)), stderr)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        stderr.close()
        raise


def our_server_command(max_connections: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "server",
        "--host",
        HOST,
        "--port",
        "0",
        "--memory",
        "--log-level",
        "WARNING",
        "--max-connections",
        str(max_connections),
        "--exit-with-parent",
    ]


def pycrdt_server_command() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve-pycrdt"]


async def serve_pycrdt() -> int:
    """Child-process mode: a pycrdt-websocket server on 127.0.0.1, any free port.

    Prints the same ``listening on ws://HOST:PORT/`` line as ours; stops on
    SIGTERM/SIGINT or when the parent goes away.
    """
    from pycrdt.websocket import WebsocketServer

    parent = os.getppid()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with WebsocketServer(log=None) as room_server:

        async def handler(connection: Any) -> None:
            await room_server.serve(Channel(connection, connection.request.path))

        async with websockets.serve(handler, HOST, 0, compression=None) as listener:
            port = listener.sockets[0].getsockname()[1]
            print(f"pycrdt-websocket listening on ws://{HOST}:{port}/", flush=True)
            while not stop.is_set():
                if os.getppid() != parent:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
    return 0


class Channel:
    """pycrdt's Channel over a websockets connection (server or client side)."""

    def __init__(self, connection: Any, path: str) -> None:
        self._connection = connection
        self.path = path

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._connection.send(message)

    async def recv(self) -> bytes:
        data = await self._connection.recv()
        return data if isinstance(data, bytes) else data.encode()


# ------------------------------------------------------------------- clients


@dataclass
class LoadState:
    """Shared bookkeeping for one library's run: send times and arrivals."""

    clients: int
    sent_at: dict[tuple[int, int], float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    duplicates: int = 0
    unknown: int = 0
    expected: int = 0
    seen: list[set[tuple[int, int]]] = field(default_factory=list)
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self, receiver: int, inserted: str, now: float) -> None:
        for found in MARKER.finditer(inserted):
            key = (int(found.group(1)), int(found.group(2)))
            if key[0] == receiver:
                continue  # our own edit (e.g. echoed back in a sync step)
            sent = self.sent_at.get(key)
            if sent is None:
                self.unknown += 1
                continue
            if key in self.seen[receiver]:
                self.duplicates += 1
                continue
            self.seen[receiver].add(key)
            self.delivered += 1
            self.latencies.append(now - sent)
            if self.expected and self.delivered >= self.expected:
                self.all_delivered.set()


class BenchClient:
    """What the load driver needs of a client, whichever library is behind it."""

    index: int

    async def start(self) -> None:
        raise NotImplementedError

    def edit(self, text: str, rng: random.Random) -> None:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def connected(self) -> bool:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


def boundary(length: int, rng: random.Random) -> int:
    """A random marker boundary in a text made only of whole markers."""
    return rng.randrange(length // MARKER_LEN + 1) * MARKER_LEN


class OurClient(BenchClient):
    def __init__(self, index: int, url: str, state: LoadState | None, wire: Wire) -> None:
        from crdt_sync.sync import ReconnectPolicy, WebSocketClient

        self.index = index
        self.doc = CRDTDocument()
        self.handler = CRDTTextHandler(self.doc, "text")
        self.wire = wire
        self.client = WebSocketClient(
            url, self.doc, author=f"bench-{index}", reconnect=ReconnectPolicy(max_attempts=3)
        )
        if state is not None:
            self.handler.observe(functools.partial(self._on_text, state))

    def _on_text(self, state: LoadState, event: TextEvent) -> None:
        if event.local:
            return
        now = time.perf_counter()
        for op in event.delta:
            if isinstance(op, Insert):
                state.arrived(self.index, op.content, now)

    async def start(self) -> None:
        if not await self.client.connect():
            raise RuntimeError(f"client {self.index} could not connect")

    def edit(self, text: str, rng: random.Random) -> None:
        self.handler.insert(boundary(len(self.handler), rng), text)

    def text(self) -> str:
        return self.handler.value

    def connected(self) -> bool:
        from crdt_sync.sync import ConnectionStatus

        return self.client.status is ConnectionStatus.CONNECTED

    async def stop(self) -> None:
        await self.client.disconnect()
        self.client.close()


class PycrdtClient(BenchClient):
    def __init__(self, index: int, url: str, state: LoadState | None, wire: Wire) -> None:
        from pycrdt import Doc, Text

        self.index = index
        self.url = url
        self.doc: Any = Doc()
        self.ytext: Any = self.doc.get("text", type=Text)
        self.wire = wire
        self.connection: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.provider: Any = None
        if state is not None:
            self.ytext.observe(functools.partial(self._on_text, state))

    def _on_text(self, state: LoadState, event: Any) -> None:
        now = time.perf_counter()
        for op in event.delta:
            inserted = op.get("insert")
            if isinstance(inserted, str):
                state.arrived(self.index, inserted, now)

    async def start(self) -> None:
        from pycrdt import Provider

        self.connection = await websockets.connect(
            self.url,
            create_connection=counting_connection(self.wire, y_message_type),
            compression=None,
            open_timeout=CONNECT_TIMEOUT,
            max_size=None,
        )
        self.provider = Provider(self.doc, Channel(self.connection, f"/{DOCUMENT}"))
        self.task = asyncio.create_task(self.provider.start())
        await asyncio.wait_for(self.provider.started.wait(), CONNECT_TIMEOUT)
        await asyncio.wait_for(self.provider.synced.wait(), CONNECT_TIMEOUT)

    def edit(self, text: str, rng: random.Random) -> None:
        with self.doc.transaction():
            self.ytext.insert(boundary(len(self.ytext), rng), text)

    def text(self) -> str:
        return str(self.ytext)

    def connected(self) -> bool:
        return self.connection is not None and self.task is not None and not self.task.done()

    async def stop(self) -> None:
        if self.provider is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.provider.stop(), 5.0)
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 5.0)
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


# ---------------------------------------------------------------- the runs


@dataclass
class RunResult:
    library: str
    clients: int
    edits_sent: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    latencies: list[float] = field(default_factory=list)
    converged: bool = False
    all_markers: bool = False
    final_length: int = 0
    still_connected: int = 0
    quiesce_s: float = 0.0
    server_cpu_s: float = 0.0
    server_rss_start: int = 0
    server_rss_peak: int = 0
    client_cpu_s: float = 0.0
    wire: Wire = field(default_factory=Wire)
    connect_s: float = 0.0
    late_edits: int = 0
    unknown: int = 0


ClientFactory = Callable[[int, str, LoadState | None, Wire], BenchClient]


async def connect_all(
    factory: ClientFactory, count: int, url: str, state: LoadState | None, wire: Wire
) -> list[BenchClient]:
    """Connect ``count`` clients: the first alone, then 50 at a time.

    The first client creates the document (the room) before the others arrive:
    pycrdt-websocket 0.16 sometimes leaves one of several clients that join a
    room being created at the same moment unsynced forever (seen here about
    one run in four with three clients). Batches of 50 because the server's
    listen backlog is finite.
    """
    clients: list[BenchClient] = [factory(0, url, state, wire)]
    await asyncio.wait_for(clients[0].start(), CONNECT_TIMEOUT)
    for first in range(1, count, 50):
        batch = [factory(i, url, state, wire) for i in range(first, min(count, first + 50))]
        clients.extend(batch)
        await asyncio.wait_for(asyncio.gather(*(c.start() for c in batch)), CONNECT_TIMEOUT)
    return clients


async def stop_all(clients: Sequence[BenchClient]) -> None:
    for first in range(0, len(clients), 100):
        await asyncio.gather(
            *(c.stop() for c in clients[first : first + 100]), return_exceptions=True
        )


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(
    library: str,
    server: ServerProcess,
    factory: ClientFactory,
    args: argparse.Namespace,
    wire: Wire,
) -> RunResult:
    """One library's edit load against ``server``; ``wire`` counts the clients' bytes."""
    result = RunResult(library, args.clients, wire=wire)
    url = f"ws://{HOST}:{server.port}/{DOCUMENT}"
    state = LoadState(args.clients)
    state.seen = [set() for _ in range(args.clients)]
    edits_each = min(MAX_EDITS_PER_CLIENT, round(args.rate * args.seconds))
    state.expected = args.clients * (args.clients - 1) * edits_each
    result.expected = state.expected
    result.server_rss_start = server.rss()
    t0 = time.perf_counter()
    clients = await connect_all(factory, args.clients, url, state, result.wire)
    result.connect_s = time.perf_counter() - t0
    try:
        gc.collect()
        cpu0, client_cpu0 = server.cpu_seconds(), client_cpu()
        start = time.perf_counter() + 0.2
        interval = 1.0 / args.rate
        late = [0]

        async def editor(client: BenchClient) -> None:
            rng = random.Random(client.index)
            # Spread the clients' ticks over one interval so edits do not all fire at once.
            phase = rng.random() * interval
            for seq in range(edits_each):
                target = start + phase + seq * interval
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval:
                    late[0] += 1  # the loop could not keep up with the asked rate
                key = (client.index, seq)
                state.sent_at[key] = time.perf_counter()
                client.edit(marker(*key), rng)
                result.edits_sent += 1

        await asyncio.wait_for(
            asyncio.gather(*(editor(c) for c in clients)), args.seconds + MAX_SECONDS
        )
        sent_done = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.all_delivered.wait(), args.quiesce_timeout)
        result.quiesce_s = time.perf_counter() - sent_done
        # Let stragglers (duplicates, late frames) land before reading the texts.
        await asyncio.sleep(0.2)
        result.server_cpu_s = server.cpu_seconds() - cpu0
        result.client_cpu_s = client_cpu() - client_cpu0
        result.server_rss_peak = server.peak_rss()
        result.late_edits = late[0]
        texts = [c.text() for c in clients]
        result.converged = all(t == texts[0] for t in texts)
        expected_markers = {marker(c, s) for c in range(args.clients) for s in range(edits_each)}
        result.all_markers = all(
            {m.group(0) for m in MARKER.finditer(t)} == expected_markers
            and len(t) == MARKER_LEN * len(expected_markers)
            for t in texts
        )
        result.final_length = len(texts[0])
        result.still_connected = sum(c.connected() for c in clients)
        result.delivered = state.delivered
        result.duplicates = state.duplicates
        result.unknown = state.unknown
        result.latencies = sorted(state.latencies)
    finally:
        await stop_all(clients)
    return result


@dataclass
class IdleResult:
    library: str
    count: int
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    connect_s: float = 0.0
    still_connected: int = 0
    client_rss_growth: int = 0
    hold_cpu_s: float = 0.0
    close_s: float = 0.0


async def run_idle(
    library: str, server: ServerProcess, factory: ClientFactory, args: argparse.Namespace
) -> IdleResult:
    result = IdleResult(library, args.idle)
    url = f"ws://{HOST}:{server.port}/{DOCUMENT}"
    await asyncio.sleep(0.5)  # let the fresh server settle before the baseline
    result.rss_before = server.rss()
    own_rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    clients: list[BenchClient] = []
    try:
        clients = await connect_all(factory, args.idle, url, None, Wire())
        result.connect_s = time.perf_counter() - t0
        cpu0 = server.cpu_seconds()
        await asyncio.sleep(args.idle_hold)
        result.hold_cpu_s = server.cpu_seconds() - cpu0
        result.rss_after = server.rss()
        result.rss_peak = server.peak_rss()
        result.still_connected = sum(c.connected() for c in clients)
        result.client_rss_growth = psutil.Process().memory_info().rss - own_rss0
    finally:
        t1 = time.perf_counter()
        await stop_all(clients)
        result.close_s = time.perf_counter() - t1
    return result


# -------------------------------------------------------------------- report


def fmt_lat(values: list[float], fraction: float | None) -> str:
    if not values:
        return "-"
    value = values[-1] if fraction is None else percentile(values, fraction)
    return f"{value * 1000:.1f} ms"


def lat_value(values: list[float], fraction: float | None) -> float | None:
    if not values:
        return None
    return values[-1] if fraction is None else percentile(values, fraction)


def report_load(results: list[RunResult], args: argparse.Namespace) -> None:
    header = ["figure", *(r.library for r in results)]
    if len(results) == 2:
        header.append("ours/theirs")
    rows: list[list[str]] = []

    def add(label: str, cells: list[str], values: list[float | None] | None = None) -> None:
        row = [label, *cells]
        if len(results) == 2:
            row.append(fmt_ratio(values[0], values[1]) if values else "")
        rows.append(row)

    for label, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", None)):
        add(
            f"latency {label}",
            [fmt_lat(r.latencies, fraction) for r in results],
            [lat_value(r.latencies, fraction) for r in results],
        )
    add("edits sent", [f"{r.edits_sent:,}" for r in results])
    add(
        "deliveries (edit x other client)",
        [f"{r.delivered:,} / {r.expected:,}" for r in results],
    )
    add("duplicate / unknown deliveries", [f"{r.duplicates:,} / {r.unknown:,}" for r in results])
    add(
        "converged (texts equal, all markers)",
        [f"{'yes' if r.converged else 'NO'}, {'yes' if r.all_markers else 'NO'}" for r in results],
    )
    add("final text length", [f"{r.final_length:,}" for r in results])
    add("clients still connected", [f"{r.still_connected} / {r.clients}" for r in results])
    add("quiescence after last edit", [f"{r.quiesce_s:.2f} s" for r in results])
    add(
        "server CPU during the load",
        [f"{r.server_cpu_s:.2f} s" for r in results],
        [r.server_cpu_s for r in results],
    )
    add(
        "server RSS at start / peak",
        [f"{fmt_bytes(r.server_rss_start)} / {fmt_bytes(r.server_rss_peak)}" for r in results],
        [float(r.server_rss_peak) for r in results],
    )
    add(
        "wire bytes sent by clients",
        [fmt_bytes(r.wire.sent) for r in results],
        [float(r.wire.sent) for r in results],
    )
    add(
        "wire bytes received by clients",
        [fmt_bytes(r.wire.received) for r in results],
        [float(r.wire.received) for r in results],
    )
    add(
        "client process CPU (all clients)",
        [f"{r.client_cpu_s:.2f} s" for r in results],
        [r.client_cpu_s for r in results],
    )
    add("edits fired > 1 interval late", [f"{r.late_edits:,}" for r in results])
    add("connect all clients", [f"{r.connect_s:.2f} s" for r in results])
    print_table(header, rows)
    for r in results:
        for direction, table in (
            ("sent", r.wire.sent_by_type),
            ("received", r.wire.received_by_type),
        ):
            parts = ", ".join(
                f"{kind} {count:,} ({fmt_bytes(size)}, {size / count:.0f} B each)"
                for kind, (count, size) in sorted(table.items(), key=lambda kv: -kv[1][1])
            )
            print(f"{r.library} messages {direction} by clients: {parts or '-'}")
    if len(results) == 2 and results[0].latencies and results[1].latencies:
        ours99 = percentile(results[0].latencies, 0.99)
        theirs99 = percentile(results[1].latencies, 0.99)
        ok = (
            ours99 <= 0.5 * theirs99
            and results[0].delivered == results[0].expected
            and results[0].converged
            and results[0].all_markers
        )
        print(
            "bar (issue 3: every edit delivered, all converged, p99 <= 0.5x pycrdt-websocket): "
            f"{'met' if ok else 'NOT met'}"
            + (
                ""
                if (args.clients, args.rate, args.seconds) == (20, 10.0, 20.0)
                else " (the bar is defined at --clients 20 --rate 10 --seconds 20)"
            )
        )


def report_idle(results: list[IdleResult]) -> None:
    header = ["figure", *(r.library for r in results)]
    if len(results) == 2:
        header.append("ours/theirs")
    rows: list[list[str]] = []

    def add(label: str, cells: list[str], values: list[float] | None = None) -> None:
        row = [label, *cells]
        if len(results) == 2:
            row.append(fmt_ratio(values[0], values[1]) if values else "")
        rows.append(row)

    add("idle connections", [f"{r.count:,}" for r in results])
    add("still connected after the hold", [f"{r.still_connected:,}" for r in results])
    add("server RSS before", [fmt_bytes(r.rss_before) for r in results])
    add(
        "server RSS with the connections",
        [fmt_bytes(r.rss_after) for r in results],
        [float(r.rss_after) for r in results],
    )
    add(
        "server RSS per connection",
        [fmt_bytes((r.rss_after - r.rss_before) / max(1, r.count)) for r in results],
        [(r.rss_after - r.rss_before) / max(1, r.count) for r in results],
    )
    add("server peak RSS", [fmt_bytes(r.rss_peak) for r in results])
    add("time to connect all", [f"{r.connect_s:.2f} s" for r in results])
    add(
        "server CPU while idle (the hold)",
        [f"{r.hold_cpu_s:.2f} s" for r in results],
        [r.hold_cpu_s for r in results],
    )
    add("time to close all", [f"{r.close_s:.2f} s" for r in results])
    add("client process RSS growth", [fmt_bytes(r.client_rss_growth) for r in results])
    print_table(header, rows)
    if results and results[0].library == "crdt_sync":
        held = results[0].still_connected == results[0].count
        print(
            f"bar (issue 3: 2,000 idle connections held): "
            f"{'met' if held and results[0].count >= 2000 else 'NOT met'}"
            + ("" if results[0].count >= 2000 else " (run with --idle 2000)")
        )


# ---------------------------------------------------------------------- main


def raise_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards ``needed`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"warning: open files limited to {target} (hard limit); asked {needed}")


async def with_server(command: list[str], body: Callable[[ServerProcess], Awaitable[Any]]) -> Any:
    server = await start_server(command)
    try:
        return await body(server)
    finally:
        await server.stop()


async def amain(args: argparse.Namespace) -> int:
    print(machine_banner())
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | 127.0.0.1 only")
    comparing = args.compare == "pycrdt-websocket"
    if comparing:
        from importlib.metadata import version

        print(
            f"comparing with pycrdt-websocket {version('pycrdt-websocket')} "
            f"(pycrdt {version('pycrdt')}) server, pycrdt Provider clients"
        )
    libraries: list[tuple[str, list[str], ClientFactory]] = [
        (
            "crdt_sync",
            our_server_command(max(1000, (args.idle or args.clients) + 100)),
            OurClient,
        )
    ]
    if comparing:
        libraries.append(("pycrdt-websocket", pycrdt_server_command(), PycrdtClient))

    import crdt_sync.sync.client as client_module

    original_connect = getattr(client_module, "connect")  # noqa: B009 (not re-exported)

    def use_counting_connect(wire: Wire) -> None:
        # Our client opens its socket through the module's ``connect``; give it a
        # connection class that counts TCP bytes (the benchmark's own instrument).
        counting = functools.partial(
            original_connect, create_connection=counting_connection(wire, our_message_type)
        )
        setattr(client_module, "connect", counting)  # noqa: B010

    try:
        if args.idle:
            raise_fd_limit(args.idle * 2 + 256)
            print(f"idle mode: {args.idle:,} connections held {args.idle_hold:.0f} s each")
            idle_results: list[IdleResult] = []
            for name, command, factory in libraries:
                use_counting_connect(Wire())
                result = await with_server(
                    command,
                    functools.partial(run_idle, name, factory=factory, args=args),
                )
                idle_results.append(result)
                gc.collect()
            print()
            report_idle(idle_results)
            return 0

        raise_fd_limit(args.clients * 2 + 256)
        print(
            f"load: {args.clients} clients x {args.rate:g} edits/s x {args.seconds:g} s "
            f"on one document; each edit inserts a 12-char marker at a marker boundary"
        )
        load_results: list[RunResult] = []
        for name, command, factory in libraries:
            wire = Wire()
            use_counting_connect(wire)
            load_results.append(
                await with_server(
                    command,
                    functools.partial(run_load, name, factory=factory, args=args, wire=wire),
                )
            )
            gc.collect()
        print()
        report_load(load_results, args)
        return 0
    finally:
        setattr(client_module, "connect", original_connect)  # noqa: B010


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="editing clients (20)")
    parser.add_argument("--rate", type=float, default=10.0, help="edits per second per client")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of editing (20)")
    parser.add_argument("--compare", choices=("pycrdt-websocket",), default=None)
    parser.add_argument(
        "--idle", type=int, default=0, help="idle mode: hold N connections instead of editing"
    )
    parser.add_argument(
        "--idle-hold", type=float, default=5.0, help="seconds to hold idle connections (5)"
    )
    parser.add_argument(
        "--quiesce-timeout",
        type=float,
        default=30.0,
        help="longest wait for every edit to arrive after the last one (30 s)",
    )
    parser.add_argument("--serve-pycrdt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 2 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be within 2..{MAX_CLIENTS}")
    if not 0 < args.rate <= 1000:
        parser.error("--rate must be within (0, 1000]")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be within (0, {MAX_SECONDS:g}]")
    if not 0 <= args.idle <= MAX_IDLE:
        parser.error(f"--idle must be within 0..{MAX_IDLE}")
    if not 0 <= args.idle_hold <= MAX_SECONDS:
        parser.error(f"--idle-hold must be within 0..{MAX_SECONDS:g}")
    if not 0 < args.quiesce_timeout <= MAX_SECONDS:
        parser.error(f"--quiesce-timeout must be within (0, {MAX_SECONDS:g}]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_pycrdt:
        return asyncio.run(serve_pycrdt())
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
