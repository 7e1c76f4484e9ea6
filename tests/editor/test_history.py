# mypy: disable-error-code="no-untyped-call"
"""View > History: edit sessions on a slider, past versions exactly, restore as new edits."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest
from editor_helpers import close_window, make_window, run, start_server, wait_for_state, widget_text
from PySide6.QtCore import Qt, QTimer
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from crdt_sync import Change, CRDTDocument, CRDTListHandler, CRDTTextHandler, PeerId
from crdt_sync.history import FREEZE
from editor import history
from editor.history import (
    HIGHLIGHT,
    EditSession,
    HistoryDialog,
    SessionGrouper,
    group_sessions,
)
from editor.session import LIST_NAME, TEXT_NAME, Session
from editor.sync_panel import SyncState


def peer(n: int) -> PeerId:
    return PeerId.parse(f"00000000-0000-4000-8000-{n:012d}")


def exchange(*docs: CRDTDocument) -> None:
    for target in docs:
        for source in docs:
            if source is not target:
                target.import_changes(source.export_changes(target.version_vector))


def replayed_to(document: CRDTDocument, changes: list[Change]) -> tuple[str, list[object]]:
    """An independent replica holding exactly ``changes``."""
    replica = CRDTDocument(document_id=document.document_id)
    text = CRDTTextHandler(replica, TEXT_NAME)
    items = CRDTListHandler(replica, LIST_NAME)
    replica.import_changes(changes)
    return text.value, items.value


def inserted_by(document: CRDTDocument, changes: list[Change], session: EditSession) -> set[int]:
    """Positions, in the version after ``session``, of characters its changes made."""
    replica = CRDTDocument(document_id=document.document_id)
    text = CRDTTextHandler(replica, TEXT_NAME)
    replica.import_changes(changes[: session.end])
    made = [(c.peer, c.counter, c.counter + c.size) for c in changes[session.start : session.end]]
    positions: set[int] = set()
    for start, length, peer_id, counter in text.id_runs():
        for offset in range(length):
            if any(p == peer_id and a <= counter + offset < b for p, a, b in made):
                positions.add(start + offset)
    return positions


def highlighted_positions(dialog: HistoryDialog) -> set[int]:
    return {i for a, b in dialog.highlighted() for i in range(a, b)}


def painted_positions(dialog: HistoryDialog) -> set[int]:
    """Code points whose background in the history view is the highlight colour."""
    text = dialog.shown_text()
    units_to_cp = {}
    unit = 0
    for index, character in enumerate(text):
        units_to_cp[unit] = index
        unit += 2 if ord(character) > 0xFFFF else 1
    painted: set[int] = set()
    block = dialog.text_view.document().begin()
    while block.isValid():
        fragments = block.begin()
        while not fragments.atEnd():
            fragment = fragments.fragment()
            if fragment.charFormat().background().color() == HIGHLIGHT:
                for u in range(fragment.position(), fragment.position() + fragment.length()):
                    if u in units_to_cp:
                        painted.add(units_to_cp[u])
            fragments += 1
        block = block.next()
    return painted


def three_authors() -> tuple[CRDTDocument, list[str]]:
    docs = [CRDTDocument(peer(n), document_id="notes") for n in (1, 2, 3)]
    texts = [CRDTTextHandler(doc, TEXT_NAME) for doc in docs]
    lists = [CRDTListHandler(doc, LIST_NAME) for doc in docs]
    rng = random.Random(5)
    for round_ in range(6):
        who = round_ % 3
        for _ in range(rng.randint(1, 4)):
            text = texts[who]
            if len(text) > 4 and rng.random() < 0.3:
                text.delete(rng.randrange(len(text) - 2), 2)
            else:
                text.insert(rng.randint(0, len(text)), f"[{who}:{round_}] é😀 ")
        lists[who].append(f"item {round_}")
        exchange(*docs)
    return docs[0], [t.value for t in texts]


def test_sessions_split_by_author_pause_and_size_and_stay_bounded() -> None:
    document, _ = three_authors()
    changes = document.export_changes()
    sessions = group_sessions(changes)
    assert len(sessions) == 6
    assert [s.authors for s in sessions] == [(str(peer(1 + i % 3)),) for i in range(6)]
    assert sessions[0].start == 0 and sessions[-1].end == len(changes)
    assert all(a.end == b.start for a, b in itertools.pairwise(sessions))
    assert len(group_sessions(changes, max_changes=1)) == len(changes)
    assert len(group_sessions(changes, max_changes=1, max_positions=4)) <= 4


def test_slider_shows_each_past_version_exactly_with_its_insertions_highlighted(
    qtbot: QtBot,
) -> None:
    document, _ = three_authors()
    handlers = document.handlers
    text_handler = handlers[(TEXT_NAME, "text")]
    list_handler = handlers[(LIST_NAME, "list")]
    assert isinstance(text_handler, CRDTTextHandler)
    assert isinstance(list_handler, CRDTListHandler)
    dialog = HistoryDialog(document, text_handler, list_handler, lambda p: p[-1])
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.shown_text() == text_handler.value  # the newest version, at once
    qtbot.waitUntil(lambda: dialog.timeline_ready, timeout=10000)
    assert dialog.slider.value() == dialog.slider.maximum() == 5
    assert dialog.replay is not None
    replay = dialog.replay
    qtbot.waitUntil(lambda: replay.done == 6, timeout=10000)
    changes = document.export_changes()
    for position in (0, 3, 1, 4, 2, 5):
        dialog.slider.setValue(position)
        session = dialog.sessions[position]
        expected_text, expected_items = replayed_to(document, changes[: session.end])
        assert dialog.shown_text() == expected_text
        assert widget_text(dialog.text_view) == expected_text
        items = [dialog.list_view.item(i).text() for i in range(dialog.list_view.count())]
        assert items == expected_items
        # Highlighted: exactly the characters this session's changes inserted.
        exact = inserted_by(document, changes, session)
        assert {i for a, b in dialog.inserted() for i in range(a, b)} == exact
        assert exact <= highlighted_positions(dialog)
        assert painted_positions(dialog) == highlighted_positions(dialog)
        assert dialog.session_label.text().startswith(f"Session {position + 1} of 6: ")


def test_restore_makes_new_edits_that_converge_on_a_second_window(
    qtbot: QtBot, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    server = run(qtbot, start_server())
    url = f"ws://127.0.0.1:{server.port}/restore"
    ada, bo = make_window(tmp_path, "Ada"), make_window(tmp_path, "Bo")
    try:
        for window in (ada, bo):
            run(qtbot, window.join(url))
            wait_for_state(qtbot, window, SyncState.CONNECTED)
        qtbot.keyClicks(ada.text_edit, "the first version")
        assert ada.list_model is not None
        ada.list_model.add_item("milk")
        qtbot.waitUntil(lambda: widget_text(bo.text_edit) == "the first version")
        bo.text_edit.selectAll()
        bo.text_edit.insertPlainText("Bo rewrote everything")
        assert bo.list_model is not None
        bo.list_model.add_item("eggs")
        assert ada.session is not None and bo.session is not None
        ada_session, bo_session = ada.session, bo.session
        qtbot.waitUntil(lambda: ada_session.text.value == "Bo rewrote everything")
        qtbot.waitUntil(lambda: len(ada_session.items) == 2)
        changes_before = len(ada_session.document.export_changes())
        dialog = ada.open_history()
        qtbot.waitUntil(
            lambda: dialog.replay is not None and dialog.replay.done == len(dialog.sessions),
            timeout=10000,
        )
        # The last session of Ada's: the text as she left it.
        target = max(
            i for i, s in enumerate(dialog.sessions) if s.authors == (ada_session.peer_id,)
        )
        dialog.slider.setValue(target)
        assert dialog.shown_text() == "the first version"
        with qtbot.waitSignal(dialog.restored):
            qtbot.mouseClick(dialog.restore_button, Qt.MouseButton.LeftButton)
        for session, window in ((ada_session, ada), (bo_session, bo)):
            qtbot.waitUntil(
                lambda s=session, w=window: (
                    s.text.value == widget_text(w.text_edit) == "the first version"
                )
            )
            qtbot.waitUntil(lambda s=session: s.items.value == ["milk"])
        # New changes were added; none was rewritten or dropped.
        assert len(ada_session.document.export_changes()) > changes_before
        # And Undo takes the restore back, everywhere.
        ada.undo()
        qtbot.waitUntil(lambda: bo_session.text.value == "Bo rewrote everything")
        dialog.close()
    finally:
        close_window(qtbot, ada)
        close_window(qtbot, bo)
        run(qtbot, server.stop())


def test_a_replica_without_its_early_history_says_where_its_history_starts(
    qtbot: QtBot,
) -> None:
    source, _ = three_authors()
    copy = CRDTDocument.from_snapshot(source.take_snapshot())
    text = CRDTTextHandler(copy, TEXT_NAME)
    items = CRDTListHandler(copy, LIST_NAME)
    dialog = HistoryDialog(copy, text, items, lambda p: p[-1])
    qtbot.addWidget(dialog)
    assert "snapshot" in dialog.start_label.text()
    assert dialog.shown_text() == text.value
    assert not dialog.restore_button.isEnabled()


def test_sessions_grouped_part_by_part_equal_the_whole_grouping() -> None:
    document, _ = three_authors()
    changes = document.export_changes()
    for size in (1, 2, 5, len(changes)):
        grouper = SessionGrouper(max_changes=3, max_positions=7)
        for start in range(0, len(changes), size):
            grouper.add(changes[start : start + size])
        assert grouper.sessions() == group_sessions(changes, max_changes=3, max_positions=7)


def test_a_long_history_is_read_in_slices_while_the_window_keeps_typing(
    qtbot: QtBot,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop: asyncio.AbstractEventLoop,
) -> None:
    del loop
    monkeypatch.setattr(history, "READ_BUDGET_S", 0.0)  # one part (a segment) per slice
    document = CRDTDocument(peer(1), document_id="long")
    text = CRDTTextHandler(document, TEXT_NAME)
    for i in range(6 * FREEZE + 10):  # seven parts
        text.insert(i // 2, "ab"[i % 2])
    count = len(document.export_changes())
    window = make_window(tmp_path, "Ada")
    try:
        window.set_session(Session(document, "Ada", parent=window))
        dialog = window.open_history()
        reader = dialog.reader
        assert reader is not None and not reader.done
        turns: list[bool] = []  # whether the reader was done, each event-loop turn

        def each_turn() -> None:
            turns.append(reader.done)
            if not reader.done:
                # Typing in the window while the history is read.
                QTest.keyClick(window.text_edit, Qt.Key.Key_Z)
                QTimer.singleShot(0, each_turn)

        QTimer.singleShot(0, each_turn)
        qtbot.waitUntil(lambda: dialog.timeline_ready, timeout=20000)
        # Reading took several turns of the event loop, each one a part (the
        # typing turn may come before or after the slice of its pass)...
        assert turns.count(False) >= 4
        typed = turns.count(False)
        assert text.value.count("z") == widget_text(window.text_edit).count("z") == typed
        # ... and the timeline is the history as it was when History opened.
        assert dialog.change_count == count
        assert dialog.sessions[-1].end == count
        assert dialog.shown_text() == text.value  # the newest position: the document now
        dialog.close()
    finally:
        close_window(qtbot, window)
