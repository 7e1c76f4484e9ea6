"""The main window: shared text, shared list, sync panel, menus and toolbar.

The window wires adapters together and runs user commands; it holds no sync
logic. Long-running commands (host, join, disconnect, close) are coroutines on
the qasync loop; menu actions start them with :meth:`MainWindow.run_task`.

Closing the window does not quit by itself: ``closeEvent`` first runs the
async shutdown (disconnect, save, stop the hosted server, remember settings),
then closes for real and emits ``closed``; ``editor.app`` quits on that.

The window is built in layers, one job a file, each adding to the one before:

* ``editor/window_widgets.py``: the widgets and their layout;
* ``editor/window_session.py``: the open session wired to the widgets (store
  lock, join, host, go offline, fresh peer id), the task runner, the
  remembered sessions;
* ``editor/window_dialogs.py``: error boxes, file dialogs, Host and Join,
  View > History;
* ``editor/window_commands.py``: actions, menus, toolbar, the Edit commands;
* this file: putting it together at start, and closing.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Signal
from PySide6.QtGui import QCloseEvent

from crdt_sync.sync.client import ReconnectPolicy
from editor.urls import InvalidSessionUrl, parse_session_url
from editor.window_commands import WindowCommands

__all__ = ["MainWindow"]


class MainWindow(WindowCommands):
    """One editor window (the app has one; tests make two)."""

    closed = Signal()

    def __init__(
        self,
        name: str | None = None,
        settings: QSettings | None = None,
        reconnect: ReconnectPolicy | None = None,
        data_root: Path | None = None,
        host_address: str = "0.0.0.0",
    ) -> None:
        super().__init__(name, settings, reconnect, data_root, host_address)
        self._build_actions()
        self.text_edit.installEventFilter(self)
        self.set_session(self._new_local_session())
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1100, 700)
        if str(self.settings.value("showAuthors", "false")).lower() == "true":
            self.show_authors_action.setChecked(True)
        splitter_state = self.settings.value("splitterState")
        if isinstance(splitter_state, QByteArray):
            self.splitter.restoreState(splitter_state)
        window_state = self.settings.value("windowState")
        self._docks_sized = isinstance(window_state, QByteArray) and self.restoreState(window_state)

    # -- closing --------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Disconnect, save, stop hosting, remember settings. Idempotent."""
        if self._shutdown_done:
            return
        self._shutting_down = True
        try:
            self._remember_session()
            if self.session is not None:
                await self.session.close()
                if self.session.store_lock is not None:
                    self.session.store_lock.release()
            await self.stop_hosting()
            self.handoff.close()
        finally:
            self.settings.setValue("geometry", self.saveGeometry())
            self.settings.setValue("splitterState", self.splitter.saveState())
            self.settings.setValue("windowState", self.saveState())
            self.settings.setValue("lastName", self.user_name)
            self.settings.sync()
            self._shutdown_done = True

    def closeEvent(self, event: QCloseEvent) -> None:
        """Run :meth:`shutdown` first, then close for real and emit ``closed``."""
        if self._shutdown_done:
            event.accept()
            self.closed.emit()
            return
        event.ignore()
        if not self._shutting_down:
            task = self.run_task(self.shutdown())
            task.add_done_callback(lambda _task: self.close())
            self._shutting_down = True

    def shutdown_now(self) -> None:
        """Last resort without a loop: stop the child server synchronously."""
        if self.hosted is not None:
            self.hosted.stop_now()
        if self.session is not None:
            self.session.save()


def parse_or_none(url: str) -> str | None:
    """``url`` when it is a valid session URL, else ``None`` (for command-line input)."""
    try:
        return parse_session_url(url).url
    except InvalidSessionUrl:
        return None
