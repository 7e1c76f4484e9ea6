# mypy: disable-error-code="no-untyped-call"
"""The app joins a server that compresses (issue 11 item 4): compression is negotiated."""

from __future__ import annotations

import asyncio
from pathlib import Path

from editor_helpers import close_window, make_window, run, wait_for_state, widget_text
from pytestqt.qtbot import QtBot

from crdt_sync.sync import GzipCompressor
from editor.sync_panel import SyncState
from server.registry import InMemoryServerRegistry
from server.server import WebSocketServer


def test_the_app_joins_a_gzip_server_and_syncs(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    server = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry(), GzipCompressor())
    run(qtbot, server.start())
    ada = make_window(tmp_path, "Ada")
    bo = make_window(tmp_path, "Bo")
    try:
        url = f"ws://127.0.0.1:{server.port}/zipped"
        run(qtbot, ada.join(url))
        run(qtbot, bo.join(url))
        wait_for_state(qtbot, ada, SyncState.CONNECTED)
        wait_for_state(qtbot, bo, SyncState.CONNECTED)
        assert ada.session is not None and ada.session.client is not None
        assert ada.session.client.compression == "gzip"
        long_line = "compressible text " * 40  # over the size where bodies are compressed
        qtbot.keyClicks(ada.text_edit, long_line)
        qtbot.waitUntil(lambda: widget_text(bo.text_edit) == long_line, timeout=15000)
    finally:
        close_window(qtbot, bo)
        close_window(qtbot, ada)
        run(qtbot, server.stop())
