# mypy: disable-error-code="no-untyped-call"
"""One replica per session (issue 11, item 1): a second window hands off to the first."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from editor_helpers import (
    FAST_RECONNECT,
    close_window,
    run,
    start_server,
    wait_for_state,
    widget_text,
)
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from editor.main_window import MainWindow
from editor.persistence import session_path
from editor.single_instance import SessionInUse, StoreLock
from editor.sync_panel import SyncState
from server.server import WebSocketServer


def window_on(root: Path, data: Path, name: str) -> MainWindow:
    settings = QSettings(str(root / f"{name}.ini"), QSettings.Format.IniFormat)
    window = MainWindow(
        name=name,
        settings=settings,
        reconnect=FAST_RECONNECT,
        data_root=data,
        host_address="127.0.0.1",
    )
    window.show()
    return window


@pytest.fixture
def server(qtbot: QtBot, loop: asyncio.AbstractEventLoop) -> Iterator[WebSocketServer]:
    del loop
    instance = run(qtbot, start_server())
    yield instance
    run(qtbot, instance.stop())


def test_second_window_on_a_session_hands_off_to_the_first_and_nothing_is_lost(
    qtbot: QtBot, tmp_path: Path, server: WebSocketServer
) -> None:
    url = f"ws://127.0.0.1:{server.port}/one-replica"
    data = tmp_path / "data"
    first = window_on(tmp_path, data, "first")
    second = window_on(tmp_path, data, "second")
    try:
        run(qtbot, first.join(url))
        wait_for_state(qtbot, first, SyncState.CONNECTED)
        qtbot.keyClicks(first.text_edit, "typed in the first window")
        qtbot.keyClicks(second.text_edit, "the second window's own draft")
        before = second.session
        with qtbot.waitSignal(first.broughtForward, timeout=5000):
            future = asyncio.ensure_future(second.join(url))
            qtbot.waitUntil(future.done, timeout=10000)
        error = future.exception()
        assert isinstance(error, SessionInUse) and error.brought_forward
        # The second window kept its own document; the first kept the session.
        assert second.session is before
        assert widget_text(second.text_edit) == "the second window's own draft"
        assert first.session is not None and first.session.url == url
        assert first.session.peer_id != second.session.peer_id
        qtbot.keyClicks(first.text_edit, ", still")
        first_session = first.session
        qtbot.waitUntil(lambda: first_session.unacknowledged == 0)
        # Once the first window leaves the session, the second may open it.
        run(qtbot, first._new_document())
        run(qtbot, second.join(url))
        wait_for_state(qtbot, second, SyncState.CONNECTED)
        qtbot.waitUntil(lambda: widget_text(second.text_edit) == "typed in the first window, still")
        assert second.session is not None
        assert second.session.peer_id == first_session.peer_id  # the same replica, reopened
    finally:
        close_window(qtbot, first)
        close_window(qtbot, second)


def test_a_lock_left_by_a_dead_process_is_taken_over(
    qtbot: QtBot, tmp_path: Path, server: WebSocketServer
) -> None:
    url = f"ws://127.0.0.1:{server.port}/stale"
    data = tmp_path / "data"
    store = session_path(url, data)
    lock_path = store.meta_path.with_name(store.meta_path.stem + ".lock")
    lock_path.parent.mkdir(parents=True)
    script = (
        "from PySide6.QtCore import QLockFile; import os, sys\n"
        "lock = QLockFile(sys.argv[1]); assert lock.tryLock(0)\n"
        "os._exit(0)  # dies holding the lock\n"
    )
    subprocess.run([sys.executable, "-c", script, str(lock_path)], check=True, timeout=60)
    assert lock_path.exists()
    window = window_on(tmp_path, data, "again")
    try:
        run(qtbot, window.join(url))
        wait_for_state(qtbot, window, SyncState.CONNECTED)
        assert window.session is not None and window.session.store_lock is not None
        assert window.session.store_lock.held
        assert StoreLock.owner_of(store) == window.handoff.name
    finally:
        close_window(qtbot, window)
    assert StoreLock.owner_of(store) is None


def test_a_copied_store_under_a_live_peer_id_continues_under_a_fresh_id_keeping_its_edits(
    qtbot: QtBot, tmp_path: Path, server: WebSocketServer
) -> None:
    import shutil

    from crdt_sync import CRDTTextHandler
    from editor.persistence import load_document, save_document

    url = f"ws://127.0.0.1:{server.port}/copied"
    first = window_on(tmp_path, tmp_path / "first", "first")
    second = window_on(tmp_path, tmp_path / "second", "second")
    try:
        run(qtbot, first.join(url))
        wait_for_state(qtbot, first, SyncState.CONNECTED)
        qtbot.keyClicks(first.text_edit, "from the first")
        first_session = first.session
        assert first_session is not None
        qtbot.waitUntil(lambda: first_session.unacknowledged == 0)
        first_session.save()
        # The second machine got a copy of the first one's store, then edited offline.
        shutil.copytree(
            tmp_path / "first" / "sessions", tmp_path / "second" / "sessions", dirs_exist_ok=True
        )
        store = session_path(url, tmp_path / "second")
        for lock_file in store.meta_path.parent.glob("*.lock"):
            lock_file.unlink()
        copied = load_document(store)
        assert copied is not None and str(copied.peer_id) == first_session.peer_id
        CRDTTextHandler(copied, "shared_text").insert(0, "offline: ")
        save_document(copied, store)
        # The second app opens the copy: the server refuses its peer id at the
        # handshake (PEER_ID_IN_USE: the first app is connected with it), and
        # the app continues under a fresh one.
        run(qtbot, second.join(url))
        qtbot.waitUntil(
            lambda: (
                second.session is not None
                and second.session.peer_id != first_session.peer_id
                and second.sync_panel.state is SyncState.CONNECTED
            ),
            timeout=15000,
        )
        for window in (first, second):
            qtbot.waitUntil(
                lambda w=window: widget_text(w.text_edit) == "offline: from the first",
                timeout=10000,
            )
        assert any("continuing as" in line for line in second.sync_panel.visible_log_lines())
        # The store now holds the new replica.
        reloaded = load_document(store)
        assert reloaded is not None and second.session is not None
        assert str(reloaded.peer_id) == second.session.peer_id
    finally:
        close_window(qtbot, first)
        close_window(qtbot, second)


HOLDER = """
import sys
from pathlib import Path
from PySide6.QtCore import QCoreApplication
from editor.persistence import session_path
from editor.single_instance import HandoffServer, StoreLock

