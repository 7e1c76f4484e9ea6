"""Draw collaborators' carets and selections in a ``QPlainTextEdit``.

A transparent overlay on the viewport paints selections (translucent), carets
and name labels. It deliberately avoids ``setExtraSelections``: PySide6 6.12
corrupts reference counts when it is called repeatedly (measured here: a
"deallocating None" abort after a few hundred remote edits). Positions
arrive as Qt UTF-16 offsets: the session adapter resolves each collaborator's
stable positions (``StickyIndex``) against the CRDT and converts them through
``editor.positions`` via the text binding, so they stay in place as text
changes around them.

Repaints are local: a caret that moves, a label that fades or a hovered
caret repaints the area the collaborators were last drawn in and the area
they are drawn in now, never the whole viewport (the overlay is transparent,
so a full repaint here repaints the whole editor and the author colours
below it, on every remote keystroke).

Name labels fade: a label shows while its collaborator's caret moves and for
``LABEL_SHOW_S`` seconds after, then fades out over ``LABEL_FADE_S`` so it does
not cover the neighbouring line; it comes back when the caret moves again or
when the mouse hovers near the caret. The caret itself always shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, Qt, QTimer
from PySide6.QtGui import (
    QColor,
    QFontMetrics,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QRegion,
    QTextCursor,
)
from PySide6.QtWidgets import QPlainTextEdit

from .overlay import ViewportOverlay

__all__ = ["RemoteCursor", "RemoteCursorOverlay"]


@dataclass(frozen=True, slots=True)
class RemoteCursor:
    """One collaborator's caret (``head``) and selection (``anchor``..``head``), UTF-16."""

    peer_id: str
    name: str
    colour: str
    anchor: int
    head: int


