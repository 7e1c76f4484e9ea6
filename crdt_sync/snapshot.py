"""Snapshots: the encoded state of a document, tombstones and origins included.

Because a snapshot keeps every element's id and origins (deleted text keeps its
ids, not its characters), a document loaded from one can still integrate any
change made concurrently against older state, and two snapshots merge.

The bytes are made and read by ``snapshot_codec.py``; this module holds the
:class:`Snapshot` value, loading one into an empty document, and merging one
into a document with concurrent edits.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from .changes import KIND_LIST, KIND_MAP, KIND_TEXT, MAX_INFLATED
from .events import DeltaBuilder
from .exceptions import DecodeError
from .ids import VersionVector
from .sequence import C, D, N, P, Sequence, X
from .snapshot_codec import SnapshotCapture, _decode, _Decoded
from .state import ListState

if TYPE_CHECKING:
    from .document import CRDTDocument


class Snapshot:
    """An immutable encoded document state. Build with ``doc.take_snapshot()``."""

    __slots__ = ("_data", "_decoded", "document_id", "version_vector")

    def __init__(self, data: bytes, document_id: str, version_vector: VersionVector) -> None:
        self._data = data
        self.document_id = document_id
        self.version_vector = version_vector
        self._decoded: _Decoded | None = None

    @classmethod
    def of(cls, doc: CRDTDocument) -> Snapshot:
        return SnapshotCapture(doc, copy=False).encode()

    @staticmethod
    def capture(doc: CRDTDocument) -> SnapshotCapture:
        """Copy what a snapshot of ``doc`` holds now; encode it later, on any thread.

        The copy is shallow (a list slice per span, C-level work); the walk
        and the compression, which take milliseconds per thousand spans, run
        in :meth:`SnapshotCapture.encode`, which the document's later changes
        do not affect. A server uses it to keep compaction off its event loop.
        """
        return SnapshotCapture(doc)

    def to_bytes(self) -> bytes:
        return self._data

    @classmethod
    def from_bytes(cls, data: bytes, max_size: int = MAX_INFLATED) -> Snapshot:
        """Decode and validate; any malformed input raises :class:`DecodeError`.

        ``max_size`` bounds what the compressed body may inflate to.
        """
        decoded = _decode(data, max_size)
        snap = cls(bytes(data), decoded.document_id, decoded.vv)
        snap._decoded = decoded
        return snap

    def _take_decoded(self) -> _Decoded:
        decoded = self._decoded
        self._decoded = None  # its span lists are handed to one document only
        return decoded if decoded is not None else _decode(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"Snapshot({self.document_id!r}, {len(self._data)} bytes, {self.version_vector!r})"


# ------------------------------------------------------------------ loading


def load_snapshot(doc: CRDTDocument, snapshot: Snapshot) -> None:
    """Fill an empty ``doc`` from ``snapshot``."""
    decoded = snapshot._take_decoded()
    for key, value in decoded.states.items():
        kind = key[1]
        state = doc._state(key)
        if kind == KIND_TEXT:
            state.load_lazily(value)
        elif kind == KIND_LIST:
            spans, elems = value
            state.seq.load_spans(spans)
            state.elems = elems
        else:
            state.entries = dict(value)
    doc._vv = dict(decoded.vv)
    doc._base_vv = dict(decoded.vv)
    doc._frontier = dict(decoded.frontier)
    doc._clock.observe(decoded.max_ts)
    doc._next = doc._vv.get(doc._peer, 0)


Piece = tuple[str, int, Any, Any, Any, bool]  # peer, counter, content, left, right, deleted
#: A piece's first id.
_PEER_COUNTER = itemgetter(0, 1)


class _Plan:
    """How one sequence state merges: deletions of known elements, then pieces in order."""

    __slots__ = ("deletions", "pieces")

    def __init__(self) -> None:
        self.deletions: list[tuple[str, int, int]] = []
        self.pieces: list[Piece] = []


def _plan_sequence(seq: Sequence, spans: list[list[Any]], is_list: bool) -> _Plan:
    """Work out, without touching ``seq``, how ``spans`` merge into it.

    Elements ``seq`` lacks become pieces, ordered so that each piece's origins
    exist when it is integrated (in ``seq``, or in a piece before it). Raises
    DecodeError if some piece can never be placed (its origins are nowhere,
    inside itself, or in pieces that wait for it): the document is then left
    untouched.
    """
    plan = _Plan()
    todo: list[Piece] = []
    find_or_next = seq.find_or_next
    for sp in spans:
        peer, ctr, n, content, deleted, left, right = sp[:7]
        k = 0
        while k < n:
            found, known = find_or_next(peer, ctr + k)
            if found is not None:
                take = min(found[C] + found[N] - (ctr + k), n - k)
                if deleted and not is_list and not found[D]:
                    plan.deletions.append((peer, ctr + k, take))
                k += take
                continue
            j = n if known is None else min(n, known - ctr)
            piece_left = left if k == 0 else (peer, ctr + k - 1)
            # Deleted text keeps no characters: a range stands in for their count.
            piece = content[k:j] if (not deleted or is_list) else range(j - k)
            todo.append((peer, ctr + k, piece, piece_left, right, deleted))
            k = j
    plan.pieces = _integration_order(seq, todo)
    return plan


def _integration_order(seq: Sequence, todo: list[Piece]) -> list[Piece]:
    """``todo`` (pieces in document order) ordered so each piece's origins exist first.

    Depth first, in document order: each piece goes right after the pieces
    holding its origins (placed first, the same way), so a piece and what it
    waits for are integrated together. Any such order merges to the same
    text (the ordering rule reads origins, not arrival); this one is found
    with each origin looked up once and no sort (a merge of two halves of a
    long text needed 16 passes of placing what was ready). Raises
    DecodeError if an origin is nowhere, or the pieces' origins form a cycle
    (a piece naming an element of its own among its origins included).
    """
    count = len(todo)
    # An origin is mostly the first element of a piece (a right origin: the
    # piece after it was split there) or the last one of a piece before it (a
    # left origin): two dictionaries. Any other is in ``seq``, or inside a
    # piece: found by bisection in an index built the first time it is needed.
    heads = dict(zip(map(_PEER_COUNTER, todo), itertools.count()))
    lasts: dict[Any, int] = {}
    index: dict[str, list[tuple[int, int]]] | None = None
    contains = seq.contains

    def holder(origin: Any) -> int:
        """The piece holding ``origin``, or -1 when ``seq`` holds it."""
        nonlocal index
        if contains(*origin):
            return -1
        if index is None:
            index = {}
            for i, piece in enumerate(todo):
                index.setdefault(piece[0], []).append((piece[1], i))
            for entries in index.values():
                entries.sort()
        firsts = index.get(origin[0])
        if firsts is not None:
            k = bisect_right(firsts, (origin[1], count)) - 1
            if k >= 0:
                j = firsts[k][1]
                if origin[1] < todo[j][1] + len(todo[j][2]):
                    return j
        raise DecodeError("snapshot elements refer to origins that are nowhere")

    # The pieces holding each piece's origins (-1: in ``seq``, or none).
    lh = [-1] * count
    rh = [-1] * count
    for i, piece in enumerate(todo):
        left = piece[3]
        if left is not None:
            j = lasts.get(left)
            if j is None:
                j = heads.get(left)
                if j is None:
                    j = holder(left)
            lh[i] = j
        right = piece[4]
        if right is not None:
            j = heads.get(right)
            if j is None:
                j = holder(right)
            rh[i] = j
        lasts[(piece[0], piece[1] + len(piece[2]) - 1)] = i
    # Depth first, in document order: a piece goes after the pieces holding
    # its origins. ``state``: 0 not seen, 1 on the path being placed, 2 placed;
    # an origin on the path is a cycle.
    state = bytearray(count)
    order: list[Piece] = []
    place = order.append
    for first in range(count):
        if state[first]:
            continue
        path = [first]
        while path:
            i = path[-1]
            state[i] = 1
            j = lh[i]
            if j < 0 or state[j] == 2:
                j = rh[i]
                if j < 0 or state[j] == 2:
                    state[i] = 2
                    place(todo[i])
                    path.pop()
                    continue
            if state[j]:
                raise DecodeError("snapshot elements refer to origins that are nowhere")
            path.append(j)
    return order


def merge_snapshot(doc: CRDTDocument, snapshot: Snapshot) -> None:
    """Merge ``snapshot`` into ``doc``, which may hold concurrent edits.

    Everything is checked and planned first: a snapshot that cannot merge
    raises with the document untouched.
    """
    decoded = snapshot._take_decoded()
    plans: dict[tuple[str, str], _Plan] = {}
    for key, value in decoded.states.items():
        # The kind is part of the identity: a name that is a text here and a
        # list in the snapshot is two objects, which merge separately.
        kind = key[1]
        existing = doc._states.get(key)
        if existing is None:
            continue
        if kind != KIND_MAP and existing.seq.span_count():  # type: ignore[union-attr]
            spans = value.spans() if kind == KIND_TEXT else value[0]
            plans[key] = _plan_sequence(existing.seq, spans, kind == KIND_LIST)  # type: ignore[union-attr]
    for key, value in decoded.states.items():
        kind = key[1]
        if kind != KIND_MAP and key not in plans:
            # New to this document (or empty here): load it as it is.
            state = doc._state(key)
            if kind == KIND_TEXT:
                state.load_lazily(value)
            else:
                state.seq.load_spans(value[0])
                state.elems = value[1]
            builder = doc._builder(key)
            loaded = state.value()
            if builder is not None and loaded:
                builder.splice(0, 0, loaded)
            continue
        state = doc._state(key)
        if kind == KIND_MAP:
            keys = doc._map_out(key)
            for key, entry in value.items():
                old = state.entries.get(key)
                if old is None or entry[0] > old[0]:
                    state.entries[key] = entry
                    if keys is not None:
                        keys.add(key)
            continue
        if kind == KIND_LIST:
            _merge_list_elems(doc, key, state, value[1])
        _merge_sequence(doc, key, state, plans[key])
    vv = dict(doc._vv)
    for peer, counter in decoded.vv.items():
        if counter > vv.get(peer, 0):
            vv[peer] = counter
    doc._vv = vv
    base = doc._base_vv
    for peer, counter in decoded.vv.items():
        if counter > base.get(peer, 0):
            base[peer] = counter
    for peer, counter in decoded.frontier.items():
        if counter > doc._frontier.get(peer, -1):
            doc._frontier[peer] = counter
    doc._clock.observe(decoded.max_ts)
    doc._next = max(doc._next, vv.get(doc._peer, 0))


def _merge_sequence(doc: CRDTDocument, key: tuple[str, str], state: Any, plan: _Plan) -> None:
    """Carry out ``plan`` (from :func:`_plan_sequence`) on ``state``, reporting deltas."""
    seq: Sequence = state.seq
    builder = doc._builder(key)
    if not isinstance(state, ListState):
        for peer, ctr, take in plan.deletions:
            seq.delete_known(peer, ctr, take)
        for peer, ctr, content, left, right, deleted in plan.pieces:
            seq.integrate(peer, ctr, content, left, right, deleted=deleted)
        if builder is not None and (plan.deletions or plan.pieces):
            _report_text_merge(seq, plan, builder)
        return
    for peer, ctr, take in plan.deletions:
        for vis, count, _ in seq.set_deleted(peer, ctr, take, True, True):
            if builder is not None:
                builder.splice(vis, count, "")
    for peer, ctr, content, left, right, _ in plan.pieces:
        visible = _list_position_visible(state, (peer, ctr), content)
        seq.integrate(peer, ctr, content, left, right, deleted=True)
        for i, elem in enumerate(content):
            if visible[i]:
                for vis, _, _ in seq.set_deleted(peer, ctr + i, 1, False, True):
                    if builder is not None:
                        builder.splice(vis, 0, [state.elems[elem][0]])


def _report_text_merge(seq: Sequence, plan: _Plan, builder: DeltaBuilder) -> None:
    """Report a carried-out text ``plan`` to ``builder``: one walk over the spans.

    A splice per piece, at its visible index, costs a walk over the chunks
    and one over the builder's ops, which grow with the pieces: a merge of
    thousands of pieces spent most of its time there. The text's elements
    are instead read in order once: the plan's visible pieces are the
    insertions, its deletions the removed characters, anything else was there
    before and is unchanged. Each place where something changed becomes one
    splice, given from the end backwards so that every position is the one
    in the text before the merge and the builder is only ever split at its
    first op.
    """
    # Per peer, the changed ids (visible new ones, or removed ones) as sorted,
    # disjoint [start, stop) ranges: the snapshot's ids never overlap.
    new: dict[str, list[tuple[int, int]]] = {}
    gone: dict[str, list[tuple[int, int]]] = {}
    for peer, ctr, content, _, _, deleted in plan.pieces:
        if not deleted:
            new.setdefault(peer, []).append((ctr, ctr + len(content)))
    for peer, ctr, take in plan.deletions:
        gone.setdefault(peer, []).append((ctr, ctr + take))
    for each in (*new.values(), *gone.values()):
        each.sort()
    edits: list[tuple[int, int, str]] = []  # (position before the merge, removed, inserted)
    before = 0  # characters of the text before the merge, passed so far
    at = -1  # where the edit being gathered starts, or -1
    removed = 0
    inserted: list[str] = []
    for s in seq.spans():
        peer, ctr, n, dead = s[P], s[C], s[N], s[D]
        ranges = (gone if dead else new).get(peer)
        if ranges is None:
            if not dead:
                if at >= 0:
                    edits.append((at, removed, "".join(inserted)))
                    at, removed, inserted = -1, 0, []
                before += n
            continue
        end = ctr + n
        i = bisect_right(ranges, (ctr, end)) - 1
        if i < 0 or ranges[i][1] <= ctr:
            i += 1
        pos = ctr
        while pos < end:
            if i < len(ranges) and ranges[i][0] <= pos:
                stop = min(ranges[i][1], end)
                if at < 0:
                    at = before
                if dead:
                    removed += stop - pos
                    before += stop - pos
                else:
                    inserted.append(s[X][pos - ctr : stop - ctr])
                if stop == ranges[i][1]:
                    i += 1
            else:
                stop = end if i == len(ranges) else min(ranges[i][0], end)
                if not dead:
                    if at >= 0:
                        edits.append((at, removed, "".join(inserted)))
                        at, removed, inserted = -1, 0, []
                    before += stop - pos
            pos = stop
    if at >= 0:
        edits.append((at, removed, "".join(inserted)))
    for at, removed, text in reversed(edits):
        builder.splice(at, removed, text)


def _list_position_visible(state: ListState, first: tuple[str, int], content: Any) -> list[bool]:
    out = []
    for i, elem in enumerate(content):
        rec = state.elems.get(elem)
        pos = (first[0], first[1] + i)
        out.append(rec is not None and rec[2] == pos and ListState.alive(rec))
    return out


def _merge_list_elems(
    doc: CRDTDocument, key: tuple[str, str], state: ListState, elems: dict[Any, Any]
) -> None:
    """Fold the snapshot's element records into ours (per-field maximum by stamp)."""
    seq = state.seq
    builder = doc._builder(key)
    for elem, theirs in elems.items():
        ours = state.elems.get(elem)
        if ours is None:
            state.elems[elem] = list(theirs)
            continue
        was_alive = ListState.alive(ours)
        old_pos = ours[2]
        value_changed = theirs[1] > ours[1]
        if value_changed:
            ours[0], ours[1] = theirs[0], theirs[1]
        if theirs[3] > ours[3]:
            ours[2], ours[3] = theirs[2], theirs[3]
        if theirs[4] is not None and (ours[4] is None or theirs[4] > ours[4]):
            ours[4] = theirs[4]
        now_alive = ListState.alive(ours)
        if (
            value_changed
            and was_alive
            and now_alive
            and ours[2] == old_pos
            and seq.contains(*old_pos)
            and seq.is_visible(*old_pos)
            and builder is not None
        ):
            builder.splice(seq.visible_index(*old_pos), 1, [ours[0]])
        if was_alive and (not now_alive or ours[2] != old_pos) and seq.contains(*old_pos):
            for vis, _, _ in seq.set_deleted(old_pos[0], old_pos[1], 1, True, True):
                if builder is not None:
                    builder.splice(vis, 1, ())
        if now_alive and seq.contains(*ours[2]) and not seq.is_visible(*ours[2]):
            for vis, _, _ in seq.set_deleted(ours[2][0], ours[2][1], 1, False, True):
                if builder is not None:
                    builder.splice(vis, 0, [ours[0]])


