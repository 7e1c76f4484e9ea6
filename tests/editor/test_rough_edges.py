# mypy: disable-error-code="no-untyped-call"
"""Issue 11's rough edges: layout, Edit menu, reopening, opening text files,
human messages, coalesced log rows, fading caret labels, a stable
"not yet acknowledged" count across a reopen, unique temporary files."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
from pathlib import Path

from editor_helpers import (
    close_window,
    make_window,
    place_caret,
    run,
    start_server,
    wait_for_state,
    widget_text,
)
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QGuiApplication, QMouseEvent
from PySide6.QtWidgets import QApplication, QPlainTextEdit
from pytestqt.qtbot import QtBot

from crdt_sync.sync.events import ConnectionLost
from editor.dialogs import JoinDialog
from editor.messages import human_reason, port_in_use_message
from editor.persistence import write_atomically
from editor.remote_cursors import RemoteCursor, RemoteCursorOverlay
from editor.session import describe_event
from editor.sync_panel import LogEntry, SyncPanel, SyncState, coalesce


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_text_gets_most_of_the_width_and_splitter_sizes_are_remembered(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    window = make_window(tmp_path, "Ada")
    try:
        qtbot.waitExposed(window)
        text_width, list_width = window.splitter.sizes()
        assert text_width > 2 * list_width
        assert text_width > window.sync_panel.width()
        window.resize(window.minimumSizeHint())
        qtbot.waitUntil(lambda: window.text_edit.width() >= 200)
        window.resize(760, 560)
        qtbot.waitUntil(lambda: window.width() == 760)
        window.splitter.setSizes([300, 220])
        chosen = window.splitter.sizes()
    finally:
        close_window(qtbot, window)
    again = make_window(tmp_path, "Ada")
    try:
        qtbot.waitExposed(again)

        def restored() -> None:
            sizes = again.splitter.sizes()
            assert abs(sizes[0] - chosen[0]) <= 2 and abs(sizes[1] - chosen[1]) <= 2, sizes

        qtbot.waitUntil(restored)
    finally:
        close_window(qtbot, again)


def test_edit_menu_has_cut_copy_paste_select_all_with_platform_shortcuts(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    window = make_window(tmp_path, "Ada")
    try:
        titles = [a.text().replace("&", "") for a in window.edit_menu.actions() if a.text()]
        assert titles == ["Undo", "Redo", "Cut", "Copy", "Paste", "Select All"]
        assert not window.copy_action.shortcut().isEmpty()
        assert window.select_all_action.shortcut().toString() == "Ctrl+A"
        qtbot.keyClicks(window.text_edit, "hello world")
        window.text_edit.setFocus()
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.focusWidget() is window.text_edit)
        window.select_all_action.trigger()
        window.copy_action.trigger()
        assert QGuiApplication.clipboard().text() == "hello world"
        place_caret(window.text_edit, 11, anchor=5)
        window.cut_action.trigger()
        assert QGuiApplication.clipboard().text() == " world"
        place_caret(window.text_edit, 0)
        window.paste_action.trigger()
        assert window.session is not None
        assert window.session.text.value == widget_text(window.text_edit) == " worldhello"
    finally:
        close_window(qtbot, window)


def test_restart_reopens_the_last_local_session_unless_turned_off(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    window = make_window(tmp_path, "Ada")
    try:
        qtbot.keyClicks(window.text_edit, "kept across restarts")
        assert window.list_model is not None
        window.list_model.add_item("an item")
    finally:
        close_window(qtbot, window)
    again = make_window(tmp_path, "Ada")
    try:
        assert widget_text(again.text_edit) == ""
        assert run(qtbot, again.reopen_last_session())
        assert widget_text(again.text_edit) == "kept across restarts"
        assert again.session is not None and again.session.items.value == ["an item"]
        again.reopen_action.setChecked(False)
    finally:
        close_window(qtbot, again)
    third = make_window(tmp_path, "Ada")
    try:
        assert not third.reopen_action.isChecked()
        assert not run(qtbot, third.reopen_last_session())
        assert widget_text(third.text_edit) == ""
    finally:
        close_window(qtbot, third)


def test_restart_rejoins_the_last_joined_session_with_the_same_count_unacknowledged(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    server = run(qtbot, start_server())
    port = server.port
    url = f"ws://127.0.0.1:{port}/notes"
    window = make_window(tmp_path, "Ada")
    try:
        run(qtbot, window.join(url))
        wait_for_state(qtbot, window, SyncState.CONNECTED)
        qtbot.keyClicks(window.text_edit, "acked ")
        assert window.session is not None
        session = window.session
        qtbot.waitUntil(lambda: session.unacknowledged == 0)
        run(qtbot, server.stop())
        wait_for_state(qtbot, window, SyncState.RECONNECTING)
        for word in ("one ", "two ", "three "):
            window.text_edit.insertPlainText(word)
            session.undo.stop_capturing()
        before = session.unacknowledged
        assert before > 0
        qtbot.waitUntil(lambda: window.sync_panel.unacknowledged_label.text() == str(before))
    finally:
        close_window(qtbot, window)
    again = make_window(tmp_path, "Ada")
    try:
        assert run(qtbot, again.reopen_last_session())
        assert again.session is not None and again.session.url == url
        assert widget_text(again.text_edit) == "acked one two three "
        assert again.session.unacknowledged == before
        assert again.sync_panel.unacknowledged_label.text() == str(before)
        server = run(qtbot, start_server(port))
        wait_for_state(qtbot, again, SyncState.CONNECTED)
        reopened = again.session
        qtbot.waitUntil(lambda: reopened.unacknowledged == 0)
    finally:
        close_window(qtbot, again)
        run(qtbot, server.stop())


def test_open_accepts_text_and_markdown_as_a_new_document_and_export_still_works(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    notes = tmp_path / "notes.md"
    notes.write_bytes("# Plan\r\n\r\n- caf\u00e9 \U0001f600\r\n".encode())
    window = make_window(tmp_path, "Ada")
    try:
        first = window.session
        run(qtbot, window.open_file(notes))
        assert window.session is not first and window.session is not None
        assert window.session.text.value == "# Plan\n\n- caf\u00e9 \U0001f600\n"
        assert widget_text(window.text_edit) == window.session.text.value
        assert not window.session.undo.can_undo
        out = tmp_path / "out.txt"
        window.session.save_as(tmp_path / "copy.crdt")
        out.write_text(window.session.text.value, encoding="utf-8")
        run(qtbot, window.open_file(tmp_path / "copy.crdt"))
        assert window.session.text.value == "# Plan\n\n- caf\u00e9 \U0001f600\n"
    finally:
        close_window(qtbot, window)


def test_never_connected_is_not_connection_lost_and_status_says_why(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    refused = ConnectionLost("cannot connect: ConnectionRefusedError()")
    message = describe_event(refused, False)[1]
    assert message.startswith("could not connect") and "refused" not in message.lower()
    assert "accepting connections" in message
    assert describe_event(ConnectionLost("closed by peer"), True)[1].startswith("connection lost")
    window = make_window(tmp_path, "Ada")
    try:
        run(qtbot, window.join(f"ws://127.0.0.1:{free_port()}/nowhere"))
        wait_for_state(qtbot, window, SyncState.RECONNECTING)
        qtbot.waitUntil(lambda: "could not connect" in window.sync_panel.status_text())
        lines = window.sync_panel.visible_log_lines()
        assert not any("connection lost" in line for line in lines)
        model = window.sync_panel.log_model
        tips = [
            model.data(model.index(row, 0), Qt.ItemDataRole.ToolTipRole)
            for row in range(model.rowCount())
        ]
        assert any("Errno" in tip or "Connect" in tip for tip in tips), tips
    finally:
        close_window(qtbot, window)


def test_port_in_use_reads_as_a_sentence_and_hosting_on_a_taken_port_says_so(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    raw = "OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8080)"
    assert port_in_use_message(raw) == (
        "Port 8080 is already in use by another program. Choose another port, "
        "or leave the port at \u201cany free port\u201d."
    )
    assert port_in_use_message("something else") is None
    assert human_reason("gaierror: Name or service not known") == (
        "the host name could not be found"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        window = make_window(tmp_path, "Ada")
        try:
            future = asyncio.ensure_future(window.host(port))
            qtbot.waitUntil(future.done, timeout=30000)
            error = future.exception()
            assert error is not None
            assert str(error).startswith(f"Port {port} is already in use")
        finally:
            close_window(qtbot, window)


def test_join_dialog_shows_the_whole_reason(qtbot: QtBot) -> None:
    dialog = JoinDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.url_edit.setCurrentText("http://example.org/a-rather-long-document-name")
    dialog.accept()
    label = dialog.error_label
    assert label.text() and label.toolTip() == label.text()
    assert label.wordWrap()
    assert label.heightForWidth(label.width()) <= label.height()


def test_log_rows_are_coalesced_per_batch_with_full_text_in_tooltips(qtbot: QtBot) -> None:
    now = dt.datetime(2026, 11, 30, 12, 0, 0)
    entries = [LogEntry(now, "sent", f"{i} change(s) sent") for i in range(1, 6)]
    entries += [LogEntry(now, "ack", "stored") for _ in range(5)]
    entries.insert(3, LogEntry(now, "error", "boom", "boom: full reason"))
    rows = coalesce(entries)
    assert [(r.kind, r.count) for r in rows] == [("error", 1), ("sent", 5), ("ack", 5)]
    assert rows[1].message == "5 change(s) sent" and "(\u00d75)" in rows[1].text
    assert rows[1].tooltip.splitlines()[0] == "1 change(s) sent"
    panel = SyncPanel()
    qtbot.addWidget(panel)
    for i in range(20):
        panel.log("sent", f"{i} sent")
        panel.log("ack", "stored")
    panel.log("error", "short", "short, then the full reason")
    lines = panel.visible_log_lines()
    assert len(lines) == 3
    tip = panel.log_model.data(panel.log_model.index(2, 0), Qt.ItemDataRole.ToolTipRole)
    assert tip == "short, then the full reason"


def test_caret_labels_fade_without_movement_and_return_on_move_or_hover(qtbot: QtBot) -> None:
    editor = QPlainTextEdit()
    qtbot.addWidget(editor)
    editor.setPlainText("first line\nsecond line\nthird line")
    editor.resize(400, 200)
    editor.show()
    now = [100.0]
    overlay = RemoteCursorOverlay(editor, clock=lambda: now[0])
    bo = RemoteCursor("p-bo", "Bo", "#3cb44b", 15, 15)
    overlay.set_cursors([bo])
    assert overlay.label_opacity("p-bo") == 1.0
    now[0] += overlay.LABEL_SHOW_S + overlay.LABEL_FADE_S / 2
    assert 0.0 < overlay.label_opacity("p-bo") < 1.0
    now[0] += overlay.LABEL_FADE_S
    assert overlay.label_opacity("p-bo") == 0.0
    overlay.set_cursors([bo])  # the same place: still hidden
    assert overlay.label_opacity("p-bo") == 0.0
    overlay.set_cursors([RemoteCursor("p-bo", "Bo", "#3cb44b", 16, 16)])
    assert overlay.label_opacity("p-bo") == 1.0
    now[0] += 60
    assert overlay.label_opacity("p-bo") == 0.0
    caret = overlay.label_position("p-bo")
    assert caret is not None
    viewport = editor.viewport()
    point = QPointF(caret + QPoint(1, 3))
    move = QMouseEvent(
        QMouseEvent.Type.MouseMove,
        point,
        viewport.mapToGlobal(point),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(viewport, move)
    assert overlay.label_opacity("p-bo") == 1.0
    overlay.hover(QPoint(-500, -500))
    now[0] += 60
    assert overlay.label_opacity("p-bo") == 0.0


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "doc.crdt"
    errors: list[BaseException] = []

    def writer(tag: bytes) -> None:
        try:
            for _ in range(200):
                write_atomically(target, tag * 100)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in (b"a" * 100, b"b" * 100)
    assert [p.name for p in tmp_path.iterdir()] == ["doc.crdt"]


def test_a_document_that_merged_a_snapshot_is_stored_and_reloaded_as_a_new_peer(
    tmp_path: Path,
) -> None:
    from crdt_sync import CRDTDocument, CRDTTextHandler, VersionVector
    from editor.persistence import load_document, save_document, session_path

    source = CRDTDocument(document_id="notes")
    CRDTTextHandler(source, "shared_text").insert(0, "from the server")
    mine = CRDTDocument(document_id="notes")
    text = CRDTTextHandler(mine, "shared_text")
    mine.import_snapshot(source.take_snapshot())
    text.insert(0, "mine: ")
    assert text.value == "mine: from the server"
    assert not mine.can_export(VersionVector())
    stored = session_path("ws://127.0.0.1:1/notes", tmp_path)
    save_document(mine, stored)
    again = load_document(stored)
    assert again is not None
    assert again.peer_id != mine.peer_id  # no history to continue from: a fresh peer
    reloaded = CRDTTextHandler(again, "shared_text")
    assert reloaded.value == "mine: from the server"
