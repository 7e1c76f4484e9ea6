"""The main window's session wiring: which document is open, its store lock,
joining, hosting, going offline, a fresh peer id, and the session's signals
shown in the widgets.

:class:`WindowSession` adds the session to :class:`editor.window_widgets.WindowWidgets`.
Long-running steps (join, host, stop hosting) are coroutines; user commands
start them with :meth:`WindowSession.run_task`, which reports a failure in a
message box. The window's settings (last session, recent URLs) live here too:
they are what the next start reopens.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, QTimer, Signal
from PySide6.QtGui import (
    QGuiApplication,
)

from crdt_sync import CRDTDocument, CRDTError, CRDTListHandler, CRDTTextHandler, Snapshot
from crdt_sync.sync import Role
from crdt_sync.sync.client import ReconnectPolicy
from crdt_sync.sync.identity import fork_with_new_peer
from editor.authorship import AuthorRuns
from editor.history import HistoryDialog
from editor.hosting import HostedServer, HostingError
from editor.list_model import ListModel
from editor.messages import port_in_use_message
from editor.persistence import StoredSession, data_dir, load_document, session_path
from editor.remote_cursors import RemoteCursor
from editor.session import LIST_NAME, TEXT_NAME, Session
from editor.single_instance import HandoffServer, SessionInUse, StoreLock, request_handoff
from editor.text_binding import TextBinding
from editor.urls import InvalidSessionUrl, parse_session_url
from editor.window_widgets import WindowWidgets

__all__ = ["WindowSession"]

MAX_RECENT = 8

#: Plain-text files File > Open accepts (as a new document with that text).
TEXT_SUFFIXES = (".txt", ".md")

#: How long after opening a document its objects are set aside from collection.
SETTLE_MS = 1000


def _freeze_long_lived_objects() -> None:
    """Move what exists now (the document, the widgets) out of the collector's way.

    A full garbage collection walks every tracked object: with a large document
    and the Qt wrappers that is tens of milliseconds, paid in the middle of
    someone's typing. Objects alive once a document has settled stay alive for
    the session, so they are frozen (``gc.freeze``); they are still freed by
    reference counting, and later garbage is collected as usual.
    """
    gc.collect()
    gc.freeze()


class WindowSession(WindowWidgets):
    """A window showing one session (a document, maybe synced) in its widgets."""

    sessionChanged = Signal()
    #: Another window asked for this window's session: it was brought forward.
    broughtForward = Signal()

    def __init__(
        self,
        name: str | None = None,
        settings: QSettings | None = None,
        reconnect: ReconnectPolicy | None = None,
        data_root: Path | None = None,
        host_address: str = "0.0.0.0",
    ) -> None:
        super().__init__()
        # The address a hosted server listens on: every interface, for the LAN.
        self.host_address = host_address
        self.settings = settings if settings is not None else QSettings()
        self.data_root = data_root or data_dir()
        self.reconnect = reconnect
        self.user_name = name or str(self.settings.value("lastName", "")) or _default_name()
        self.hosted: HostedServer | None = None
        self.invite_url: str | None = None
        #: The hosted session's read-only invite link (Can view).
        self.view_invite_url: str | None = None
        # One replica per session: the open session's store is locked, and a
        # window asked for it by another one comes forward (editor.single_instance).
        self.handoff = HandoffServer(self)
        self.handoff.requested.connect(self.on_handoff_requested)
        self._store_lock: StoreLock | None = None
        #: Set by the app for its start-up command: a handoff then closes this window.
        self.exit_on_handoff = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._shutdown_done = False
        self._shutting_down = False
        self.session: Session | None = None
        self.text_binding: TextBinding | None = None
        self.list_model: ListModel | None = None
        self.author_runs: AuthorRuns | None = None
        self.history_dialog: HistoryDialog | None = None
        self.copy_invite_button.clicked.connect(self.copy_invite_link)
        self.copy_view_invite_button.clicked.connect(self.copy_view_invite_link)

    # -- what the layers above provide -----------------------------------------
    def show_error(self, text: str, details: str = "") -> None:
        """Tell the user about a failure (:class:`editor.window_dialogs.WindowDialogs`)."""

    def _refresh_actions(self) -> None:
        """Enable the commands that apply now (:class:`editor.window_commands.WindowCommands`)."""

    def _refresh_recent_menu(self) -> None:
        """List :meth:`recent_urls` in File > Recent Sessions (``editor.window_commands``)."""

    # -- sessions ------------------------------------------------------------
    def _new_local_session(self) -> Session:
        document = CRDTDocument(document_id=uuid.uuid4().hex[:12])
        store = session_path(f"local:{document.document_id}", self.data_root)
        session = Session(document, self.user_name, store=store, parent=self)
        session.store_lock = self._try_lock(store)  # a fresh id: nobody else has it
        return session

    def _try_lock(self, store: StoredSession) -> StoreLock | None:
        lock = StoreLock(store, self.handoff.name)
        return lock if lock.acquire() else None

    async def _lock_or_hand_off(self, store: StoredSession) -> StoreLock:
        """Lock ``store`` for this window, or bring its holder forward and raise.

        Raises :class:`editor.single_instance.SessionInUse` when another window
        or app has the session open.
        """
        if self.session is not None:
            held = self.session.store_lock
            if held is not None and held.stored.meta_path == store.meta_path:
                return held  # this window has it already
        lock = self._try_lock(store)
        if lock is not None:
            return lock
        owner = StoreLock.owner_of(store)
        answered = await request_handoff(owner, store.url) if owner else False
        raise SessionInUse(store.url, answered)

    def set_session(self, session: Session) -> None:
        """Show ``session`` in the window (the previous one must be closed by the caller)."""
        if self.text_binding is not None:
            self.text_binding.unbind()
        if self.list_model is not None:
            self.list_model.unbind()
        if self.author_runs is not None:
            self.author_runs.close()
        if self.history_dialog is not None:
            self.history_dialog.close()  # it shows the previous document
        self.session = session
        self.text_binding = TextBinding(self.text_edit, session.document, session.text, self)
        self.author_runs = AuthorRuns(session.text)
        self.authorship.set_source(
            self.author_runs,
            session.author,
            session.document.timestamp_of,
            self.text_binding.to_qt,
            self.text_binding.from_qt,
        )
        session.authorsChanged.connect(self.authorship.authors_changed)
        session.peerIdInUse.connect(self.on_session_peerIdInUse)
        self.list_model = ListModel(session.document, session.items, self)
        self.list_view.setModel(self.list_model)
        session.statusChanged.connect(self.on_session_statusChanged)
        session.eventLogged.connect(self.sync_panel.log)
        session.presenceChanged.connect(self.on_session_presenceChanged)
        session.unacknowledgedChanged.connect(self.sync_panel.set_unacknowledged)
        # Collaborators' cursors are re-resolved whenever the text changes.
        self.text_binding.remoteEditApplied.connect(self.on_session_presenceChanged)
        self.text_binding.localEditCommitted.connect(self.on_session_presenceChanged)
        self.text_edit.cursorPositionChanged.connect(self.on_text_edit_cursorPositionChanged)
        self.sync_panel.set_session(session.url, session.peer_id, session.name)
        self.on_session_statusChanged()
        self.on_session_presenceChanged()
        self._refresh_actions()
        self._remember_session()
        self.sessionChanged.emit()
        QTimer.singleShot(SETTLE_MS, self, _freeze_long_lived_objects)

    async def _replace_session(self, session: Session) -> None:
        old = self.session
        if old is not None:
            await old.close()
            if old.store_lock is not None and old.store_lock is not session.store_lock:
                old.store_lock.release()
            old.statusChanged.disconnect(self.on_session_statusChanged)
            old.presenceChanged.disconnect(self.on_session_presenceChanged)
            old.peerIdInUse.disconnect(self.on_session_peerIdInUse)
        self.set_session(session)

    async def _session_for_url(self, url: str, document_id: str) -> Session:
        store = session_path(url, self.data_root)
        lock = await self._lock_or_hand_off(store)
        if self.session is not None and self.session.store_lock is lock:
            await self.session.close()  # reopened below from what it saved
            self.session.store_lock = None
        document = load_document(store)
        if document is None or document.document_id != document_id:
            document = CRDTDocument(document_id=document_id)
        session = Session(document, self.user_name, url=url, store=store, parent=self)
        session.store_lock = lock
        return session

    async def join(self, url: str) -> None:
        """Open ``url``'s document (the locally stored copy if any) and connect to it.

        Raises :class:`editor.urls.InvalidSessionUrl` for a malformed URL.
        """
        checked = parse_session_url(url)
        if self.hosted is not None:
            await self.stop_hosting()
        session = await self._session_for_url(checked.url, checked.document_id)
        await self._replace_session(session)
        self._connect(session, checked.url)

    def _connect(self, session: Session, url: str) -> None:
        store = session_path(url, self.data_root)
        if session.store_lock is None or session.store_lock.stored.meta_path != store.meta_path:
            lock = self._try_lock(store)
            if lock is None:
                raise SessionInUse(url, False)
            if session.store_lock is not None:
                session.store_lock.release()
            session.store_lock = lock
        session.store = store
        session.start_sync(url, self.reconnect)
        self.sync_panel.set_session(url.partition("#")[0], session.peer_id, session.name)
        self._remember_url(url)
        self._remember_session()
        self._refresh_actions()

    def on_session_peerIdInUse(self) -> None:
        """Another replica owns this peer id: continue under a fresh one."""
        self.run_task(self.continue_under_fresh_peer())

    async def continue_under_fresh_peer(self) -> None:
        """Fork the open document under a fresh peer id and reconnect, losing nothing.

        The server refused the peer id (``PEER_ID_IN_USE``): the store was copied
        from another replica, or is an old copy of one. Every edit the server
        did not acknowledge is re-issued under the new peer id
        (:func:`crdt_sync.sync.fork_with_new_peer`); the store then holds the
        new replica (new peer id, new secret).
        """
        session = self.session
        if session is None or session.url is None:
            return
        url, store, lock = session.url, session.store, session.store_lock
        acknowledged = session.acknowledged
        if session.client is not None:
            acknowledged = acknowledged.merge(session.client.acknowledged)
        old_peer = session.peer_id
        await session.stop_sync()
        fork = fork_with_new_peer(session.document, acknowledged)
        session.store_lock = None  # handed on to the new replica below
        replacement = Session(fork, self.user_name, url=url, store=store, parent=self)
        replacement.store_lock = lock
        replacement.acknowledged = acknowledged
        await self._replace_session(replacement)
        replacement.save()
        self.sync_panel.log(
            "session",
            f"another replica uses peer id {old_peer[:8]}; continuing as "
            f"{replacement.peer_id[:8]} with every unsent edit",
        )
        self._connect(replacement, url)

    async def go_offline(self) -> None:
        """Go offline; the document stays open and editable."""
        if self.session is not None:
            await self.session.stop_sync()
        self._refresh_actions()

    async def _new_document(self) -> None:
        if self.hosted is not None:
            await self.stop_hosting()
        await self._replace_session(self._new_local_session())

    async def open_file(self, path: Path) -> None:
        """Open ``path`` as a new offline document.

        A ``.txt`` or ``.md`` file becomes a document with that text (read as
        UTF-8); anything else is read as a ``.crdt`` snapshot. The content is
        copied into a fresh document as new edits: a document rebuilt from a
        snapshot has no history to send, so it could not be shared by hosting
        or joining.
        """
        items: list[Any] = []
        if path.suffix.lower() in TEXT_SUFFIXES:
            try:
                text = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as error:
                raise RuntimeError(f"Cannot open {path.name}: {error}") from error
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        else:
            try:
                source = CRDTDocument.from_snapshot(Snapshot.from_bytes(path.read_bytes()))
            except (OSError, CRDTError) as error:
                raise RuntimeError(f"Cannot open {path.name}: {error}") from error
            text = CRDTTextHandler(source, TEXT_NAME).value
            items = CRDTListHandler(source, LIST_NAME).value
        if self.hosted is not None:
            await self.stop_hosting()
        session = self._new_local_session()
        with session.document.transaction(origin="open"):
            session.text.insert(0, text)
            for item in items:
                session.items.append(item)
        session.undo.clear()
        await self._replace_session(session)

    async def host(self, port: int = 0) -> str:
        """Start the bundled server, connect the open document to it, return the invite link."""
        if self.hosted is not None:
            raise HostingError("already hosting; stop hosting first")
        session = self.session
        assert session is not None  # set in __init__, never cleared
        server = HostedServer(
            self.data_root / "host.db", port, parent=self, bind_address=self.host_address
        )
        self.hosted = server
        self._refresh_actions()
        try:
            bound = await server.start()
        except HostingError as error:
            self.hosted = None
            self._refresh_actions()
            in_use = port_in_use_message(f"{error}\n{server.log_tail()}", port or None)
            if in_use is not None:
                raise HostingError(in_use) from error
            raise
        server.exited.connect(self.on_hosted_exited)
        await session.stop_sync()
        links = server.invite_links(session.document_id)
        self.invite_url, self.view_invite_url = links.edit, links.view
        self._connect(session, server.own_link(session.document_id))
        for edit, link in ((self.invite_edit, links.edit), (self.view_invite_edit, links.view)):
            edit.setText(link)
            edit.setCursorPosition(0)  # show where it leads, not the end of the pin
        self.invite_bar.show()
        shown = self.invite_url.partition("#")[0]  # the tokens stay out of the log
        self.sync_panel.log("host", f"hosting on port {bound}; invite links for {shown}")
        self._refresh_actions()
        return self.invite_url

    async def stop_hosting(self) -> None:
        """Disconnect and stop the child server, waiting until its process is gone."""
        server = self.hosted
        if server is None:
            return
        if self.session is not None:
            await self.session.stop_sync()
        await server.stop()
        self.hosted = None
        self.invite_url = self.view_invite_url = None
        self.invite_bar.hide()
        if not self._shutting_down:
            self._remember_session()
        self.sync_panel.log("host", "stopped hosting")
        self._refresh_actions()

    def copy_view_invite_link(self) -> None:
        """Put the hosted session's read-only (Can view) link on the clipboard."""
        if self.view_invite_url:
            QGuiApplication.clipboard().setText(self.view_invite_url)
            self.statusBar().showMessage("Read-only invite link copied", 3000)

    def copy_invite_link(self) -> None:
        """Put the invite link (or the session URL when joined) on the clipboard."""
        link = self.invite_url or (self.session.url if self.session else None)
        if link:
            QGuiApplication.clipboard().setText(link)
            self.statusBar().showMessage("Invite link copied", 3000)

    # -- tasks ---------------------------------------------------------------
    def run_task(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run a command coroutine on the loop; report its failure in a message box."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        exit_on_handoff, self.exit_on_handoff = self.exit_on_handoff, False
        if isinstance(error, SessionInUse):
            self.sync_panel.log("session", str(error))
            if exit_on_handoff:
                QTimer.singleShot(0, self.close)  # the other window has it: nothing to do here
            elif not self._shutting_down:
                self.show_error(str(error))
        elif error is not None:
            self.sync_panel.log("error", str(error))
            if not self._shutting_down:
                self.show_error(str(error))

    # -- slots ---------------------------------------------------------------
    def on_session_statusChanged(self) -> None:
        """Mirror the session's status in the panel and the actions."""
        if self.session is None:
            return
        self.sync_panel.set_status(self.session.state, self.session.detail, self.session.retry_at)
        self.sync_panel.set_unacknowledged(self.session.unacknowledged)
        self._show_access()
        self.on_session_presenceChanged()
        self._refresh_actions()

    def _show_access(self) -> None:
        """The connection's role and encryption in the panel; read-only widgets for READ."""
        client = self.session.client if self.session is not None else None
        role = client.role if client is not None else None
        encrypted = client is not None and client.encrypted
        fingerprint = client.certificate_fingerprint if client is not None else None
        self.sync_panel.set_access(
            None if role is None else role is Role.WRITE,
            (fingerprint or "(not yet connected)") if encrypted else None,
        )
        read_only = role is Role.READ
        self.text_edit.setReadOnly(read_only)
        for widget in (
            self.list_view,
            self.add_button,
            self.remove_button,
            self.up_button,
            self.down_button,
        ):
            widget.setEnabled(not read_only)

    def on_session_presenceChanged(self) -> None:
        """Refresh who is online and the collaborators' cursors."""
        session, binding = self.session, self.text_binding
        if session is None or binding is None:
            return
        self.sync_panel.set_peers(session.peers())
        cursors: list[RemoteCursor] = []
        for presence in session.remote_presences():
            if presence.head is None:
                continue
            anchor = presence.anchor if presence.anchor is not None else presence.head
            cursors.append(
                RemoteCursor(
                    presence.peer_id,
                    presence.name,
                    presence.colour,
                    binding.to_qt(anchor),
                    binding.to_qt(presence.head),
                )
            )
        self.cursor_overlay.set_cursors(cursors)

    def on_text_edit_cursorPositionChanged(self) -> None:
        """Publish the local caret and selection to collaborators."""
        if self.session is not None and self.text_binding is not None:
            self.session.set_local_cursor(*self.text_binding.local_selection())

    def on_handoff_requested(self, url: str) -> None:
        """Another window wants this window's session: come forward."""
        session = self.session
        if session is None or session.store is None or session.store.url != url:
            return
        if self.isMinimized():
            self.showNormal()
        self.show()
        self.raise_()
        self.activateWindow()
        self.statusBar().showMessage("This session was asked for by another window", 5000)
        self.broughtForward.emit()

    def on_hosted_exited(self, code: int) -> None:
        """The child server ended (also when it ended on its own)."""
        if self.hosted is not None and not self.hosted.running and self.hosted.port is None:
            self.sync_panel.log("host", f"the hosted server exited (code {code})")

    # -- settings ------------------------------------------------------------
    @property
    def reopen_last_session_enabled(self) -> bool:
        """Whether the app reopens the last session at start (on unless turned off)."""
        return str(self.settings.value("reopenLastSession", "true")).lower() != "false"

    def _remember_session(self) -> None:
        """Note the open session so the next start can reopen it."""
        session = self.session
        if session is None or (session.url is None and not session.document.version_vector):
            return  # a new, untouched document is not worth reopening
        key = session.url or f"local:{session.document_id}"
        self.settings.setValue("lastSession", key)
        self.settings.setValue("lastSessionHosted", "true" if self.hosted else "false")

    async def reopen_last_session(self) -> bool:
        """Open the session that was open when the app last closed (see the setting).

        A joined session is joined again; one this app hosted, or a local
        document, opens offline from its local copy (host it again to share
        it). Returns whether something was reopened.
        """
        if not self.reopen_last_session_enabled:
            return False
        key = str(self.settings.value("lastSession", "") or "")
        hosted = str(self.settings.value("lastSessionHosted", "false")).lower() == "true"
        if not key:
            return False
        if key.startswith("local:") or hosted:
            store = session_path(key, self.data_root)
            lock = await self._lock_or_hand_off(store)
            document = load_document(store)
            if document is None:
                lock.release()
                return False
            session = Session(document, self.user_name, store=store, parent=self)
            session.store_lock = lock
            await self._replace_session(session)
            return True
        try:
            await self.join(key)
        except InvalidSessionUrl:
            return False
        return True

    def recent_urls(self) -> list[str]:
        """Recently used session URLs, newest first."""
        value = self.settings.value("recentUrls", [])
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            return []
        return [str(v) for v in value][:MAX_RECENT]

    def _remember_url(self, url: str) -> None:
        urls = [url] + [u for u in self.recent_urls() if u != url]
        self.settings.setValue("recentUrls", urls[:MAX_RECENT])
        self._refresh_recent_menu()


def _default_name() -> str:
    try:
        return getpass.getuser().capitalize()
    except (OSError, KeyError):
        return "Me"
