"""Load the sync server with many writers on one document, with a generator that stays out
of the way, and print what happened.

    python benchmarks/sync_load.py --clients 10 --rate 10 --seconds 5
    python benchmarks/sync_load.py --clients 50 --rate 10 --seconds 20 --compare pycrdt-websocket
    python benchmarks/sync_load.py --clients 50 --pattern append --registry memory
    python benchmarks/sync_load.py --ramp                    # sustained edits/s at 10 clients
    python benchmarks/sync_load.py --idle 2000 [--compare pycrdt-websocket]
    python benchmarks/sync_load.py --redis local --servers 1,2,3   # next to one SQLite process

The server runs as a child process (ours: ``python -m server`` on 127.0.0.1,
``--registry sqlite`` by default with a fresh file, or ``memory``); its CPU
time and peak RSS are read from /proc. Every client's frames are computed
before the run with the library's own encoders (``benchmarks/_common.py``:
``crdt_workload``), and the clients are raw WebSocket connections, holding
no CRDT, spread over ``--workers`` processes: each sends its precomputed
edits on a fixed schedule (N clients x R edits/s x S s) and stamps every edit
another client's frame brings, reading only the frame's change header. The
generator's own CPU, event-loop lag and send lateness are measured next to
the server's, and a run where the generator was saturated is refused.

``--compare pycrdt-websocket`` runs the same workload (pycrdt updates made the
same way, raw y-protocol frames) against a pycrdt-websocket server, in the
same run, and prints both side by side. Everything binds to 127.0.0.1, is
bounded in count and time, and stops by itself; it prints and never asserts.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # benchmarks/ is not a package
    CRDT,
    HOST,
    MAX_CLIENTS,
    MAX_EDITS_PER_CLIENT,
    REPO,
    Generator,
    GeneratorLimits,
    LoadRun,
    ServerProcess,
    Workload,
    crdt_workload,
    fmt_bytes,
    fmt_ratio,
    load_banner,
    our_server_command,
    print_table,
    proc_cpu_seconds,
    raise_fd_limit,
    server_has_option,
    start_server,
    y_workload,
)

OURS = "crdt_sync"
PYCRDT = "pycrdt-websocket"
SECURED_RATIO = "secured/plain"
REDIS_RATIO = "redis/single"
MAX_SECONDS = 120.0
MAX_IDLE = 5000
#: The ramp's rates per client (x 10 clients = edits/s); it stops at the first failing step.
RAMP_RATES = (10, 20, 40, 60, 80, 100, 150, 200, 250, 300)


# ----------------------------------------------------------------- servers


def pycrdt_server_command() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve-pycrdt"]


class Channel:
    """pycrdt's Channel over a websockets server connection."""

    def __init__(self, connection: Any, path: str) -> None:
        self._connection = connection
        self.path = path

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        import websockets

        try:
            return await self.recv()
        except websockets.ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._connection.send(message)

    async def recv(self) -> bytes:
        data = await self._connection.recv()
        return data if isinstance(data, bytes) else data.encode()


async def serve_pycrdt() -> int:
    """Child-process mode: a pycrdt-websocket server on 127.0.0.1, any free port.

    Prints a ``listening on ws://HOST:PORT/`` line like ours; stops on SIGTERM or
    SIGINT, or when the parent goes away.
    """
    import websockets
    from pycrdt.websocket import WebsocketServer

    parent = os.getppid()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with WebsocketServer(log=None) as room_server:

        async def handler(connection: Any) -> None:
            await room_server.serve(Channel(connection, connection.request.path))

        async with websockets.serve(handler, HOST, 0, compression=None, max_size=None) as listener:
            port = listener.sockets[0].getsockname()[1]
            print(f"pycrdt-websocket listening on ws://{HOST}:{port}/", flush=True)
            while not stop.is_set() and os.getppid() == parent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
    return 0


