"""The main window's dialogs: error boxes that are never cut off, the file
dialogs (open, save as, export), the Host and Join dialogs, and View > History.

:class:`WindowDialogs` adds them to :class:`editor.window_session.WindowSession`;
each asks, then hands the answer to a session step.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMessageBox,
)

from crdt_sync.sync import History
from editor.dialogs import HostDialog, JoinDialog
from editor.history import HistoryDialog
from editor.window_session import WindowSession

__all__ = ["WindowDialogs"]

OPEN_FILTER = (
    "Documents (*.crdt *.txt *.md);;CRDT documents (*.crdt);;Text and Markdown (*.txt *.md)"
)


class WindowDialogs(WindowSession):
    """The dialogs a window opens (one error box at a time, one History window)."""

    #: The last error box shown (tests read it).
    error_box: QMessageBox | None = None

    def show_error(self, text: str, details: str = "") -> None:
        """A warning box whose text is never cut off (wraps; the full text in details)."""
        box = QMessageBox(QMessageBox.Icon.Warning, "CRDT Editor", text, parent=self)
        box.setTextFormat(Qt.TextFormat.PlainText)
        if details and details != text:
            box.setDetailedText(details)
        label = box.findChild(QLabel, "qt_msgbox_label")
        if label is not None:
            label.setWordWrap(True)
            label.setMinimumWidth(360)
        box.open()
        self.error_box = box

    def on_open_action_triggered(self) -> None:
        """Open a document file, or a text/Markdown file as a new document (offline)."""
        path, _ = QFileDialog.getOpenFileName(self, "Open document", "", OPEN_FILTER)
        if path:
            self.run_task(self.open_file(Path(path)))

    def on_save_as_action_triggered(self) -> None:
        """Save the document's snapshot to a file."""
        path, _ = QFileDialog.getSaveFileName(self, "Save document", "", "CRDT documents (*.crdt)")
        if path and self.session is not None:
            self.session.save_as(Path(path))

    def on_export_action_triggered(self) -> None:
        """Write the shared text to a UTF-8 text file."""
        path, _ = QFileDialog.getSaveFileName(self, "Export as plain text", "", "Text (*.txt)")
        if path and self.session is not None:
            Path(path).write_text(self.session.text.value, encoding="utf-8")

    def on_host_action_triggered(self) -> None:
        """Ask for a port, then host."""
        dialog = HostDialog(_as_int(self.settings.value("hostPort", 0)), self)
        if dialog.exec() == HostDialog.DialogCode.Accepted:
            self.settings.setValue("hostPort", dialog.port)
            self.run_task(self.host(dialog.port))

    def on_join_action_triggered(self) -> None:
        """Ask for a URL (refused in the dialog when malformed), then join."""
        dialog = JoinDialog(self.recent_urls(), self)
        if dialog.exec() == JoinDialog.DialogCode.Accepted and dialog.session_url is not None:
            self.run_task(self.join(dialog.session_url.url))

    def open_history(self) -> HistoryDialog:
        """View > History: the timeline of the open document (a window of its own)."""
        session = self.session
        assert session is not None  # set in __init__, never cleared
        if self.history_dialog is not None:
            self.history_dialog.close()
        dialog = HistoryDialog(
            session.document,
            session.text,
            session.items,
            lambda peer: session.author(peer).name,
            self,
            fetch_history=self._fetch_history,
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.destroyed.connect(lambda *_: self._forget_history(dialog))
        # A view-only session (Can view link) looks at the history but restores nothing.
        dialog.restore_button.setVisible(not session.read_only)
        dialog.show()
        self.history_dialog = dialog
        return dialog

    async def _fetch_history(self) -> History:
        """The server's history of the open document (History fetches what it lacks)."""
        client = self.session.client if self.session is not None else None
        if client is None:
            raise ConnectionError("not connected to a server")
        return await client.fetch_history()

    def _forget_history(self, dialog: HistoryDialog) -> None:
        if self.history_dialog is dialog:
            self.history_dialog = None


def _as_int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
