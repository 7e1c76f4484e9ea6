"""A ``QAbstractListModel`` over a ``CRDTListHandler`` (an adapter, no sync logic).

Theory of operation
-------------------
The model keeps ``_rows``, a snapshot of the list as the views have been told
about it. Every change reaches the views through exactly one of two paths:

* **Edits made through the model** (a view's in-place editor, drag and drop,
  keyboard reordering, :meth:`add_item`, :meth:`remove_item`): the model opens
  ``begin*Rows``, writes the operation into **one CRDT transaction** whose
  origin is the model, updates ``_rows`` the same way, and closes with
  ``end*Rows``. Moves go through ``beginMoveRows`` so selections follow the item.
* **Everything else** (remote changes, undo/redo): the ``ListEvent`` delta is
  walked once and turned into ``beginRemoveRows``/``beginInsertRows``/
  ``dataChanged``. Qt's "last" row is inclusive: ``n`` rows at ``i`` are
  ``(i, i + n - 1)``.

One guard, ``_writing``, makes the CRDT's event for the model's own write a
no-op, and the model never writes to the CRDT while applying an event, so a
remote edit is never echoed back.

Items are JSON values in the CRDT; the model shows strings as they are and any
other value as its JSON text, and stores what the user types as a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)

from crdt_sync import CRDTDocument, CRDTListHandler, Delete, Insert, ListEvent, Retain

__all__ = ["ListModel", "display_text"]

_Index = QModelIndex | QPersistentModelIndex


def display_text(value: object) -> str:
    """The text shown for one list item."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