class Servers:
    """The server processes of one library for one run (several with --servers N)."""

    def __init__(
        self,
        library: str,
        args: argparse.Namespace,
        max_connections: int,
        *,
        tls: bool = False,
        auth: bool = False,
        redis_url: str | None = None,
        count: int = 1,
    ) -> None:
        self.library = library
        self.args = args
        self.max_connections = max_connections
        self.tls = tls
        self.auth = auth
        self.redis_url = redis_url
        self.count = count if redis_url is not None else 1
        self.tmp = tempfile.TemporaryDirectory(prefix="sync-load-")
        self.dir = Path(self.tmp.name)
        self.processes: list[ServerProcess] = []
        self.ca_file: str | None = None
        self.secret_file = self.dir / "server.secret"

    def __enter__(self) -> Servers:
        try:
            if self.library == PYCRDT:
                self.processes.append(start_server(pycrdt_server_command(), PYCRDT))
                return self
            extra: list[str] = []
            if self.tls:
                from server.tls import create_self_signed_certificate

                cert, key = self.dir / "cert.pem", self.dir / "key.pem"
                create_self_signed_certificate(cert, key, hosts=(HOST, "localhost"))
                extra += ["--tls-cert", str(cert), "--tls-key", str(key)]
                self.ca_file = str(cert)
            if self.auth:
                self.token("bench-doc")  # creates the secret file before the server reads it
                extra += ["--secret-file", str(self.secret_file)]
            interval = getattr(self.args, "commit_interval", None)
            if interval is not None and self.args.registry == "sqlite" and self.redis_url is None:
                if not server_has_option("--commit-interval"):
                    raise SystemExit("this server has no --commit-interval option")
                extra += ["--commit-interval", str(interval)]
            if self.redis_url is not None and server_has_option("--metrics"):
                extra.append("--metrics")  # the Redis round trips are read from /metrics
            db = self.dir / "documents.sqlite3"
            command = our_server_command(
                self.args.registry,
                db,
                self.max_connections,
                extra,
                auth=self.auth,
                redis_url=self.redis_url,
            )
            for _ in range(self.count):
                self.processes.append(start_server(command, OURS))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.stop()
        self.tmp.cleanup()

    def token(self, document_id: str) -> str | None:
        """A write token for ``document_id`` (``crdt-sync-server token``), None without auth."""
        if not self.auth:
            return None
        done = subprocess.run(
            [
                *(sys.executable, "-m", "server", "token", document_id),
                *("--role", "write", "--expires", "1d", "--secret-file", str(self.secret_file)),
            ],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def urls(self, document_id: str, n: int) -> list[str]:
        scheme = "wss" if self.tls else "ws"
        ports = [p.port for p in self.processes]
        return [f"{scheme}://{HOST}:{ports[i % len(ports)]}/{document_id}" for i in range(n)]

    def describe(self) -> str:
        if self.library == PYCRDT:
            return "pycrdt-websocket WebsocketServer (no store)"
        store = "memory registry" if self.args.registry == "memory" else "SQLite registry"
        if self.redis_url is not None:
            store = f"Redis registry, {self.count} server process(es) on one Redis"
        access = " + ".join(part for part, on in (("TLS", self.tls), ("tokens", self.auth)) if on)
        return f"crdt_sync server, {store}" + (f", {access}" if access else ", no TLS, no tokens")


class LocalRedis:
    """A redis-server child on a free port of 127.0.0.1 (``--redis local``): a fresh
    temporary directory, AOF on with ``appendfsync everysec``, no RDB snapshots."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="sync-load-redis-")
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> LocalRedis:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        self.popen = subprocess.Popen(
            [
                *("redis-server", "--bind", HOST, "--port", str(self.port)),
                *("--dir", self.tmp.name, "--appendonly", "yes", "--appendfsync", "everysec"),
                *("--save", "", "--daemonize", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except Exception:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("redis-server did not answer within 20 s")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def __exit__(self, *exc: object) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.tmp.cleanup()


def redis_counters(url: str, pid: int | None, servers: Servers | None = None) -> dict[str, Any]:
    """Window counters for a Redis run: commands Redis executed (INFO commandstats),
    for a local redis-server its CPU seconds, and the round trips to Redis that the
    server processes made (their ``crdt_redis_round_trips_total``, from ``/metrics``)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)

    def commands() -> float:
        stats = client.info("commandstats")
        return float(sum(entry.get("calls", 0) for entry in stats.values()))

    counters: dict[str, Any] = {"redis commands": commands}
    if pid is not None:
        counters["redis CPU"] = lambda: proc_cpu_seconds(pid)
    if servers is not None and server_has_option("--metrics"):
        ports = [p.port for p in servers.processes]
        counters["redis round trips"] = lambda: sum(
            scrape(port, "crdt_redis_round_trips_total") for port in ports
        )
    return counters


