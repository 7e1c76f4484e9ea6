"""Fixtures for the desktop app's tests: offscreen Qt and a qasync loop.

Qt needs a platform before the first ``QApplication``: with no display it
aborts, so ``offscreen`` is set here, at import time, before pytest-qt makes
its ``qapp``.

The ``loop`` fixture follows ``shared/notes/qt-asyncio.md``: a qasync loop
marked as already running, so pytest-qt's ``waitUntil``/``waitSignal`` (which
spin Qt) also run asyncio callbacks. It is never stopped with ``loop.stop()``
(that quits the QApplication for the rest of the session).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtWidgets import QApplication


@pytest.fixture
def loop(qapp: QApplication) -> Iterator[asyncio.AbstractEventLoop]:
    """A qasync event loop, marked running, that fails the test on any loop error."""
    event_loop = qasync.QEventLoop(qapp, already_running=True)
    asyncio.set_event_loop(event_loop)
    errors: list[dict[str, Any]] = []

    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(context)

    event_loop.set_exception_handler(record)
    try:
        yield event_loop
    finally:
        pending = [t for t in asyncio.all_tasks(event_loop) if not t.done()]
        for task in pending:
            task.cancel()
        for _ in range(200):
            if all(t.done() for t in pending):
                break
            qapp.processEvents()
        event_loop._QEventLoop__is_running = False  # qasync 0.28 private flag (pinned)
        asyncio.events._set_running_loop(None)
        event_loop.close()
        asyncio.set_event_loop(None)
    if errors:
        messages = [str(c.get("exception") or c.get("message")) for c in errors]
        pytest.fail(f"asyncio loop errors: {messages}")
