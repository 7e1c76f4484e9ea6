"""The dockable sync panel: connection status, session facts, who is online, a log.

The panel is a view only. It knows nothing about the client: the session
adapter (``editor.session``) calls :meth:`SyncPanel.set_status`,
:meth:`SyncPanel.set_session`, :meth:`SyncPanel.set_peers`,
:meth:`SyncPanel.set_unacknowledged` and :meth:`SyncPanel.log`. That keeps it
testable with plain calls and keeps sync logic out of widgets.

The log is bounded (oldest entries fall off the top), newest last, filterable
by a substring of the kind or the message, and clearable. Entries arrive in
batches of at most ``LOG_FLUSH_MS``; within a batch, routine events of one kind
("sent", "ack", "received", "presence", "ping", "status") become one row that
says how many there were. Every row's tooltip holds its full text (reasons
included), however narrow the panel.
"""

from __future__ import annotations

import collections
import datetime as _dt
import functools
from dataclasses import dataclass
from enum import Enum
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from editor.resources import colour_dot, icon

__all__ = ["LogEntry", "LogModel", "PeerInfo", "SyncPanel", "SyncState", "coalesce"]


class SyncState(Enum):
    """What the status indicator shows (the client's connection states)."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"
    ERROR = "error"


_STATE_COLOURS = {
    SyncState.CONNECTING: "#e0a100",
    SyncState.CONNECTED: "#2e9e4f",
    SyncState.RECONNECTING: "#e07a00",
    SyncState.DISCONNECTED: "#8a8f98",
    SyncState.ERROR: "#d64545",
}


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One collaborator as the panel lists them."""

    peer_id: str
    name: str
    colour: str
    is_self: bool = False


#: Kinds whose entries within one flush batch are shown as one row.
COALESCED_KINDS = frozenset({"sent", "ack", "received", "presence", "ping", "status"})


@dataclass(frozen=True)
class LogEntry:
    """One line of the sync log (``full``: the complete text, for the tooltip)."""

    time: _dt.datetime
    kind: str
    message: str
    full: str = ""
    count: int = 1

    @functools.cached_property
    def text(self) -> str:
        """The line as displayed."""
        more = f" (\u00d7{self.count})" if self.count > 1 else ""
        return f"{self.time:%H:%M:%S}  {self.kind:<12} {self.message}{more}"

    @property
    def tooltip(self) -> str:
        """The full text of the entry."""
        return self.full or self.message


def coalesce(entries: list[LogEntry]) -> list[LogEntry]:
    """One row per routine kind in ``entries`` (the latest message, with the count).

    Rows keep the order of each kind's last entry; other kinds pass unchanged.
    """
    last: dict[str, int] = {}
    for position, entry in enumerate(entries):
        if entry.kind in COALESCED_KINDS:
            last[entry.kind] = position
    if not last:
        return entries
    counts: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    for entry in entries:
        if entry.kind in COALESCED_KINDS:
            counts[entry.kind] = counts.get(entry.kind, 0) + entry.count
            texts.setdefault(entry.kind, []).append(entry.tooltip)
    result: list[LogEntry] = []
    for position, entry in enumerate(entries):
        if entry.kind not in COALESCED_KINDS:
            result.append(entry)
        elif last[entry.kind] == position:
            lines = texts[entry.kind]
            shown = lines if len(lines) <= 20 else [*lines[:10], "…", *lines[-9:]]
            result.append(
                LogEntry(
                    entry.time, entry.kind, entry.message, "\n".join(shown), counts[entry.kind]
                )
            )
    return result


_Index = QModelIndex | QPersistentModelIndex


