# mypy: disable-error-code="no-untyped-call"
"""The text binding: local Qt edits become CRDT splices, remote deltas reach the widget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QGuiApplication, QInputMethodEvent, QTextCursor
from PySide6.QtWidgets import QPlainTextEdit
from pytestqt.qtbot import QtBot

from crdt_sync import CRDTDocument, CRDTTextHandler
from editor.text_binding import TextBinding

GRIN = "\U0001f600"


def widget_text(editor: QPlainTextEdit) -> str:
    """The widget's raw characters (toPlainText() rewrites some separators)."""
    cursor = QTextCursor(editor.document())
    cursor.select(QTextCursor.SelectionType.Document)
    return cursor.selectedText().replace("\u2029", "\n")


def apply_remote(source: CRDTDocument, target: CRDTDocument) -> None:
    """Deliver everything ``target`` lacks from ``source`` (a remote import)."""
    target.import_changes(source.export_changes(target.version_vector))


class Pair:
    """A bound editor on document ``a`` and a bare peer document ``b``."""

    def __init__(self, qtbot: QtBot, initial: str = "") -> None:
        self.b = CRDTDocument()
        self.b_text = CRDTTextHandler(self.b, "shared_text")
        if initial:
            self.b_text.insert(0, initial)
        self.a = CRDTDocument()
        self.a_text = CRDTTextHandler(self.a, "shared_text")
        apply_remote(self.b, self.a)
        self.editor = QPlainTextEdit()
        qtbot.addWidget(self.editor)
        self.binding = TextBinding(self.editor, self.a, self.a_text)

    def sync(self) -> None:
        apply_remote(self.a, self.b)
        apply_remote(self.b, self.a)


@pytest.fixture
def pair(qtbot: QtBot) -> Iterator[Pair]:
    yield Pair(qtbot, "hello world")


def type_at(editor: QPlainTextEdit, position: int, text: str) -> None:
    cursor = editor.textCursor()
    cursor.setPosition(position)
    editor.setTextCursor(cursor)
    for char in text:
        editor.insertPlainText(char)


def test_initial_text_is_loaded_and_qt_undo_is_off(pair: Pair) -> None:
    assert widget_text(pair.editor) == "hello world"
    assert not pair.editor.isUndoRedoEnabled()


def test_typing_becomes_crdt_inserts(pair: Pair, qtbot: QtBot) -> None:
    qtbot.keyClicks(pair.editor, "X")  # caret starts at 0
    type_at(pair.editor, 7, "big ")
    assert pair.a_text.value == "Xhello big world"


def test_deleting_a_selection_becomes_one_crdt_delete(pair: Pair, qtbot: QtBot) -> None:
    cursor = pair.editor.textCursor()
    cursor.setPosition(5)
    cursor.setPosition(11, QTextCursor.MoveMode.KeepAnchor)
    pair.editor.setTextCursor(cursor)
    with qtbot.waitSignal(pair.binding.localEditCommitted) as blocker:
        qtbot.keyClick(pair.editor, Qt.Key.Key_Backspace)
    assert blocker.args == [5, 6, ""]
    assert pair.a_text.value == "hello"


def test_emoji_positions_are_code_points_in_the_crdt(pair: Pair, qtbot: QtBot) -> None:
    type_at(pair.editor, 0, GRIN)
    # The caret is now at UTF-16 offset 2, code point 1.
    pair.editor.insertPlainText("e\u0301")  # QTest cannot type non-Latin-1 keys
    assert pair.a_text.value == f"{GRIN}e\u0301hello world"
    while pair.editor.textCursor().position() > 2:
        qtbot.keyClick(pair.editor, Qt.Key.Key_Backspace)
    assert pair.a_text.value == widget_text(pair.editor) == f"{GRIN}hello world"
    qtbot.keyClick(pair.editor, Qt.Key.Key_Backspace)  # one key removes both UTF-16 units
    assert pair.a_text.value == widget_text(pair.editor) == "hello world"
    type_at(pair.editor, 0, GRIN)
    pair.sync()
    pair.b_text.insert(0, GRIN)
    pair.b_text.insert(len(pair.b_text), "!")
    pair.sync()
    assert widget_text(pair.editor) == pair.a_text.value == f"{GRIN}{GRIN}hello world!"


def test_large_paste_is_one_insert(pair: Pair, qtbot: QtBot) -> None:
    big = ("lorem ipsum \N{GREEK SMALL LETTER ALPHA} " + GRIN + "\n") * 5000
    QGuiApplication.clipboard().setText(big)
    cursor = pair.editor.textCursor()
    cursor.setPosition(5)
    pair.editor.setTextCursor(cursor)
    with qtbot.waitSignal(pair.binding.localEditCommitted) as blocker:
        pair.editor.paste()
    assert blocker.args == [5, 0, big]
    assert pair.a_text.value == "hello" + big + " world"


def test_remote_insert_before_caret_keeps_caret_on_same_character(pair: Pair) -> None:
    cursor = pair.editor.textCursor()
    cursor.setPosition(6)  # before "world"
    cursor.setPosition(11, QTextCursor.MoveMode.KeepAnchor)
    pair.editor.setTextCursor(cursor)
    pair.b_text.insert(0, f"{GRIN}> ")
    pair.sync()
    after = pair.editor.textCursor()
    assert after.selectedText() == "world"
    assert (after.anchor(), after.position()) == (6 + 4, 11 + 4)


def test_remote_edit_after_caret_does_not_move_it(pair: Pair) -> None:
    type_at(pair.editor, 2, "")
    pair.b_text.insert(8, "ZZZ")
    pair.b_text.delete(0, 1)
    pair.sync()
    assert widget_text(pair.editor) == "ello woZZZrld"
    assert pair.editor.textCursor().position() == 1


def test_remote_edit_is_not_echoed_back(pair: Pair, qtbot: QtBot) -> None:
    sent: list[object] = []
    pair.a.on_change(sent.append)
    pair.b_text.insert(5, ",")
    with qtbot.assertNotEmitted(pair.binding.localEditCommitted):
        pair.sync()
    assert widget_text(pair.editor) == "hello, world"
    assert sent == []


def test_input_method_composition_commits_once(pair: Pair) -> None:
    type_at(pair.editor, 5, "")
    committed: list[tuple[int, int, str]] = []
    pair.binding.localEditCommitted.connect(lambda *args: committed.append(args))
    QCoreApplication.sendEvent(pair.editor, QInputMethodEvent("ni", []))
    assert pair.a_text.value == "hello world"  # preedit is not content
    commit = QInputMethodEvent("", [])
    commit.setCommitString("\u4f60")
    QCoreApplication.sendEvent(pair.editor, commit)
    assert committed == [(5, 0, "\u4f60")]
    assert pair.a_text.value == "hello\u4f60 world"


def test_concurrent_typing_is_merged_not_overwritten(pair: Pair) -> None:
    type_at(pair.editor, 11, "!")
    pair.b_text.insert(0, ">> ")
    pair.sync()
    assert widget_text(pair.editor) == pair.b_text.value == ">> hello world!"


def test_multiline_remote_edits(pair: Pair) -> None:
    pair.b_text.insert(5, "\nnew line\n")
    pair.sync()
    assert widget_text(pair.editor) == "hello\nnew line\n world"
    type_at(pair.editor, 6, "a")
    pair.b_text  # noqa: B018
    pair.sync()
    assert pair.b_text.value == "hello\nanew line\n world"
