"""EventStream: callbacks and async iteration, bounded queues, close."""

from __future__ import annotations

import asyncio

import pytest

from crdt_sync.sync import EventStream


def test_callbacks_receive_values_until_cancelled() -> None:
    stream: EventStream[int] = EventStream()
    got: list[int] = []
    subscription = stream.subscribe(got.append)
    stream.emit(1)
    subscription.cancel()
    subscription.cancel()  # idempotent
    stream.emit(2)
    assert got == [1]
    with stream.subscribe(got.append):
        stream.emit(3)
    stream.emit(4)
    assert got == [1, 3]


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    stream: EventStream[int] = EventStream()
    got: list[int] = []

    def boom(_value: int) -> None:
        raise RuntimeError("boom")

    stream.subscribe(boom)
    stream.subscribe(got.append)
    stream.emit(7)
    assert got == [7]
    assert "boom" in caplog.text


@pytest.mark.asyncio
async def test_async_iteration_sees_values_in_order_and_ends_on_close() -> None:
    stream: EventStream[int] = EventStream()
    iterator = aiter(stream)
    for value in range(3):
        stream.emit(value)
    stream.close()
    assert [value async for value in iterator] == [0, 1, 2]
    assert [value async for value in stream] == []  # closed: ends at once


@pytest.mark.asyncio
async def test_iterator_waits_for_the_next_value() -> None:
    stream: EventStream[str] = EventStream()
    iterator = aiter(stream)
    pending = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)  # let the reader park on its wait; no timing is asserted
    assert not pending.done()
    stream.emit("x")
    assert await asyncio.wait_for(pending, 5) == "x"


@pytest.mark.asyncio
async def test_slow_consumer_loses_oldest_values_not_memory() -> None:
    stream: EventStream[int] = EventStream(max_queue=3)
    iterator = aiter(stream)
    for value in range(10):
        stream.emit(value)
    stream.close()
    assert [value async for value in iterator] == [7, 8, 9]
    assert iterator.dropped == 7


def test_queue_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventStream(max_queue=0)
