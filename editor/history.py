"""View > History: the document's timeline, rebuilt from its own changes.

The timeline is built from the local history, the changes this replica holds
(in causal order). Reading them means decoding the history's compact
segments (over a second for the 260,000 changes of the automerge-paper
trace), so :class:`TimelineReader` reads them a part at a time
(``CRDTDocument.export_changes_in_parts()``), a slice of about
``READ_BUDGET_S`` per event-loop turn, grouping as it goes: the window stays
responsive, typing included, while a long history is read. Consecutive changes by one
author, without a pause longer than ``SESSION_GAP_MS`` and at most
``SESSION_MAX_CHANGES`` of them, form one *edit session*; the slider steps over
sessions (adjacent sessions are merged pairwise while there are more than
``MAX_POSITIONS``, so the slider and the memory stay bounded).

Position ``i`` shows the document as it was after session ``i``: a fresh
replica (:class:`HistoryReplay`) imports the changes of every session up to
``i``, in order, and the text and list it then holds are that version. The
replay runs in slices on the event loop (the dialog stays responsive); it
records, per session, the text, the list and which characters the session
inserted (highlighted) and how many it deleted. The newest position is the
document itself and shows at once.

**Restore this version** makes the current document equal to the shown
version by ordinary new edits (:func:`restore_version`): one delete and one
insert for the text (what lies outside the common prefix and suffix), and the
list's differences item by item. History is never rewritten: collaborators
receive the restore as an edit, and Undo takes it back.

Where the local history starts: a replica that received the document as a
snapshot holds no changes before it (``CRDTDocument.can_export`` says so);
the timeline then fetches the older history from the server it is connected
to (``fetch_history``: :meth:`crdt_sync.sync.WebSocketClient.fetch_history`,
the protocol's ``HistoryRequest``) and shows the full timeline: the server's
changes, then this replica's newer ones. Where the server too dropped history
(its retention), the timeline replays from the state the server kept (the
response's base) and says that it starts there. Offline, it says where the
local history starts and offers only what it holds.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import difflib
import gc
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTTextHandler,
    Delete,
    Insert,
    Retain,
    Snapshot,
    TextEvent,
    VersionVector,
)
from crdt_sync.sync import History

__all__ = [
    "ChangeStream",
    "EditSession",
    "HistoryDialog",
    "HistoryReplay",
    "SessionGrouper",
    "TimelineReader",
    "Version",
    "group_sessions",
    "restore_version",
]

#: A pause longer than this (ms) between one author's changes starts a new session.
SESSION_GAP_MS = 5 * 60 * 1000
#: A session holds at most this many changes (long typing runs stay steppable).
SESSION_MAX_CHANGES = 2000
#: The slider has at most this many positions.
MAX_POSITIONS = 300
#: Changes imported per slice of the background replay.
REPLAY_SLICE = 200
#: How long one slice of the background replay may run on the event loop (s).
REPLAY_BUDGET_S = 0.006
#: How long one slice of reading the timeline may run on the event loop (s).
READ_BUDGET_S = 0.004
#: Changes grouped per step when the timeline's changes are given (fetched).
READ_CHUNK = 2048
#: Inserted ranges kept per version for highlighting (the rest merge).
MAX_RANGES = 400

HIGHLIGHT = QColor("#fff1a8")


@dataclass(frozen=True, slots=True)
class EditSession:
    """One step of the timeline: changes ``start .. end - 1`` of the history."""

    index: int
    authors: tuple[str, ...]
    first_ms: int
    last_ms: int
    start: int
    end: int
    ops: int


def group_sessions(
    changes: Sequence[Change],
    gap_ms: int = SESSION_GAP_MS,
    max_changes: int = SESSION_MAX_CHANGES,
    max_positions: int = MAX_POSITIONS,
) -> list[EditSession]:
    """Group ``changes`` (causal order) into edit sessions (see the module doc)."""
    grouper = SessionGrouper(gap_ms, max_changes, max_positions)
    grouper.add(changes)
    return grouper.sessions()


class SessionGrouper:
    """:func:`group_sessions` fed a part at a time (the timeline is read in slices).

    :meth:`add` costs its part's length; :meth:`sessions` costs the number of
    sessions, never the number of changes.
    """

    def __init__(
        self,
        gap_ms: int = SESSION_GAP_MS,
        max_changes: int = SESSION_MAX_CHANGES,
        max_positions: int = MAX_POSITIONS,
    ) -> None:
        self._gap_ms = gap_ms
        self._max_changes = max_changes
        self._max_positions = max_positions
        self._count = 0
        self._last: tuple[str, int] | None = None  # the previous change's (peer, ms)
        # Per session so far: [start, end, first ms, last ms, ops, authors in order].
        self._open: list[Any] | None = None
        self._closed: list[list[Any]] = []

    def add(self, changes: Sequence[Change]) -> None:
        """The next ``changes`` of the history, in order."""
        current = self._open
        last = self._last
        for change in changes:
            peer, ms = change.peer, change.timestamp >> 16
            if (
                current is None
                or last is None
                or peer != last[0]
                or ms - last[1] > self._gap_ms
                or self._count - current[0] >= self._max_changes
            ):
                if current is not None:
                    self._closed.append(current)
                current = [self._count, self._count, ms, ms, 0, {peer: None}]
            current[1] = self._count + 1
            current[3] = ms
            current[4] += change.size
            current[5].setdefault(peer, None)
            last = (peer, ms)
            self._count += 1
        self._open, self._last = current, last

    def sessions(self) -> list[EditSession]:
        """The edit sessions of everything added so far."""
        bounds = self._closed + ([self._open] if self._open is not None else [])
        while len(bounds) > self._max_positions:
            bounds = [
                _join_bounds(bounds[k], bounds[min(k + 1, len(bounds) - 1)], k + 1 < len(bounds))
                for k in range(0, len(bounds), 2)
            ]
        return [
            EditSession(index, tuple(b[5]), b[2], b[3], b[0], b[1], b[4])
            for index, b in enumerate(bounds)
        ]


def _join_bounds(a: list[Any], b: list[Any], distinct: bool) -> list[Any]:
    """Session ``a`` followed by session ``b`` as one (``b`` itself when not ``distinct``)."""
    if not distinct:
        return a
    return [a[0], b[1], a[2], b[3], a[4] + b[4], {**a[5], **b[5]}]


@dataclass(slots=True)
class Version:
    """The document after one edit session, and what that session changed."""

    text: str
    items: list[Any]
    inserted: list[tuple[int, int]] = field(default_factory=list)
    deleted: int = 0
    new_items: int = 0


class _Ranges:
    """Code-point ranges inserted during one session, kept in step with later edits."""

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.deleted = 0

    def apply(self, event: TextEvent) -> None:
        position = 0
        for op in event.delta:
            if isinstance(op, Retain):
                position += op.count
            elif isinstance(op, Insert):
                count = len(op.content)
                self._insert(position, count)
                position += count
            elif isinstance(op, Delete):
                self._delete(position, op.count)
                self.deleted += op.count

    def _insert(self, position: int, count: int) -> None:
        out: list[list[int]] = []
        merged = False
        for a, b in self.ranges:
            if not merged and a <= position <= b:
                out.append([a, b + count])  # the new text joins this range
                merged = True
            elif a >= position:
                out.append([a + count, b + count])
            else:
                out.append([a, b])
        if not merged:
            out.append([position, position + count])
            out.sort()
        # Join ranges that now touch; keep at most MAX_RANGES.
        joined: list[list[int]] = []
        for rng in out:
            if joined and rng[0] <= joined[-1][1]:
                joined[-1][1] = max(joined[-1][1], rng[1])
            else:
                joined.append(rng)
        while len(joined) > MAX_RANGES:
            last = joined.pop()
            joined[-1][1] = last[1]
        self.ranges = joined

    def _delete(self, position: int, count: int) -> None:
        end = position + count
        kept: list[list[int]] = []
        for a, b in self.ranges:
            # Cut [position, end) out of [a, b), then shift what lies after.
            def shift(x: int) -> int:
                if x <= position:
                    return x
                if x >= end:
                    return x - count
                return position

            na, nb = shift(a), shift(b)
            if nb > na:
                kept.append([na, nb])
        self.ranges = kept


class TimelineReader(QObject):
    """Reads a history and groups it into edit sessions, a slice per event-loop turn.

    ``parts`` yields the changes in order, a part at a time
    (``CRDTDocument.export_changes_in_parts``: decoding a part is the cost);
    each slice takes parts for about ``READ_BUDGET_S`` (at least one), so the
    window stays responsive while a long history is read. ``finished`` is
    emitted once all are read: then :attr:`count` and :meth:`sessions` hold
    the timeline. The changes themselves are not kept (a quarter of a million
    change objects would cost memory and long pauses of the garbage collector):
    :class:`HistoryReplay` decodes them again from its own parts, as it goes.
    """

    #: How many changes are read so far (after each slice).
    progressed = Signal(int)
    finished = Signal()

    def __init__(
        self,
        parts: Iterator[Sequence[Change]],
        parent: QObject | None = None,
        budget_s: float = READ_BUDGET_S,
    ) -> None:
        super().__init__(parent)
        self._parts = parts
        self.budget_s = budget_s
        self.count = 0
        self.done = False
        self._grouper = SessionGrouper()
        self._timer = QTimer(self)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.step)

    def start(self) -> None:
        """Read in the background, a slice of about ``budget_s`` per event-loop turn."""
        if not self.done:
            self._timer.start()

    def stop(self) -> None:
        """Stop reading (a stopped reader never finishes)."""
        self._timer.stop()

    def step(self, budget_s: float | None = None) -> None:
        """Read parts for about ``budget_s`` seconds (default :attr:`budget_s`; at
        least one part)."""
        if self.done:
            return
        deadline = time.perf_counter() + (self.budget_s if budget_s is None else budget_s)
        # A part's change objects die (by reference counting) as soon as it is
        # grouped. The cyclic collector running meanwhile would only move them to
        # older generations, and every few dozen parts that brings on a full
        # collection of the whole heap (about 100 ms beside a 100,000-character
        # document, a frozen window): so it waits until the slice ends.
        collecting = gc.isenabled()
        gc.disable()
        try:
            while True:
                part = next(self._parts, None)
                if part is None:
                    self.done = True
                    break
                self.count += len(part)
                self._grouper.add(part)
                del part
                if time.perf_counter() >= deadline:
                    break
        finally:
            if collecting:
                gc.enable()
        if self.done:
            self._timer.stop()
            self.finished.emit()
        else:
            self.progressed.emit(self.count)

    def read_all(self) -> None:
        """Read everything now (tests, benchmarks)."""
        while not self.done:
            self.step(budget_s=1.0)

    def sessions(self) -> list[EditSession]:
        """The edit sessions of what was read."""
        return self._grouper.sessions()


def _chunks(changes: list[Change], size: int) -> Iterator[list[Change]]:
    for start in range(0, len(changes), size):
        yield changes[start : start + size]


class ChangeStream:
    """The changes of ``parts`` (in order), taken a few at a time; a part is
    decoded (``export_changes_in_parts``) only when reached."""

    def __init__(self, parts: Iterable[Sequence[Change]]) -> None:
        self._parts = iter(parts)
        self._part: Sequence[Change] = ()
        self._at = 0

    def take(self, count: int) -> list[Change]:
        """The next ``count`` changes (fewer at the end)."""
        out: list[Change] = []
        while len(out) < count:
            if self._at >= len(self._part):
                part = next(self._parts, None)
                if part is None:
                    break
                self._part, self._at = part, 0
            piece = self._part[self._at : self._at + count - len(out)]
            out.extend(piece)
            self._at += len(piece)
        return out


class HistoryReplay(QObject):
    """Replays the changes of ``parts`` into a fresh replica, session by session,
    in slices.

    ``progressed(done)`` reports how many sessions have a :class:`Version`.
    """

    progressed = Signal(int)

    def __init__(
        self,
        document_id: str,
        parts: Iterable[Sequence[Change]],
        sessions: Sequence[EditSession],
        text_name: str,
        list_name: str,
        parent: QObject | None = None,
        base: Snapshot | None = None,
    ) -> None:
        super().__init__(parent)
        self._changes = ChangeStream(parts)
        self.sessions = sessions
        self.versions: dict[int, Version] = {}
        # ``base``: the state the changes replay from (the server's kept history
        # may start after the document's creation).
        self._replica = (
            CRDTDocument(document_id=document_id)
            if base is None
            else CRDTDocument.from_snapshot(base, document_id=document_id)
        )
        self._text = CRDTTextHandler(self._replica, text_name)
        self._items = CRDTListHandler(self._replica, list_name)
        self._ranges = _Ranges()
        self._text.observe(self._on_text_event)
        self._next_change = 0
        self._session = 0
        self._previous_items = [json.dumps(i, sort_keys=True) for i in self._items.value]
        self._timer = QTimer(self)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.step)

    @property
    def done(self) -> int:
        """Sessions replayed so far."""
        return self._session

    def start(self) -> None:
        """Replay in the background, a slice per event-loop turn."""
        if self._session < len(self.sessions):
            self._timer.start()

    def stop(self) -> None:
        """Stop the background replay (the versions made so far are kept)."""
        self._timer.stop()

    def step(self, budget_s: float = REPLAY_BUDGET_S) -> None:
        """Replay for about ``budget_s`` seconds."""
        deadline = time.perf_counter() + budget_s
        while self._session < len(self.sessions) and time.perf_counter() < deadline:
            session = self.sessions[self._session]
            stop = min(session.end, self._next_change + REPLAY_SLICE)
            self._replica.import_changes(self._changes.take(stop - self._next_change))
            self._next_change = stop
            if stop == session.end:
                self._finish_session()
        if self._session >= len(self.sessions):
            self._timer.stop()
        self.progressed.emit(self._session)

    def replay_all(self) -> None:
        """Replay everything now (tests, benchmarks)."""
        while self._session < len(self.sessions):
            self.step(budget_s=1.0)

    def _finish_session(self) -> None:
        items = self._items.value
        keys = [json.dumps(item, sort_keys=True) for item in items]
        previous = set(self._previous_items)
        self.versions[self._session] = Version(
            self._text.value,
            items,
            [(a, b) for a, b in self._ranges.ranges],
            self._ranges.deleted,
            sum(1 for key in keys if key not in previous),
        )
        self._previous_items = keys
        self._ranges = _Ranges()
        self._session += 1

    def _on_text_event(self, event: TextEvent) -> None:
        self._ranges.apply(event)


def restore_version(
    document: CRDTDocument, text: CRDTTextHandler, items: CRDTListHandler, version: Version
) -> bool:
    """Make the document's text and list equal to ``version`` by new edits.

    One transaction (origin ``"restore"``): collaborators see an ordinary edit
    and Undo takes it back. Returns whether anything changed.
    """
    current = text.value
    target = version.text
    prefix = _common_prefix(current, target)
    suffix = _common_suffix(current, target, prefix)
    current_items = items.value
    same_items = current_items == version.items
    if current == target and same_items:
        return False
    with document.transaction(origin="restore"):
        if current != target:
            removed = len(current) - prefix - suffix
            if removed:
                text.delete(prefix, removed)
            added = target[prefix : len(target) - suffix]
            if added:
                text.insert(prefix, added)
        if not same_items:
            old = [json.dumps(v, sort_keys=True) for v in current_items]
            new = [json.dumps(v, sort_keys=True) for v in version.items]
            matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
            for tag, i1, i2, j1, j2 in reversed(matcher.get_opcodes()):
                if tag in ("delete", "replace"):
                    items.delete(i1, i2 - i1)
                if tag in ("insert", "replace"):
                    items.insert_many(i1, list(version.items[j1:j2]))
    return True


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix (slices compared in C, halving the step)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: str, b: str, floor: int) -> int:
    """Length of the common suffix leaving the first ``floor`` characters alone."""
    low, high = 0, min(len(a), len(b)) - floor
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle : len(a) - low] == b[len(b) - middle : len(b) - low]:
            low = middle
        else:
            high = middle - 1
    return low


#: Highlighted ranges closer than this (characters) are shown as one.
HIGHLIGHT_JOIN = 40
#: At most this many highlighted ranges per step (formats cost per range).
MAX_HIGHLIGHTS = 60


def _coarse(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` with near neighbours joined, at most ``MAX_HIGHLIGHTS`` of them."""
    joined: list[tuple[int, int]] = []
    for a, b in ranges:
        if joined and a - joined[-1][1] <= HIGHLIGHT_JOIN:
            joined[-1] = (joined[-1][0], max(b, joined[-1][1]))
        else:
            joined.append((a, b))
    while len(joined) > MAX_HIGHLIGHTS:
        gaps = sorted(range(len(joined) - 1), key=lambda k: joined[k + 1][0] - joined[k][1])
        k = gaps[0]
        joined[k : k + 2] = [(joined[k][0], joined[k + 1][1])]
    return joined


