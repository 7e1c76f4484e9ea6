# mypy: disable-error-code="no-untyped-call"
"""Remote carets repaint where they were and where they are, not the whole viewport."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QRect
from PySide6.QtGui import QColor, QPaintEvent, QRegion
from PySide6.QtWidgets import QApplication, QPlainTextEdit
from pytestqt.qtbot import QtBot

from editor.remote_cursors import RemoteCursor, RemoteCursorOverlay

GREEN = "#3cb44b"


class PaintRecorder(QObject):
    """Collects the regions the watched widget is asked to paint."""

    def __init__(self) -> None:
        super().__init__()
        self.regions: list[QRegion] = []

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if isinstance(event, QPaintEvent):
            self.regions.append(QRegion(event.region()))
        return False


def caret_pixels(editor: QPlainTextEdit, rect: QRect) -> list[QColor]:
    image = editor.viewport().grab().toImage()
    y = rect.center().y()
    return [image.pixelColor(x, y) for x in range(rect.left(), rect.left() + 2)]


def test_a_moving_caret_repaints_its_old_and_new_place_only(qtbot: QtBot) -> None:
    editor = QPlainTextEdit()
    qtbot.addWidget(editor)
    editor.setPlainText("\n".join(f"line {n} with some words" for n in range(30)))
    editor.resize(420, 400)
    editor.show()
    qtbot.waitExposed(editor)
    overlay = RemoteCursorOverlay(editor)
    recorder = PaintRecorder()
    overlay.installEventFilter(recorder)
    first = RemoteCursor("p-bo", "Bo", GREEN, 3, 3)
    overlay.set_cursors([first])
    old = overlay._caret_rect(first)
    qtbot.waitUntil(lambda: bool(recorder.regions))  # the first (whole) paint
    QApplication.processEvents()
    assert QColor(GREEN) in caret_pixels(editor, old)
    recorder.regions.clear()
    moved = RemoteCursor("p-bo", "Bo", GREEN, 200, 200)
    overlay.set_cursors([moved])
    new = overlay._caret_rect(moved)
    qtbot.waitUntil(lambda: bool(recorder.regions))
    painted = QRegion()
    for region in recorder.regions:
        painted = painted.united(region)
    # Both places are repainted (the old caret wiped, the new one drawn)...
    assert painted.contains(old) and painted.contains(new)
    # ... and far less than the viewport: the editor and the author colours
    # below this transparent overlay repaint only there too.
    viewport = editor.viewport().rect()
    area = sum(r.width() * r.height() for r in painted)
    assert area < viewport.width() * viewport.height() // 4
    assert QColor(GREEN) not in caret_pixels(editor, old)
    assert QColor(GREEN) in caret_pixels(editor, new)
