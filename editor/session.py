"""One open document and its (optional) connection: the app's sync adapter.

A :class:`Session` owns a ``CRDTDocument`` with the shared text
(``"shared_text"``) and list (``"shared_list"``), the ``UndoManager`` over both
(which undoes only this peer's edits), the local store (a snapshot written
after every change, debounced, and on close), and, while online, a
``WebSocketClient``. It turns the client's status and event streams into Qt
signals and plain values that the window and the sync panel show; widgets never
talk to the client.

Presence: the local awareness state is ``{"name", "colour", "cursor"}`` where
``cursor`` holds the caret and anchor as ``StickyIndex.to_json()`` values, so a
collaborator's cursor stays on the same characters whatever is edited around it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PySide6.QtCore import QObject, QTimer, Signal

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    StickyIndex,
    UndoManager,
    UpdateEvent,
    VersionVector,
)
from crdt_sync.sync.access import Role
from crdt_sync.sync.client import ConnectionStatus, ReconnectPolicy, WebSocketClient
from crdt_sync.sync.events import (
    Acknowledged,
    AwarenessReceived,
    ChangesReceived,
    ChangesSent,
    ClientEvent,
    ConnectionLost,
    ErrorOccurred,
    HandshakeCompleted,
    PongReceived,
    ReconnectScheduled,
    ResyncCompleted,
    ResyncRequested,
    SnapshotReceived,
    SnapshotSent,
)
from crdt_sync.sync.exceptions import ErrorCode
from crdt_sync.sync.protocol import count_unacknowledged
from editor.authorship import AUTHORS_NAME, Author, author_entry
from editor.messages import human_reason
from editor.persistence import (
    StoredSession,
    load_acknowledged,
    save_acknowledged,
    save_document,
    session_path,
    write_atomically,
)
from editor.sync_panel import PeerInfo, SyncState

if TYPE_CHECKING:
    from editor.single_instance import StoreLock

__all__ = ["PALETTE", "RemotePresence", "Session", "colour_for", "describe_event"]

TEXT_NAME = "shared_text"
LIST_NAME = "shared_list"
SAVE_DELAY_MS = 300

#: Collaborator colours, picked per peer id (distinct, readable behind black text).
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42a5b3",
    "#f032e6",
    "#9a6324",
    "#808000",
    "#000075",
)


def colour_for(peer_id: str) -> str:
    """A stable colour for ``peer_id``."""
    digest = hashlib.sha256(peer_id.encode("utf-8")).digest()
    return PALETTE[digest[0] % len(PALETTE)]


def describe_event(event: ClientEvent, connected: bool = True) -> tuple[str, str]:
    """The sync log's ``(kind, message)`` for one client event.

    ``connected``: whether this connection attempt had got through; an attempt
    that never did is "could not connect", not "connection lost".
    """
    if isinstance(event, HandshakeCompleted):
        extra = " (the server's document was replaced)" if event.epoch_changed else ""
        return "handshake", f"joined session {event.session_id[:8]}{extra}"
    if isinstance(event, ChangesSent):
        return "sent", f"{event.count} change(s) sent ({event.local_count} made here)"
    if isinstance(event, ChangesReceived):
        return "received", f"{event.count} change(s) received, {event.applied} new"
    if isinstance(event, SnapshotReceived):
        return "snapshot", "snapshot received and merged"
    if isinstance(event, SnapshotSent):
        return "snapshot", "whole document sent to the server as a snapshot"
    if isinstance(event, Acknowledged):
        return "ack", f"server stored the changes; {event.unacknowledged} not yet confirmed"
    if isinstance(event, PongReceived):
        return "ping", f"round trip {event.round_trip_ms:.1f} ms"
    if isinstance(event, ReconnectScheduled):
        return "reconnect", f"attempt {event.attempt} in {event.delay_s:.1f} s"
    if isinstance(event, ErrorOccurred):
        source = "server" if event.remote else "client"
        return "error", f"{event.code.name} ({source}): {event.message}"
    if isinstance(event, ConnectionLost):
        if not connected:
            return "disconnect", f"could not connect: {human_reason(event.reason)}"
        return "disconnect", f"connection lost: {human_reason(event.reason)}"
    if isinstance(event, ResyncRequested):
        return "resync", f"resync requested: {event.reason}"
    if isinstance(event, ResyncCompleted):
        return "resync", "resync completed"
    if isinstance(event, AwarenessReceived):
        return "presence", f"{len(event.updates)} presence update(s)"
    return "event", type(event).__name__


_H = TypeVar("_H", CRDTTextHandler, CRDTListHandler, CRDTMapHandler)


def _handler(document: CRDTDocument, kind: type[_H], name: str) -> _H:
    """The document's handler ``name`` of ``kind``: the one already bound, or a new one."""
    existing = document.handlers.get((name, kind.kind))
    return existing if isinstance(existing, kind) else kind(document, name)


