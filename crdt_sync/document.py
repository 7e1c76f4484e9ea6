"""The document: named handler states, transactions, and the change history.

Theory of operation
-------------------
A document holds one *state* per shared object, named by ``(name, kind)`` (see
``state.py``) and the *history* of changes that built it (``history.py``), kept apart.
Local edits go through handlers, which apply them to the state at once and add
an op to the open transaction; committing the transaction turns its ops into
one :class:`Change` (first op id, ops, minimal deps: see ``transaction.deps_of``, a hybrid
logical clock stamp), appends it to the history and notifies subscribers. Remote
changes are applied exactly once and in causal order, by runs or change by
change, all or nothing: that half lives in ``remote.py``, which
:meth:`CRDTDocument.import_changes` and :meth:`CRDTDocument.binary_import_changes`
call; this module is the facade users see.

Handlers are views: a document with none registered (the server's) still
applies every change, and a handler created later binds to the state.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import remote
from .batch import Segment
from .causal import MAX_PENDING, PendingBuffer
from .change_batch import ChangeBatch
from .changes import (
    MAX_INFLATED,
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
)
from .history import History
from .ids import HybridLogicalClock, PeerId, VersionVector
from .state import STATE_TYPES, State, StateKey
from .transaction import Transaction, Transactions, deps_of

if TYPE_CHECKING:
    from .handlers import Handler
    from .snapshot import Snapshot


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

    def binary_export_changes(
        self, since: VersionVector | None = None, compress: bool | None = None
    ) -> bytes:
        """The changes ``since`` lacks (all when None) as bytes (``encode_changes``).

        Whole segments of the history are reused as they are kept. ``compress``
        as in :func:`encode_changes` (None: compressed when over 4 KiB); False
        for bytes that are decoded again at once, where deflating and
        inflating them would be most of the work.
        """
        if since is None:
            if self._base_vv:
                raise HistoryCompactedError("history before the last compaction is gone")
        elif not self.can_export(since):
            raise HistoryCompactedError("history the receiver lacks was compacted")
        return encode_bodies(self._history.bodies_since(since), compress)

    def binary_import_changes(self, data: bytes, max_size: int = MAX_INFLATED) -> int:
        """Decode and import; a DecodeError leaves the document untouched.

        ``max_size`` bounds the decoded body of ``data`` (what its compressed
        form may inflate to): a server passes its message size limit. The
        garbage collector is paused meanwhile (``collector.py``).
        """
        with paused_collector():
            batch = decode_batch(data, max_size)
            if batch and isinstance(batch[0], Segment):
                count = remote.import_segments(self, batch)
            else:
                count = remote.import_tuples(self, batch)
            # Freed before the pause ends: the collection the next allocation
            # then triggers walks only what the import keeps, not the batch.
            del batch
        return count

    def _import_batch(self, batch: ChangeBatch) -> int:
        """:meth:`import_changes` of a decoded batch: by its segments, as
        :meth:`binary_import_changes` imports, when it is made of segments."""
        segments = batch.segments
        with paused_collector():
            if segments is not None:
                return remote.import_segments(self, segments, batch)
            return remote.import_tuples(self, batch.tuples())

    def import_changes(self, changes: Iterable[Change]) -> int:
        """Apply the changes not yet seen, in causal order; returns how many were applied.

        Duplicates are ignored. A change whose deps are missing waits (bounded by
        ``max_pending``) and is applied when they arrive, counted in the call that
        applied it. The batch applies whole or not at all: an invalid change raises
        InvalidChangeError, a full pending buffer PendingBufferFullError, and the
        document is left exactly as it was.

        A :class:`~crdt_sync.change_batch.ChangeBatch` (what the sync protocol
        decodes) is applied from its decoded segments, by runs, with no
        :class:`Change` built: see :mod:`crdt_sync.change_batch`.
        """
        if isinstance(changes, ChangeBatch):
            return self._import_batch(changes)
        tuples = []
        for change in changes:
            if not isinstance(change, Change):
                raise TypeError(f"expected Change, not {type(change).__name__}")
            tuples.append(change._data)
        if len(tuples) == 1 and remote.import_one(self, tuples[0]):
            return 1
        with paused_collector():
            return remote.import_tuples(self, tuples)

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
            remote.import_tuples(self, waiting)
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
