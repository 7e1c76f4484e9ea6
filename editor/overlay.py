"""A transparent widget painted over a text editor's viewport.

The remote carets and the author colours both live there; this base keeps
them on the viewport's corner and at its size, and repaints each only where
the editor repaints (the overlay is transparent, so repainting all of it would
repaint the whole editor below).
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPoint, QRect, Qt
from PySide6.QtGui import QMoveEvent
from PySide6.QtWidgets import QPlainTextEdit, QWidget

__all__ = ["ViewportOverlay"]


class ViewportOverlay(QWidget):
    """Covers ``editor``'s viewport; subclasses paint and answer viewport events."""

    def __init__(self, editor: QPlainTextEdit) -> None:
        super().__init__(editor.viewport())
        self._editor = editor
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.resize(editor.viewport().size())
        editor.viewport().installEventFilter(self)
        editor.updateRequest.connect(self._on_update_request)

    def follows_repaints(self) -> bool:
        """Whether the editor's repaints should repaint this overlay too."""
        return True

    def viewport_event(self, event: QEvent) -> bool:
        """A viewport event other than a resize; True consumes it."""
        return False

    def _on_update_request(self, rect: QRect, dy: int) -> None:
        """Repaint what the editor repaints (all of it when it scrolled), no more."""
        if self.follows_repaints():
            if dy:
                self.update()
            else:
                self.update(rect)

    def moveEvent(self, event: QMoveEvent) -> None:
        """Stay on the viewport's corner: scrolling moves the viewport's children."""
        super().moveEvent(event)
        if self.pos() != QPoint(0, 0):
            self.move(0, 0)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Follow the viewport's size; hand its other events to :meth:`viewport_event`."""
        if watched is self._editor.viewport():
            if event.type() == QEvent.Type.Resize:
                self.resize(self._editor.viewport().size())
            else:
                return self.viewport_event(event)
        return False
