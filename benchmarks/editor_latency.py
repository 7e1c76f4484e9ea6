"""Desktop editor latency: prints figures, asserts nothing.

    QT_QPA_PLATFORM=offscreen python benchmarks/editor_latency.py [--keystrokes N]

1. Keystroke to remote widget: two editor windows (offscreen) joined through a
   real server (the bundled server as a child process, as when hosting); a key
   pressed in one window, timed until the text has changed in the other
   window's widget (p50 / p99 / max). Run twice: with the SQLite store the
   hosted server uses (it relays a change after storing it durably) and with
   ``--memory``.
2. Opening the final ``automerge-paper`` document: the trace is replayed into a
   CRDT document (one transaction per trace transaction, not timed), then the
   time to bind it to an editor window (widget filled, list model, session) is
   measured.
3. Per-keystroke handling in that document: a key press in the middle of the
   104,852-character text, from the key event to the CRDT transaction done
   and the widget updated (p50 / p99 / max).
4. View > Show Authors on that document: from the toggle to the overlay
   painted (the author runs loaded from the CRDT and the visible lines
   washed), p50 / p99 over repeated off/on toggles; and keystroke handling
   with authorship shown (item 3 again). Item 1 is also run with authorship
   shown in both windows.
5. View > History on that document (its full history, replayed as one
   transaction per trace transaction): time to the first view (the dialog
   shown with the newest version); then the timeline read and grouped into
   edit sessions in slices on the event loop while a key is typed in the
   window each turn: time until the timeline is ready, the longest turn, and
   the typing latency meanwhile (p50 / p99); the background replay of the
   whole history, typing meanwhile too (its time and that latency); then the
   slider dragged across 100 positions spread over the timeline, p50 / p99
   per step (the version shown with its insertions highlighted).

The trace is ``shared/traces/sequential/automerge-paper.json.gz`` beside the
repository, or under ``$CRDT_TRACES_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PySide6.QtCore import QCoreApplication, QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from crdt_sync import CRDTDocument, CRDTTextHandler, Snapshot
from crdt_sync.sync.client import ReconnectPolicy
from editor.hosting import HostedServer
from editor.main_window import MainWindow
from editor.session import TEXT_NAME, Session
from editor.sync_panel import SyncState


def _trace_path() -> Path:
    name = Path("sequential") / "automerge-paper.json.gz"
    candidates = [Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / name]
    if os.environ.get("CRDT_TRACES_DIR"):
        candidates.insert(0, Path(os.environ["CRDT_TRACES_DIR"]) / name)
    candidates.append(Path("/work/shared/traces") / name)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


TRACE = _trace_path()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def report(label: str, samples_ms: list[float]) -> None:
    print(
        f"{label}: n={len(samples_ms)} p50={statistics.median(samples_ms):.2f} ms "
        f"p99={percentile(samples_ms, 0.99):.2f} ms max={max(samples_ms):.2f} ms"
    )


def make_window(root: Path, name: str) -> MainWindow:
    settings = QSettings(str(root / f"{name}.ini"), QSettings.Format.IniFormat)
    window = MainWindow(
        name=name,
        settings=settings,
        reconnect=ReconnectPolicy(initial_delay_s=0.05, max_delay_s=0.5),
        data_root=root / name,
        host_address="127.0.0.1",
    )
    window.show()
    return window


async def wait_until(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.001)


async def keystroke_to_remote(
    root: Path, keystrokes: int, memory: bool, authors: bool = False
) -> None:
    # Plain ws:// without tokens, as before hosting became secure (editor/hosting.py).
    server = HostedServer(
        root / "bench-host.db", memory=memory, bind_address="127.0.0.1", secure=False
    )
    port = await server.start()
    a = make_window(root, "A")
    b = make_window(root, "B")
    try:
        url = f"ws://127.0.0.1:{port}/latency"
        await a.join(url)
        await b.join(url)
        await wait_until(lambda: a.sync_panel.state is SyncState.CONNECTED)
        await wait_until(lambda: b.sync_panel.state is SyncState.CONNECTED)
        assert b.text_binding is not None
        for window in (a, b):
            window.show_authors_action.setChecked(authors)
        loop = asyncio.get_running_loop()
        samples: list[float] = []
        for i in range(keystrokes + 20):
            arrived: asyncio.Future[float] = loop.create_future()

            def on_remote(future: asyncio.Future[float] = arrived) -> None:
                if not future.done():
                    future.set_result(time.perf_counter())

            b.text_binding.remoteEditApplied.connect(on_remote)
            started = time.perf_counter()
            QTest.keyClick(a.text_edit, Qt.Key(Qt.Key.Key_A.value + i % 10))
            finished = await asyncio.wait_for(arrived, 10)
            b.text_binding.remoteEditApplied.disconnect(on_remote)
            if i >= 20:  # warm-up excluded
                samples.append((finished - started) * 1000)
        assert a.session is not None and b.session is not None
        assert a.session.text.value == b.session.text.value
        store = (
            "in-memory store"
            if memory
            else "SQLite store: relayed at once, acknowledged once durable"
        )
        shown = ", authorship shown" if authors else ""
        report(f"keystroke -> other window's widget (child server, {store}{shown})", samples)
    finally:
        await a.shutdown()
        await b.shutdown()
        a.close()
        b.close()
        await server.stop()


def replay_trace() -> CRDTDocument:
    with gzip.open(TRACE, "rt", encoding="utf-8") as stream:
        trace = json.load(stream)
    document = CRDTDocument(document_id="automerge-paper")
    text = CRDTTextHandler(document, TEXT_NAME)
    for txn in trace["txns"]:
        with document.transaction():
            for position, removed, inserted in txn["patches"]:
                if removed:
                    text.delete(position, removed)
                if inserted:
                    text.insert(position, inserted)
    if text.value != trace["endContent"]:
        raise SystemExit("trace replay does not match endContent")
    return document


async def open_and_type(root: Path, keystrokes: int) -> None:
    started = time.perf_counter()
    source = replay_trace()
    print(f"(replayed automerge-paper in {time.perf_counter() - started:.2f} s, not counted)")
    snapshot = source.take_snapshot().to_bytes()
    window = make_window(root, "Paper")
    try:
        app = QApplication.instance()
        assert app is not None
        opened: list[float] = []
        for _ in range(5):
            t0 = time.perf_counter()
            document = CRDTDocument.from_snapshot(Snapshot.from_bytes(snapshot))
            session = Session(document, "Paper", parent=window)
            window.set_session(session)
            app.processEvents()  # layout and first paint of the new text
            opened.append((time.perf_counter() - t0) * 1000)
        length = len(window.text_edit.toPlainText())
        print(
            f"open automerge-paper ({length:,} chars) into the window "
            f"(snapshot decode + bind + first paint): best={min(opened):.1f} ms "
            f"median={statistics.median(opened):.1f} ms"
        )
        cursor = window.text_edit.textCursor()
        cursor.setPosition(length // 2)
        window.text_edit.setTextCursor(cursor)
        samples: list[float] = []
        painted: list[float] = []
        for i in range(keystrokes + 20):
            key = Qt.Key.Key_Backspace if i % 5 == 4 else Qt.Key.Key_X
            t0 = time.perf_counter()
            QTest.keyClick(window.text_edit, key)
            t1 = time.perf_counter()
            app.processEvents()  # the repaint the key caused
            if i >= 20:
                samples.append((t1 - t0) * 1000)
                painted.append((time.perf_counter() - t0) * 1000)
        assert window.session is not None
        assert window.session.text.value == window.text_binding.text  # type: ignore[union-attr]
        report("keystroke handling in automerge-paper (key event -> CRDT + widget)", samples)
        report("  the same, until repainted (authorship off)", painted)
        toggle_authors(window, app, keystrokes)
        history_steps(window, app, source)
    finally:
        await window.shutdown()
        window.close()


def toggle_authors(window: MainWindow, app: QCoreApplication, keystrokes: int) -> None:
    """View > Show Authors on the open document: toggle time, then typing with it on."""
    overlay = window.authorship
    toggles: list[float] = []
    for _ in range(12):
        window.show_authors_action.setChecked(False)
        app.processEvents()
        t0 = time.perf_counter()
        window.show_authors_action.setChecked(True)
        overlay.repaint()  # runs loaded + visible lines painted, synchronously
        toggles.append((time.perf_counter() - t0) * 1000)
    assert window.author_runs is not None
    runs = len(window.author_runs.starts)
    report(f"Show Authors toggle on automerge-paper ({runs:,} author runs)", toggles[2:])
    samples: list[float] = []
    for i in range(keystrokes + 20):
        key = Qt.Key.Key_Backspace if i % 5 == 4 else Qt.Key.Key_Y
        t0 = time.perf_counter()
        QTest.keyClick(window.text_edit, key)
        app.processEvents()  # the repaint the key caused, author colours included
        if i >= 20:
            samples.append((time.perf_counter() - t0) * 1000)
    report("  the same, until repainted (authorship shown)", samples)
    window.show_authors_action.setChecked(False)


def history_steps(window: MainWindow, app: QCoreApplication, source: CRDTDocument) -> None:
    """View > History on the paper with its whole history: first view, replay, 100 steps."""
    frozen = gc.get_freeze_count()
    session = Session(source, "Paper", parent=window)
    window.set_session(session)
    # History is opened on a document that has been open a while: after the
    # one full collection the window runs once a document has settled
    # (SETTLE_MS in editor/window_session.py), not in the middle of it.
    settled = time.monotonic() + 10
    while gc.get_freeze_count() == frozen and time.monotonic() < settled:
        QTest.qWait(20)
    t0 = time.perf_counter()
    dialog = window.open_history()
    dialog.repaint()  # the newest version on screen
    first_view = (time.perf_counter() - t0) * 1000
    # The timeline is read and grouped in slices on the event loop: type in the
    # window meanwhile, a key per event-loop turn, each timed until repainted
    # with the slice that turn ran.
    t0 = time.perf_counter()
    typing: list[float] = []
    while not dialog.timeline_ready:
        t1 = time.perf_counter()
        QTest.keyClick(window.text_edit, Qt.Key.Key_Q)
        app.processEvents()  # the key's repaint and the reader's next slice
        typing.append((time.perf_counter() - t1) * 1000)
    timeline = (time.perf_counter() - t0) * 1000
    print(
        f"History of automerge-paper ({dialog.change_count:,} changes, "
        f"{len(dialog.sessions)} edit sessions): first view {first_view:.0f} ms, "
        f"then the timeline read and grouped in slices: ready after {timeline:.0f} ms "
        f"({len(typing)} event-loop turns, the longest {max(typing):.1f} ms)"
    )
    report("  typing in the window meanwhile (key + one turn of the event loop)", typing)
    # The versions are replayed in the background, in slices: type meanwhile too.
    replay = dialog.replay
    assert replay is not None
    t0 = time.perf_counter()
    typing = []
    while replay.done < len(dialog.sessions):
        t1 = time.perf_counter()
        QTest.keyClick(window.text_edit, Qt.Key.Key_R)
        app.processEvents()  # the key's repaint and the replay's next slice
        typing.append((time.perf_counter() - t1) * 1000)
    print(f"  whole history replayed (background, in slices): {time.perf_counter() - t0:.2f} s")
    report("  typing in the window meanwhile (key + one turn of the event loop)", typing)
    last = len(dialog.sessions) - 1
    positions = [round(i * last / 99) for i in range(100)]
    steps: list[float] = []
    for position in positions:
        t0 = time.perf_counter()
        dialog.slider.setValue(position)
        app.processEvents()
        steps.append((time.perf_counter() - t0) * 1000)
    report("  History slider, one step across 100 positions", steps)
    dialog.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        await keystroke_to_remote(root, args.keystrokes, memory=False)
        await keystroke_to_remote(root, args.keystrokes, memory=True)
        await keystroke_to_remote(root, args.keystrokes, memory=True, authors=True)
        await open_and_type(root, args.keystrokes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keystrokes", type=int, default=300)
    arguments = parser.parse_args()
    application = QApplication(sys.argv[:1])
    application.setQuitOnLastWindowClosed(False)
    import qasync

    qasync.run(main(arguments))