def scrape(port: int, name: str) -> float:
    """One sample of a server's ``/metrics`` (0 if absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


# ----------------------------------------------------------------- runs


def lag_rounds(rate: float, lag_ms: float) -> int:
    return max(1, round(lag_ms / 1000.0 * rate))


def build_workload(
    library: str,
    args: argparse.Namespace,
    n: int,
    rate: float,
    edits: int,
    document_id: str,
    auth_token: str | None = None,
) -> Workload:
    common: dict[str, Any] = {
        "pattern": args.pattern,
        "lag_rounds": lag_rounds(rate, args.lag_ms),
        "seed": args.seed,
        "document_id": document_id,
    }
    if library == PYCRDT:
        return y_workload(n, edits, **common)
    return crdt_workload(n, edits, auth_token=auth_token, **common)


def one_run(
    library: str,
    args: argparse.Namespace,
    n: int,
    rate: float,
    seconds: float,
    document_id: str = "bench-doc",
    servers: Servers | None = None,
    label: str | None = None,
    counters: dict[str, Any] | None = None,
) -> LoadRun:
    """One load: precompute, (start a server), run the generator, check the server's state."""
    edits = max(1, min(MAX_EDITS_PER_CLIENT, round(rate * seconds)))
    own = servers is None
    if servers is None:
        servers = Servers(library, args, max(1000, n + 100)).__enter__()
    try:
        token = servers.token(document_id)
        workload = build_workload(library, args, n, rate, edits, document_id, token)
        urls = servers.urls(document_id, n)
        generator = Generator(
            workload, urls, servers.processes, workers=args.workers, ca_file=servers.ca_file
        )
        run = generator.run_load(
            rate, library, drain_timeout=args.drain, check_url=urls[0], counters=counters
        )
        run.other_cpu = max(0.0, run.other_cpu - run.counters.get("redis CPU", 0.0))
        run.judge(args.limits)
        if not run.failure and not all(p.alive() for p in servers.processes):
            # After the figures were taken: say so, keep them.
            run.notes.append("the server process exited once the clients left")
        run.label = label or library
        run.build_seconds = workload.build_seconds
        run.server_description = servers.describe()
        return run
    finally:
        if own:
            servers.__exit__()


