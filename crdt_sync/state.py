"""Materialised state of each named handler: text, list and map.

A state applies operations (local ones it creates, remote ones from changes) and
reports what became visible through an optional :class:`DeltaBuilder`. States
know nothing of transactions or history; the document drives them.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

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
from .events import DeltaBuilder
from .exceptions import InvalidChangeError
from .sequence import C, D, N, P, R, Sequence

Id = tuple[str, int]
Stamp = tuple[int, str, int]
#: A shared object's identity in a document: ``(name, kind)``.
StateKey = tuple[str, str]


class NewIds:
    """Ids made by the ops already validated in a batch, per state key and peer.

    Ranges of one peer usually arrive in counter order and touch (typing), so
    they are kept merged and sorted: lookups are a bisection.
    """

    __slots__ = ("elements", "ranges", "validated")

    def __init__(self) -> None:
        # Positions (anything an origin may name: text characters, list
        # positions made by inserts and moves), and list elements (made by
        # inserts only: what deletes, sets and moves name).
        # Per (key, peer): the starts and the stops of its ranges, sorted.
        self.ranges: dict[tuple[StateKey, str], tuple[list[int], list[int]]] = {}
        self.elements: NewIds | None = None
        # Right origins already checked to exist (typing repeats the same one).
        self.validated: set[tuple[StateKey, Id]] = set()

    def add_element(self, key: StateKey, peer: str, start: int, stop: int) -> None:
        if self.elements is None:
            self.elements = NewIds()
        self.elements.add(key, peer, start, stop)

    def has_element(self, key: StateKey, ident: Id) -> bool:
        return self.elements is not None and self.elements.has(key, ident)

    def add(self, key: StateKey, peer: str, start: int, stop: int) -> None:
        entry = self.ranges.get((key, peer))
        if entry is None:
            self.ranges[(key, peer)] = ([start], [stop])
            return
        starts, stops = entry
        last = stops[-1]
        if last == start:
            stops[-1] = stop
        elif last < start:
            starts.append(start)
            stops.append(stop)
        else:
            # Out of counter order (rare): insert in (start, stop) order.
            i = bisect_right(starts, start)
            while i > 0 and starts[i - 1] == start and stops[i - 1] > stop:
                i -= 1
            starts.insert(i, start)
            stops.insert(i, stop)

    def end_of(self, key: StateKey, ident: Id) -> int | None:
        """The end of the new range holding ``ident``, or None."""
        entry = self.ranges.get((key, ident[0]))
        if entry is None:
            return None
        starts, stops = entry
        ctr = ident[1]
        if starts[-1] <= ctr:  # the latest range (typing on), or past every range
            return stops[-1] if ctr < stops[-1] else None
        i = bisect_right(starts, ctr) - 1
        if i >= 0 and ctr < stops[i]:
            return stops[i]
        return None

    def has(self, key: StateKey, ident: Id) -> bool:
        return self.end_of(key, ident) is not None


class TextState:
    """A text: a sequence of characters (Unicode code points).

    A text loaded from a snapshot starts *lazy*: it holds the snapshot's
    validated columns and their visible text, and builds its sequence the first
    time something needs element ids (an edit, a remote op, a position). Opening
    a document to read or display it therefore costs no more than decoding.
    """

    kind = KIND_TEXT
    __slots__ = ("_lazy", "_seq")

    def __init__(self) -> None:
        self._seq = Sequence("", keep_deleted_content=False)
        self._lazy: Any = None

    def load_lazily(self, columns: Any) -> None:
        """Hold ``columns`` (an object with ``.text`` and ``.spans()``) until needed."""
        self._lazy = columns

    @property
    def seq(self) -> Sequence:
        lazy = self._lazy
        if lazy is not None:
            self._lazy = None
            self._seq.load_spans(lazy.spans())
        return self._seq

    @property
    def length(self) -> int:
        lazy = self._lazy
        return len(lazy.text) if lazy is not None else self._seq.length

    def value(self) -> str:
        lazy = self._lazy
        if lazy is not None:
            text: str = lazy.text
            return text
        result: str = self._seq.value()
        return result

    def id_runs(self) -> list[tuple[int, int, str, int]]:
        """The visible text as ``(start, length, peer, first counter)`` runs.

        One entry per run of visible characters one peer typed with consecutive
        counters (spans, not characters, are walked). A lazily loaded text is
        read from its columns without building its spans.
        """
        runs: list[list[Any]] = []
        pos = 0
        lazy = self._lazy
        if lazy is not None:
            peers = lazy.peers
            rows: Any = (
                (peers[p], c, n)
                for f, p, c, n in zip(lazy.flags, lazy.peer, lazy.ctr, lazy.length, strict=True)
                if not f & 1
            )
        else:
            rows = ((s[P], s[C], s[N]) for s in self._seq.spans() if not s[D])
        for peer, ctr, n in rows:
            if runs:
                last = runs[-1]
                if last[2] == peer and last[3] + last[1] == ctr:
                    last[1] += n
                    pos += n
                    continue
            runs.append([pos, n, peer, ctr])
            pos += n
        return [(a, b, c, d) for a, b, c, d in runs]

    def validate(self, op: tuple[Any, ...], key: StateKey, new: NewIds) -> None:
        seq = self.seq
        if op[0] == TEXT_INSERT:
            if not isinstance(op[4], str) or not op[4]:
                raise InvalidChangeError("a text insert needs a non-empty str")
            left, right = op[2], op[3]
            if left is not None:
                span = seq.find(*left)
                if span is None:
                    if not new.has(key, left):
                        raise InvalidChangeError(f"text insert refers to unknown element {left}")
                elif span[R] == right and span[C] + span[N] - 1 == left[1]:
                    return  # typing on: the right origin is the left span's, known to exist
            if right is not None and (key, right) not in new.validated:
                if not seq.contains(*right) and not new.has(key, right):
                    raise InvalidChangeError(f"text insert refers to unknown element {right}")
                new.validated.add((key, right))
        elif op[0] == TEXT_DELETE:
            for peer, ctr, n in op[2]:
                # A range may run from existing elements into ones this change made.
                at, end = ctr, ctr + n
                while at < end:
                    span = seq.find(peer, at)
                    stop = span[C] + span[N] if span is not None else new.end_of(key, (peer, at))
                    if stop is None:
                        raise InvalidChangeError(
                            f"text delete of unknown elements {peer}@{ctr}+{n}"
                        )
                    at = stop
        else:
            raise InvalidChangeError(f"op kind {op[0]} does not apply to a text")

    def apply(
        self, op: tuple[Any, ...], peer: str, ctr: int, ts: int, out: DeltaBuilder | None
    ) -> None:
        seq = self.seq
        if op[0] == TEXT_INSERT:
            span, off = seq.integrate(peer, ctr, op[4], op[2], op[3])
            if out is not None:
                out.splice(seq.span_visible_start(span) + off, 0, op[4])
        elif out is None:
            for p, c, n in op[2]:
                seq.delete_known(p, c, n)
        else:
            for p, c, n in op[2]:
                for vis, count, _ in seq.set_deleted(p, c, n, True, True):
                    out.splice(vis, count, "")


class ListState:
    """A list of JSON values with move and update.

    Each element has an identity (the id of the op that inserted it) and, apart
    from it, a *position*: an element of the underlying sequence whose content
    is the element id. Inserting creates both; ``move`` creates a new position and
    makes it current by last-writer-wins on the element, so concurrent moves
    never duplicate an element. The value is a last-writer-wins register on the
    element, so an update survives a concurrent move. A delete records the value
    stamp it saw; an element is alive while its value stamp is newer than every
    delete's, so an update concurrent with a delete keeps the element (with the
    update) rather than being lost silently. A position is visible iff it is its
    element's current position and the element is alive.
    """

    kind = KIND_LIST
    __slots__ = ("elems", "seq")

    # Element record fields: [value, value stamp, position id, position stamp, delete stamp]
    VALUE, VSTAMP, POS, PSTAMP, DSTAMP = range(5)

    def __init__(self) -> None:
        self.seq = Sequence((), keep_deleted_content=True)
        self.elems: dict[Id, list[Any]] = {}

    def value(self) -> list[Any]:
        elems = self.elems
        return [elems[e][0] for e in self.seq.value()]

    def elem_at(self, index: int) -> Id:
        result: Id = self.seq.content_at(index)
        return result

    @staticmethod
    def alive(rec: list[Any]) -> bool:
        return rec[4] is None or rec[1] > rec[4]

    def validate(self, op: tuple[Any, ...], key: StateKey, new: NewIds) -> None:
        kind = op[0]
        refs: list[Id | None] = []
        elems: list[Id] = []
        if kind == LIST_INSERT:
            if not op[4]:
                raise InvalidChangeError("an empty list insert")
            refs = [op[2], op[3]]
        elif kind == LIST_DELETE:
            elems = [(p, c) for p, c, _ in op[2]]
        elif kind == LIST_MOVE:
            elems = [op[2]]
            refs = [op[3], op[4]]
        elif kind == LIST_SET:
            elems = [op[2]]
        else:
            raise InvalidChangeError(f"op kind {kind} does not apply to a list")
        for ref in refs:
            if ref is not None and not self.seq.contains(*ref) and not new.has(key, ref):
                raise InvalidChangeError(f"list op refers to unknown position {ref}")
        for elem in elems:
            if elem not in self.elems and not new.has_element(key, elem):
                raise InvalidChangeError(f"list op refers to unknown element {elem}")

    def _show(self, pos: Id, visible: bool, out: DeltaBuilder | None) -> None:
        """Make position ``pos`` visible or not, reporting it to ``out``."""
        changed = self.seq.set_deleted(pos[0], pos[1], 1, not visible, out is not None)
        if out is not None:
            for vis, _, content in changed:
                if visible:
                    out.splice(vis, 0, [self.elems[content[0]][0]])
                else:
                    out.splice(vis, 1, ())

    def apply(
        self, op: tuple[Any, ...], peer: str, ctr: int, ts: int, out: DeltaBuilder | None
    ) -> None:
        kind = op[0]
        seq = self.seq
        elems = self.elems
        if kind == LIST_INSERT:
            values = op[4]
            ids = tuple((peer, ctr + i) for i in range(len(values)))
            for i, ident in enumerate(ids):
                stamp = (ts, peer, ctr + i)
                elems[ident] = [values[i], stamp, ident, stamp, None]
            span, off = seq.integrate(peer, ctr, ids, op[2], op[3])
            if out is not None:
                out.splice(seq.span_visible_start(span) + off, 0, list(values))
        elif kind == LIST_DELETE:
            for p, c, observed in op[2]:
                rec = elems[(p, c)]
                was = self.alive(rec)
                if rec[4] is None or observed > rec[4]:
                    rec[4] = observed
                if was and not self.alive(rec):
                    self._show(rec[2], False, out)
        elif kind == LIST_MOVE:
            elem = op[2]
            rec = elems[elem]
            stamp = (ts, peer, ctr)
            seq.integrate(peer, ctr, (elem,), op[3], op[4], deleted=True)
            if stamp > rec[3]:
                old = rec[2]
                alive = self.alive(rec)
                if alive:
                    self._show(old, False, out)
                rec[2] = (peer, ctr)
                rec[3] = stamp
                if alive:
                    self._show(rec[2], True, out)
        elif kind == LIST_SET:
            rec = elems[op[2]]
            stamp = (ts, peer, ctr)
            if stamp > rec[1]:
                was = self.alive(rec)
                if was and out is not None:
                    index = seq.visible_index(*rec[2])
                    out.splice(index, 1, [op[3]])
                rec[0] = op[3]
                rec[1] = stamp
                if not was and self.alive(rec):
                    self._show(rec[2], True, out)


class MapState:
    """A map of str keys to JSON values, last-writer-wins per key by stamp."""

    kind = KIND_MAP
    __slots__ = ("entries",)

    def __init__(self) -> None:
        # key -> (stamp, present, value)
        self.entries: dict[str, tuple[Stamp, bool, Any]] = {}

    def value(self) -> dict[str, Any]:
        return {k: v for k, (_, present, v) in self.entries.items() if present}

    def validate(self, op: tuple[Any, ...], key: StateKey, new: NewIds) -> None:
        if op[0] not in (MAP_SET, MAP_DELETE):
            raise InvalidChangeError(f"op kind {op[0]} does not apply to a map")
        if not isinstance(op[2], str):
            raise InvalidChangeError("map keys are str")

    def apply(
        self, op: tuple[Any, ...], peer: str, ctr: int, ts: int, out: set[str] | None
    ) -> bool:
        stamp = (ts, peer, ctr)
        key = op[2]
        old = self.entries.get(key)
        if old is not None and old[0] >= stamp:
            return False
        if op[0] == MAP_SET:
            self.entries[key] = (stamp, True, op[3])
        else:
            self.entries[key] = (stamp, False, None)
        if out is not None:
            out.add(key)
        return True


State = TextState | ListState | MapState

STATE_TYPES: dict[str, type[TextState] | type[ListState] | type[MapState]] = {
    KIND_TEXT: TextState,
    KIND_LIST: ListState,
    KIND_MAP: MapState,
}
