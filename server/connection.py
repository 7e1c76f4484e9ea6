"""One client connection: its socket, its protocol session, its reader and writer.

Each WebSocket connection gets a :class:`~server.session.ServerSession` (the
protocol, sans-I/O) and two loops: the *reader* (:meth:`Connection.serve`)
feeds frames to the session and carries out what the session asks for
through the rooms (join, apply changes, publish presence); the *writer*
(:meth:`Connection.write_loop`), a task started only while frames wait or
once the session closed, sends what could not be written at once and closes
the socket when the session closes (an idle connection holds no writer task).

Writing is synchronous while the client keeps up: :meth:`Connection.flush`
hands the session's frames straight to the socket (no task switch per frame,
so relaying one frame to fifty clients is fifty buffer appends in one pass).
Once the socket's buffer is above ``_HIGH_WATER`` frames go to the outbox, in
order, and the writer sends them as the client reads. A slow client therefore
never blocks the others, and a client with more than ``max_outbound`` bytes
waiting (outbox and socket buffer) is dropped (it resynchronises when it
reconnects).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, Protocol, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

from crdt_sync.sync import ErrorCode, HandshakeRequest, Role
from crdt_sync.sync.document_ids import document_id_from_url_path
from crdt_sync.sync.messages import encode_history_frame

from .auth import InvalidTokenError, TokenAuthority
from .events import ServerEventType
from .metrics import ServerMetrics
from .rooms import Emit, Room, Rooms, storage_code
from .session import (
    AwarenessQueried,
    AwarenessReceived,
    ChangesReceived,
    DocumentStatusSent,
    ErrorReceived,
    HandshakeRequested,
    HistoryRequested,
    ProtocolViolation,
    ReadOnlyRefused,
    ServerSession,
    SessionClosed,
    SessionState,
    SnapshotUploaded,
)
from .trust import Limits, TokenBucket

__all__ = [
    "Authenticator",
    "Connection",
    "FrameConnection",
    "describe_close",
    "document_id_from_url_path",
]

_log = logging.getLogger(__name__)

#: Encoded change bytes per history page (well under any client's frame bound).
HISTORY_PAGE_BYTES = 1024 * 1024

# Frames from this size on are decoded in a worker thread: a hostile frame of a
# few kilobytes can inflate (zlib reaches about 1000:1) to megabytes of ops and
# take seconds to decode; a typing frame is well under it, and is faster
# decoded than handed over.
_DECODE_IN_THREAD_FROM = 1024

# Big frames decoded at once, per event loop (each may inflate to the frame bound).
_PARALLEL_DECODES = 2
_decoder_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _decoders() -> asyncio.Semaphore:
    """The running loop's slots for decoding big frames in worker threads."""
    loop = asyncio.get_running_loop()
    slots = _decoder_slots.get(loop)
    if slots is None:
        slots = _decoder_slots[loop] = asyncio.Semaphore(_PARALLEL_DECODES)
    return slots


#: ``authenticate(request) -> bool`` (or an awaitable of it): may this client join?
Authenticator = Callable[[HandshakeRequest], "bool | Awaitable[bool]"]

#: Bytes in a socket's send buffer above which frames wait in the outbox.
_HIGH_WATER = 64 * 1024