# ----------------------------------------------------------------- report


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def report(runs: list[LoadRun], args: argparse.Namespace, ratio: str = "ours/theirs") -> int:
    """Print the runs side by side; a saturated or failed run is refused. Exit status."""
    status = 0
    shown: list[LoadRun] = []
    for run in runs:
        if run.failure:
            print(f"\n{run.label}: RUN FAILED: {run.failure}")
            status = 1
        elif run.saturated:
            print(
                f"\n{run.label}: REFUSED: the generator was saturated or starved of CPU, so "
                "its figures would measure the generator, not the server:"
            )
            for reason in run.saturated:
                print(f"  - {reason}")
            print(
                f"  (timings withheld; not timing-dependent: deliveries {run.delivered:,} / "
                f"{run.expected:,}, server holds every sent edit: {run.final_check})"
            )
            print(
                "  (indicative only, the server's batching depends on timing: server CPU "
                f"{run.server_cpu:.2f} s, bytes server -> clients {fmt_bytes(run.bytes_received)};"
                " errors received: "
                + (", ".join(f"{k} {v:,}" for k, v in sorted(run.errors_in.items())) or "none")
                + "; frames received by clients: "
                + (", ".join(f"{k} {v:,}" for k, v in sorted(run.messages_in.items())) or "-")
                + ")"
            )
            advice = (
                f"rerun with --workers {run.workers + 1} or a lower load"
                if run.worker_cpu_max > args.limits.worker_cpu
                else "rerun when the machine is quieter"
            )
            print(
                f"  (generator CPU {run.generator_cpu:.2f} s over {run.window:.1f} s; other "
                f"processes on the machine {run.other_cpu:.2f} s; {advice})"
            )
            status = 3
        else:
            shown.append(run)
    if not shown:
        return status
    two = len(shown) == 2
    header = ["figure", *(r.label for r in shown)] + ([ratio] if two else [])
    rows: list[list[str]] = []

    def add(label: str, cells: list[str], values: list[float | None] | None = None) -> None:
        row = [label, *cells]
        if two:
            row.append(fmt_ratio(values[0], values[1]) if values else "")
        rows.append(row)

    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", None)):
        add(
            f"propagation {name}",
            [ms(r.p(fraction)) for r in shown],
            [r.p(fraction) for r in shown],
        )
    for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", None)):
        add(
            f"ack latency {name}",
            [ms(r.pct(r.ack_latencies, fraction)) if r.proto == CRDT else "n/a" for r in shown],
        )
    add("edits sent / acked", [f"{r.edits_sent:,} / {r.edits_acked:,}" for r in shown])
    add("deliveries received / expected", [f"{r.delivered:,} / {r.expected:,}" for r in shown])
    add("edits that reached every client", [f"{r.delivered_to_all:,}" for r in shown])
    add(
        "duplicate / unknown / unreadable",
        [f"{r.duplicates:,} / {r.unknown:,} / {r.unparsed:,}" for r in shown],
    )
    add("server holds every sent edit (window end)", [r.final_check for r in shown])
    add(
        "server CPU in the window",
        [f"{r.server_cpu:.2f} s" for r in shown],
        [r.server_cpu for r in shown],
    )
    add("load window (first send to drained)", [f"{r.window:.1f} s" for r in shown])
    add(
        "server RSS at start / peak",
        [f"{fmt_bytes(r.server_rss_start)} / {fmt_bytes(r.server_rss_peak)}" for r in shown],
        [float(r.server_rss_peak) for r in shown],
    )
    add(
        "bytes clients -> server",
        [fmt_bytes(r.bytes_sent) for r in shown],
        [float(r.bytes_sent) for r in shown],
    )
    add(
        "bytes server -> clients",
        [fmt_bytes(r.bytes_received) for r in shown],
        [float(r.bytes_received) for r in shown],
    )
    add(
        "generator CPU (all processes)",
        [f"{r.generator_cpu:.2f} s" for r in shown],
    )
    add("generator busiest worker", [f"{r.worker_cpu_max:.2f} cores" for r in shown])
    add(
        "generator loop lag p99 / max",
        [f"{ms(r.pct(r.loop_lag, 0.99))} / {ms(r.pct(r.loop_lag, None))}" for r in shown],
    )
    add(
        "sends late p99 / max",
        [f"{ms(r.pct(r.lateness, 0.99))} / {ms(r.pct(r.lateness, None))}" for r in shown],
    )
    add("other processes' CPU in the window", [f"{r.other_cpu:.2f} s" for r in shown])
    add("clients connected / at the end", [f"{r.connected} / {r.still_connected}" for r in shown])
    add(
        "connect + handshake p50 / max",
        [
            f"{ms(r.pct(r.connect_seconds, 0.5))} / {ms(r.pct(r.connect_seconds, None))}"
            for r in shown
        ],
        [r.pct(r.connect_seconds, 0.5) for r in shown],
    )
    add(
        "errors received",
        [", ".join(f"{k} {v:,}" for k, v in sorted(r.errors_in.items())) or "-" for r in shown],
    )
    add("frames precomputed in", [f"{r.build_seconds:.1f} s" for r in shown])
    if any("redis round trips" in r.counters for r in shown):
        add(
            "Redis round trips per edit",
            [
                f"{r.counters['redis round trips'] / max(1, r.edits_sent):.2f}"
                if "redis round trips" in r.counters
                else "-"
                for r in shown
            ],
        )
    if any("redis commands" in r.counters for r in shown):
        add(
            "Redis commands per edit",
            [
                f"{r.counters['redis commands'] / max(1, r.edits_sent):.1f}"
                if "redis commands" in r.counters
                else "-"
                for r in shown
            ],
        )
        add(
            "Redis CPU in the window",
            [
                f"{r.counters['redis CPU']:.2f} s" if "redis CPU" in r.counters else "-"
                for r in shown
            ],
        )
    print()
    for r in shown:
        print(f"{r.label}: {r.server_description}")
    print_table(header, rows)
    for r in shown:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(r.messages_in.items()))
        print(f"{r.label} frames received by clients: {kinds or '-'}")
        for note in r.notes:
            print(f"{r.label}: note: {note}")
    ours = next((r for r in shown if r.label == OURS), None)
    if ours is not None:
        print_bars(ours, next((r for r in shown if r.label == PYCRDT), None), args)
    if ratio == REDIS_RATIO and len(shown) >= 2 and "redis" not in shown[-1].label:
        *spreads, single = shown
        p99s = single.p(0.99)
        for spread in spreads:
            p99r = spread.p(0.99)
            lost = spread.delivered != spread.expected or spread.final_check != "yes"
            print(
                f"bar (issue 10, {spread.label}): p99 across processes <= 2x the "
                f"single-process p99 ({ms(p99r)} vs {ms(p99s)}"
                + (f", {p99r / p99s:.2f}x" if p99r is not None and p99s else "")
                + "), no message lost: "
                + ok(p99r is not None and p99s is not None and p99r <= 2 * p99s and not lost)
            )
    if two and ratio == SECURED_RATIO:
        secured, plain = shown
        p99s, p99p = secured.p(0.99), plain.p(0.99)
        print(
            "bar (issue 8): p99 with TLS and tokens within 1.3x of the plain run: "
            + ok(p99s is not None and p99p is not None and p99s <= 1.3 * p99p)
        )
    return status


