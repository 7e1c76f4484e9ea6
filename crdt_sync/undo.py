"""Per-user undo and redo: undo only this peer's own edits, whatever others did since.

Each local transaction on a tracked handler leaves *inverse records* (written by
the handlers as they edit: "delete these element ids", "re-insert this text
where its tombstone is", "set this list item back to that value"...). Records
are addressed by element ids, never by indexes, so remote edits that arrived in
between cannot make an undo hit the wrong place. Running a step's records
produces the records of its own inverse, which become the redo (or undo) step.

Undo takes back only this peer's own *effect*. A value this peer wrote (a list
item's value or position, a map key) is put back only while a write of this
peer is still the one that wins: values are last-writer-wins by stamp, so a
collaborator's later write has the larger stamp and wins, and then the undo
leaves their value alone (and an item a collaborator deleted stays deleted).
Text is safe by construction: undo deletes only this peer's own characters by
id and restores deleted ones next to their own tombstones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .document import CRDTDocument
from .handlers import Handler

Record = tuple[Any, ...]


class UndoManager:
    """Undo / redo of the local edits made to ``handlers`` of ``doc``.

    Edits closer together than ``capture_timeout_ms`` form one step;
    :meth:`stop_capturing` forces the next edit into a new step. Remote edits
    are never undone. Transactions whose origin is in ``ignored_origins`` are
    not captured.
    """

    def __init__(
        self,
        doc: CRDTDocument,
        handlers: Iterable[Handler],
        capture_timeout_ms: int = 500,
        *,
        ignored_origins: Iterable[object] = (),
        max_steps: int = 1000,
    ) -> None:
        self._doc = doc
        # Keyed by (name, kind), as the records address them: a text "x" and a
        # list "x" are two objects.
        self._handlers: dict[tuple[str, str], Handler] = {}
        for handler in handlers:
            if handler.doc is not doc:
                raise ValueError(f"handler {handler.name!r} belongs to another document")
            self._handlers[(handler.name, handler.kind)] = handler
        self.capture_timeout_ms = capture_timeout_ms
        self._ignored = set(map(id, ignored_origins))
        self._max_steps = max_steps
        self._undo: list[list[Record]] = []
        self._redo: list[list[Record]] = []
        self._last_time = 0.0
        self._capture_open = False
        self._running: str | None = None
        # Per handler key: (peer, start, stop, new peer, new start) for restored text.
        self._moved: dict[tuple[str, str], list[tuple[str, int, int, str, int]]] = {}
        doc._undo_tracking += 1
        self._sub = doc._on_local_step.subscribe(self._on_step)

    def close(self) -> None:
        """Stop tracking (the stacks are kept but no longer grow)."""
        if self._sub.active:
            self._sub.cancel()
            self._doc._undo_tracking -= 1

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
        self._moved.clear()
        self._capture_open = False

    def stop_capturing(self) -> None:
        """Make the next edit start a new undo step."""
        self._capture_open = False

    def _stamp(self, record: Record) -> Any:
        """The stamp ``(time, peer, counter)`` of the write that wins ``record``'s value now."""
        kind = record[0]
        state: Any = self._handlers[record[1]]._state
        if kind == "list_set":
            return state.elems[record[2]][1]
        if kind == "list_move":
            return state.elems[record[2]][3]
        if kind == "map_restore":
            entry = state.entries.get(record[2])
            return None if entry is None else entry[0]
        return None

    def _on_step(self, step: tuple[object, list[Record]]) -> None:
        origin, records = step
        records = [r for r in records if r[1] in self._handlers]
        if not records:
            return
        if self._running == "undo":
            self._redo.append(records)
            return
        if self._running == "redo":
            self._undo.append(records)
            return
        if id(origin) in self._ignored:
            return
        now = time.monotonic()
        if (
            self._capture_open
            and self._undo
            and (now - self._last_time) * 1000 < self.capture_timeout_ms
        ):
            self._undo[-1].extend(records)
        else:
            self._undo.append(records)
            if len(self._undo) > self._max_steps:
                del self._undo[0]
        self._last_time = now
        self._capture_open = True
        self._redo.clear()

    def undo(self) -> bool:
        """Revert the latest own step; returns False if there was none."""
        return self._run(self._undo, "undo")

    def redo(self) -> bool:
        """Re-apply the latest undone step; returns False if there was none."""
        return self._run(self._redo, "redo")

    def _run(self, stack: list[list[Record]], mode: str) -> bool:
        if not stack:
            return False
        records = stack.pop()
        self._running = mode
        self._capture_open = False
        try:
            with self._doc.transaction(origin=self):
                for record in reversed(records):
                    if self._still_ours(record):
                        self._execute(record)
        finally:
            self._running = None
        return True

    def _still_ours(self, record: Record) -> bool:
        """Whether ``record`` may run: no collaborator's write has won its value since."""
        kind = record[0]
        if kind not in ("list_set", "list_move", "map_restore"):
            return True
        stamp = self._stamp(record)
        if stamp is not None and stamp[1] != self._doc._peer:
            return False  # a collaborator's later write wins now: leave it
        if kind == "list_set":
            # An item a collaborator deleted after this write stays deleted.
            rec = self._handlers[record[1]]._state.elems[record[2]]
            if rec[4] is not None and rec[1] <= rec[4]:
                return False
        return True

    def _follow(
        self, key: tuple[str, str], ranges: tuple[tuple[str, int, int], ...]
    ) -> tuple[tuple[str, int, int], ...]:
        """``ranges`` plus every range their text was restored as since (transitively).

        Undoing a delete brings the text back with new ids; a later step that
        deletes the original ids must delete the restored copies too.
        """
        moved = self._moved.get(key)
        if not moved:
            return ranges
        out = list(ranges)
        work = list(ranges)
        while work:
            peer, ctr, n = work.pop()
            for mpeer, start, stop, new_peer, new_start in moved:
                if mpeer == peer and start < ctr + n and ctr < stop:
                    lo, hi = max(start, ctr), min(stop, ctr + n)
                    target = (new_peer, new_start + lo - start, hi - lo)
                    if target not in out:
                        out.append(target)
                        work.append(target)
        return tuple(out)

    def _execute(self, record: Record) -> None:
        kind, key = record[0], record[1]
        # ``key`` is the handler's (name, kind): the record kind agrees with it.
        handler: Any = self._handlers[key]
        if kind == "text_delete":
            handler._delete_ids(self._follow(key, record[2]))
        elif kind == "text_restore":
            for peer, ctr, n, new_peer, new_ctr in handler._restore(record[2]):
                self._moved.setdefault(key, []).append((peer, ctr, ctr + n, new_peer, new_ctr))
        elif kind == "list_delete":
            handler._delete_elems(list(record[2]))
        elif kind == "list_restore":
            handler._restore(record[2])
        elif kind == "list_set":
            handler._set(record[2], record[3])
        elif kind == "list_move":
            elem, old_pos = record[2], record[3]
            seq = handler._state.seq
            target = seq.visible_index(*old_pos)
            current = handler._state.elems[elem][2]
            if seq.is_visible(*current) and seq.visible_index(*current) < target:
                target -= 1
            handler._move_elem(elem, target)
        elif kind == "map_restore":
            key, present, old = record[2], record[3], record[4]
            if present:
                handler.set(key, old)
            elif key in handler:
                handler.delete(key)
