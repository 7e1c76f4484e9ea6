"""Shared helpers for the GUI integration tests (real server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QSettings
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QPlainTextEdit
from pytestqt.qtbot import QtBot

from crdt_sync.sync.client import ReconnectPolicy
from editor.main_window import MainWindow
from editor.sync_panel import SyncState
from server.registry import InMemoryServerRegistry
from server.server import WebSocketServer

T = TypeVar("T")

#: Fast, deterministic reconnection for tests (no jitter).
FAST_RECONNECT = ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.3, jitter=0.0)


def run(qtbot: QtBot, coroutine: Coroutine[Any, Any, T], timeout: int = 15000) -> T:
    """Run ``coroutine`` on the qasync loop from a synchronous test and return its result."""
    future = asyncio.ensure_future(coroutine)
    qtbot.waitUntil(future.done, timeout=timeout)
    return future.result()


def widget_text(editor: QPlainTextEdit) -> str:
    """The widget's raw characters (``toPlainText()`` rewrites some separators)."""
    cursor = QTextCursor(editor.document())
    cursor.select(QTextCursor.SelectionType.Document)
    return cursor.selectedText().replace("\u2029", "\n")


def make_window(root: Path, name: str) -> MainWindow:
    """A window with its own settings file and data directory under ``root``.

    Not registered with ``qtbot.addWidget`` (pytest-qt would delete it before
    fixtures tear down): callers close it with :func:`close_window`.
    """
    settings = QSettings(str(root / f"{name}.ini"), QSettings.Format.IniFormat)
    window = MainWindow(
        name=name,
        settings=settings,
        reconnect=FAST_RECONNECT,
        data_root=root / name,
        host_address="127.0.0.1",
    )
    window.show()
    return window


def close_window(qtbot: QtBot, window: MainWindow) -> None:
    """Shut ``window`` down (disconnect, save, stop hosting), then close it for real."""
    run(qtbot, window.shutdown())
    window.close()
    window.deleteLater()


async def start_server(port: int = 0) -> WebSocketServer:
    """A real server on 127.0.0.1 with an in-memory registry."""
    server = WebSocketServer("127.0.0.1", port, InMemoryServerRegistry())
    await server.start()
    return server


def place_caret(editor: QPlainTextEdit, position: int, anchor: int | None = None) -> None:
    """Put the caret at UTF-16 ``position`` (selecting from ``anchor`` if given)."""
    cursor = editor.textCursor()
    cursor.setPosition(position if anchor is None else anchor)
    if anchor is not None:
        cursor.setPosition(position, QTextCursor.MoveMode.KeepAnchor)
    editor.setTextCursor(cursor)


def wait_for_state(
    qtbot: QtBot, window: MainWindow, state: SyncState, timeout: int = 10000
) -> None:
    """Wait until ``window``'s sync panel shows ``state``."""

    def shown() -> None:
        assert window.sync_panel.state is state, window.sync_panel.status_text()

    qtbot.waitUntil(shown, timeout=timeout)