@dataclass(frozen=True, slots=True)
class RemotePresence:
    """A collaborator's presence resolved against the local document (code points)."""

    peer_id: str
    name: str
    colour: str
    anchor: int | None
    head: int | None


class Session(QObject):
    """A document, its undo manager, its local store and its optional connection.

    Signals: ``statusChanged`` (read :attr:`state`, :attr:`detail`,
    :attr:`retry_at`), ``eventLogged(kind, message, full text)``, ``presenceChanged``
    (read :meth:`peers` and :meth:`remote_presences`), ``unacknowledgedChanged(n)``
    and ``saved``.
    """

    statusChanged = Signal()
    eventLogged = Signal(str, str, str)
    presenceChanged = Signal()
    unacknowledgedChanged = Signal(int)
    saved = Signal()
    #: The shared ``authors`` map changed (names and colours of text authors).
    authorsChanged = Signal()
    #: The server refused this replica's peer id (``PEER_ID_IN_USE``): another
    #: replica owns it (a copied or stale store). The window forks (see
    #: ``MainWindow.continue_under_fresh_peer``).
    peerIdInUse = Signal()

    def __init__(
        self,
        document: CRDTDocument,
        name: str,
        url: str | None = None,
        store: StoredSession | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.document = document
        self.name = name
        self.url = url
        self.store = store if store is not None else (session_path(url) if url else None)
        self.text = _handler(document, CRDTTextHandler, TEXT_NAME)
        self.items = _handler(document, CRDTListHandler, LIST_NAME)
        self.authors = _handler(document, CRDTMapHandler, AUTHORS_NAME)
        self._author_pending = False
        self.undo = UndoManager(document, [self.text, self.items], capture_timeout_ms=500)
        self.colour = colour_for(str(document.peer_id))
        self.client: WebSocketClient | None = None
        self.state = SyncState.DISCONNECTED
        self.detail = ""
        self.retry_at: float | None = None
        self._subscriptions: list[Any] = []
        self._connect_task: asyncio.Future[bool] | None = None
        self._local_cursor: tuple[int, int] | None = None
        self._cursor_pending = False
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save)
        # What the server confirmed storing, remembered across restarts.
        self.acknowledged = load_acknowledged(self.store) if self.store else VersionVector()
        self._connected_once = False  # this connection attempt got through
        self._last_reason = ""
        self._update_subscription = document.on_update(self._on_document_update)
        #: The lock this window holds on :attr:`store` (``editor.single_instance``).
        self.store_lock: StoreLock | None = None
        self._authors_subscription = self.authors.observe(lambda _e: self.authorsChanged.emit())

    @property
    def peer_id(self) -> str:
        """This app's peer id in the document."""
        return str(self.document.peer_id)

    @property
    def document_id(self) -> str:
        """The shared document's id (the URL path)."""
        return self.document.document_id

    # -- persistence ------------------------------------------------------------
    def save(self) -> None:
        """Write the document to the local store now (no-op without a store)."""
        self._save_timer.stop()
        store = self.store
        if store is None:
            return
        if not self.document.version_vector and not store.snapshot_path.exists():
            return  # an untouched new document leaves nothing behind
        save_document(self.document, store)
        if self.url is not None:
            save_acknowledged(store, self.acknowledged)
        self.saved.emit()

    def save_as(self, path: Path) -> None:
        """Write the document's snapshot to ``path`` (File > Save As)."""
        write_atomically(path, self.document.take_snapshot().to_bytes())

    def _on_document_update(self, event: UpdateEvent) -> None:
        if event.local and not self._author_pending and not self._author_recorded():
            # Sign the document once: after this edit's transaction, not inside it.
            self._author_pending = True
            QTimer.singleShot(0, self, self.record_author)
        if self.store is not None:
            self._save_timer.start()
        if self.url is not None:
            self.unacknowledgedChanged.emit(self.unacknowledged)
        if not event.local:
            self.presenceChanged.emit()  # remote cursors re-resolve against the new text

    # -- authors ----------------------------------------------------------------
    def _author_recorded(self) -> bool:
        return author_entry(self.authors.get(self.peer_id)) == (self.name[:40], self.colour)

    @property
    def read_only(self) -> bool:
        """Whether the server gave this session the read role (a Can view link): it
        then writes nothing to the document, not even its author entry."""
        return self.client is not None and self.client.role is Role.READ

    def record_author(self) -> None:
        """Write this peer's name and colour into the shared ``authors`` map (if new).

        Done when joining a session and on the first edit, so every replica
        can name every author, offline ones included. Not an undoable edit.
        """
        self._author_pending = False
        if self._author_recorded() or self.read_only:
            return
        with self.document.transaction(origin="authors"):
            self.authors.set(self.peer_id, {"name": self.name[:40], "colour": self.colour})

    def author(self, peer_id: str) -> Author:
        """The name and colour of ``peer_id`` as the document (or presence) knows them."""
        if peer_id == self.peer_id:
            return Author(peer_id, self.name[:40], self.colour)
        entry = author_entry(self.authors.get(peer_id))
        if entry is None and self.client is not None:
            state = self.client.awareness.states.get(peer_id)
            if state is not None:
                entry = self._name_and_colour(peer_id, state)
        if entry is None:
            return Author(peer_id, peer_id[:8], colour_for(peer_id))
        return Author(peer_id, *entry)

    # -- connection -------------------------------------------------------------
    def start_sync(self, url: str, reconnect: ReconnectPolicy | None = None) -> None:
        """Connect to ``url`` in the background (status arrives via ``statusChanged``).

        The local store switches to the one for ``url`` (unless one was given).
        """
        if self.client is not None:
            raise RuntimeError("this session is already connected; call stop_sync() first")
        self.url = url
        if self.store is None:
            self.store = session_path(url)
        client = WebSocketClient(url, self.document, author=self.name, reconnect=reconnect)
        self.client = client
        self._subscriptions = [
            client.connection_status.subscribe(self._on_connection_status),
            client.events.subscribe(self._on_client_event),
            client.awareness.changes.subscribe(lambda _change: self.presenceChanged.emit()),
        ]
        self._publish_presence()
        self._connected_once = False
        self._set_state(SyncState.CONNECTING)
        self._connect_task = asyncio.ensure_future(client.connect())
        self._connect_task.add_done_callback(self._on_connect_done)
        self._log("connect", f"connecting to {url.partition('#')[0]}")  # no token in the log

    def _on_connect_done(self, task: asyncio.Future[bool]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._set_state(SyncState.ERROR, human_reason(str(error)))
            self._log("error", human_reason(str(error)), str(error))

    async def stop_sync(self) -> None:
        """Disconnect (announcing the leave) and forget the client. Safe when offline."""
        client, self.client = self.client, None
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions = []
        if client is not None:
            await client.disconnect()
            client.close()
            self._log("disconnect", "disconnected")
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        self._connect_task = None
        self._set_state(SyncState.DISCONNECTED)
        self.presenceChanged.emit()

    async def close(self) -> None:
        """Disconnect, save, and stop following the document."""
        await self.stop_sync()
        self.save()
        self._update_subscription.cancel()
        self._authors_subscription.cancel()

    @property
    def unacknowledged(self) -> int:
        """Local changes the server has not confirmed (0 for a document never shared).

        Counted against what the server confirmed in this run or an earlier one
        (remembered on disk), so the figure does not jump after a reopen.
        """
        if self.url is None:
            return 0
        if self.client is not None:
            self.acknowledged = self.acknowledged.merge(self.client.acknowledged)
        return count_unacknowledged(self.document, self.acknowledged)

    def _log(self, kind: str, message: str, full: str = "") -> None:
        self.eventLogged.emit(kind, message, full or message)

    def _set_state(self, state: SyncState, detail: str = "", retry_at: float | None = None) -> None:
        self.state, self.detail, self.retry_at = state, detail, retry_at
        self.statusChanged.emit()

    def _on_connection_status(self, status: ConnectionStatus) -> None:
        state = SyncState[status.name]
        if state is SyncState.RECONNECTING:
            self._set_state(state, self.detail, self.retry_at)
        elif state is SyncState.ERROR:
            self._set_state(state, self.detail)
        else:
            self._set_state(state)
        self._log("status", state.value)
        if self.client is not None:
            self.unacknowledgedChanged.emit(self.unacknowledged)

    def _on_client_event(self, event: ClientEvent) -> None:
        kind, message = describe_event(event, self._connected_once)
        full = message
        if isinstance(event, ConnectionLost):
            full = f"{message}\n{event.reason}"
            what = "connection lost" if self._connected_once else "could not connect"
            self._last_reason = f"{what}: {human_reason(event.reason)}"
            self._connected_once = False
        self._log(kind, message, full)
        if isinstance(event, ReconnectScheduled):
            # The status says why it is reconnecting, not only when.
            self._set_state(SyncState.RECONNECTING, self._last_reason, event.at_time)
        elif isinstance(event, ErrorOccurred):
            self.detail = f"{event.code.name}: {event.message}"
            self._last_reason = self.detail
            if event.final:
                self._set_state(SyncState.ERROR, self.detail)
            if event.code is ErrorCode.PEER_ID_IN_USE:
                self.peerIdInUse.emit()
        elif isinstance(event, Acknowledged):
            self.unacknowledgedChanged.emit(self.unacknowledged)
        elif isinstance(event, HandshakeCompleted):
            self._connected_once = True
            self._last_reason = ""
            if self.client is not None:
                known = VersionVector() if event.epoch_changed else self.acknowledged
                self.acknowledged = known.merge(self.client.acknowledged)
            self._publish_presence()
            QTimer.singleShot(0, self, self.record_author)

    # -- presence ----------------------------------------------------------------
    #: Longest time (ms) a moved cursor waits before collaborators are told.
    CURSOR_PUBLISH_MS = 40

    def set_local_cursor(self, anchor: int, head: int) -> None:
        """Publish this peer's selection (code points) as stable positions.

        The cursor moves with every keystroke; collaborators hear of it at most
        every ``CURSOR_PUBLISH_MS``, so typing sends one presence message per
        burst rather than one per key, and the edits themselves go out first.
        """
        self._local_cursor = (anchor, head)
        if not self._cursor_pending:
            self._cursor_pending = True
            QTimer.singleShot(self.CURSOR_PUBLISH_MS, self, self._publish_cursor)

    def _publish_cursor(self) -> None:
        self._cursor_pending = False
        self._publish_presence()

    def _publish_presence(self) -> None:
        if self.client is None:
            return
        state: dict[str, Any] = {"name": self.name, "colour": self.colour}
        if self._local_cursor is not None:
            size = len(self.text)
            anchor, head = (max(0, min(i, size)) for i in self._local_cursor)
            state["cursor"] = {
                "anchor": self.text.sticky_index(anchor, 0).to_json(),
                "head": self.text.sticky_index(head, 0).to_json(),
            }
        try:
            self.client.awareness.set_local_state(state)
        except (TypeError, ValueError) as error:
            self._log("error", f"presence not sent: {error}")

    def peers(self) -> list[PeerInfo]:
        """Who is online (this peer first), from the awareness states."""
        result = [PeerInfo(self.peer_id, self.name, self.colour, True)]
        if self.client is None or self.state is not SyncState.CONNECTED:
            return result
        for peer_id, state in self.client.awareness.states.items():
            if peer_id == self.peer_id:
                continue
            result.append(PeerInfo(peer_id, *self._name_and_colour(peer_id, state)))
        return result

    def remote_presences(self) -> list[RemotePresence]:
        """Collaborators' cursors resolved to code-point indexes in the local text."""
        if self.client is None:
            return []
        result: list[RemotePresence] = []
        for peer_id, state in self.client.awareness.states.items():
            if peer_id == self.peer_id:
                continue
            name, colour = self._name_and_colour(peer_id, state)
            cursor = state.get("cursor")
            anchor = head = None
            if isinstance(cursor, Mapping):
                anchor = self._resolve(cursor.get("anchor"))
                head = self._resolve(cursor.get("head"))
            result.append(RemotePresence(peer_id, name, colour, anchor, head))
        return result

    def _resolve(self, value: object) -> int | None:
        # Remote input: anything malformed just means "no cursor shown".
        if not isinstance(value, Mapping):
            return None
        try:
            return self.text.resolve(StickyIndex.from_json(dict(value)))
        except (ValueError, TypeError, KeyError):
            return None

    @staticmethod
    def _name_and_colour(peer_id: str, state: Mapping[str, Any]) -> tuple[str, str]:
        name = state.get("name")
        colour = state.get("colour")
        shown = name if isinstance(name, str) and name else peer_id[:8]
        valid = isinstance(colour, str) and len(colour) in (4, 7) and colour.startswith("#")
        return shown[:40], colour if valid else colour_for(peer_id)  # type: ignore[return-value]
