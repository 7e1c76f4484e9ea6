# mypy: disable-error-code="no-untyped-call"
"""The sync panel as a view: status words and colours, peers, a bounded filterable log."""

from __future__ import annotations

import datetime as dt

from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from editor.sync_panel import LogEntry, LogModel, PeerInfo, SyncPanel, SyncState


def make_panel(qtbot: QtBot, max_entries: int = 500) -> SyncPanel:
    panel = SyncPanel(max_log_entries=max_entries)
    qtbot.addWidget(panel)
    return panel


def test_each_state_has_words_and_its_own_colour(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    colours = set()
    for state in SyncState:
        panel.set_status(state)
        assert state.value in panel.status_text().lower()
        colours.add(panel.status_label.styleSheet())
    assert len(colours) == len(SyncState)


def test_reconnecting_shows_next_retry_time_and_error_its_reason(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    at = dt.datetime(2026, 1, 2, 13, 14, 15).timestamp()
    panel.set_status(SyncState.RECONNECTING, retry_at=at)
    assert "next try at 13:14:15" in panel.status_text()
    panel.set_status(SyncState.ERROR, "document not found")
    assert panel.status_text() == "Error: document not found"


def test_session_facts_and_peers(qtbot: QtBot) -> None:
    panel = make_panel(qtbot)
    panel.set_session("ws://127.0.0.1:9/doc", "peer-1", "Ada")
    panel.set_peers([PeerInfo("peer-1", "Ada", "#ff0000", True), PeerInfo("p2", "Bo", "#00f")])
    panel.set_unacknowledged(3)
    assert panel.url_label.text() == "ws://127.0.0.1:9/doc"
    assert panel.peer_label.text() == "peer-1"
    assert panel.peer_names() == ["Ada (you)", "Bo"]
    assert panel.unacknowledged_label.text() == "3"


def test_log_is_bounded_newest_last_filterable_and_clearable(qtbot: QtBot) -> None:
    panel = make_panel(qtbot, max_entries=3)
    for i in range(5):
        panel.log("change" if i % 2 else "host", f"event {i}")
    lines = panel.visible_log_lines()
    assert [line.split()[-1] for line in lines] == ["2", "3", "4"]
    qtbot.keyClicks(panel.filter_edit, "HOST")
    assert [line.split()[-1] for line in panel.visible_log_lines()] == ["2", "4"]
    with qtbot.waitSignal(panel.clearRequested):
        panel.clear_button.click()
    assert panel.visible_log_lines() == []


def test_log_model_passes_model_tester(qtmodeltester: ModelTester) -> None:
    model = LogModel(2)
    model.append(LogEntry(dt.datetime.now(), "a", "1"))
    qtmodeltester.check(model)
    model.append(LogEntry(dt.datetime.now(), "b", "2"))
    model.append(LogEntry(dt.datetime.now(), "error", "3"))
    qtmodeltester.check(model)
    assert [e.message for e in model.entries()] == ["2", "3"]