app = QCoreApplication([])
server = HandoffServer()
lock = StoreLock(session_path(sys.argv[1], Path(sys.argv[2])), server.name)
assert lock.acquire()

def asked(url):
    print("asked", url, flush=True)
    lock.release()
    app.quit()

server.requested.connect(asked)
print("ready", flush=True)
app.exec()
"""


def test_a_session_open_in_another_process_of_the_same_user_is_handed_off(
    qtbot: QtBot, tmp_path: Path, server: WebSocketServer
) -> None:
    import os
    import selectors

    url = f"ws://127.0.0.1:{server.port}/elsewhere"
    data = tmp_path / "data"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(holder.stdout, selectors.EVENT_READ)

    def line() -> str:
        assert selector.select(timeout=30), "the other process did not answer"
        return holder.stdout.readline().strip()  # type: ignore[union-attr]

    window = window_on(tmp_path, data, "here")
    try:
        assert line() == "ready"
        future = asyncio.ensure_future(window.join(url))
        qtbot.waitUntil(future.done, timeout=10000)
        error = future.exception()
        assert isinstance(error, SessionInUse) and error.brought_forward
        assert line() == f"asked {url}"
        assert holder.wait(timeout=30) == 0
        # The other process let go of the session: this window may open it now.
        run(qtbot, window.join(url))
        wait_for_state(qtbot, window, SyncState.CONNECTED)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        selector.close()
        holder.stdout.close()
        close_window(qtbot, window)
