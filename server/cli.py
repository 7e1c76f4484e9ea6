"""``crdt-sync-server``: run the sync server headless, or mint invite tokens.

    crdt-sync-server --host 127.0.0.1 --port 8080 --db PATH
    python -m server --memory --port 0
    crdt-sync-server --redis redis://HOST:PORT/DB --port 0 --metrics   # one of N processes
    crdt-sync-server token DOC [--role write|read] [--expires 7d] [--url ws://HOST:PORT]

Once the server listens, exactly one line goes to standard output (and is
flushed), for people and for the desktop app that starts the server as a
child process and parses the port from it with ``listening on wss?://[^ ]*:(\\d+)/``::

    crdt-sync-server listening on ws://127.0.0.1:8080/ (share: ws://192.168.1.20:8080/<document-id>)

(``wss://`` with ``--tls-cert``/``--tls-key``.) Invite tokens are required
unless ``--no-auth``: the secret that signs them is created on first start
(mode 0600, beside the database or ``--secret-file``), and a line on standard
error says how to make an invite.

Everything else (server events, errors) is logged to standard error. SIGINT
and SIGTERM stop the server cleanly: connections are closed and the registry
is flushed and closed. With ``--exit-with-parent`` the server also stops
cleanly when the process that started it goes away (so a crashed app never
leaves an orphan server behind).

Exit status: 0 after a clean stop, 1 when the server cannot start (port in
use, unusable database), 2 for bad arguments.

``crdt-sync-server token DOC`` prints a token for ``DOC`` (or, with ``--url``,
an invite link carrying it) as the last line of its standard output, signed
with the same secret file the server uses (created if missing); a description
of what it grants goes to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from crdt_sync.sync import Role
from crdt_sync.sync.compression import Compressor, GzipCompressor, NoCompression

from .auth import (
    DEFAULT_TOKEN_LIFETIME,
    SecretFileError,
    TokenAuthority,
    default_secret_path,
    invite_link,
    parse_duration,
)
from .events import ServerEvent, ServerEventType
from .exceptions import StorageError
from .registry import (
    CRDTServerRegistry,
    InMemoryServerRegistry,
    RedisServerRegistry,
    SqliteServerRegistry,
)
from .server import WebSocketServer
from .tls import certificate_pin, server_ssl_context
from .trust import add_limit_options, limits_from_args

__all__ = [
    "build_parser",
    "build_token_parser",
    "default_database_path",
    "lan_address",
    "main",
    "run",
    "token_main",
]

_log = logging.getLogger("server")

#: How often ``--exit-with-parent`` checks whether the parent is still there.
PARENT_POLL_INTERVAL = 0.5

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def default_database_path() -> Path:
    """Where the SQLite store lives unless ``--db`` says otherwise (per-user data dir)."""
    return platformdirs.user_data_path("crdt-sync-server", appauthor=False) / "documents.sqlite3"


def lan_address() -> str:
    """This machine's address on the local network, or ``127.0.0.1`` if it has none.

    Asks the kernel which source address it would use to reach a documentation
    address (TEST-NET-1): a UDP "connect" sends no packet.
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = str(probe.getsockname()[0])
        if not ipaddress.ip_address(address).is_unspecified:
            return address
    return "127.0.0.1"