class ListModel(QAbstractListModel):
    """Rows of a shared CRDT list, editable, removable and movable.

    ``localEditCommitted`` is emitted after each edit made through the model
    has been written into the CRDT (the only path by which this model writes);
    tests use it to prove that remote edits are not echoed back.
    """

    localEditCommitted = Signal()

    def __init__(
        self,
        document: CRDTDocument,
        items: CRDTListHandler,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._document = document
        self._items = items
        self._rows: list[Any] = list(items.value)
        self._writing = False
        self._subscription = items.observe(self._on_list_event)

    def unbind(self) -> None:
        """Stop following the CRDT list."""
        self._subscription.cancel()

    # -- read -----------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        """Number of items (a list model has no children under a valid parent)."""
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Item text for the display and edit roles; ``None`` otherwise."""
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return display_text(self._rows[index.row()])
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        """Items are editable and draggable; the gap between items takes drops."""
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled
        return (
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsEditable
            | Qt.ItemFlag.ItemIsDragEnabled
            | Qt.ItemFlag.ItemNeverHasChildren
        )

    def supportedDropActions(self) -> Qt.DropAction:
        """Only moves: a drop reorders, it never copies an item."""
        return Qt.DropAction.MoveAction

    @property
    def items(self) -> list[Any]:
        """A copy of the rows as the views see them."""
        return list(self._rows)

    # -- write (local edits) --------------------------------------------------
    def setData(self, index: _Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        """Replace one item's text (in one CRDT transaction)."""
        if role != Qt.ItemDataRole.EditRole or not index.isValid():
            return False
        row = index.row()
        if not 0 <= row < len(self._rows):
            return False
        text = str(value)
        if text == display_text(self._rows[row]):
            return True
        with self._write():
            self._items.update(row, text)
        self._rows[row] = text
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole])
        self.localEditCommitted.emit()
        return True

    def insertRows(self, row: int, count: int, parent: _Index = QModelIndex()) -> bool:  # noqa: B008
        """Insert ``count`` empty items before ``row``."""
        return self._insert(row, [""] * count, parent)

    def add_item(self, text: str, row: int | None = None) -> int:
        """Insert an item (at the end by default) and return its row."""
        row = len(self._rows) if row is None else row
        if not self._insert(row, [text], QModelIndex()):
            raise IndexError(f"row {row} outside 0..{len(self._rows)}")
        return row

    def _insert(self, row: int, values: list[Any], parent: _Index) -> bool:
        if parent.isValid() or not values or not 0 <= row <= len(self._rows):
            return False
        self.beginInsertRows(QModelIndex(), row, row + len(values) - 1)
        with self._write():
            for offset, value in enumerate(values):
                self._items.insert(row + offset, value)
        self._rows[row:row] = values
        self.endInsertRows()
        self.localEditCommitted.emit()
        return True

    def removeRows(self, row: int, count: int, parent: _Index = QModelIndex()) -> bool:  # noqa: B008
        """Remove ``count`` items from ``row``."""
        if parent.isValid() or count <= 0 or row < 0 or row + count > len(self._rows):
            return False
        self.beginRemoveRows(QModelIndex(), row, row + count - 1)
        with self._write():
            self._items.delete(row, count)
        del self._rows[row : row + count]
        self.endRemoveRows()
        self.localEditCommitted.emit()
        return True

    def moveRows(
        self,
        sourceParent: _Index,
        sourceRow: int,
        count: int,
        destinationParent: _Index,
        destinationChild: int,
    ) -> bool:
        """Move ``count`` items to before ``destinationChild`` (Qt's convention).

        Each item is one CRDT ``move``, so a concurrent move of the same item
        elsewhere can never duplicate it.
        """
        size = len(self._rows)
        if (
            sourceParent.isValid()
            or destinationParent.isValid()
            or count <= 0
            or sourceRow < 0
            or sourceRow + count > size
            or not 0 <= destinationChild <= size
            or sourceRow <= destinationChild <= sourceRow + count
        ):
            return False  # out of range, or a move onto itself (Qt refuses those too)
        if not self.beginMoveRows(
            QModelIndex(), sourceRow, sourceRow + count - 1, QModelIndex(), destinationChild
        ):
            return False
        with self._write():
            if destinationChild > sourceRow:
                for _ in range(count):  # the block's first item goes last, each time
                    self._items.move(sourceRow, destinationChild - 1)
            else:
                for offset in range(count):
                    self._items.move(sourceRow + offset, destinationChild + offset)
        moved = self._rows[sourceRow : sourceRow + count]
        del self._rows[sourceRow : sourceRow + count]
        target = destinationChild - count if destinationChild > sourceRow else destinationChild
        self._rows[target:target] = moved
        self.endMoveRows()
        self.localEditCommitted.emit()
        return True

    def move_item(self, row: int, to_row: int) -> bool:
        """Move one item so that it ends up at ``to_row`` (CRDT ``move`` semantics)."""
        if row == to_row:
            return False
        destination = to_row + 1 if to_row > row else to_row
        return self.moveRows(QModelIndex(), row, 1, QModelIndex(), destination)

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._writing = True
        try:
            with self._document.transaction(origin=self):
                yield
        finally:
            self._writing = False

    # -- CRDT -> views ----------------------------------------------------------
    def _on_list_event(self, event: ListEvent) -> None:
        if self._writing:
            return
        self._apply_delta(event.delta)

    def _apply_delta(self, delta: tuple[Retain | Insert | Delete, ...]) -> None:
        ops = list(delta)
        row = 0
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, Retain):
                row += op.count
            elif isinstance(op, Delete):
                following = ops[i + 1] if i + 1 < len(ops) else None
                if isinstance(following, Insert):
                    # An update arrives as delete + insert (in either order) at one
                    # place: show it as changed rows so selection and editors stay put.
                    row = self._replace(row, op.count, list(following.content))
                    i += 1
                else:
                    self._remove(row, op.count)
            elif isinstance(op, Insert):
                values = list(op.content)
                following = ops[i + 1] if i + 1 < len(ops) else None
                if isinstance(following, Delete):  # the core's order for an update
                    row = self._replace(row, following.count, values)
                    i += 1
                else:
                    self._emit_insert(row, values)
                    row += len(values)
            i += 1

    def _replace(self, row: int, removed: int, values: list[Any]) -> int:
        common = min(removed, len(values))
        if common:
            self._rows[row : row + common] = values[:common]
            self.dataChanged.emit(
                self.index(row), self.index(row + common - 1), [Qt.ItemDataRole.DisplayRole]
            )
        if removed > common:
            self._remove(row + common, removed - common)
        elif len(values) > common:
            self._emit_insert(row + common, values[common:])
        return row + len(values)

    def _remove(self, row: int, count: int) -> None:
        if count <= 0:
            return
        self.beginRemoveRows(QModelIndex(), row, row + count - 1)
        del self._rows[row : row + count]
        self.endRemoveRows()

    def _emit_insert(self, row: int, values: list[Any]) -> None:
        if not values:
            return
        self.beginInsertRows(QModelIndex(), row, row + len(values) - 1)
        self._rows[row:row] = values
        self.endInsertRows()
