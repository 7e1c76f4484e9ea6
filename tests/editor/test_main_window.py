# mypy: disable-error-code="no-untyped-call"
"""Two real windows through a real server on 127.0.0.1: text, list, cursors, undo."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from editor_helpers import (
    close_window,
    make_window,
    place_caret,
    run,
    start_server,
    wait_for_state,
    widget_text,
)
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QGuiApplication
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from editor.main_window import MainWindow
from editor.sync_panel import SyncState
from server.server import WebSocketServer

GRIN = "\U0001f600"


@pytest.fixture
def server(qtbot: QtBot, loop: asyncio.AbstractEventLoop) -> Iterator[WebSocketServer]:
    del loop
    instance = run(qtbot, start_server())
    yield instance
    run(qtbot, instance.stop())


class Duo:
    def __init__(self, qtbot: QtBot, root: Path, url: str) -> None:
        self.qtbot = qtbot
        self.url = url
        self.a = make_window(root, "Ada")
        self.b = make_window(root, "Bo")
        for window in (self.a, self.b):
            run(qtbot, window.join(url))
        for window in (self.a, self.b):
            wait_for_state(qtbot, window, SyncState.CONNECTED)

    def converge_text(self, expected: str) -> None:
        def both() -> None:
            assert widget_text(self.a.text_edit) == expected
            assert widget_text(self.b.text_edit) == expected

        self.qtbot.waitUntil(both, timeout=5000)

    def close(self) -> None:
        for window in (self.a, self.b):
            close_window(self.qtbot, window)


@pytest.fixture
def duo(qtbot: QtBot, tmp_path: Path, server: WebSocketServer) -> Iterator[Duo]:
    pair = Duo(qtbot, tmp_path, f"ws://127.0.0.1:{server.port}/shared-notes")
    yield pair
    pair.close()


def test_typing_deleting_pasting_and_emoji_reach_the_other_window(duo: Duo, qtbot: QtBot) -> None:
    qtbot.keyClicks(duo.a.text_edit, "hello world")
    duo.converge_text("hello world")
    place_caret(duo.a.text_edit, 11, anchor=5)
    qtbot.keyClick(duo.a.text_edit, Qt.Key.Key_Backspace)
    duo.converge_text("hello")
    QGuiApplication.clipboard().setText(" pasted\nsecond line")
    duo.a.text_edit.paste()
    duo.converge_text("hello pasted\nsecond line")
    place_caret(duo.b.text_edit, 0)
    duo.b.text_edit.insertPlainText(f"{GRIN}e\u0301 ")
    duo.converge_text(f"{GRIN}e\u0301 hello pasted\nsecond line")
    assert duo.a.session is not None and duo.b.session is not None
    assert duo.a.session.text.value == duo.b.session.text.value


def test_remote_edit_leaves_local_caret_and_is_not_echoed(duo: Duo, qtbot: QtBot) -> None:
    qtbot.keyClicks(duo.a.text_edit, "abc def")
    duo.converge_text("abc def")
    place_caret(duo.b.text_edit, 7, anchor=4)  # B selects "def"
    assert duo.b.text_binding is not None
    with qtbot.assertNotEmitted(duo.b.text_binding.localEditCommitted, wait=100):
        place_caret(duo.a.text_edit, 0)
        duo.a.text_edit.insertPlainText(f"{GRIN}> ")
        duo.converge_text(f"{GRIN}> abc def")
    caret = duo.b.text_edit.textCursor()
    assert caret.selectedText() == "def"
    assert (caret.anchor(), caret.position()) == (4 + 4, 7 + 4)


def test_list_add_edit_remove_move_reach_the_other_window(
    duo: Duo, qtbot: QtBot, qtmodeltester: ModelTester
) -> None:
    a_model, b_model = duo.a.list_model, duo.b.list_model
    assert a_model is not None and b_model is not None

    def b_rows(expected: list[str]) -> None:
        def check() -> None:
            assert b_model.items == expected

        qtbot.waitUntil(check, timeout=5000)

    for text in ("milk", "eggs", "bread"):
        a_model.add_item(text)
    b_rows(["milk", "eggs", "bread"])
    a_model.setData(a_model.index(1), "free-range eggs")
    b_rows(["milk", "free-range eggs", "bread"])
    assert a_model.moveRows(QModelIndex(), 0, 1, QModelIndex(), 3)
    b_rows(["free-range eggs", "bread", "milk"])
    with qtbot.assertNotEmitted(b_model.localEditCommitted, wait=100):
        assert a_model.removeRows(1, 1)
        b_rows(["free-range eggs", "milk"])
    qtmodeltester.check(a_model)
    qtmodeltester.check(b_model)


def test_remote_cursor_is_drawn_with_name_and_colour(duo: Duo, qtbot: QtBot) -> None:
    qtbot.keyClicks(duo.a.text_edit, "shared words")
    duo.converge_text("shared words")
    place_caret(duo.a.text_edit, 6, anchor=0)
    assert duo.a.session is not None

    def b_sees_ada() -> None:
        cursors = duo.b.cursor_overlay.cursors
        assert [(c.name, c.anchor, c.head) for c in cursors] == [("Ada", 0, 6)]
        assert cursors[0].colour == duo.a.session.colour  # type: ignore[union-attr]

    qtbot.waitUntil(b_sees_ada, timeout=5000)
    place_caret(duo.b.text_edit, 0)
    duo.b.text_edit.insertPlainText("our ")  # text before Ada's selection moves it

    def moved() -> None:
        assert [(c.anchor, c.head) for c in duo.b.cursor_overlay.cursors] == [(4, 10)]

    qtbot.waitUntil(moved, timeout=5000)
    assert "Ada" in duo.b.sync_panel.peer_names()


def test_undo_after_interleaved_remote_edit_undoes_only_own_edit(duo: Duo, qtbot: QtBot) -> None:
    qtbot.keyClicks(duo.a.text_edit, "mine")
    duo.converge_text("mine")
    assert duo.a.session is not None
    duo.a.session.undo.stop_capturing()
    place_caret(duo.b.text_edit, 4)
    qtbot.keyClicks(duo.b.text_edit, " theirs")
    duo.converge_text("mine theirs")
    qtbot.keyClick(duo.a.text_edit, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    duo.converge_text(" theirs")


def test_redo_restores_own_typing_in_both_windows(duo: Duo, qtbot: QtBot) -> None:
    qtbot.keyClicks(duo.a.text_edit, "mine")
    duo.converge_text("mine")
    qtbot.keyClick(duo.a.text_edit, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    duo.converge_text("")
    qtbot.keyClick(duo.a.text_edit, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    duo.converge_text("mine")


def test_offline_edit_survives_restart_and_arrives(
    qtbot: QtBot, tmp_path: Path, server: WebSocketServer
) -> None:
    url = f"ws://127.0.0.1:{server.port}/offline-doc"
    a = make_window(tmp_path, "Ada")
    b = make_window(tmp_path, "Bo")
    run(qtbot, a.join(url))
    run(qtbot, b.join(url))
    wait_for_state(qtbot, a, SyncState.CONNECTED)
    run(qtbot, a.go_offline())
    assert a.sync_panel.state is SyncState.DISCONNECTED
    qtbot.keyClicks(a.text_edit, "written offline")
    close_window(qtbot, a)

    reopened: MainWindow = make_window(tmp_path, "Ada")
    run(qtbot, reopened.join(url))
    assert widget_text(reopened.text_edit) == "written offline"  # from the local store
    qtbot.waitUntil(lambda: widget_text(b.text_edit) == "written offline", timeout=5000)
    close_window(qtbot, reopened)
    close_window(qtbot, b)


def test_ctrl_z_leaves_a_collaborators_later_rename_and_text_alone(duo: Duo, qtbot: QtBot) -> None:
    a_model, b_model = duo.a.list_model, duo.b.list_model
    assert a_model is not None and b_model is not None
    assert duo.a.session is not None and duo.b.session is not None
    a_model.add_item("milk")
    qtbot.waitUntil(lambda: b_model.items == ["milk"])
    # Bo renames the item, then Ada renames it later; Bo presses Ctrl+Z.
    duo.b.session.undo.stop_capturing()
    b_model.setData(b_model.index(0), "oat milk")
    qtbot.waitUntil(lambda: a_model.items == ["oat milk"])
    a_model.setData(a_model.index(0), "soy milk")
    qtbot.waitUntil(lambda: b_model.items == ["soy milk"])
    duo.b.text_edit.setFocus()
    qtbot.keyClick(duo.b.text_edit, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert b_model.items == ["soy milk"]
    b_model.add_item("marker")  # sent after anything the undo sent
    qtbot.waitUntil(lambda: a_model.items == ["soy milk", "marker"])
    assert b_model.items == ["soy milk", "marker"]
    # Text: Bo's word, rewritten by Ada afterwards, stays Ada's after Bo's undo.
    duo.b.session.undo.stop_capturing()
    qtbot.keyClicks(duo.b.text_edit, "cat")
    duo.converge_text("cat")
    place_caret(duo.a.text_edit, 3, anchor=0)
    qtbot.keyClicks(duo.a.text_edit, "dog")
    duo.converge_text("dog")
    qtbot.keyClick(duo.b.text_edit, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert widget_text(duo.b.text_edit) == "dog"
    place_caret(duo.b.text_edit, 3)
    qtbot.keyClicks(duo.b.text_edit, "!")  # sent after anything the undo sent
    duo.converge_text("dog!")
