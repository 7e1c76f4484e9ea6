"""Handlers: the Pythonic API over one named state of a document.

A handler turns a call such as ``text.insert(3, "abc")`` into an op: it checks
the arguments (nothing changes when they are wrong), applies the op to the
state at once, and records it in the document's open transaction (opening and
committing one around the call if none is open).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, overload

from .changes import (
    KIND_LIST,
    KIND_MAP,
    KIND_TEXT,
    LIST_DELETE,
    LIST_INSERT,
    LIST_MOVE,
    LIST_SET,
    MAP_DELETE,
    MAP_SET,
    TEXT_DELETE,
    TEXT_INSERT,
)
from .codec import check_json
from .document import CRDTDocument
from .events import ListEvent, MapEvent, Observers, Subscription, TextEvent
from .sequence import D, N
from .state import ListState, MapState, TextState
from .sticky import StickyIndex

_MISSING: Any = object()


class Handler:
    """Base of the handlers: a name, a kind, observers, and the bound state."""

    kind = ""

    def __init__(self, doc: CRDTDocument, name: str) -> None:
        if not isinstance(doc, CRDTDocument):
            raise TypeError(f"expected a CRDTDocument, not {type(doc).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError("a handler name must be a non-empty str")
        self._doc = doc
        # The document's transaction API: the only part of it a handler edits through.
        self._tx = doc._tx
        self._name = name
        # The state's identity in the document: a name used with another kind
        # is another object.
        self._key = (name, self.kind)
        self._observers: Observers[Any] = Observers()
        doc.register_handler(self)

    def _bind(self, state: Any) -> None:
        self._state = state

    @property
    def name(self) -> str:
        return self._name

    @property
    def doc(self) -> CRDTDocument:
        return self._doc

    def observe(self, callback: Callable[[Any], None]) -> Subscription:
        """Call ``callback`` with an event after each transaction or import that changed this."""
        return self._observers.subscribe(callback)

    def unobserve(self, subscription: Subscription) -> None:
        subscription.cancel()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, {self.value!r})"

    @property
    def value(self) -> Any:
        return self._state.value()


def _check_index(index: object, length: int, allow_end: bool) -> int:
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"index must be an int, not {type(index).__name__}")
    limit = length if allow_end else length - 1
    if not 0 <= index <= limit:
        raise IndexError(f"index {index} out of range 0..{limit}")
    return index


def _check_count(count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    return count


class CRDTTextHandler(Handler):
    """A shared text. Indexes count Unicode code points (Python ``str`` indexes)."""

    kind = KIND_TEXT
    _state: TextState

    def observe(self, callback: Callable[[TextEvent], None]) -> Subscription:
        return self._observers.subscribe(callback)

    @property
    def value(self) -> str:
        return self._state.value()

    def __str__(self) -> str:
        return self._state.value()

    def __len__(self) -> int:
        return self._state.length

    def insert(self, index: int, text: str) -> None:
        """Insert ``text`` so it starts at ``index`` (0 <= index <= len)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        state = self._state
        # The loaded sequence, or the property that loads it (a call per edit saved).
        seq = state._seq if state._lazy is None else state.seq
        if type(index) is not int or not 0 <= index <= seq.length:
            _check_index(index, seq.length, True)
        if not text:
            return
        tx = self._tx
        outer = not tx.depth
        if outer:
            tx.begin()
        try:
            ctr = tx.next
            left, right = seq.local_insert(index, tx.peer, ctr, text)
            tx.push((TEXT_INSERT, self._name, left, right, text), len(text))
            if self._observers._subs:  # (not Observers.__bool__: a call per edit)
                builder = tx.builder(self._key)
                if builder is not None:
                    builder.splice(index, 0, text)
            if tx.undo_tracking:
                tx.undo_records.append(("text_delete", self._key, ((tx.peer, ctr, len(text)),)))
        finally:
            if outer:
                tx.end()

    def delete(self, index: int, count: int) -> None:
        """Delete ``count`` characters from ``index`` (the range must lie inside the text)."""
        seq = self._state.seq
        _check_count(count)
        _check_index(index, seq.length, True)
        if index + count > seq.length:
            raise IndexError(f"delete of {count} at {index} runs past the end ({seq.length})")
        if not count:
            return
        tx = self._tx
        outer = not tx.depth
        if outer:
            tx.begin()
        try:
            pieces = seq.local_delete(index, count)
            tx.push((TEXT_DELETE, self._name, tuple((p, c, n) for p, c, n, _ in pieces)), 1)
            if self._observers._subs:  # (not Observers.__bool__: a call per edit)
                builder = tx.builder(self._key)
                if builder is not None:
                    builder.splice(index, count, "")
            if tx.undo_tracking:
                tx.undo_records.append(("text_restore", self._key, tuple(pieces)))
        finally:
            if outer:
                tx.end()

    def _delete_ids(self, ranges: tuple[tuple[str, int, int], ...]) -> None:
        """Delete whichever of the elements in ``ranges`` are still visible (undo)."""
        seq = self._state.seq
        tx = self._tx
        targets: list[tuple[str, int, int]] = []
        pieces: list[tuple[str, int, int, Any]] = []
        builder = tx.builder(self._key)
        tx.begin()
        try:
            for peer, ctr, n in ranges:
                end = ctr + n
                while ctr < end:
                    span, off = seq.locate(peer, ctr)
                    take = min(span[N] - off, end - ctr)
                    if not span[D]:
                        for vis, count, content in seq.set_deleted(peer, ctr, take, True, True):
                            targets.append((peer, ctr, count))
                            pieces.append((peer, ctr, count, content))
                            if builder is not None:
                                builder.splice(vis, count, "")
                    ctr += take
            if targets:
                tx.push((TEXT_DELETE, self._name, tuple(targets)), 1)
                if tx.undo_tracking:
                    tx.undo_records.append(("text_restore", self._key, tuple(pieces)))
        finally:
            tx.end()

    def _restore(
        self, pieces: tuple[tuple[str, int, int, Any], ...]
    ) -> list[tuple[str, int, int, str, int]]:
        """Insert deleted ``pieces`` again right after their own tombstones (undo).

        Anchoring each piece to its tombstone, not to a visible index, keeps
        pieces in their order even when several tombstones sit side by side.
        Returns ``(peer, counter, length, new peer, new counter)`` for each piece:
        the restored text has new ids, which later undo steps must follow.
        """
        moved: list[tuple[str, int, int, str, int]] = []
        seq = self._state.seq
        tx = self._tx
        builder = tx.builder(self._key)
        tx.begin()
        try:
            for peer, ctr, n, content in pieces:
                if not content:
                    continue
                new_ctr = tx.next
                moved.append((peer, ctr, n, tx.peer, new_ctr))
                left, right, index = seq.insert_after(
                    (peer, ctr + n - 1), tx.peer, new_ctr, content
                )
                tx.push((TEXT_INSERT, self._name, left, right, content), len(content))
                if builder is not None:
                    builder.splice(index, 0, content)
                if tx.undo_tracking:
                    tx.undo_records.append(
                        ("text_delete", self._key, ((tx.peer, new_ctr, len(content)),))
                    )
        finally:
            tx.end()
        return moved

    def id_runs(self) -> list[tuple[int, int, str, int]]:
        """Who wrote what: the visible text as ``(start, length, peer, counter)`` runs.

        Each run is ``length`` characters from index ``start``, typed by peer id
        ``peer`` as the consecutive op ids ``counter .. counter + length - 1``.
        Runs are in text order and cover the whole text; neighbouring runs can
        share a peer (typed apart, or with another's text deleted in between).
        Cost is one step per run-length span, not per character.
        :meth:`CRDTDocument.timestamp_of` gives a run's time::

            for start, length, peer, counter in text.id_runs():
                when = doc.timestamp_of((peer, counter))  # None if compacted
        """
        return self._state.id_runs()

    def sticky_index(self, index: int, assoc: int = 0) -> StickyIndex:
        """A position that follows the text around it as others edit.

        ``assoc >= 0`` sticks to the character at ``index`` (the position stays
        before it); ``assoc < 0`` to the character before ``index`` (stays after it).
        """
        seq = self._state.seq
        _check_index(index, seq.length, True)
        if assoc >= 0:
            if index == seq.length:
                return StickyIndex(None, assoc)
            return StickyIndex(seq.id_at(index), assoc)
        if index == 0:
            return StickyIndex(None, assoc)
        return StickyIndex(seq.id_at(index - 1), assoc)

    def resolve(self, sticky: StickyIndex) -> int | None:
        """The index ``sticky`` stands at now, or None if its character is unknown here."""
        seq = self._state.seq
        if sticky.item is None:
            return seq.length if sticky.assoc >= 0 else 0
        peer, ctr = sticky.item
        if not seq.contains(peer, ctr):
            return None
        vis = seq.visible_index(peer, ctr)
        if sticky.assoc >= 0:
            return vis
        return vis + (1 if seq.is_visible(peer, ctr) else 0)


