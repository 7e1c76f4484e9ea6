"""Fixtures for the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

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