def print_bars(ours: LoadRun, theirs: LoadRun | None, args: argparse.Namespace) -> None:
    """Issue 12's bars that apply to this run's shape (met / NOT met)."""
    p99 = ours.p(0.99)
    complete = ours.delivered == ours.expected and ours.final_check == "yes"
    scale = 20.0 / args.seconds  # the bars are for 20 s runs
    lines: list[str] = []
    if ours.n == 50 and args.pattern == "random" and args.rate == 10:
        lines.append(
            f"N=50 random: p99 <= 50 ms: {ok(p99 is not None and p99 <= 0.050)}; server CPU "
            f"<= 8 s per 20 s: {ok(ours.server_cpu * scale <= 8.0)} "
            f"({ours.server_cpu * scale:.1f} s scaled); bytes to clients <= 20 MB per 20 s: "
            f"{ok(ours.bytes_received * scale <= 20e6)}; every edit delivered: {ok(complete)}"
        )
    if ours.n == 50 and args.pattern == "append":
        lines.append(f"N=50 append: p99 <= 100 ms: {ok(p99 is not None and p99 <= 0.100)}")
    if ours.n == 10 and args.rate == 10:
        lines.append(
            f"N=10: server CPU <= 1.5 s per 20 s: {ok(ours.server_cpu * scale <= 1.5)} "
            f"({ours.server_cpu * scale:.2f} s scaled)"
        )
    if (
        theirs is not None
        and theirs.server_cpu
        and ours.n == 50
        and args.pattern == "random"
        and args.rate == 10
    ):
        # The issue gives this ratio beside the N=50 CPU bar only ("<= 8 s,
        # about half of pycrdt-websocket's"); at N=10 its bar is 1.5 s alone.
        lines.append(
            f"N=50 random: server CPU about half of pycrdt-websocket's or less: "
            f"{ok(ours.server_cpu <= 0.5 * theirs.server_cpu)} "
            f"({ours.server_cpu / theirs.server_cpu:.2f}x)"
        )
    for line in lines:
        print(f"bar (issue 12, {args.registry} registry): {line}")


def ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


# ----------------------------------------------------------------- modes


def libraries(args: argparse.Namespace) -> list[str]:
    return [OURS, PYCRDT] if args.compare == PYCRDT else [OURS]


