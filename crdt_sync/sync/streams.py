"""A small event stream usable both with callbacks and with ``async for``.

``stream.subscribe(callback)`` calls ``callback(value)`` synchronously on every
:meth:`EventStream.emit`; a callback that raises is logged and does not stop the
others. ``async for value in stream`` gives each iterator its own bounded queue,
created when iteration starts (values emitted before are not seen); when a slow
consumer lets the queue fill up, the oldest values are dropped (and counted in
``dropped``) rather than blocking the emitter or growing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

__all__ = ["EventStream", "StreamSubscription"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


class StreamSubscription:
    """Handle for a callback subscription; :meth:`cancel` (or ``with``) removes it."""

    __slots__ = ("_cancel",)

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel: Callable[[], None] | None = cancel

    def cancel(self) -> None:
        """Stop delivering to the callback. Idempotent."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()

    def __enter__(self) -> StreamSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class _Iterator(AsyncIterator[T]):
    def __init__(self, stream: EventStream[T], maxlen: int) -> None:
        self._stream = stream
        self._queue: collections.deque[T] = collections.deque()
        self._maxlen = maxlen
        self._wakeup: asyncio.Event | None = None
        self._closed = False
        self.dropped = 0

    def _push(self, value: T) -> None:
        if len(self._queue) >= self._maxlen:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(value)
        if self._wakeup is not None:
            self._wakeup.set()

    def _close(self) -> None:
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def __anext__(self) -> T:
        while not self._queue:
            if self._closed:
                self._stream._iterators.discard(self)
                raise StopAsyncIteration
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Stop receiving values (called by ``async for`` when the loop is left early
        only for async generators; call it yourself, or close the stream)."""
        self._stream._iterators.discard(self)
        self._close()


class EventStream(Generic[T]):
    """A multicast stream of values of type ``T`` (see the module docstring)."""

    def __init__(self, *, max_queue: int = 1024) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._max_queue = max_queue
        self._callbacks: dict[int, Callable[[T], None]] = {}
        self._next_id = 0
        self._iterators: set[_Iterator[T]] = set()
        self._closed = False

    def subscribe(self, callback: Callable[[T], None]) -> StreamSubscription:
        """Call ``callback(value)`` for every value emitted from now on."""
        key = self._next_id
        self._next_id += 1
        self._callbacks[key] = callback

        def cancel() -> None:
            self._callbacks.pop(key, None)

        return StreamSubscription(cancel)

    def __aiter__(self) -> _Iterator[T]:
        iterator = _Iterator(self, self._max_queue)
        if self._closed:
            iterator._close()
        else:
            self._iterators.add(iterator)
        return iterator

    def emit(self, value: T) -> None:
        """Deliver ``value`` to every callback and every open iterator."""
        for callback in list(self._callbacks.values()):
            try:
                callback(value)
            except Exception:
                _log.exception("event stream callback failed for %r", value)
        for iterator in list(self._iterators):
            iterator._push(value)

    def close(self) -> None:
        """End every ``async for`` (after the values already queued). Idempotent;
        later iterators end at once, callbacks stay subscribed but get nothing more."""
        self._closed = True
        for iterator in list(self._iterators):
            iterator._close()
        self._iterators.clear()

    @property
    def closed(self) -> bool:
        return self._closed
