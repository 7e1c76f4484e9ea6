"""Who wrote what: each character's background in its author's colour.

View > Show Authors turns on an :class:`AuthorshipOverlay` over the text
editor's viewport. It paints, for the *visible* lines only, a light wash of
each author's presence colour behind their characters (composition mode
``Multiply``: white paper takes the pale colour, black glyphs stay black, so
the text reads as before). The overlay never formats the ``QTextDocument``:
formats would be undoable edits of the widget, cost time proportional to the
whole document, and ``setExtraSelections`` is unsafe under PySide6 6.12 (see
``editor.remote_cursors``).

Where the runs come from: ``CRDTTextHandler.id_runs()`` gives the visible text
as ``(start, length, peer, counter)`` runs (code points); they are fetched once
after each change of the text, lazily at the next paint, and searched by
bisection for the lines on screen. Qt positions are UTF-16 offsets; the text
binding converts.

Authors' names and colours come from the document itself: every replica
writes its ``{"name", "colour"}`` under its peer id into the shared map
``"authors"`` when it joins a session (or first edits), so an author who is
offline, or who left long ago, is still named (:func:`author_entry`).

Hovering a character shows a tooltip: the author's name and when the edit was
made (the change's clock stamp, ``CRDTDocument.timestamp_of``).
"""

from __future__ import annotations

import bisect
import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QPoint, QRect, QRectF
from PySide6.QtGui import (
    QColor,
    QHelpEvent,
    QPainter,
    QPaintEvent,
    QTextBlock,
    QTextCursor,
)
from PySide6.QtWidgets import QPlainTextEdit, QToolTip

from crdt_sync import CRDTTextHandler, Delete, Insert, Retain, TextEvent

from .overlay import ViewportOverlay

__all__ = [
    "AUTHORS_NAME",
    "Author",
    "AuthorRuns",
    "AuthorshipOverlay",
    "author_entry",
    "describe_author",
    "wash",
]

#: The shared map holding ``peer id -> {"name", "colour"}``.
AUTHORS_NAME = "authors"

#: How much of the author's colour the wash keeps (the rest is white).
WASH_STRENGTH = 0.28


@dataclass(frozen=True, slots=True)
class Author:
    """A text author as shown: peer id, name and presence colour (``#rrggbb``)."""

    peer_id: str
    name: str
    colour: str


def author_entry(value: object) -> tuple[str, str] | None:
    """``(name, colour)`` from an ``"authors"`` map value, or None if malformed.

    The map is shared: its values are remote input, checked here.
    """
    if not isinstance(value, Mapping):
        return None
    name, colour = value.get("name"), value.get("colour")
    if not isinstance(name, str) or not name or not isinstance(colour, str):
        return None
    if not QColor.isValidColorName(colour) or not colour.startswith("#"):
        return None
    return name[:40], colour


def wash(colour: str) -> QColor:
    """The light background for ``colour``: ``WASH_STRENGTH`` of it over white."""
    base = QColor(colour)
    keep = WASH_STRENGTH

    def channel(value: int) -> int:
        return round(255 - (255 - value) * keep)

    return QColor(channel(base.red()), channel(base.green()), channel(base.blue()))


def describe_author(author: Author, stamp: int | None) -> str:
    """The tooltip text: the author's name and the edit's local time."""
    if stamp is None:
        return f"{author.name}\n(time of the edit not kept here)"
    when = _dt.datetime.fromtimestamp((stamp >> 16) / 1000)
    return f"{author.name}\n{when:%Y-%m-%d %H:%M:%S}"


Run = tuple[int, int, str, int]

#: An inserted run longer than this whose ids are not consecutive reloads all runs.
_MAX_WALK = 256


class _Reload(Exception):
    """An edit the incremental update does not follow: reload every run."""


