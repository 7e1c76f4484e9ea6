"""Fixtures for the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis_helpers import RedisServer, require_redis_server

from server import InMemoryServerRegistry, WebSocketServer


@pytest_asyncio.fixture
async def server() -> AsyncIterator[WebSocketServer]:
    """A real server on 127.0.0.1 (a free port), in memory."""
    running = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, AOF on, data in a temporary directory.

    Skips when the binary is missing here; fails when it is missing in CI.
    """
    directory = tmp_path / "redis"
    directory.mkdir()
    running = RedisServer(require_redis_server(), directory)
    running.start()
    try:
        yield running
    finally:
        running.kill()
