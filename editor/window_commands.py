"""The main window's menus, toolbar and commands: File, Edit (undo and redo
by the CRDT, the standard clipboard commands), Session, View.

:class:`WindowCommands` adds them to :class:`editor.window_dialogs.WindowDialogs`:
an action runs a session step, opens a dialog, or flips a remembered setting.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import (
    QAction,
    QKeyEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QWidget,
)

from editor.resources import icon
from editor.window_dialogs import WindowDialogs

__all__ = ["WindowCommands"]


class WindowCommands(WindowDialogs):
    """The window's actions, its menus and toolbar, and the Edit commands."""

    def _action(self, text: str, slot: Any, shortcut: Any = None, icon_name: str = "") -> QAction:
        action = QAction(text, self)
        if icon_name:
            action.setIcon(icon(icon_name))
        if shortcut is not None:
            if isinstance(shortcut, list):
                action.setShortcuts(shortcut)
            else:
                action.setShortcut(shortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.new_action = self._action(
            "&New", self.on_new_action_triggered, QKeySequence.StandardKey.New
        )
        self.open_action = self._action(
            "&Open…", self.on_open_action_triggered, QKeySequence.StandardKey.Open
        )
        self.save_as_action = self._action(
            "Save &As…", self.on_save_as_action_triggered, QKeySequence.StandardKey.SaveAs
        )
        self.export_action = self._action("&Export as Plain Text…", self.on_export_action_triggered)
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.undo_action = self._action("&Undo", self.undo, QKeySequence("Ctrl+Z"))
        self.redo_action = self._action(
            "&Redo", self.redo, [QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")]
        )
        self.cut_action = self._action(
            "Cu&t", lambda: self._edit_command("cut"), QKeySequence.StandardKey.Cut
        )
        self.copy_action = self._action(
            "&Copy", lambda: self._edit_command("copy"), QKeySequence.StandardKey.Copy
        )
        self.paste_action = self._action(
            "&Paste", lambda: self._edit_command("paste"), QKeySequence.StandardKey.Paste
        )
        self.select_all_action = self._action(
            "Select &All",
            lambda: self._edit_command("selectAll"),
            QKeySequence.StandardKey.SelectAll,
        )
        # Shortcuts of these four reach the focused editor directly; the
        # actions serve the menu (and any widget without its own binding).
        edit_actions = (self.cut_action, self.copy_action, self.paste_action)
        for action in (*edit_actions, self.select_all_action):
            action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.show_authors_action = QAction("Show &Authors", self)
        self.show_authors_action.setCheckable(True)
        self.show_authors_action.setShortcut(QKeySequence("Ctrl+Shift+A"))
        self.show_authors_action.setToolTip("Colour each character by who wrote it")
        self.show_authors_action.toggled.connect(self.on_show_authors_action_toggled)
        self.addAction(self.show_authors_action)
        self.history_action = self._action(
            "&History…", self.open_history, QKeySequence("Ctrl+Shift+H")
        )
        self.history_action.setToolTip("The document's timeline: see and restore earlier versions")
        self.reopen_action = QAction("Reopen the Last Session at Start", self)
        self.reopen_action.setCheckable(True)
        self.reopen_action.setChecked(self.reopen_last_session_enabled)
        self.reopen_action.toggled.connect(self.on_reopen_action_toggled)
        self.host_action = self._action(
            "&Host a Session…", self.on_host_action_triggered, icon_name="host"
        )
        self.join_action = self._action(
            "&Join a Session…", self.on_join_action_triggered, icon_name="join"
        )
        self.copy_invite_action = self._action(
            "&Copy Invite Link", self.copy_invite_link, icon_name="copy"
        )
        self.disconnect_action = self._action(
            "&Disconnect", lambda: self.run_task(self.go_offline()), icon_name="disconnect"
        )
        self.stop_hosting_action = self._action(
            "&Stop Hosting", lambda: self.run_task(self.stop_hosting()), icon_name="stop"
        )

        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self.new_action)
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.save_as_action)
        file_menu.addAction(self.export_action)
        self.recent_menu = QMenu("&Recent Sessions", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.reopen_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = self.menuBar().addMenu("&Edit")
        edit_menu.addAction(self.undo_action)
        edit_menu.addAction(self.redo_action)
        edit_menu.addSeparator()
        for action in (self.cut_action, self.copy_action, self.paste_action):
            edit_menu.addAction(action)
        edit_menu.addSeparator()
        edit_menu.addAction(self.select_all_action)
        self.edit_menu = edit_menu
        session_menu = self.menuBar().addMenu("&Session")
        for action in (
            self.host_action,
            self.join_action,
            self.copy_invite_action,
            self.disconnect_action,
            self.stop_hosting_action,
        ):
            session_menu.addAction(action)
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(self.sync_panel.toggleViewAction())
        view_menu.addAction(self.show_authors_action)
        view_menu.addAction(self.history_action)
        self.view_menu = view_menu
        toolbar = self.addToolBar("Session")
        toolbar.setObjectName("sessionToolbar")
        for action in (
            self.host_action,
            self.join_action,
            self.copy_invite_action,
            self.disconnect_action,
            self.stop_hosting_action,
        ):
            toolbar.addAction(action)
        self._refresh_recent_menu()
        self._refresh_actions()

    # -- edit ----------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Route the undo/redo keys pressed in the text editor to the CRDT undo manager.

        QPlainTextEdit claims those keys for its own (disabled) undo stack, so
        the window's shortcuts would never see them.
        """
        if watched is self.text_edit and isinstance(event, QKeyEvent):
            action = self._undo_redo_for(event)
            if action is not None:
                if event.type() == QEvent.Type.ShortcutOverride:
                    event.accept()  # deliver the key press here, below
                    return True
                if event.type() == QEvent.Type.KeyPress:
                    action.trigger()
                    return True
        return super().eventFilter(watched, event)

    def _undo_redo_for(self, event: QKeyEvent) -> QAction | None:
        pressed = QKeySequence(event.keyCombination())
        for action in (self.undo_action, self.redo_action):
            if any(pressed == sequence for sequence in action.shortcuts()):
                return action
        return None

    def _edit_command(self, name: str) -> None:
        """Run ``cut``/``copy``/``paste``/``selectAll`` on the focused text field."""
        focused = QApplication.focusWidget()
        target: QWidget | None = focused if focused is not None else self.text_edit
        if not isinstance(target, (QPlainTextEdit, QLineEdit)):
            target = self.text_edit
        getattr(target, name)()

    def undo(self) -> None:
        """Undo this user's last edit (text or list), never a collaborator's."""
        if self.session is not None:
            self.session.undo.undo()

    def redo(self) -> None:
        """Redo what :meth:`undo` undid."""
        if self.session is not None:
            self.session.undo.redo()

    # -- slots ---------------------------------------------------------------
    def on_new_action_triggered(self) -> None:
        """Start a fresh, offline document."""
        self.run_task(self._new_document())

    def on_show_authors_action_toggled(self, checked: bool) -> None:
        """View > Show Authors: colour each character by its author (remembered)."""
        self.authorship.set_enabled(checked)
        self.settings.setValue("showAuthors", "true" if checked else "false")

    def on_reopen_action_toggled(self, checked: bool) -> None:
        """File > Reopen the Last Session at Start."""
        self.settings.setValue("reopenLastSession", "true" if checked else "false")

    def _refresh_recent_menu(self) -> None:
        self.recent_menu.clear()
        for url in self.recent_urls():
            address, _, invite = url.partition("#")  # an invite's token is not shown
            action = self.recent_menu.addAction(address + (" (invite link)" if invite else ""))
            action.triggered.connect(lambda _checked=False, u=url: self.run_task(self.join(u)))
        self.recent_menu.setEnabled(bool(self.recent_urls()))

    def _refresh_actions(self) -> None:
        online = self.session is not None and self.session.client is not None
        self.disconnect_action.setEnabled(online)
        self.stop_hosting_action.setEnabled(self.hosted is not None)
        self.host_action.setEnabled(self.hosted is None)
        self.copy_invite_action.setEnabled(bool(self.invite_url) or online)
