"""Remote changes: how a document applies what other replicas made.

Theory of operation
-------------------
A remote change is applied exactly once and in causal order: it is ready when
every dep is covered by the version vector and its first counter is the next
one expected from its peer; otherwise it waits in the bounded pending buffer
(``causal.py``), filed under the peer whose progress it waits for. A batch
applies whole or not at all: it is validated before anything changes, or, on
the checked path below, put back exactly as it was when a run fails.

Two ways in, one result:

* **By runs** (:func:`import_segments`): a version 2 batch
  decodes to segments of runs (``batch.py``). When every run is simply the
  next one (its peer's expected counter, its deps known, nothing pending), a
  typing run is one integration of its text and a deleting run one pass over
  its merged ranges, with no object built per change; the segments join the
  history as they came. For a large batch the checks are fused with the
  application (:func:`_apply_runs_checked`: the lookups that
  check a run are the ones that place it, and a copy of each text touched is
  the rollback); a small one is checked first, then applied.
* **Change by change** (:func:`import_tuples`): anything else (a
  version 1 batch, changes out of order, duplicates, changes that must wait)
  is scheduled by the pending buffer, cut into typing and deleting runs
  (``causal.typing_runs``), validated, then applied.

The functions take the document as their first argument, as ``snapshot.py``'s
do, and read and write its version vector, frontier, states and history
directly, as the hot path must. The public ways in, ``import_changes`` and
``binary_import_changes``, are methods of
:class:`~crdt_sync.document.CRDTDocument`, which calls :func:`import_one`,
:func:`import_segments` and :func:`import_tuples` here.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate, chain
from typing import TYPE_CHECKING, Any

from .batch import DELETING, FULL, TYPING, Segment
from .causal import coalesce, typing_runs
from .changes import (
    KIND_MAP,
    KIND_TEXT,
    LIST_INSERT,
    LIST_MOVE,
    OP_HANDLER_KIND,
    TEXT_DELETE,
    TEXT_INSERT,
    Change,
    ChangeTuple,
)
from .events import DeltaBuilder, UpdateEvent
from .exceptions import InvalidChangeError
from .sequence import Backup, C, D, N, P, Sequence, X
from .state import STATE_TYPES, NewIds, StateKey, TextState

if TYPE_CHECKING:
    from .change_batch import ChangeBatch
    from .document import CRDTDocument

#: Empty states to validate ops for names the document has no state for yet.
_EMPTY_STATES: dict[str, Any] = {kind: cls() for kind, cls in STATE_TYPES.items()}
#: The op kinds a lone change can carry to be applied as a text run of one change.
_TEXT_EDITS = frozenset((TEXT_INSERT, TEXT_DELETE))
#: Fewer runs than this are checked before they are applied (no copy for a rollback).
_CHECKED_MIN_RUNS = 8


def _merge_two(
    first: Any, more: list[tuple[str, int, int]]
) -> list[tuple[str, int, int]] | tuple[tuple[str, int, int], ...]:
    """``coalesce([*first, *more])``, with no sort for the usual deleting run: one
    range of the head and one merged range of its continuations that touch."""
    if len(first) == 1 and len(more) == 1:
        p, c, n = more[0]
        hp, hc, hn = first[0]
        if hp == p and hc <= c + n and c <= hc + hn:
            lo = c if c < hc else hc
            hi = c + n if c + n > hc + hn else hc + hn
            return ((p, lo, hi - lo),)
    return coalesce([*first, *more])


class _NotNow(Exception):
    """A run the checked fast path leaves to the careful one (internal)."""


def import_segments(
    doc: CRDTDocument,
    segments: list[Segment],
    batch: ChangeBatch | None = None,
) -> int:
    """Import decoded segments run by run when they are simply the next changes
    (each run starting at the counter expected from its peer, its deps known,
    nothing pending); otherwise change by change through :func:`import_tuples`.

    The fast way builds no object per change: a typing run is one integration
    of its text, a deleting run one pass over its merged ranges, and the
    segments join the history as they are. Same checks, same result.
    ``batch``, if given, is the :class:`~crdt_sync.change_batch.ChangeBatch`
    holding exactly ``segments``: when the fast way applied them all, the
    update event's changes are its changes (built once, perhaps already).
    """
    if doc._depth:
        raise RuntimeError("cannot import changes inside a transaction")
    if len(doc._pending):
        return import_tuples(doc, [t for seg in segments for t in seg.tuples()])
    if not _apply_runs_checked(doc, segments):
        # Nothing was changed: check everything first, then apply.
        if not _runs_are_next(doc, segments):
            return import_tuples(doc, [t for seg in segments for t in seg.tuples()])
        merged = _validate_runs(doc, segments)
        # From here on nothing can fail on account of the input.
        _apply_runs(doc, segments, merged)
    stamps = [seg.max_ts for seg in segments if seg.n]
    if stamps:
        doc._clock.observe(max(stamps))
    for seg in segments:
        doc._history.add_segment(seg)
    doc._emit_handler_events(None, False)
    count = sum(seg.n for seg in segments)
    if count and doc._on_update._subs:
        if batch is not None:
            doc._on_update.emit(UpdateEvent.of_batch(batch, None))
        else:
            doc._on_update.emit(UpdateEvent.deferred(_changes_of(segments), False, None))
    return count


def _changes_of(segments: list[Segment]) -> Callable[[], tuple[Change, ...]]:
    """The changes of ``segments`` as :class:`Change` objects, built when called."""
    return lambda: tuple(Change(t) for seg in segments for t in seg.tuples())


def _apply_runs_checked(doc: CRDTDocument, segments: list[Segment]) -> bool:
    """Apply ``segments``, text runs only, checking each run as it is applied;
    True if all applied. Otherwise (a run not simply next, not valid, not a
    text edit, or a text too large to copy for this batch) put everything
    back as it was and return False, for :func:`_runs_are_next`,
    :func:`_validate_runs` and :func:`_apply_runs` to decide.

    Validation fused with application: the lookups that check a run are
    the ones that place it (an unknown origin or deleted id raises KeyError
    in the sequence). The rollback is a copy of each text touched, taken
    before its first change, so it runs only when the batch holds at least
    an eighth as many runs as that text has spans (a copy costs far less
    per span than a run's separate validation). Observed or not, a text takes
    its runs the unobserved way; an observed one's delta is found after the
    last run from its spans and that copy (:func:`_report_edits`).
    """
    runs = 0
    for seg in segments:
        runs += len(seg.runs)
    if runs < _CHECKED_MIN_RUNS:
        return False
    vv = doc._vv
    frontier = doc._frontier
    saved = (dict(vv), dict(frontier), doc._next, dict(doc._tx.builders))
    backups: list[tuple[Sequence, Backup]] = []
    new_states: list[StateKey] = []
    texts: dict[str, Sequence] = {}
    # The observed texts: their deltas are found after the loop, in one walk each.
    observed: list[tuple[Sequence, Backup, DeltaBuilder]] = []
    # Whether the deleting run at hand deletes some other peer's elements.
    foreign = False
    me = doc._peer
    # The text of the previous run (runs mostly edit one text).
    last_name: str | None = None
    seq: Any = None  # (a Sequence from the first run on)
    try:
        for seg in segments:
            for run in seg.runs:
                _, _, kind, head, _, x0, _, end, peer, ctr, size, op = run
                if vv.get(peer, 0) != ctr:
                    raise _NotNow  # a duplicate, an overlap or a gap
                # Each dep is checked and leaves the frontier in one pass
                # (before the run is applied: that reads neither, and a
                # failure puts the frontier back with everything else). The
                # usual head's one dep, its peer's previous change, is known
                # (its counter is next) and needs nothing: it follows a run of
                # its peer in its segment, which left that change last in the
                # frontier, where this run's last replaces it below (as taking
                # it off and adding the new one would leave it).
                if head is not None:
                    for dpeer, dctr in head[3]:
                        if vv.get(dpeer, 0) <= dctr:
                            raise _NotNow
                        if frontier.get(dpeer) == dctr:
                            del frontier[dpeer]
                    ops = head[4]
                    # (A continued run's head is one text insert or delete: decoded so.)
                    if kind == FULL and (len(ops) != 1 or op[0] not in _TEXT_EDITS):
                        raise _NotNow
                name = op[1]
                if name != last_name:
                    target = texts.get(name)
                    if target is None:
                        key = (name, KIND_TEXT)
                        if key not in doc._states:
                            new_states.append(key)
                        seq = doc._state(key).seq
                        if seq.span_count() > 8 * runs:
                            raise _NotNow
                        backup = seq.backup()
                        backups.append((seq, backup))
                        builder = doc._builder(key)
                        if builder is not None:
                            observed.append((seq, backup, builder))
                        target = texts[name] = seq
                    seq = target
                    last_name = name
                if op[0] == TEXT_INSERT:
                    text = op[4]
                    right = op[3]
                    if not isinstance(text, str) or not text:
                        raise _NotNow
                    if kind == TYPING:
                        if right is not None:
                            rpeer = right[0]
                            if rpeer != peer and vv.get(rpeer, 0) <= right[1]:
                                raise _NotNow
                            # Each continuation depends on the right origin.
                            if frontier.get(rpeer) == right[1]:
                                del frontier[rpeer]
                        text += seg.text[x0 : x0 + end - ctr - size]
                    seq.integrate(peer, ctr, text, op[2], right, False, True)
                else:
                    if kind == DELETING:
                        more = seg.delete_ranges(run)
                        for p, c, n in more:
                            if p != peer:
                                if vv.get(p, 0) < c + n:
                                    raise _NotNow
                                foreign = True
                        ranges = _merge_two(op[2], more)
                    elif len(op[2]) == 1:
                        ranges = op[2]  # (coalesce of one range: itself)
                    else:
                        ranges = coalesce(list(op[2]))
                    delete = seq.delete_known
                    for p, c, n in ranges:
                        delete(p, c, n)
                vv[peer] = end
                if foreign:
                    foreign = False
                    _deleted_leave_frontier(frontier, seg, run, peer)
                frontier[peer] = end - 1
                if peer == me and end > doc._next:
                    doc._next = end
            seg.release()
        for seq, backup, builder in observed:
            _report_edits(builder, backup, seq, saved[0])
    except BaseException as exc:
        # Put back everything this attempt touched.
        for seq, backup in backups:
            seq.restore(backup)
        for key in new_states:
            del doc._states[key]
        vv.clear()
        vv.update(saved[0])
        frontier.clear()
        frontier.update(saved[1])
        doc._next = saved[2]
        doc._tx.builders = saved[3]
        if isinstance(exc, Exception):
            return False  # the careful way decides (and raises the typed error)
        raise
    return True


def _deleted_leave_frontier(frontier: dict[str, int], seg: Segment, run: Any, peer: str) -> None:
    """Take off ``frontier`` what deleting ``run`` of ``peer`` depends on: each
    continuation depends on the last element it deletes (other peers' only:
    the run's own peer gets its entry anew after the run)."""
    one_each = seg.deletes_one_each(run)
    for p, c, n in seg.delete_ranges(run):
        if p != peer:
            f = frontier.get(p)
            if f is not None and (c <= f < c + n if one_each else f == c + n - 1):
                del frontier[p]


def _report_edits(builder: DeltaBuilder, old: Backup, seq: Sequence, since: dict[str, int]) -> None:
    """Report to ``builder`` how the runs just applied changed text ``seq``: one
    walk over its spans now and its spans before (``old``, the backup).

    A splice per run, at its visible index, costs a walk over the chunks to
    find that index and a splice into the builder: an observed text (the
    editor's, always) took about three times as long to merge as an
    unobserved one. The walk needs neither. An element is new if its counter
    is at least ``since`` of its peer (the version vector before the batch);
    the old ones are the elements of ``old``, in the same order (a sequence
    never reorders or drops an element), so a parallel walk over ``old`` says
    whether each was visible before. New and visible: inserted; old, visible
    before and deleted now: removed; visible before and now: unchanged;
    anything else was and stays invisible. Each place where something changed
    becomes one splice, given from the end backwards so that every position
    is the one in the text before the batch.

    A chunk that holds the very spans of a chunk of ``old`` is passed whole
    (one comparison in C, and its visible length): a merge mostly lands in
    a few places, and the rest of the text keeps its chunks (merging
    automerge-paper's halves, all but one of B's 129 chunks).
    """
    edits: list[tuple[int, int, list[str]]] = []  # (position before, removed, inserted)
    before = 0  # visible elements of the text before the batch, passed so far
    at = -1  # where the edit being gathered starts, or -1
    removed = 0
    inserted: list[str] = []
    # The old spans in one list, walked by index; ``starts[k]``: where old chunk
    # ``k``'s are in it, ``k`` the first old chunk not behind the walk.
    flat = list(chain.from_iterable(old))
    starts = list(accumulate(map(len, old), initial=0))
    k = 0
    last = len(old)
    oi = 0
    o: Any = None  # the old span being walked, and how far
    o_off = o_len = 0
    get = since.get
    for chunk in seq.chunks:
        spans = chunk.spans
        if o_off == o_len:
            # Between two old spans: maybe at the start of an old chunk this one still is.
            while k < last and starts[k] < oi:
                k += 1
            if k < last and starts[k] == oi and spans == old[k]:
                if chunk.vis:
                    # Visible before and now: the edit gathered so far ends here.
                    if at >= 0:
                        edits.append((at, removed, inserted))
                        at, removed, inserted = -1, 0, []
                    before += chunk.vis
                k += 1
                oi = starts[k]
                continue
        for s in spans:
            n = s[N]
            # Its old elements: those below the peer's counter before the batch.
            old_n = get(s[P], 0) - s[C]
            if old_n <= 0:
                # All new (most spans of a merge are all new or all old).
                if not s[D]:
                    if at < 0:
                        at = before
                    inserted.append(s[X])
                continue
            dead = s[D]
            if old_n >= n and o_off == o_len:
                o = flat[oi]
                oi += 1
                o_off = o_len = o[N]
                if o_len == n:
                    # All old, and the old span it was, whole.
                    if not o[D]:
                        if dead:
                            if at < 0:
                                at = before
                            removed += n
                        elif at >= 0:
                            edits.append((at, removed, inserted))
                            at, removed, inserted = -1, 0, []
                        before += n
                    continue
                o_off = 0
            if old_n > n:
                old_n = n
            pos = 0
            while pos < old_n:
                if o_off == o_len:
                    o = flat[oi]
                    oi += 1
                    o_off, o_len = 0, o[N]
                take = o_len - o_off
                if take > old_n - pos:
                    take = old_n - pos
                if not o[D]:
                    if dead:
                        if at < 0:
                            at = before
                        removed += take
                    elif at >= 0:
                        edits.append((at, removed, inserted))
                        at, removed, inserted = -1, 0, []
                    before += take
                pos += take
                o_off += take
            if pos < n and not dead:
                if at < 0:
                    at = before
                inserted.append(s[X][pos:] if pos else s[X])
    if at >= 0:
        edits.append((at, removed, inserted))
    for at, removed, pieces in reversed(edits):
        builder.splice(at, removed, "".join(pieces))


def _head_deps(run: Any) -> tuple[tuple[str, int], ...]:
    """The deps of ``run``'s head (derived for the usual head: see ``batch.Run``)."""
    head = run[3]
    return ((run[8], run[9] - 1),) if head is None else head[3]


def _runs_are_next(doc: CRDTDocument, segments: list[Segment]) -> bool:
    """Whether every run of ``segments`` applies in order as it stands."""
    vv = dict(doc._vv)
    for seg in segments:
        for run in seg.runs:
            kind, end, peer, ctr, op = run[2], run[7], run[8], run[9], run[11]
            if vv.get(peer, 0) != ctr:
                return False  # a duplicate, an overlap or a gap
            for dpeer, dctr in _head_deps(run):
                if vv.get(dpeer, 0) <= dctr:
                    return False
            if kind == TYPING:
                right = op[3]
                if right is not None and right[0] != peer and vv.get(right[0], 0) <= right[1]:
                    return False
            elif kind == DELETING:
                for p, c, n in seg.delete_ranges(run):
                    if p != peer and vv.get(p, 0) < c + n:
                        return False
            vv[peer] = end
    return True


def _validate_runs(
    doc: CRDTDocument, segments: list[Segment]
) -> dict[int, list[tuple[str, int, int]]]:
    """Raise InvalidChangeError unless every run applies, in order.

    Returns the merged ranges of each deleting run, by ``id(run)``.
    """
    merged: dict[int, list[tuple[str, int, int]]] = {}
    created = NewIds()
    states = doc._states
    for seg in segments:
        for run in seg.runs:
            kind, head, end, op = run[2], run[3], run[7], run[11]
            if (
                head is not None
                and kind == FULL
                and (len(head[4]) != 1 or op[0] not in _TEXT_EDITS)
            ):
                _validate_one(doc, head, created)
                continue
            # A text run, or a lone change of one text insert or delete
            # (checked as the run it would head): the decoder made its head
            # one text insert (typing) or one text delete (deleting), its
            # size and counters in bounds.
            key = (op[1], KIND_TEXT)
            state: Any = states.get(key)
            if state is None:
                state = _EMPTY_STATES[KIND_TEXT]
            if op[0] == TEXT_INSERT:
                state.validate(op, key, created)
                created.add(key, run[8], run[9], end)
            else:
                # The merged ranges include the head's own.
                seq = state.seq
                if kind == FULL:
                    ranges = coalesce(list(op[2]))
                else:
                    ranges = coalesce([*op[2], *seg.delete_ranges(run)])
                merged[id(run)] = ranges
                for peer, ctr, n in ranges:
                    at, stop = ctr, ctr + n
                    while at < stop:
                        span = seq.find(peer, at)
                        nxt = (
                            span[C] + span[N]
                            if span is not None
                            else created.end_of(key, (peer, at))
                        )
                        if nxt is None:
                            raise InvalidChangeError(
                                f"text delete of unknown elements {peer}@{ctr}+{n}"
                            )
                        at = nxt
    return merged


def _apply_runs(doc: CRDTDocument, segments: list[Segment], merged: dict[int, Any]) -> None:
    """Apply the validated runs of ``segments`` in order (no history: the
    segments are kept). A text's state and delta builder are looked up once."""
    vv = doc._vv
    frontier = doc._frontier
    texts: dict[str, tuple[Any, DeltaBuilder | None]] = {}
    for seg in segments:
        for run in seg.runs:
            _, _, kind, head, _, x0, _, end, peer, ctr, size, op = run
            if (
                head is not None
                and kind == FULL
                and (len(head[4]) != 1 or op[0] not in _TEXT_EDITS)
            ):
                _apply_ops(doc, seg.head(run))
            else:
                name = op[1]
                target = texts.get(name)
                if target is None:
                    key = (name, KIND_TEXT)
                    target = texts[name] = (doc._state(key), doc._builder(key))
                state, out = target
                if kind == FULL:
                    if op[0] == TEXT_INSERT:
                        state.apply(op, peer, ctr, 0, out)
                    else:
                        state.apply((TEXT_DELETE, name, tuple(merged[id(run)])), peer, ctr, 0, out)
                elif kind == TYPING:
                    text = op[4] + seg.text[x0 : x0 + end - ctr - size]
                    state.apply((TEXT_INSERT, name, op[2], op[3], text), peer, ctr, 0, out)
                else:
                    ranges = tuple(merged[id(run)])
                    state.apply((TEXT_DELETE, name, ranges), peer, ctr, 0, out)
            vv[peer] = end
            for dpeer, dctr in _head_deps(run):
                if frontier.get(dpeer) == dctr:
                    del frontier[dpeer]
            if kind == TYPING:
                right = op[3]
                if right is not None and frontier.get(right[0]) == right[1]:
                    del frontier[right[0]]
            elif kind == DELETING:
                _deleted_leave_frontier(frontier, seg, run, peer)
            frontier[peer] = end - 1
            if peer == doc._peer and end > doc._next:
                doc._next = end


def import_one(doc: CRDTDocument, t: ChangeTuple) -> bool:
    """Apply ``t`` the way :func:`import_tuples` applies a batch of it alone when it is
    ready and nothing waits (a keystroke from the network): True when applied,
    False when it is not that case (the general way then takes it). Raises the
    general way's error for an invalid change, with nothing applied.

    The general way would schedule it alone (``order`` is ``[t]``, the pending
    buffer unchanged), validate it as a single run and apply it: the same
    calls, without the copies of the version vector and the buffer, the run
    cutting, and the collector's pause (which pays only for bulk imports).
    """
    if doc._depth or doc._pending.waiting:
        return False
    vv = doc._vv
    peer, ctr = t[0], t[1]
    if vv.get(peer, 0) != ctr:
        return False  # a duplicate, an overlap or a gap
    for dpeer, dctr in t[3]:
        if vv.get(dpeer, 0) <= dctr:
            return False  # it waits for its deps
    if ctr + t[5] > 1 << 53:
        raise InvalidChangeError(f"change {peer}@{ctr}: counter too large")
    _validate_one(doc, t, NewIds())
    _apply(doc, t)
    doc._emit_handler_events(None, False)
    if doc._on_update._subs:
        doc._on_update.emit(UpdateEvent((Change(t),), False, None))
    return True


def import_tuples(doc: CRDTDocument, changes: list[ChangeTuple]) -> int:
    """Schedule, validate, then apply: a batch applies whole or not at all."""
    if doc._depth:
        raise RuntimeError("cannot import changes inside a transaction")
    order, waiting, pending_ids = doc._pending.schedule(
        changes, doc._vv, lambda change: _conflicts_with_history(doc, change)
    )
    runs = typing_runs(order)
    _validate(doc, order, runs)
    # From here on nothing can fail on account of the input.
    doc._pending.install(waiting, pending_ids)
    if not order:
        return 0
    for i, j, kind in runs:
        if kind == TYPING:
            _apply_typing_run(doc, order, i, j)
        elif kind == DELETING:
            _apply_delete_run(doc, order, i, j)
        else:
            _apply(doc, order[i])
    doc._emit_handler_events(None, False)
    if doc._on_update._subs:
        doc._on_update.emit(UpdateEvent.deferred(lambda: tuple(map(Change, order)), False, None))
    return len(order)


def _conflicts_with_history(doc: CRDTDocument, change: ChangeTuple) -> bool:
    """Whether ``change`` has the id of a logged change but other content.

    Op ids must never be reused; a duplicate that differs means some replica
    did (e.g. reloaded an older snapshot under its old peer id). Silently
    dropping it would let the replicas diverge for good.
    """
    logged = doc._history.has_start(change[0], change[1])
    if logged is None:
        return False  # never logged here (or compacted): nothing to compare
    return logged[3:] != change[3:]


def _validate(
    doc: CRDTDocument, order: list[ChangeTuple], runs: list[tuple[int, int, int]]
) -> None:
    """Raise InvalidChangeError unless every change of ``order`` applies, in order.

    References may name elements of the document or of changes earlier in
    ``order`` (tracked in ``created``), exactly what applying will find.
    """
    created = NewIds()
    for i, j, kind in runs:
        peer, ctr, _, _, ops, _ = order[i]
        last = order[j - 1]
        if last[1] + last[5] > 1 << 53:
            raise InvalidChangeError(f"change {last[0]}@{last[1]}: counter too large")
        if kind == TYPING:
            # Typing on: once the first insert is valid, each next one names the
            # character just before it and the same right origin. Check only
            # what a run cannot guarantee: the sizes.
            for t in order[i + 1 : j]:
                if t[5] != len(t[4][0][4]) or not t[5]:
                    raise InvalidChangeError(f"change {t[0]}@{t[1]}: size does not match")
            _validate_one(doc, order[i], created)
            created.add((ops[0][1], KIND_TEXT), peer, ctr, last[1] + last[5])
        elif kind == DELETING and _deletes_known(doc, order[i:j], created):
            pass  # every range names existing characters; nothing else to check
        else:
            for t in order[i:j]:
                _validate_one(doc, t, created)


def _deletes_known(doc: CRDTDocument, run: list[ChangeTuple], created: NewIds) -> bool:
    """Whether the text deletes of ``run`` (one handler) all name known characters
    and each change's size is 1. False means: check them one by one."""
    key = (run[0][4][0][1], KIND_TEXT)
    state = doc._states.get(key)
    if state is None:
        state = _EMPTY_STATES[KIND_TEXT]  # maybe a text this batch creates
    if not isinstance(state, TextState):  # pragma: no cover - keys carry the kind
        return False
    seq = state.seq
    ranges = []
    for t in run:
        if t[5] != 1 or not t[4][0][2]:
            return False
        ranges.extend(t[4][0][2])
    for peer, ctr, n in coalesce(ranges):
        at, end = ctr, ctr + n
        while at < end:
            span = seq.find(peer, at)
            stop = span[C] + span[N] if span is not None else created.end_of(key, (peer, at))
            if stop is None:
                return False
            at = stop
    return True


def _validate_one(doc: CRDTDocument, change: ChangeTuple, created: NewIds) -> None:
    """Raise InvalidChangeError unless ``change`` applies after those in ``created``."""
    states = doc._states
    peer, ctr, _, _, ops, size = change
    if ctr + size > 1 << 53 or not ops:
        raise InvalidChangeError(f"change {peer}@{ctr} has no ops or too large a counter")
    first = ctr
    for op in ops:
        code = op[0]
        kind = OP_HANDLER_KIND.get(code)
        if kind is None:
            raise InvalidChangeError(f"unknown op kind {code}")
        # The op's kind is part of the object's identity: a name used as
        # another kind elsewhere is another object, never a conflict.
        key = (op[1], kind)
        state = states.get(key)
        (state if state is not None else _EMPTY_STATES[kind]).validate(op, key, created)
        n = len(op[4]) if code == TEXT_INSERT or code == LIST_INSERT else 1
        if code == TEXT_INSERT or code == LIST_MOVE:
            created.add(key, peer, first, first + n)
        elif code == LIST_INSERT:
            created.add(key, peer, first, first + n)
            created.add_element(key, peer, first, first + n)
        first += n
    if first - ctr != size:
        raise InvalidChangeError(f"change {peer}@{ctr}: size {size} does not match its ops")


def _apply_typing_run(doc: CRDTDocument, changes: list[ChangeTuple], i: int, j: int) -> None:
    """Apply validated changes ``i .. j-1``, one peer typing on, in one integration.

    Integrating the run's text in one go places it exactly where applying
    the changes one by one would: each character's left origin is the one
    before it, so nothing concurrent can come between them.
    """
    run = changes[i:j]
    peer, ctr, _, _, ops, _ = run[0]
    op = ops[0]
    name = op[1]
    text = "".join([t[4][0][4] for t in run])
    doc._clock.observe(max(t[2] for t in run))
    key = (name, KIND_TEXT)
    state = doc._state(key)
    out = doc._builder(key)
    state.apply((TEXT_INSERT, name, op[2], op[3], text), peer, ctr, 0, out)
    _record_run(doc, run)


def _apply_delete_run(doc: CRDTDocument, changes: list[ChangeTuple], i: int, j: int) -> None:
    """Apply validated changes ``i .. j-1``, one peer deleting text, at once.

    Deletes commute and are idempotent, so the union of their ranges, merged
    (a backspaced word is one range), gives the same state in fewer steps.
    """
    run = changes[i:j]
    name = run[0][4][0][1]
    doc._clock.observe(max(t[2] for t in run))
    key = (name, KIND_TEXT)
    state = doc._state(key)
    out = doc._builder(key)
    ranges = coalesce([r for t in run for r in t[4][0][2]])
    state.apply((TEXT_DELETE, name, tuple(ranges)), run[0][0], run[0][1], 0, out)
    _record_run(doc, run)


def _record_run(doc: CRDTDocument, run: list[ChangeTuple]) -> None:
    """Bookkeeping after applying a run of one peer's chained changes."""
    peer, _, _, deps, _, _ = run[0]
    last = run[-1]
    end = last[1] + last[5]
    doc._vv[peer] = end
    frontier = doc._frontier
    for dpeer, dctr in deps:
        if frontier.get(dpeer) == dctr:
            del frontier[dpeer]
    frontier[peer] = end - 1
    doc._history.extend(run)
    if peer == doc._peer:
        doc._next = max(doc._next, end)


def _apply(doc: CRDTDocument, t: ChangeTuple) -> None:
    """Apply one validated change to the states, then record it."""
    ts = t[2]
    if ts > doc._clock.last:
        doc._clock.last = ts
    _apply_ops(doc, t)
    _record(doc, t)


def _apply_ops(doc: CRDTDocument, t: ChangeTuple) -> None:
    """Apply the ops of one validated change to the states."""
    peer, ctr, ts, _, ops, _ = t
    states = doc._states
    first = ctr
    for op in ops:
        code = op[0]
        key = (op[1], OP_HANDLER_KIND[code])
        state = states.get(key)
        if state is None:
            state = doc._state(key)
        out: Any = None
        handler = doc._handlers.get(key)
        if handler is not None and handler._observers._subs:
            out = doc._map_out(key) if state.kind == KIND_MAP else doc._builder(key)
        state.apply(op, peer, first, ts, out)
        first += len(op[4]) if code == TEXT_INSERT or code == LIST_INSERT else 1


def _record(doc: CRDTDocument, t: ChangeTuple) -> None:
    """Bookkeeping after applying remote change ``t``: vector, frontier, history."""
    peer, ctr, _, deps, _, size = t
    doc._vv[peer] = ctr + size
    frontier = doc._frontier
    for dpeer, dctr in deps:
        if frontier.get(dpeer) == dctr:
            del frontier[dpeer]
    frontier[peer] = ctr + size - 1
    doc._history.append(t)
    if peer == doc._peer:
        # Our own changes coming back (e.g. after reloading an older snapshot).
        doc._next = max(doc._next, ctr + size)
