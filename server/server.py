"""The asyncio WebSocket server: its lifecycle, around rooms and connections.

The jobs live one per module:

* :mod:`server.server` (here) -- listen, accept connections within the
  bounds, stop cleanly (close every client, release every document, flush
  the registry), emit server events;
* :mod:`server.connection` -- one client: its socket, its sans-I/O
  :class:`~server.session.ServerSession`, its reader and writer;
* :mod:`server.rooms` -- one room per loaded document: joining, applying and
  relaying changes and snapshots (no sockets);
* :mod:`server.catchup` -- what a client that is behind gets (changes, or the
  document's kept snapshot and what came after it);
* :mod:`server.presence` -- who is on a document and where their cursor is;
* :mod:`server.registry` -- where documents are stored.

The URL path names the document (``ws://host:port/<document-id>``,
percent-encoded: see :mod:`crdt_sync.sync.document_ids`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Origin

from crdt_sync.sync import DEFAULT_MAX_MESSAGE_SIZE, Compressor, ErrorCode, NoCompression
from crdt_sync.sync.document_ids import document_id_from_url_path

from .auth import TokenAuthority
from .connection import Authenticator, Connection, FrameConnection, describe_close
from .events import EventStream, ServerEvent, ServerEventType
from .exceptions import RegistryError, ServerStateError
from .metrics import CONTENT_TYPE, ServerMetrics
from .registry import CRDTServerRegistry, InMemoryServerRegistry
from .rooms import Room, Rooms
from .session import ServerSession, SessionState
from .trust import HostQuotas, Limits, printable

__all__ = ["Authenticator", "WebSocketServer"]

_log = logging.getLogger(__name__)

# Refusals after which the peer cools down at its address (Limits.abuse_cooldown): an
# honest client never sends an undecodable frame nor speaks for another peer (a
# refused upload of an honest replica does not close), and is rarely over its rates.
_ABUSE = frozenset(
    code.name
    for code in (
        ErrorCode.RATE_LIMITED,
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.FORBIDDEN_PEER,
    )
)

#: Seconds ``/healthz`` waits for the store to answer.
HEALTH_TIMEOUT = 2.0


class WebSocketServer:
    """Serves documents from ``server_registry`` to WebSocket clients.

    Args:
        host: address to listen on (``"0.0.0.0"``: every IPv4 interface).
        port: TCP port; 0 picks a free one (read it from :attr:`port`).
        server_registry: where documents live (default: a new
            :class:`~server.registry.InMemoryServerRegistry`). The server
            flushes it on :meth:`stop` but does not close it: its owner does.
        compressor: frame compression; clients must announce the same name.
        allow_create: create a document on its first handshake; when False an
            unknown id is refused with ``DOCUMENT_NOT_FOUND``.
        max_message_size: largest accepted frame (and decompressed body), in
            bytes; larger ones get ``MESSAGE_TOO_LARGE`` and a close. Frames
            over twice this are cut off by the WebSocket layer (close 1009).
        max_pending_changes: a document holding more changes that wait for
            missing dependencies refuses the client that sent them
            (``LIMIT_EXCEEDED``) and closes its connection.
        max_connections: further connections get ``TOO_MANY_CONNECTIONS``.
        handshake_timeout: seconds a new connection has to complete its
            handshake (``TIMEOUT`` otherwise).
        ping_interval, ping_timeout: WebSocket keepalive: a client that does
            not answer a ping within ``ping_timeout`` is dropped (None: off).
        close_timeout: seconds to wait for a client to complete the closing
            handshake before the TCP connection is cut (a dead peer never does).
        awareness_timeout: seconds after which a presence state that was not
            renewed is removed (and its removal relayed).
        idle_unload_after: seconds a document stays loaded after its last
            client left.
        max_outbound_bytes: per-connection bound on frames waiting to be sent.
        metrics: serve ``GET /metrics`` (Prometheus text format) on the same
            port; ``GET /healthz`` is always served.
        authenticate: optional check of each handshake request (token, name);
            returning False refuses the client with ``UNAUTHORIZED``.
        auth: the :class:`~server.auth.TokenAuthority` whose tokens open
            documents. With one, a handshake without a valid token for its
            document is refused with ``UNAUTHORIZED`` (the reason in the
            message), the token's role applies (``READ``: changes refused with
            ``READ_ONLY``), and a connection is closed with ``UNAUTHORIZED``
            when its token expires. None (the default for the library; the
            command line requires tokens unless ``--no-auth``): anyone may join
            and write.
        ssl: a server :class:`ssl.SSLContext` to serve ``wss://``
            (:func:`server.tls.server_ssl_context`).
        allowed_origins: upgrade requests that carry an ``Origin`` header (web
            pages) are refused with HTTP 403 unless it is listed here; desktop
            and library clients send none and are not affected.
        limits: the bounds on each client's work (:class:`server.trust.Limits`:
            rates, per-address quotas, identity checks); defaults apply when None.
        relay_interval: seconds a busy document gathers the changes it relays
            into one frame per client (a quiet one relays at once); 0 relays at
            the end of every turn of the event loop.
        relay_frames_per_second: a busy document sends at most about this many
            relay frames per second, all its clients together: one of ``n``
            clients gathers for ``n / relay_frames_per_second`` seconds when that
            is longer than ``relay_interval`` (5,000: 10 ms at 50 clients, the
            interval up to 25 clients); 0 turns the bound off.
        change_events: emit a ``CLIENT_CHANGE_APPLIED`` event for every batch of
            changes applied (one per edit; about 15 us of work each, with the
            CLI's subscriber, on this project's 2-core test machine); the CLI
            turns them off unless it logs at DEBUG, the only level it shows
            them at.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        server_registry: CRDTServerRegistry | None = None,
        compressor: Compressor | None = None,
        *,
        allow_create: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_pending_changes: int = 10_000,
        max_connections: int = 1_000,
        handshake_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 5.0,
        awareness_timeout: float = 30.0,
        idle_unload_after: float = 60.0,
        max_outbound_bytes: int = 64 * 1024 * 1024,
        authenticate: Authenticator | None = None,
        auth: TokenAuthority | None = None,
        ssl: ssl_module.SSLContext | None = None,
        allowed_origins: Iterable[str] = (),
        limits: Limits | None = None,
        metrics: bool = False,
        relay_interval: float = 0.005,
        relay_frames_per_second: float = 5000.0,
        change_events: bool = True,
    ) -> None:
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_pending_changes", max_pending_changes),
            ("max_connections", max_connections),
            ("max_outbound_bytes", max_outbound_bytes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        for name, seconds in (
            ("handshake_timeout", handshake_timeout),
            ("awareness_timeout", awareness_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"{name} must be positive, not {seconds}")
        if idle_unload_after < 0:
            raise ValueError("idle_unload_after must not be negative")
        self.host = host
        self._requested_port = port
        self.registry = server_registry if server_registry is not None else InMemoryServerRegistry()
        self.compressor: Compressor = compressor if compressor is not None else NoCompression()
        self.allow_create = allow_create
        self.max_message_size = max_message_size
        self.max_pending_changes = max_pending_changes
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.awareness_timeout = awareness_timeout
        self.idle_unload_after = idle_unload_after
        self.max_outbound_bytes = max_outbound_bytes
        self.authenticate = authenticate
        self.auth = auth
        self.ssl = ssl
        self.allowed_origins = tuple(allowed_origins)
        self.limits = limits if limits is not None else Limits()
        self._hosts = HostQuotas(self.limits)
        self.serve_metrics = metrics
        self.metrics = ServerMetrics(
            self.registry, lambda: len(self._connections), lambda: len(self.rooms.rooms)
        )
        self.server_events: EventStream[ServerEvent] = EventStream()
        self._server: Server | None = None
        self._stopped = False
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rooms = Rooms(
            self.registry,
            self.compressor,
            allow_create=allow_create,
            max_pending_changes=max_pending_changes,
            idle_unload_after=idle_unload_after,
            awareness_timeout=awareness_timeout,
            emit=self._emit,
            spawn=self._spawn,
            limits=self.limits,
            hosts=self._hosts,
            metrics=self.metrics,
            relay_interval=relay_interval,
            relay_frames_per_second=relay_frames_per_second,
        )
        self.rooms.change_events = change_events
        self._sweeper: asyncio.Task[None] | None = None
        self._remove_snapshot_listener: Callable[[], None] | None = None
        self._remove_observer: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when 0 was asked).

        Raises:
            ServerStateError: the server is not started.
        """
        if self._server is None:
            raise ServerStateError("the server is not started")
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        raise ServerStateError("the server has no listening socket")

    @property
    def scheme(self) -> str:
        """``"wss"`` when serving TLS, else ``"ws"``."""
        return "wss" if self.ssl is not None else "ws"

    @property
    def is_running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` was not called."""
        return self._server is not None and not self._stopped

    @property
    def connection_count(self) -> int:
        """Open connections (handshake done or not)."""
        return len(self._connections)

    def loaded_document_ids(self) -> list[str]:
        """Documents that currently have a room (clients, or within the grace period)."""
        return list(self.rooms.rooms)

    def room(self, document_id: str) -> Room | None:
        """The room of a loaded document (for tests and monitoring), or None."""
        return self.rooms.get(document_id)

    async def start(self) -> None:
        """Listen. Emits STARTED.

        Raises:
            OSError: cannot bind (port in use, bad address).
            ServerStateError: already started, or stopped (a server runs once).
        """
        if self._server is not None or self._stopped:
            raise ServerStateError("a WebSocketServer can be started once")
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            # Frames up to 2x the bound reach the session, which answers with a
            # typed MESSAGE_TOO_LARGE; anything bigger is cut off by websockets.
            max_size=2 * self.max_message_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            compression=None,  # frames are compressed (or not) by our own Compressor
            ssl=self.ssl,
            # No Origin header (desktop and library clients) is fine; a web page's
            # origin must be allowed explicitly (answered with HTTP 403 otherwise).
            origins=[None, *(Origin(origin) for origin in self.allowed_origins)],
            process_request=self._process_request,
            # Data frames go straight to the connection's session (no recv() hop).
            create_connection=FrameConnection,
        )
        self._remove_snapshot_listener = self.registry.add_snapshot_listener(self._on_snapshot)
        self._remove_observer = self.registry.add_observer(self.rooms)
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_awareness(), name="crdt-awareness-sweeper"
        )
        self._emit(
            ServerEventType.STARTED,
            f"listening on {self.scheme}://{self.host}:{self.port}",
            host=self.host,
            port=self.port,
            tls=self.ssl is not None,
            auth=self.auth is not None,
        )

    async def stop(self) -> None:
        """Close every connection (1001), release every document, flush the registry.

        Emits STOPPED and ends :attr:`server_events`. Idempotent.
        """
        if self._server is None or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        self.rooms.closing = True
        self._hosts.end_waits()  # refusals waiting in the tarpit are sent now
        for connection in list(self._connections):
            connection.session.close()
            connection.flush()
        self._server.close()
        await self._server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *self._tasks, *(t for t in [self._sweeper] if t is not None), return_exceptions=True
        )
        await self.rooms.release_all()
        try:
            await self.registry.flush()
        except RegistryError as error:
            self._emit(ServerEventType.ERROR, f"could not flush the registry: {error}")
        if self._remove_snapshot_listener is not None:
            self._remove_snapshot_listener()
        if self._remove_observer is not None:
            self._remove_observer()
        self._emit(ServerEventType.STOPPED, "server stopped")
        self.server_events.close()

    async def __aenter__(self) -> WebSocketServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- events -------------------------------------------------------------------------

    def _emit(self, kind: ServerEventType, message: str, **data: Any) -> None:
        # Messages and strings quote what clients chose (names, error texts, ids):
        # control characters are escaped here, once, so no log line can be forged.
        for key, value in data.items():  # ``data`` is this call's own dict
            if isinstance(value, str):
                data[key] = printable(value, 1000)
        self.server_events.emit(ServerEvent(kind, printable(message, 4000), MappingProxyType(data)))

    def _on_snapshot(self, document_id: str, snapshot: object) -> None:
        self._emit(
            ServerEventType.SNAPSHOT_CREATED,
            f"snapshot of {document_id!r} stored",
            document_id=document_id,
        )

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- plain HTTP on the WebSocket port -----------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Answer ``GET /healthz`` and ``GET /metrics``; refuse an address at its
        connection cap before the upgrade (HTTP 429: a flood of connections costs
        an HTTP reply each, not a WebSocket session); let everything else upgrade."""
        path = urlsplit(request.path).path
        if path == "/healthz":
            return await self._healthz(ws)
        if path == "/metrics":
            if not self.serve_metrics:
                return ws.respond(HTTPStatus.NOT_FOUND, "metrics are off (--metrics)\n")
            return _http_response(HTTPStatus.OK, CONTENT_TYPE, self.metrics.exposition())
        host = _host_of(ws)
        cap = self.limits.max_connections_per_ip
        if self._hosts.connections(host) >= cap:
            # Answered after a pause (a few at a time per address, the rest at once):
            # an address that keeps connecting does so at the pace of the pause.
            async with self._hosts.tarpit(host):
                pass
            self.metrics.refusals.labels(ErrorCode.TOO_MANY_CONNECTIONS.name).inc()
            return _http_response(
                HTTPStatus.TOO_MANY_REQUESTS,
                "text/plain; charset=utf-8",
                f"TOO_MANY_CONNECTIONS: {cap} connections from {host} already\n".encode(),
            )
        return None

    async def _healthz(self, ws: ServerConnection) -> Response:
        """200 when the server runs and its store answers; 503 (with the reason) otherwise."""
        storage = "ok"
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self.registry.check_health()
        except (RegistryError, TimeoutError) as error:
            storage = f"unavailable: {error or 'no answer within the timeout'}"
        self.metrics.storage_up.set(1 if storage == "ok" else 0)
        healthy = storage == "ok" and not self._stopped
        body = {
            "status": "ok" if healthy else "unavailable",
            "storage": storage,
            "registry": type(self.registry).__name__,
            "connections": len(self._connections),
            "documents_loaded": len(self.rooms.rooms),
        }
        return _http_response(
            HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE,
            "application/json",
            (json.dumps(body) + "\n").encode(),
        )

    # -- one connection -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        session = ServerSession(
            document_id_from_url_path(path),
            self.compressor,
            max_message_size=self.max_message_size,
            limits=self.limits,
        )
        remote = ws.remote_address
        host = _host_of(ws)
        connection = Connection(
            ws, session, self.max_outbound_bytes, self.limits, host, self.metrics
        )
        self._connections.add(connection)
        counted = False
        self._emit(
            ServerEventType.CLIENT_CONNECTED,
            f"client {connection.client_id} connected from {remote}",
            client_id=connection.client_id,
            remote_address=str(remote),
            path=path,
        )
        reason = "connection closed"
        try:
            if self._stopped:
                session.close()
            elif len(self._connections) > self.max_connections:
                session.fail(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"the server holds its maximum of {self.max_connections} connections",
                )
            elif not (counted := self._hosts.connect(host)):
                session.fail(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"{self.limits.max_connections_per_ip} connections from {host} already",
                )
            else:
                await connection.serve(
                    self.rooms,
                    handshake_timeout=self.handshake_timeout,
                    authenticate=self.authenticate,
                    emit=self._emit,
                    authority=self.auth,
                )
        except ConnectionClosed as closed:
            reason = describe_close(closed)
        except Exception as error:  # a bug here must not take the server down
            _log.exception("connection %s failed", connection.client_id)
            self._emit(
                ServerEventType.ERROR,
                f"internal error on {connection.client_id}: {error!r}",
                client_id=connection.client_id,
            )
            session.fail(ErrorCode.INTERNAL_ERROR, "internal server error")
        finally:
            if session.state is SessionState.CLOSED and session.close_reason:
                reason = session.close_reason
                code_name = reason.split(":", 1)[0]
                if code_name in ErrorCode.__members__:
                    self.metrics.refusals.labels(code_name).inc()
                if (
                    code_name in _ABUSE
                    and session.peer_id is not None
                    and not connection.cooling_refused  # a retry does not prolong it
                ):
                    self._hosts.cool_down(host, session.peer_id)
            self.rooms.leave(connection)
            if session.state is not SessionState.CLOSED:
                session.connection_lost(reason)
            await connection.finish()
            self._connections.discard(connection)
            if counted:
                self._hosts.disconnect(host)
            self._emit(
                ServerEventType.CLIENT_DISCONNECTED,
                f"client {connection.client_id} disconnected ({reason})",
                client_id=connection.client_id,
                document_id=session.document_id,
                peer_id=session.peer_id,
                reason=reason,
                code=session.close_code and int(session.close_code),
            )

    # -- presence -----------------------------------------------------------------------

    async def _sweep_awareness(self) -> None:
        """Remove presence that was not renewed within ``awareness_timeout``."""
        period = self.awareness_timeout / 4
        while True:
            await asyncio.sleep(period)
            self.expire_awareness(time.monotonic())

    def expire_awareness(self, now: float) -> int:
        """Drop presence states last renewed before ``now - awareness_timeout``.

        Relays the removals; returns how many were dropped. Runs periodically;
        public so tests can drive it without waiting.
        """
        return self.rooms.expire_awareness(now)


def _host_of(ws: ServerConnection) -> str:
    """The client's address (per-address quotas), "" when unknown."""
    remote = ws.remote_address
    return str(remote[0]) if isinstance(remote, tuple) and remote else ""


def _http_response(status: HTTPStatus, content_type: str, body: bytes) -> Response:
    """A plain HTTP response (each header once) for ``/healthz`` and ``/metrics``."""
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