class CRDTListHandler(Handler):
    """A shared list of JSON-compatible values with move and update."""

    kind = KIND_LIST
    _state: ListState

    def observe(self, callback: Callable[[ListEvent], None]) -> Subscription:
        return self._observers.subscribe(callback)

    @property
    def value(self) -> list[Any]:
        return self._state.value()

    def __len__(self) -> int:
        return self._state.seq.length

    def __iter__(self) -> Iterator[Any]:
        return iter(self._state.value())

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._state.value()[index]
        seq = self._state.seq
        if not isinstance(index, int):
            raise TypeError(f"list indices must be int or slice, not {type(index).__name__}")
        if index < 0:
            index += seq.length
        if not 0 <= index < seq.length:
            raise IndexError("list index out of range")
        return self._state.elems[self._state.elem_at(index)][0]

    def __delitem__(self, index: int) -> None:
        if index < 0:
            index += len(self)
        self.delete(index)

    def _stamp(self) -> tuple[int, str, int]:
        tx = self._tx
        return (tx.stamp, tx.peer, tx.next)

    def insert(self, index: int, value: Any) -> None:
        """Insert ``value`` so it lands at ``index`` (0 <= index <= len)."""
        self.insert_many(index, [value])

    def append(self, value: Any) -> None:
        self.insert_many(len(self), [value])

    def extend(self, values: list[Any]) -> None:
        self.insert_many(len(self), list(values))

    def insert_many(self, index: int, values: list[Any]) -> None:
        """Insert several values as one run starting at ``index``."""
        for v in values:
            check_json(v)
        state = self._state
        seq = state.seq
        _check_index(index, seq.length, True)
        if not values:
            return
        tx = self._tx
        tx.begin()
        try:
            peer = tx.peer
            ctr = tx.next
            ids = tuple((peer, ctr + i) for i in range(len(values)))
            for i, ident in enumerate(ids):
                stamp = (tx.stamp, peer, ctr + i)
                state.elems[ident] = [values[i], stamp, ident, stamp, None]
            left, right = seq.local_insert(index, peer, ctr, ids)
            tx.push((LIST_INSERT, self._name, left, right, tuple(values)), len(values))
            builder = tx.builder(self._key)
            if builder is not None:
                builder.splice(index, 0, list(values))
            if tx.undo_tracking:
                tx.undo_records.append(("list_delete", self._key, ids))
        finally:
            tx.end()

    def delete(self, index: int, count: int = 1) -> None:
        """Delete ``count`` items from ``index``."""
        state = self._state
        seq = state.seq
        _check_count(count)
        _check_index(index, seq.length, True)
        if index + count > seq.length:
            raise IndexError(f"delete of {count} at {index} runs past the end ({seq.length})")
        if not count:
            return
        tx = self._tx
        tx.begin()
        try:
            elems = [state.elem_at(i) for i in range(index, index + count)]
            self._delete_elems(elems)
        finally:
            tx.end()

    def _delete_elems(self, elems: list[tuple[str, int]]) -> None:
        state = self._state
        tx = self._tx
        targets = []
        restore = []
        for elem in elems:
            rec = state.elems[elem]
            if not state.alive(rec):
                continue
            targets.append((elem[0], elem[1], rec[1]))
            restore.append((elem, rec[0]))
        if not targets:
            return
        op = (LIST_DELETE, self._name, tuple(targets))
        state.apply(op, tx.peer, tx.next, tx.stamp, tx.builder(self._key))
        tx.push(op, 1)
        if tx.undo_tracking:
            tx.undo_records.append(("list_restore", self._key, tuple(restore)))

    def update(self, index: int, value: Any) -> None:
        """Replace the value at ``index``; the item keeps its identity."""
        check_json(value)
        state = self._state
        _check_index(index, state.seq.length, False)
        self._set(state.elem_at(index), value)

    def _set(self, elem: tuple[str, int], value: Any, record: bool = True) -> None:
        state = self._state
        tx = self._tx
        tx.begin()
        try:
            rec = state.elems[elem]
            old = rec[0]
            op = (LIST_SET, self._name, elem, value)
            state.apply(op, tx.peer, tx.next, tx.stamp, tx.builder(self._key))
            tx.push(op, 1)
            if tx.undo_tracking and record:
                tx.undo_records.append(("list_set", self._key, elem, old))
        finally:
            tx.end()

    def move(self, from_index: int, to_index: int) -> None:
        """Move the item at ``from_index`` so it ends up at ``to_index``.

        Like ``lst.insert(to_index, lst.pop(from_index))``. Concurrent moves of one
        item never duplicate it: the last move (by clock) wins.
        """
        state = self._state
        seq = state.seq
        _check_index(from_index, seq.length, False)
        _check_index(to_index, seq.length, False)
        if from_index == to_index:
            return
        self._move_elem(state.elem_at(from_index), to_index)

    def _move_elem(self, elem: tuple[str, int], to_index: int) -> None:
        state = self._state
        seq = state.seq
        tx = self._tx
        tx.begin()
        try:
            rec = state.elems[elem]
            old_pos = rec[2]
            builder = tx.builder(self._key)
            alive = state.alive(rec)
            if alive:
                from_index = seq.visible_index(*old_pos)
                seq.set_deleted(old_pos[0], old_pos[1], 1, True, False)
                if builder is not None:
                    builder.splice(from_index, 1, ())
            peer = tx.peer
            ctr = tx.next
            to_index = min(to_index, seq.length)
            left, right = seq.local_insert(to_index, peer, ctr, (elem,))
            rec[2] = (peer, ctr)
            rec[3] = (tx.stamp, peer, ctr)
            if not alive:
                seq.set_deleted(peer, ctr, 1, True, False)
            elif builder is not None:
                builder.splice(to_index, 0, [rec[0]])
            tx.push((LIST_MOVE, self._name, elem, left, right), 1)
            if tx.undo_tracking:
                tx.undo_records.append(("list_move", self._key, elem, old_pos))
        finally:
            tx.end()

    def _restore(self, items: tuple[tuple[tuple[str, int], Any], ...]) -> None:
        """Bring deleted items back with their values (undo of a delete)."""
        tx = self._tx
        tx.begin()
        try:
            for elem, value in items:
                self._set(elem, value, record=False)
            if tx.undo_tracking:
                # The inverse of bringing items back is deleting them again.
                tx.undo_records.append(("list_delete", self._key, tuple(e for e, _ in items)))
        finally:
            tx.end()