def mode_load(args: argparse.Namespace) -> int:
    raise_fd_limit(args.clients * 4 + 256)
    print(
        f"load: {args.clients} clients x {args.rate:g} edits/s x {args.seconds:g} s on one "
        f"document, one character per edit, pattern {args.pattern}"
        + (f" (replicas {args.lag_ms:g} ms behind)" if args.pattern == "random" else "")
        + f"; {args.workers} generator processes; registry {args.registry}"
    )
    if args.redis is not None:
        return load_redis(args)
    if args.tls or args.auth:
        # Issue 8: the same load with TLS and/or tokens, next to the plain run.
        name = "+".join(part for part, on in (("tls", args.tls), ("auth", args.auth)) if on)
        runs = []
        for label, tls, auth in ((f"{OURS} {name}", args.tls, args.auth), (f"{OURS} plain", 0, 0)):
            print(f"running {label} ...", flush=True)
            with Servers(OURS, args, max(1000, args.clients + 100), tls=tls, auth=auth) as srv:
                runs.append(
                    one_run(
                        OURS, args, args.clients, args.rate, args.seconds, servers=srv, label=label
                    )
                )
        return report(runs, args, SECURED_RATIO)
    runs = []
    for library in libraries(args):
        print(f"running {library} ...", flush=True)
        runs.append(one_run(library, args, args.clients, args.rate, args.seconds))
    return report(runs, args)


def load_redis(args: argparse.Namespace) -> int:
    """Issue 10: the load with clients spread over --servers processes on one Redis, next
    to one process with the --registry store (SQLite by default)."""
    local = LocalRedis() if args.redis == "local" else None
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(local).url if local is not None else args.redis
        pid = local.popen.pid if local is not None and local.popen is not None else None
        print(
            f"Redis at {url}"
            + (
                " (a redis-server started for this run: AOF on, fsync every second)"
                if local
                else ""
            )
        )
        # A fresh document per run: a Redis given by URL may hold earlier runs' documents.
        document = f"bench-{os.getpid()}-{int(time.time())}"
        runs = []
        for count in args.servers:
            label = f"{OURS} redis x{count}"
            print(f"running {label} ... ({loadavg()})", flush=True)
            with Servers(
                OURS, args, max(1000, args.clients + 100), redis_url=url, count=count
            ) as srv:
                runs.append(
                    one_run(
                        OURS,
                        args,
                        args.clients,
                        args.rate,
                        args.seconds,
                        f"{document}-x{count}",
                        servers=srv,
                        label=label,
                        counters=redis_counters(url, pid, srv),
                    )
                )
        label = f"{OURS} {args.registry} x1"
        print(f"running {label} ... ({loadavg()})", flush=True)
        with Servers(OURS, args, max(1000, args.clients + 100)) as srv:
            runs.append(
                one_run(OURS, args, args.clients, args.rate, args.seconds, servers=srv, label=label)
            )
    print(f"after the runs: {loadavg()}")
    return report(runs, args, REDIS_RATIO)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def servers_list(value: str) -> tuple[int, ...]:
    """``--servers``: 1, 2 or 3, or several of them ("1,2,3"), each run in turn."""
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not 1, 2, 3 or a list of them: {value!r}") from None
    if not counts or any(count not in (1, 2, 3) for count in counts):
        raise argparse.ArgumentTypeError(f"not 1, 2, 3 or a list of them: {value!r}")
    return counts


