"""The asyncio WebSocket client: a thin driver around :class:`ClientProtocol`.

One supervisor task per client runs connection attempts one after another:
connect the socket, hand the protocol's frames to it and its frames to the
protocol (reader loop, writer task, pinger task, awareness upkeep), and when the
connection ends, wait a backoff delay and try again, until :meth:`disconnect`
or an error reconnecting cannot fix (``DOCUMENT_NOT_FOUND``, ``UNAUTHORIZED``,
``UNSUPPORTED_PROTOCOL_VERSION``, ...), which leaves the status at ERROR.

Edits need no queue: local changes made while connected are batched and sent
by the writer; changes made while offline stay in the document and the next
handshake sends them (see :mod:`crdt_sync.sync.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import ssl as ssl_module
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.uri import parse_uri

from crdt_sync import Change, CRDTDocument, PeerId, Snapshot, VersionVector

from .access import Role, certificate_fingerprint, parse_pin, pin_matches, split_invite
from .awareness import Awareness
from .compression import Compressor
from .document_ids import document_url_path, validate_document_id
from .events import (
    Acknowledged,
    AwarenessReceived,
    ClientEvent,
    ConnectionLost,
    ErrorOccurred,
    HandshakeCompleted,
    HistoryReceived,
    ReconnectScheduled,
)
from .exceptions import ErrorCode
from .identity import fork_with_new_peer
from .messages import DEFAULT_MAX_MESSAGE_SIZE, AwarenessState, AwarenessUpdate
from .protocol import ClientProtocol, count_unacknowledged
from .streams import EventStream

__all__ = ["ConnectionStatus", "ReconnectPolicy", "WebSocketClient"]

_log = logging.getLogger(__name__)


class ConnectionStatus(enum.Enum):
    """What the client is doing, as shown to users."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff with jitter.

    Attempt ``n`` (1-based) waits ``min(max_delay_s, initial_delay_s * multiplier**(n-1))``
    scaled by a random factor in ``[1 - jitter, 1]`` (so many clients dropped at
    once do not return at once). ``max_attempts`` None retries forever;
    ``enabled`` False never retries.
    """

    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError("need 0 <= initial_delay_s <= max_delay_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be None or >= 0")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # Cap the exponent so huge attempt numbers cannot overflow a float.
        base = self.initial_delay_s * self.multiplier ** min(attempt - 1, 64)
        capped = min(self.max_delay_s, base)
        factor = 1.0 - self.jitter * (rng or random).random()
        return capped * factor

    def allows(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` (1-based) may be made at all."""
        return self.enabled and (self.max_attempts is None or attempt <= self.max_attempts)


class _PinCheck:
    """The pin a connection must match, and what the server presented."""

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.presented: str | None = None
        self.mismatch = False


def _pinned_connection(check: _PinCheck) -> type[ClientConnection]:
    """A ClientConnection that aborts, before the upgrade request is written, when
    the server's certificate is not the pinned one (``connection_made`` runs once
    the TLS handshake is done and before websockets sends anything)."""

    class PinnedConnection(ClientConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            check.presented = certificate_fingerprint(der) if der else None
            if not der or not pin_matches(check.pin, der):
                check.mismatch = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()

    return PinnedConnection


def _pinning_context() -> ssl_module.SSLContext:
    """TLS without authority checks: the pin check replaces them."""
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl_module.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl_module.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class _Outcome:
    handshake_completed: bool
    final: bool
    reason: str


@dataclass(frozen=True, slots=True)
class History:
    """The server's kept history of a document (:meth:`WebSocketClient.fetch_history`).

    ``start`` is where it starts: empty when it reaches back to the document's
    creation, else the version vector of ``base``, the state from which
    ``changes`` (causal order) replay; the server dropped what came before.
    """

    start: VersionVector
    base: Snapshot | None
    changes: tuple[Change, ...]

    @property
    def complete(self) -> bool:
        """Whether the history reaches back to the document's creation."""
        return not self.start


#: Pages :meth:`WebSocketClient.fetch_history` reads at most (a server that
#: never says "last page" cannot keep the client busy forever).
MAX_HISTORY_PAGES = 10_000


def _document_url(url: str, document_id: str) -> tuple[str, str]:
    """(url to open, document id): the URL path names the document; an URL without a
    path gets the document's own id appended. The id must follow the one rule of
    :mod:`crdt_sync.sync.document_ids` (``InvalidDocumentId``, a ``ValueError``)."""
    try:
        parsed = parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r} ({exc})") from None
    path = parsed.path.split("?", 1)[0]
    name = urllib.parse.unquote(path.lstrip("/"))
    if name:
        return url, validate_document_id(name)
    base = url.split("?", 1)[0].rstrip("/")
    query = url[len(url.split("?", 1)[0]) :]
    return f"{base}{document_url_path(validate_document_id(document_id))}{query}", document_id