class CRDTMapHandler(Handler):
    """A shared map of str keys to JSON values; last writer (by clock) wins per key."""

    kind = KIND_MAP
    _state: MapState

    def observe(self, callback: Callable[[MapEvent], None]) -> Subscription:
        return self._observers.subscribe(callback)

    @property
    def value(self) -> dict[str, Any]:
        return self._state.value()

    def _entry(self, key: str) -> tuple[bool, Any]:
        entry = self._state.entries.get(key)
        if entry is None or not entry[1]:
            return False, None
        return True, entry[2]

    def set(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"map keys must be str, not {type(key).__name__}")
        check_json(value)
        self._write((MAP_SET, self._name, key, value))

    def delete(self, key: str) -> None:
        """Remove ``key`` (KeyError if absent)."""
        if not isinstance(key, str):
            raise TypeError(f"map keys must be str, not {type(key).__name__}")
        if not self._entry(key)[0]:
            raise KeyError(key)
        self._write((MAP_DELETE, self._name, key))

    def _write(self, op: tuple[Any, ...]) -> None:
        tx = self._tx
        tx.begin()
        try:
            present, old = self._entry(op[2])
            self._state.apply(op, tx.peer, tx.next, tx.stamp, tx.map_out(self._key))
            tx.push(op, 1)
            if tx.undo_tracking:
                tx.undo_records.append(("map_restore", self._key, op[2], present, old))
        finally:
            tx.end()

    def get(self, key: str, default: Any = None) -> Any:
        present, value = self._entry(key)
        return value if present else default

    def __getitem__(self, key: str) -> Any:
        present, value = self._entry(key)
        if not present:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._entry(key)[0]

    def __len__(self) -> int:
        return len(self._state.value())

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.value())

    def keys(self) -> list[str]:
        return list(self._state.value())

    def items(self) -> list[tuple[str, Any]]:
        return list(self._state.value().items())