def _url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 literals in brackets)."""
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def share_host(host: str) -> str:
    """The address others use to reach a server listening on ``host``."""
    # Listening on every interface: others reach us by our LAN address. Bound to
    # one address: that address is the only way in, so share it as it is.
    return lan_address() if host in _WILDCARD_HOSTS else host


def listening_line(host: str, port: int, scheme: str = "ws") -> str:
    """The one line printed once the server listens (parsed by the desktop app)."""
    shown = "0.0.0.0" if host == "" else host
    share = share_host(host)
    return (
        f"crdt-sync-server listening on {scheme}://{_url_host(shown)}:{port}/"
        f" (share: {scheme}://{_url_host(share)}:{port}/<document-id>)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), not {value}")
    return value


def _commit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= MAX_COMMIT_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"is seconds from 0 to {MAX_COMMIT_INTERVAL:g} (an Ack waits up to this long),"
            f" not {text}"
        )
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


#: Changes of each document's history the SQLite store keeps by default: a million
#: changes of typing are tens of megabytes.
DEFAULT_HISTORY_RETENTION = 1_000_000
#: The SQLite store's group-commit interval, seconds (SqliteServerRegistry's default).
DEFAULT_COMMIT_INTERVAL = 0.05
#: The longest interval the command line accepts: every Ack may wait this long.
MAX_COMMIT_INTERVAL = 1.0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="crdt-sync-server",
        description="Serve collaborative CRDT documents over WebSockets "
        "(ws://HOST:PORT/<document-id>).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    parser.add_argument(
        "--port", type=_port, default=8080, help="TCP port; 0 picks a free one (default 8080)"
    )
    store = parser.add_mutually_exclusive_group()
    store.add_argument(
        "--db",
        type=Path,
        default=None,
        help=f"SQLite file holding the documents (default: {default_database_path()})",
    )
    store.add_argument(
        "--memory", action="store_true", help="keep documents in memory only (lost on exit)"
    )
    store.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="keep documents in Redis (redis://HOST:PORT/DB), shared by every server process"
        " started with the same URL",
    )
    parser.add_argument(
        "--history-retention",
        type=_non_negative_int,
        metavar="CHANGES",
        default=DEFAULT_HISTORY_RETENTION,
        help="SQLite, Redis and --memory: keep at least this many of each document's newest"
        " changes as history for View > History; older ones are dropped (0: SQLite keeps only"
        f" the log since the last snapshot; default {DEFAULT_HISTORY_RETENTION:,})",
    )
    parser.add_argument(
        "--commit-interval",
        type=_commit_interval,
        metavar="S",
        default=None,
        help="SQLite only: seconds between the starts of two group commits at least; each"
        " commit is an fsync, and a sender's Ack waits for its commit, so a longer interval"
        f" costs Ack latency and saves CPU under load (0 to {MAX_COMMIT_INTERVAL:g};"
        f" default {DEFAULT_COMMIT_INTERVAL:g})",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics at GET /metrics on the same port (/healthz is always on)",
    )
    parser.add_argument(
        "--compression",
        choices=("none", "gzip"),
        default="none",
        help="compression of every frame; clients must use the same (default none)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        default="INFO",
        help="logging threshold for standard error (default INFO)",
    )
    parser.add_argument(
        "--no-create",
        action="store_true",
        help="refuse documents that do not exist yet (DOCUMENT_NOT_FOUND) instead of creating them",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop cleanly when the parent process exits (for apps that start the server)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without invite tokens: anyone who can reach the server may read and"
        " change every document (a warning is logged at every start)",
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="the secret that signs invite tokens (default: beside the database, DB.secret;"
        " created with mode 0600 if missing)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, default=None, help="PEM certificate (chain): serve wss://"
    )
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="accept upgrade requests from this web origin (repeatable); requests with any"
        " other Origin header get HTTP 403 (desktop clients send none)",
    )
    parser.add_argument(
        "--max-connections", type=_positive_int, default=1000, help="connection limit (1000)"
    )
    parser.add_argument(
        "--max-message-size",
        type=_positive_int,
        default=16 * 1024 * 1024,
        help="largest accepted frame in bytes (16 MiB)",
    )
    parser.add_argument(
        "--ping-interval",
        type=_positive_float,
        default=20.0,
        help="seconds between keepalive pings to each client (20)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=_positive_float,
        default=20.0,
        help="seconds a client may take to answer a ping before it is dropped (20)",
    )
    add_limit_options(parser)
    return parser


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_token_parser() -> argparse.ArgumentParser:
    """The parser of ``crdt-sync-server token`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="crdt-sync-server token",
        description="Print an invite token (or, with --url, an invite link) for a document,"
        " signed with the server's secret. The token is the last line of the output.",
    )
    parser.add_argument(
        "document", metavar="DOC", help="the document id, or a prefix ending in * (team-*)"
    )
    parser.add_argument(
        "--role",
        choices=("write", "read"),
        default="write",
        help="write: edit (default); read: receive only",
    )
    parser.add_argument(
        "--expires",
        type=_duration,
        default=DEFAULT_TOKEN_LIFETIME,
        metavar="DURATION",
        help="lifetime: a number and a unit s, m, h or d (90s, 12h, 7d; default 7d)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--secret-file", type=Path, default=None, help="the server's secret file")
    where.add_argument(
        "--db",
        type=Path,
        default=None,
        help="the server's database; its secret file lies beside it (DB.secret)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="print an invite link for this server (ws://HOST:PORT or wss://HOST:PORT)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="with --url: pin this certificate in the link (for self-signed servers)",
    )
    return parser


def secret_path(secret_file: Path | None, db: Path | None) -> Path:
    """The secret file named by ``--secret-file``, or the one beside the database."""
    if secret_file is not None:
        return secret_file
    return default_secret_path(db if db is not None else default_database_path())


def token_main(argv: Sequence[str]) -> int:
    """``crdt-sync-server token ...``; returns the exit status."""
    args = build_token_parser().parse_args(argv)
    path = secret_path(args.secret_file, args.db)
    try:
        authority, created = TokenAuthority.from_file(path)
    except SecretFileError as error:
        print(f"crdt-sync-server: {error}", file=sys.stderr)
        return 1
    if created:
        print(f"created the server secret {path}", file=sys.stderr)
    role = Role.from_label(args.role)
    try:
        token = authority.issue(args.document, role, args.expires)
    except ValueError as error:
        print(f"crdt-sync-server token: {error}", file=sys.stderr)
        return 2
    pin = None
    if args.tls_cert is not None:
        try:
            pin = certificate_pin(args.tls_cert)
        except (OSError, ValueError) as error:
            print(f"crdt-sync-server token: {error}", file=sys.stderr)
            return 1
    line = token
    if args.url is not None:
        try:
            line = invite_link(args.url, args.document, token, pin)
        except ValueError as error:
            print(f"crdt-sync-server token: {error}", file=sys.stderr)
            return 2
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + args.expires))
    print(
        f"{role.label} access to {args.document!r} until {expires} (secret {path})",
        file=sys.stderr,
    )
    print(line, flush=True)
    return 0


def _make_compressor(name: str) -> Compressor:
    return GzipCompressor() if name == "gzip" else NoCompression()


def _make_registry(args: argparse.Namespace) -> CRDTServerRegistry:
    if args.memory:
        return InMemoryServerRegistry(history_retention=args.history_retention)
    if args.redis is not None:
        return RedisServerRegistry(args.redis, history_retention=args.history_retention)
    path: Path = args.db if args.db is not None else default_database_path()
    interval = DEFAULT_COMMIT_INTERVAL if args.commit_interval is None else args.commit_interval
    return SqliteServerRegistry(
        path, history_retention=args.history_retention, commit_interval=interval
    )


def _log_event(event: ServerEvent) -> None:
    level = logging.WARNING if event.type is ServerEventType.ERROR else logging.INFO
    if event.type is ServerEventType.CLIENT_CHANGE_APPLIED:
        level = logging.DEBUG  # one per edit: too chatty for INFO
    if not _log.isEnabledFor(level):
        return  # formatting the details costs more than the event (one per edit)
    details = " ".join(f"{key}={value}" for key, value in sorted(event.data.items()))
    _log.log(level, "%s %s%s", event.type.value, event.message, f" [{details}]" if details else "")


async def _watch_parent(original_parent: int, stop: asyncio.Event) -> None:
    # When the parent dies the kernel re-parents us (to init or a subreaper),
    # so getppid() changes; polling needs no platform-specific API.
    while not stop.is_set():
        if os.getppid() != original_parent:
            _log.info("parent process %d is gone: shutting down", original_parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_POLL_INTERVAL)


def _access(args: argparse.Namespace) -> tuple[TokenAuthority | None, ssl.SSLContext | None]:
    """The token authority (None with --no-auth) and TLS context (None without TLS).

    Raises:
        SecretFileError, OSError, ssl.SSLError: unusable secret or certificate files.
    """
    authority: TokenAuthority | None = None
    if args.no_auth:
        _log.warning(
            "--no-auth: no invite tokens are checked; anyone who can reach this server"
            " can read, change and delete every document on it"
        )
    else:
        path = secret_path(args.secret_file, args.db)
        authority, created = TokenAuthority.from_file(path)
        if created:
            print(f"crdt-sync-server: created the token secret {path} (mode 0600)", file=sys.stderr)
    context = None
    if args.tls_cert is not None:
        context = server_ssl_context(args.tls_cert, args.tls_key)
    return authority, context


def _invite_hint(args: argparse.Namespace, scheme: str, port: int) -> str:
    where = (
        f" --secret-file {args.secret_file}"
        if args.secret_file is not None
        else (f" --db {args.db}" if args.db is not None else "")
    )
    url = f"{scheme}://{_url_host(share_host(args.host))}:{port}"
    pin = f" --tls-cert {args.tls_cert}" if args.tls_cert is not None else ""
    return (
        "invite tokens are required; make an invite link with:"
        f" crdt-sync-server token DOCUMENT [--role read]{where} --url {url}{pin}"
    )


async def run(args: argparse.Namespace) -> int:
    """Run the server described by parsed ``args`` until a signal (or the parent) stops it."""
    original_parent = os.getppid()
    try:
        authority, context = _access(args)
    except (SecretFileError, OSError, ssl.SSLError) as error:
        print(f"crdt-sync-server: {error}", file=sys.stderr)
        return 1
    try:
        limits = limits_from_args(args)
    except ValueError as error:
        print(f"crdt-sync-server: {error}", file=sys.stderr)
        return 2
    try:
        registry = _make_registry(args)
    except StorageError as error:
        print(f"crdt-sync-server: {error}", file=sys.stderr)
        return 1
    server = WebSocketServer(
        args.host,
        args.port,
        registry,
        _make_compressor(args.compression),
        allow_create=not args.no_create,
        max_connections=args.max_connections,
        max_message_size=args.max_message_size,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        auth=authority,
        ssl=context,
        allowed_origins=args.allow_origin,
        limits=limits,
        metrics=args.metrics,
        # One per edit, and _log_event shows them only at DEBUG.
        change_events=_log.isEnabledFor(logging.DEBUG),
    )
    subscription = server.server_events.subscribe(_log_event)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))
    watcher = (
        asyncio.create_task(_watch_parent(original_parent, stop)) if args.exit_with_parent else None
    )
    try:
        try:
            await server.start()
        except OSError as error:
            print(
                f"crdt-sync-server: cannot listen on {args.host}:{args.port}: {error}",
                file=sys.stderr,
            )
            return 1
        try:
            await registry.check_health()
        except StorageError as error:  # keeps running: it retries until the store answers
            _log.warning("the store does not answer yet: %s", error)
        # What startup made (modules, classes, tables) lives as long as the process:
        # moved out of the collector's generations, a full collection no longer
        # walks it (gc.freeze); what the server makes afterwards is collected as usual.
        gc.freeze()
        print(listening_line(args.host, server.port, server.scheme), flush=True)
        if authority is not None:
            print(
                f"crdt-sync-server: {_invite_hint(args, server.scheme, server.port)}",
                file=sys.stderr,
            )
        await stop.wait()
        _log.info("stopping")
        return 0
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await server.stop()
        await registry.close()
        subscription.cancel()
        for signum in installed:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["token"]:
        return token_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.commit_interval is not None and (args.memory or args.redis is not None):
        parser.error("--commit-interval applies to the SQLite store only (not --memory, --redis)")
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # websockets logs every failed handshake at INFO+; keep its noise one level down.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl+C during shutdown
        return 130
