"""Local transactions: how handlers' edits become one change.

:class:`Transactions` is the narrow API handlers edit through (the only part of
a document they touch): open and close a transaction, take op ids, record an
op already applied to a state, report what became visible, record undo steps.
Committing the outermost transaction turns its ops into one change (first op
id, ops, minimal deps from :func:`deps_of`, a clock stamp), which the document
adds to its history and announces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .changes import (
    LIST_DELETE,
    LIST_INSERT,
    LIST_MOVE,
    LIST_SET,
    TEXT_DELETE,
    TEXT_INSERT,
)
from .events import DeltaBuilder
from .state import StateKey

if TYPE_CHECKING:
    from .document import CRDTDocument


def deps_of(peer: str, first: int, ops: list[tuple[Any, ...]]) -> tuple[tuple[str, int], ...]:
    """The deps of a local change: this peer's previous op, and the newest op of
    each other peer whose elements the ops name (origins, deleted or updated
    elements).

    That is all a receiver needs before applying the change: every element it
    refers to then exists. Concurrency needs no more (map and list registers
    compare clock stamps, sequences compare origins), and keeping deps this
    small keeps changes small in sessions with many writers, where the whole
    frontier would name every one of them.
    """
    own = ((peer, first - 1),) if first else ()
    if len(ops) == 1:
        op = ops[0]
        if op[0] == TEXT_INSERT:
            left, right = op[2], op[3]
            if (left is None or left[0] == peer) and (right is None or right[0] == peer):
                return own
    newest: dict[str, int] | None = None
    for op in ops:
        code = op[0]
        if code == TEXT_INSERT or code == LIST_INSERT:
            left, right = op[2], op[3]
            # Typing after one's own text: nothing of another peer is named.
            if (left is None or left[0] == peer) and (right is None or right[0] == peer):
                continue
            named: Any = (left, right)
        elif code == TEXT_DELETE:
            named = [(p, c + n - 1) for p, c, n in op[2] if p != peer]
        elif code == LIST_DELETE:
            named = [(p, c) for p, c, _ in op[2]]
        elif code == LIST_MOVE:
            named = op[2:5]
        elif code == LIST_SET:
            named = op[2:3]
        else:
            continue
        for ident in named:
            if ident is not None and ident[0] != peer:
                if newest is None:
                    newest = {}
                if newest.get(ident[0], -1) < ident[1]:
                    newest[ident[0]] = ident[1]
    return own if newest is None else own + tuple(newest.items())


class Transactions:
    """The open transaction of one document, and the API handlers edit through.

    Attributes handlers read: ``depth`` (0: none open), ``peer`` (this replica),
    ``next`` (the next op id's counter), ``stamp`` (the open transaction's clock
    stamp), ``undo_tracking`` (whether an undo manager listens).
    """

    __slots__ = (
        "_doc",
        "builders",
        "depth",
        "first",
        "map_keys",
        "next",
        "ops",
        "origin",
        "peer",
        "plain",
        "stamp",
        "undo_records",
        "undo_tracking",
    )

    def __init__(self, doc: CRDTDocument, peer: str) -> None:
        self._doc = doc
        self.peer = peer
        self.next = 0
        self.depth = 0
        self.origin: object = None
        self.stamp = 0
        self.first = 0
        self.ops: list[tuple[Any, ...]] = []
        self.builders: dict[StateKey, DeltaBuilder] = {}
        self.map_keys: dict[StateKey, set[str]] = {}
        self.undo_records: list[tuple[Any, ...]] = []
        self.undo_tracking = 0
        #: The context manager of ``doc.transaction()`` without an origin: it
        #: holds nothing per use, so one serves every such block.
        self.plain = Transaction(self, None)

    def begin(self, origin: object = None) -> None:
        """Open a transaction, or join the open one (the outermost origin wins)."""
        if self.depth == 0:
            self.origin = origin
            self.stamp = self._doc._clock.tick()
            self.first = self.next
        self.depth += 1

    def end(self) -> None:
        """Close; closing the outermost one commits it (see ``CRDTDocument._commit``)."""
        self.depth -= 1
        if not self.depth:
            self._doc._commit()

    def push(self, op: tuple[Any, ...], size: int) -> None:
        """Record a local op, already applied to its state, that took ``size`` op ids."""
        ops = self.ops
        kind = op[0]
        if ops and (kind == TEXT_INSERT or kind == LIST_INSERT):
            last = ops[-1]
            # Typing within one transaction: merge with the insert just before.
            if (
                last[0] == kind
                and last[1] == op[1]
                and last[3] == op[3]
                and op[2] == (self.peer, self.next - 1)
            ):
                ops[-1] = (kind, op[1], last[2], last[3], last[4] + op[4])
                self.next += size
                return
        ops.append(op)
        self.next += size

    def builder(self, key: StateKey) -> DeltaBuilder | None:
        """The delta builder for state ``key`` if anyone observes it, else None."""
        handler = self._doc._handlers.get(key)
        if handler is None or not handler._observers:
            return None
        builder = self.builders.get(key)
        if builder is None:
            builder = self.builders[key] = DeltaBuilder()
        return builder

    def map_out(self, key: StateKey) -> set[str] | None:
        """The set to report changed keys of map ``key`` in, if anyone observes it."""
        handler = self._doc._handlers.get(key)
        if handler is None or not handler._observers:
            return None
        keys = self.map_keys.get(key)
        if keys is None:
            keys = self.map_keys[key] = set()
        return keys

    def undo(self, record: tuple[Any, ...]) -> None:
        """Record an inverse step for the undo manager, if one listens."""
        if self.undo_tracking:
            self.undo_records.append(record)


class Transaction:
    """The context manager :meth:`CRDTDocument.transaction` returns."""

    __slots__ = ("_origin", "_tx")

    def __init__(self, tx: Transactions, origin: object) -> None:
        self._tx = tx
        self._origin = origin

    def __enter__(self) -> CRDTDocument:
        # Transactions.begin and .end, inlined: one call each per transaction.
        tx = self._tx
        if not tx.depth:
            tx.origin = self._origin
            tx.stamp = tx._doc._clock.tick()
            tx.first = tx.next
        tx.depth += 1
        return tx._doc

    def __exit__(self, *exc: object) -> None:
        tx = self._tx
        tx.depth -= 1
        if not tx.depth:
            tx._doc._commit()
