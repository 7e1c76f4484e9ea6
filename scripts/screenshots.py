"""Make the user guide's screenshots of the real app: docs/screenshots/*.png.

    python scripts/screenshots.py                  # offscreen (QWidget.grab)
    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/screenshots.py

It hosts a session (the bundled server as a child process, in a temporary
data directory), joins it from a second window, types into both, and grabs:
``hosting.png`` (the host with its invite link), ``collaborators.png`` (both
windows side by side, each showing the other's cursor) and
``authorship.png`` (the host with View > Show Authors), ``history.png`` (the
History window at the guest's edit) and ``reconnecting.png`` (the guest after
the host stopped hosting).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtGui import QPainter, QPixmap, QTextCursor  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from crdt_sync.sync.client import ReconnectPolicy  # noqa: E402
from editor.main_window import MainWindow  # noqa: E402
from editor.resources import icon, style_sheet  # noqa: E402
from editor.sync_panel import SyncState  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
SIZE = (1180, 640)

TEXT = (
    "Meeting notes, 26 November\n\n"
    "Agenda: ship the desktop editor, review the sync protocol, plan the demo.\n"
    "Decisions: hosting uses the bundled server; invite links are wss:// with a token.\n"
)


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not reach the expected state")
        await asyncio.sleep(0.02)


def make_window(root: Path, name: str) -> MainWindow:
    settings = QSettings(str(root / f"{name}.ini"), QSettings.Format.IniFormat)
    window = MainWindow(
        name=name,
        settings=settings,
        reconnect=ReconnectPolicy(initial_delay_s=2.0, max_delay_s=10.0),
        data_root=root / name,
        host_address="127.0.0.1",
    )
    window.resize(*SIZE)
    window.show()
    return window


def select(window: MainWindow, anchor: int, position: int) -> None:
    cursor = window.text_edit.textCursor()
    cursor.setPosition(anchor)
    cursor.setPosition(position, QTextCursor.MoveMode.KeepAnchor)
    window.text_edit.setTextCursor(cursor)


async def settle() -> None:
    # Let layouts and paints run; never processEvents() inside a coroutine on qasync.
    await asyncio.sleep(0.3)


def save(pixmap: QPixmap, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    pixmap.save(str(path))
    print(f"wrote {path.relative_to(ROOT)}")


def side_by_side(left: QPixmap, right: QPixmap) -> QPixmap:
    gap = 12
    combined = QPixmap(left.width() + gap + right.width(), max(left.height(), right.height()))
    combined.fill()
    painter = QPainter(combined)
    painter.drawPixmap(0, 0, left)
    painter.drawPixmap(left.width() + gap, 0, right)
    painter.end()
    return combined


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ada = make_window(root, "Ada")
        bo = make_window(root, "Bo")
        try:
            await ada.host(0)
            await until(lambda: ada.sync_panel.state is SyncState.CONNECTED)
            ada.text_edit.insertPlainText(TEXT)
            assert ada.list_model is not None
            for item in ("Draft the user guide", "Record the demo", "Tag release 0.1"):
                ada.list_model.add_item(item)
            await settle()
            save(ada.grab(), "hosting.png")

            assert ada.session is not None and ada.hosted is not None
            assert ada.invite_url is not None  # the Can edit link (wss://, token, pin)
            await bo.join(ada.invite_url)
            await until(lambda: bo.sync_panel.state is SyncState.CONNECTED)
            await until(lambda: bo.text_binding is not None and bo.text_binding.text == TEXT)
            select(ada, 28, 34)  # Ada selects "Agenda"
            cursor = bo.text_edit.textCursor()
            cursor.setPosition(len(TEXT))
            bo.text_edit.setTextCursor(cursor)
            bo.text_edit.insertPlainText("Bo: I will prepare the slides ✓")
            await until(lambda: len(bo.cursor_overlay.cursors) == 1)
            await until(lambda: len(ada.cursor_overlay.cursors) == 1)
            await settle()
            save(side_by_side(ada.grab(), bo.grab()), "collaborators.png")

            ada.show_authors_action.setChecked(True)
            await settle()
            save(ada.grab(), "authorship.png")
            ada.show_authors_action.setChecked(False)

            dialog = ada.open_history()
            await until(
                lambda: dialog.replay is not None and dialog.replay.done == len(dialog.sessions)
            )
            assert bo.session is not None
            bo_peer = bo.session.peer_id
            mine = [i for i, s in enumerate(dialog.sessions) if s.authors == (bo_peer,)]
            dialog.slider.setValue(mine[-1] if mine else 0)
            await settle()
            save(dialog.grab(), "history.png")
            dialog.close()

            await ada.stop_hosting()
            await until(lambda: "next try at" in bo.sync_panel.status_text())
            bo.text_edit.insertPlainText("\nWritten while the host is away.")
            await settle()
            save(bo.grab(), "reconnecting.png")
        finally:
            await bo.shutdown()
            await ada.shutdown()
            bo.close()
            ada.close()


if __name__ == "__main__":
    app = QApplication(sys.argv[:1])
    app.setApplicationDisplayName("CRDT Editor")
    app.setWindowIcon(icon("app"))
    app.setStyleSheet(style_sheet())
    app.setQuitOnLastWindowClosed(False)
    import qasync

    qasync.run(main())
