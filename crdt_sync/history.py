"""The change history of a document: frozen encoded segments and a hot tail.

Changes are kept in the order they were applied (a causal order). Recent ones
are plain tuples (the *tail*); every :data:`FREEZE` of them are encoded into a
segment (the version 2 change format, ``batch.py``), a few bytes per change
instead of about 600 B of Python objects. A batch imported as a whole is kept
as the very segments that came over the wire. An export since a version
reuses every segment the receiver lacks entirely, and builds changes only
from the segments it has in part.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping

from .batch import Segment, decode_segment, encode_segment, join_bodies
from .changes import ChangeTuple
from .codec import Reader

#: Changes in the tail before it is frozen into a segment.
FREEZE = 1024
#: A segment frozen (or imported) right after one with the same peer and name
#: tables joins it while together they hold at most this many changes.
JOIN = 4 * FREEZE


class _Frozen:
    """A segment kept as bytes, with what it holds per peer."""

    __slots__ = ("body", "n", "summary")

    def __init__(self, body: bytes, n: int, summary: dict[str, tuple[int, int]]) -> None:
        self.body = body
        self.n = n
        # peer -> (first counter, counter after the last) of its changes here.
        self.summary = summary


class History:
    """Every change a document applied, in order, compactly."""

    __slots__ = ("_by_peer", "_cache", "_frozen", "_index", "_tail")

    def __init__(self) -> None:
        self._frozen: list[_Frozen] = []
        # peer -> (ends, segment indexes) of the segments holding its changes,
        # in history order (so ends increase): the segments a receiver needs
        # for a peer are a suffix, found by bisection.
        self._by_peer: dict[str, tuple[list[int], list[int]]] = {}
        self._tail: list[ChangeTuple] = []
        # peer -> (first counters, positions in the tail) of its tail changes.
        self._index: dict[str, tuple[list[int], list[int]]] = {}
        # The last segment decoded (lookups tend to hit one segment in a row).
        self._cache: tuple[int, Segment] | None = None

    def __len__(self) -> int:
        return sum(f.n for f in self._frozen) + len(self._tail)

    def __bool__(self) -> bool:
        return bool(self._frozen or self._tail)

    # ---------------------------------------------------------------- adding

    def append(self, change: ChangeTuple) -> None:
        entry = self._index.get(change[0])
        if entry is None:
            entry = self._index[change[0]] = ([], [])
        entry[0].append(change[1])
        entry[1].append(len(self._tail))
        self._tail.append(change)
        if len(self._tail) >= FREEZE:
            self.freeze()

    def extend(self, changes: list[ChangeTuple]) -> None:
        if len(changes) >= FREEZE:
            self.freeze()
            self._keep(_frozen_of(changes))
            return
        for change in changes:
            self.append(change)

    def add_segment(self, segment: Segment) -> None:
        """Keep a decoded segment whose changes were all just applied, in order."""
        self.freeze()
        self._keep(_Frozen(segment.body, segment.n, segment.summary))

    def freeze(self) -> None:
        """Encode the tail into a segment."""
        if self._tail:
            self._keep(_frozen_of(self._tail))
            self._tail = []
            self._index = {}

    def _keep(self, frozen: _Frozen) -> None:
        if self._frozen and self._join(frozen):
            return
        k = len(self._frozen)
        self._frozen.append(frozen)
        for peer, (_, end) in frozen.summary.items():
            entry = self._by_peer.get(peer)
            if entry is None:
                entry = self._by_peer[peer] = ([], [])
            entry[0].append(end)
            entry[1].append(k)

    def _join(self, frozen: _Frozen) -> bool:
        """Join ``frozen`` to the last segment if :func:`batch.join_bodies` can and
        together they hold at most :data:`JOIN` changes: the history of one peer
        typing into one text ends up in segments four times as long, which an
        export sends as they are and a receiver decodes faster. True if joined."""
        k = len(self._frozen) - 1
        last = self._frozen[k]
        if last.n + frozen.n > JOIN:
            return False
        body = join_bodies(last.body, frozen.body)
        if body is None:
            return False
        summary = dict(last.summary)
        for peer, (first, end) in frozen.summary.items():
            span = summary.get(peer)
            summary[peer] = (first if span is None else span[0], end)
            entry = self._by_peer.get(peer)
            if entry is None:
                entry = self._by_peer[peer] = ([], [])
            if entry[1] and entry[1][-1] == k:
                entry[0][-1] = end
            else:
                entry[0].append(end)
                entry[1].append(k)
        self._frozen[k] = _Frozen(body, last.n + frozen.n, summary)
        if self._cache is not None and self._cache[0] == k:
            self._cache = None
        return True

    def clear(self) -> None:
        self._frozen = []
        self._by_peer = {}
        self._tail = []
        self._index = {}
        self._cache = None

    # --------------------------------------------------------------- reading

    def _segment(self, k: int) -> Segment:
        cache = self._cache
        if cache is not None and cache[0] == k:
            return cache[1]
        segment = decode_segment(Reader(self._frozen[k].body))
        self._cache = (k, segment)
        return segment

    def find(self, peer: str, ctr: int) -> ChangeTuple | None:
        """The change holding op ``(peer, ctr)``, or None if not kept here."""
        entry = self._index.get(peer)
        if entry is not None:
            i = bisect_right(entry[0], ctr) - 1
            if i >= 0:
                change = self._tail[entry[1][i]]
                if ctr < change[1] + change[5]:
                    return change
        for k in range(len(self._frozen) - 1, -1, -1):
            span = self._frozen[k].summary.get(peer)
            if span is not None and span[0] <= ctr < span[1]:
                return self._segment(k).find(peer, ctr)
        return None

    def has_start(self, peer: str, ctr: int) -> ChangeTuple | None:
        """The change that starts at ``(peer, ctr)``, or None."""
        change = self.find(peer, ctr)
        return change if change is not None and change[1] == ctr else None

    def since(self, since: Mapping[str, int] | None) -> list[ChangeTuple]:
        """The changes with ops ``since`` lacks (all when None), in order."""
        out: list[ChangeTuple] = []
        for k, part in self._parts(since):
            if part is None:
                out.extend(self._segment(k).tuples())
            else:
                out.extend(part)
        return out

    def parts(self) -> Iterator[list[ChangeTuple]]:
        """Every change, at most :data:`FREEZE` at a time (the tail last), as the
        history is now.

        The segments are listed on the call (later appends and compactions
        do not change what the iterator yields); each is decoded only when
        the iterator reaches it, so a caller can spread the work.
        """
        frozen = [f.body for f in self._frozen]
        tail = list(self._tail)

        def decode() -> Iterator[list[ChangeTuple]]:
            for body in frozen:
                changes = decode_segment(Reader(body)).tuples()
                for start in range(0, len(changes), FREEZE):
                    yield changes[start : start + FREEZE]
            if tail:
                yield tail

        return decode()

    def bodies_since(self, since: Mapping[str, int] | None) -> list[bytes]:
        """Segment bodies holding the changes ``since`` lacks: whole segments
        reused as they are, the rest encoded now."""
        out: list[bytes] = []
        for k, part in self._parts(since):
            if part is None:
                out.append(self._frozen[k].body)
            elif part:
                out.append(encode_segment(part))
        return out

    def _parts(self, since: Mapping[str, int] | None) -> list[tuple[int, list[ChangeTuple] | None]]:
        """What to send of each segment, then of the tail: None for a whole
        segment, else the changes to send (maybe none)."""
        parts: list[tuple[int, list[ChangeTuple] | None]] = []
        if since is None:
            candidates: list[int] = list(range(len(self._frozen)))
        else:
            # Only segments holding some change the receiver lacks.
            found: set[int] = set()
            for peer, (ends, indexes) in self._by_peer.items():
                found.update(indexes[bisect_right(ends, since.get(peer, 0)) :])
            candidates = sorted(found)
        for k in candidates:
            frozen = self._frozen[k]
            if since is None:
                parts.append((k, None))
                continue
            whole = True
            needed = False
            for peer, (first, end) in frozen.summary.items():
                have = since.get(peer, 0)
                if have < end:
                    needed = True
                if have > first:
                    whole = False
            if not needed:
                continue
            if whole:
                parts.append((k, None))
            else:
                tuples = self._segment(k).tuples()
                parts.append((k, [t for t in tuples if since.get(t[0], 0) < t[1] + t[5]]))
        tail = self._tail
        if since is None:
            parts.append((-1, list(tail)))
        else:
            positions: list[int] = []
            for peer, (ctrs, pos) in self._index.items():
                have = since.get(peer, 0)
                i = bisect_left(ctrs, have)
                if i:
                    prev = tail[pos[i - 1]]
                    if prev[1] + prev[5] > have:
                        i -= 1
                positions.extend(pos[i:])
            positions.sort()
            parts.append((-1, [tail[i] for i in positions]))
        return parts


def _frozen_of(changes: list[ChangeTuple]) -> _Frozen:
    summary: dict[str, tuple[int, int]] = {}
    for peer, ctr, _, _, _, size in changes:
        span = summary.get(peer)
        summary[peer] = (ctr if span is None else span[0], ctr + size)
    return _Frozen(encode_segment(changes), len(changes), summary)
