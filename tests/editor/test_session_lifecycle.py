# mypy: disable-error-code="no-untyped-call"
"""Status walk, hosting a child server, joining by URL, an unreachable server."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from editor_helpers import close_window, make_window, run, start_server, wait_for_state, widget_text
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from editor.dialogs import JoinDialog
from editor.sync_panel import SyncState


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sync_panel_walks_connecting_connected_reconnecting_connected(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    server = run(qtbot, start_server())
    port = server.port
    window = make_window(tmp_path, "Ada")
    seen: list[SyncState] = []
    assert window.session is not None
    try:
        run(qtbot, window.join(f"ws://127.0.0.1:{port}/walk"))
        window.session.statusChanged.connect(lambda: seen.append(window.sync_panel.state))
        seen.append(window.sync_panel.state)
        wait_for_state(qtbot, window, SyncState.CONNECTED)
        assert seen[0] is SyncState.CONNECTING
        run(qtbot, server.stop())
        wait_for_state(qtbot, window, SyncState.RECONNECTING)
        qtbot.waitUntil(lambda: "next try at" in window.sync_panel.status_text())
        server = run(qtbot, start_server(port))
        wait_for_state(qtbot, window, SyncState.CONNECTED)
        log = "\n".join(window.sync_panel.visible_log_lines())
        for kind in ("handshake", "reconnect", "status"):
            assert kind in log
    finally:
        close_window(qtbot, window)
        run(qtbot, server.stop())


def test_unreachable_server_shows_reconnecting_and_app_stays_usable(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    window = make_window(tmp_path, "Ada")
    try:
        run(qtbot, window.join(f"ws://127.0.0.1:{free_port()}/nowhere"))
        wait_for_state(qtbot, window, SyncState.RECONNECTING)
        qtbot.waitUntil(lambda: "next try at" in window.sync_panel.status_text())
        qtbot.keyClicks(window.text_edit, "still typing")
        assert window.session is not None
        assert window.session.text.value == widget_text(window.text_edit) == "still typing"
        assert window.list_model is not None
        window.list_model.add_item("offline item")
        assert window.session.items.value == ["offline item"]
    finally:
        close_window(qtbot, window)


def test_join_dialog_refuses_malformed_url_with_reason(qtbot: QtBot) -> None:
    dialog = JoinDialog(["ws://example.org:9/doc"])
    qtbot.addWidget(dialog)
    dialog.show()
    for bad, words in (
        ("http://host:1/doc", "ws://"),
        ("ws://host:1/", "document id"),
        ("ws://host:99999/doc", "port"),
        ("ws://host/doc?x=1", "query"),
    ):
        dialog.url_edit.setCurrentText(bad)
        dialog.accept()
        assert dialog.isVisible()
        assert dialog.result() != JoinDialog.DialogCode.Accepted
        assert words in dialog.error_label.text()
    dialog.url_edit.setCurrentText("ws://127.0.0.1:8080/notes")
    dialog.accept()
    assert dialog.result() == JoinDialog.DialogCode.Accepted
    assert dialog.session_url is not None and dialog.session_url.document_id == "notes"


def test_host_flow_starts_child_server_and_leaves_no_process(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    host = make_window(tmp_path, "Ada")
    guest = make_window(tmp_path, "Bo")
    second_pid: int | None = None
    try:
        invite = run(qtbot, host.host(0), timeout=30000)
        assert host.hosted is not None and host.hosted.pid is not None
        first_pid = host.hosted.pid
        assert pid_exists(first_pid)
        assert host.invite_edit.text() == invite
        assert host.invite_bar.isVisible()
        port = host.hosted.port
        assert host.session is not None
        address, _, fragment = invite.partition("#")
        assert address == f"wss://127.0.0.1:{port}/{host.session.document_id}"
        assert fragment.startswith("token=") and "&pin=sha256:" in fragment
        wait_for_state(qtbot, host, SyncState.CONNECTED)
        host.copy_invite_button.click()
        assert QGuiApplication.clipboard().text() == invite

        qtbot.keyClicks(host.text_edit, "hosted text")
        run(qtbot, guest.join(invite))
        qtbot.waitUntil(lambda: widget_text(guest.text_edit) == "hosted text", timeout=10000)

        run(qtbot, host.stop_hosting(), timeout=30000)
        assert host.hosted is None
        assert not pid_exists(first_pid)
        wait_for_state(qtbot, guest, SyncState.RECONNECTING)

        run(qtbot, host.host(0), timeout=30000)
        assert host.hosted is not None
        second_pid = host.hosted.pid
        assert second_pid is not None and pid_exists(second_pid)
    finally:
        close_window(qtbot, guest)
        close_window(qtbot, host)  # quitting stops the hosted server
    assert second_pid is not None and not pid_exists(second_pid)


@pytest.mark.parametrize("argv", [["--join", "http://x/doc"], ["--host", "70000"]])
def test_command_line_refuses_bad_arguments(argv: list[str]) -> None:
    from editor.app import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_command_line_accepts_host_without_port_and_join() -> None:
    from editor.app import build_parser

    assert build_parser().parse_args(["--host"]).host == 0
    assert build_parser().parse_args(["--host", "8081", "--name", "Ada"]).host == 8081
    assert build_parser().parse_args(["--join", "ws://h:1/d"]).join == "ws://h:1/d"
