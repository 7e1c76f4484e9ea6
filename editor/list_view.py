"""The shared list's view: a ``QListView`` with keyboard reordering.

Ctrl+Up / Ctrl+Down move the current item, Delete removes it, Insert adds an
item after it and opens its editor. Drag and drop reorders (internal moves
only). Every edit goes through :class:`editor.list_model.ListModel`.
"""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QAbstractItemView, QListView, QWidget

from editor.list_model import ListModel

__all__ = ["ListView"]


class ListView(QListView):
    """A list view over a :class:`ListModel` (set with :meth:`setModel`)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.setDragEnabled(True)
        self.setAcceptDrops(True)
        self.setDropIndicatorShown(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.SelectedClicked
        )

    def shared_model(self) -> ListModel | None:
        """The bound :class:`ListModel`, if any."""
        model = self.model()
        return model if isinstance(model, ListModel) else None

    def move_current(self, step: int) -> bool:
        """Move the current item ``step`` rows (negative: up); keep it current."""
        model = self.shared_model()
        current = self.currentIndex()
        if model is None or not current.isValid():
            return False
        target = current.row() + step
        if not 0 <= target < model.rowCount():
            return False
        if not model.move_item(current.row(), target):
            return False
        self.setCurrentIndex(model.index(target))
        self.selectionModel().select(
            model.index(target), QItemSelectionModel.SelectionFlag.ClearAndSelect
        )
        return True

    def add_after_current(self, text: str = "") -> int:
        """Add an item after the current one (or at the end) and open its editor."""
        model = self.shared_model()
        if model is None:
            return -1
        current = self.currentIndex()
        row = current.row() + 1 if current.isValid() else model.rowCount()
        model.add_item(text, row)
        index = model.index(row)
        self.setCurrentIndex(index)
        self.edit(index)
        return row

    def remove_current(self) -> bool:
        """Remove the current item."""
        model = self.shared_model()
        current = self.currentIndex()
        if model is None or not current.isValid():
            return False
        return model.removeRows(current.row(), 1)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Keyboard reordering, removal and insertion; anything else as usual."""
        control = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        key = event.key()
        if control and key == Qt.Key.Key_Up:
            self.move_current(-1)
        elif control and key == Qt.Key.Key_Down:
            self.move_current(1)
        elif key == Qt.Key.Key_Delete and self.state() != QAbstractItemView.State.EditingState:
            self.remove_current()
        elif key == Qt.Key.Key_Insert:
            self.add_after_current()
        else:
            super().keyPressEvent(event)
            return
        event.accept()