def mode_ramp(args: argparse.Namespace) -> int:
    """Raise the rate at 10 clients until p99 > 100 ms, an edit is lost or the generator
    saturates."""
    n = 10
    raise_fd_limit(n * 4 + 256)
    rates = [r for r in RAMP_RATES if r <= args.ramp_max]
    print(
        f"ramp: {n} clients, {args.ramp_seconds:g} s per step, rates per client "
        f"{', '.join(map(str, rates))}; a step passes with p99 <= {args.ramp_p99:g} ms and "
        f"every edit delivered; registry {args.registry}"
    )
    status = 0
    for library in libraries(args):
        best = 0.0
        verdict = "every step passed (raise --ramp-max)"
        with Servers(library, args, 1000) as servers:
            for step, rate in enumerate(rates):
                run = one_run(
                    library, args, n, rate, args.ramp_seconds, f"ramp-{step}", servers=servers
                )
                p99 = run.p(0.99)
                passed = (
                    not run.failure
                    and not run.saturated
                    and run.delivered == run.expected
                    and p99 is not None
                    and p99 <= args.ramp_p99 / 1000.0
                )
                print(
                    f"  {library} {rate * n:>5} edits/s: p50 {ms(run.p(0.5))} p99 {ms(p99)} "
                    f"delivered {run.delivered:,}/{run.expected:,} server CPU "
                    f"{run.server_cpu / max(run.window, 1e-9):.2f} cores, generator "
                    f"{run.generator_cpu / max(run.window, 1e-9):.2f} cores (busiest worker "
                    f"{run.worker_cpu_max:.2f}), others {run.other_cpu / max(run.window, 1e-9):.2f}"
                    f" cores{' FAILED ' + run.failure if run.failure else ''}",
                    flush=True,
                )
                if run.saturated:
                    verdict = (
                        "stopped: the generator saturated or starved ("
                        + "; ".join(run.saturated)
                        + ")"
                    )
                    status = 3
                    break
                if not passed:
                    verdict = f"stopped at {rate * n} edits/s"
                    break
                best = rate * n
        print(f"{library}: sustained {best:,.0f} edits/s at {n} clients ({verdict})")
        if library == OURS:
            print(f"bar (issue 12): sustained >= 2,000 edits/s at 10 clients: {ok(best >= 2000)}")
    return status


def mode_idle(args: argparse.Namespace) -> int:
    raise_fd_limit(args.idle * 2 + 512)
    print(f"idle: {args.idle:,} connections on one document, held {args.idle_hold:g} s")
    table: list[tuple[str, dict[str, Any]]] = []
    for library in libraries(args):
        workload = build_workload(library, args, args.idle, 1.0, 0, "idle-doc")
        with Servers(library, args, args.idle + 100) as servers:
            generator = Generator(
                workload, servers.urls("idle-doc", args.idle), servers.processes, workers=2
            )
            table.append((library, generator.run_idle(args.idle_hold)))
    header = ["figure", *(name for name, _ in table)] + (["ours/theirs"] if len(table) == 2 else [])
    rows = []

    def add(label: str, key: Any, fmt: Any, ratio: bool = False) -> None:
        values = [key(f) for _, f in table]
        row = [label, *(fmt(v) for v in values)]
        if len(table) == 2:
            row.append(fmt_ratio(values[0], values[1]) if ratio else "")
        rows.append(row)

    add("connections handshaken", lambda f: f["connected"], lambda v: f"{v:,}")
    add("still connected after the hold", lambda f: f["still_connected"], lambda v: f"{v:,}")
    add("server RSS before", lambda f: f["rss_before"], fmt_bytes)
    add("server RSS with the connections", lambda f: f["rss_after"], fmt_bytes, True)
    add(
        "server RSS per connection",
        lambda f: (f["rss_after"] - f["rss_before"]) / max(1, f["connected"]),
        fmt_bytes,
        True,
    )
    add("server peak RSS", lambda f: f["rss_peak"], fmt_bytes, True)
    add("time to connect all", lambda f: f["connect_seconds"], lambda v: f"{v:.1f} s")
    add("server CPU during the hold", lambda f: f["hold_cpu"], lambda v: f"{v:.2f} s")
    print()
    print_table(header, rows)
    for name, figures in table:
        if figures["errors"]:
            print(f"{name} connection errors (first): {figures['errors'][:3]}")
    ours = table[0][1]
    per = (ours["rss_after"] - ours["rss_before"]) / max(1, ours["connected"])
    print(
        "bar (issue 12): idle connections <= 15 KiB each at 2,000: "
        + ok(per <= 15 * 1024 and ours["still_connected"] >= 2000)
        + ("" if args.idle >= 2000 else " (run with --idle 2000)")
    )
    return 0


