"""One replica per session: a lock on each open session store, and a handoff.

Two windows (or two processes) on one session store would share one peer id
and one store file: their edits would collide and be lost. So a window holds
a :class:`StoreLock` on the store of the session it shows (``QLockFile``:
released when the window closes the session, and found stale when the process
that held it is gone). Beside the lock, an *owner file* names the holder's
:class:`HandoffServer`, a ``QLocalServer`` only this user may connect to.

A window asked to open a session whose store is locked does not open it: it
asks the holder, by :func:`request_handoff`, to bring its window forward, and
tells its user so. The request is one line, ``open <store url>\\n``, answered
by ``ok\\n``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import uuid
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from editor.persistence import StoredSession, write_atomically

__all__ = ["HandoffServer", "SessionInUse", "StoreLock", "request_handoff"]

#: Longest wait (s) for the holder of a session to answer a handoff request.
HANDOFF_TIMEOUT_S = 3.0


class SessionInUse(RuntimeError):
    """The session is open in another window (brought forward if it answered)."""

    def __init__(self, url: str, brought_forward: bool) -> None:
        self.url = url
        self.brought_forward = brought_forward
        where = "the other window was brought forward" if brought_forward else "in another app"
        super().__init__(
            f"This session is already open in another window ({where}). "
            "Each session is open in one window at a time, so no edits are lost."
        )


def _owner_path(stored: StoredSession) -> Path:
    return stored.meta_path.with_name(stored.meta_path.stem + ".owner")


class StoreLock:
    """An exclusive lock on one session store, naming its holder's handoff server."""

    def __init__(self, stored: StoredSession, owner_name: str) -> None:
        self.stored = stored
        self.owner_name = owner_name
        lock_path = stored.meta_path.with_name(stored.meta_path.stem + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = QLockFile(str(lock_path))
        self._lock.setStaleLockTime(0)  # stale only when its process is gone
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._held

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (a dead holder's lock is taken over)."""
        if self._held:
            return True
        if not self._lock.tryLock(0):
            return False
        self._held = True
        write_atomically(_owner_path(self.stored), self.owner_name.encode("utf-8"))
        return True

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._held:
            with contextlib.suppress(OSError):
                os.unlink(_owner_path(self.stored))
            self._lock.unlock()
            self._held = False

    @staticmethod
    def owner_of(stored: StoredSession) -> str | None:
        """The handoff server named by the holder of ``stored``'s lock, if any."""
        try:
            with open(_owner_path(stored), encoding="utf-8") as stream:
                name = stream.read().strip()
        except OSError:
            return None
        return name or None


def server_name() -> str:
    """A fresh handoff server name for this user and process."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "user"
    tag = hashlib.sha256(user.encode("utf-8")).hexdigest()[:8]
    return f"crdt-editor-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class HandoffServer(QObject):
    """Answers "bring the window with this session forward" requests.

    ``requested(url)`` is emitted for each request; the window connected to it
    raises itself.
    """

    requested = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = server_name()
        self._server = QLocalServer(self)
        self._server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        QLocalServer.removeServer(self.name)
        self.listening = self._server.listen(self.name)
        self._server.newConnection.connect(self.on_server_newConnection)

    def close(self) -> None:
        """Stop listening."""
        self._server.close()

    def on_server_newConnection(self) -> None:
        """Read one request line per connection, answer it, and emit ``requested``."""
        while self._server.hasPendingConnections():
            socket = self._server.nextPendingConnection()
            if socket is None:
                return
            socket.readyRead.connect(lambda s=socket: self._on_ready_read(s))
            socket.disconnected.connect(socket.deleteLater)

    def _on_ready_read(self, socket: QLocalSocket) -> None:
        if not socket.canReadLine():
            if socket.bytesAvailable() > 4096:
                socket.abort()
            return
        line = bytes(socket.readLine(4096).data()).decode("utf-8", "replace").strip()
        command, _, url = line.partition(" ")
        if command != "open" or not url:
            socket.abort()
            return
        socket.write(b"ok\n")
        socket.flush()
        socket.disconnectFromServer()
        self.requested.emit(url)


async def request_handoff(owner_name: str, url: str, timeout: float = HANDOFF_TIMEOUT_S) -> bool:
    """Ask the window holding ``url``'s store (via ``owner_name``) to come forward.

    Returns whether it answered.
    """
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bool] = loop.create_future()
    socket = QLocalSocket()

    def finish(value: bool) -> None:
        if not answered.done():
            answered.set_result(value)

    def on_connected() -> None:
        socket.write(f"open {url}\n".encode())
        socket.flush()

    def on_ready_read() -> None:
        if socket.canReadLine():
            finish(bytes(socket.readLine(64).data()).strip() == b"ok")

    socket.connected.connect(on_connected)
    socket.readyRead.connect(on_ready_read)
    socket.errorOccurred.connect(lambda _error: finish(False))

    def on_disconnected() -> None:
        on_ready_read()  # an answer may arrive together with the close
        finish(False)

    socket.disconnected.connect(on_disconnected)
    socket.connectToServer(owner_name)
    try:
        return await asyncio.wait_for(answered, timeout)
    except TimeoutError:
        return False
    finally:
        socket.abort()
        socket.deleteLater()
