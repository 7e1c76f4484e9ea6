# mypy: disable-error-code="no-untyped-call"
"""The list model: CRDT deltas become row signals; view edits become CRDT operations."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from crdt_sync import CRDTDocument, CRDTListHandler
from editor.list_model import ListModel
from editor.list_view import ListView


class Peers:
    """Model over document ``a``; a bare peer document ``b`` edits "remotely"."""

    def __init__(self, items: list[str]) -> None:
        self.b = CRDTDocument()
        self.b_list = CRDTListHandler(self.b, "shared_list")
        for item in items:
            self.b_list.append(item)
        self.a = CRDTDocument()
        self.a_list = CRDTListHandler(self.a, "shared_list")
        self.a.import_changes(self.b.export_changes())
        self.model = ListModel(self.a, self.a_list)

    def sync(self) -> None:
        self.b.import_changes(self.a.export_changes(self.b.version_vector))
        self.a.import_changes(self.b.export_changes(self.a.version_vector))


def rows(model: ListModel) -> list[str]:
    return [model.data(model.index(r)) for r in range(model.rowCount())]


def test_model_passes_qt_model_tester_through_local_and_remote_edits(
    qtmodeltester: ModelTester,
) -> None:
    peers = Peers(["a", "b", "c"])
    qtmodeltester.check(peers.model)
    peers.model.add_item("d")
    peers.model.setData(peers.model.index(0), "A")
    peers.model.move_item(0, 3)
    peers.model.removeRows(1, 1)
    qtmodeltester.check(peers.model)
    peers.sync()
    peers.b_list.insert(0, "x")
    peers.b_list.update(1, "B")
    peers.b_list.move(0, 2)
    peers.b_list.delete(1)
    peers.sync()
    qtmodeltester.check(peers.model)
    assert rows(peers.model) == peers.a_list.value == peers.b_list.value


def test_remote_insert_emits_inclusive_row_range() -> None:
    peers = Peers(["a", "b"])
    peers.b_list.insert(1, "x")
    peers.b_list.insert(2, "y")
    ranges: list[tuple[int, int]] = []
    peers.model.rowsInserted.connect(lambda _parent, first, last: ranges.append((first, last)))
    peers.sync()
    assert rows(peers.model) == ["a", "x", "y", "b"]
    # However the import groups them, the announced rows are exactly rows 1 and 2.
    covered = [r for first, last in ranges for r in range(first, last + 1)]
    assert sorted(covered) == [1, 2]


def test_remote_update_is_data_changed_not_remove_insert(qtbot: QtBot) -> None:
    peers = Peers(["a", "b"])
    peers.b_list.update(1, "B")
    with (
        qtbot.assertNotEmitted(peers.model.rowsRemoved),
        qtbot.waitSignal(peers.model.dataChanged) as blocker,
    ):
        peers.sync()
    assert blocker.args is not None and blocker.args[0].row() == 1
    assert rows(peers.model) == ["a", "B"]


def test_remote_edits_are_not_echoed_back(qtbot: QtBot) -> None:
    peers = Peers(["a", "b", "c"])
    sent: list[object] = []
    peers.a.on_change(sent.append)
    peers.b_list.insert(3, "d")
    peers.b_list.delete(0)
    peers.b_list.move(0, 2)
    with qtbot.assertNotEmitted(peers.model.localEditCommitted):
        peers.sync()
    assert sent == []
    assert rows(peers.model) == ["c", "d", "b"]


def test_view_edit_in_place_reaches_the_crdt() -> None:
    peers = Peers(["a"])
    assert peers.model.setData(peers.model.index(0), "edited", Qt.ItemDataRole.EditRole)
    peers.sync()
    assert peers.b_list.value == ["edited"]


def test_moving_block_down_and_up_matches_qt_semantics() -> None:
    peers = Peers(["a", "b", "c", "d", "e"])
    model = peers.model
    # Qt: move rows 0..1 to before row 4 -> c d a b e
    assert model.moveRows(QModelIndex(), 0, 2, QModelIndex(), 4)
    assert rows(model) == peers.a_list.value == ["c", "d", "a", "b", "e"]
    assert model.moveRows(QModelIndex(), 3, 2, QModelIndex(), 0)
    assert rows(model) == peers.a_list.value == ["b", "e", "c", "d", "a"]
    assert not model.moveRows(QModelIndex(), 0, 1, QModelIndex(), 1)  # onto itself


def test_keyboard_reorder_add_and_remove(qtbot: QtBot) -> None:
    peers = Peers(["a", "b", "c"])
    view = ListView()
    qtbot.addWidget(view)
    view.setModel(peers.model)
    view.show()
    view.setCurrentIndex(peers.model.index(0))
    qtbot.keyClick(view, Qt.Key.Key_Down, Qt.KeyboardModifier.ControlModifier)
    assert rows(peers.model) == ["b", "a", "c"]
    assert view.currentIndex().row() == 1
    qtbot.keyClick(view, Qt.Key.Key_Up, Qt.KeyboardModifier.ControlModifier)
    assert rows(peers.model) == ["a", "b", "c"]
    qtbot.keyClick(view, Qt.Key.Key_Delete)
    assert rows(peers.model) == ["b", "c"]
    peers.sync()
    assert peers.b_list.value == ["b", "c"]


def test_drag_and_drop_move_uses_move_rows(qtbot: QtBot) -> None:
    peers = Peers(["a", "b", "c"])
    view = ListView()
    qtbot.addWidget(view)
    view.setModel(peers.model)
    # QListView's internal-move drop calls moveRow(); simulate what it asks.
    assert peers.model.moveRow(QModelIndex(), 0, QModelIndex(), 3)
    assert rows(peers.model) == ["b", "c", "a"]
    peers.sync()
    assert peers.b_list.value == ["b", "c", "a"]


def test_undo_of_list_edits_reaches_the_views_and_keeps_remote_items() -> None:
    from crdt_sync import UndoManager

    peers = Peers(["a"])
    undo = UndoManager(peers.a, [peers.a_list])
    peers.model.add_item("mine")
    undo.stop_capturing()
    peers.b_list.append("theirs")
    peers.sync()
    # Concurrent appends: their order is decided by peer ids, which are random.
    assert sorted(rows(peers.model)[1:]) == ["mine", "theirs"]
    assert rows(peers.model) == peers.b_list.value
    assert undo.undo()
    assert rows(peers.model) == peers.a_list.value == ["a", "theirs"]
    peers.sync()
    assert peers.b_list.value == ["a", "theirs"]
