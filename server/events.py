"""Server events: what the server reports about itself and its clients.

:class:`ServerEvent` values (frozen) go out on ``WebSocketServer.server_events``,
an :class:`EventStream` usable both ways::

    async for event in server.server_events:      # each iterator sees every event
        ...                                       # emitted after it started

    subscription = server.server_events.subscribe(print)   # callback style
    subscription.cancel()

``data`` carries the details as plain values (``client_id``, ``document_id``,
``peer_id``, ``code``, ...), so events can be logged or serialised as they are.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Generic, TypeVar

__all__ = [
    "EventStream",
    "ServerEvent",
    "ServerEventType",
    "StreamSubscription",
]

_log = logging.getLogger(__name__)

_E = TypeVar("_E")


class ServerEventType(enum.Enum):
    """What happened. The value is the lowercase name (handy in logs)."""

    STARTED = "started"
    STOPPED = "stopped"
    CLIENT_CONNECTED = "client_connected"
    CLIENT_HANDSHAKE = "client_handshake"
    CLIENT_CHANGE_APPLIED = "client_change_applied"
    CLIENT_DISCONNECTED = "client_disconnected"
    CLIENT_OUT_OF_SYNC = "client_out_of_sync"
    SNAPSHOT_CREATED = "snapshot_created"
    ERROR = "error"


def _freeze(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class ServerEvent:
    """One thing the server did or saw.

    Attributes:
        type: the kind of event.
        message: one human-readable line.
        data: details as plain values; read-only. Keys used by the server:
            ``client_id``, ``document_id``, ``peer_id``, ``name``,
            ``remote_address``, ``count`` (changes applied), ``code`` and
            ``reason`` (errors, disconnects), ``host``, ``port``.
    """

    type: ServerEventType
    message: str
    data: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))

    def __post_init__(self) -> None:
        # Freeze whatever mapping we were given so the event is a value.
        object.__setattr__(self, "data", _freeze(self.data))

    def __str__(self) -> str:
        return f"{self.type.value}: {self.message}"


class StreamSubscription:
    """Handle returned by :meth:`EventStream.subscribe`; ``cancel()`` or use as a context."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel: Callable[[], None] | None = cancel

    def cancel(self) -> None:
        """Stop delivering events to the callback. Idempotent."""
        if self._cancel is not None:
            cancel, self._cancel = self._cancel, None
            cancel()

    def __enter__(self) -> StreamSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class EventStream(Generic[_E]):
    """A broadcast stream of events: ``async for`` iterators and callback subscribers.

    * :meth:`subscribe` calls the callback synchronously inside :meth:`emit`;
      a callback that raises is logged and does not stop the others.
    * ``async for`` gives each iterator its own buffer of at most
      ``buffer_size`` events; when a slow reader falls that far behind, the
      oldest events are dropped (and counted in :attr:`dropped`) so a
      forgotten iterator cannot grow memory without bound.
    * :meth:`close` ends every iterator after it has drained its buffer;
      emitting on a closed stream is ignored.
    """

    def __init__(self, buffer_size: int = 1024) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._buffer_size = buffer_size
        self._callbacks: list[Callable[[_E], object]] = []
        self._readers: list[_Reader[_E]] = []
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def subscribe(self, callback: Callable[[_E], object]) -> StreamSubscription:
        """Call ``callback(event)`` for every later event until cancelled."""
        self._callbacks.append(callback)

        def cancel() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return StreamSubscription(cancel)

    def emit(self, event: _E) -> None:
        """Deliver ``event`` to every subscriber and iterator."""
        if self._closed:
            return
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                _log.exception("event callback %r failed", callback)
        for reader in self._readers:
            if reader.push(event, self._buffer_size):
                self.dropped += 1

    def close(self) -> None:
        """End the stream: iterators finish once drained; callbacks are dropped."""
        if self._closed:
            return
        self._closed = True
        self._callbacks.clear()
        for reader in self._readers:
            reader.wake()

    def __aiter__(self) -> AsyncIterator[_E]:
        reader: _Reader[_E] = _Reader(self)
        if not self._closed:
            self._readers.append(reader)
        return reader

    def _forget(self, reader: _Reader[_E]) -> None:
        if reader in self._readers:
            self._readers.remove(reader)


class _Reader(Generic[_E]):
    """One ``async for`` over an :class:`EventStream`."""

    def __init__(self, stream: EventStream[_E]) -> None:
        self._stream = stream
        self._buffer: collections.deque[_E] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: _E, limit: int) -> bool:
        dropped = len(self._buffer) >= limit
        if dropped:
            self._buffer.popleft()
        self._buffer.append(event)
        self.wake()
        return dropped

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> _Reader[_E]:
        return self

    async def __anext__(self) -> _E:
        while not self._buffer:
            if self._stream.closed:
                self._stream._forget(self)
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                # The consumer gave up (e.g. a timeout): stop buffering for it.
                self._stream._forget(self)
                raise
            finally:
                self._waiter = None
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop this iterator (also what ``break`` out of ``async for`` leads to)."""
        self._stream._forget(self)
