"""Helpers shared by the benchmark scripts: machine facts, statistics, tables, memory,
and the load generator of ``sync_load.py`` and ``hostile_load.py``.

Nothing here asserts anything: benchmarks print figures for people to read.

The load generator (second half of this file) is built so that it cannot be
the bottleneck of what it measures:

- every client's frames are computed before the run, with the libraries'
  own encoders (``crdt_sync``'s message encoder and ``encode_changes``;
  pycrdt's update and y-protocol message functions), so a protocol change
  made in the library is followed without touching the generator;
- the clients are raw WebSocket connections holding no CRDT: a client sends
  its precomputed frames on a fixed schedule and, for every frame it
  receives, reads only the ids of the edits it carries (the change batch's
  header for crdt_sync, the struct headers of a Yjs update) and stamps them;
- the clients are spread over worker processes (``multiprocessing``, spawn),
  each with its own event loop; all stamps come from ``time.perf_counter``
  (CLOCK_MONOTONIC on Linux: one clock for every process);
- each worker measures its own CPU time, the lag of its event loop and how
  late its sends left, so a run where the generator was saturated can be
  refused instead of reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

__all__ = [
    "CRDT",
    "YJS",
    "ClientPlan",
    "Generator",
    "LoadRun",
    "Row",
    "ServerProcess",
    "Workload",
    "crdt_workload",
    "fmt_bytes",
    "fmt_ms",
    "fmt_ratio",
    "fmt_s",
    "handshake_request",
    "load_banner",
    "machine_banner",
    "max_rss_bytes",
    "median_spread",
    "our_server_command",
    "percentile",
    "print_table",
    "raise_fd_limit",
    "rss_bytes",
    "start_server",
    "y_workload",
]

#: A table row: a label followed by already-formatted cells.
Row = Sequence[str]


def machine_banner() -> str:
    """One line naming the machine, the interpreter and the date (for pasted results)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now} | {platform.machine()} {os.cpu_count()} CPUs | "
        f"{platform.python_implementation()} {platform.python_version()} | "
        f"{platform.system()} {platform.release()}"
    )


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    return statistics.median(values), min(values), max(values)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence (0 < fraction <= 1).

    Nearest rank (no interpolation) so p99 and max are always observed values.
    """
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * fraction // 1)))
    return sorted_values[int(rank) - 1]


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 10 * 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if abs(n) >= 10 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def fmt_ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def print_table(header: Row, rows: Sequence[Row], file: TextIO | None = None) -> None:
    """Print a plain-text table with columns padded to their widest cell."""
    out = sys.stdout if file is None else file
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Row) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print(line(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print(line(row), file=out)


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes (Linux /proc, else peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# =====================================================================================
# The load generator (sync_load.py, hostile_load.py)
# =====================================================================================

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CRDT = "crdt_sync"
YJS = "y-protocol"
LISTENING = re.compile(rb"listening on wss?://[^ ]*:(\d+)/")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
LETTERS = "abcdefghijklmnopqrstuvwxyz"

#: Bounds on anything a typo could blow up.
MAX_CLIENTS = 500
MAX_EDITS_PER_CLIENT = 20_000
MAX_WORKERS = 16
CONNECT_TIMEOUT = 60.0
SERVER_START_TIMEOUT = 30.0


def load_banner() -> str:
    """The machine line plus the load average (2 shared cores: say so next to figures)."""
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    shared = " (this machine is shared: other engineers' jobs run too)" if cores <= 2 else ""
    return (
        f"{machine_banner()}\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
        f"{cores} cores{shared} | 127.0.0.1 only"
    )


def raise_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards ``needed`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"warning: open files limited to {target} (hard limit); asked {needed}")


# ----------------------------------------------------------------- /proc readings


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        data = stat.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_bytes(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 if absent."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def client_ssl_context(ca_file: str) -> Any:
    """A client TLS context that trusts exactly ``ca_file`` (the benchmark's own
    self-signed server certificate), names checked."""
    import ssl

    return ssl.create_default_context(cafile=ca_file)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------- server processes


class ServerProcess:
    """A server in a child process; its CPU time and memory are read from /proc."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], port: int, stderr: IO[bytes]):
        self.name = name
        self.popen = popen
        self.port = port
        self._stderr = stderr
        self.drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_status_bytes(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        """Peak RSS over the process's life (VmHWM)."""
        return proc_status_bytes(self.pid, "VmHWM")

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.flush()
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout)
        if self.drain is not None:
            self.drain.join(5.0)
        if self.popen.stdout is not None and (self.drain is None or not self.drain.is_alive()):
            self.popen.stdout.close()
        self._stderr.close()


