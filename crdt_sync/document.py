"""The document: named handler states, transactions, and the change history.

Theory of operation
-------------------
A document holds one *state* per shared object, named by ``(name, kind)`` (see
``state.py``) and the *history* of changes that built it (``history.py``), kept apart.
Local edits go through handlers, which apply them to the state at once and add
an op to the open transaction; committing the transaction turns its ops into
one :class:`Change` (first op id, ops, minimal deps: see ``_deps_of``, a hybrid
logical clock stamp), appends it to the history and notifies subscribers. Remote
changes are applied exactly once and in causal order: a change is ready when
every dep is covered by the version vector and its first counter is the next
one expected from its peer; otherwise it waits in a bounded pending buffer,
filed under the peer whose progress it waits for.

Handlers are views: a document with none registered (the server's) still
applies every change, and a handler created later binds to the state.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .batch import DELETING, FULL, TYPING, Segment
from .causal import MAX_PENDING, PendingBuffer, coalesce, typing_runs
from .changes import (
    KIND_MAP,
    KIND_TEXT,
    LIST_INSERT,
    LIST_MOVE,
    MAX_INFLATED,
    OP_HANDLER_KIND,
    TEXT_DELETE,
    TEXT_INSERT,
    Change,
    ChangeTuple,
    decode_batch,
    encode_bodies,
)
from .collector import paused_collector
from .events import (
    DeltaBuilder,
    ListEvent,
    MapEvent,
    Observers,
    Subscription,
    TextEvent,
    UpdateEvent,
)
from .exceptions import (
    HandlerError,
    HistoryCompactedError,
    InvalidChangeError,
)
from .history import History
from .ids import HybridLogicalClock, PeerId, VersionVector
from .sequence import Backup, C, N, Sequence
from .state import STATE_TYPES, NewIds, State, StateKey, TextState
from .transaction import Transaction, Transactions, deps_of

if TYPE_CHECKING:
    from .handlers import Handler
    from .snapshot import Snapshot

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


class CRDTDocument:
    """A replicated document of named text, list and map handlers.

    ``peer_id`` identifies this replica (a new random one by default);
    ``document_id`` names the document for routing and storage (a new UUID by
    default) and never enters op ids. ``replica_secret`` (16 to 64 bytes, a new
    random one by default) proves to a sync server that this replica owns
    ``peer_id``: persist it beside the peer id and pass it back when reopening.
    """

    def __init__(
        self,
        peer_id: PeerId | str | None = None,
        document_id: str | None = None,
        *,
        max_pending: int = MAX_PENDING,
        replica_secret: bytes | None = None,
    ) -> None:
        if peer_id is None:
            peer_id = PeerId.generate()
        elif isinstance(peer_id, str):
            peer_id = PeerId.parse(peer_id)
        elif not isinstance(peer_id, PeerId):
            raise TypeError(f"peer_id must be a PeerId, not {type(peer_id).__name__}")
        if document_id is None:
            document_id = str(uuid.uuid4())
        elif not isinstance(document_id, str) or not document_id:
            raise ValueError("document_id must be a non-empty str")
        if replica_secret is None:
            replica_secret = secrets.token_bytes(32)
        elif not isinstance(replica_secret, bytes) or not 16 <= len(replica_secret) <= 64:
            raise ValueError("replica_secret must be 16 to 64 bytes")
        self._replica_secret = replica_secret
        self._peer_id = peer_id
        self._peer = str(peer_id)
        self._document_id = document_id
        # States and handlers by (name, kind): the kind is part of an object's
        # identity, so a name used as text and as a list is two objects.
        self._states: dict[StateKey, State] = {}
        self._handlers: dict[StateKey, Handler] = {}
        self._vv: dict[str, int] = {}
        self._frontier: dict[str, int] = {}
        self._clock = HybridLogicalClock()
        # History: changes in the order applied (a causal order).
        self._history = History()
        # State known without its changes (a compacted or imported snapshot).
        self._base_vv: dict[str, int] = {}
        # Changes waiting for deps, filed under the peer they wait for.
        self._pending = PendingBuffer(max_pending)
        # The open transaction, and the API handlers edit through.
        self._tx = Transactions(self, self._peer)
        self._on_change: Observers[Change] = Observers()
        self._on_update: Observers[UpdateEvent] = Observers()
        self._on_local_step: Observers[tuple[object, list[tuple[Any, ...]]]] = Observers()

    # ------------------------------------------------------------- properties

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def document_id(self) -> str:
        return self._document_id

    @property
    def replica_secret(self) -> bytes:
        """This replica's proof of its peer id (keep it private, persist it with the peer id)."""
        return self._replica_secret

    @property
    def version_vector(self) -> VersionVector:
        """What this document has seen, as an immutable value taken now."""
        return VersionVector(self._vv)

    @property
    def pending_count(self) -> int:
        """How many received changes wait for missing dependencies."""
        return len(self._pending)

    @property
    def handlers(self) -> dict[tuple[str, str], Handler]:
        """The registered handlers, by ``(name, kind)``."""
        return dict(self._handlers)

    @property
    def state_names(self) -> dict[str, tuple[str, ...]]:
        """Every name with state in the document, mapped to its kinds (sorted).

        A name usually has one kind; it has several when replicas used it as,
        say, a text and a list: those are separate objects (see ``docs/internals.md``).
        """
        out: dict[str, list[str]] = {}
        for name, kind in self._states:
            out.setdefault(name, []).append(kind)
        return {name: tuple(sorted(kinds)) for name, kinds in out.items()}

    def __repr__(self) -> str:
        return f"CRDTDocument(peer={self._peer[:8]}, document={self._document_id!r})"

    # --------------------------------------------------------------- handlers

    def register_handler(self, handler: Handler) -> None:
        """Bind ``handler`` to the state of its name and kind (created if new).

        Registering the same handler twice is a no-op; another handler of the
        same name and kind raises HandlerError. Handlers of one name and
        different kinds are different objects and never block each other.
        """
        key = (handler.name, handler.kind)
        current = self._handlers.get(key)
        if current is handler:
            return
        if current is not None:
            raise HandlerError(f"a {key[1]} handler named {key[0]!r} is already registered")
        state = self._state(key)
        self._handlers[key] = handler
        handler._bind(state)

    def _state(self, key: StateKey) -> Any:
        """The state of ``key`` = ``(name, kind)``, created empty if new."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = STATE_TYPES[key[1]]()
        return state

    def get_value(self, name: str, kind: str | None = None) -> Any:
        """The current value of the state ``name`` of ``kind`` ("text", "list", "map").

        Without ``kind``, the value of the one state of that name; raises
        KeyError if there is none and HandlerError if the name has several
        kinds (pass ``kind`` then).
        """
        if kind is not None:
            if kind not in STATE_TYPES:
                raise ValueError(f"unknown kind {kind!r}")
            return self._states[(name, kind)].value()
        found = [state for (n, _), state in self._states.items() if n == name]
        if not found:
            raise KeyError(name)
        if len(found) > 1:
            kinds = ", ".join(sorted(state.kind for state in found))
            raise HandlerError(f"{name!r} names several objects ({kinds}): pass kind")
        return found[0].value()

    # ------------------------------------------------------------ subscribing

    def on_change(self, callback: Callable[[Change], None]) -> Subscription:
        """Call ``callback`` with every locally created change, after it commits."""
        return self._on_change.subscribe(callback)

    def on_update(self, callback: Callable[[UpdateEvent], None]) -> Subscription:
        """Call ``callback`` after every local commit and every import that applied something."""
        return self._on_update.subscribe(callback)

    # ------------------------------------------------------------ transactions

    def transaction(self, origin: object = None) -> Transaction:
        """Group edits into one change and one event per handler: ``with doc.transaction():``.

        Nested use joins the open transaction (the outermost origin wins). If the
        block raises, the edits made so far are still committed: each edit is
        applied at once, and a replica must never hold state its history lacks.
        """
        tx = self._tx
        return tx.plain if origin is None else Transaction(tx, origin)

    @property
    def in_transaction(self) -> bool:
        return self._tx.depth > 0

    # The transaction's counters, as the rest of the document sees them.
    @property
    def _next(self) -> int:
        return self._tx.next

    @_next.setter
    def _next(self, value: int) -> None:
        self._tx.next = value

    @property
    def _depth(self) -> int:
        return self._tx.depth

    @property
    def _undo_tracking(self) -> int:
        return self._tx.undo_tracking

    @_undo_tracking.setter
    def _undo_tracking(self, value: int) -> None:
        self._tx.undo_tracking = value

    def _builder(self, key: StateKey) -> DeltaBuilder | None:
        return self._tx.builder(key)

    def _map_out(self, key: StateKey) -> set[str] | None:
        return self._tx.map_out(key)

    def _commit(self) -> None:
        """The outermost transaction closed: record its change, announce it."""
        tx = self._tx
        ops = tx.ops
        origin = tx.origin
        tx.origin = None
        change: ChangeTuple | None = None
        if ops:
            tx.ops = []
            first = tx.first
            peer = self._peer
            nxt = tx.next
            frontier = self._frontier
            change = (peer, first, tx.stamp, deps_of(peer, first, ops), tuple(ops), nxt - first)
            self._history.append(change)
            self._vv[peer] = nxt
            if len(frontier) != 1 or peer not in frontier:
                frontier.clear()
            frontier[peer] = nxt - 1
        if tx.builders or tx.map_keys:
            self._emit_handler_events(origin, True)
        if tx.undo_records:
            records = tx.undo_records
            tx.undo_records = []
            self._on_local_step.emit((origin, records))
        if change is not None and (self._on_change._subs or self._on_update._subs):
            public = Change(change)
            self._on_change.emit(public)
            self._on_update.emit(UpdateEvent((public,), True, origin))

    def _emit_handler_events(self, origin: object, local: bool) -> None:
        tx = self._tx
        if tx.builders:
            builders = tx.builders
            tx.builders = {}
            for key, builder in builders.items():
                handler = self._handlers.get(key)
                if handler is None or not builder:
                    continue
                delta = builder.delta()
                if not delta:
                    continue
                if handler.kind == "text":
                    handler._observers.emit(TextEvent(delta, origin, local))
                else:
                    handler._observers.emit(ListEvent(delta, origin, local))
        if tx.map_keys:
            keys = tx.map_keys
            tx.map_keys = {}
            for key, changed in keys.items():
                handler = self._handlers.get(key)
                if handler is not None and changed:
                    handler._observers.emit(MapEvent(frozenset(changed), origin, local))

    # --------------------------------------------------------------- history

    def export_changes(self, since: VersionVector | None = None) -> list[Change]:
        """The changes not covered by ``since`` (all when None), in causal order.

        Raises HistoryCompactedError when some of them were dropped by compact();
        check :meth:`can_export` and send a snapshot instead.
        """
        return [Change(t) for t in self._export(since)]

    def export_changes_in_parts(self) -> Iterator[list[Change]]:
        """What :meth:`export_changes` returns, in parts of about a thousand changes.

        The parts are those of the history at the call (edits made while
        iterating are not included); each is decoded when reached, so a user
        interface can read a long history a part per event-loop turn.
        Raises HistoryCompactedError (on the call) when the history was compacted.
        """
        if self._base_vv:
            raise HistoryCompactedError("history before the last compaction is gone")
        parts = self._history.parts()
        return ([Change(t) for t in part] for part in parts)

    def _export(self, since: VersionVector | None) -> list[ChangeTuple]:
        if since is None:
            if self._base_vv:
                raise HistoryCompactedError("history before the last compaction is gone")
            return self._history.since(None)
        if not self.can_export(since):
            raise HistoryCompactedError("history the receiver lacks was compacted")
        return self._history.since(since)

    def can_export(self, since: VersionVector) -> bool:
        """Whether the changes ``since`` lacks are all still in the history."""
        for peer, base in self._base_vv.items():
            have = since.get(peer, 0)
            if have < base and self._vv.get(peer, 0) > have:
                return False
        return True

    def binary_export_changes(self, since: VersionVector | None = None) -> bytes:
        """The changes ``since`` lacks (all when None) as bytes (``encode_changes``).

        Whole segments of the history are reused as they are kept.
        """
        if since is None:
            if self._base_vv:
                raise HistoryCompactedError("history before the last compaction is gone")
        elif not self.can_export(since):
            raise HistoryCompactedError("history the receiver lacks was compacted")
        return encode_bodies(self._history.bodies_since(since))

    def binary_import_changes(self, data: bytes, max_size: int = MAX_INFLATED) -> int:
        """Decode and import; a DecodeError leaves the document untouched.

        ``max_size`` bounds the decoded body of ``data`` (what its compressed
        form may inflate to): a server passes its message size limit. The
        garbage collector is paused meanwhile (``collector.py``).
        """
        with paused_collector():
            batch = decode_batch(data, max_size)
            if batch and isinstance(batch[0], Segment):
                count = self._import_segments(batch)
            else:
                count = self._import(batch)
            # Freed before the pause ends: the collection the next allocation
            # then triggers walks only what the import keeps, not the batch.
            del batch
        return count

    def _import_segments(self, segments: list[Segment]) -> int:
        """Import decoded segments run by run when they are simply the next changes
        (each run starting at the counter expected from its peer, its deps known,
        nothing pending); otherwise change by change through :meth:`_import`.

        The fast way builds no object per change: a typing run is one integration
        of its text, a deleting run one pass over its merged ranges, and the
        segments join the history as they are. Same checks, same result.
        """
        if self._depth:
            raise RuntimeError("cannot import changes inside a transaction")
        if len(self._pending):
            return self._import([t for seg in segments for t in seg.tuples()])
        if not self._apply_runs_checked(segments):
            # Nothing was changed: check everything first, then apply.
            if not self._runs_are_next(segments):
                return self._import([t for seg in segments for t in seg.tuples()])
            merged = self._validate_runs(segments)
            # From here on nothing can fail on account of the input.
            self._apply_runs(segments, merged)
        stamps = [seg.max_ts for seg in segments if seg.n]
        if stamps:
            self._clock.observe(max(stamps))
        for seg in segments:
            self._history.add_segment(seg)
        self._emit_handler_events(None, False)
        count = sum(seg.n for seg in segments)
        if count and self._on_update._subs:
            changes = tuple(Change(t) for seg in segments for t in seg.tuples())
            self._on_update.emit(UpdateEvent(changes, False, None))
        return count

    def _apply_runs_checked(self, segments: list[Segment]) -> bool:
        """Apply ``segments``, text runs only, checking each run as it is applied;
        True if all applied. Otherwise (a run not simply next, not valid, not a
        text edit, or a text too large to copy for this batch) put everything
        back as it was and return False, for :meth:`_runs_are_next`,
        :meth:`_validate_runs` and :meth:`_apply_runs` to decide.

        Validation fused with application: the lookups that check a run are
        the ones that place it (an unknown origin or deleted id raises KeyError
        in the sequence). The rollback is a copy of each text touched, taken
        before its first change, so it runs only when the batch holds at least
        an eighth as many runs as that text has spans (a copy costs far less
        per span than a run's separate validation).
        """
        runs = 0
        for seg in segments:
            runs += len(seg.runs)
        if runs < _CHECKED_MIN_RUNS:
            return False
        vv = self._vv
        frontier = self._frontier
        saved = (dict(vv), dict(frontier), self._next, dict(self._tx.builders))
        backups: list[tuple[Sequence, Backup]] = []
        new_states: list[StateKey] = []
        texts: dict[str, tuple[Sequence, DeltaBuilder | None]] = {}
        # Whether the deleting run at hand deletes some other peer's elements.
        foreign = False
        me = self._peer
        # The text of the previous run (runs mostly edit one text).
        last_name: str | None = None
        seq: Any = None  # (a Sequence from the first run on)
        out: DeltaBuilder | None = None
        try:
            for seg in segments:
                for run in seg.runs:
                    _, _, kind, head, _, x0, _, end = run
                    peer, ctr, _, deps, ops, size = head
                    if vv.get(peer, 0) != ctr:
                        raise _NotNow  # a duplicate, an overlap or a gap
                    # Each dep is checked and leaves the frontier in one pass
                    # (before the run is applied: that reads neither, and a
                    # failure puts the frontier back with everything else).
                    for dpeer, dctr in deps:
                        if vv.get(dpeer, 0) <= dctr:
                            raise _NotNow
                        if frontier.get(dpeer) == dctr:
                            del frontier[dpeer]
                    op = ops[0]
                    # (A continued run's head is one text insert or delete: decoded so.)
                    if kind == FULL and (len(ops) != 1 or op[0] not in _TEXT_EDITS):
                        raise _NotNow
                    name = op[1]
                    if name != last_name:
                        target = texts.get(name)
                        if target is None:
                            key = (name, KIND_TEXT)
                            if key not in self._states:
                                new_states.append(key)
                            seq = self._state(key).seq
                            if seq.span_count() > 8 * runs:
                                raise _NotNow
                            backups.append((seq, seq.backup()))
                            target = texts[name] = (seq, self._builder(key))
                        seq, out = target
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
                        if out is None:
                            seq.integrate(peer, ctr, text, op[2], right, False, True)
                        else:
                            span, off = seq.integrate(peer, ctr, text, op[2], right, False, True)
                            out.splice(seq.span_visible_start(span) + off, 0, text)
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
                        if out is None:
                            delete = seq.delete_known
                            for p, c, n in ranges:
                                delete(p, c, n)
                        else:
                            for p, c, n in ranges:
                                for vis, count, _ in seq.set_deleted(p, c, n, True, True):
                                    out.splice(vis, count, "")
                    vv[peer] = end
                    if foreign:
                        # Each continuation depends on the last element it deletes.
                        foreign = False
                        one_each = seg.deletes_one_each(run)
                        for p, c, n in seg.delete_ranges(run):
                            if p != peer:
                                f = frontier.get(p)
                                if f is not None and (
                                    c <= f < c + n if one_each else f == c + n - 1
                                ):
                                    del frontier[p]
                    frontier[peer] = end - 1
                    if peer == me and end > self._next:
                        self._next = end
        except BaseException as exc:
            # Put back everything this attempt touched.
            for seq, backup in backups:
                seq.restore(backup)
            for key in new_states:
                del self._states[key]
            vv.clear()
            vv.update(saved[0])
            frontier.clear()
            frontier.update(saved[1])
            self._next = saved[2]
            self._tx.builders = saved[3]
            if isinstance(exc, Exception):
                return False  # the careful way decides (and raises the typed error)
            raise
        return True

    def _runs_are_next(self, segments: list[Segment]) -> bool:
        """Whether every run of ``segments`` applies in order as it stands."""
        vv = dict(self._vv)
        for seg in segments:
            for run in seg.runs:
                _, _, kind, head, _, _, _, end = run
                peer = head[0]
                if vv.get(peer, 0) != head[1]:
                    return False  # a duplicate, an overlap or a gap
                for dpeer, dctr in head[3]:
                    if vv.get(dpeer, 0) <= dctr:
                        return False
                if kind == TYPING:
                    right = head[4][0][3]
                    if right is not None and right[0] != peer and vv.get(right[0], 0) <= right[1]:
                        return False
                elif kind == DELETING:
                    for p, c, n in seg.delete_ranges(run):
                        if p != peer and vv.get(p, 0) < c + n:
                            return False
                vv[peer] = end
        return True

    def _validate_runs(self, segments: list[Segment]) -> dict[int, list[tuple[str, int, int]]]:
        """Raise InvalidChangeError unless every run applies, in order.

        Returns the merged ranges of each deleting run, by ``id(run)``.
        """
        merged: dict[int, list[tuple[str, int, int]]] = {}
        created = NewIds()
        states = self._states
        for seg in segments:
            for run in seg.runs:
                _, _, kind, head, _, _, _, end = run
                ops = head[4]
                op = ops[0]
                if kind == FULL and (len(ops) != 1 or op[0] not in _TEXT_EDITS):
                    self._validate_one(head, created)
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
                    created.add(key, head[0], head[1], end)
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

    def _apply_runs(self, segments: list[Segment], merged: dict[int, Any]) -> None:
        """Apply the validated runs of ``segments`` in order (no history: the
        segments are kept). A text's state and delta builder are looked up once."""
        vv = self._vv
        frontier = self._frontier
        texts: dict[str, tuple[Any, DeltaBuilder | None]] = {}
        for seg in segments:
            for run in seg.runs:
                _, _, kind, head, _, x0, _, end = run
                peer, ctr, _, deps, ops, size = head
                op = ops[0]
                if kind == FULL and (len(ops) != 1 or op[0] not in _TEXT_EDITS):
                    self._apply_ops(seg.head(run))
                else:
                    name = op[1]
                    target = texts.get(name)
                    if target is None:
                        key = (name, KIND_TEXT)
                        target = texts[name] = (self._state(key), self._builder(key))
                    state, out = target
                    if kind == FULL:
                        if op[0] == TEXT_INSERT:
                            state.apply(op, peer, ctr, 0, out)
                        else:
                            state.apply(
                                (TEXT_DELETE, name, tuple(merged[id(run)])), peer, ctr, 0, out
                            )
                    elif kind == TYPING:
                        text = op[4] + seg.text[x0 : x0 + end - ctr - size]
                        state.apply((TEXT_INSERT, name, op[2], op[3], text), peer, ctr, 0, out)
                    else:
                        ranges = tuple(merged[id(run)])
                        state.apply((TEXT_DELETE, name, ranges), peer, ctr, 0, out)
                vv[peer] = end
                for dpeer, dctr in deps:
                    if frontier.get(dpeer) == dctr:
                        del frontier[dpeer]
                if kind == TYPING:
                    right = ops[0][3]
                    if right is not None and frontier.get(right[0]) == right[1]:
                        del frontier[right[0]]
                elif kind == DELETING:
                    # Each continuation depends on the last element it deletes.
                    one_each = seg.deletes_one_each(run)
                    for p, c, n in seg.delete_ranges(run):
                        if p != peer:
                            f = frontier.get(p)
                            if f is not None and (c <= f < c + n if one_each else f == c + n - 1):
                                del frontier[p]
                frontier[peer] = end - 1
                if peer == self._peer and end > self._next:
                    self._next = end

    def import_changes(self, changes: Iterable[Change]) -> int:
        """Apply the changes not yet seen, in causal order; returns how many were applied.

        Duplicates are ignored. A change whose deps are missing waits (bounded by
        ``max_pending``) and is applied when they arrive, counted in the call that
        applied it. The batch applies whole or not at all: an invalid change raises
        InvalidChangeError, a full pending buffer PendingBufferFullError, and the
        document is left exactly as it was.
        """
        tuples = []
        for change in changes:
            if not isinstance(change, Change):
                raise TypeError(f"expected Change, not {type(change).__name__}")
            tuples.append(change._data)
        if len(tuples) == 1 and self._import_one(tuples[0]):
            return 1
        with paused_collector():
            return self._import(tuples)

    def _import_one(self, t: ChangeTuple) -> bool:
        """Apply ``t`` the way :meth:`_import` applies a batch of it alone when it is
        ready and nothing waits (a keystroke from the network): True when applied,
        False when it is not that case (the general way then takes it). Raises the
        general way's error for an invalid change, with nothing applied.

        The general way would schedule it alone (``order`` is ``[t]``, the pending
        buffer unchanged), validate it as a single run and apply it: the same
        calls, without the copies of the version vector and the buffer, the run
        cutting, and the collector's pause (which pays only for bulk imports).
        """
        if self._depth or self._pending.waiting:
            return False
        vv = self._vv
        peer, ctr = t[0], t[1]
        if vv.get(peer, 0) != ctr:
            return False  # a duplicate, an overlap or a gap
        for dpeer, dctr in t[3]:
            if vv.get(dpeer, 0) <= dctr:
                return False  # it waits for its deps
        if ctr + t[5] > 1 << 53:
            raise InvalidChangeError(f"change {peer}@{ctr}: counter too large")
        self._validate_one(t, NewIds())
        self._apply(t)
        self._emit_handler_events(None, False)
        if self._on_update._subs:
            self._on_update.emit(UpdateEvent((Change(t),), False, None))
        return True

    def _import(self, changes: list[ChangeTuple]) -> int:
        """Schedule, validate, then apply: a batch applies whole or not at all."""
        if self._depth:
            raise RuntimeError("cannot import changes inside a transaction")
        order, waiting, pending_ids = self._pending.schedule(
            changes, self._vv, self._conflicts_with_history
        )
        runs = typing_runs(order)
        self._validate(order, runs)
        # From here on nothing can fail on account of the input.
        self._pending.install(waiting, pending_ids)
        if not order:
            return 0
        for i, j, kind in runs:
            if kind == TYPING:
                self._apply_typing_run(order, i, j)
            elif kind == DELETING:
                self._apply_delete_run(order, i, j)
            else:
                self._apply(order[i])
        self._emit_handler_events(None, False)
        if self._on_update._subs:
            self._on_update.emit(UpdateEvent(tuple(Change(t) for t in order), False, None))
        return len(order)

    def _conflicts_with_history(self, change: ChangeTuple) -> bool:
        """Whether ``change`` has the id of a logged change but other content.

        Op ids must never be reused; a duplicate that differs means some replica
        did (e.g. reloaded an older snapshot under its old peer id). Silently
        dropping it would let the replicas diverge for good.
        """
        logged = self._history.has_start(change[0], change[1])
        if logged is None:
            return False  # never logged here (or compacted): nothing to compare
        return logged[3:] != change[3:]

    def _validate(self, order: list[ChangeTuple], runs: list[tuple[int, int, int]]) -> None:
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
                self._validate_one(order[i], created)
                created.add((ops[0][1], KIND_TEXT), peer, ctr, last[1] + last[5])
            elif kind == DELETING and self._deletes_known(order[i:j], created):
                pass  # every range names existing characters; nothing else to check
            else:
                for t in order[i:j]:
                    self._validate_one(t, created)

    def _deletes_known(self, run: list[ChangeTuple], created: NewIds) -> bool:
        """Whether the text deletes of ``run`` (one handler) all name known characters
        and each change's size is 1. False means: check them one by one."""
        key = (run[0][4][0][1], KIND_TEXT)
        state = self._states.get(key)
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

    def _validate_one(self, change: ChangeTuple, created: NewIds) -> None:
        """Raise InvalidChangeError unless ``change`` applies after those in ``created``."""
        states = self._states
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

    def _apply_typing_run(self, changes: list[ChangeTuple], i: int, j: int) -> None:
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
        self._clock.observe(max(t[2] for t in run))
        key = (name, KIND_TEXT)
        state = self._state(key)
        out = self._builder(key)
        state.apply((TEXT_INSERT, name, op[2], op[3], text), peer, ctr, 0, out)
        self._record_run(run)

    def _apply_delete_run(self, changes: list[ChangeTuple], i: int, j: int) -> None:
        """Apply validated changes ``i .. j-1``, one peer deleting text, at once.

        Deletes commute and are idempotent, so the union of their ranges, merged
        (a backspaced word is one range), gives the same state in fewer steps.
        """
        run = changes[i:j]
        name = run[0][4][0][1]
        self._clock.observe(max(t[2] for t in run))
        key = (name, KIND_TEXT)
        state = self._state(key)
        out = self._builder(key)
        ranges = coalesce([r for t in run for r in t[4][0][2]])
        state.apply((TEXT_DELETE, name, tuple(ranges)), run[0][0], run[0][1], 0, out)
        self._record_run(run)

    def _record_run(self, run: list[ChangeTuple]) -> None:
        """Bookkeeping after applying a run of one peer's chained changes."""
        peer, _, _, deps, _, _ = run[0]
        last = run[-1]
        end = last[1] + last[5]
        self._vv[peer] = end
        frontier = self._frontier
        for dpeer, dctr in deps:
            if frontier.get(dpeer) == dctr:
                del frontier[dpeer]
        frontier[peer] = end - 1
        self._history.extend(run)
        if peer == self._peer:
            self._next = max(self._next, end)

    def _apply(self, t: ChangeTuple) -> None:
        """Apply one validated change to the states, then record it."""
        ts = t[2]
        if ts > self._clock.last:
            self._clock.last = ts
        self._apply_ops(t)
        self._record(t)

    def _apply_ops(self, t: ChangeTuple) -> None:
        """Apply the ops of one validated change to the states."""
        peer, ctr, ts, _, ops, _ = t
        states = self._states
        first = ctr
        for op in ops:
            code = op[0]
            key = (op[1], OP_HANDLER_KIND[code])
            state = states.get(key)
            if state is None:
                state = self._state(key)
            out: Any = None
            handler = self._handlers.get(key)
            if handler is not None and handler._observers._subs:
                out = self._map_out(key) if state.kind == KIND_MAP else self._builder(key)
            state.apply(op, peer, first, ts, out)
            first += len(op[4]) if code == TEXT_INSERT or code == LIST_INSERT else 1

    def _record(self, t: ChangeTuple) -> None:
        """Bookkeeping after applying remote change ``t``: vector, frontier, history."""
        peer, ctr, _, deps, _, size = t
        self._vv[peer] = ctr + size
        frontier = self._frontier
        for dpeer, dctr in deps:
            if frontier.get(dpeer) == dctr:
                del frontier[dpeer]
        frontier[peer] = ctr + size - 1
        self._history.append(t)
        if peer == self._peer:
            # Our own changes coming back (e.g. after reloading an older snapshot).
            self._next = max(self._next, ctr + size)

    def timestamp_of(self, op_id: tuple[str, int]) -> int | None:
        """The clock stamp of the change that made op ``op_id`` = ``(peer, counter)``.

        A hybrid logical clock stamp (milliseconds since the epoch << 16 | a
        logical counter): ``stamp >> 16`` is Unix time in milliseconds, as the
        author's clock saw it. None when this document does not hold that
        change: never seen, or known only from a snapshot or before a
        :meth:`compact`.
        """
        peer, ctr = op_id
        tx = self._tx
        if peer == self._peer and tx.depth and tx.first <= ctr < tx.next:
            return tx.stamp  # made by the open transaction
        change = self._history.find(peer, ctr)
        return None if change is None else change[2]

    # -------------------------------------------------------------- snapshots

    def take_snapshot(self) -> Snapshot:
        """The encoded state now, tombstones included, so it can still merge anything."""
        from .snapshot import Snapshot

        return Snapshot.of(self)

    def import_snapshot(self, snapshot: Snapshot) -> bool:
        """Merge a snapshot's state; returns False if it held nothing new.

        Works with concurrent local edits: the snapshot keeps element ids and
        origins, so its elements are integrated like remote inserts.
        """
        from .snapshot import merge_snapshot

        if self._depth:
            raise RuntimeError("cannot import a snapshot inside a transaction")
        if snapshot.version_vector <= self.version_vector:
            return False
        with paused_collector():  # it makes many long-lived objects, as an import does
            merge_snapshot(self, snapshot)
        # Changes that waited may be ready now: schedule them again.
        waiting = self._pending.take_all()
        try:
            self._import(waiting)
        finally:
            self._emit_handler_events(None, False)
            # The merge itself changed the document even when no change was applied.
            self._on_update.emit(UpdateEvent((), False, None))
        return True

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Snapshot,
        peer_id: PeerId | str | None = None,
        document_id: str | None = None,
        *,
        resume: bool = False,
    ) -> CRDTDocument:
        """A document holding the snapshot's state.

        By default it gets a new peer id, which is always safe. To continue as a
        peer that already made ops in the snapshot, pass that ``peer_id`` and
        ``resume=True``: op counters then continue after the ones the snapshot
        records, so none of them is reissued. Only do that with the peer's
        *latest* state: ops made after an older snapshot (and already sent) would
        get their ids reissued, and replicas that saw the originals would ignore
        the new ones. Without ``resume`` such a ``peer_id`` raises ValueError.
        """
        from .snapshot import load_snapshot

        if peer_id is not None and not resume:
            authored = snapshot.version_vector.get(str(peer_id), 0)
            if authored:
                raise ValueError(
                    f"the snapshot holds {authored} op(s) of peer {peer_id}: continuing as"
                    " that peer could reissue op ids if the snapshot is not its latest"
                    " state; pass resume=True if it is, or use a new peer id"
                )
        doc = cls(peer_id, document_id or snapshot.document_id)
        load_snapshot(doc, snapshot)
        return doc

    def compact(self) -> None:
        """Drop the change history; the state (with tombstones) still merges anything.

        Afterwards :meth:`export_changes` can only serve receivers that already
        have everything up to now; send them a snapshot otherwise.
        """
        if self._depth:
            raise RuntimeError("cannot compact inside a transaction")
        self._base_vv = dict(self._vv)
        self._history.clear()

    # ---------------------------------------------------------------- testing

    def check_invariants(self) -> None:
        """Raise AssertionError if internal structures disagree (for tests)."""
        for state in self._states.values():
            seq = getattr(state, "seq", None)
            if seq is not None:
                seq.check_invariants()
        for key, state in self._states.items():
            if state.kind != key[1]:
                raise AssertionError(f"state {key} holds a {state.kind}")
            handler = self._handlers.get(key)
            if handler is not None and handler._state is not state:
                raise AssertionError(f"handler {key} is bound to another state")
        if self._vv.get(self._peer, 0) != self._next:
            raise AssertionError("own counter disagrees with the version vector")
