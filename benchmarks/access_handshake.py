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

    url = f"{scheme}://{HOST}:{port}/bench-edits"
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
    args = parser.parse_args(argv)
    connects, edits = min(max(args.connects, 1), 2000), min(max(args.edits, 1), 5000)
    print(machine_banner())
    print(f"{connects} sequential handshakes and {edits} edit round trips per setup, on {HOST}")
    rows = []
    baseline: tuple[float, float, float, float] | None = None
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        pin = create_self_signed_certificate(folder / "cert.pem", folder / "key.pem", [HOST])
        token_for_size = None
        for setup in SETUPS:
            server = start_server(server_command(setup, folder), setup.name)
            try:
                token = None
                if setup.auth:
                    authority, _ = TokenAuthority.from_file(folder / "bench.secret")
                    token = token_for_size = authority.issue("bench-*")
                handshakes, trips = asyncio.run(
                    measure(setup, server.port, token, pin if setup.tls else None, connects, edits)
                )
                peak = proc_status_bytes(server.popen.pid, "VmHWM")
            finally:
                server.stop()
            handshakes.sort()
            trips.sort()
            figures = (
                percentile(handshakes, 0.5),
                percentile(handshakes, 0.99),
                percentile(trips, 0.5),
                percentile(trips, 0.99),
            )
            if baseline is None:
                baseline = figures
            rows.append(
                (
                    setup.name,
                    f"{figures[0] * 1000:.2f} ms",
                    f"{figures[1] * 1000:.2f} ms",
                    f"{figures[2] * 1000:.2f} ms",
                    f"{figures[3] * 1000:.2f} ms",
                    fmt_ratio(figures[3], baseline[3]),
                    fmt_bytes(peak),
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
