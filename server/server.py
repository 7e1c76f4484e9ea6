"""The asyncio WebSocket server: a thin driver around :class:`~server.session.ServerSession`.

Theory of operation
-------------------
Each WebSocket connection gets a :class:`ServerSession` (the protocol, sans-I/O)
and two loops: the *reader* feeds frames to the session and carries out what
the session asks for (look the document up, apply changes through the
registry, relay them, answer presence queries); the *writer* sends the
session's output in order and closes the socket when the session closes.
A slow client therefore never blocks the others: relays go into its outbox,
and a client whose outbox grows past ``max_outbound_bytes`` is dropped
(it resynchronises when it reconnects).

The URL path names the document (``ws://host:port/<document-id>``). All
connections to one document share a *room*: the server's document, its
epoch, its clients and their presence. A room is created when the first
client's handshake is accepted (creating the document in the registry when
``allow_create`` is on) and released ``idle_unload_after`` seconds after the
last client left (the registry flushes it first). A per-document lock
serialises joining and unloading so no client ever holds a copy the
registry has dropped.

Ordering guarantees:

* a client's changes are applied in the order it sent them (one reader per
  connection, awaited in turn);
* they are relayed to the other clients only after the registry stored
  them, and acknowledged to the sender with the registry's *durable*
  version vector, so an acknowledged change survives a crash;
* a joining client is added to the room in the same step that computes
  what it lacks, so it misses no relay (at worst it gets a duplicate,
  which the CRDT ignores);
* a client's snapshot upload (its document cannot send changes: loaded
  from a snapshot, or compacted) is merged only if the merge is possible,
  stored (the merged state) before the ``Ack``, and pushed to the other
  clients as an unsolicited ``DocumentStatus`` carrying the snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from crdt_sync import Change, CRDTDocument, CRDTError, Snapshot, UpdateEvent
from crdt_sync.exceptions import PendingBufferFullError
from crdt_sync.sync import (
    DEFAULT_MAX_MESSAGE_SIZE,
    AwarenessUpdate,
    Changes,
    Compressor,
    DocumentStatus,
    ErrorCode,
    HandshakeRequest,
    NoCompression,
    encode_message,
)

from .events import EventStream, ServerEvent, ServerEventType
from .exceptions import ChangesRejectedError, DocumentExistsError, RegistryError, ServerStateError
from .registry import CRDTServerRegistry, InMemoryServerRegistry
from .session import (
    AwarenessQueried,
    AwarenessReceived,
    ChangesReceived,
    DocumentStatusSent,
    ErrorReceived,
    HandshakeRequested,
    ProtocolViolation,
    ServerSession,
    SessionClosed,
    SessionState,
    SnapshotUploaded,
)

__all__ = ["Authenticator", "WebSocketServer"]

_log = logging.getLogger(__name__)

#: ``authenticate(request) -> bool`` (or an awaitable of it): may this client join?
Authenticator = Callable[[HandshakeRequest], "bool | Awaitable[bool]"]


@dataclass
class _Presence:
    update: AwarenessUpdate
    owner: _Connection
    last_seen: float


@dataclass(eq=False)
class _Room:
    document_id: str
    document: CRDTDocument
    epoch: str
    connections: set[_Connection] = field(default_factory=set)
    presence: dict[str, _Presence] = field(default_factory=dict)
    unload_task: asyncio.Task[None] | None = None


class _Connection:
    """One client: its socket, its session, its outbox and writer task."""

    def __init__(self, ws: ServerConnection, session: ServerSession, max_outbound: int) -> None:
        self.ws = ws
        self.session = session
        self.client_id = session.session_id
        self.room: _Room | None = None
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_bytes = 0
        self._max_outbound = max_outbound
        self._wakeup = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    def flush(self) -> None:
        """Move the session's output to the outbox and wake the writer."""
        frames = self.session.messages_to_send()
        if frames:
            for frame in frames:
                self._outbox.append(frame)
                self._outbox_bytes += len(frame)
            if self._outbox_bytes > self._max_outbound and self.session.state is SessionState.OPEN:
                # The client does not read fast enough: drop the backlog (it will
                # resynchronise on reconnect) and tell it why.
                self._outbox.clear()
                self._outbox_bytes = 0
                self.session.fail(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"more than {self._max_outbound} bytes waiting to be sent: client too slow",
                )
                self._outbox.extend(self.session.messages_to_send())
        self._wakeup.set()

    async def write_loop(self) -> None:
        """Send queued frames in order; close the socket once the session is closed."""
        ws = self.ws
        try:
            while True:
                while self._outbox:
                    frame = self._outbox.popleft()
                    self._outbox_bytes -= len(frame)
                    await ws.send(frame)
                if self.session.state is SessionState.CLOSED:
                    code = int(self.session.close_code or 1000)
                    await ws.close(code, self.session.close_reason)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        except ConnectionClosed:
            return


