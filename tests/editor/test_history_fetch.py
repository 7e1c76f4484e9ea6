"""View > History on a replica that joined from a snapshot: the timeline fetches
the older history from the server and reaches back (real server on 127.0.0.1,
real SQLite file, real windows offscreen)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from editor_helpers import close_window, make_window, run, wait_for_state, widget_text
from pytestqt.qtbot import QtBot

from crdt_sync import VersionVector
from editor.main_window import MainWindow
from editor.sync_panel import SyncState
from server import WebSocketServer
from server.registry import SqliteServerRegistry


async def serve(path: Path, retention: int | None) -> WebSocketServer:
    registry = SqliteServerRegistry(path, snapshot_every=5, history_retention=retention)
    server = WebSocketServer("127.0.0.1", 0, registry)
    await server.start()
    return server


async def stop(server: WebSocketServer) -> None:
    await server.stop()
    await server.registry.close()


def write_two_sessions(qtbot: QtBot, tmp_path: Path, url: str) -> str:
    """Ada types, then Cy: two edit sessions, stored by the server."""
    ada, cy = make_window(tmp_path, "Ada"), make_window(tmp_path, "Cy")
    try:
        for window in (ada, cy):
            run(qtbot, window.join(url))
            wait_for_state(qtbot, window, SyncState.CONNECTED)
        qtbot.keyClicks(ada.text_edit, "first")
        qtbot.waitUntil(lambda: widget_text(cy.text_edit) == "first")
        cy.text_edit.moveCursor(cy.text_edit.textCursor().MoveOperation.End)
        qtbot.keyClicks(cy.text_edit, " second")
        qtbot.waitUntil(lambda: widget_text(ada.text_edit) == "first second")
        for window in (ada, cy):
            client = window.session.client if window.session is not None else None
            assert client is not None
            qtbot.waitUntil(lambda c=client: c.unacknowledged_changes == 0)
        return widget_text(ada.text_edit)
    finally:
        close_window(qtbot, ada)
        close_window(qtbot, cy)


def join_from_snapshot(qtbot: QtBot, tmp_path: Path, url: str, expected: str) -> MainWindow:
    bo = make_window(tmp_path, "Bo")
    run(qtbot, bo.join(url))
    wait_for_state(qtbot, bo, SyncState.CONNECTED)
    qtbot.waitUntil(lambda: widget_text(bo.text_edit) == expected)
    assert bo.session is not None
    # The server loaded the document from its snapshot: Bo received the state,
    # not the changes, so his copy holds no history of its own.
    assert not bo.session.document.can_export(VersionVector())
    return bo


def test_a_replica_joined_from_a_snapshot_fetches_the_older_history(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    path = tmp_path / "server.sqlite3"
    server = run(qtbot, serve(path, None))
    expected = write_two_sessions(qtbot, tmp_path, f"ws://127.0.0.1:{server.port}/notes")
    run(qtbot, stop(server))
    server = run(qtbot, serve(path, None))
    bo = join_from_snapshot(qtbot, tmp_path, f"ws://127.0.0.1:{server.port}/notes", expected)
    try:
        dialog = bo.open_history()
        qtbot.waitUntil(
            lambda: dialog.replay is not None and dialog.replay.done == len(dialog.sessions),
            timeout=10000,
        )
        assert dialog.server_start == VersionVector()
        assert "from the document's creation" in dialog.start_label.text()
        # The timeline reaches back before Cy's edits: a version is Ada's alone.
        shown = []
        for position in range(len(dialog.sessions)):
            dialog.slider.setValue(position)
            shown.append(dialog.shown_text())
        assert "first" in shown
        assert shown[0] != expected and shown[-1] == expected
        dialog.close()
    finally:
        close_window(qtbot, bo)
        run(qtbot, stop(server))


def test_history_dropped_by_the_servers_retention_is_said_to_start_there(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    path = tmp_path / "server.sqlite3"
    server = run(qtbot, serve(path, 0))
    expected = write_two_sessions(qtbot, tmp_path, f"ws://127.0.0.1:{server.port}/notes")
    run(qtbot, stop(server))
    server = run(qtbot, serve(path, 0))
    bo = join_from_snapshot(qtbot, tmp_path, f"ws://127.0.0.1:{server.port}/notes", expected)
    try:
        dialog = bo.open_history()
        qtbot.waitUntil(lambda: dialog.timeline_ready, timeout=10000)  # fetched, then read
        assert dialog.server_start  # not empty: the server kept a later start
        assert "dropped by the server's history retention" in dialog.start_label.text()
        assert dialog.shown_text() == expected
        dialog.close()
    finally:
        close_window(qtbot, bo)
        run(qtbot, stop(server))