class RemoteCursorOverlay(ViewportOverlay):
    """Paints :class:`RemoteCursor` carets and labels over ``editor``'s viewport."""

    #: Seconds a label stays fully visible after its caret last moved.
    LABEL_SHOW_S = 3.0
    #: Seconds the label then takes to fade out.
    LABEL_FADE_S = 0.6
    #: How near (px) the mouse must come to a caret to show its label again.
    HOVER_PX = 12

    def __init__(self, editor: QPlainTextEdit, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(editor)
        self._cursors: list[RemoteCursor] = []
        self._clock = clock
        self._moved_at: dict[str, float] = {}
        self._hovered: str | None = None
        # Where the collaborators were last painted (what a change must wipe).
        self._drawn = QRegion()
        self._opacities: list[float] = []  # the labels' opacities at the last fade tick
        self._fade_timer = QTimer(self)
        self._fade_timer.setInterval(100)
        self._fade_timer.timeout.connect(self._on_fade_tick)
        editor.viewport().setMouseTracking(True)
        self.show()

    @property
    def cursors(self) -> list[RemoteCursor]:
        """The collaborators drawn now."""
        return list(self._cursors)

    def set_cursors(self, cursors: list[RemoteCursor]) -> None:
        """Replace the drawn collaborators (offsets are clamped when painting)."""
        if cursors == self._cursors:
            return
        before = {c.peer_id: (c.anchor, c.head) for c in self._cursors}
        now = self._clock()
        for remote in cursors:
            if before.get(remote.peer_id) != (remote.anchor, remote.head):
                self._moved_at[remote.peer_id] = now
        self._cursors = list(cursors)
        present = {c.peer_id for c in cursors}
        self._moved_at = {k: v for k, v in self._moved_at.items() if k in present}
        self._start_fading()
        self._repaint_cursors()

    def _repaint_cursors(self) -> None:
        """Repaint where the collaborators were drawn and where they are drawn now."""
        self.update(self._drawn.united(self._footprint()))

    def _footprint(self) -> QRegion:
        """The area :meth:`paintEvent` paints for the current collaborators."""
        region = QRegion()
        metrics = QFontMetrics(self.font())
        limit = self._editor.document().characterCount() - 1
        for remote in self._cursors:
            if remote.anchor != remote.head:
                start, end = sorted((remote.anchor, remote.head))
                for area in self._selection_rects(max(0, start), min(end, limit)):
                    region = region.united(area.toAlignedRect().adjusted(-1, -1, 1, 1))
            rect = self._caret_rect(remote)
            region = region.united(QRect(rect.left() - 1, rect.top(), 4, rect.height()))
            if self.label_opacity(remote.peer_id) > 0:
                region = region.united(self._label_rect(remote, rect, metrics).adjusted(0, 0, 1, 1))
        return region

    @staticmethod
    def _label_rect(remote: RemoteCursor, caret: QRect, metrics: QFontMetrics) -> QRect:
        label = remote.name or remote.peer_id[:8]
        width = metrics.horizontalAdvance(label) + 6
        height = metrics.height()
        top = caret.top() - height if caret.top() >= height else caret.bottom()
        return QRect(caret.left(), top, width, height)

    def label_opacity(self, peer_id: str) -> float:
        """How visible ``peer_id``'s name label is now: 1 shown, 0 hidden."""
        if peer_id == self._hovered:
            return 1.0
        moved = self._moved_at.get(peer_id)
        if moved is None:
            return 0.0
        idle = self._clock() - moved
        if idle <= self.LABEL_SHOW_S:
            return 1.0
        return max(0.0, 1.0 - (idle - self.LABEL_SHOW_S) / self.LABEL_FADE_S)

    def _start_fading(self) -> None:
        if not self._fade_timer.isActive():
            self._fade_timer.start()

    def _on_fade_tick(self) -> None:
        opacities = [self.label_opacity(c.peer_id) for c in self._cursors]
        if opacities != self._opacities:  # nothing to repaint while labels hold still
            self._opacities = opacities
            self._repaint_cursors()
        if not any(opacity > 0 for opacity in opacities):
            self._fade_timer.stop()

    def _caret_rect(self, remote: RemoteCursor) -> QRect:
        limit = self._editor.document().characterCount() - 1
        cursor = QTextCursor(self._editor.document())
        cursor.setPosition(max(0, min(remote.head, limit)))
        return self._editor.cursorRect(cursor)

    def hover(self, point: QPoint) -> None:
        """The mouse is at ``point`` (viewport coordinates): show the label of a caret near it."""
        hovered = None
        for remote in self._cursors:
            near = self._caret_rect(remote).adjusted(
                -self.HOVER_PX, -self.HOVER_PX, self.HOVER_PX, self.HOVER_PX
            )
            if near.contains(point):
                hovered = remote.peer_id
                break
        if hovered != self._hovered:
            if self._hovered is not None:
                # Leaving a caret: its label fades from now on.
                self._moved_at[self._hovered] = self._clock()
                self._start_fading()
            self._hovered = hovered
            self._repaint_cursors()

    def viewport_event(self, event: QEvent) -> bool:
        """Follow the mouse, to show a hovered caret's label."""
        if isinstance(event, QMouseEvent) and event.type() == QEvent.Type.MouseMove:
            self.hover(event.position().toPoint())
        elif event.type() == QEvent.Type.Leave:
            self.hover(QPoint(-10_000, -10_000))
        return False

    def paintEvent(self, event: QPaintEvent) -> None:
        """A 2 px caret and a small name tag above it for each collaborator."""
        # What this paint leaves on screen: the old drawing outside its area
        # (not wiped), plus everything drawn now (as :meth:`_footprint` counts it).
        drawn = self._drawn.subtracted(event.region())
        if not self._cursors:
            self._drawn = drawn
            return
        painter = QPainter(self)
        metrics = QFontMetrics(self.font())
        limit = self._editor.document().characterCount() - 1
        for remote in self._cursors:
            if remote.anchor != remote.head:
                start, end = sorted((remote.anchor, remote.head))
                shade = QColor(remote.colour)
                shade.setAlpha(60)
                for area in self._selection_rects(max(0, start), min(end, limit)):
                    painter.fillRect(area, shade)
                    drawn = drawn.united(area.toAlignedRect().adjusted(-1, -1, 1, 1))
        for remote in self._cursors:
            rect = self._caret_rect(remote)
            colour = QColor(remote.colour)
            painter.fillRect(QRect(rect.left(), rect.top(), 2, rect.height()), colour)
            drawn = drawn.united(QRect(rect.left() - 1, rect.top(), 4, rect.height()))
            opacity = self.label_opacity(remote.peer_id)
            if opacity <= 0:
                continue
            painter.setOpacity(opacity)
            label = remote.name or remote.peer_id[:8]
            tag = self._label_rect(remote, rect, metrics)
            painter.fillRect(tag, colour)
            drawn = drawn.united(tag.adjusted(0, 0, 1, 1))
            painter.setPen(QColor("white") if colour.lightness() < 160 else QColor("black"))
            painter.drawText(tag.adjusted(3, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, label)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setOpacity(1.0)
        painter.end()
        self._drawn = drawn

    def _selection_rects(self, start: int, end: int) -> list[QRectF]:
        """Rectangles covering ``start``..``end`` on the visible lines only."""
        editor = self._editor
        offset = editor.contentOffset()
        height = self.height()
        block = editor.cursorForPosition(QPoint(0, 0)).block()
        if block.position() < start:
            block = editor.document().findBlock(start)
        rects: list[QRectF] = []
        while block.isValid() and block.position() <= end:
            geometry = editor.blockBoundingGeometry(block).translated(offset)
            if geometry.top() > height:
                break
            layout = block.layout()
            base = block.position()
            for number in range(layout.lineCount()):
                line = layout.lineAt(number)
                line_start = base + line.textStart()
                line_end = line_start + line.textLength()
                first, last = max(start, line_start), min(end, line_end)
                if first > last or (first == last and first != start):
                    continue
                left = _x(line.cursorToX(first - base))
                right = _x(line.cursorToX(last - base))
                if last == line_end and end > line_end:
                    right += 4  # show that the selection runs on past the line end
                rects.append(
                    QRectF(
                        geometry.left() + left,
                        geometry.top() + line.y(),
                        max(right - left, 1.0),
                        line.height(),
                    )
                )
            block = block.next()
        return rects

    def label_position(self, peer_id: str) -> QPoint | None:
        """Where ``peer_id``'s caret is drawn (viewport coordinates), for tests."""
        for remote in self._cursors:
            if remote.peer_id == peer_id:
                cursor = QTextCursor(self._editor.document())
                cursor.setPosition(remote.head)
                return self._editor.cursorRect(cursor).topLeft()
        return None


def _x(value: object) -> float:
    """``QTextLine.cursorToX`` returns ``(x, position)`` in PySide6; accept a bare x too."""
    if isinstance(value, tuple):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]