class WebSocketClient:
    """Keeps ``document`` in sync with the server document at ``url``.

    ``url`` is ``ws://host:port/<document-id>`` or ``wss://...`` (without a path the
    document's own ``document_id`` is used), or an invite link carrying a token
    and a certificate pin in its fragment (``...#token=T&pin=sha256:H``): the
    fragment is taken off before connecting and never sent. ``auth_token`` (or
    the link's token) travels in the handshake message only. ``author`` is the
    display name announced in the handshake. ``compressor`` is the compressor to
    offer, or several in order of preference; by default every built-in one is
    offered and the server picks (a server that supports none of them ends in the
    ERROR status with ``UNSUPPORTED_COMPRESSION``).

    TLS (``wss://``): ``ssl`` is the :class:`ssl.SSLContext` to use (default: the
    system's trusted authorities); ``tls_pin="sha256:HEX"`` (or the link's pin)
    accepts exactly the server certificate with that SHA-256 fingerprint (for
    self-signed servers; the authority check is then skipped unless ``ssl`` is
    given too). A certificate that fails either check ends in the ERROR status
    with the reason in :attr:`last_error`: nothing is sent to such a server, and
    there is never a fallback to ``ws://``.

    Refusals that reconnecting cannot fix (``UNAUTHORIZED``: a missing, malformed,
    expired or other-document token; ``DOCUMENT_NOT_FOUND``; ...) stop the client
    in the ERROR status, the reason in :attr:`last_error`. After the handshake
    :attr:`role` says whether the connection may write. The client pings every
    ``ping_interval`` seconds and drops a connection whose ping is unanswered for
    ``ping_timeout`` seconds; a handshake unanswered within ``handshake_timeout``
    also drops it. Frames over ``max_message_size`` are refused.

    Everything runs on the event loop of the task that calls :meth:`connect`; the
    document must only be edited from that loop's thread.
    """

    def __init__(
        self,
        url: str,
        document: CRDTDocument,
        author: str | PeerId | None = None,
        compressor: Compressor | Sequence[Compressor] | None = None,
        reconnect: ReconnectPolicy | None = None,
        *,
        auth_token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        tls_pin: str | None = None,
        ping_interval: float = 15.0,
        ping_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        awareness: Awareness | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if ping_interval <= 0 or ping_timeout <= 0 or handshake_timeout <= 0:
            raise ValueError("ping_interval, ping_timeout and handshake_timeout must be > 0")
        invite = split_invite(url)
        self.url, self.document_id = _document_url(invite.url, document.document_id)
        secure = self.url.startswith("wss://")
        pin = tls_pin if tls_pin is not None else invite.pin
        if (ssl is not None or pin is not None) and not secure:
            raise ValueError("ssl and tls_pin need a wss:// URL (there is no fallback to ws://)")
        self.ssl = ssl
        self.tls_pin = parse_pin(pin) if pin is not None else None
        self.document = document
        self.author = "" if author is None else str(author)
        self.compressor = compressor
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.auth_token = auth_token if auth_token is not None else invite.token
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handshake_timeout = handshake_timeout
        self.max_message_size = max_message_size
        self._rng = rng or random.Random()
        self.awareness = awareness if awareness is not None else Awareness(str(document.peer_id))

        self.connection_status: EventStream[ConnectionStatus] = EventStream()
        """Every status change."""
        self.events: EventStream[ClientEvent] = EventStream()
        """Protocol and connection events (see :mod:`crdt_sync.sync.events`)."""

        self._status = ConnectionStatus.DISCONNECTED
        self._last_error: ErrorOccurred | None = None
        self._acknowledged = VersionVector()
        self._epoch: str | None = None
        self._session_id: str | None = None
        self._role: Role | None = None
        self._fingerprint: str | None = None
        self._compression: str | None = None
        self._protocol: ClientProtocol | None = None
        self._ws: ClientConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._waiters: list[asyncio.Future[bool]] = []
        self._history_waiters: list[asyncio.Future[HistoryReceived]] = []
        self._retry_now: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._send_lock: asyncio.Lock | None = None
        self._batch: list[Change] = []
        self._change_subscription = document.on_change(self._on_local_change)
        self.awareness.outgoing.subscribe(self._on_awareness_outgoing)

    # ------------------------------------------------------------------ public state

    @property
    def status(self) -> ConnectionStatus:
        return self._status

    @property
    def session_id(self) -> str | None:
        """The server's id for the current connection (None when not connected)."""
        return self._session_id

    @property
    def role(self) -> Role | None:
        """What the server lets this client do, from the last handshake (None before
        the first one): :attr:`Role.READ` clients' changes are refused."""
        return self._role

    @property
    def compression(self) -> str | None:
        """The compression the server chose at the last handshake (None before one)."""
        return self._compression

    @property
    def encrypted(self) -> bool:
        """Whether the connection uses TLS (``wss://``)."""
        return self.url.startswith("wss://")

    @property
    def certificate_fingerprint(self) -> str | None:
        """The pin (``sha256:...``) of the certificate the server presented on the last
        connection that got through TLS (None without TLS or before connecting)."""
        return self._fingerprint

    @property
    def epoch(self) -> str | None:
        """The server document's epoch seen at the last handshake."""
        return self._epoch

    @property
    def acknowledged(self) -> VersionVector:
        """Everything the server confirmed it durably stores."""
        return self._acknowledged

    @property
    def unacknowledged_changes(self) -> int:
        """Local changes the server has not yet confirmed (made offline ones included)."""
        return count_unacknowledged(self.document, self._acknowledged)

    @property
    def last_error(self) -> ErrorOccurred | None:
        """The latest error of a connection (sent or received), None after a handshake.

        With status ERROR it says why the client stopped (``UNAUTHORIZED``: the
        token was missing, malformed, expired or for another document, the
        message says which; ``HANDSHAKE_FAILED`` with a message starting
        "security error": the server's TLS certificate failed its check or pin;
        ``PEER_ID_IN_USE``: another replica owns this peer id, see
        :meth:`fork_document`); with
        RECONNECTING why it reconnects (``RATE_LIMITED``: it sent too much).
        """
        return self._last_error

    def fork_document(self) -> CRDTDocument:
        """A new replica of the document under a fresh peer id, keeping every edit
        the server did not acknowledge (:func:`crdt_sync.sync.fork_with_new_peer`).

        For a client stopped with ``PEER_ID_IN_USE``: bind the application's
        handlers to the returned document and connect a new client with it.
        It goes by what *this client* saw acknowledged: a client refused at its
        first handshake saw nothing, so an application that persists the
        acknowledged version (the desktop app does) passes it to
        ``fork_with_new_peer`` instead, or own changes the server already holds
        come back as copies.
        """
        return fork_with_new_peer(self.document, self._acknowledged)

    def _set_status(self, status: ConnectionStatus) -> None:
        if status is not self._status:
            self._status = status
            self.connection_status.emit(status)

    # ------------------------------------------------------------------ connect / disconnect

    async def connect(self) -> bool:
        """Connect (or reconnect now) and wait for the outcome of that attempt.

        Returns True once the handshake completed. Returns False if the attempt
        failed; unless the failure is final (status ERROR), the client keeps
        retrying in the background per its :class:`ReconnectPolicy` until
        :meth:`disconnect`.
        """
        if self._status is ConnectionStatus.CONNECTED:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        if self._supervisor is None or self._supervisor.done():
            self._stopping = False
            self._retry_now = asyncio.Event()
            self._wake = asyncio.Event()
            self._send_lock = asyncio.Lock()
            self._supervisor = asyncio.create_task(self._supervise(), name="crdt-sync-client")
        elif self._retry_now is not None:
            self._retry_now.set()  # skip the rest of a backoff wait
        return await waiter

    async def fetch_history(self) -> History:
        """The server's kept history of the document, read page by page.

        Only while connected (read-only connections too); raises
        :class:`ConnectionError` when not connected or when the connection ends
        before the last page. Nothing is imported into :attr:`document`.
        """
        changes: list[Change] = []
        start: VersionVector | None = None
        base: Snapshot | None = None
        cursor = 0
        for _ in range(MAX_HISTORY_PAGES):
            page = await self._history_page(cursor)
            if start is None:
                start, base = page.start, page.base
            changes.extend(page.changes)
            if page.next_cursor == 0:
                break
            if page.next_cursor <= cursor:
                raise ConnectionError("the server's history cursor went backwards")
            cursor = page.next_cursor
        else:
            raise ConnectionError(f"the server's history has more than {MAX_HISTORY_PAGES} pages")
        return History(start if start is not None else VersionVector(), base, tuple(changes))

    async def _history_page(self, cursor: int) -> HistoryReceived:
        protocol = self._protocol
        if protocol is None or not protocol.is_synced:
            raise ConnectionError("not connected: the history comes from the server")
        waiter: asyncio.Future[HistoryReceived] = asyncio.get_running_loop().create_future()
        self._history_waiters.append(waiter)
        protocol.request_history(cursor)
        self._kick()
        return await waiter

    def _fail_history_waiters(self, reason: str) -> None:
        waiters, self._history_waiters = self._history_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"history not received: {reason}"))

    async def disconnect(self) -> None:
        """Leave cleanly: announce the awareness leave, close the socket, stop
        reconnecting. Status DISCONNECTED. Safe to call at any time; :meth:`connect`
        may be called again afterwards."""
        self._stopping = True
        if self._retry_now is not None:
            self._retry_now.set()
        protocol, ws = self._protocol, self._ws
        if protocol is not None and ws is not None:
            if protocol.is_synced and self.awareness.local_state is not None:
                # Only a peer that announced a presence has one to withdraw.
                protocol.send_awareness_update(self.awareness.leave_update())
            if not protocol.is_closed:
                protocol.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(ws, protocol), timeout=1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=2.0)
        task = self._supervisor
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = None
        self._after_connection()
        self._resolve_waiters(False)
        self._set_status(ConnectionStatus.DISCONNECTED)

    # ------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                self._set_status(
                    ConnectionStatus.CONNECTING if attempt == 0 else ConnectionStatus.RECONNECTING
                )
                outcome = await self._run_connection()
                self._after_connection()
                if not outcome.handshake_completed:
                    self._resolve_waiters(False)
                if self._stopping:
                    break
                self.events.emit(ConnectionLost(outcome.reason))
                if outcome.final:
                    self._set_status(ConnectionStatus.ERROR)
                    self._resolve_waiters(False)
                    break
                attempt = 1 if outcome.handshake_completed else attempt + 1
                if not self.reconnect.allows(attempt):
                    self._set_status(ConnectionStatus.ERROR)
                    self._resolve_waiters(False)
                    break
                delay = self.reconnect.delay(attempt, self._rng)
                self._set_status(ConnectionStatus.RECONNECTING)
                self.events.emit(ReconnectScheduled(attempt, delay, time.time() + delay))
                retry_now = self._retry_now or asyncio.Event()  # set by connect()
                retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(retry_now.wait(), timeout=delay)
        except Exception:  # a bug: report it rather than die silently
            _log.exception("sync client supervisor failed")
            self.events.emit(ErrorOccurred(ErrorCode.INTERNAL_ERROR, "client supervisor failed"))
            self._set_status(ConnectionStatus.ERROR)
            self._resolve_waiters(False)

    def _resolve_waiters(self, result: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(result)

    def _after_connection(self) -> None:
        self._protocol = None
        self._ws = None
        self._session_id = None
        self._batch.clear()
        self.awareness.clear_remote()

    def _refused(self, code: ErrorCode, message: str, *, final: bool) -> _Outcome:
        self._last_error = ErrorOccurred(code, message, remote=False, final=final)
        self.events.emit(self._last_error)
        return _Outcome(False, final, message)

    async def _run_connection(self) -> _Outcome:
        """One connection attempt, from opening the socket until it ends."""
        options: dict[str, Any] = {}
        check: _PinCheck | None = None
        if self.tls_pin is not None:
            check = _PinCheck(self.tls_pin)
            options["ssl"] = self.ssl if self.ssl is not None else _pinning_context()
            options["create_connection"] = _pinned_connection(check)
        elif self.ssl is not None:
            options["ssl"] = self.ssl
        try:
            ws = await connect(
                self.url,
                max_size=self.max_message_size,
                open_timeout=self.handshake_timeout,
                # Liveness is the protocol's Ping/Pong (it also measures round trips);
                # compression is the protocol's own, negotiated in the handshake.
                ping_interval=None,
                compression=None,
                close_timeout=min(2.0, self.ping_timeout),
                # Desktop and library clients send no Origin header.
                origin=None,
                **options,
            )
        except ssl_module.SSLCertVerificationError as exc:
            return self._refused(
                ErrorCode.HANDSHAKE_FAILED,
                f"security error: the server's TLS certificate is not trusted"
                f" ({exc.verify_message or exc}); not connecting",
                final=True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            final = status in (401, 403, 404)
            code = {
                401: ErrorCode.UNAUTHORIZED,
                403: ErrorCode.UNAUTHORIZED,
                429: ErrorCode.TOO_MANY_CONNECTIONS,  # this address is at its connection cap
            }.get(
                status,
                ErrorCode.DOCUMENT_NOT_FOUND if status == 404 else ErrorCode.HANDSHAKE_FAILED,
            )
            message = f"server refused the WebSocket upgrade with HTTP {status}"
            if status == 403:
                message += " (forbidden: the server does not accept this client's origin)"
            self._last_error = ErrorOccurred(code, message, remote=True, final=final)
            self.events.emit(self._last_error)
            return _Outcome(False, final, message)
        except (OSError, TimeoutError, WebSocketException) as exc:
            if check is not None and check.mismatch:
                return self._refused(
                    ErrorCode.HANDSHAKE_FAILED,
                    f"security error: the server's TLS certificate is {check.presented},"
                    f" not the pinned {check.pin}; not connecting (someone may be"
                    " intercepting the connection, or the server has a new certificate)",
                    final=True,
                )
            return _Outcome(False, False, f"cannot connect: {exc!r}")

        ssl_object = ws.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            self._fingerprint = certificate_fingerprint(der) if der else None
        protocol = ClientProtocol(
            self.document,
            document_id=self.document_id,
            display_name=self.author,
            auth_token=self.auth_token,
            compressor=self.compressor,
            max_message_size=self.max_message_size,
            acknowledged=self._acknowledged,
            known_epoch=self._epoch,
        )
        self._protocol, self._ws = protocol, ws
        protocol.send_handshake()
        tasks = [
            asyncio.create_task(self._writer(ws, protocol)),
            asyncio.create_task(self._pinger(ws, protocol)),
            asyncio.create_task(self._handshake_timer(ws, protocol)),
        ]
        self._kick()
        reason = "connection closed"
        completed = False
        try:
            async for frame in ws:
                data = frame.encode("utf-8") if isinstance(frame, str) else frame
                protocol.receive_message(data)
                completed = self._dispatch(protocol.events_received()) or completed
                self._kick()
                if protocol.is_closed:
                    break
        except ConnectionClosed as exc:
            reason = f"connection closed: {exc}"
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        completed = self._dispatch(protocol.events_received()) or completed
        if protocol.is_closed and protocol.error_code is not None:
            reason = f"{protocol.error_code.name}: {protocol.error_message}"
        else:
            protocol.connection_lost()
        self._fail_history_waiters(reason)
        # Send what is left (an Error telling the server why we leave), then close.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush(ws, protocol), timeout=1.0)
        with contextlib.suppress(Exception):
            await ws.close()
        return _Outcome(completed, protocol.final, reason)

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _dispatch(self, events: Iterable[ClientEvent]) -> bool:
        """Act on protocol events, then publish them; True if the handshake completed."""
        protocol = self._protocol
        completed = False
        for event in events:
            if isinstance(event, ErrorOccurred):
                self._last_error = event
            if isinstance(event, HandshakeCompleted):
                completed = True
                self._last_error = None
                self._session_id = event.session_id
                self._epoch = event.epoch
                if protocol is not None:
                    self._role = protocol.role
                    self._compression = protocol.compressor.name
                    self._acknowledged = protocol.acknowledged
                    if protocol.is_synced:
                        self.awareness.reannounce()
                        protocol.send_awareness_query()
                self._set_status(ConnectionStatus.CONNECTED)
                self._resolve_waiters(True)
            elif isinstance(event, Acknowledged) and protocol is not None:
                self._acknowledged = protocol.acknowledged
            elif isinstance(event, HistoryReceived):
                # Pages are answered in request order (one connection, in order).
                while self._history_waiters:
                    waiter = self._history_waiters.pop(0)
                    if not waiter.done():
                        waiter.set_result(event)
                        break
            elif isinstance(event, AwarenessReceived):
                if event.full:
                    self.awareness.receive_state(AwarenessState(event.updates))
                else:
                    for update in event.updates:
                        self.awareness.receive_update(update)
            self.events.emit(event)
        if protocol is not None:
            self._acknowledged = self._acknowledged.merge(protocol.acknowledged)
        return completed

    # ------------------------------------------------------------------ tasks of one connection

    async def _flush(self, ws: ClientConnection, protocol: ClientProtocol) -> None:
        if self._send_lock is None:  # created by connect() with the supervisor
            self._send_lock = asyncio.Lock()
        async with self._send_lock:
            if self._batch and protocol.is_synced:
                batch, self._batch = self._batch, []
                protocol.send_changes(batch)
            for frame in protocol.messages_to_send():
                await ws.send(frame)
            # Sending changes may have produced events (ChangesSent).
            self._dispatch(protocol.events_received())

    async def _writer(self, ws: ClientConnection, protocol: ClientProtocol) -> None:
        wake = self._wake
        if wake is None:  # created by connect() with the supervisor
            wake = self._wake = asyncio.Event()
        while True:
            await wake.wait()
            wake.clear()
            try:
                await self._flush(ws, protocol)
            except ConnectionClosed:
                return

    async def _pinger(self, ws: ClientConnection, protocol: ClientProtocol) -> None:
        # Check more often than we ping so a missing pong is noticed close to the timeout.
        tick = min(self.ping_interval, self.ping_timeout / 2, self.awareness.renew_interval_s / 5)
        next_ping = asyncio.get_running_loop().time() + self.ping_interval
        while True:
            await asyncio.sleep(tick)
            self.awareness.tick()
            if not protocol.is_synced:
                continue
            age = protocol.oldest_unanswered_ping_age()
            if age is not None and age >= self.ping_timeout:
                protocol.close(ErrorCode.TIMEOUT, f"no pong for {age:.1f} s")
                self._dispatch(protocol.events_received())
                await self._drop(ws, protocol)
                return
            if asyncio.get_running_loop().time() >= next_ping:
                next_ping += self.ping_interval
                protocol.send_ping()
                self._kick()

    async def _handshake_timer(self, ws: ClientConnection, protocol: ClientProtocol) -> None:
        await asyncio.sleep(self.handshake_timeout)
        if not protocol.is_synced and not protocol.is_closed:
            protocol.close(
                ErrorCode.TIMEOUT, f"no handshake response in {self.handshake_timeout} s"
            )
            self._dispatch(protocol.events_received())
            await self._drop(ws, protocol)

    async def _drop(self, ws: ClientConnection, protocol: ClientProtocol) -> None:
        """Give up on a connection the peer no longer serves: best-effort Error, then
        abort the transport (a dead peer would never complete a closing handshake)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush(ws, protocol), timeout=0.5)
        ws.transport.abort()

    # ------------------------------------------------------------------ hooks

    def _on_local_change(self, change: Change) -> None:
        protocol = self._protocol
        # Not synced: the change stays in the document and the next handshake sends it.
        if protocol is not None and protocol.is_synced:
            self._batch.append(change)
            self._kick()

    def _on_awareness_outgoing(self, update: AwarenessUpdate) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.is_synced:
            protocol.send_awareness_update(update)
            self._kick()

    def close(self) -> None:
        """Release the document subscription (after :meth:`disconnect`; the client is
        unusable afterwards) and end every ``async for`` over the event streams."""
        self._change_subscription.cancel()
        self.connection_status.close()
        self.events.close()
