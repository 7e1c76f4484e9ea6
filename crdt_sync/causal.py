"""Causal delivery: the order remote changes apply in, and the bounded buffer of
changes that wait for their dependencies.

A remote change is *ready* when its first counter is the next one expected from
its peer and every dep is covered by the version vector; otherwise it waits,
filed under the peer whose progress it needs, in a buffer bounded by
``max_pending``. Scheduling works on copies, so a batch that turns out invalid
leaves the buffer as it was.

Also here: cutting an order of changes into runs (one peer typing on, one peer
deleting on) that apply in one step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .batch import DELETING, FULL, TYPING
from .changes import TEXT_DELETE, TEXT_INSERT, ChangeTuple
from .exceptions import InvalidChangeError, PendingBufferFullError

#: How :func:`typing_runs` cuts a list of changes (the run kinds of ``batch.py``).
SINGLE = FULL

#: Default bound on changes waiting for missing dependencies.
MAX_PENDING = 10_000

Waiting = dict[str, list[ChangeTuple]]


class PendingBuffer:
    """Changes that wait for their deps, filed under the peer they wait for."""

    __slots__ = ("ids", "max_pending", "waiting")

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.waiting: Waiting = {}
        self.ids: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        return len(self.ids)

    def install(self, waiting: Waiting, ids: set[tuple[str, int]]) -> None:
        """Make a schedule's buffer the current one (once its order is valid)."""
        self.waiting = waiting
        self.ids = ids

    def take_all(self) -> list[ChangeTuple]:
        """Empty the buffer, returning what waited (to be scheduled again)."""
        out = [t for ws in self.waiting.values() for t in ws]
        self.waiting = {}
        self.ids = set()
        return out

    def schedule(
        self,
        changes: list[ChangeTuple],
        vv: Mapping[str, int],
        conflicts: Callable[[ChangeTuple], bool],
    ) -> tuple[list[ChangeTuple], Waiting, set[tuple[str, int]]]:
        """The order in which ``changes`` (and changes they unblock) will apply
        on top of version ``vv``.

        Works on copies: returns ``(order, waiting, pending ids)`` for the caller
        to :meth:`install` once the order has been validated. Duplicates are
        dropped (``conflicts`` says whether one reuses op ids with other
        content: InvalidChangeError); a change overlapping ops already seen
        raises InvalidChangeError, a full buffer PendingBufferFullError, both
        before anything changes.
        """
        vv = dict(vv)
        waiting = {peer: list(ws) for peer, ws in self.waiting.items()}
        pending_ids = set(self.ids)
        order: list[ChangeTuple] = []
        for change in changes:
            peer, ctr = change[0], change[1]
            if vv.get(peer, 0) == ctr and not waiting:
                for dpeer, dctr in change[3]:
                    if vv.get(dpeer, 0) <= dctr:
                        break
                else:
                    # Ready and nothing waits: the common case of in-order delivery.
                    order.append(change)
                    vv[peer] = ctr + change[5]
                    continue
            work = [change]
            while work:
                t = work.pop()
                peer, ctr = t[0], t[1]
                have = vv.get(peer, 0)
                if ctr < have:
                    if ctr + t[5] <= have:
                        if conflicts(t):
                            raise InvalidChangeError(
                                f"change {peer}@{ctr} reuses op ids of a different change"
                                " (a replica reloaded an old snapshot under the same peer id?)"
                            )
                        continue  # duplicate
                    raise InvalidChangeError(f"change {peer}@{ctr} overlaps ops already seen")
                blocker = peer if ctr > have else None
                if blocker is None:
                    for dpeer, dctr in t[3]:
                        if vv.get(dpeer, 0) <= dctr:
                            blocker = dpeer
                            break
                if blocker is not None:
                    key = (peer, ctr)
                    if key in pending_ids:
                        continue
                    if len(pending_ids) >= self.max_pending:
                        raise PendingBufferFullError(
                            f"more than {self.max_pending} changes wait for dependencies", 0
                        )
                    pending_ids.add(key)
                    waiting.setdefault(blocker, []).append(t)
                    continue
                order.append(t)
                vv[peer] = ctr + t[5]
                unblocked = waiting.pop(peer, None)
                if unblocked:
                    for w in unblocked:
                        pending_ids.discard((w[0], w[1]))
                    work.extend(reversed(unblocked))
        return order, waiting, pending_ids


def typing_runs(changes: list[ChangeTuple]) -> list[tuple[int, int, int]]:
    """``changes`` cut into ``(start, stop, kind)`` slices.

    ``TYPING``: one peer typing on (see :func:`_typing_run_end`); ``DELETING``:
    one peer deleting text change after change (see :func:`_delete_run_end`);
    ``SINGLE``: anything else, one change.
    """
    runs = []
    i = 0
    count = len(changes)
    while i < count:
        ops = changes[i][4]
        code = ops[0][0] if len(ops) == 1 else None  # none: invalid, checked as SINGLE
        if code == TEXT_INSERT:
            j = typing_run_end(changes, i)
            runs.append((i, j, TYPING if j - i > 1 else SINGLE))
        elif code == TEXT_DELETE:
            j = delete_run_end(changes, i)
            runs.append((i, j, DELETING if j - i > 1 else SINGLE))
        else:
            j = i + 1
            runs.append((i, j, SINGLE))
        i = j
    return runs


def delete_run_end(changes: list[ChangeTuple], i: int) -> int:
    """The end of the run of changes from ``i`` that are one peer deleting text:
    each a single text delete on the same handler, depending only on the one before.
    """
    peer, ctr, _, _, ops, size = changes[i]
    name = ops[0][1]
    end = ctr + size
    k = i + 1
    count = len(changes)
    while k < count:
        u = changes[k]
        if u[0] != peer or u[1] != end or len(u[4]) != 1:
            break
        op = u[4][0]
        if op[0] != TEXT_DELETE or op[1] != name or u[3] != ((peer, end - 1),):
            break
        end += u[5]
        k += 1
    return k


def coalesce(ranges: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Sorted, merged ``(peer, counter, length)`` ranges (deletes commute)."""
    if not ranges:
        return []
    ranges = sorted(ranges)
    out: list[tuple[str, int, int]] = []
    # The range being grown: its peer, first counter and the counter after it.
    peer, first, end = ranges[0]
    end += first
    for p, c, n in ranges:
        if c <= end and p == peer:
            if c + n > end:
                end = c + n
        else:
            out.append((peer, first, end - first))
            peer, first, end = p, c, c + n
    out.append((peer, first, end - first))
    return out


def typing_run_end(changes: list[ChangeTuple], i: int) -> int:
    """The end of the run of changes from ``i`` that are one peer typing on.

    Each change after the first is a single text insert on the same handler,
    right after the previous change's last character (left origin), with the
    same right origin, and depends only on the previous change.
    """
    peer, ctr, _, _, ops, size = changes[i]
    if len(ops) != 1 or ops[0][0] != TEXT_INSERT:
        return i + 1
    name = ops[0][1]
    right = ops[0][3]
    end = ctr + size
    k = i + 1
    count = len(changes)
    while k < count:
        u = changes[k]
        if u[0] != peer or u[1] != end or len(u[4]) != 1:
            break
        op = u[4][0]
        prev = (peer, end - 1)
        if op[0] != TEXT_INSERT or op[1] != name or op[3] != right or op[2] != prev:
            break
        if u[3] != (prev,):
            break
        end += u[5]
        k += 1
    return k