def not_available(what: str, option: str, issue: str) -> int:
    print(
        f"{what} is not available yet: this checkout's server has no {option} option "
        f"({issue}). The flag will be wired when that code is on main."
    )
    return 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10, help="writers (10)")
    parser.add_argument("--rate", type=float, default=10.0, help="edits/s per client (10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of editing (5)")
    parser.add_argument("--pattern", choices=("random", "append"), default="random")
    parser.add_argument(
        "--lag-ms", type=float, default=200.0, help="random: how stale a client's replica is"
    )
    parser.add_argument("--registry", choices=("memory", "sqlite"), default="sqlite")
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=None,
        help="SQLite: the server's group-commit interval, seconds (its default: 0.025)",
    )
    parser.add_argument("--compare", choices=(PYCRDT,), default=None)
    parser.add_argument("--workers", type=int, default=2, help="generator processes (2)")
    parser.add_argument("--drain", type=float, default=10.0, help="longest wait after sends")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ramp", action="store_true", help="sustained edits/s at 10 clients")
    parser.add_argument("--ramp-seconds", type=float, default=5.0, help="seconds per ramp step")
    parser.add_argument("--ramp-p99", type=float, default=100.0, help="ramp limit, ms (100)")
    parser.add_argument("--ramp-max", type=float, default=300.0, help="highest rate per client")
    parser.add_argument("--idle", type=int, default=0, help="hold N idle connections instead")
    parser.add_argument("--idle-hold", type=float, default=5.0, help="seconds to hold them")
    parser.add_argument("--tls", action="store_true", help="serve wss:// (issue 8)")
    parser.add_argument("--auth", action="store_true", help="require tokens (issue 8)")
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="Redis backplane (issue 10): redis://HOST:PORT/DB, or 'local' to start one",
    )
    parser.add_argument(
        "--servers",
        type=servers_list,
        default=(1,),
        help="server processes on the Redis: 1, 2 or 3, or a list (1,2,3) run in turn",
    )
    parser.add_argument("--max-generator-cpu", type=float, default=GeneratorLimits.worker_cpu)
    parser.add_argument("--max-loop-lag-ms", type=float, default=20.0)
    parser.add_argument("--serve-pycrdt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 2 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be within 2..{MAX_CLIENTS}")
    if not 0 < args.rate <= 1000:
        parser.error("--rate must be within (0, 1000]")
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.ramp_seconds <= MAX_SECONDS:
        parser.error(f"--seconds and --ramp-seconds must be within (0, {MAX_SECONDS:g}]")
    if args.rate * args.seconds > MAX_EDITS_PER_CLIENT:
        parser.error(f"at most {MAX_EDITS_PER_CLIENT:,} edits per client")
    if not 0 <= args.idle <= MAX_IDLE:
        parser.error(f"--idle must be within 0..{MAX_IDLE}")
    if not 0 <= args.idle_hold <= MAX_SECONDS or not 0 < args.drain <= MAX_SECONDS:
        parser.error(f"--idle-hold and --drain must be within 0..{MAX_SECONDS:g}")
    if not 1 <= args.workers <= 16:
        parser.error("--workers must be within 1..16")
    if not 0 <= args.lag_ms <= 10_000:
        parser.error("--lag-ms must be within 0..10000")
    args.limits = GeneratorLimits(
        worker_cpu=args.max_generator_cpu,
        loop_lag_p99=args.max_loop_lag_ms / 1000.0,
        send_lateness_p99=args.max_loop_lag_ms / 1000.0,
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_pycrdt:
        return asyncio.run(serve_pycrdt())
    print(load_banner())
    if args.tls and not server_has_option("--tls-cert"):
        return not_available("--tls", "--tls-cert", "issue 8, the access helper")
    if args.auth and not server_has_option("--secret-file"):
        return not_available("--auth", "--secret-file", "issue 8, the access helper")
    if (args.tls or args.auth) and (args.compare or args.ramp or args.idle):
        print("--tls/--auth run the load next to a plain run; not with --compare/--ramp/--idle")
        return 2
    if args.redis is not None or max(args.servers) > 1:
        if not server_has_option("--redis"):
            return not_available("--redis/--servers", "--redis", "issue 10, the redis helper")
        if args.redis is None:
            print("--servers needs --redis URL (or --redis local)")
            return 2
        if args.compare or args.ramp or args.idle or args.tls or args.auth:
            print("--redis runs the load next to a single process; not with other modes")
            return 2
    if args.idle:
        return mode_idle(args)
    if args.ramp:
        return mode_ramp(args)
    return mode_load(args)


if __name__ == "__main__":
    sys.exit(main())