def start_server(
    command: Sequence[str], name: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``command`` and wait (bounded) for its ``listening on ws://...:PORT/`` line."""
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ServerProcess.stop)
    popen = subprocess.Popen(
        list(command),
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    assert popen.stdout is not None  # we asked for a pipe
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    seen = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{name} did not print its listening line in time")
            ready, _, _ = select.select([popen.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(popen.stdout.fileno(), 4096)
            if not chunk:
                stderr.seek(0)
                raise RuntimeError(f"{name} exited: {stderr.read().decode(errors='replace')}")
            seen += chunk
            found = LISTENING.search(seen)
            if found:
                # Keep reading its stdout so it can never block on a full pipe.
                drain = threading.Thread(target=popen.stdout.read, daemon=True)
                drain.start()
                server = ServerProcess(name, popen, int(found.group(1)), stderr)
                server.drain = drain
                return server
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        stderr.close()
        raise


_HELP: dict[str, str] = {}


def server_help() -> str:
    """``python -m server --help`` of this checkout (cached): which options exist."""
    if "text" not in _HELP:
        done = subprocess.run(
            [sys.executable, "-m", "server", "--help"],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        _HELP["text"] = done.stdout
    return _HELP["text"]


#: Server options that, when this checkout's server has them, keep its protective
#: limits (server/trust.py) out of a loopback load test's way: one address plays
#: every user, and the ramp sends up to 300 frames/s per client. The value None
#: means a flag without argument.
PERMISSIVE_OPTIONS: dict[str, str | None] = {
    "--no-auth": None,
    "--max-connections-per-ip": "1000000",
    "--messages-per-second": "1000000",
    "--message-burst": "1000000",
    "--bytes-per-second": "1000000000",
    "--byte-burst": "1000000000",
    "--documents-per-ip-per-minute": "1000000",
}


def server_has_option(option: str) -> bool:
    return re.search(rf"(^|\s){re.escape(option)}\b", server_help()) is not None


def our_server_command(
    registry: str,
    db_path: Path | None,
    max_connections: int,
    extra: Sequence[str] = (),
    *,
    auth: bool = False,
    redis_url: str | None = None,
    permissive: bool = True,
) -> list[str]:
    """Our server on 127.0.0.1, any free port, with the ``memory``, ``sqlite`` or (with
    ``redis_url``) Redis registry; with ``auth`` it requires tokens (``extra`` then
    names its ``--secret-file``). ``permissive``: lift the per-address and per-connection
    limits of :data:`PERMISSIVE_OPTIONS` (False: only ``--no-auth``, the server's own
    limits stay, as a hostile-load test needs)."""
    command = [sys.executable, "-m", "server", "--host", HOST, "--port", "0"]
    if redis_url is not None:
        command += ["--redis", redis_url]
    elif registry == "memory":
        command.append("--memory")
    else:
        if db_path is None:
            raise ValueError("the sqlite registry needs a database path")
        command += ["--db", str(db_path)]
    command += ["--log-level", "WARNING", "--max-connections", str(max_connections)]
    command.append("--exit-with-parent")
    for option, value in PERMISSIVE_OPTIONS.items():
        if (auth and option == "--no-auth") or (not permissive and option != "--no-auth"):
            continue
        if option not in extra and server_has_option(option):
            command += [option] if value is None else [option, value]
    return [*command, *extra]


# ----------------------------------------------------------------- the workload


@dataclass
class ClientPlan:
    """Everything one simulated client sends, computed before the run."""

    index: int
    #: crdt_sync: the peer id; y-protocol: the Yjs client id as text.
    ident: str
    #: The first frame (crdt_sync: HandshakeRequest; y-protocol: sync step 1).
    hello: bytes
    #: frames[k] carries edit k (one inserted character).
    frames: list[bytes]
    #: Op counter (crdt_sync) or Yjs clock of edit 0; edit k is ``first + k``.
    first: int = 0
    #: crdt_sync: the replica secret sent in the handshake (protocol version 2).
    secret: bytes = b""


@dataclass
class Workload:
    proto: str
    document_id: str
    pattern: str
    lag_rounds: int
    edits: int
    clients: list[ClientPlan]
    build_seconds: float = 0.0
    #: y-protocol: the sync step 2 a client answers the server's step 1 with.
    y_step2: bytes = b""
    #: crdt_sync: the header readers agree with the library (else it decodes every frame).
    fast_reader: bool = True
    #: crdt_sync: the invite token every handshake carries (None: the server has no auth).
    auth_token: str | None = None

    @property
    def n(self) -> int:
        return len(self.clients)

    def ident_index(self) -> dict[str, int]:
        return {plan.ident: plan.index for plan in self.clients}


def handshake_request(
    document_id: str, peer_id: str, secret: bytes, auth_token: str | None = None
) -> bytes:
    """The HandshakeRequest frame of one client, built by the library's encoder.

    This is the one place that knows the handshake's fields: the protocol is
    moving to version 2 (replica secret, compression list, role), so fields are
    filled only when this checkout's ``HandshakeRequest`` has them. No version
    vector (the client holds nothing) and no compression.
    """
    from crdt_sync import VersionVector
    from crdt_sync.sync.messages import HandshakeRequest, encode_message

    names = {f.name for f in dataclasses.fields(HandshakeRequest)}
    kwargs: dict[str, Any] = {
        "document_id": document_id,
        "peer_id": peer_id,
        "version_vector": VersionVector(),
        "display_name": "bench",
        "auth_token": auth_token,
    }
    if "replica_secret" in names:
        kwargs["replica_secret"] = secret
    if "compressions" in names:
        kwargs["compressions"] = ("none",)
    elif "compression" in names:
        kwargs["compression"] = "none"
    return encode_message(HandshakeRequest(**kwargs))


def _seeded_peer(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def crdt_workload(
    n: int,
    edits: int,
    *,
    pattern: str = "random",
    lag_rounds: int = 2,
    seed: int = 1,
    document_id: str = "bench-doc",
    auth_token: str | None = None,
    base: Any = None,
) -> Workload:
    """Precompute ``n`` clients x ``edits`` one-character inserts as Changes frames.

    ``random``: client s keeps its own replica; before its edit k the replica
    imports every other client's edits k - lag_rounds and older (what it would
    have seen ``lag_rounds`` edit intervals ago), then inserts one character at
    a uniformly random position of it (seeded), so each change names what that
    client would have seen. ``append``: each client's replica holds only its
    own edits and it appends at its end: every insert is concurrent with every
    other client's, at the document's end (the worst case for integration).
    ``base`` (a ``crdt_sync.Snapshot``): every replica starts from that state (the
    document the server already holds), so edits land among its text.
    """
    from crdt_sync import Change, CRDTDocument, CRDTTextHandler
    from crdt_sync.sync.messages import Changes, encode_message

    t0 = time.perf_counter()
    rng = random.Random(seed)
    peers = [_seeded_peer(rng) for _ in range(n)]
    secrets = [rng.randbytes(32) for _ in range(n)]
    if base is None:
        docs = [CRDTDocument(peer_id=p) for p in peers]
    else:
        docs = [CRDTDocument.from_snapshot(base, peer_id=p) for p in peers]
    texts = [CRDTTextHandler(d, "text") for d in docs]
    boxes: list[list[Change]] = [[] for _ in range(n)]
    for doc, box in zip(docs, boxes, strict=True):
        doc.on_change(box.append)
    frames: list[list[bytes]] = [[] for _ in range(n)]
    rounds: list[list[Change] | None] = []
    for k in range(edits):
        if pattern == "random" and k >= lag_rounds:
            seen = rounds[k - lag_rounds]
            assert seen is not None
            for s in range(n):
                docs[s].import_changes([c for j, c in enumerate(seen) if j != s])
            rounds[k - lag_rounds] = None
        row: list[Change] = []
        for s in range(n):
            text = texts[s]
            at = rng.randint(0, len(text)) if pattern == "random" else len(text)
            text.insert(at, LETTERS[(s + k) % 26])
            if len(boxes[s]) != 1:
                raise RuntimeError(f"one insert made {len(boxes[s])} changes")
            change = boxes[s].pop()
            if change.peer != peers[s] or change.counter != k or change.size != 1:
                raise RuntimeError(f"unexpected change {change!r} for client {s} edit {k}")
            frames[s].append(encode_message(Changes((change,))))
            row.append(change)
        rounds.append(row if pattern == "random" else None)
    plans = [
        ClientPlan(
            s,
            peers[s],
            handshake_request(document_id, peers[s], secrets[s], auth_token),
            frames[s],
            0,
            secrets[s],
        )
        for s in range(n)
    ]
    workload = Workload(CRDT, document_id, pattern, lag_rounds, edits, plans)
    workload.auth_token = auth_token
    workload.build_seconds = time.perf_counter() - t0
    workload.fast_reader = check_crdt_readers(workload)
    return workload


def y_workload(
    n: int,
    edits: int,
    *,
    pattern: str = "random",
    lag_rounds: int = 2,
    seed: int = 1,
    document_id: str = "bench-doc",
) -> Workload:
    """The same workload as pycrdt updates in y-protocol frames (pycrdt's own encoders)."""
    from pycrdt import Doc, Text, create_sync_message, create_update_message, handle_sync_message

    t0 = time.perf_counter()
    rng = random.Random(seed)
    ids: list[int] = []
    while len(ids) < n:  # random 32-bit client ids, as Yjs picks them
        candidate = rng.getrandbits(32)
        if candidate and candidate not in ids:
            ids.append(candidate)
    docs = [Doc(client_id=cid) for cid in ids]
    texts = [doc.get("text", type=Text) for doc in docs]
    frames: list[list[bytes]] = [[] for _ in range(n)]
    rounds: list[list[bytes] | None] = []
    for k in range(edits):
        if pattern == "random" and k >= lag_rounds:
            seen = rounds[k - lag_rounds]
            assert seen is not None
            for s in range(n):
                for j, update in enumerate(seen):
                    if j != s:
                        docs[s].apply_update(update)
            rounds[k - lag_rounds] = None
        row: list[bytes] = []
        for s in range(n):
            doc, text = docs[s], texts[s]
            before = doc.get_state()
            at = rng.randint(0, len(text)) if pattern == "random" else len(text)
            with doc.transaction():
                text.insert(at, LETTERS[(s + k) % 26])
            update = doc.get_update(before)
            frames[s].append(create_update_message(update))
            row.append(update)
        rounds.append(row if pattern == "random" else None)
    empty = Doc()
    hello = create_sync_message(empty)
    step2 = handle_sync_message(hello[1:], Doc())
    plans = [ClientPlan(s, str(ids[s]), hello, frames[s], 0) for s in range(n)]
    workload = Workload(YJS, document_id, pattern, lag_rounds, edits, plans, y_step2=step2 or b"")
    workload.build_seconds = time.perf_counter() - t0
    for plan in plans:  # the struct walker must read back exactly what was made
        for k, frame in enumerate(plan.frames[:50]):
            got = y_update_ids(frame, 3)
            if got != [(int(plan.ident), k, 1)]:
                raise RuntimeError(f"y-protocol frame reader disagrees: {got} for edit {k}")
    return workload


# ----------------------------------------------------------------- reading frames


def _uv(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at ``pos``: (value, position after it)."""
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


_CS = b"CS"


def crdt_change_ids_library(frame: bytes) -> list[tuple[bytes, int]]:
    """The op ids a Changes frame carries, by the library's decoder (the slow path)."""
    from crdt_sync.sync.messages import Changes, decode_message

    message = decode_message(frame, max_size=1 << 30)
    if not isinstance(message, Changes):
        return []
    return [
        (change.peer.encode(), change.counter + i)
        for change in message.changes
        for i in range(change.size)
    ]


_PEER_TEXT: dict[bytes, bytes] = {}


def _peer_at(data: bytes, pos: int) -> tuple[bytes, int]:
    """A peer id at ``pos`` as ``crdt_sync.codec.Writer.peer`` writes it (byte 0 then
    16 raw bytes, or a ``str``): (its UTF-8 text, position after it)."""
    if data[pos] == 0:
        raw = data[pos + 1 : pos + 17]
        text = _PEER_TEXT.get(raw)
        if text is None:
            text = _PEER_TEXT[raw] = str(uuid.UUID(bytes=raw)).encode()
        return text, pos + 17
    length, pos = _uv(data, pos)
    return data[pos : pos + length], pos + length


def _skip_ref(data: bytes, p: int) -> int:
    """Skip an op's origin (tag 0 none, 1 previous, 2 peer index + counter)."""
    tag = data[p]
    if tag == 2:
        _, p = _uv(data, p + 1)
        _, p = _uv(data, p)
        return p
    if tag > 2:
        raise ValueError("unknown reference tag")
    return p + 1


def crdt_change_ids(frame: bytes) -> list[tuple[bytes, int]]:
    """The op ids (peer as UTF-8, counter) of the edits a Changes frame carries, read
    from the change batch's rows.

    Read here when the batch is uncompressed change format version 3
    (``docs/encoding.md``) made of segments of one change each, each change's
    ops text inserts (what a relay of typing clients holds: one segment per
    client batch, joined); anything else goes to the library's decoder.
    :func:`check_crdt_readers` compares both on the precomputed frames (and on
    a joined relay) before any run.
    """
    if frame[4]:  # compressed body
        return crdt_change_ids_library(frame)
    _, p = _uv(frame, 5)
    if frame[p : p + 6] != b"CRDC\x03\x00":  # version 3, not compressed
        return crdt_change_ids_library(frame)
    segments, p = _uv(frame, p + 6)
    out = []
    for _ in range(segments):
        npeers, p = _uv(frame, p)
        peers = []
        for _ in range(npeers):
            peer, p = _peer_at(frame, p)
            peers.append(peer)
        nnames, p = _uv(frame, p)
        for _ in range(nnames):
            length, p = _uv(frame, p)
            p += length
        count, p = _uv(frame, p)
        if count != 1 or frame[p] != 0:  # several changes, or not a full row
            return crdt_change_ids_library(frame)
        p += 1 + 8  # kinds, stamps
        typing, p = _uv(frame, p)
        deleting, p = _uv(frame, p + 4 * typing)
        length, p = _uv(frame, p + 16 * deleting)  # the text column
        p += length
        flags = frame[p]
        if flags & 3:  # "same peer" or "next counter" on a segment's first change
            return crdt_change_ids_library(frame)
        index, p = _uv(frame, p + 1)
        counter, p = _uv(frame, p)
        out.append((peers[index], counter))
        if not flags & 4:  # deps listed
            ndeps, p = _uv(frame, p)
            for _ in range(2 * ndeps):
                _, p = _uv(frame, p)
        nops, p = _uv(frame, p)
        for _ in range(nops):
            if frame[p] != 1:  # not a text insert
                return crdt_change_ids_library(frame)
            _, p = _uv(frame, p + 1)  # handler name index
            p = _skip_ref(frame, _skip_ref(frame, p))
            length, p = _uv(frame, p)
            p += length
    if p != len(frame):
        return crdt_change_ids_library(frame)
    return out


def crdt_relay_ids_library(frame: bytes, dictionary: list[bytes]) -> list[tuple[bytes, int]]:
    """The op ids a Relay frame (protocol version 4) carries, by the library's decoder."""
    from crdt_sync.sync.messages import Relay, decode_message
    from crdt_sync.sync.relay import decode_relay

    message = decode_message(frame, max_size=1 << 30)
    if not isinstance(message, Relay):
        return []
    entries = [entry.decode("utf-8", "surrogatepass") for entry in dictionary]
    return [
        (change.peer.encode(), change.counter + i)
        for change in decode_relay(message.body, entries, 1 << 30)
        for i in range(change.size)
    ]


def crdt_relay_ids(frame: bytes, dictionary: list[bytes]) -> list[tuple[bytes, int]]:
    """The op ids (peer as UTF-8, counter) of the edits a Relay frame carries, read from
    its records (``docs/encoding.md``, "Relay records"): after the frame's time base,
    an insert record's peer (a dictionary reference) and counter, then its time
    stamp, handler name, origins and text skipped. Each record here is an insert
    record of one character naming peers by reference; a frame with any other
    record (a change, a batch, a literal peer) goes to the library's decoder, and
    so does a compressed frame."""
    if frame[4]:
        return crdt_relay_ids_library(frame, dictionary)
    count, p = _uv(frame, 5)
    if count:
        _, p = _uv(frame, p)  # the time base
    out = []
    for _ in range(count):
        if frame[p] != 3:  # not an insert record
            return crdt_relay_ids_library(frame, dictionary)
        ref, p = _uv(frame, p + 1)
        if not ref:  # a literal peer
            return crdt_relay_ids_library(frame, dictionary)
        counter, p = _uv(frame, p)
        out.append((dictionary[ref - 1], counter))
        _, p = _uv(frame, p)  # the time stamp: milliseconds after the base,
        _, p = _uv(frame, p)  # and its logical part
        ref, p = _uv(frame, p)  # the handler name
        if not ref:
            return crdt_relay_ids_library(frame, dictionary)
        for _ in range(2):  # the origins: none, previous, or a reference and a counter
            tag = frame[p]
            if tag == 2:
                ref, p = _uv(frame, p + 1)
                if not ref:
                    return crdt_relay_ids_library(frame, dictionary)
                _, p = _uv(frame, p)
            elif tag > 2:
                raise ValueError("unknown reference tag")
            else:
                p += 1
        length, p = _uv(frame, p)
        if length != 1:
            return crdt_relay_ids_library(frame, dictionary)
        p += length
    if p != len(frame):
        return crdt_relay_ids_library(frame, dictionary)
    return out


def crdt_dictionary_entries(frame: bytes, held: int) -> list[bytes]:
    """The entries a Dictionary frame (protocol version 4) adds to a connection that
    holds ``held`` of them, as UTF-8 (library decoder: one frame per new peer)."""
    from crdt_sync.sync.messages import Dictionary, decode_message

    message = decode_message(frame, max_size=1 << 30)
    if not isinstance(message, Dictionary) or message.first != held:
        raise ValueError("a dictionary delta that does not continue the dictionary")
    return [entry.encode("utf-8", "surrogatepass") for entry in message.entries]


def crdt_ack_library(frame: bytes, peer: bytes) -> int | None:
    """The counter an Ack frame acknowledges for ``peer`` (library decoder), None if no Ack."""
    from crdt_sync.sync.messages import Ack, decode_message

    message = decode_message(frame, max_size=1 << 30)
    if not isinstance(message, Ack):
        return None
    return int(message.version_vector.get(peer.decode(), 0))


def crdt_ack(frame: bytes, peer: bytes) -> int | None:
    """The same from the Ack's bytes: its version vector's entries, compared as bytes."""
    if frame[4]:
        return crdt_ack_library(frame, peer)
    count, p = _uv(frame, 5)
    for _ in range(count):
        name, p = _peer_at(frame, p)
        counter, p = _uv(frame, p)
        if name == peer:
            return counter
    return 0


def check_crdt_readers(workload: Workload) -> bool:
    """Whether the header readers agree with the library on this workload's frames (and
    on a batch of several changes and on an Ack); when not, the library decodes."""
    from crdt_sync import VersionVector
    from crdt_sync.changes import join_batches
    from crdt_sync.sync.messages import (
        Ack,
        Changes,
        decode_message,
        encode_changes_frame,
        encode_message,
    )

    sample = [f for plan in workload.clients for f in plan.frames[:20]]
    try:
        for frame in sample:
            if crdt_change_ids(frame) != crdt_change_ids_library(frame):
                return False
        several = [c for f in sample[:5] for c in _changes_of(decode_message(f), Changes)]
        if several:
            frame = encode_message(Changes(tuple(several)))
            if crdt_change_ids(frame) != crdt_change_ids_library(frame):
                return False
        # A relay joining several clients' batches (crdt_sync.changes.join_batches).
        batches = [_batch_of(f) for f in sample[:5]]
        joined = join_batches(batches) if all(batches) else None
        if joined is not None:
            frame = encode_changes_frame(joined)
            if crdt_change_ids(frame) != crdt_change_ids_library(frame):
                return False
        # A relay frame as the server makes it (protocol version 4), read with the
        # dictionary delta it comes after.
        from crdt_sync.sync.messages import encode_dictionary_frame, encode_relay_frame
        from crdt_sync.sync.relay import RelayDictionary, encode_records, time_base

        dictionary = RelayDictionary()
        messages = [decode_message(f) for f in sample[:5]]
        relayed = [m for m in messages if isinstance(m, Changes) and m.encoded]
        base = time_base(m.changes for m in relayed)
        parts = []
        count = 0
        for message in relayed:
            part, n = encode_records(message.changes, message.encoded or b"", dictionary, base)
            parts.append(part)
            count += n
        if parts:
            entries = crdt_dictionary_entries(encode_dictionary_frame(0, dictionary.entries), 0)
            frame = encode_relay_frame(count, base, parts)
            if crdt_relay_ids(frame, entries) != crdt_relay_ids_library(frame, entries):
                return False
        vv = VersionVector({plan.ident: plan.index + 3 for plan in workload.clients})
        ack = encode_message(Ack(vv))
        for plan in workload.clients:
            peer = plan.ident.encode()
            if crdt_ack(ack, peer) != crdt_ack_library(ack, peer):
                return False
    except Exception:
        return False
    return True


def _batch_of(frame: bytes) -> bytes:
    from crdt_sync.sync.messages import Changes, decode_message

    message = decode_message(frame)
    return message.encoded or b"" if isinstance(message, Changes) else b""


def _changes_of(message: Any, kind: type) -> tuple[Any, ...]:
    return tuple(message.changes) if isinstance(message, kind) else ()


def _y_skip_any(data: bytes, p: int) -> int:
    """Skip one lib0 ``any`` value."""
    tag = data[p]
    p += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return p
    if tag == 125:  # varint (signed: same byte layout)
        while data[p] & 0x80:
            p += 1
        return p + 1
    if tag == 124:  # float32
        return p + 4
    if tag in (123, 122):  # float64, bigint
        return p + 8
    if tag in (119, 116):  # string, Uint8Array
        length, p = _uv(data, p)
        return p + length
    if tag == 118:  # object
        count, p = _uv(data, p)
        for _ in range(count):
            length, p = _uv(data, p)
            p = _y_skip_any(data, p + length)
        return p
    if tag == 117:  # array
        count, p = _uv(data, p)
        for _ in range(count):
            p = _y_skip_any(data, p)
        return p
    raise ValueError(f"unknown lib0 any tag {tag}")


def y_update_ids(message: bytes, offset: int) -> list[tuple[int, int, int]]:
    """(client, first clock, length) of every item in the Yjs v1 update that starts
    at ``offset`` of ``message`` (after the y-protocol type bytes and its varint
    length is at ``offset - 1``... see the callers): the struct headers only."""
    p = offset
    groups, p = _uv(message, p)
    out: list[tuple[int, int, int]] = []
    for _ in range(groups):
        structs, p = _uv(message, p)
        client, p = _uv(message, p)
        clock, p = _uv(message, p)
        for _ in range(structs):
            info = message[p]
            p += 1
            ref = info & 0x1F
            if ref in (0, 10):  # GC, Skip
                length, p = _uv(message, p)
                clock += length
                continue
            if info & 0x80:  # left origin
                _, p = _uv(message, p)
                _, p = _uv(message, p)
            if info & 0x40:  # right origin
                _, p = _uv(message, p)
                _, p = _uv(message, p)
            if not info & 0xC0:  # parent
                is_key, p = _uv(message, p)
                if is_key == 1:
                    length, p = _uv(message, p)
                    p += length
                else:
                    _, p = _uv(message, p)
                    _, p = _uv(message, p)
                if info & 0x20:  # parent sub
                    length, p = _uv(message, p)
                    p += length
            length = 1
            if ref == 1:  # deleted
                length, p = _uv(message, p)
            elif ref == 2:  # JSON
                length, p = _uv(message, p)
                for _ in range(length):
                    size, p = _uv(message, p)
                    p += size
            elif ref in (3, 5):  # binary, embed
                size, p = _uv(message, p)
                p += size
            elif ref == 4:  # string: its length counts UTF-16 units
                size, p = _uv(message, p)
                text = message[p : p + size].decode("utf-8")
                p += size
                length = len(text.encode("utf-16-le")) // 2
            elif ref == 6:  # format: key, value
                for _ in range(2):
                    size, p = _uv(message, p)
                    p += size
            elif ref == 7:  # type
                type_ref, p = _uv(message, p)
                if type_ref in (3, 5):
                    size, p = _uv(message, p)
                    p += size
            elif ref == 8:  # any
                length, p = _uv(message, p)
                for _ in range(length):
                    p = _y_skip_any(message, p)
            elif ref == 9:  # doc
                size, p = _uv(message, p)
                p = _y_skip_any(message, p + size)
            else:
                raise ValueError(f"unknown Yjs content ref {ref}")
            out.append((client, clock, length))
            clock += length
    return out


# ----------------------------------------------------------------- worker processes


@dataclass
class WorkerSpec:
    """What one generator process runs (pickled to it)."""

    proto: str
    mode: str  # "load" or "idle"
    urls: list[str]  # per plan: the URL it connects to
    plans: list[ClientPlan]
    n: int
    edits: int
    rate: float
    phases: list[float]
    #: sender's id (crdt_sync: peer id text; y-protocol: client id) -> client index
    idents: dict[Any, int]
    #: per client index: the op counter / clock of its edit 0
    firsts: list[int]
    y_step2: bytes = b""
    fast_reader: bool = True
    drain_timeout: float = 10.0
    connect_batch: int = 50
    local_host: str | None = None
    #: wss://: the CA file (the server's self-signed certificate) to verify it with.
    ca_file: str | None = None
    #: this worker holds client 0, which connects before every other client
    first: bool = False


@dataclass
class WorkerResult:
    indices: list[int]
    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_seconds: list[float] = field(default_factory=list)
    sent: dict[int, array] = field(default_factory=dict)  # type: ignore[type-arg]
    acked: dict[int, array] = field(default_factory=dict)  # type: ignore[type-arg]
    received: dict[int, array] = field(default_factory=dict)  # type: ignore[type-arg]
    duplicates: int = 0
    unknown: int = 0
    unparsed: int = 0
    echoes: int = 0
    messages_in: Counter[str] = field(default_factory=Counter)
    errors_in: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_received: int = 0
    cpu_seconds: float = 0.0
    window: float = 0.0
    loop_lag: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    still_connected: int = 0
    failure: str = ""


class _Counted:
    """Delegates to a transport, counting the bytes written."""

    def __init__(self, transport: Any, tally: list[int]) -> None:
        self._transport = transport
        self._tally = tally

    def write(self, data: Any) -> None:
        self._tally[0] += len(data)
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _counting_connection(tally: list[int]) -> Any:
    """A websockets ClientConnection class counting TCP bytes: tally = [sent, received]."""
    from websockets.asyncio.client import ClientConnection

    class CountingConnection(ClientConnection):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(_Counted(transport, tally))  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            tally[1] += len(data)
            super().data_received(data)

    return CountingConnection


class _RawClient:
    """One simulated client: a WebSocket and its precomputed frames, no CRDT."""

    def __init__(self, spec: WorkerSpec, plan: ClientPlan, url: str, out: WorkerResult) -> None:
        self.spec = spec
        self.plan = plan
        self.url = url
        self.out = out
        self.ws: Any = None
        self.synced = asyncio.Event()
        self.failure = ""
        e, n = spec.edits, spec.n
        self.sent = array("d", bytes(8 * e))
        self.acked = array("d", bytes(8 * e))
        self.received = array("d", bytes(8 * e * n)) if spec.mode == "load" else array("d")
        self.acked_upto = 0
        self.expected = (n - 1) * e
        self.got = 0
        self.complete = asyncio.Event()
        if self.expected <= 0:
            self.complete.set()
        self.reader_task: asyncio.Task[None] | None = None
        self.peer = plan.ident.encode()
        #: The server's relay dictionary as this connection was sent it (version 4).
        self.dictionary: list[bytes] = []

    async def connect(self, tally: list[int]) -> None:
        from websockets.asyncio.client import connect

        extra: dict[str, Any] = {}
        if self.spec.local_host:
            extra["local_addr"] = (self.spec.local_host, 0)
        if self.spec.ca_file:
            extra["ssl"] = client_ssl_context(self.spec.ca_file)
        self.ws = await connect(
            self.url,
            compression=None,
            max_size=None,
            max_queue=None,
            ping_interval=None,
            proxy=None,
            open_timeout=CONNECT_TIMEOUT,
            create_connection=_counting_connection(tally),
            **extra,
        )
        self.reader_task = asyncio.create_task(self._read())
        await self.ws.send(self.plan.hello)
        await asyncio.wait_for(self.synced.wait(), CONNECT_TIMEOUT)
        if self.failure:
            raise RuntimeError(self.failure)

    async def _read(self) -> None:
        handle = self._on_crdt if self.spec.proto == CRDT else self._on_y
        try:
            async for data in self.ws:
                handle(data, time.perf_counter())
        except Exception as exc:  # a closed or broken connection ends the reader
            self.failure = self.failure or repr(exc)
        finally:
            if not self.synced.is_set():
                self.failure = self.failure or "connection closed before the handshake"
                self.synced.set()

    def _deliver(self, sender: int, k: int, now: float) -> None:
        e = self.spec.edits
        if not 0 <= k < e:
            self.out.unknown += 1
            return
        slot = sender * e + k
        if self.received[slot]:
            self.out.duplicates += 1
            return
        self.received[slot] = now
        self.got += 1
        if self.got >= self.expected:
            self.complete.set()

    def _on_crdt(self, data: Any, now: float) -> None:
        out = self.out
        if not isinstance(data, bytes) or len(data) < 5 or data[:2] != _CS:
            out.messages_in["?"] += 1
            return
        kind = data[3]
        fast = self.spec.fast_reader
        if kind == 0x03 or kind == 0x16:  # CHANGES, RELAY
            out.messages_in["CHANGES" if kind == 0x03 else "RELAY"] += 1
            if not self.synced.is_set():
                return
            try:
                if kind == 0x16:
                    ids = (crdt_relay_ids if fast else crdt_relay_ids_library)(
                        data, self.dictionary
                    )
                else:
                    ids = crdt_change_ids(data) if fast else crdt_change_ids_library(data)
            except Exception:
                out.unparsed += 1
                return
            idents = self.spec.idents
            for peer, counter in ids:
                sender = idents.get(peer)
                if sender is None:
                    out.unknown += 1
                elif sender == self.plan.index:
                    out.echoes += 1
                else:
                    self._deliver(sender, counter - self.spec.firsts[sender], now)
            return
        if kind == 0x15:  # DICTIONARY: entries the next relays refer to
            out.messages_in["DICTIONARY"] += 1
            try:
                self.dictionary += crdt_dictionary_entries(data, len(self.dictionary))
            except Exception:
                out.unparsed += 1
            return
        if kind == 0x04:  # ACK
            out.messages_in["ACK"] += 1
            try:
                held = crdt_ack(data, self.peer) if fast else crdt_ack_library(data, self.peer)
            except Exception:
                out.unparsed += 1
                return
            upto = min(self.spec.edits, (held or 0) - self.plan.first)
            if upto > self.acked_upto:
                for k in range(self.acked_upto, upto):
                    self.acked[k] = now
                self.acked_upto = upto
            return
        from crdt_sync.sync.messages import MessageType, Pong, decode_message, encode_message

        try:
            name = MessageType(kind).name
        except ValueError:
            name = f"type {kind}"
        out.messages_in[name] += 1
        try:
            message: Any = decode_message(data, max_size=1 << 30)
        except Exception as exc:
            out.unparsed += 1
            if not self.synced.is_set():
                self.failure = f"undecodable {name}: {exc!r}"
                self.synced.set()
            return
        if kind == 0x02:  # HANDSHAKE_RESPONSE
            self.synced.set()
        elif kind == 0x07:  # PING: answer as the protocol asks
            frame = encode_message(Pong(message.nonce, message.timestamp_ms))
            asyncio.get_running_loop().create_task(self._send_quietly(frame))
        elif kind == 0x7F:  # ERROR
            code = getattr(message.code, "name", str(message.code))
            out.errors_in[code] += 1
            if not self.synced.is_set():
                self.failure = f"refused: {code} {message.message}"
                self.synced.set()

    def _on_y(self, data: Any, now: float) -> None:
        out = self.out
        if not isinstance(data, bytes) or len(data) < 2:
            out.messages_in["?"] += 1
            return
        if data[0] != 0:
            out.messages_in["AWARENESS" if data[0] == 1 else f"type {data[0]}"] += 1
            return
        step = data[1]
        if step == 0:  # the server's sync step 1: answer with our (empty) step 2
            out.messages_in["SYNC_STEP1"] += 1
            asyncio.get_running_loop().create_task(self._send_quietly(self.spec.y_step2))
            return
        out.messages_in["SYNC_STEP2" if step == 1 else "SYNC_UPDATE"] += 1
        if step == 1 and not self.synced.is_set():
            self.synced.set()
            return
        try:
            _, start = _uv(data, 2)
            items = y_update_ids(data, start)
        except Exception:
            out.unparsed += 1
            return
        idents = self.spec.idents
        for client, clock, length in items:
            sender = idents.get(client)
            if sender is None:
                out.unknown += 1
            elif sender == self.plan.index:
                out.echoes += 1
            else:
                for c in range(clock, clock + length):
                    self._deliver(sender, c - self.spec.firsts[sender], now)

    async def _send_quietly(self, frame: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send(frame)

    def connected(self) -> bool:
        from websockets.protocol import State

        return self.ws is not None and self.ws.protocol.state is State.OPEN

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5.0)
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self.reader_task


def _worker_entry(conn: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    """A generator process: connect, wait for the start time, send, stamp, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    out = WorkerResult([p.index for p in spec.plans])
    try:
        asyncio.run(_worker_main(conn, spec, out))
    except Exception as exc:
        out.failure = repr(exc)
        with contextlib.suppress(Exception):
            conn.send(("result", out))


async def _recv(conn: multiprocessing.connection.Connection) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, conn.recv)


async def _worker_main(
    conn: multiprocessing.connection.Connection, spec: WorkerSpec, out: WorkerResult
) -> None:
    # Import now what the first connection would import, so its time is not counted.
    import websockets.asyncio.client
    import websockets.protocol  # noqa: F401

    import crdt_sync.sync.messages  # noqa: F401

    tally = [0, 0]
    clients = [
        _RawClient(spec, plan, url, out) for plan, url in zip(spec.plans, spec.urls, strict=True)
    ]

    async def connect_one(client: _RawClient) -> None:
        t = time.perf_counter()
        try:
            await asyncio.wait_for(client.connect(tally), CONNECT_TIMEOUT)
            out.connected += 1
            out.connect_seconds.append(time.perf_counter() - t)
        except Exception as exc:
            out.connect_errors.append(f"client {client.plan.index}: {exc!r}"[:300])

    # Client 0 (in worker 0) connects alone and creates the document; the others
    # join once it has (pycrdt-websocket 0.16 can leave a client that joins a room
    # being created at the same moment unsynced forever; same procedure for all).
    rest = clients
    if spec.first:
        await connect_one(clients[0])
        conn.send(("first",))
        rest = clients[1:]
    else:
        await _recv(conn)  # ("go",)
    for first in range(0, len(rest), spec.connect_batch):
        await asyncio.gather(*(connect_one(c) for c in rest[first : first + spec.connect_batch]))
    conn.send(("ready", out.connected, out.connect_errors[:3]))
    command = await _recv(conn)
    if command[0] == "start":
        t0 = command[1]
        lag: list[float] = []
        stop_lag = asyncio.Event()

        async def monitor() -> None:  # event-loop lag: how late a 5 ms timer fires
            while not stop_lag.is_set():
                target = time.perf_counter() + 0.005
                await asyncio.sleep(0.005)
                lag.append(time.perf_counter() - target)

        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        cpu0, tally0 = own_cpu_seconds(), list(tally)
        monitor_task = asyncio.create_task(monitor())
        if spec.mode == "load":
            await _send_schedule(spec, clients, t0, out)
            deadline = spec.drain_timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(c.complete.wait() for c in clients)), deadline
                )
        out.window = time.perf_counter() - t0
        out.cpu_seconds = own_cpu_seconds() - cpu0
        stop_lag.set()
        await monitor_task
        out.loop_lag = lag
        conn.send(("drained", time.perf_counter()))
        command = await _recv(conn)
        out.bytes_sent, out.bytes_received = tally[0] - tally0[0], tally[1] - tally0[1]
    out.still_connected = sum(c.connected() for c in clients)
    for client in clients:
        out.sent[client.plan.index] = client.sent
        out.acked[client.plan.index] = client.acked
        out.received[client.plan.index] = client.received
    for first in range(0, len(clients), 100):
        await asyncio.gather(*(c.close() for c in clients[first : first + 100]))
    conn.send(("result", out))


async def _send_schedule(
    spec: WorkerSpec, clients: list[_RawClient], t0: float, out: WorkerResult
) -> None:
    interval = 1.0 / spec.rate
    schedule = sorted(
        (t0 + spec.phases[i] + k * interval, i, k)
        for i in range(len(clients))
        for k in range(spec.edits)
    )
    lateness = out.lateness
    for when, i, k in schedule:
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        client = clients[i]
        if client.ws is None:
            continue
        now = time.perf_counter()
        lateness.append(now - when)
        client.sent[k] = now
        try:
            await client.ws.send(client.plan.frames[k])
        except Exception:
            client.sent[k] = 0.0  # the connection is gone: this edit was never sent


# ----------------------------------------------------------------- the parent side


@dataclass
class GeneratorLimits:
    """Past any of these, a run measured the generator, not the server: it is refused."""

    #: CPU of one worker process over the load window, in cores.
    worker_cpu: float = 0.7
    #: p99 of how late a worker's 5 ms loop timer fired (stamps are that late too).
    loop_lag_p99: float = 0.020
    #: p99 of how late sends left against their schedule (or one send interval, if longer).
    send_lateness_p99: float = 0.020


@dataclass
class LoadRun:
    """One load run's figures (all times in seconds, sizes in bytes)."""

    label: str
    proto: str
    n: int
    edits: int
    rate: float
    workers: int
    latencies: list[float] = field(default_factory=list)
    ack_latencies: list[float] = field(default_factory=list)
    edits_sent: int = 0
    edits_acked: int = 0
    expected: int = 0
    delivered: int = 0
    delivered_to_all: int = 0
    duplicates: int = 0
    unknown: int = 0
    unparsed: int = 0
    echoes: int = 0
    messages_in: Counter[str] = field(default_factory=Counter)
    errors_in: Counter[str] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_received: int = 0
    window: float = 0.0
    server_cpu: float = 0.0
    server_rss_start: int = 0
    server_rss_peak: int = 0
    generator_cpu: float = 0.0
    worker_cpu_max: float = 0.0  # cores, the busiest worker
    loop_lag: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    other_cpu: float = 0.0  # every other process on the machine during the window
    connected: int = 0
    still_connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_seconds: list[float] = field(default_factory=list)
    failure: str = ""
    saturated: list[str] = field(default_factory=list)
    final_check: str = ""
    build_seconds: float = 0.0
    server_description: str = ""
    server_state: dict[Any, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    #: per (sender, edit): send time; per (receiver): arrival times (kept for callers)
    sent: dict[int, Any] = field(default_factory=dict)
    received: dict[int, Any] = field(default_factory=dict)
    acked: dict[int, Any] = field(default_factory=dict)

    def pct(self, values: list[float], fraction: float | None) -> float | None:
        if not values:
            return None
        return values[-1] if fraction is None else percentile(values, fraction)

    def p(self, fraction: float | None) -> float | None:
        return self.pct(self.latencies, fraction)

    def judge(self, limits: GeneratorLimits) -> None:
        reasons = []
        if self.worker_cpu_max > limits.worker_cpu:
            reasons.append(
                f"a generator worker used {self.worker_cpu_max:.2f} cores "
                f"(limit {limits.worker_cpu:.2f})"
            )
        lag99 = self.pct(self.loop_lag, 0.99)
        if lag99 is not None and lag99 > limits.loop_lag_p99:
            reasons.append(
                f"generator event-loop lag p99 {lag99 * 1000:.1f} ms "
                f"(limit {limits.loop_lag_p99 * 1000:.0f} ms)"
            )
        late99 = self.pct(self.lateness, 0.99)
        late_limit = max(limits.send_lateness_p99, 1.0 / self.rate)
        if late99 is not None and late99 > late_limit:
            reasons.append(
                f"sends left {late99 * 1000:.1f} ms late at p99 (limit {late_limit * 1000:.0f} ms)"
            )
        if reasons and self.window and self.worker_cpu_max <= limits.worker_cpu:
            reasons.append(
                f"(its CPU was not the limit: other processes used "
                f"{self.other_cpu / self.window:.2f} cores of this machine meanwhile)"
            )
        self.saturated = reasons


def _spawn_workers(
    specs: list[WorkerSpec],
) -> tuple[list[Any], list[multiprocessing.connection.Connection]]:
    ctx = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    for spec in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_entry, args=(child, spec), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    return procs, pipes


def _expect(pipe: multiprocessing.connection.Connection, kind: str, timeout: float) -> Any:
    """The next message of ``kind`` from a worker (a failed worker's result is an error)."""
    if not pipe.poll(timeout):
        raise RuntimeError(f"a generator worker sent no {kind!r} within {timeout:.0f} s")
    try:
        message = pipe.recv()
    except EOFError:
        raise RuntimeError(f"a generator worker exited before sending {kind!r}") from None
    if message[0] != kind:
        failure = getattr(message[1], "failure", "") if message[0] == "result" else ""
        raise RuntimeError(f"a generator worker sent {message[0]!r}, not {kind!r} {failure}")
    return message


def _connect_all(
    pipes: list[multiprocessing.connection.Connection], timeout: float
) -> tuple[int, list[str]]:
    """Let client 0 connect first, then every other; (clients connected, first errors)."""
    _expect(pipes[0], "first", CONNECT_TIMEOUT + 60)
    for pipe in pipes[1:]:
        pipe.send(("go",))
    connected, errors = 0, []
    for pipe in pipes:
        _, count, errs = _expect(pipe, "ready", timeout)
        connected += count
        errors += errs
    return connected, errors


def _reap(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(10.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(5.0)


class Generator:
    """Runs a :class:`Workload` against one or more servers with worker processes."""

    def __init__(
        self,
        workload: Workload,
        urls: list[str],
        servers: Sequence[ServerProcess],
        *,
        workers: int = 2,
        local_host: str | None = None,
        ca_file: str | None = None,
        seed: int = 1,
    ) -> None:
        if len(urls) != workload.n:
            raise ValueError("one URL per client")
        self.workload = workload
        self.urls = urls
        self.servers = list(servers)
        self.workers = max(1, min(workers, MAX_WORKERS, workload.n))
        self.local_host = local_host
        self.ca_file = ca_file
        self.seed = seed

    def _specs(self, mode: str, rate: float, drain_timeout: float) -> list[WorkerSpec]:
        w = self.workload
        rng = random.Random(self.seed)
        interval = 1.0 / rate
        # Spread the clients' ticks over one interval so edits do not all fire at once.
        phases = [rng.random() * interval for _ in range(w.n)]
        idents: dict[Any, int] = {
            (plan.ident.encode() if w.proto == CRDT else int(plan.ident)): plan.index
            for plan in w.clients
        }
        firsts = [plan.first for plan in w.clients]
        specs = []
        for g in range(self.workers):
            members = list(range(g, w.n, self.workers))
            specs.append(
                WorkerSpec(
                    proto=w.proto,
                    mode=mode,
                    urls=[self.urls[i] for i in members],
                    plans=[w.clients[i] for i in members],
                    n=w.n,
                    edits=w.edits if mode == "load" else 0,
                    rate=rate,
                    phases=[phases[i] for i in members],
                    idents=idents,
                    firsts=firsts,
                    y_step2=w.y_step2,
                    fast_reader=w.fast_reader,
                    drain_timeout=drain_timeout,
                    local_host=self.local_host,
                    ca_file=self.ca_file,
                    first=g == 0,
                )
            )
        return specs

    def _server_cpu(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers if s.alive())

    def settle(self, timeout: float = 10.0) -> float:
        """Wait (bounded) until the servers are idle: under 5 % of a core over 200 ms,
        so work left over from the clients' handshakes (or a preload) is not measured
        as the load's. Returns the seconds waited."""
        start = time.perf_counter()
        last = self._server_cpu()
        while time.perf_counter() - start < timeout:
            time.sleep(0.2)
            now = self._server_cpu()
            if now - last < 0.010:
                break
            last = now
        return time.perf_counter() - start

    def run_load(
        self,
        rate: float,
        label: str,
        drain_timeout: float = 10.0,
        lead: float = 0.5,
        check_url: str | None = None,
        on_start: Any = None,
        counters: dict[str, Any] | None = None,
    ) -> LoadRun:
        """Connect every client, send every edit on schedule, drain, and gather the stamps.

        With ``check_url``, a fresh client asks the server what it holds once the
        load has drained, while the load's clients are still connected (a server
        without a store, like pycrdt-websocket's, drops a room when its last
        client leaves): ``run.final_check`` says whether every sent edit is there.
        ``on_start(t0)`` is called once the start time is fixed (e.g. to start an
        attacker beside the load); ``run.server_state`` keeps what the server held.
        ``counters`` (name -> callable returning a number) are read at the start and
        at the end of the window; ``run.counters`` holds their differences.
        """
        w = self.workload
        run = LoadRun(label, w.proto, w.n, w.edits, rate, self.workers)
        run.server_rss_start = sum(s.rss() for s in self.servers)
        specs = self._specs("load", rate, drain_timeout)
        procs, pipes = _spawn_workers(specs)
        results: list[WorkerResult] = []
        try:
            run.connected, run.connect_errors = _connect_all(pipes, CONNECT_TIMEOUT * 3 + 60)
            if run.connected < w.n:
                raise RuntimeError(
                    f"only {run.connected} of {w.n} clients completed their handshake: "
                    + "; ".join(run.connect_errors)
                )
            self.settle()
            t0 = time.perf_counter() + lead
            for pipe in pipes:
                pipe.send(("start", t0))
            if on_start is not None:
                on_start(t0)
            time.sleep(max(0.0, t0 - time.perf_counter()))
            cpu0, busy0, own0 = self._server_cpu(), machine_busy_seconds(), own_cpu_seconds()
            counted = {name: read() for name, read in (counters or {}).items()}
            longest = lead + 1.0 / rate + w.edits / rate + drain_timeout + 60
            for pipe in pipes:
                _expect(pipe, "drained", max(1.0, t0 + longest - time.perf_counter()))
            run.window = time.perf_counter() - t0
            dead = [server.name for server in self.servers if not server.alive()]
            if dead:
                raise RuntimeError(
                    f"the server died during the load: {self.servers[0].stderr_tail(600)}"
                )
            run.server_cpu = self._server_cpu() - cpu0
            run.server_rss_peak = sum(s.peak_rss() for s in self.servers)
            for name, read in (counters or {}).items():
                run.counters[name] = read() - counted[name]
            busy = machine_busy_seconds() - busy0
            own = own_cpu_seconds() - own0
            state: dict[Any, int] | None = None
            if check_url is not None:
                try:
                    fetch = _fetch_state(w, check_url, self.ca_file)
                    state = asyncio.run(asyncio.wait_for(fetch, 120))
                except Exception as exc:
                    run.final_check = f"could not check: {exc!r}"[:80]
            for pipe in pipes:
                pipe.send(("stop",))
            for pipe in pipes:
                results.append(_expect(pipe, "result", 120)[1])
        except Exception as exc:
            run.failure = str(exc) or repr(exc)
            for pipe in pipes:
                with contextlib.suppress(Exception):
                    pipe.send(("stop",))
            return run
        finally:
            _reap(procs)
            for pipe in pipes:
                pipe.close()
        run.generator_cpu = own + sum(r.cpu_seconds for r in results)
        run.worker_cpu_max = max((r.cpu_seconds / r.window for r in results if r.window), default=0)
        run.other_cpu = max(0.0, busy - run.server_cpu - run.generator_cpu)
        self._merge(run, results)
        if state is not None:
            run.final_check = _missing(w, run, state)
            run.server_state = state
        return run

    def _merge(self, run: LoadRun, results: list[WorkerResult]) -> None:
        n, e = run.n, run.edits
        sent: dict[int, Any] = {}
        received: dict[int, Any] = {}
        acked: dict[int, Any] = {}
        for r in results:
            sent.update(r.sent)
            received.update(r.received)
            acked.update(r.acked)
            run.duplicates += r.duplicates
            run.unknown += r.unknown
            run.unparsed += r.unparsed
            run.echoes += r.echoes
            run.messages_in.update(r.messages_in)
            run.errors_in.update(r.errors_in)
            run.bytes_sent += r.bytes_sent
            run.bytes_received += r.bytes_received
            run.loop_lag += r.loop_lag
            run.lateness += r.lateness
            run.still_connected += r.still_connected
            run.connect_seconds += r.connect_seconds
            if r.failure:
                run.failure = run.failure or r.failure
        run.sent, run.received, run.acked = sent, received, acked
        latencies: list[float] = []
        reached = [[0] * e for _ in range(n)]
        for r_index in range(n):
            got = received.get(r_index)
            if got is None:
                continue
            for s in range(n):
                if s == r_index or s not in sent:
                    continue
                times = sent[s]
                base = s * e
                row = reached[s]
                for k in range(e):
                    t = got[base + k]
                    if t and times[k]:
                        latencies.append(t - times[k])
                        row[k] += 1
        run.latencies = sorted(latencies)
        run.delivered = len(latencies)
        for s in range(n):
            times = sent.get(s)
            if times is None:
                continue
            count = sum(1 for k in range(e) if times[k])
            run.edits_sent += count
            run.expected += count * (n - 1)
            run.delivered_to_all += sum(1 for k in range(e) if times[k] and reached[s][k] == n - 1)
            acks = acked.get(s)
            if acks is not None:
                run.ack_latencies += [acks[k] - times[k] for k in range(e) if acks[k] and times[k]]
        run.ack_latencies.sort()
        run.edits_acked = len(run.ack_latencies)
        run.loop_lag.sort()
        run.lateness.sort()
        run.connect_seconds.sort()

    def run_idle(self, hold: float) -> dict[str, Any]:
        """Connect every client (handshake done), hold them idle, report the server's memory."""
        figures: dict[str, Any] = {"rss_before": sum(s.rss() for s in self.servers)}
        specs = self._specs("idle", 1.0, 0.0)
        procs, pipes = _spawn_workers(specs)
        connected = 0
        errors: list[str] = []
        try:
            t = time.perf_counter()
            connected, errors = _connect_all(pipes, CONNECT_TIMEOUT * 10 + 60)
            figures["connect_seconds"] = time.perf_counter() - t
            cpu0 = self._server_cpu()
            time.sleep(hold)
            figures["hold_cpu"] = self._server_cpu() - cpu0
            figures["rss_after"] = sum(s.rss() for s in self.servers)
            figures["rss_peak"] = sum(s.peak_rss() for s in self.servers)
            for pipe in pipes:
                pipe.send(("start", time.perf_counter()))
            for pipe in pipes:
                _expect(pipe, "drained", 60)
                pipe.send(("stop",))
            results = [_expect(pipe, "result", 300)[1] for pipe in pipes]
        finally:
            _reap(procs)
            for pipe in pipes:
                pipe.close()
        figures["connected"] = connected
        figures["errors"] = errors
        figures["still_connected"] = sum(r.still_connected for r in results)
        figures["generator_rss"] = 0
        return figures


# ----------------------------------------------------------------- after a run


async def _fetch_state(workload: Workload, url: str, ca_file: str | None = None) -> dict[Any, int]:
    """What the server holds, asked by a fresh client: ident -> counter/clock end."""
    from websockets.asyncio.client import connect

    extra: dict[str, Any] = {}
    if ca_file:
        extra["ssl"] = client_ssl_context(ca_file)
    async with connect(
        url, compression=None, max_size=None, proxy=None, open_timeout=CONNECT_TIMEOUT, **extra
    ) as ws:
        if workload.proto == CRDT:
            from crdt_sync.sync.messages import HandshakeResponse, decode_message

            rng = random.Random()
            await ws.send(
                handshake_request(
                    workload.document_id, _seeded_peer(rng), rng.randbytes(32), workload.auth_token
                )
            )
            while True:
                data = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT)
                message = decode_message(bytes(data), max_size=1 << 30)
                if isinstance(message, HandshakeResponse):
                    return dict(message.version_vector)
                if getattr(message, "code", None) is not None:
                    raise RuntimeError(f"refused: {message}")
        else:
            from pycrdt import Doc

            await ws.send(workload.clients[0].hello)
            while True:
                data = bytes(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT))
                if data[:2] == b"\x00\x01":
                    _, start = _uv(data, 2)
                    doc = Doc()
                    doc.apply_update(data[start:])
                    state = doc.get_state()
                    count, p = _uv(state, 0)
                    clocks = {}
                    for _ in range(count):
                        client, p = _uv(state, p)
                        clock, p = _uv(state, p)
                        clocks[client] = clock
                    return clocks


def _missing(workload: Workload, run: LoadRun, state: dict[Any, int]) -> str:
    """ "yes" when ``state`` (ident -> counter/clock end) holds every edit ``run`` sent."""
    missing = 0
    for plan in workload.clients:
        times = run.sent.get(plan.index)
        if times is None:
            continue
        key: Any = plan.ident if workload.proto == CRDT else int(plan.ident)
        held = state.get(key, 0) - plan.first
        missing += sum(1 for k in range(workload.edits) if times[k] and k >= held)
    return "yes" if missing == 0 else f"NO: {missing:,} sent edits missing"
