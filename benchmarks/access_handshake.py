"""What access control costs: handshakes and edit round trips with tokens and TLS.

Starts ``python -m server`` (memory registry, on 127.0.0.1) once per setup and
measures, with the real ``WebSocketClient``:

* **handshake**: ``connect()`` until the handshake response is in (TCP, TLS
  when on, WebSocket upgrade, token check, document), one client after the
  other, ``--connects`` times;
* **edit round trip**: one client inserts a character, a second client of
  the same document sees it (``--edits`` times, one at a time);

for four setups side by side, the plain one (``--no-auth``, ``ws://``) being
the baseline: tokens only, TLS with a pinned self-signed certificate, TLS and
tokens. It also prints the server's peak memory (VmHWM) and the bytes of one
handshake request with and without a token. Loopback only, bounded counts;
it prints figures and asserts nothing.

    python benchmarks/access_handshake.py [--connects 200] [--edits 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # benchmarks/ is not a package
    HOST,
    fmt_bytes,
    fmt_ratio,
    machine_banner,
    percentile,
    print_table,
    proc_status_bytes,
    start_server,
)

from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import HandshakeRequest, ReconnectPolicy, WebSocketClient, encode_message
from server.auth import TokenAuthority
from server.tls import create_self_signed_certificate

NO_RETRY = ReconnectPolicy(enabled=False)


class Setup:
    def __init__(self, name: str, tls: bool, auth: bool) -> None:
        self.name, self.tls, self.auth = name, tls, auth


SETUPS = [
    Setup("plain ws://, --no-auth (baseline)", tls=False, auth=False),
    Setup("tokens", tls=False, auth=True),
    Setup("TLS, pinned", tls=True, auth=False),
    Setup("TLS, pinned, tokens", tls=True, auth=True),
]


def server_command(setup: Setup, folder: Path) -> list[str]:
    command = [sys.executable, "-m", "server", "--host", HOST, "--port", "0", "--memory"]
    command += ["--log-level", "WARNING", "--exit-with-parent"]
    if setup.auth:
        command += ["--secret-file", str(folder / "bench.secret")]
    else:
        command.append("--no-auth")
    if setup.tls:
        command += ["--tls-cert", str(folder / "cert.pem"), "--tls-key", str(folder / "key.pem")]
    return command


async def measure(
    setup: Setup, port: int, token: str | None, pin: str | None, connects: int, edits: int
) -> tuple[list[float], list[float]]:
    scheme = "wss" if setup.tls else "ws"
    options = {"auth_token": token, "tls_pin": pin, "reconnect": NO_RETRY}
    handshakes: list[float] = []
    for i in range(connects):
        document = CRDTDocument(document_id=f"bench-{i % 10}")
        client = WebSocketClient(f"{scheme}://{HOST}:{port}/bench-{i % 10}", document, **options)
        started = time.perf_counter()
        if not await client.connect():
            raise RuntimeError(f"{setup.name}: connect failed: {client.last_error}")
        handshakes.append(time.perf_counter() - started)
        await client.disconnect()
        client.close()

    # A fresh document per call: the reader waits for exactly the writer's new text.
    url = f"{scheme}://{HOST}:{port}/bench-edits-{uuid.uuid4().hex[:12]}"
    writer_doc, reader_doc = CRDTDocument(), CRDTDocument()
    writer = WebSocketClient(url, writer_doc, **options)
    reader = WebSocketClient(url, reader_doc, **options)
    if not (await writer.connect() and await reader.connect()):
        raise RuntimeError(f"{setup.name}: edit clients could not connect")
    text = CRDTTextHandler(writer_doc, "t")
    seen = CRDTTextHandler(reader_doc, "t")
    arrived = asyncio.Event()
    subscription = reader_doc.on_update(lambda _event: arrived.set())
    trips: list[float] = []
    try:
        for i in range(edits):
            arrived.clear()
            started = time.perf_counter()
            text.insert(i, "x")
            while len(seen.value) < i + 1:
                await asyncio.wait_for(arrived.wait(), 10)
                arrived.clear()
            trips.append(time.perf_counter() - started)
    finally:
        subscription.cancel()
        for client in (writer, reader):
            await client.disconnect()
            client.close()
    return handshakes, trips


def handshake_bytes(token: str | None) -> int:
    request = HandshakeRequest(
        "bench-0",
        str(PeerId.generate()),
        VersionVector(),
        "bench",
        token,
        ("none", "gzip"),
    )
    return len(encode_message(request))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=200, help="handshakes per setup")
    parser.add_argument("--edits", type=int, default=300, help="edit round trips per setup")
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds, the order rotated each time"
    )
    args = parser.parse_args(argv)
    connects, edits = min(max(args.connects, 1), 2000), min(max(args.edits, 1), 5000)
    rounds = min(max(args.rounds, 1), 20)
    print(machine_banner())
    print(
        f"{connects} sequential handshakes and {edits} edit round trips per setup, on {HOST},"
        f" in {rounds} interleaved rounds (setups take turns, so load drift hits all alike)"
    )
    samples: dict[str, tuple[list[float], list[float]]] = {s.name: ([], []) for s in SETUPS}
    peaks: dict[str, int] = {}
    token_for_size = None
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        pin = create_self_signed_certificate(folder / "cert.pem", folder / "key.pem", [HOST])
        servers = {s.name: start_server(server_command(s, folder), s.name) for s in SETUPS}
        try:
            authority, _ = TokenAuthority.from_file(folder / "bench.secret")
            token_for_size = authority.issue("bench-*")
            for round_number in range(rounds):
                shift = round_number % len(SETUPS)
                for setup in SETUPS[shift:] + SETUPS[:shift]:
                    handshakes, trips = asyncio.run(
                        measure(
                            setup,
                            servers[setup.name].port,
                            token_for_size if setup.auth else None,
                            pin if setup.tls else None,
                            max(1, connects // rounds),
                            max(1, edits // rounds),
                        )
                    )
                    samples[setup.name][0].extend(handshakes)
                    samples[setup.name][1].extend(trips)
            for setup in SETUPS:
                peaks[setup.name] = proc_status_bytes(servers[setup.name].popen.pid, "VmHWM")
        finally:
            for server in servers.values():
                server.stop()
    rows = []
    baseline: float | None = None
    for setup in SETUPS:
        handshakes, trips = (sorted(values) for values in samples[setup.name])
        trip_p99 = percentile(trips, 0.99)
        if baseline is None:
            baseline = trip_p99
        rows.append(
            (
                setup.name,
                f"{percentile(handshakes, 0.5) * 1000:.2f} ms",
                f"{percentile(handshakes, 0.99) * 1000:.2f} ms",
                f"{percentile(trips, 0.5) * 1000:.2f} ms",
                f"{trip_p99 * 1000:.2f} ms",
                fmt_ratio(trip_p99, baseline),
                fmt_bytes(peaks[setup.name]),
            )
        )
    print()
    print_table(
        (
            "setup",
            "handshake p50",
            "handshake p99",
            "edit trip p50",
            "edit trip p99",
            "trip p99 vs plain",
            "server peak RSS",
        ),
        rows,
    )
    print()
    print(
        f"handshake request: {handshake_bytes(None)} B without a token,"
        f" {handshake_bytes(token_for_size)} B with one"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