def _when(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


class HistoryDialog(QDialog):
    """The timeline: a slider over edit sessions, the version shown, and Restore."""

    restored = Signal()
    #: The history was read: the slider steps over its edit sessions now.
    timelineReady = Signal()

    def __init__(
        self,
        document: CRDTDocument,
        text: CRDTTextHandler,
        items: CRDTListHandler,
        author_name: Callable[[str], str],
        parent: QWidget | None = None,
        fetch_history: Callable[[], Awaitable[History]] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("History")
        self.setObjectName("historyDialog")
        self.resize(900, 600)
        self._document = document
        self._text = text
        self._items = items
        self._author_name = author_name
        self._highlighted: list[tuple[int, int]] = []
        self._shown_text = ""
        self._shown_replayed = False
        self._inserted: list[tuple[int, int]] = []
        layout = QVBoxLayout(self)
        self.start_label = QLabel(self)
        self.start_label.setObjectName("historyStart")
        self.start_label.setWordWrap(True)
        layout.addWidget(self.start_label)
        row = QHBoxLayout()
        self.slider = QSlider(Qt.Orientation.Horizontal, self)
        self.slider.setObjectName("historySlider")
        self.slider.setPageStep(1)
        row.addWidget(self.slider, 1)
        layout.addLayout(row)
        self.session_label = QLabel(self)
        self.session_label.setObjectName("historySession")
        self.session_label.setWordWrap(True)
        layout.addWidget(self.session_label)
        splitter = QSplitter(self)
        self.text_view = QPlainTextEdit(self)
        self.text_view.setObjectName("historyText")
        self.text_view.setReadOnly(True)
        self.text_view.setUndoRedoEnabled(False)
        self.list_view = QListWidget(self)
        self.list_view.setObjectName("historyList")
        splitter.addWidget(self.text_view)
        splitter.addWidget(self.list_view)
        splitter.setStretchFactor(0, 1)
        splitter.setSizes([650, 200])
        layout.addWidget(splitter, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.restore_button = QPushButton("Restore this version", self)
        self.restore_button.setObjectName("historyRestore")
        self.restore_button.setToolTip(
            "Make the document equal to this version by new edits; the history is kept"
        )
        self.close_button = QPushButton("Close", self)
        self.fetch_button = QPushButton("Fetch Older History", self)
        self.fetch_button.setObjectName("historyFetch")
        self.fetch_button.setToolTip("Ask the server for the history this copy does not hold")
        self.fetch_button.setVisible(False)
        self.fetch_button.clicked.connect(self.fetch_older_history)
        buttons.addWidget(self.fetch_button)
        buttons.addWidget(self.restore_button)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)
        self.close_button.clicked.connect(self.close)
        self.restore_button.clicked.connect(self.on_restore_button_clicked)
        self.slider.valueChanged.connect(self.on_slider_valueChanged)

        self.complete = document.can_export(VersionVector())
        self._fetch_history = fetch_history
        self._fetching: asyncio.Future[None] | None = None
        self._base: Snapshot | None = None
        self.server_start: VersionVector | None = None
        """Where the server's history starts, once fetched (empty: at the creation)."""
        self.change_count = 0
        """How many changes the timeline covers (once read)."""
        self._replay_parts: Iterable[Sequence[Change]] = ()
        self.sessions: list[EditSession] = []
        self.reader: TimelineReader | None = None
        self.replay: HistoryReplay | None = None
        # The newest version shows at once; the timeline (export, grouping,
        # replay) follows from the event loop, in slices.
        self.slider.setEnabled(False)
        self.restore_button.setEnabled(False)
        self._show_text(text.value)
        self._show_items(items.value)
        if self.complete:
            self.start_label.setText("Reading the document's history…")
            self.load_timeline()  # in slices, from the next event-loop turn on
        elif fetch_history is not None:
            self.start_label.setText(
                "This copy of the document arrived as a snapshot: fetching its older "
                "history from the server…"
            )
            QTimer.singleShot(0, self, self.fetch_older_history)
        else:
            self._describe_start()

    @property
    def timeline_ready(self) -> bool:
        """Whether the edit sessions are known (the slider is live)."""
        return self.replay is not None

    @property
    def fetching(self) -> bool:
        """Whether older history is being fetched from the server."""
        return self._fetching is not None and not self._fetching.done()

    def fetch_older_history(self) -> None:
        """Ask the server for the history this replica lacks (once at a time)."""
        if self._fetch_history is None or self.fetching or self.reader is not None:
            return
        self.fetch_button.setEnabled(False)
        self._fetching = asyncio.ensure_future(self._fetch(self._fetch_history))

    async def _fetch(self, fetch: Callable[[], Awaitable[History]]) -> None:
        try:
            history = await fetch()
        except (ConnectionError, OSError) as error:
            self.start_label.setText(
                "This copy of the document arrived as a snapshot: its history on this "
                "computer starts there, so only the current version can be shown. "
                f"Its older history could not be fetched from the server ({error})."
            )
            self.fetch_button.setVisible(True)
            self.fetch_button.setEnabled(True)
            return
        self.use_history(history)

    def use_history(self, history: History) -> None:
        """Show the timeline of the server's ``history`` followed by this replica's
        newer changes."""
        if self.reader is not None:
            return
        changes = list(history.changes)
        ends = dict(history.start)
        for change in changes:
            ends[change.peer] = max(ends.get(change.peer, 0), change.counter + change.size)
        covered = VersionVector(ends)
        if self._document.can_export(covered):
            known = {change.id for change in changes}
            changes += [c for c in self._document.export_changes(covered) if c.id not in known]
        self.server_start = history.start
        self._base = history.base
        self.complete = True
        self.fetch_button.setVisible(False)
        self.load_timeline(changes)

    def load_timeline(self, changes: list[Change] | None = None) -> None:
        """Read the history (or take ``changes``) and group it into edit sessions,
        in slices on the event loop (:class:`TimelineReader`); then start the replay
        and emit ``timelineReady``. :meth:`finish_reading` does the rest at once."""
        if self.replay is not None or self.reader is not None:
            return
        # Two readings of one history: one grouped now, one replayed later.
        if changes is None:
            parts = self._document.export_changes_in_parts()
            self._replay_parts = self._document.export_changes_in_parts()
        else:
            parts = _chunks(changes, READ_CHUNK)
            self._replay_parts = _chunks(changes, READ_CHUNK)
        self.reader = TimelineReader(parts, self, budget_s=READ_BUDGET_S)
        self.reader.progressed.connect(self.on_reader_progressed)
        self.reader.finished.connect(self._on_timeline_read)
        self.reader.start()

    def finish_reading(self) -> None:
        """Read the rest of the timeline now, not in slices (tests, benchmarks)."""
        if self.reader is not None:
            self.reader.read_all()

    def _on_timeline_read(self) -> None:
        reader = self.reader
        if reader is None or self.replay is not None:
            return
        self.change_count = reader.count
        self.sessions = reader.sessions()
        self.replay = HistoryReplay(
            self._document.document_id,
            self._replay_parts,
            self.sessions,
            self._text.name,
            self._items.name,
            self,
            base=self._base,
        )
        self.replay.progressed.connect(self.on_replay_progressed)
        self._describe_start()
        last = max(0, len(self.sessions) - 1)
        self.slider.blockSignals(True)
        self.slider.setRange(0, last)
        self.slider.setValue(last)
        self.slider.blockSignals(False)
        self.slider.setEnabled(bool(self.sessions))
        self.show_position(last)
        self.replay.start()
        self.timelineReady.emit()

    # -- what is shown --------------------------------------------------------------
    def _describe_start(self) -> None:
        if not self.complete:
            self.start_label.setText(
                "This copy of the document arrived as a snapshot: its history on this "
                "computer starts there, so only the current version can be shown. "
                "Older versions stay on the server."
            )
        elif self.server_start:
            # The server dropped the older history (its retention setting).
            kept = (
                f"{len(self.sessions)} edit sessions, {self.change_count:,} changes, from "
                f"{_when(self.sessions[0].first_ms)}. "
                if self.sessions
                else ""
            )
            self.start_label.setText(
                f"{kept}The history starts at the version the server kept: older history "
                "was dropped by the server's history retention."
            )
        elif self.sessions:
            first = self.sessions[0]
            where = (
                "the local history starts at the document's creation"
                if self.server_start is None
                else "fetched from the server, from the document's creation"
            )
            self.start_label.setText(
                f"{len(self.sessions)} edit sessions, {self.change_count:,} changes, "
                f"from {_when(first.first_ms)} ({where})."
            )
        else:
            self.start_label.setText("The document has no changes yet.")

    def version_at(self, position: int) -> Version | None:
        """The version after session ``position`` (None while not yet replayed)."""
        versions = self.replay.versions if self.replay is not None else {}
        if position == len(self.sessions) - 1 or not self.sessions:
            replayed = versions.get(position)
            return Version(
                self._text.value,
                self._items.value,
                replayed.inserted if replayed else [],
                replayed.deleted if replayed else 0,
                replayed.new_items if replayed else 0,
            )
        return versions.get(position)

    def shown_text(self) -> str:
        """The text in the history view now."""
        return self._shown_text

    def show_position(self, position: int) -> None:
        """Show the version after session ``position``."""
        version = self.version_at(position)
        session = self.sessions[position] if self.sessions else None
        if session is not None:
            names = ", ".join(self._author_name(peer) for peer in session.authors)
            span = _when(session.first_ms)
            if session.last_ms - session.first_ms >= 60_000:
                span += f" to {_dt.datetime.fromtimestamp(session.last_ms / 1000):%H:%M}"
            words = f"Session {position + 1} of {len(self.sessions)}: {names}, {span}"
            if version is not None:
                added = sum(b - a for a, b in version.inserted)
                words += f"; {added} characters added, {version.deleted} deleted"
            self.session_label.setText(words)
        replay = self.replay
        self._shown_replayed = replay is not None and position in replay.versions
        if version is None:
            self.session_label.setText(
                self.session_label.text()
                + f" (replaying the history… {self.replay.done if self.replay else 0}"
                + f"/{len(self.sessions)})"
            )
            self.restore_button.setEnabled(False)
            return
        self.restore_button.setEnabled(0 <= position < len(self.sessions) - 1)
        self._clear_highlight()
        self._show_text(version.text)
        self._inserted = list(version.inserted)
        self._highlight(_coarse(version.inserted))
        self._show_items(version.items)

    def _show_items(self, items: list[Any]) -> None:
        self.list_view.clear()
        for value in items:
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            self.list_view.addItem(QListWidgetItem(shown))

    def _show_text(self, target: str) -> None:
        """Patch the view from the shown text to ``target`` (only the middle changes)."""
        current = self._shown_text
        if current == target:
            return
        prefix = _common_prefix(current, target)
        suffix = _common_suffix(current, target, prefix)
        cursor = QTextCursor(self.text_view.document())
        cursor.beginEditBlock()
        cursor.setPosition(_utf16(current, prefix))
        cursor.setPosition(_utf16(current, len(current) - suffix), QTextCursor.MoveMode.KeepAnchor)
        cursor.insertText(target[prefix : len(target) - suffix], QTextCharFormat())
        cursor.endEditBlock()
        self._shown_text = target

    def _format_ranges(self, ranges: list[tuple[int, int]], fmt: QTextCharFormat) -> None:
        """Give ``ranges`` (code points of the shown text) the format ``fmt``, in one edit."""
        text = self._shown_text
        limit = len(text)
        cursor = QTextCursor(self.text_view.document())
        cursor.beginEditBlock()  # one layout pass for all the ranges
        try:
            for start, end in ranges:
                a, b = min(start, limit), min(end, limit)
                if a < b:
                    cursor.setPosition(_utf16(text, a))
                    cursor.setPosition(_utf16(text, b), QTextCursor.MoveMode.KeepAnchor)
                    cursor.setCharFormat(fmt)
        finally:
            cursor.endEditBlock()

    def _clear_highlight(self) -> None:
        """Remove the highlight (before the shown text changes under it)."""
        if self._highlighted:
            plain = QTextCharFormat()
            plain.setBackground(Qt.GlobalColor.transparent)
            self._format_ranges(self._highlighted, plain)
            self._highlighted = []

    def _highlight(self, ranges: list[tuple[int, int]]) -> None:
        marked = QTextCharFormat()
        marked.setBackground(HIGHLIGHT)
        self._format_ranges(ranges, marked)
        self._highlighted = list(ranges)
        if ranges:
            text = self._shown_text
            cursor = QTextCursor(self.text_view.document())
            cursor.setPosition(_utf16(text, min(ranges[0][0], len(text))))
            self.text_view.setTextCursor(cursor)
            self.text_view.ensureCursorVisible()

    def highlighted(self) -> list[tuple[int, int]]:
        """The code-point ranges highlighted (near neighbours joined, see ``_coarse``)."""
        return list(self._highlighted)

    def inserted(self) -> list[tuple[int, int]]:
        """The code-point ranges the shown session inserted, exactly."""
        return list(self._inserted)

    # -- slots ----------------------------------------------------------------------
    def on_slider_valueChanged(self, position: int) -> None:
        """Show the version under the slider."""
        self.show_position(position)

    def on_reader_progressed(self, read: int) -> None:
        """Say how far reading the history got."""
        self.start_label.setText(f"Reading the document's history… {read:,} changes so far")

    def on_replay_progressed(self, done: int) -> None:
        """A version the slider waits for may be ready now."""
        position = self.slider.value()
        if position < done and not self._shown_replayed:
            self.show_position(position)

    def on_restore_button_clicked(self) -> None:
        """Restore the shown version as new edits."""
        version = self.version_at(self.slider.value())
        if version is None:
            return
        if restore_version(self._document, self._text, self._items, version):
            self.restored.emit()

    def closeEvent(self, event: Any) -> None:
        """Stop reading, replaying (and fetching) when closed."""
        if self.reader is not None:
            self.reader.stop()
        if self.replay is not None:
            self.replay.stop()
        if self._fetching is not None:
            self._fetching.cancel()
        super().closeEvent(event)


def _utf16(text: str, index: int) -> int:
    prefix = text[:index]
    return len(prefix) if prefix.isascii() else len(prefix.encode("utf-16-le")) // 2