def merge_introduces(doc: CRDTDocument, snapshot: Snapshot) -> tuple[dict[str, int], int]:
    """What merging ``snapshot`` into ``doc`` would introduce, touching neither.

    Returns ``(lowest, deletions)``: per peer, the lowest op counter the merge
    would put into ``doc`` (new sequence elements, and the stamps of map entries
    and list element records that would win over ``doc``'s), and how many
    deletions it would bring (of ``doc``'s text, and list delete stamps, which
    name the value they deleted rather than the deleting op). A server checks the first against
    what it holds (an op id it already has must never carry other content),
    before :func:`merge_snapshot`. Raises DecodeError when the merge would.
    """
    decoded = snapshot._decoded if snapshot._decoded is not None else _decode(snapshot._data)
    lowest: dict[str, int] = {}

    def note(peer: str, counter: int) -> None:
        if counter < lowest.get(peer, counter + 1):
            lowest[peer] = counter

    def stamp(value: Any) -> None:
        if value is not None:
            note(value[1], value[2])

    deletions = 0
    for key, value in decoded.states.items():
        kind = key[1]
        existing = doc._states.get(key)
        if kind == KIND_MAP:
            entries = {} if existing is None else existing.entries  # type: ignore[union-attr]
            for name, entry in value.items():
                old = entries.get(name)
                if old is None or entry[0] > old[0]:
                    stamp(entry[0])
            continue
        spans = value.spans() if kind == KIND_TEXT else value[0]
        if existing is None or not existing.seq.span_count():  # type: ignore[union-attr]
            for sp in spans:
                note(sp[0], sp[1])
        else:
            plan = _plan_sequence(existing.seq, spans, kind == KIND_LIST)  # type: ignore[union-attr]
            for piece in plan.pieces:
                note(piece[0], piece[1])
            deletions += sum(take for _, _, take in plan.deletions)
        if kind == KIND_LIST:
            ours_elems = {} if existing is None else existing.elems  # type: ignore[union-attr]
            for elem, theirs in value[1].items():
                ours = ours_elems.get(elem)
                # The value and position stamps are the ids of the ops that set them.
                for field in (1, 3):
                    if ours is None or theirs[field] > ours[field]:
                        stamp(theirs[field])
                # A delete stamp is the value stamp the deletion saw (an old id): a
                # deletion, which an upload may only bring with a new op.
                gone = theirs[4]
                if gone is not None and (ours is None or ours[4] is None or gone > ours[4]):
                    deletions += 1
    return lowest, deletions
