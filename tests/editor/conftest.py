"""Fixtures for the desktop app's tests: offscreen Qt and a qasync loop.

Qt needs a platform before the first ``QApplication``: with no display it
aborts, so ``offscreen`` is set here, at import time, before pytest-qt makes
its ``qapp``.

The ``loop`` fixture follows ``shared/notes/qt-asyncio.md``: a qasync loop
marked as already running, so pytest-qt's ``waitUntil``/``waitSignal`` (which
spin Qt) also run asyncio callbacks. It is never stopped with ``loop.stop()``
(that quits the QApplication for the rest of the session).

Qt objects that Python owns must die on the GUI thread. A closed qasync loop,
or a window left in a reference cycle, is otherwise freed whenever the cyclic
garbage collector next runs, and that can be on a worker thread of a later,
non-Qt test (``asyncio.to_thread``, the SQLite registry's executor). A
``QObject`` destroyed off its thread cannot unregister its timers
("QObject::~QObject: Timers cannot be stopped from another thread"), so the
next ``processEvents()`` delivers a timer event to freed memory: a segfault
in ``QTimerInfoList::activateTimers``. Hence the loop's timer object is
deleted when the loop closes, and after every test here the deferred deletes
are flushed and the collector runs, on this thread.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import qasync
from PySide6.QtCore import QCoreApplication, QEvent
from PySide6.QtWidgets import QApplication
from shiboken6 import Shiboken


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
        # qasync 0.28 (pinned) only flags its timer object stopped on close:
        # callbacks still scheduled (keepalives, reconnect delays, timeouts)
        # stay registered Qt timers until that object is destroyed. Destroy it
        # here, on the GUI thread, so they are unregistered now.
        Shiboken.delete(event_loop._timer)
        asyncio.set_event_loop(None)
    if errors:
        messages = [str(c.get("exception") or c.get("message")) for c in errors]
        pytest.fail(f"asyncio loop errors: {messages}")


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """After a test here (its fixtures and arguments released), free its Qt objects now.

    Runs once pytest has dropped the test's arguments, so windows and loops in
    reference cycles are garbage by then: pending ``deleteLater`` calls are
    carried out and the cycles are collected on the GUI thread (see above).
    """
    del nodeid, location
    if QCoreApplication.instance() is None:
        return
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
