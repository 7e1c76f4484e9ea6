# mypy: disable-error-code="no-untyped-call"
"""Hosting from the app is secure: wss:// with a pinned self-signed certificate, two
invite links (Can edit, Can view), the role and the lock in the panel (issue 8)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from editor_helpers import close_window, make_window, run, wait_for_state, widget_text
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from crdt_sync.sync import Role
from editor.dialogs import JoinDialog
from editor.main_window import MainWindow
from editor.sync_panel import SyncState
from editor.urls import InvalidSessionUrl, parse_session_url
from server.tls import certificate_pin

PIN = "sha256:" + "ab" * 32


def role_of(window: MainWindow) -> Role | None:
    client = window.session.client if window.session is not None else None
    return client.role if client is not None else None


def test_hosting_gives_two_links_and_each_joins_with_its_role(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    host = make_window(tmp_path, "Ada")
    editor = make_window(tmp_path, "Bo")
    viewer = make_window(tmp_path, "Cy")
    try:
        invite = run(qtbot, host.host(0), timeout=30000)
        hosted = host.hosted
        assert hosted is not None and hosted.pin is not None
        edit_link, view_link = host.invite_url, host.view_invite_url
        assert invite == edit_link and edit_link is not None and view_link is not None
        assert host.invite_edit.text() == edit_link
        assert host.view_invite_edit.text() == view_link
        for link in (edit_link, view_link):
            checked = parse_session_url(link)
            assert checked.scheme == "wss" and checked.pin == hosted.pin and checked.token
        assert edit_link.partition("#")[0] == view_link.partition("#")[0]
        # The certificate was made once in the data folder; its key is private.
        assert certificate_pin(hosted.cert_path) == hosted.pin
        assert stat.S_IMODE(hosted.key_path.stat().st_mode) == 0o600
        host.copy_view_invite_button.click()
        assert QGuiApplication.clipboard().text() == view_link
        host.copy_invite_button.click()
        assert QGuiApplication.clipboard().text() == edit_link

        wait_for_state(qtbot, host, SyncState.CONNECTED)
        assert role_of(host) is Role.WRITE
        assert host.sync_panel.role_label.text() == "Can edit"
        assert hosted.pin in host.sync_panel.lock_icon.toolTip()
        qtbot.keyClicks(host.text_edit, "from the host")

        # Can edit: joins over TLS with the pin, and edits.
        run(qtbot, editor.join(edit_link))
        wait_for_state(qtbot, editor, SyncState.CONNECTED)
        assert role_of(editor) is Role.WRITE
        assert not editor.text_edit.isReadOnly() and editor.list_view.isEnabled()
        assert editor.sync_panel.role_label.text() == "Can edit"
        assert not editor.sync_panel.lock_icon.isHidden()
        assert hosted.pin in editor.sync_panel.lock_icon.toolTip()
        assert "#" not in editor.sync_panel.url_label.text()  # the token is not shown
        shown = [action.text() for action in editor.recent_menu.actions()]
        assert any(text.endswith("(invite link)") for text in shown)
        assert not any("token=" in text for text in shown)
        qtbot.waitUntil(lambda: widget_text(editor.text_edit) == "from the host", timeout=10000)
        editor.text_edit.moveCursor(editor.text_edit.textCursor().MoveOperation.End)
        qtbot.keyClicks(editor.text_edit, ", and Bo")
        qtbot.waitUntil(
            lambda: widget_text(host.text_edit) == "from the host, and Bo", timeout=10000
        )

        # Can view: joins, follows, cannot change anything, and its presence is shown.
        run(qtbot, viewer.join(view_link))
        wait_for_state(qtbot, viewer, SyncState.CONNECTED)
        assert role_of(viewer) is Role.READ
        assert viewer.sync_panel.role_label.text() == "Can view (read-only)"
        assert viewer.text_edit.isReadOnly()
        assert not viewer.list_view.isEnabled() and not viewer.add_button.isEnabled()
        qtbot.waitUntil(
            lambda: widget_text(viewer.text_edit) == "from the host, and Bo", timeout=10000
        )
        qtbot.waitUntil(lambda: "Cy" in host.sync_panel.peer_names(), timeout=10000)
        host.text_edit.moveCursor(host.text_edit.textCursor().MoveOperation.End)
        qtbot.keyClicks(host.text_edit, "!")
        qtbot.waitUntil(
            lambda: widget_text(viewer.text_edit) == "from the host, and Bo!", timeout=10000
        )
        assert viewer.sync_panel.state is SyncState.CONNECTED
        # The viewer wrote nothing (not even its author entry): nothing refused or pending.
        assert viewer.session is not None and viewer.session.unacknowledged == 0
        assert viewer.session.read_only
        history = viewer.open_history()
        assert history.restore_button.isHidden()
        history.close()
    finally:
        close_window(qtbot, viewer)
        close_window(qtbot, editor)
        close_window(qtbot, host)


def test_a_wrong_pin_is_refused_and_a_new_hosting_session_revokes_old_links(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    host = make_window(tmp_path, "Ada")
    guest = make_window(tmp_path, "Bo")
    try:
        run(qtbot, host.host(0), timeout=30000)
        link = host.invite_url
        assert link is not None and host.hosted is not None and host.hosted.pin is not None
        forged = link.replace(host.hosted.pin, PIN)
        run(qtbot, guest.join(forged))
        wait_for_state(qtbot, guest, SyncState.ERROR)
        assert "security error" in guest.sync_panel.status_text()

        first_pin = host.hosted.pin
        run(qtbot, host.stop_hosting(), timeout=30000)
        run(qtbot, host.host(0), timeout=30000)
        assert host.hosted is not None and host.hosted.pin == first_pin  # same certificate
        assert host.invite_url is not None
        # The earlier session's token, on the new session's address.
        old = link.partition("#")[2]
        run(qtbot, guest.join(host.invite_url.partition("#")[0] + "#" + old))
        wait_for_state(qtbot, guest, SyncState.ERROR)
        assert "UNAUTHORIZED" in guest.sync_panel.status_text()
        run(qtbot, guest.join(host.invite_url))
        wait_for_state(qtbot, guest, SyncState.CONNECTED)
    finally:
        close_window(qtbot, guest)
        close_window(qtbot, host)


def test_the_join_dialog_accepts_invite_links(qtbot: QtBot) -> None:
    link = f"wss://192.168.1.20:9000/notes#token=a.b-c_d&pin={PIN}"
    checked = parse_session_url(link)
    assert (checked.token, checked.pin, checked.address) == (
        "a.b-c_d",
        PIN,
        "wss://192.168.1.20:9000/notes",
    )
    assert checked.url == link
    for bad, words in (
        (f"ws://h:1/notes#token=t&pin={PIN}", "wss://"),
        ("wss://h:1/notes#pin=sha256:12", "invite"),
        ("wss://h:1/notes#secret=x", "invite"),
    ):
        with pytest.raises(InvalidSessionUrl, match=words):
            parse_session_url(bad)
    dialog = JoinDialog([])
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.url_edit.setCurrentText(link)
    dialog.accept()
    assert dialog.result() == JoinDialog.DialogCode.Accepted
    assert dialog.session_url is not None and dialog.session_url.token == "a.b-c_d"
