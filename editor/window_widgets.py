"""The main window's widgets: the shared text with its overlays, the shared
list with its buttons, the sync panel, and the invite bar, laid out.

:class:`WindowWidgets` is the bottom layer of :class:`editor.main_window.MainWindow`
(``editor.window_session`` wires a session to these widgets,
``editor.window_dialogs`` opens the dialogs, ``editor.window_commands`` builds
the menus and runs the commands). It holds no state beyond the widgets.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import (
    QShowEvent,
)
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from editor.authorship import AuthorshipOverlay
from editor.list_view import ListView
from editor.remote_cursors import RemoteCursorOverlay
from editor.resources import icon
from editor.sync_panel import SyncPanel

__all__ = ["WindowWidgets"]

#: The text never gets narrower than this (px): about 30 average characters.
TEXT_MIN_WIDTH = 240
#: The sync panel's first width (px); later the user's choice is remembered.
DOCK_WIDTH = 260


class WindowWidgets(QMainWindow):
    """The window's widgets, made and laid out (the text takes most of the width)."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("CRDT Editor")
        self.setWindowIcon(icon("app"))
        self.text_edit = QPlainTextEdit(self)
        self.text_edit.setObjectName("sharedText")
        self.text_edit.setPlaceholderText("Shared text: everyone in the session edits it live.")
        # Author colours under the collaborators' carets (created first: drawn below).
        self.authorship = AuthorshipOverlay(self.text_edit)
        self.cursor_overlay = RemoteCursorOverlay(self.text_edit)
        self.list_view = ListView(self)
        self.list_view.setObjectName("sharedList")
        self.sync_panel = SyncPanel(self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.sync_panel)
        self._build_central()
        self._build_invite_bar()
        #: Whether the dock widths are settled (restored, or set on first show).
        self._docks_sized = False

    def _build_central(self) -> None:
        list_pane = QWidget(self)
        list_layout = QVBoxLayout(list_pane)
        list_layout.setContentsMargins(0, 0, 0, 0)
        list_layout.addWidget(QLabel("Shared list", list_pane))
        list_layout.addWidget(self.list_view, 1)
        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add", list_pane)
        self.remove_button = QPushButton("Remove", list_pane)
        self.up_button = QPushButton("Up", list_pane)
        self.down_button = QPushButton("Down", list_pane)
        for button in (self.add_button, self.remove_button, self.up_button, self.down_button):
            buttons.addWidget(button)
        list_layout.addLayout(buttons)
        self.add_button.clicked.connect(lambda: self.list_view.add_after_current("New item"))
        self.remove_button.clicked.connect(self.list_view.remove_current)
        self.up_button.clicked.connect(lambda: self.list_view.move_current(-1))
        self.down_button.clicked.connect(lambda: self.list_view.move_current(1))
        # The text gets most of the width: it grows with the window, the list
        # does not, and neither can be squeezed below a readable width.
        splitter = QSplitter(self)
        splitter.setObjectName("mainSplitter")
        splitter.addWidget(self.text_edit)
        splitter.addWidget(list_pane)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setCollapsible(0, False)
        self.text_edit.setMinimumWidth(TEXT_MIN_WIDTH)
        list_pane.setMinimumWidth(160)
        splitter.setSizes([640, 200])
        self.splitter = splitter
        self.setCentralWidget(splitter)
        self.sync_panel.setMinimumWidth(200)

    def _build_invite_bar(self) -> None:
        bar = QWidget(self)
        layout = QHBoxLayout(bar)
        layout.setContentsMargins(0, 0, 0, 0)
        # Two invite links (editor/hosting.py): Can edit and Can view.
        layout.addWidget(QLabel("Can edit:", bar))
        self.invite_edit = QLineEdit(bar)
        self.invite_edit.setObjectName("inviteLink")
        self.invite_edit.setReadOnly(True)
        self.invite_edit.setMinimumWidth(200)
        layout.addWidget(self.invite_edit)
        self.copy_invite_button = QToolButton(bar)
        self.copy_invite_button.setIcon(icon("copy"))
        self.copy_invite_button.setText("Copy")
        self.copy_invite_button.setToolTip("Copy the invite link that lets others edit")
        layout.addWidget(self.copy_invite_button)
        layout.addWidget(QLabel("Can view:", bar))
        self.view_invite_edit = QLineEdit(bar)
        self.view_invite_edit.setObjectName("viewInviteLink")
        self.view_invite_edit.setReadOnly(True)
        self.view_invite_edit.setMinimumWidth(200)
        layout.addWidget(self.view_invite_edit)
        self.copy_view_invite_button = QToolButton(bar)
        self.copy_view_invite_button.setIcon(icon("copy"))
        self.copy_view_invite_button.setText("Copy")
        self.copy_view_invite_button.setToolTip("Copy the read-only invite link")
        layout.addWidget(self.copy_view_invite_button)
        self.invite_bar = bar
        self.statusBar().addPermanentWidget(bar)
        bar.hide()

    def showEvent(self, event: QShowEvent) -> None:
        """On first show without remembered sizes, keep the panel narrower than the text."""
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            self.resizeDocks([self.sync_panel], [DOCK_WIDTH], Qt.Orientation.Horizontal)