def _document_id_from_path(path: str) -> str | None:
    """The document id named by a request path ("/doc?x" -> "doc"; "/" -> None)."""
    name = urlsplit(path).path.lstrip("/")
    return name or None


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
        authenticate: optional check of each handshake request (token, name);
            returning False refuses the client with ``UNAUTHORIZED``.
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
        self.server_events: EventStream[ServerEvent] = EventStream()
        self._server: Server | None = None
        self._stopped = False
        self._connections: set[_Connection] = set()
        self._rooms: dict[str, _Room] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._remove_snapshot_listener: Callable[[], None] | None = None

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
    def is_running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` was not called."""
        return self._server is not None and not self._stopped

    @property
    def connection_count(self) -> int:
        """Open connections (handshake done or not)."""
        return len(self._connections)

    def loaded_document_ids(self) -> list[str]:
        """Documents that currently have a room (clients, or within the grace period)."""
        return list(self._rooms)

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
        )
        self._remove_snapshot_listener = self.registry.add_snapshot_listener(self._on_snapshot)
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_awareness(), name="crdt-awareness-sweeper"
        )
        self._emit(
            ServerEventType.STARTED,
            f"listening on {self.host}:{self.port}",
            host=self.host,
            port=self.port,
        )

    async def stop(self) -> None:
        """Close every connection (1001), release every document, flush the registry.

        Emits STOPPED and ends :attr:`server_events`. Idempotent.
        """
        if self._server is None or self._stopped:
            self._stopped = True
            return
        self._stopped = True
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
        for document_id in list(self._rooms):
            try:
                await self.registry.release_document(document_id)
            except RegistryError as error:
                self._emit(
                    ServerEventType.ERROR,
                    f"could not release {document_id!r}: {error}",
                    document_id=document_id,
                )
        self._rooms.clear()
        try:
            await self.registry.flush()
        except RegistryError as error:
            self._emit(ServerEventType.ERROR, f"could not flush the registry: {error}")
        if self._remove_snapshot_listener is not None:
            self._remove_snapshot_listener()
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
        self.server_events.emit(ServerEvent(kind, message, data))

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

    # -- one connection -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        session = ServerSession(
            _document_id_from_path(path),
            self.compressor,
            max_message_size=self.max_message_size,
        )
        connection = _Connection(ws, session, self.max_outbound_bytes)
        self._connections.add(connection)
        remote = ws.remote_address
        self._emit(
            ServerEventType.CLIENT_CONNECTED,
            f"client {connection.client_id} connected from {remote}",
            client_id=connection.client_id,
            remote_address=str(remote),
            path=path,
        )
        writer = asyncio.get_running_loop().create_task(connection.write_loop())
        reason = "connection closed"
        try:
            if self._stopped:
                session.close()
            elif len(self._connections) > self.max_connections:
                session.fail(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"the server holds its maximum of {self.max_connections} connections",
                )
            else:
                await self._serve(connection)
        except ConnectionClosed as closed:
            reason = _describe_close(closed)
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
            self._leave_room(connection)
            if session.state is not SessionState.CLOSED:
                session.connection_lost(reason)
            connection.flush()
            with contextlib.suppress(Exception):
                await writer
            self._connections.discard(connection)
            self._emit(
                ServerEventType.CLIENT_DISCONNECTED,
                f"client {connection.client_id} disconnected ({reason})",
                client_id=connection.client_id,
                document_id=session.document_id,
                peer_id=session.peer_id,
                reason=reason,
                code=session.close_code and int(session.close_code),
            )

    async def _serve(self, connection: _Connection) -> None:
        session = connection.session
        ws = connection.ws
        try:
            async with asyncio.timeout(self.handshake_timeout):
                while session.state in (SessionState.AWAITING_HANDSHAKE, SessionState.HANDSHAKING):
                    session.receive_message(await ws.recv())
                    await self._process(connection)
        except TimeoutError:
            session.fail(
                ErrorCode.TIMEOUT, f"no handshake within {self.handshake_timeout:g} seconds"
            )
            connection.flush()
            return
        while session.state is SessionState.OPEN:
            session.receive_message(await ws.recv())
            await self._process(connection)

    async def _process(self, connection: _Connection) -> None:
        """Carry out everything the session asked for, until it asks for nothing."""
        session = connection.session
        while True:
            events = session.events_received()
            if not events:
                break
            for event in events:
                if isinstance(event, HandshakeRequested):
                    await self._join(connection, event)
                elif isinstance(event, ChangesReceived):
                    await self._apply(connection, event.changes)
                elif isinstance(event, SnapshotUploaded):
                    await self._apply_snapshot(connection, event.snapshot)
                elif isinstance(event, AwarenessReceived):
                    self._awareness_update(connection, event.update)
                elif isinstance(event, AwarenessQueried):
                    room = connection.room
                    if room is not None:
                        session.send_awareness_state(p.update for p in room.presence.values())
                elif isinstance(event, DocumentStatusSent):
                    _log.debug("%s resynchronised", connection.client_id)
                elif isinstance(event, ProtocolViolation | ErrorReceived):
                    side = "sent" if isinstance(event, ProtocolViolation) else "reported"
                    self._emit(
                        ServerEventType.ERROR,
                        f"client {connection.client_id} {side} {event.code.name}: {event.message}",
                        client_id=connection.client_id,
                        document_id=session.document_id,
                        code=event.code.name,
                    )
                elif isinstance(event, SessionClosed):
                    pass  # the writer closes the socket once the outbox is empty
            connection.flush()
        connection.flush()

    # -- rooms --------------------------------------------------------------------------

    def _lock(self, document_id: str) -> asyncio.Lock:
        lock = self._locks.get(document_id)
        if lock is None:
            lock = self._locks[document_id] = asyncio.Lock()
        return lock

    async def _join(self, connection: _Connection, event: HandshakeRequested) -> None:
        session = connection.session
        request = event.request
        document_id = event.document_id
        if self.authenticate is not None:
            verdict = self.authenticate(request)
            allowed = await verdict if isinstance(verdict, Awaitable) else verdict
            if not allowed:
                session.reject_handshake(
                    ErrorCode.UNAUTHORIZED, "not allowed to join this document"
                )
                return
        try:
            async with self._lock(document_id):
                room = self._rooms.get(document_id)
                if room is None:
                    room = await self._open_room(document_id)
                    if room is None:
                        session.reject_handshake(
                            ErrorCode.DOCUMENT_NOT_FOUND,
                            f"no document {document_id!r} on this server",
                        )
                        return
                if room.unload_task is not None:
                    room.unload_task.cancel()
                    room.unload_task = None
                durable = await self.registry.durable_version_vector(document_id)
                if session.state is not SessionState.HANDSHAKING or self._stopped:
                    return  # timed out or closed while we looked the document up
                # Same synchronous step: compute what the client lacks, join the room.
                session.accept_handshake(room.document, room.epoch, durable)
                room.connections.add(connection)
                connection.room = room
        except RegistryError as error:
            self._emit(
                ServerEventType.ERROR,
                f"cannot open {document_id!r}: {error}",
                client_id=connection.client_id,
                document_id=document_id,
            )
            if session.state is SessionState.HANDSHAKING:
                session.reject_handshake(ErrorCode.INTERNAL_ERROR, "the document cannot be opened")
            return
        self._emit(
            ServerEventType.CLIENT_HANDSHAKE,
            f"client {connection.client_id} joined {document_id!r} as {request.peer_id}",
            client_id=connection.client_id,
            document_id=document_id,
            peer_id=request.peer_id,
            name=request.display_name,
        )

    async def _open_room(self, document_id: str) -> _Room | None:
        """Load (or create) the document and make its room; None if it does not exist."""
        document = await self.registry.get_document(document_id)
        if document is None:
            if not self.allow_create:
                return None
            try:
                document = await self.registry.create_document(document_id)
            except DocumentExistsError:  # created behind our back (shared registry)
                document = await self.registry.get_document(document_id)
                if document is None:
                    return None
        epoch = await self.registry.get_epoch(document_id)
        room = _Room(document_id, document, epoch)
        self._rooms[document_id] = room
        return room

    def _leave_room(self, connection: _Connection) -> None:
        room = connection.room
        if room is None:
            return
        connection.room = None
        room.connections.discard(connection)
        for peer_id, presence in list(room.presence.items()):
            if presence.owner is connection:
                del room.presence[peer_id]
                self._relay_awareness(
                    room, AwarenessUpdate(peer_id, presence.update.clock, None), connection
                )
        if not room.connections and not self._stopped:
            room.unload_task = self._spawn(
                self._unload_later(room), f"crdt-unload-{room.document_id}"
            )

    async def _unload_later(self, room: _Room) -> None:
        await asyncio.sleep(self.idle_unload_after)
        async with self._lock(room.document_id):
            if room.connections or self._rooms.get(room.document_id) is not room:
                return
            try:
                await self.registry.release_document(room.document_id)
            except RegistryError as error:
                self._emit(
                    ServerEventType.ERROR,
                    f"could not release {room.document_id!r}: {error}",
                    document_id=room.document_id,
                )
                return  # keep it loaded: nothing is dropped that was not stored
            del self._rooms[room.document_id]
            room.unload_task = None
            _log.info("unloaded idle document %r", room.document_id)

    # -- changes ------------------------------------------------------------------------

    async def _apply(self, connection: _Connection, changes: tuple[Change, ...]) -> None:
        session = connection.session
        room = connection.room
        if room is None:  # pragma: no cover - OPEN sessions are always in a room
            return
        refusal: Exception | None = None
        # Relay as soon as the changes are in the document, while the registry
        # still writes them: only the sender's Ack waits for durability. If the
        # server dies before the write, nothing is lost: the sender still holds
        # them unacknowledged and every client sends what the server lacks at the
        # next handshake.
        submitted = {change.id for change in changes}
        relayed: set[Any] = set()

        def relay_early(event: UpdateEvent) -> None:
            early = [c for c in event.changes if c.id in submitted and c.id not in relayed]
            if not event.local and early:
                relayed.update(c.id for c in early)
                self._relay_changes(room, early, connection)

        subscription = room.document.on_update(relay_early)
        try:
            applied = await self.registry.apply_changes(room.document_id, changes)
        except ChangesRejectedError as error:
            applied, refusal = error.applied, error.cause
        except RegistryError as error:
            self._emit(
                ServerEventType.ERROR,
                f"storing changes of {connection.client_id} failed: {error}",
                client_id=connection.client_id,
                document_id=room.document_id,
            )
            session.fail(ErrorCode.INTERNAL_ERROR, "the server could not store the changes")
            return
        finally:
            subscription.cancel()
        if applied:
            late = [change for change in applied if change.id not in relayed]
            if late:
                self._relay_changes(room, late, connection)
            self._emit(
                ServerEventType.CLIENT_CHANGE_APPLIED,
                f"{len(applied)} change(s) from {connection.client_id} applied to"
                f" {room.document_id!r}",
                client_id=connection.client_id,
                document_id=room.document_id,
                count=len(applied),
            )
        durable = await self.registry.durable_version_vector(room.document_id)
        session.send_acknowledgement(durable)
        if refusal is not None:
            _refuse(session, refusal, "change")
            return
        document = room.document
        if document.pending_count > self.max_pending_changes:
            session.fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"the document holds more than {self.max_pending_changes} changes waiting"
                " for missing dependencies",
            )
            return
        known = document.version_vector
        waiting = sum(1 for change in changes if not known.includes(change.id))
        if waiting:
            session.send_out_of_sync(
                f"{waiting} change(s) wait for dependencies the server lacks: resynchronise"
            )
            self._emit(
                ServerEventType.CLIENT_OUT_OF_SYNC,
                f"client {connection.client_id} is out of sync ({waiting} waiting)",
                client_id=connection.client_id,
                document_id=room.document_id,
                count=waiting,
            )

    async def _apply_snapshot(self, connection: _Connection, snapshot: Snapshot) -> None:
        """A client uploaded its whole state: merge, store, acknowledge, push to the others.

        The merge is validated before the document is touched (the registry's
        ``apply_snapshot``); the upload is acknowledged only once the merged state
        is durable. The other clients get the uploaded snapshot itself (exactly
        what they lack, and covered by the durable version vector sent with it)
        as an unsolicited ``DocumentStatus``; changes that waited for what the
        snapshot brought are relayed to everyone, the uploader included.
        """
        session = connection.session
        room = connection.room
        if room is None:  # pragma: no cover - OPEN sessions are always in a room
            return
        refusal: Exception | None = None
        news = not snapshot.version_vector <= room.document.version_vector
        try:
            merged, ready = await self.registry.apply_snapshot(room.document_id, snapshot)
        except ChangesRejectedError as error:
            ready, refusal = error.applied, error.cause
            # Refused before the merge (document untouched) or after it (stored).
            merged = news and snapshot.version_vector <= room.document.version_vector
        except RegistryError as error:
            self._emit(
                ServerEventType.ERROR,
                f"storing the snapshot of {connection.client_id} failed: {error}",
                client_id=connection.client_id,
                document_id=room.document_id,
            )
            session.fail(ErrorCode.INTERNAL_ERROR, "the server could not store the snapshot")
            return
        if refusal is not None and not merged:
            # Refused before the merge: the document and the store are untouched.
            _refuse(session, refusal, "snapshot")
            return
        durable = await self.registry.durable_version_vector(room.document_id)
        session.send_acknowledgement(durable)
        if merged:
            others = [c for c in room.connections if c is not connection]
            if others:
                push = encode_message(DocumentStatus(durable, snapshot=snapshot), self.compressor)
                for target in others:
                    target.session.send_frame(push)
                    target.flush()
            if ready:
                self._relay_changes(room, ready, None)
            self._emit(
                ServerEventType.CLIENT_CHANGE_APPLIED,
                f"snapshot from {connection.client_id} ({len(snapshot)} bytes) merged into"
                f" {room.document_id!r}",
                client_id=connection.client_id,
                document_id=room.document_id,
                peer_id=session.peer_id,
                snapshot=True,
                snapshot_bytes=len(snapshot),
                version_vector=dict(snapshot.version_vector),
                count=len(ready),
            )
        if refusal is not None:
            _refuse(session, refusal, "snapshot")

    def _relay_changes(
        self, room: _Room, changes: list[Change], sender: _Connection | None
    ) -> None:
        """Send ``changes`` to the room's clients except ``sender`` (None: to all)."""
        targets = [c for c in room.connections if c is not sender]
        if not targets:
            return
        # One encoding for every target: they all use the server's compressor.
        frame = encode_message(Changes(tuple(changes)), self.compressor)
        for target in targets:
            target.session.send_frame(frame)
            target.flush()

    # -- presence -----------------------------------------------------------------------

    def _awareness_update(self, connection: _Connection, update: AwarenessUpdate) -> None:
        room = connection.room
        if room is None:  # pragma: no cover - OPEN sessions are always in a room
            return
        current = room.presence.get(update.peer_id)
        if current is not None and update.clock < current.update.clock:
            return  # stale (reordered or replayed): ignore
        now = time.monotonic()
        if update.state is None:
            if current is None:
                # Leaving without ever having announced a presence: nobody needs
                # to hear it (relaying it would cost N messages per departure, so
                # N clients leaving together would cost N squared).
                return
            room.presence.pop(update.peer_id, None)
        else:
            room.presence[update.peer_id] = _Presence(update, connection, now)
        # Renewals are relayed too: clients expire presence that is not renewed.
        self._relay_awareness(room, update, connection)

    def _relay_awareness(self, room: _Room, update: AwarenessUpdate, sender: _Connection) -> None:
        frame: bytes | None = None
        for target in room.connections:
            if target is sender or target.session.state is not SessionState.OPEN:
                continue
            if frame is None:
                frame = encode_message(update, self.compressor)
            target.session.send_frame(frame)
            target.flush()

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
        dropped = 0
        deadline = now - self.awareness_timeout
        for room in list(self._rooms.values()):
            for peer_id, presence in list(room.presence.items()):
                if presence.last_seen < deadline:
                    del room.presence[peer_id]
                    dropped += 1
                    self._relay_awareness(
                        room, AwarenessUpdate(peer_id, presence.update.clock, None), presence.owner
                    )
        return dropped


def _refuse(session: ServerSession, refusal: Exception, what: str) -> None:
    """End the session of a client whose input the document refused."""
    if isinstance(refusal, PendingBufferFullError):
        session.fail(ErrorCode.LIMIT_EXCEEDED, f"too many changes wait: {refusal}")
    elif isinstance(refusal, CRDTError):
        # Invalid change, a snapshot that cannot be merged (kind clash, dangling
        # origins): the client's data, not our failure.
        session.fail(ErrorCode.INVALID_MESSAGE, f"invalid {what}: {refusal}")
    else:
        session.fail(ErrorCode.INTERNAL_ERROR, f"{what} refused: {refusal}")


def _describe_close(closed: ConnectionClosed) -> str:
    frame = closed.rcvd or closed.sent
    if frame is None:
        return "connection lost"
    return f"closed {frame.code}{': ' + frame.reason if frame.reason else ''}"