class AuthorRuns:
    """The text's ``(start, length, peer, counter)`` runs, kept current edit by edit.

    Loaded from ``CRDTTextHandler.id_runs()`` on first use (one pass over the
    text), then updated from each ``TextEvent`` delta: a keystroke costs a
    bisection, one id lookup and a shift of the later starts, not a new pass
    over a 100,000-character document. :meth:`suspend` stops following (while
    the view is off) and the next use loads afresh.
    """

    def __init__(self, text: CRDTTextHandler) -> None:
        self._text = text
        self._loaded = False
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.peers: list[str] = []
        self.counters: list[int] = []
        self._subscription = text.observe(self._on_event)

    def close(self) -> None:
        """Stop following the text."""
        self._subscription.cancel()
        self.suspend()

    def suspend(self) -> None:
        """Forget the runs (and stop updating them) until they are used again."""
        self._loaded = False
        self.starts, self.lengths, self.peers, self.counters = [], [], [], []

    def _ensure(self) -> None:
        if not self._loaded:
            runs = self._text.id_runs()
            self.starts = [r[0] for r in runs]
            self.lengths = [r[1] for r in runs]
            self.peers = [r[2] for r in runs]
            self.counters = [r[3] for r in runs]
            self._loaded = True

    def runs(self) -> list[Run]:
        """Every run, in text order."""
        self._ensure()
        return list(zip(self.starts, self.lengths, self.peers, self.counters, strict=True))

    def index_at(self, position: int) -> int:
        """The index of the run holding code point ``position`` (or the run before)."""
        self._ensure()
        return max(0, bisect.bisect_right(self.starts, position) - 1)

    def run_at(self, position: int) -> Run | None:
        """The run holding the character at code point ``position``."""
        self._ensure()
        i = bisect.bisect_right(self.starts, position) - 1
        if i < 0 or position >= self.starts[i] + self.lengths[i]:
            return None
        return self.starts[i], self.lengths[i], self.peers[i], self.counters[i]

    # -- following edits --------------------------------------------------------
    def _on_event(self, event: TextEvent) -> None:
        if not self._loaded:
            return
        try:
            position = 0
            for op in event.delta:
                if isinstance(op, Retain):
                    position += op.count
                elif isinstance(op, Delete):
                    self._delete(position, op.count)
                elif isinstance(op, Insert):
                    count = len(op.content)
                    self._insert(position, self._inserted_runs(position, count))
                    position += count
        except (_Reload, IndexError, KeyError, ValueError):
            self.suspend()

    def _id_at(self, position: int) -> tuple[str, int]:
        item = self._text.sticky_index(position, 0).item
        if item is None:
            raise _Reload
        return item[0], item[1]

    def _inserted_runs(self, position: int, count: int) -> list[tuple[int, str, int]]:
        """``(length, peer, counter)`` runs for the ``count`` characters now at ``position``."""
        first = self._id_at(position)
        last = self._id_at(position + count - 1)
        if first[0] == last[0] and last[1] - first[1] == count - 1:
            return [(count, first[0], first[1])]
        if count > _MAX_WALK:
            raise _Reload
        runs: list[tuple[int, str, int]] = []
        for offset in range(count):
            peer, counter = self._id_at(position + offset)
            if runs and runs[-1][1] == peer and runs[-1][2] + runs[-1][0] == counter:
                runs[-1] = (runs[-1][0] + 1, peer, runs[-1][2])
            else:
                runs.append((1, peer, counter))
        return runs

    def _split(self, position: int) -> int:
        """Make a run start at ``position``; return its index (``len`` at the end)."""
        starts = self.starts
        i = bisect.bisect_right(starts, position) - 1
        if i < 0:
            return 0
        offset = position - starts[i]
        if offset == 0:
            return i
        if offset >= self.lengths[i]:
            return i + 1
        starts.insert(i + 1, position)
        self.lengths.insert(i + 1, self.lengths[i] - offset)
        self.peers.insert(i + 1, self.peers[i])
        self.counters.insert(i + 1, self.counters[i] + offset)
        self.lengths[i] = offset
        return i + 1

    def _shift(self, index: int, by: int) -> None:
        tail = self.starts[index:]
        self.starts[index:] = [start + by for start in tail]

    def _join(self, index: int) -> None:
        """Join run ``index`` into the run before it when its ids continue that run's."""
        if 0 < index < len(self.starts):
            before = index - 1
            if (
                self.peers[before] == self.peers[index]
                and self.counters[before] + self.lengths[before] == self.counters[index]
            ):
                self.lengths[before] += self.lengths[index]
                for column in (self.starts, self.lengths, self.peers, self.counters):
                    del column[index]

    def _delete(self, position: int, count: int) -> None:
        i = self._split(position)
        j = self._split(position + count)
        for column in (self.starts, self.lengths, self.peers, self.counters):
            del column[i:j]
        self._shift(i, -count)
        self._join(i)

    def _insert(self, position: int, runs: list[tuple[int, str, int]]) -> None:
        i = self._split(position)
        total = sum(length for length, _, _ in runs)
        self._shift(i, total)
        start = position
        for k, (length, peer, counter) in enumerate(runs):
            self.starts.insert(i + k, start)
            self.lengths.insert(i + k, length)
            self.peers.insert(i + k, peer)
            self.counters.insert(i + k, counter)
            start += length
        # Typing continues its author's run: keep one run, not one per keystroke
        # (the paint walks the runs on the lines it washes).
        self._join(i + len(runs))
        self._join(i)


