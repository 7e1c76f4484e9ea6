"""Events handlers and documents emit, their deltas, and subscriptions."""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .change_batch import ChangeBatch
    from .changes import Change

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Retain:
    """Keep ``count`` elements unchanged."""

    count: int


@dataclass(frozen=True, slots=True)
class Insert:
    """Insert ``content`` (a str for text, a list of values for a list)."""

    content: Any


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``count`` elements."""

    count: int


DeltaOp = Retain | Insert | Delete
Delta = tuple[DeltaOp, ...]


@dataclass(frozen=True, slots=True)
class TextEvent:
    """What one transaction or import did to a text: apply ``delta`` to the old value."""

    delta: Delta
    origin: object
    local: bool


@dataclass(frozen=True, slots=True)
class ListEvent:
    """What one transaction or import did to a list: apply ``delta`` to the old value."""

    delta: Delta
    origin: object
    local: bool


@dataclass(frozen=True, slots=True)
class MapEvent:
    """Which keys of a map one transaction or import changed."""

    keys_changed: frozenset[str]
    origin: object
    local: bool


class UpdateEvent:
    """A document changed: by a local commit (``local``) or by an import.

    ``changes`` are the changes applied, in order, built when first read: a
    merge of a long history makes its event without a :class:`Change` per
    change, for the subscribers that only want to know that something
    changed. The editor is one (it reads ``local``); building the 130,000
    changes of a two-peer merge for it took three times as long as the merge.
    """

    __slots__ = ("_changes", "batch", "local", "origin")

    def __init__(self, changes: tuple[Change, ...], local: bool, origin: object) -> None:
        #: The changes, or what builds them until they are first read.
        self._changes: tuple[Change, ...] | Callable[[], tuple[Change, ...]] = changes
        self.local = local
        self.origin = origin
        #: The :class:`~crdt_sync.ChangeBatch` imported, when the changes are
        #: exactly its changes in its order (else None): a subscriber can keep
        #: the batch instead of the changes, built or not.
        self.batch: ChangeBatch | None = None

    @classmethod
    def deferred(
        cls, build: Callable[[], tuple[Change, ...]], local: bool, origin: object
    ) -> UpdateEvent:
        """An event whose ``changes`` are ``build()``, called once, when first read."""
        event = cls((), local, origin)
        event._changes = build
        return event

    @classmethod
    def of_batch(cls, batch: ChangeBatch, origin: object) -> UpdateEvent:
        """The event of an import that applied exactly ``batch``, in its order."""
        event = cls.deferred(batch.built, False, origin)
        event.batch = batch
        return event

    @property
    def changes(self) -> tuple[Change, ...]:
        changes = self._changes
        if not isinstance(changes, tuple):
            changes = self._changes = changes()
        return changes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UpdateEvent):
            return NotImplemented
        return (self.changes, self.local, self.origin) == (other.changes, other.local, other.origin)

    def __hash__(self) -> int:
        return hash((self.changes, self.local, self.origin))

    def __repr__(self) -> str:
        changes = repr(self._changes) if isinstance(self._changes, tuple) else "..."
        return f"UpdateEvent(changes={changes}, local={self.local!r}, origin={self.origin!r})"


class Subscription:
    """A registered callback; ``cancel()`` (or leaving a ``with`` block) removes it."""

    __slots__ = ("_callback", "_observers")

    def __init__(self, observers: Observers[Any], callback: Callable[[Any], None]) -> None:
        self._observers: Observers[Any] | None = observers
        self._callback = callback

    def cancel(self) -> None:
        if self._observers is not None:
            self._observers._remove(self)
            self._observers = None

    @property
    def active(self) -> bool:
        return self._observers is not None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Observers(Generic[E]):
    """A list of callbacks. A callback that raises is logged; the others still run."""

    __slots__ = ("_subs",)

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def __bool__(self) -> bool:
        return bool(self._subs)

    def subscribe(self, callback: Callable[[E], None]) -> Subscription:
        if not callable(callback):
            raise TypeError("callback must be callable")
        sub = Subscription(self, callback)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    def emit(self, event: E) -> None:
        for sub in list(self._subs):
            try:
                sub._callback(event)
            except Exception:
                log.exception("observer %r raised", sub._callback)


#: Ops per block of a :class:`DeltaBuilder` before the block is split in two.
_DELTA_BLOCK = 32


class DeltaBuilder:
    """Composes sequential splices into one delta against the value before them.

    ``splice(pos, delete, content)`` is given in the coordinates of the value as
    it is after the previous splices; :meth:`delta` is the single retain / insert /
    delete delta from the original value to the final one.

    The ops (``[kind, value]``: ``"r"`` a count kept, ``"i"`` content inserted,
    ``"d"`` a count deleted) are one list cut into blocks of at most
    :data:`_DELTA_BLOCK`, each knowing its width (the elements its retains and
    inserts span in the value after the splices): a splice finds its block by a
    bisection of the blocks' running widths (summed in C) and walks only that
    block, where a single list cost a walk over every op before ``pos``, so a
    remote batch of thousands of runs into an observed text took seconds. The
    ops, and so the delta, are the same as the single list's.
    """

    __slots__ = ("_blocks", "_widths")

    def __init__(self) -> None:
        self._blocks: list[list[list[Any]]] = [[]]
        self._widths: list[int] = [0]

    def __bool__(self) -> bool:
        return any(self._blocks)

    def splice(self, pos: int, delete: int, content: Any) -> None:
        blocks = self._blocks
        widths = self._widths
        # The first block whose end reaches ``pos`` (the last one past the end):
        # the op at ``pos`` is the first one there after ``pos`` elements.
        b = 0
        cur = 0
        if pos and len(widths) > 1:
            ends = list(accumulate(widths))
            b = bisect_left(ends, pos)
            if b == len(ends):
                b -= 1
            cur = ends[b] - widths[b]
        ops = blocks[b]
        k = 0
        while cur < pos:
            if k == len(ops):
                # (Only past the end: the last block.)
                ops.append(["r", pos - cur])
                widths[b] += pos - cur
                k += 1
                break
            kind, v = ops[k]
            w = v if kind == "r" else (len(v) if kind == "i" else 0)
            if cur + w <= pos:
                cur += w
                k += 1
                continue
            off = pos - cur
            if kind == "r":
                ops[k : k + 1] = [["r", off], ["r", v - off]]
            else:
                ops[k : k + 1] = [["i", v[:off]], ["i", v[off:]]]
            k += 1
            break
        # Deleted from op ``k`` on, into the following blocks if need be.
        db = b
        dops = ops
        j = k
        rem = delete
        while rem > 0:
            if j == len(dops):
                if db + 1 < len(blocks):
                    db += 1
                    dops = blocks[db]
                    j = 0
                    continue
                dops.append(["d", rem])
                break
            kind, v = dops[j]
            if kind == "d":
                j += 1
                continue
            w = v if kind == "r" else len(v)
            take = w if w < rem else rem
            if kind == "r":
                if take < w:
                    dops[j : j + 1] = [["d", take], ["r", w - take]]
                else:
                    dops[j] = ["d", take]
                j += 1
            elif take < w:
                dops[j] = ["i", v[take:]]
            else:
                del dops[j]
            widths[db] -= take
            rem -= take
        if len(content):
            ops.insert(k, ["i", content])
            widths[b] += len(content)
        # Only the block of ``pos`` and the last one deleted from can have grown.
        if len(dops) > _DELTA_BLOCK and db != b:
            self._split(db)
        if len(ops) > _DELTA_BLOCK:
            self._split(b)

    def _split(self, b: int) -> None:
        """Cut block ``b`` in two halves, each with its width."""
        ops = self._blocks[b]
        half = len(ops) // 2
        tail = ops[half:]
        del ops[half:]
        width = 0
        for kind, v in tail:
            if kind == "r":
                width += v
            elif kind == "i":
                width += len(v)
        self._blocks.insert(b + 1, tail)
        self._widths.insert(b + 1, width)
        self._widths[b] -= width

    def delta(self) -> Delta:
        out: list[list[Any]] = []
        for ops in self._blocks:
            for kind, v in ops:
                if (kind == "i" and not len(v)) or (kind != "i" and not v):
                    continue
                if out and out[-1][0] == kind:
                    out[-1][1] = out[-1][1] + v
                else:
                    out.append([kind, v])
        while out and out[-1][0] == "r":
            out.pop()
        result: list[DeltaOp] = []
        for kind, v in out:
            if kind == "r":
                result.append(Retain(v))
            elif kind == "d":
                result.append(Delete(v))
            else:
                result.append(Insert(v if isinstance(v, str) else list(v)))
        return tuple(result)


def apply_delta(value: Any, delta: Delta) -> Any:
    """Apply ``delta`` to a str or list (a reference for tests and bindings)."""
    out: list[Any] = []
    pos = 0
    for op in delta:
        if isinstance(op, Retain):
            out.append(value[pos : pos + op.count])
            pos += op.count
        elif isinstance(op, Delete):
            pos += op.count
        else:
            out.append(op.content)
    out.append(value[pos:])
    if isinstance(value, str):
        return "".join(out)
    return [v for part in out for v in part]
