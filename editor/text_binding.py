"""Bind a ``QPlainTextEdit`` to a ``CRDTTextHandler`` (an adapter, no sync logic).

Theory of operation
-------------------
The binding keeps ``_shadow``: the text as both sides last agreed on it, as a
Python ``str``. It is the one piece of state that lets positions be converted
(Qt reports UTF-16 offsets *after* a change, the CRDT wants code points
*before* it) without asking either side for its whole text.

* Local edit: Qt emits ``contentsChange(position, removed, added)`` in UTF-16
  units. The binding derives the removed code points from ``_shadow``, reads
  only the added range back from the widget, trims what the removed and added
  runs share at their ends (Qt over-reports ranges around formatting and input
  method updates), and writes one delete and one insert in **one CRDT
  transaction** whose origin is the binding. It never diffs the whole text:
  that would delete a collaborator's concurrent typing.
* Remote edit (or an undo, which is a local CRDT transaction the widget has not
  seen): the ``TextEvent`` delta is walked once and applied through **one**
  ``QTextCursor`` edit block. Qt moves the user's caret and selection only as
  text is inserted or removed before them.
* One re-entrancy guard, ``_applying``, covers both directions: while the
  binding writes to the CRDT it ignores the CRDT's event, and while it writes
  to the widget it ignores Qt's signal.

Qt's own undo stack is switched off: undo belongs to the CRDT ``UndoManager``,
which undoes only this peer's edits.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QTextCursor, QTextDocument
from PySide6.QtWidgets import QPlainTextEdit

from crdt_sync import CRDTDocument, CRDTTextHandler, Delete, Insert, Retain, TextEvent
from editor.positions import to_code_points, to_utf16, utf16_length

__all__ = ["TextBinding"]

_PARAGRAPH_SEPARATOR = "\u2029"


def _common_prefix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    i = 0
    while i < limit and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str, floor: int) -> int:
    """Length of the common suffix of ``a`` and ``b`` that leaves ``floor`` chars alone."""
    limit = min(len(a), len(b)) - floor
    i = 0
    while i < limit and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


class TextBinding(QObject):
    """Keep ``editor`` and ``text`` equal, in both directions, until :meth:`unbind`.

    On construction the widget's content is replaced by ``text.value``. The
    caller must not edit the widget's document other than through the user or
    this binding (``setPlainText`` would be seen as a local edit of everything).
    """

    localEditCommitted = Signal(int, int, str)  # code-point index, deleted count, inserted text
    remoteEditApplied = Signal()

    def __init__(
        self,
        editor: QPlainTextEdit,
        document: CRDTDocument,
        text: CRDTTextHandler,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._editor = editor
        self._qt_document: QTextDocument = editor.document()
        self._document = document
        self._text = text
        self._applying = False
        editor.setUndoRedoEnabled(False)
        self._shadow = ""
        self._load(text.value)
        self._qt_document.contentsChange.connect(self.on_document_contentsChange)
        self._subscription = text.observe(self._on_text_event)

    # -- public ------------------------------------------------------------
    @property
    def text(self) -> str:
        """The text both sides agree on (code points)."""
        return self._shadow

    def to_qt(self, index: int) -> int:
        """Convert a CRDT code-point index into this editor's UTF-16 offset."""
        return to_utf16(self._shadow, max(0, min(index, len(self._shadow))))

    def from_qt(self, offset: int) -> int:
        """Convert this editor's UTF-16 offset into a CRDT code-point index."""
        total = utf16_length(self._shadow)
        return to_code_points(self._shadow, max(0, min(offset, total)))

    def local_selection(self) -> tuple[int, int]:
        """Return the local ``(anchor, head)`` as code-point indexes."""
        cursor = self._editor.textCursor()
        return self.from_qt(cursor.anchor()), self.from_qt(cursor.position())

    def resynchronise(self) -> None:
        """Reload the widget from the CRDT (after an error left them apart)."""
        self._load(self._text.value)

    def unbind(self) -> None:
        """Stop listening to both sides. The widget keeps its current text."""
        self._subscription.cancel()
        self._qt_document.contentsChange.disconnect(self.on_document_contentsChange)

    # -- Qt -> CRDT --------------------------------------------------------
    def on_document_contentsChange(self, position: int, removed: int, added: int) -> None:
        """Turn one Qt change into one positional splice in one CRDT transaction."""
        if self._applying:
            return
        old = self._shadow
        old_units = utf16_length(old)
        new_units = self._qt_document.characterCount() - 1  # minus the final block separator
        position = max(0, min(position, old_units))
        removed = max(0, min(removed, old_units - position))
        # Qt sometimes over-reports both counts (e.g. for the first block); the
        # added count that agrees with the two lengths is the trustworthy one.
        added = new_units - (old_units - removed)
        if added < 0:
            self.resynchronise()
            return
        start = to_code_points(old, position)
        end = to_code_points(old, position + removed)
        removed_text = old[start:end]
        inserted = self._read_widget(position, position + added)
        prefix = _common_prefix(removed_text, inserted)
        suffix = _common_suffix(removed_text, inserted, prefix)
        delete_at = start + prefix
        delete_count = len(removed_text) - prefix - suffix
        insert_text = inserted[prefix : len(inserted) - suffix]
        if delete_count == 0 and not insert_text:
            return  # formatting or input-method preedit only
        self._applying = True
        try:
            with self._document.transaction(origin=self):
                if delete_count:
                    self._text.delete(delete_at, delete_count)
                if insert_text:
                    self._text.insert(delete_at, insert_text)
        finally:
            self._applying = False
        self._shadow = old[:delete_at] + insert_text + old[delete_at + delete_count :]
        self.localEditCommitted.emit(delete_at, delete_count, insert_text)

    def _read_widget(self, start: int, end: int) -> str:
        if start == end:
            return ""
        cursor = QTextCursor(self._qt_document)
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        # selectedText() marks block breaks with U+2029; the document holds "\n".
        return cursor.selectedText().replace(_PARAGRAPH_SEPARATOR, "\n")

    # -- CRDT -> Qt --------------------------------------------------------
    def _on_text_event(self, event: TextEvent) -> None:
        if self._applying:
            return  # our own splice coming back
        self._apply_delta(event.delta)
        self.remoteEditApplied.emit()

    def _apply_delta(self, delta: tuple[Retain | Insert | Delete, ...]) -> None:
        old = self._shadow
        pieces: list[str] = []
        index = 0  # code points into ``old``
        unit = 0  # UTF-16 units into the widget as edited so far
        cursor = QTextCursor(self._qt_document)
        self._applying = True
        cursor.beginEditBlock()
        try:
            for op in delta:
                if isinstance(op, Retain):
                    kept = old[index : index + op.count]
                    pieces.append(kept)
                    unit += utf16_length(kept)
                    index += op.count
                elif isinstance(op, Insert):
                    content = str(op.content)
                    cursor.setPosition(unit)
                    cursor.insertText(content)
                    pieces.append(content)
                    unit += utf16_length(content)
                elif isinstance(op, Delete):
                    gone = utf16_length(old[index : index + op.count])
                    cursor.setPosition(unit)
                    cursor.setPosition(unit + gone, QTextCursor.MoveMode.KeepAnchor)
                    cursor.removeSelectedText()
                    index += op.count
            pieces.append(old[index:])
            self._shadow = "".join(pieces)
        finally:
            cursor.endEditBlock()
            self._applying = False

    def _load(self, value: str) -> None:
        self._applying = True
        try:
            self._editor.setPlainText(value)
        finally:
            self._applying = False
        self._shadow = value