class LogModel(QAbstractListModel):
    """A bounded list of :class:`LogEntry`, newest last."""

    def __init__(self, max_entries: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: collections.deque[LogEntry] = collections.deque()
        self._max = max_entries

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        """Number of entries kept."""
        return 0 if parent.isValid() else len(self._entries)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """The entry's line; its kind under ``UserRole``."""
        if not index.isValid() or not 0 <= index.row() < len(self._entries):
            return None
        entry = self._entries[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return entry.text
        if role == Qt.ItemDataRole.UserRole:
            return entry.kind
        if role == Qt.ItemDataRole.ToolTipRole:
            return entry.tooltip
        if role == Qt.ItemDataRole.ForegroundRole and entry.kind == "error":
            return QColor(_STATE_COLOURS[SyncState.ERROR])
        return None

    def append(self, entry: LogEntry) -> None:
        """Add ``entry`` at the end, dropping the oldest beyond the bound."""
        self.extend([entry])

    def extend(self, entries: list[LogEntry]) -> None:
        """Add ``entries`` at the end (one insertion for the views), keeping the bound."""
        entries = entries[-self._max :]
        if not entries:
            return
        excess = len(self._entries) + len(entries) - self._max
        if excess > 0:
            self.beginRemoveRows(QModelIndex(), 0, excess - 1)
            for _ in range(excess):
                self._entries.popleft()
            self.endRemoveRows()
        row = len(self._entries)
        self.beginInsertRows(QModelIndex(), row, row + len(entries) - 1)
        self._entries.extend(entries)
        self.endInsertRows()

    def clear(self) -> None:
        """Remove every entry."""
        self.beginResetModel()
        self._entries.clear()
        self.endResetModel()

    def entries(self) -> list[LogEntry]:
        """A copy of the entries, oldest first."""
        return list(self._entries)


class SyncPanel(QDockWidget):
    """The sync side panel (a ``QDockWidget``)."""

    clearRequested = Signal()

    #: Longest time (ms) a logged event waits before it is shown.
    LOG_FLUSH_MS = 100

    def __init__(self, parent: QWidget | None = None, max_log_entries: int = 500) -> None:
        super().__init__("Sync", parent)
        self.setObjectName("syncPanel")
        body = QWidget(self)
        layout = QVBoxLayout(body)

        status_row = QHBoxLayout()
        self.status_icon = QLabel(body)
        self.status_label = QLabel(body)
        self.status_label.setObjectName("statusLabel")
        self.status_label.setWordWrap(True)
        status_row.addWidget(self.status_icon)
        status_row.addWidget(self.status_label, 1)
        layout.addLayout(status_row)

        form = QFormLayout()
        self.url_label = QLabel("—", body)
        self.url_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.url_label.setWordWrap(True)
        self.peer_label = QLabel("—", body)
        self.peer_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.name_label = QLabel("—", body)
        self.unacknowledged_label = QLabel("0", body)
        # Access: the role the server granted, and a lock when the link is encrypted.
        access_row = QHBoxLayout()
        self.lock_icon = QLabel(body)
        self.lock_icon.setObjectName("lockIcon")
        self.role_label = QLabel("—", body)
        self.role_label.setObjectName("roleLabel")
        access_row.addWidget(self.lock_icon)
        access_row.addWidget(self.role_label, 1)
        # Long values (a UUID, a URL) may be clipped in a narrow panel rather
        # than widen it; their tooltips hold the whole text.
        for label in (self.url_label, self.peer_label, self.name_label):
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.setMinimumWidth(40)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("Session:", self.url_label)
        form.addRow("You:", self.name_label)
        form.addRow("Peer id:", self.peer_label)
        form.addRow("Not yet acknowledged:", self.unacknowledged_label)
        form.addRow("Access:", access_row)
        layout.addLayout(form)

        layout.addWidget(QLabel("Online:", body))
        self.peer_list = QListWidget(body)
        self.peer_list.setMaximumHeight(110)
        layout.addWidget(self.peer_list)

        log_row = QHBoxLayout()
        self.filter_edit = QLineEdit(body)
        self.filter_edit.setPlaceholderText("Filter log…")
        self.filter_edit.setClearButtonEnabled(True)
        self.clear_button = QPushButton("Clear", body)
        log_row.addWidget(self.filter_edit, 1)
        log_row.addWidget(self.clear_button)
        layout.addLayout(log_row)

        self.log_model = LogModel(max_log_entries, self)
        self.log_filter = QSortFilterProxyModel(self)
        self.log_filter.setSourceModel(self.log_model)
        self.log_filter.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.log_view = QListView(body)
        self.log_view.setObjectName("syncLog")
        self.log_view.setModel(self.log_filter)
        self.log_view.setUniformItemSizes(True)
        self._pending_log: list[LogEntry] = []
        self._peers: list[PeerInfo] = []
        layout.addWidget(self.log_view, 1)

        self.filter_edit.textChanged.connect(self.on_filter_edit_textChanged)
        self.clear_button.clicked.connect(self.on_clear_button_clicked)
        self.setWidget(body)

        self._state = SyncState.DISCONNECTED
        self._retry_at: float | None = None
        self.set_status(SyncState.DISCONNECTED)

    # -- what the session adapter calls ------------------------------------------
    @property
    def state(self) -> SyncState:
        """The state shown now."""
        return self._state

    def set_status(self, state: SyncState, detail: str = "", retry_at: float | None = None) -> None:
        """Show ``state`` with its colour and words.

        ``detail`` is the error's reason or any extra words; ``retry_at`` (wall
        clock seconds) is when the next reconnection attempt starts.
        """
        self._state = state
        self._retry_at = retry_at
        words = state.value.capitalize()
        if state is SyncState.RECONNECTING and retry_at is not None:
            when = _dt.datetime.fromtimestamp(retry_at).strftime("%H:%M:%S")
            words += f" (next try at {when})"
        if detail:
            words += f": {detail}"
        colour = _STATE_COLOURS[state]
        self.status_label.setText(words)
        self.status_label.setStyleSheet(f"color: {colour};")
        self.status_icon.setPixmap(
            icon(f"status-{state.value}").pixmap(16, 16)
            if not icon(f"status-{state.value}").isNull()
            else colour_dot(colour, 16).pixmap(16, 16)
        )
        self.status_label.setToolTip(words)

    def status_text(self) -> str:
        """The words shown next to the indicator."""
        return self.status_label.text()

    def set_session(self, url: str | None, peer_id: str, name: str) -> None:
        """Show the session URL (``None``: not in a session), own peer id and name."""
        self.url_label.setText(url or "— (offline)")
        self.url_label.setToolTip(url or "")
        self.peer_label.setText(peer_id)
        self.peer_label.setToolTip(peer_id)
        self.name_label.setText(name)
        self.name_label.setToolTip(name)

    def set_access(self, can_edit: bool | None, fingerprint: str | None) -> None:
        """Show the role (None: not known yet) and, with a certificate ``fingerprint``,
        a lock whose tooltip names it (None: the connection is not encrypted)."""
        if can_edit is None:
            self.role_label.setText("—")
        else:
            self.role_label.setText("Can edit" if can_edit else "Can view (read-only)")
        self.role_label.setToolTip(
            ""
            if can_edit is not False
            else "This invite lets you read and follow the document, not change it."
        )
        if fingerprint is None:
            self.lock_icon.clear()
            self.lock_icon.setToolTip("Not encrypted")
        else:
            self.lock_icon.setPixmap(icon("lock").pixmap(16, 16))
            self.lock_icon.setToolTip(f"Encrypted (TLS). Server certificate: {fingerprint}")
        self.lock_icon.setVisible(fingerprint is not None)

    def set_peers(self, peers: list[PeerInfo]) -> None:
        """Replace the "online" list (nothing to do when it did not change).

        Presence changes with every keystroke (the cursor moves); rebuilding the
        list each time would repaint the panel for nothing.
        """
        if peers == self._peers:
            return
        self._peers = list(peers)
        self.peer_list.clear()
        for peer in peers:
            label = f"{peer.name} (you)" if peer.is_self else peer.name
            item = QListWidgetItem(colour_dot(peer.colour), label)
            item.setData(Qt.ItemDataRole.UserRole, peer.peer_id)
            item.setToolTip(peer.peer_id)
            self.peer_list.addItem(item)

    def peer_names(self) -> list[str]:
        """The names listed as online, in order."""
        return [self.peer_list.item(i).text() for i in range(self.peer_list.count())]

    def set_unacknowledged(self, count: int) -> None:
        """Show how many local changes the server has not confirmed yet."""
        text = str(count)
        if text != self.unacknowledged_label.text():
            self.unacknowledged_label.setText(text)

    def log(
        self, kind: str, message: str, full: str = "", when: _dt.datetime | None = None
    ) -> None:
        """Append one event to the log and keep the newest line in view.

        Entries reach the view in batches, at most every ``LOG_FLUSH_MS``: every
        keystroke logs several events, and repainting the log for each one would
        cost more than the edit itself; routine kinds are coalesced per batch.
        ``full`` is the complete text shown in the row's tooltip.
        """
        self._pending_log.append(LogEntry(when or _dt.datetime.now(), kind, message, full))
        if len(self._pending_log) == 1:
            QTimer.singleShot(self.LOG_FLUSH_MS, self, self.flush_log)

    def flush_log(self) -> None:
        """Show the entries logged since the last flush now."""
        if not self._pending_log:
            return
        entries, self._pending_log = self._pending_log, []
        self.log_model.extend(coalesce(entries))
        self.log_view.scrollToBottom()

    def visible_log_lines(self) -> list[str]:
        """The log lines that pass the filter, oldest first."""
        self.flush_log()
        return [
            str(self.log_filter.data(self.log_filter.index(row, 0)))
            for row in range(self.log_filter.rowCount())
        ]

    # -- slots ----------------------------------------------------------------
    def on_filter_edit_textChanged(self, text: str) -> None:
        """Show only the lines containing ``text`` (case-insensitive)."""
        self.log_filter.setFilterFixedString(text)

    def on_clear_button_clicked(self) -> None:
        """Empty the log."""
        self._pending_log.clear()
        self.log_model.clear()
        self.clearRequested.emit()
