# mypy: disable-error-code="no-untyped-call"
"""View > Show Authors: each character in its author's colour, with a tooltip.

Three real windows through a real server; the colour at each position is the
author's (also read back from the rendered pixels), the tooltip names the
author and the edit's time, and an author who went offline is still named
from the document's shared ``authors`` map.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from editor_helpers import close_window, make_window, place_caret, run, start_server, wait_for_state
from PySide6.QtCore import QPoint
from PySide6.QtGui import QColor, QHelpEvent
from PySide6.QtWidgets import QApplication, QToolTip
from pytestqt.qtbot import QtBot

from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId
from editor.authorship import AuthorRuns, describe_author, wash
from editor.main_window import MainWindow
from editor.sync_panel import SyncState
from server.server import WebSocketServer


def exchange(*docs: CRDTDocument) -> None:
    for target in docs:
        for source in docs:
            if source is not target:
                target.import_changes(source.export_changes(target.version_vector))


def expand(runs: list[tuple[int, int, str, int]]) -> list[tuple[str, int]]:
    return [(peer, counter + i) for _start, length, peer, counter in runs for i in range(length)]


def test_author_runs_follow_every_edit_exactly_like_a_fresh_id_runs() -> None:
    rng = random.Random(11)
    docs = [CRDTDocument(PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")) for n in (1, 2, 3)]
    texts = [CRDTTextHandler(doc, "t") for doc in docs]
    followed = [AuthorRuns(text) for text in texts]
    for runs in followed:
        runs.runs()  # loaded: from now on updated edit by edit
    for step in range(300):
        who = rng.randrange(3)
        text = texts[who]
        if len(text) and rng.random() < 0.35:
            at = rng.randrange(len(text))
            text.delete(at, rng.randint(1, min(6, len(text) - at)))
        else:
            text.insert(
                rng.randint(0, len(text)), "".join(rng.choices("abcé😀\n ", k=rng.randint(1, 8)))
            )
        if step % 7 == 0:
            exchange(docs[0], docs[1])
            exchange(docs[1], docs[2])
        for runs, text in zip(followed, texts, strict=True):
            assert expand(runs.runs()) == expand(text.id_runs())
            assert sum(r[1] for r in runs.runs()) == len(text)
            # As few runs as a fresh read: typing extends its run, no run per keystroke.
            assert runs.runs() == text.id_runs()


@pytest.fixture
def server(qtbot: QtBot, loop: asyncio.AbstractEventLoop) -> Iterator[WebSocketServer]:
    del loop
    instance = run(qtbot, start_server())
    yield instance
    run(qtbot, instance.stop())


def painted_background(window: MainWindow, position: int) -> QColor:
    """The most common colour along the bottom row of the character cell at ``position``."""
    editor = window.text_edit
    cursor = editor.textCursor()
    cursor.setPosition(position)
    left = editor.cursorRect(cursor)
    cursor.setPosition(position + 1)
    right = editor.cursorRect(cursor)
    image = editor.viewport().grab().toImage()
    y = left.bottom() - 1
    counts = collections.Counter(
        image.pixelColor(x, y).name() for x in range(left.left() + 1, right.left())
    )
    return QColor(counts.most_common(1)[0][0])


def test_three_authors_colours_tooltips_and_an_offline_author(
    qtbot: QtBot, tmp_path: Path, server: WebSocketServer
) -> None:
    url = f"ws://127.0.0.1:{server.port}/authors"
    windows = [make_window(tmp_path, name) for name in ("Ada", "Bo", "Cy")]
    try:
        for window in windows:
            run(qtbot, window.join(url))
        for window in windows:
            wait_for_state(qtbot, window, SyncState.CONNECTED)
        words = ["alpha ", "bravo ", "charlie"]
        expected = ""
        # Edit times are kept to the millisecond: compare at that resolution.
        typing_began = dt.datetime.now().replace(microsecond=0)
        for window, word in zip(windows, words, strict=True):
            qtbot.waitUntil(lambda w=window, e=expected: w.text_binding.text == e)
            place_caret(window.text_edit, len(expected))
            window.text_edit.insertPlainText(word)
            expected += word
        for window in windows:
            qtbot.waitUntil(lambda w=window: w.text_binding.text == expected)
        ada = windows[0]
        # Every author is recorded in the document itself.
        assert ada.session is not None
        qtbot.waitUntil(lambda: len(ada.session.authors) == 3)
        typing_ended = dt.datetime.now()
        ada.show_authors_action.setChecked(True)
        assert ada.authorship.enabled
        start = 0
        for window, word in zip(windows, words, strict=True):
            session = window.session
            assert session is not None
            for position in (start, start + len(word) // 2):
                found = ada.authorship.author_at(position)
                assert found is not None
                author, stamp = found
                assert (author.peer_id, author.name, author.colour) == (
                    session.peer_id,
                    session.name,
                    session.colour,
                )
                assert ada.authorship.colour_at(position) == wash(session.colour)
                tip = ada.authorship.tooltip_at(position)
                assert tip == describe_author(author, stamp)
                assert tip is not None and tip.startswith(session.name + "\n")
                assert stamp is not None
                when = dt.datetime.fromtimestamp((stamp >> 16) / 1000)
                assert typing_began <= when <= typing_ended  # the time of this edit
                assert when.strftime("%Y-%m-%d %H:%M:%S") in tip
            qtbot.waitUntil(
                lambda s=start, c=session.colour: painted_background(ada, s + 1) == wash(c)
            )
            start += len(word)
        # The tooltip appears over a character of Bo's.
        editor = ada.text_edit
        cursor = editor.textCursor()
        cursor.setPosition(len(words[0]) + 2)
        rect = editor.cursorRect(cursor)
        point = QPoint(rect.left() + 2, rect.center().y())
        help_event = QHelpEvent(
            QHelpEvent.Type.ToolTip, point, editor.viewport().mapToGlobal(point)
        )
        QApplication.sendEvent(editor.viewport(), help_event)
        qtbot.waitUntil(lambda: QToolTip.text().startswith("Bo\n"))
        # Cy leaves; Ada still names and colours Cy's text from the document.
        cy_session = windows[2].session
        assert cy_session is not None
        close_window(qtbot, windows.pop())
        qtbot.waitUntil(lambda: [p.name for p in ada.sync_panel._peers] == ["Ada", "Bo"])
        found = ada.authorship.author_at(len(expected) - 1)
        assert found is not None and found[0].name == "Cy"
        assert found[0].colour == cy_session.colour
        # Typing with authorship on keeps the colours in step (incremental runs).
        place_caret(ada.text_edit, 0)
        qtbot.keyClicks(ada.text_edit, "zz")
        assert ada.authorship.author_at(0) is not None
        assert ada.authorship.author_at(0)[0].name == "Ada"  # type: ignore[index]
        assert ada.authorship.author_at(2)[0].name == "Ada"  # type: ignore[index]
        assert ada.author_runs is not None and ada.session is not None
        assert expand(ada.author_runs.runs()) == expand(ada.session.text.id_runs())
    finally:
        for window in windows:
            close_window(qtbot, window)


def test_overlays_stay_over_the_viewport_when_the_text_scrolls(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    window = make_window(tmp_path, "Ada")
    try:
        window.text_edit.insertPlainText("a line of text\n" * 400)
        window.show_authors_action.setChecked(True)
        bar = window.text_edit.verticalScrollBar()
        bar.setValue(bar.maximum() // 2)
        qtbot.waitUntil(lambda: window.text_edit.firstVisibleBlock().blockNumber() > 50)
        for overlay in (window.authorship, window.cursor_overlay):
            assert overlay.pos() == QPoint(0, 0)
            assert overlay.size() == window.text_edit.viewport().size()
        position = window.text_edit.firstVisibleBlock().position() + 3
        expected = wash(window.session.colour)  # type: ignore[union-attr]
        qtbot.waitUntil(lambda: painted_background(window, position) == expected)
    finally:
        close_window(qtbot, window)