class AuthorshipOverlay(ViewportOverlay):
    """Paints author colours behind ``editor``'s visible text (when enabled).

    :meth:`set_source` gives it the text's :class:`AuthorRuns`, ``author_of(peer)``
    (name and colour), ``stamp_of((peer, counter))`` (an edit's clock stamp)
    and the text binding's position conversions.
    """

    def __init__(self, editor: QPlainTextEdit) -> None:
        super().__init__(editor)
        self._enabled = False
        self._runs: AuthorRuns | None = None
        self._author_of: Callable[[str], Author] = lambda peer: Author(peer, peer[:8], "#808080")
        self._stamp_of: Callable[[tuple[str, int]], int | None] = lambda _op: None
        self._to_qt: Callable[[int], int] = int
        self._from_qt: Callable[[int], int] = int
        self._colours: dict[str, QColor] = {}
        self.hide()

    # -- wiring ------------------------------------------------------------------
    def set_source(
        self,
        runs: AuthorRuns,
        author_of: Callable[[str], Author],
        stamp_of: Callable[[tuple[str, int]], int | None],
        to_qt: Callable[[int], int],
        from_qt: Callable[[int], int],
    ) -> None:
        """Follow another text (a new session): everything is recomputed."""
        if self._runs is not None and self._runs is not runs:
            self._runs.suspend()
        self._runs = runs
        if not self._enabled:
            runs.suspend()
        self._author_of = author_of
        self._stamp_of = stamp_of
        self._to_qt = to_qt
        self._from_qt = from_qt
        self.authors_changed()

    @property
    def enabled(self) -> bool:
        """Whether authorship is shown."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Show or hide the author colours (View > Show Authors)."""
        if enabled == self._enabled:
            return
        self._enabled = enabled
        self.setVisible(enabled)
        if not enabled and self._runs is not None:
            self._runs.suspend()  # no cost per keystroke while hidden
        self.update()

    def authors_changed(self) -> None:
        """Names or colours changed: look them up again."""
        self._colours.clear()
        if self._enabled:
            self.update()

    # -- queries (tooltips, tests) ---------------------------------------------------
    def run_at(self, index: int) -> Run | None:
        """The run holding the character at code-point ``index``."""
        return None if self._runs is None else self._runs.run_at(index)

    def author_at(self, qt_position: int) -> tuple[Author, int | None] | None:
        """The author of the character at UTF-16 ``qt_position`` and the edit's stamp."""
        run = self.run_at(self._from_qt(qt_position))
        if run is None:
            return None
        start, _length, peer, counter = run
        offset = self._from_qt(qt_position) - start
        return self._author_of(peer), self._stamp_of((peer, counter + offset))

    def colour_at(self, qt_position: int) -> QColor | None:
        """The background painted behind the character at ``qt_position`` (None: none)."""
        found = self.author_at(qt_position)
        return None if found is None else self._wash(found[0].peer_id)

    def tooltip_at(self, qt_position: int) -> str | None:
        """The tooltip shown over the character at ``qt_position``."""
        found = self.author_at(qt_position)
        return None if found is None else describe_author(*found)

    def _wash(self, peer: str) -> QColor:
        colour = self._colours.get(peer)
        if colour is None:
            colour = wash(self._author_of(peer).colour)
            self._colours[peer] = colour
        return colour

    # -- Qt ----------------------------------------------------------------------------
    def follows_repaints(self) -> bool:
        return self._enabled

    def viewport_event(self, event: QEvent) -> bool:
        """Answer tooltip requests over the text."""
        if self._enabled and isinstance(event, QHelpEvent) and event.type() == QEvent.Type.ToolTip:
            text = self._tooltip_for_point(event.pos())
            if text:
                QToolTip.showText(event.globalPos(), text, self._editor.viewport())
            else:
                QToolTip.hideText()
            return True
        return False

    def _tooltip_for_point(self, point: QPoint) -> str | None:
        cursor = self._editor.cursorForPosition(point)
        position = cursor.position()
        # cursorForPosition gives the nearest gap; the character under the
        # mouse is the one before it when the point is past its middle.
        rect = self._editor.cursorRect(cursor)
        if point.x() < rect.left() and position > 0:
            position -= 1
        limit = self._editor.document().characterCount() - 1
        if position >= limit:
            return None
        return self.tooltip_at(position)

    def paintEvent(self, event: QPaintEvent) -> None:
        """A light wash of each author's colour behind the visible characters."""
        if not self._enabled:
            return
        editor = self._editor
        block = editor.firstVisibleBlock()
        if not block.isValid() or self._runs is None:
            return
        offset = editor.contentOffset()
        area = event.rect()
        height = min(self.height(), area.bottom() + 1)
        # One position conversion per paint: the blocks below follow by their
        # own text (code points = len(str); UTF-16 only inside one block).
        start = self._from_qt(block.position())
        painter = QPainter(self)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Multiply)
        while block.isValid():
            geometry = editor.blockBoundingGeometry(block).translated(offset)
            if geometry.top() > height:
                break
            text = block.text()
            if block.isVisible() and text and geometry.bottom() >= area.top():
                self._paint_block(
                    painter, block, text, start, geometry.left(), geometry.top(), area
                )
            start += len(text) + 1  # the block separator is one "\n"
            block = block.next()
        painter.end()

    def _paint_block(
        self,
        painter: QPainter,
        block: QTextBlock,
        text: str,
        first: int,
        left: float,
        top: float,
        area: QRect,
    ) -> None:
        """Wash the lines of ``block`` inside ``area``: one fill per author per line."""
        layout = block.layout()
        lines = []
        for n in range(layout.lineCount()):
            line = layout.lineAt(n)
            y = top + line.y()
            if y + line.height() >= area.top() and y <= area.bottom():
                lines.append(line)
        if not lines:
            return
        runs = self._runs
        assert runs is not None  # checked by paintEvent
        ascii_only = text.isascii()
        # The code points the painted lines cover, then the author spans there,
        # neighbouring runs of one author joined (one colour change per author).
        if ascii_only:
            lo_cp = lines[0].textStart()
            hi_cp = lines[-1].textStart() + lines[-1].textLength()
        else:
            lo_cp, hi_cp = 0, len(text)
        spans: list[tuple[int, int, str]] = []
        starts, lengths, peers = runs.starts, runs.lengths, runs.peers
        i = runs.index_at(first + lo_cp)
        while i < len(starts) and starts[i] < first + hi_cp:
            lo = max(starts[i], first + lo_cp) - first
            hi = min(starts[i] + lengths[i], first + hi_cp) - first
            peer = peers[i]
            i += 1
            if lo >= hi:
                continue
            if spans and spans[-1][2] == peer and spans[-1][1] == lo:
                spans[-1] = (spans[-1][0], hi, peer)
            else:
                spans.append((lo, hi, peer))
        for lo, hi, peer in spans:
            q_lo, q_hi = (lo, hi) if ascii_only else (_units(text[:lo]), _units(text[:hi]))
            colour = self._wash(peer)
            for line in lines:
                line_start = line.textStart()
                line_end = line_start + line.textLength()
                a, b = max(q_lo, line_start), min(q_hi, line_end)
                if a >= b:
                    continue
                x1 = _x(line.cursorToX(a))
                x2 = _x(line.cursorToX(b))
                painter.fillRect(
                    QRectF(left + x1, top + line.y(), max(x2 - x1, 1.0), line.height()), colour
                )


def _units(text: str) -> int:
    """UTF-16 length of ``text`` (Qt's offsets)."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _x(value: object) -> float:
    """``QTextLine.cursorToX`` returns ``(x, position)`` in PySide6; accept a bare x too."""
    if isinstance(value, tuple):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def cursor_at(editor: QPlainTextEdit, position: int) -> QTextCursor:
    """A cursor at UTF-16 ``position`` in ``editor`` (clamped), for callers and tests."""
    cursor = QTextCursor(editor.document())
    cursor.setPosition(max(0, min(position, editor.document().characterCount() - 1)))
    return cursor