def _framed(payload: bytes) -> bytes:
    """``payload`` as one final, unmasked WebSocket binary frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return b"\x82\x7e" + n.to_bytes(2, "big") + payload
    return b"\x82\x7f" + n.to_bytes(8, "big") + payload


#: ``sink(message)``: one whole data message as it arrives (str: a text message).
FrameSink = Callable[["bytes | str"], None]


class FrameConnection(ServerConnection):
    """websockets' server connection, handing every whole data message to
    :attr:`frame_sink` (once set) from the protocol callback that parsed it.

    websockets would queue each frame, wake the task waiting in ``recv()`` and
    hand it over there: a queue, a task switch and (for the idle bound) a
    timeout object per frame, on the path of every edit. Control frames are
    websockets' as before (it answers pings, and pongs acknowledge its pings);
    its parser has already bounded the message size and checked the order of
    fragments when a frame gets here.
    """

    # Slots, not the instance dictionary websockets' attributes fill: one more
    # entry there can double that dictionary's table (1.3 KiB per connection,
    # measured with ``benchmarks/sync_load.py --idle 2000``).
    __slots__ = ("_fast_bound", "_fragments", "_fragments_text", "frame_sink", "fresh")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_sink: FrameSink | None = None
        #: True from the start of each :meth:`data_received` until the sink clears
        #: it: the connection handles at most one frame per read in the callback.
        self.fresh = False
        #: The longest frame :meth:`data_received` reads itself
        #: (:func:`_fast_bound`; 0: none, websockets' parser is inside a frame or
        #: a fragmented message), None when not looked at since websockets last
        #: parsed: only its own parsing moves its parser, so it is looked at once
        #: per handover to websockets, not for every frame read here.
        self._fast_bound: int | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False

    def data_received(self, data: bytes) -> None:
        """Bytes from the socket: complete final masked binary frames at the start
        of ``data`` go straight to :attr:`frame_sink`, the rest to websockets.

        The fast path reads a frame only where websockets' parser would start
        one (:func:`_at_frame_boundary`), while the connection is open and no
        fragmented message is under way, and only the simplest kind: FIN set,
        no reserved bits, opcode binary, masked, a length of at most 65,535
        and of at most websockets' size bounds. It unmasks with websockets' own
        function and hands over what websockets would. From the first byte it
        does not take (another kind of frame, a frame not complete in ``data``,
        anything malformed) everything goes to websockets, which then starts at
        a frame boundary: pings, close frames, fragments, size limits and
        protocol errors are websockets' as before, with its close codes."""
        sink = self.frame_sink
        protocol = self.protocol
        self.fresh = True
        if sink is None or protocol.state is not State.OPEN:
            self._parse(data)
            return
        bound = self._fast_bound
        if bound is None:
            bound = self._fast_bound = _fast_bound(protocol)
        if not bound:
            self._parse(data)
            return
        start, end = 0, len(data)
        while end - start >= 6:  # the shortest masked frame: 2 header bytes, the mask
            if data[start] != 0x82:  # FIN, no reserved bits, binary
                break
            length = data[start + 1] ^ 0x80  # the mask bit must be set
            if length < 126:
                mask = start + 2
            elif length == 126 and end - start >= 8:
                length = int.from_bytes(data[start + 2 : start + 4], "big")
                mask = start + 4
            else:  # unmasked, a 64-bit length, or the length not all here
                break
            stop = mask + 4 + length
            if length > bound or stop > end:
                break
            start = stop
            sink(apply_mask(data[mask + 4 : stop], data[mask : mask + 4]))
            if protocol.state is not State.OPEN:  # pragma: no cover - the sink closed it
                break
        if start < end:
            self._parse(data[start:] if start else data)

    def _parse(self, data: bytes) -> None:
        """Hand ``data`` to websockets' parser (which moves on from where it was)."""
        self._fast_bound = None
        super().data_received(data)

    def eof_received(self) -> None:
        self._fast_bound = None
        super().eof_received()

    def listen(self, sink: FrameSink) -> None:
        """Hand every data message to ``sink`` from now on, starting with any that
        websockets queued before."""
        self.frame_sink = sink
        frames = getattr(getattr(self.recv_messages, "frames", None), "queue", None)
        if frames:
            queued = list(frames)
            frames.clear()
            for frame in queued:
                self.process_event(frame)

    def process_event(self, event: Event) -> None:
        sink = self.frame_sink
        if sink is None or not isinstance(event, Frame):
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.BINARY and event.fin:
            sink(bytes(event.data))
        elif opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if event.fin:
                sink(bytes(event.data).decode("utf-8", "replace"))
            else:
                self._fragments = [bytes(event.data)]
                self._fragments_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            parts = self._fragments
            if parts is None:  # pragma: no cover - websockets refuses a stray continuation
                return
            parts.append(bytes(event.data))
            if event.fin:
                self._fragments = None
                message = b"".join(parts)
                sink(message.decode("utf-8", "replace") if self._fragments_text else message)
        else:
            super().process_event(event)


#: The longest frame payload :meth:`FrameConnection.data_received` reads itself.
_FAST_FRAME_BOUND = 65535

# The generator websockets' parser waits in between two frames (and only there).
_AT_EOF = StreamReader.at_eof.__code__


