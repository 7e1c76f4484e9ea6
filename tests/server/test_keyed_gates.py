"""server/trust.py KeyedGates: one gate per key, forgotten once unused."""

from __future__ import annotations

import asyncio

import pytest

from server.trust import KeyedGates

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def test_a_semaphore_per_key_admits_its_count_and_is_forgotten_when_unused() -> None:
    gates = KeyedGates(lambda: asyncio.Semaphore(2))
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    release = asyncio.Event()

    async def visit(key: str) -> None:
        async with gates.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await release.wait()
            inside[key] -= 1

    tasks = [asyncio.create_task(visit(k)) for k in "aaaab"]
    while inside["a"] < 2 or inside["b"] < 1:
        await asyncio.sleep(0)
    assert len(gates) == 2  # keys in use are listed
    release.set()
    await asyncio.gather(*tasks)
    assert most == {"a": 2, "b": 1}  # never more than the semaphore's count per key
    assert len(gates) == 0  # nobody holds or waits: the keys are gone


async def test_a_gate_is_released_when_the_block_raises() -> None:
    gates = KeyedGates(asyncio.Lock)
    with pytest.raises(RuntimeError):
        async with gates.hold("doc"):
            raise RuntimeError("boom")
    assert len(gates) == 0
    async with gates.hold("doc"):  # not left locked
        assert len(gates) == 1