def _fast_bound(protocol: Protocol) -> int:
    """The longest frame :meth:`FrameConnection.data_received` may read itself
    (:data:`_FAST_FRAME_BOUND` or websockets' size bounds, the smallest), or 0
    while websockets' parser does not wait for a frame's first byte with no
    fragmented message under way, or extensions were negotiated."""
    if protocol.current_size is not None or protocol.extensions:
        return 0
    if not _at_frame_boundary(protocol):
        return 0
    bound = _FAST_FRAME_BOUND
    if protocol.max_message_size is not None and protocol.max_message_size < bound:
        bound = protocol.max_message_size
    if protocol.max_fragment_size is not None and protocol.max_fragment_size < bound:
        bound = protocol.max_fragment_size
    return bound


def _at_frame_boundary(protocol: Protocol) -> bool:
    """Whether websockets' parser waits for the first byte of a frame.

    Its parser is a chain of generators: between frames the innermost is the
    reader's ``at_eof`` (its buffer empty), and inside a frame it is a read of
    the frame's next part. Anything else (another version of websockets, a
    parser that has stopped) answers False, and websockets parses it all."""
    parser: Any = getattr(protocol, "parser", None)
    while parser is not None:
        inner = getattr(parser, "gi_yieldfrom", None)
        if inner is None:
            return getattr(parser, "gi_code", None) is _AT_EOF
        parser = inner
    return False


# The payload framed last and its frame: a relay goes to every client of a
# document one after the other, the same bytes object each time.
_last_framed: tuple[bytes, bytes] = (b"", _framed(b""))


def _framed_shared(payload: bytes) -> bytes:
    """:func:`_framed`, reusing the frame made for the very same payload object last."""
    global _last_framed
    last = _last_framed
    if last[0] is payload:
        return last[1]
    wire = _framed(payload)
    _last_framed = (payload, wire)
    return wire


class Connection:
    """One client: its socket, its session, its outbox and writer task."""

    def __init__(
        self,
        ws: ServerConnection,
        session: ServerSession,
        max_outbound: int,
        limits: Limits | None = None,
        host: str = "",
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.ws = ws
        # The opening handshake's HTTP headers (about 3 KiB with the response's)
        # serve no purpose once the connection is open: an idle connection does
        # not keep them (the request stays, with its path: websockets reads it
        # as "handshake done", and its parser holds it too).
        if ws.request is not None:
            ws.request.headers.clear()
        ws.response = None
        self.metrics = metrics
        self.received_at = time.perf_counter()
        #: The event loop's clock when the latest frame arrived (the idle bound).
        self.last_frame_at = 0.0
        self.session = session
        self.limits = limits if limits is not None else Limits()
        #: The client's address (per-address quotas), "" when unknown.
        self.host = host
        self._message_rate = TokenBucket(self.limits.messages_per_second, self.limits.message_burst)
        self._byte_rate = TokenBucket(self.limits.bytes_per_second, self.limits.byte_burst)
        self.client_id = session.session_id
        self.room: Room | None = None
        # Frames waiting for the writer; made when the first one waits (an empty
        # deque takes 600 bytes, and most connections never need one).
        self._outbox: collections.deque[bytes] | None = None
        self._outbox_bytes = 0
        self._max_outbound = max_outbound
        # Read for every relay frame: the transport and websockets' protocol are the
        # connection's for its life (set when the socket connected), and the
        # extensions were settled by the opening handshake (the server offers none).
        self._transport: asyncio.Transport | None = ws.transport
        self._protocol = ws.protocol
        self._plain = not ws.protocol.extensions
        self._bytes_sent = metrics.bytes_sent if metrics is not None else None
        self._writer: asyncio.Task[None] | None = None
        #: Refused at the handshake because its peer cools down after an abuse.
        self.cooling_refused = False
        #: When the client's token expires (seconds since the epoch), if it has one.
        self.expires_at: int | None = None

    # -- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the session's output, in order: now while the socket takes it, else
        through the outbox and the writer (never blocks)."""
        session = self.session
        frames = session.messages_to_send()
        if frames:
            ws = self.ws
            transport = ws.transport
            if (
                self._outbox is None
                and transport is not None
                and ws.protocol.state is State.OPEN
                and not transport.is_closing()
                and (buffered := transport.get_write_buffer_size()) <= _HIGH_WATER
            ):
                # The usual case: straight to the socket. What it holds after the
                # write is at most what it held plus this write, so the bound on
                # what waits is looked at again only when that could exceed it.
                protocol = ws.protocol
                if len(frames) == 1 and not protocol.extensions and not protocol.writes:
                    # One frame (a relay, an Ack): _write_now's common case.
                    self._write_one(transport, frames[0], buffered)
                elif buffered + self._write_now(frames) > self._max_outbound:
                    self._bound_backlog()
            else:
                self._wait(frames)
                self._bound_backlog()
        if (self._outbox or session.state is SessionState.CLOSED) and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self.write_loop())

    def relay(self, frame: bytes) -> bool:
        """``session.send_frame(frame)`` then :meth:`flush`, for a frame many clients
        get (a relay): straight to the socket when nothing is queued before it (no
        trip through the session's queue), else the way :meth:`flush` goes. Returns
        whether the session is open (False: the client is leaving, nothing sent).

        This runs once per recipient of every edit, so the straight way is
        written out here (the checks, the shared framing, the write and the byte
        count) rather than through :meth:`_write_one`: a call costs about as
        much as the rest of it."""
        session = self.session
        transport = self._transport
        protocol = self._protocol
        if (
            self._outbox is None
            and session.writable_now()
            and transport is not None
            and self._plain
            and protocol.state is State.OPEN
            and not protocol.writes
            and not transport.is_closing()
            and (buffered := transport.get_write_buffer_size()) <= _HIGH_WATER
        ):
            last = _last_framed
            wire = last[1] if last[0] is frame else _framed_shared(frame)
            transport.write(wire)
            if self._bytes_sent is not None:
                self._bytes_sent.value += len(frame)
            if buffered + len(wire) > self._max_outbound:
                self._bound_backlog()
                self.flush()  # starts the writer if the bound dropped the client
            return True
        if session.state is not SessionState.OPEN:
            return False
        session.send_frame(frame)
        self.flush()
        return True

    def _write_one(self, transport: asyncio.Transport, payload: bytes, buffered: int) -> bool:
        """Write one frame straight to ``transport`` (which held ``buffered`` bytes);
        True if the bound on what waits was looked at (:meth:`_bound_backlog`): only
        when this write could take it past ``max_outbound``."""
        wire = _framed_shared(payload)
        transport.write(wire)
        if self.metrics is not None:
            self.metrics.bytes_sent.inc(len(payload))
        if buffered + len(wire) > self._max_outbound:
            self._bound_backlog()
            return True
        return False

    def _bound_backlog(self) -> None:
        """Drop a client with more than ``max_outbound`` bytes waiting to be sent."""
        if (
            self._outbox_bytes + self._buffered() > self._max_outbound
            and self.session.state is SessionState.OPEN
        ):
            # The client does not read fast enough: drop the backlog (it will
            # resynchronise on reconnect) and tell it why.
            self._outbox = None
            self._outbox_bytes = 0
            self.session.fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"more than {self._max_outbound} bytes waiting to be sent: client too slow",
            )
            self._wait(self.session.messages_to_send())

    def _wait(self, frames: list[bytes]) -> None:
        """Queue ``frames`` for the writer, after those already waiting."""
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = collections.deque()
        for frame in frames:
            outbox.append(frame)
            self._outbox_bytes += len(frame)

    def _write_now(self, frames: list[bytes]) -> int:
        """Write ``frames`` to the socket in one call, each as one WebSocket binary
        frame; returns the bytes written (headers included).

        Without extensions (the server negotiates none: permessage-deflate is off,
        frames are compressed by our own compressor) a server's frame is a 2 to
        10 byte header and the payload, unmasked, so it is framed here; the
        frames of one flush (a relay and an ack, say) go out in one write. A
        frame relayed to many clients is framed once (:func:`_framed_shared`).
        """
        ws = self.ws
        protocol = ws.protocol
        if protocol.extensions:  # pragma: no cover - the server negotiates none
            size = 0
            for frame in frames:
                protocol.send_binary(frame)
                size += len(frame)
            ws.send_data()
            if self.metrics is not None:
                self.metrics.bytes_sent.inc(size)
            return size
        if protocol.writes:  # anything websockets queued goes first (a pong)
            ws.send_data()
        if len(frames) == 1:
            payload = frames[0]
            size = len(payload)
            wire = _framed_shared(payload)
        else:
            size = sum(len(frame) for frame in frames)
            wire = b"".join([_framed(frame) for frame in frames])
        transport = ws.transport
        if transport is not None:
            transport.write(wire)
        if self.metrics is not None:
            self.metrics.bytes_sent.inc(size)
        return len(wire)

    def _buffered(self) -> int:
        """Bytes written to the socket that it has not sent yet."""
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def write_loop(self) -> None:
        """Send the queued frames in order, then close the socket if the session is
        closed; ends when nothing waits (:meth:`flush` starts it again)."""
        ws = self.ws
        try:
            while self._outbox:
                frame = self._outbox.popleft()
                self._outbox_bytes -= len(frame)
                if not self._outbox:
                    self._outbox = None
                if self.metrics is not None:
                    self.metrics.bytes_sent.inc(len(frame))
                await ws.send(frame)
            if self.session.state is SessionState.CLOSED:
                code = int(self.session.close_code or 1000)
                await ws.close(code, self.session.close_reason)
        except ConnectionClosed:
            self._outbox = None
            self._outbox_bytes = 0
        finally:
            self._writer = None

    async def finish(self) -> None:
        """Send what waits and close the socket (the session is closed); returns when done."""
        self.flush()
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer

    async def answers_ping(self, timeout: float) -> bool:
        """Whether the client answers a WebSocket ping within ``timeout`` seconds.

        Any conforming WebSocket client answers by itself (no application code
        involved), so silence means a dead process, a dropped network or a
        half-open socket.
        """
        try:
            waiter = await self.ws.ping()
            await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, ConnectionClosed, RuntimeError):
            return False
        return True

    def drop(self, code: ErrorCode, reason: str) -> None:
        """End the connection now: ``Error`` queued (best effort), transport cut."""
        self.session.fail(code, reason)
        self.flush()
        self.ws.transport.abort()

    # -- reading ------------------------------------------------------------------------

    async def serve(
        self,
        rooms: Rooms,
        *,
        handshake_timeout: float,
        authenticate: Authenticator | None,
        emit: Emit,
        authority: TokenAuthority | None = None,
    ) -> None:
        """Read frames until the session closes; raises ConnectionClosed when the peer goes.

        With an ``authority`` every handshake must carry a valid token for its
        document (else ``UNAUTHORIZED`` with the reason); the token's role
        applies, and the connection is closed (``UNAUTHORIZED``) the second
        the token expires.

        Frames are taken (and charged to the rates) as websockets parses them
        (:class:`FrameConnection`), while earlier ones are still being applied
        and stored: a flood is refused at once.
        """
        session = self.session
        access = _Access(authority, authenticate)
        inbox = _Inbox()
        ws = self.ws
        if not isinstance(ws, FrameConnection):
            raise TypeError("Connection.serve needs a FrameConnection (serve(create_connection=))")
        loop = asyncio.get_running_loop()
        ws.connection_lost_waiter.add_done_callback(lambda _: inbox.wake())
        ws.listen(functools.partial(self._arrived, inbox, loop, ws))
        try:
            async with asyncio.timeout(handshake_timeout):
                while session.state in (SessionState.AWAITING_HANDSHAKE, SessionState.HANDSHAKING):
                    frame = await self._next(inbox)
                    if frame is None:
                        break  # refused for its rate: the session is closed
                    if isinstance(frame, _Later):  # pragma: no cover - only once OPEN
                        await frame
                        continue
                    await self._decode(frame)
                    # A few handshakes per address at once (Limits.handshakes_per_ip).
                    async with rooms.hosts.handshake_turn(self.host):
                        await self._process(rooms, access, emit)
        except TimeoutError:
            session.fail(ErrorCode.TIMEOUT, f"no handshake within {handshake_timeout:g} seconds")
            self.flush()
            return
        expiry = (
            loop.create_task(self._expire(authority))
            if authority is not None and self.expires_at is not None
            else None
        )
        idle = _IdleWatch(self, inbox, loop) if self.limits.idle_timeout else None
        if rooms.registry.runs_outside_tasks:
            # A frame that comes while this task waits for one is handled in the
            # socket's callback (_arrived): no task switch per edit.
            inbox.direct = functools.partial(self._process, rooms, access, emit)
        try:
            while session.state is SessionState.OPEN:
                frame = await self._next(inbox)
                if frame is None:
                    break  # refused (rate, silence): the session is closed
                if isinstance(frame, _Later):
                    await frame  # the rest of a frame begun in the callback
                elif len(frame) < _DECODE_IN_THREAD_FROM or isinstance(frame, str):
                    # The usual frame, decoded here (no coroutine for it).
                    self.received_at = time.perf_counter()
                    session.receive_message(frame)
                else:
                    await self._decode(frame)
                if not isinstance(frame, _Later):
                    await self._process(rooms, access, emit)
                if inbox:
                    # Applying a frame need not suspend (only its Ack waits for the
                    # store): give the other connections a turn between frames, so
                    # a client with hundreds queued cannot hold the loop for them all.
                    await asyncio.sleep(0)
        finally:
            inbox.direct = None
            if idle is not None:
                idle.stop()
            if expiry is not None:
                expiry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await expiry

    def _arrived(
        self,
        inbox: _Inbox,
        loop: asyncio.AbstractEventLoop,
        ws: FrameConnection,
        frame: bytes | str,
    ) -> None:
        """A whole message came (in websockets' protocol callback): charge it to the
        rates and queue it, or refuse the client (``RATE_LIMITED``)."""
        if self.session.state is SessionState.CLOSED:
            return  # refused already: what still comes is dropped
        self.last_frame_at = loop.time()
        if not self._within_rates(len(frame)):
            inbox.wake()
        elif (
            inbox.direct is not None
            and type(frame) is bytes
            and len(frame) < _DECODE_IN_THREAD_FROM
            and ws.fresh
            and inbox.parked()
        ):
            ws.fresh = False
            self._handle_now(inbox, inbox.direct, frame)
        else:
            inbox.put(frame)

    def _handle_now(
        self, inbox: _Inbox, process: Callable[[], Coroutine[Any, Any, None]], frame: bytes
    ) -> None:
        """Handle ``frame`` here, in the socket's callback, while the connection's task
        waits for a frame (so none is under way and none waits).

        This is what the task would do with it: decode, then :meth:`_process`, run
        as far as it goes without suspending (applying a keystroke, relaying it,
        queuing its store and Ack never suspends on the memory and SQLite
        registries). If it does suspend, or raises, the rest goes to the task as
        the next thing in the inbox, ahead of any later frame, so frames are still
        handled one at a time, in order. At most one frame per read of the socket
        is handled here (:attr:`FrameConnection.fresh`): the other frames of a
        burst go through the task, which lets other connections in between."""
        self.received_at = time.perf_counter()
        session = self.session
        session.receive_message(frame)
        coroutine = process()
        try:
            step = coroutine.send(None)
        except StopIteration:
            if session.state is not SessionState.OPEN:
                inbox.wake()  # the task ends the connection
            return
        except Exception as error:
            inbox.put(_Later(None, None, error))
            return
        inbox.put(_Later(coroutine, step, None))

    async def _next(self, inbox: _Inbox) -> bytes | str | _Later | None:
        """The next frame; None once the session is closed with nothing waiting.

        Raises:
            ConnectionClosed: the client went (after every frame it sent was taken).
        """
        while True:
            frame = inbox.pop()
            if frame is not None:
                return frame
            if self.ws.connection_lost_waiter.done():
                raise self.ws.protocol.close_exc
            if self.session.state is SessionState.CLOSED:
                return None
            await inbox.wait()

    def _within_rates(self, size: int) -> bool:
        """Charge a frame of ``size`` bytes to the connection's rates; over its message
        or byte rate the client is refused with ``RATE_LIMITED`` (False)."""
        if self.metrics is not None:
            self.metrics.bytes_received.inc(size)
        if self._message_rate.take() and self._byte_rate.take(size):
            return True
        self.session.fail(
            ErrorCode.RATE_LIMITED,
            f"over {self.limits.messages_per_second:g} messages or"
            f" {self.limits.bytes_per_second:g} bytes per second: slow down and reconnect",
        )
        self.flush()
        return False

    async def _decode(self, frame: bytes | str) -> None:
        """Hand one frame (already charged to the rates) to the session. A big frame is
        decoded in a worker thread, a few at a time, so decoding it never stalls the
        other documents and a crowd of them cannot take the memory."""
        session = self.session
        self.received_at = time.perf_counter()
        if len(frame) >= _DECODE_IN_THREAD_FROM and not isinstance(frame, str):
            async with _decoders():
                if session.state is SessionState.CLOSED:
                    return
                decoded = await asyncio.to_thread(session.decode, frame)
            session.receive_decoded(decoded)
        else:
            session.receive_message(frame)

    async def _expire(self, authority: TokenAuthority) -> None:
        """Close the connection with UNAUTHORIZED once its token expired."""
        expires_at = self.expires_at
        if expires_at is None:  # pragma: no cover - only started with an expiry
            return
        # The authority's clock decides; sleep in steps so a changed clock is noticed.
        while (left := expires_at - authority.clock()) > 0:
            await asyncio.sleep(min(left, 60.0))
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires_at))
        self.session.fail(ErrorCode.UNAUTHORIZED, f"the invite token expired at {when}")
        self.flush()

    async def _process(self, rooms: Rooms, access: _Access, emit: Emit) -> None:
        """Carry out everything the session asked for, until it asks for nothing."""
        session = self.session
        events = session.events_received()
        if not events:
            self.flush()
            return
        while events:
            for event in events:
                if isinstance(event, ChangesReceived):  # the usual one first
                    await rooms.apply(self, event.changes, event.encoded)
                elif isinstance(event, HandshakeRequested):
                    if self._cooling(rooms, event.request.peer_id):
                        continue
                    role = await self._authorise(event, access, emit)
                    if role is not None:
                        await rooms.join(self, event.request, event.document_id, role)
                elif isinstance(event, SnapshotUploaded):
                    await rooms.apply_snapshot(self, event.snapshot)
                elif isinstance(event, AwarenessReceived):
                    rooms.awareness_update(self, event.update)
                elif isinstance(event, HistoryRequested):
                    await self._answer_history(rooms, event.cursor)
                elif isinstance(event, AwarenessQueried):
                    if self.room is not None:
                        session.send_awareness_state(rooms.awareness_states(self))
                elif isinstance(event, ReadOnlyRefused):
                    _log.debug("%s is read-only: %s refused", self.client_id, event.what)
                elif isinstance(event, DocumentStatusSent):
                    _log.debug("%s resynchronised", self.client_id)
                elif isinstance(event, ProtocolViolation | ErrorReceived):
                    side = "sent" if isinstance(event, ProtocolViolation) else "reported"
                    emit(
                        ServerEventType.ERROR,
                        f"client {self.client_id} {side} {event.code.name}: {event.message}",
                        client_id=self.client_id,
                        document_id=session.document_id,
                        code=event.code.name,
                    )
                elif isinstance(event, SessionClosed):
                    pass  # the writer closes the socket once the outbox is empty
            self.flush()
            events = session.events_received()

    def _cooling(self, rooms: Rooms, peer_id: str) -> bool:
        """Refuse the handshake (``RATE_LIMITED``) of a peer whose connection from
        this address was refused for abuse a moment ago (``Limits.abuse_cooldown``)."""
        left = rooms.hosts.cooling(self.host, peer_id)
        if left:
            self.cooling_refused = True
            self.session.reject_handshake(
                ErrorCode.RATE_LIMITED,
                "a connection of this peer was refused for its rate or an invalid frame:"
                f" try again in {left:.1f} s",
            )
        return bool(left)

    async def _answer_history(self, rooms: Rooms, cursor: int) -> None:
        """A page of the document's kept history, from the registry (stored
        batches are sent as they are)."""
        session = self.session
        document_id = session.document_id
        if document_id is None or session.state is not SessionState.OPEN:
            return
        try:
            page = await rooms.registry.history_page(document_id, cursor, HISTORY_PAGE_BYTES)
        except Exception as error:  # a storage failure ends this connection only
            _log.warning("history of %r not served: %r", document_id, error)
            session.fail(storage_code(error), "the server could not read the history")
            return
        frame = encode_history_frame(
            page.start, page.base, page.batches, page.next_cursor, session.compressor
        )
        session.send_history(frame, page.next_cursor)

    async def _authorise(
        self, event: HandshakeRequested, access: _Access, emit: Emit
    ) -> Role | None:
        """The role the client joins with, or None after refusing it (UNAUTHORIZED)."""
        request = event.request
        role = Role.WRITE
        if access.authority is not None:
            try:
                grant = access.authority.verify(request.auth_token, event.document_id)
            except InvalidTokenError as error:
                self.session.reject_handshake(ErrorCode.UNAUTHORIZED, str(error))
                emit(
                    ServerEventType.ERROR,
                    f"client {self.client_id} refused: {error}",
                    client_id=self.client_id,
                    document_id=event.document_id,
                    code=ErrorCode.UNAUTHORIZED.name,
                )
                return None
            role, self.expires_at = grant.role, grant.expires_at
        if access.authenticate is not None:
            verdict = access.authenticate(request)
            allowed = await verdict if isinstance(verdict, Awaitable) else verdict
            if not allowed:
                self.session.reject_handshake(
                    ErrorCode.UNAUTHORIZED, "not allowed to join this document"
                )
                return None
        return role


class _Later:
    """The rest of a frame's handling that :meth:`Connection._handle_now` began in
    the socket's callback: awaiting it (in the connection's task) runs the
    suspended coroutine on from where it stopped, or raises what it raised."""

    __slots__ = ("_coroutine", "_error", "_step")

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, None] | None,
        step: Any,
        error: Exception | None,
    ) -> None:
        self._coroutine = coroutine
        self._step = step  # what the coroutine yielded when it suspended
        self._error = error

    def __await__(self) -> Generator[Any, Any, None]:
        if self._error is not None:
            raise self._error
        coroutine, step = self._coroutine, self._step
        if coroutine is None:  # pragma: no cover - made with a coroutine or an error
            return
        self._coroutine = self._step = None
        while True:
            # What the coroutine yields (a future it waits for) goes to the task,
            # and what the task sends or throws back goes to the coroutine.
            try:
                sent = yield step
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:
                try:
                    step = coroutine.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    step = coroutine.send(sent)
                except StopIteration:
                    return


class _Inbox:
    """Frames received ahead of their processing, and the processing side's wake-up.

    The deque is made for the first waiting frame and dropped once drained, the
    wake-up future exists only while the processing side waits: an idle
    connection holds neither (an ``asyncio.Event`` and a deque would take
    1.5 KiB each connection)."""

    __slots__ = ("_frames", "_waiter", "direct")

    def __init__(self) -> None:
        self._frames: collections.deque[bytes | str | _Later] | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Set while frames may be handled in the socket's callback: makes the
        #: coroutine that carries out what the session asks for.
        self.direct: Callable[[], Coroutine[Any, Any, None]] | None = None

    def __bool__(self) -> bool:
        """Whether a frame waits."""
        return bool(self._frames)

    def parked(self) -> bool:
        """Whether the processing side waits for a frame, and none waits."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and self._frames is None

    def put(self, frame: bytes | str | _Later) -> None:
        if self._frames is None:
            self._frames = collections.deque()
        self._frames.append(frame)
        self.wake()

    def pop(self) -> bytes | str | _Later | None:
        """The oldest waiting frame, or None."""
        frames = self._frames
        if not frames:
            return None
        frame = frames.popleft()
        if not frames:
            self._frames = None
        return frame

    def wake(self) -> None:
        """Wake the processing side (a frame came, or the reading ended)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until :meth:`wake` (call only after :meth:`pop` found nothing)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class _IdleWatch:
    """Ends a connection's session after ``Limits.idle_timeout`` seconds without a
    frame: one timer, moved on only when it fires (not a timeout per frame)."""

    __slots__ = ("_connection", "_handle", "_inbox", "_loop")

    def __init__(
        self, connection: Connection, inbox: _Inbox, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._connection = connection
        self._inbox = inbox
        self._loop = loop
        connection.last_frame_at = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_later(
            connection.limits.idle_timeout or 0.0, self._check
        )

    def _check(self) -> None:
        connection = self._connection
        idle = connection.limits.idle_timeout or 0.0
        self._handle = None
        if connection.session.state is not SessionState.OPEN:
            return
        left = connection.last_frame_at + idle - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        connection.session.fail(ErrorCode.TIMEOUT, f"nothing received for {idle:g} seconds")
        connection.flush()
        self._inbox.wake()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Access:
    """Who decides whether a client may join: the token authority, the hook, or both."""

    __slots__ = ("authenticate", "authority")

    def __init__(
        self, authority: TokenAuthority | None, authenticate: Authenticator | None
    ) -> None:
        self.authority = authority
        self.authenticate = authenticate


def describe_close(closed: ConnectionClosed) -> str:
    """A short reason for a closed connection, for events and logs."""
    frame = closed.rcvd or closed.sent
    if frame is None:
        return "connection lost"
    return f"closed {frame.code}{': ' + frame.reason if frame.reason else ''}"
