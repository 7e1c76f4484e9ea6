"""The sequence CRDT shared by text and list: run-length spans ordered by FugueMax.

Theory of operation
-------------------
Every inserted element has an id ``(peer, counter)`` and two *origins*: the id of
the element that was immediately to its left when it was inserted, and the id of
the element immediately to its right (either may be ``None``: the start or the
end). Deleted elements stay in the sequence as tombstones, so origins always
resolve. Concurrent inserts between the same origins are ordered by
:func:`integrate`, the one place that holds the ordering rule.

Elements are stored in *spans*: a run of elements typed by one peer, with
consecutive counters, each element's left origin being the previous element, all
sharing one right origin and one deleted flag. A span is a small mutable list
(see the ``P, C, N, ...`` field indexes below); typing at the end of one's own
span grows it in place. Spans live in *chunks* of at most :data:`CHUNK_MAX`, each
knowing its visible length, so a visible index is found by summing chunk lengths
and then walking one chunk. A cursor cache remembers the last span used, so
typing and deleting at one place costs O(1). An id index (per peer: the sorted
starting counters of its spans, and the span for each start) finds the span
holding any element id.

Nothing here knows about changes, clocks or handlers: this is the state only.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

# Span fields. A span is ``[peer, counter, length, content, deleted, left, right, chunk,
# slot]``: ``slot`` is where the span was last seen in its chunk's list (a hint,
# checked by identity before use; see :meth:`Sequence._span_index`).
P, C, N, X, D, L, R, CH, SI = range(9)

#: Starts per block of :class:`SortedInts` (a block is split past twice this).
#: An insert into a block moves the members after it (a memmove): 128 takes
#: about 1.3 M instructions fewer than 512 to merge automerge-paper's halves.
_BLOCK = 128
_BLOCK_MAX = 2 * _BLOCK

#: Spans per chunk before it is split in two (64-256 measured best, see the notes;
#: 64 and 128 run local replay in the same number of instructions, and 64 halves
#: the ``list.index`` walks of remote runs: 2-3 % fewer for a merge or an import).
CHUNK_MAX = 64

#: A chunk's visible length, read in C.
_VIS = attrgetter("vis")
#: A span's left origin, read in C.
_LEFT = itemgetter(5)

Id = tuple[str, int]
Span = list[Any]
#: A copy of a sequence's spans, chunk by chunk (:meth:`Sequence.backup`).
Backup = list[list[Span]]


class Chunk:
    """A run of consecutive spans, the number of visible elements in them, and the
    chunk's index in :attr:`Sequence.chunks` (exact when ``chunks[at] is chunk``:
    chunks are only ever added by splitting one, which leaves those after it
    to be renumbered when next asked, see :meth:`Sequence._chunk_index`)."""

    __slots__ = ("at", "spans", "vis")

    def __init__(self, spans: list[Span], vis: int, at: int = 0) -> None:
        self.spans = spans
        self.vis = vis
        self.at = at


class SortedInts:
    """A sorted multiset-free list of ints in blocks, for O(log n) insert and floor."""

    __slots__ = ("blocks", "maxes")

    BLOCK = _BLOCK

    def __init__(self, values: list[int] | None = None) -> None:
        self.blocks: list[list[int]] = []
        self.maxes: list[int] = []
        if values:
            values = sorted(values)
            for i in range(0, len(values), self.BLOCK):
                block = values[i : i + self.BLOCK]
                self.blocks.append(block)
                self.maxes.append(block[-1])

    def add(self, value: int) -> None:
        maxes = self.maxes
        if maxes and value > maxes[-1]:
            # After every member (new spans of a peer mostly come in order).
            block = self.blocks[-1]
            block.append(value)
            maxes[-1] = value
            if len(block) > _BLOCK_MAX:
                half = len(block) // 2
                self.blocks[-1:] = [block[:half], block[half:]]
                maxes[-1:] = [block[half - 1], block[-1]]
            return
        if not maxes:
            self.blocks.append([value])
            maxes.append(value)
            return
        i = bisect_left(maxes, value)
        if i == len(maxes):
            i -= 1
            self.blocks[i].append(value)
            maxes[i] = value
        else:
            insort(self.blocks[i], value)
        block = self.blocks[i]
        if len(block) > _BLOCK_MAX:
            half = len(block) // 2
            self.blocks[i : i + 1] = [block[:half], block[half:]]
            maxes[i : i + 1] = [block[half - 1], block[-1]]

    def add_two(self, low: int, high: int) -> None:
        """``add(low)`` then ``add(high)``, for ``low < high`` with no member
        between them (the two new starts of a span split twice): one search."""
        maxes = self.maxes
        if not maxes or low > maxes[-1]:
            self.add(low)
            self.add(high)
            return
        i = bisect_left(maxes, low)
        block = self.blocks[i]
        j = bisect_left(block, low)
        block[j:j] = (low, high)
        if len(block) > _BLOCK_MAX:
            half = len(block) // 2
            self.blocks[i : i + 1] = [block[:half], block[half:]]
            maxes[i : i + 1] = [block[half - 1], block[-1]]

    def remove(self, value: int) -> None:
        i = bisect_left(self.maxes, value)
        block = self.blocks[i]
        del block[bisect_left(block, value)]
        if block:
            self.maxes[i] = block[-1]
        else:
            del self.blocks[i]
            del self.maxes[i]

    def replace(self, old: int, new: int) -> None:
        """Change member ``old`` into ``new``; no other member may lie between them."""
        i = bisect_left(self.maxes, old)
        block = self.blocks[i]
        j = bisect_left(block, old)
        block[j] = new
        if j == len(block) - 1:
            self.maxes[i] = new

    def floor(self, value: int) -> int | None:
        """The largest member <= ``value``, or None."""
        maxes = self.maxes
        i = bisect_right(maxes, value)
        if i < len(maxes):
            block = self.blocks[i]
            j = bisect_right(block, value)
            if j:
                return block[j - 1]
        return maxes[i - 1] if i else None

    def ceiling(self, value: int) -> int | None:
        """The smallest member >= ``value``, or None."""
        maxes = self.maxes
        i = bisect_left(maxes, value)
        if i == len(maxes):
            return None
        block = self.blocks[i]
        return block[bisect_left(block, value)]

    def __iter__(self) -> Iterator[int]:
        for block in self.blocks:
            yield from block


def _span_index(chunk: Chunk, span: Span) -> int:
    """The index of ``span`` in ``chunk``: its slot hint when that holds it,
    else found by ``list.index`` from a few places before the hint (spans
    inserted before it since moved it right by as many; one merged away,
    left by one), else from the start. ``list.index`` tests identity first,
    and two distinct spans never compare equal (their first ids differ, and
    so does their second field once the first are equal), so it finds this
    very span, comparing each span it passes in C by its first two fields."""
    spans = chunk.spans
    si: int = span[SI]
    if si < len(spans) and spans[si] is span:
        return si
    return _span_moved(spans, span, si)


def _span_moved(spans: list[Span], span: Span, si: int) -> int:
    """:func:`_span_index` for a caller that found the hint ``si`` stale."""
    try:
        si = spans.index(span, si - 3 if si > 3 else 0)
    except ValueError:
        try:
            si = spans.index(span)
        except ValueError:  # pragma: no cover - a span outside its chunk
            raise AssertionError("span missing from its chunk") from None
    span[SI] = si
    return si


class Sequence:
    """An ordered collection of elements with ids, origins and tombstones.

    ``keep_deleted_content`` keeps the content of deleted elements (the list needs
    its element ids; text drops deleted characters to save memory: undo keeps the
    text it needs itself). ``empty`` is ``""`` for text and ``()`` for lists.
    """

    __slots__ = (
        "_cur",
        "_last",
        "_stale",
        "_starts",
        "_where",
        "chunks",
        "empty",
        "keep",
        "length",
    )

    def __init__(self, empty: str | tuple[Any, ...], keep_deleted_content: bool) -> None:
        self.chunks: list[Chunk] = [Chunk([], 0)]
        self.length = 0
        self.empty = empty
        self.keep = keep_deleted_content
        self._starts: dict[str, SortedInts] = {}
        self._where: dict[str, dict[int, Span]] = {}
        # Cursor cache: (chunk index, span index, visible elements before that span).
        self._cur: tuple[int, int, int] | None = None
        # The span found by the last id lookup.
        self._last: Span | None = None
        # The chunks before this index know their index (``Chunk.at``) exactly.
        self._stale = 1

    # ------------------------------------------------------------------ reading

    def value(self) -> Any:
        if isinstance(self.empty, str):
            return "".join([s[X] for ch in self.chunks for s in ch.spans if not s[D]])
        out: list[Any] = []
        for ch in self.chunks:
            for s in ch.spans:
                if not s[D]:
                    out.extend(s[X])
        return out

    def spans(self) -> Iterator[Span]:
        """Every span in document order (tombstones included). Do not mutate."""
        return chain.from_iterable([ch.spans for ch in self.chunks])

    def span_count(self) -> int:
        return sum(len(ch.spans) for ch in self.chunks)

    def slice(self, start: int, stop: int) -> Any:
        """Visible content ``[start, stop)`` (clamped), as a str or a list."""
        out: list[Any] = []
        if start < 0:
            start = 0
        if stop > self.length:
            stop = self.length
        if start >= stop:
            return self.empty if isinstance(self.empty, str) else []
        ci, si, off = self._seek(start)
        need = stop - start
        chunks = self.chunks
        while need > 0:
            spans = chunks[ci].spans
            if si >= len(spans):
                ci += 1
                si = 0
                continue
            s = spans[si]
            si += 1
            if s[D]:
                continue
            part = s[X][off : off + need]
            off = 0
            out.append(part)
            need -= len(part)
        if isinstance(self.empty, str):
            return "".join(out)
        return [v for part in out for v in part]

    def id_at(self, pos: int) -> Id:
        """The id of the visible element at ``pos`` (0 <= pos < length)."""
        ci, si, off = self._seek(pos)
        s = self.chunks[ci].spans[si]
        return (s[P], s[C] + off)

    def content_at(self, pos: int) -> Any:
        ci, si, off = self._seek(pos)
        return self.chunks[ci].spans[si][X][off]

    def contains(self, peer: str, ctr: int) -> bool:
        return self._find(peer, ctr) is not None

    def locate(self, peer: str, ctr: int) -> tuple[Span, int]:
        """The span holding element ``(peer, ctr)`` and its offset; KeyError if unknown."""
        found = self._find(peer, ctr)
        if found is None:
            raise KeyError((peer, ctr))
        return found, ctr - found[C]

    def is_visible(self, peer: str, ctr: int) -> bool:
        span, _ = self.locate(peer, ctr)
        return not span[D]

    def visible_index(self, peer: str, ctr: int) -> int:
        """How many visible elements precede element ``(peer, ctr)`` (KeyError if unknown)."""
        span, off = self.locate(peer, ctr)
        return self.span_visible_start(span) + (0 if span[D] else off)

    def span_visible_start(self, span: Span) -> int:
        chunk = span[CH]
        chunks = self.chunks
        ci = chunk.at
        if chunks[ci] is not chunk:
            ci = self._chunk_index(chunk)
        # The chunks before it summed in C (a remote run into an observed text
        # asks this once per run, with hundreds of chunks before it).
        total: int = sum(map(_VIS, chunks[:ci])) if ci else 0
        for s in chunk.spans:
            if s is span:
                break
            if not s[D]:
                total += s[N]
        return total

    # --------------------------------------------------------------- local edits

    def local_insert(
        self, pos: int, peer: str, ctr: int, content: Any
    ) -> tuple[Id | None, Id | None]:
        """Insert ``content`` so its first element lands at visible index ``pos``.

        The new elements get ids ``(peer, ctr)``, ``(peer, ctr + 1)``, ...; returns the
        ``(left, right)`` origins to record in the operation. ``0 <= pos <= length``.
        """
        typed = self._extend_at_cursor(pos, peer, ctr, content)
        if typed is not None:
            return typed
        n = len(content)
        if pos == self.length:
            # At the end: after every tombstone, nothing to the right.
            ci = len(self.chunks) - 1
            spans = self.chunks[ci].spans
            while not spans and ci > 0:
                ci -= 1
                spans = self.chunks[ci].spans
            if spans:
                prev = spans[-1]
                left: Id | None = (prev[P], prev[C] + prev[N] - 1)
                if prev[P] == peer and prev[C] + prev[N] == ctr and not prev[D] and prev[R] is None:
                    self._extend(prev, content, n, n)
                    self._cur = (ci, len(spans) - 1, pos - prev[N] + n)
                    return left, None
            else:
                left = None
            self._insert_span(ci, len(spans), [peer, ctr, n, content, False, left, None, None, 0])
            self._cur = (ci, len(self.chunks[ci].spans) - 1, pos)
            self._rebalance(ci)
            return left, None

        ci, si, off = self._seek(pos)
        chunk = self.chunks[ci]
        s = chunk.spans[si]
        if off:
            # Inside a span: split it and put the new span between the halves.
            left = (s[P], s[C] + off - 1)
            right: Id | None = (s[P], s[C] + off)
            self._split(s, chunk, si, off)
            self._insert_span(ci, si + 1, [peer, ctr, n, content, False, left, right, None, 0])
            self._cur = (ci, si + 1, pos)
            self._rebalance(ci)
            return left, right
        right = (s[P], s[C])
        # The raw element before the visible one at pos (maybe a tombstone).
        if si:
            pci, prev = ci, chunk.spans[si - 1]
        else:
            pci = ci - 1
            while pci >= 0 and not self.chunks[pci].spans:
                pci -= 1
            prev = self.chunks[pci].spans[-1] if pci >= 0 else None  # type: ignore[assignment]
        if prev is None:
            left = None
        else:
            left = (prev[P], prev[C] + prev[N] - 1)
            if prev[P] == peer and prev[C] + prev[N] == ctr and not prev[D] and prev[R] == right:
                self._extend(prev, content, n, n)
                pspans = self.chunks[pci].spans
                psi = si - 1 if pci == ci else len(pspans) - 1
                self._cur = (pci, psi, pos - prev[N] + n)
                return left, right
        self._insert_span(ci, si, [peer, ctr, n, content, False, left, right, None, 0])
        self._cur = (ci, si, pos)
        self._rebalance(ci)
        return left, right

    def _extend_at_cursor(
        self, pos: int, peer: str, ctr: int, content: Any
    ) -> tuple[Id, Id | None] | None:
        """Typing on, without a seek: grow the cursor's span by ``content``, or None.

        That is what :meth:`local_insert` does when the cursor's span is
        ``peer``'s, visible, ends at ``ctr - 1`` and at visible index ``pos``, and
        the raw element after it is visible and its right origin (or there is
        none and it has no right origin): the same span grown, the same origins
        returned, the cursor left where it is. Anything else returns None and
        goes the general way.
        """
        cur = self._cur
        if cur is None:
            return None
        ci, si, vs = cur
        chunks = self.chunks
        spans = chunks[ci].spans
        if si >= len(spans):
            return None
        s = spans[si]
        if s[C] + s[N] != ctr or vs + s[N] != pos or s[D] or s[P] != peer:
            return None
        if si + 1 < len(spans):
            nxt: Span | None = spans[si + 1]
        else:
            nxt = None
            for chunk in chunks[ci + 1 :]:
                if chunk.spans:
                    nxt = chunk.spans[0]
                    break
        right = s[R]
        if nxt is None:
            if right is not None:
                return None
        elif nxt[D] or right is None or right[1] != nxt[C] or right[0] != nxt[P]:
            return None
        # self._extend(s, content, n, n), inline: this is the typing hot path.
        n = len(content)
        s[N] += n
        s[X] = s[X] + content
        s[CH].vis += n
        self.length += n
        return (peer, ctr - 1), right

    def insert_after(
        self, after: Id, peer: str, ctr: int, content: Any
    ) -> tuple[Id | None, Id | None, int]:
        """Insert ``content`` right after element ``after`` (visible or not).

        Used to put deleted text back exactly where its tombstone is (undo).
        Returns the ``(left, right)`` origins and the visible index of the new
        elements. KeyError if ``after`` is unknown.
        """
        ci, si = self._slot_after(after)
        nxt = self._span_from(ci, si)
        right: Id | None = None if nxt is None else (nxt[P], nxt[C])
        new = [peer, ctr, len(content), content, False, after, right, None, 0]
        self._insert_span(ci, si, new)
        self._cur = None
        self._rebalance(ci)
        return after, right, self.span_visible_start(new)

    def local_delete(self, pos: int, count: int) -> list[tuple[str, int, int, Any]]:
        """Delete ``count`` visible elements from ``pos``; returns the deleted pieces.

        Each piece is ``(peer, counter, length, content)`` in document order.
        """
        pieces: list[tuple[str, int, int, Any]] = []
        while count > 0:
            ci, si, off = self._seek(pos)
            s = self.chunks[ci].spans[si]
            take = s[N] - off
            if take > count:
                take = count
            pieces.append((s[P], s[C] + off, take, s[X][off : off + take]))
            self._set_deleted(s, off, take, True, ci, si, pos - off)
            count -= take
        return pieces

    # -------------------------------------------------------------- remote edits

    def integrate(
        self,
        peer: str,
        ctr: int,
        content: Any,
        left: Id | None,
        right: Id | None,
        deleted: bool = False,
        check_right: bool = False,
    ) -> tuple[Span, int]:
        """Place elements made elsewhere; returns the span holding them and their offset.

        Their origins must already be in the sequence (KeyError otherwise: the
        caller validates first; an unknown left origin always raises before any
        change, an unknown right origin only with ``check_right``). This is the
        single place that orders concurrent inserts: see the rule below.
        """
        n = len(content)
        if not deleted or self.keep:
            stored = content
        else:
            stored = self.empty
        chunks = self.chunks
        self._cur = None
        # The slot right after the left origin (``_slot_after``, inline: this
        # runs once per remote run).
        if left is None:
            ci = si = 0
            chunk = chunks[0]
            spans = chunk.spans
            if check_right and right is not None and self._find(right[0], right[1]) is None:
                raise KeyError(right)
        else:
            lpeer, lctr = left
            s = self._last
            if s is None or s[P] != lpeer or not s[C] <= lctr < s[C] + s[N]:
                # Else mostly in the span after it: the piece the last run split
                # off (the span found is the one: ids are unique).
                if s is not None:
                    spans = s[CH].spans
                    si = s[SI] + 1
                    s = spans[si] if si < len(spans) else None
                if s is None or s[P] != lpeer or not s[C] <= lctr < s[C] + s[N]:
                    s = self._find_indexed(lpeer, lctr)
                    if s is None:
                        raise KeyError(left)
            chunk = s[CH]
            ci = chunk.at
            if chunks[ci] is not chunk:
                ci = self._chunk_index(chunk)
            spans = chunk.spans
            si = s[SI]
            if si >= len(spans) or spans[si] is not s:
                si = _span_moved(spans, s, si)
            off = lctr - s[C] + 1
            # (A flag, not the test itself: CPython 3.11 does not specialise a
            # comparison followed by a jump too long for one byte, as the one
            # over this block would be.)
            inside = False
            if off < s[N] and right is not None and right[1] == lctr + 1 and right[0] == lpeer:
                inside = True
            if inside:
                # Between two elements of one span (typing inside a text): the
                # new span goes between its halves, and the tail, the right
                # origin, is the next span (no sibling to order against). The
                # general way ends the same: the new ids are not in the
                # sequence, so its right origin is not the new first element
                # and the new span cannot extend the head.
                content = s[X]
                tail = [lpeer, lctr + 1, s[N] - off, content[off:], s[D], left, s[R], chunk, si + 2]
                s[N] = off
                s[X] = content[:off]
                span = [peer, ctr, n, stored, deleted, left, right, chunk, si + 1]
                spans[si + 1 : si + 1] = (span, tail)
                # ``_index_add`` of the tail (as ``_split`` does) and of the span.
                index = self._where[lpeer]
                if lctr + 1 not in index:
                    self._starts[lpeer].add(lctr + 1)
                index[lctr + 1] = tail
                where = self._where.get(peer)
                if where is None:
                    self._index_add(span)
                else:
                    if ctr not in where:
                        self._starts[peer].add(ctr)
                    where[ctr] = span
                if not deleted:
                    chunk.vis += n
                    self.length += n
                if len(spans) > CHUNK_MAX:
                    self._rebalance(ci)
                self._last = span
                return span, 0
            if check_right and right is not None and s[R] != right:
                # Every element's right origin exists (checked when it came), so
                # sharing the left span's one is proof enough; so is being in
                # the left span or the next one (where it mostly is).
                rpeer, rctr = right
                if rpeer != s[P] or not s[C] <= rctr < s[C] + s[N]:
                    t = spans[si + 1] if si + 1 < len(spans) else None
                    if (
                        t is None or t[P] != rpeer or not t[C] <= rctr < t[C] + t[N]
                    ) and self._find(rpeer, rctr) is None:
                        raise KeyError(right)
            if off < s[N]:
                self._split(s, chunk, si, off)
            si += 1
        # (``chunk`` is ``chunks[ci]``, ``spans`` its spans.)
        nxt = spans[si] if si < len(spans) else self._span_from(ci, si)
        if nxt is not None and nxt[L] == left and (nxt[P], nxt[C]) != right:
            # A sibling (another insert right after our left origin) sits
            # between the origins: order by the rule. Anything else there has
            # its left origin before ours, and we go first (FugueMax's first
            # step), which is also how a remote run grows its own span.
            nci, nsi = self._position_of(nxt)
            ci, si = self._scan(peer, left, right, nci, nsi)
            chunk = chunks[ci]
            spans = chunk.spans
        if left is not None and si > 0 and lctr == ctr - 1 and lpeer == peer:
            prev = spans[si - 1]
            if (
                prev[P] == peer
                and prev[C] + prev[N] == ctr
                and prev[D] == deleted
                and prev[R] == right
            ):
                # Right after the run's last element, same right origin: grow it.
                off = prev[N]
                self._extend(prev, stored, n, 0 if deleted else n)
                self._last = prev
                return prev, off
        span = [peer, ctr, n, stored, deleted, left, right, chunk, si]
        spans.insert(si, span)
        if not deleted:
            chunk.vis += n
            self.length += n
        # ``_index_add(span)``, inline.
        where = self._where.get(peer)
        if where is None:
            self._index_add(span)
        else:
            if ctr not in where:
                starts = self._starts[peer]
                maxes = starts.maxes
                block = starts.blocks[-1] if maxes else None
                if block is not None and ctr > maxes[-1] and len(block) < _BLOCK_MAX:
                    # After every start of the peer (``SortedInts.add``'s first way).
                    block.append(ctr)
                    maxes[-1] = ctr
                else:
                    starts.add(ctr)
            where[ctr] = span
        if len(spans) > CHUNK_MAX:
            self._rebalance(ci)
        self._last = span
        return span, 0

    def _scan(
        self, peer: str, left: Id | None, right: Id | None, ci: int, si: int
    ) -> tuple[int, int]:
        """FugueMax: where an insert with origins ``left``/``right`` goes among concurrent ones.

        The ordering rule (Weidner and Kleppmann, "The Art of the Fugue: Minimizing
        Interleaving in Collaborative Text Editing", 2023, FugueMax; the same rule
        as "YjsMod" in Gentle's reference-crdts). Walk the elements after the left
        origin (from slot ``ci``, ``si``) up to the right origin; for each element
        ``o`` compare its origins with ours by position:

        * ``o.left`` before our left: ``o`` is not a sibling of ours: stop, insert here.
        * ``o.left`` after our left: ``o`` is inside a subtree we are scanning past: skip.
        * same left origin: a sibling. If ``o.right`` is before our right we cannot
          decide yet: remember this place and keep scanning (``scanning``). If its
          right is after ours, skip it. If both origins are equal the lower peer id
          goes first.

        Runs of one peer's typing keep their left origins inside the run, so a run
        is never split by a concurrent run, forwards or backwards. Elements inside a
        span have their left origin just before them, which is always "after our
        left": only the first element of each span needs comparing.

        The walk is lazy and stops where the rule decides: ``o.left`` lies after
        our left exactly when its span was passed in this walk (a set of spans),
        and whether ``o.right`` lies before our right is one position comparison.

        With no left origin the walk starts at the first element, so every
        element's left origin (which precedes it) not None has been passed:
        only the elements with none, and the right origin, need looking at.
        They are found in C, chunk by chunk (the first run of a peer into a
        text another peer started scans the whole text).
        """
        # The right origin's slot when the walk skips to root elements (else unused).
        rci = rsi = -1
        if right is not None:
            rs, roff = self.locate(*right)
            if roff:
                rchunk = rs[CH]
                rs = self._split(rs, rchunk, _span_index(rchunk, rs), roff)
            if left is None:
                rci, rsi = self._position_of(rs)
        roots = left is None
        lefts: list[Id | None] = []
        # The right origin's id, or one no element has (counters are never negative).
        rpeer, rctr = ("", -1) if right is None else right
        chunks = self.chunks
        find = self._find
        passed: set[int] = set()
        mark = passed.add
        right_at: tuple[int, int] | None = None
        # Where to insert if a sibling ends the scan (``dci``, ``dsi``).
        dci, dsi = ci, si
        scanning = False
        prev: Span | None = None
        last = len(chunks) - 1
        while True:
            spans = chunks[ci].spans
            n = len(spans)
            if roots:
                lefts = list(map(_LEFT, spans))
                lefts.append(None)
            while si < n:
                if roots:
                    # The next element with no left origin, or the right origin.
                    si = lefts.index(None, si)
                    if ci == rci and si > rsi:
                        si = rsi
                    elif si == n:
                        break
                o = spans[si]
                if o[C] == rctr and o[P] == rpeer:
                    # The right origin: past every element between the origins,
                    # just before it (unless a sibling left us scanning).
                    return (dci, dsi) if scanning else (ci, si)
                if not scanning:
                    dci = ci
                    dsi = si
                o_left = o[L]
                if o_left != left:
                    # o's left origin after ours: o is in a subtree we pass. Mostly
                    # it is the last element of the span just passed (no lookup).
                    if (
                        o_left is None
                        or prev is None
                        or o_left[1] != prev[C] + prev[N] - 1
                        or o_left[0] != prev[P]
                    ):
                        ls = None if o_left is None else find(o_left[0], o_left[1])
                        if ls is None or id(ls) not in passed:
                            return dci, dsi  # o's left origin is before ours
                else:
                    o_right = o[R]
                    if o_right == right:
                        if peer < o[P]:
                            return dci, dsi
                        scanning = False
                    elif o_right is None:
                        scanning = False  # o's right origin (the end) is after ours
                    elif right is None:
                        scanning = True  # o's right origin is before ours (the end)
                    else:
                        if right_at is None:
                            right_at = self._position_of(self._find(rpeer, rctr))  # type: ignore[arg-type]
                        scanning = self._position_of(find(o_right[0], o_right[1])) < right_at  # type: ignore[arg-type]
                mark(id(o))
                prev = o
                si += 1
            if ci == last:
                break  # the end of the sequence
            ci += 1
            si = 0
        # The end: past every element after the left origin, unless scanning.
        return (dci, dsi) if scanning else (ci, si)

    def set_deleted(
        self, peer: str, ctr: int, count: int, deleted: bool, want_index: bool
    ) -> list[tuple[int, int, Any]]:
        """Mark elements ``ctr .. ctr+count-1`` of ``peer`` deleted (or visible again).

        Returns, for each run whose state changed, ``(visible index, length,
        content)`` at the moment it changed (index -1 unless ``want_index``).
        The ids must exist (callers validate first: see :meth:`check_range`).
        """
        changed: list[tuple[int, int, Any]] = []
        self._cur = None
        while count > 0:
            s = self._last
            if s is None or s[P] != peer or not s[C] <= ctr < s[C] + s[N]:
                s = self._find(peer, ctr)
                if s is None:
                    raise KeyError((peer, ctr))
            off = ctr - s[C]
            take = s[N] - off
            if take > count:
                take = count
            if s[D] != deleted:
                vis = -1
                if want_index:
                    vis = self.span_visible_start(s) + (0 if s[D] else off)
                content = s[X][off : off + take]
                chunk = s[CH]
                self._set_deleted(s, off, take, deleted, -1, _span_index(chunk, s), -1)
                changed.append((vis, take, content))
            ctr += take
            count -= take
        return changed

    def delete_known(self, peer: str, ctr: int, count: int) -> None:
        """``set_deleted(peer, ctr, count, True, False)`` for a caller that wants
        nothing back (a remote delete nobody observes): the same spans in the
        end, with no content copied and no list built.

        KeyError if an id is unknown; what was deleted before it stays deleted
        (callers validate first or roll back, as with :meth:`set_deleted`).
        """
        self._cur = None
        while count > 0:
            s = self._last
            if s is None or s[P] != peer or not s[C] <= ctr < s[C] + s[N]:
                s = self._find_indexed(peer, ctr)
                if s is None:
                    raise KeyError((peer, ctr))
            off = ctr - s[C]
            take = s[N] - off
            if take > count:
                take = count
            if not s[D]:
                self._delete_in(s, off, take)
            ctr += take
            count -= take

    def _delete_in(self, s: Span, off: int, take: int) -> None:
        """``_set_deleted(s, off, take, True, -1, <slot of s>, -1)`` for a visible
        span ``s``: the same steps (shift a boundary, or split, flag and merge
        with the neighbours), with the deleted flag and the mergeability tests
        written out, and no cursor kept."""
        chunk = s[CH]
        spans = chunk.spans
        si = s[SI]
        if si >= len(spans) or spans[si] is not s:
            si = _span_moved(spans, s, si)
        keep = self.keep
        n = s[N]
        inside = False  # (a flag: see ``integrate``)
        if off and off + take < n:
            inside = True
        if inside:
            # Inside the span: the two splits of the general steps at once. It
            # leaves the span, the deleted middle and the tail, all of one run;
            # the middle's neighbours are visible, so nothing merges.
            peer = s[P]
            at = s[C] + off
            content = s[X]
            right = s[R]
            mid = [
                peer,
                at,
                take,
                content[off : off + take] if keep else self.empty,
                True,
                (peer, at - 1),
                right,
                chunk,
                si + 1,
            ]
            stop = at + take
            tail = [
                peer,
                stop,
                n - off - take,
                content[off + take :],
                False,
                (peer, stop - 1),
                right,
                chunk,
                si + 2,
            ]
            s[N] = off
            s[X] = content[:off]
            spans[si + 1 : si + 1] = (mid, tail)
            # ``_index_add`` of both (they lie inside ``s``: neither starts a
            # span yet, and no start lies between them).
            self._starts[peer].add_two(at, stop)
            where = self._where[peer]
            where[at] = mid
            where[stop] = tail
            chunk.vis -= take
            self.length -= take
            return
        if (
            not keep
            and (
                (off and off + take == n and si + 1 < len(spans) and spans[si + 1][D])
                or (not off and take < n and si and spans[si - 1][D])
            )
            and self._shift_boundary(s, spans, si, off, take)
        ):
            chunk.vis -= take
            self.length -= take
            return
        if off and not keep:
            # A suffix of a text span, with no tombstone of the same run after
            # it (``_shift_boundary`` found none): split off as a tombstone
            # (``_split`` without copying its text); nothing merges.
            peer = s[P]
            at = s[C] + off
            tail = [peer, at, take, self.empty, True, (peer, at - 1), s[R], chunk, si + 1]
            s[N] = off
            s[X] = s[X][:off]
            spans.insert(si + 1, tail)
            where = self._where[peer]
            if at not in where:
                self._starts[peer].add(at)
            where[at] = tail
            chunk.vis -= take
            self.length -= take
            return
        if off:
            s = self._split(s, chunk, si, off)
            si += 1
        if take < s[N]:
            self._split(s, chunk, si, take)
        s[D] = True
        chunk.vis -= take
        self.length -= take
        if not keep:
            s[X] = self.empty
            if take < n:
                # A prefix of a text span (a suffix returned above): the rest
                # of it, after the cut, is visible, and before it there is no
                # tombstone of the same run (``_shift_boundary`` found none).
                return
        # Merge with neighbouring tombstones of the same run (``_mergeable``).
        peer = s[P]
        if si + 1 < len(spans):
            b = spans[si + 1]
            if (
                b[D]
                and b[P] == peer
                and s[C] + s[N] == b[C]
                and b[R] == s[R]
                and b[L] == (peer, b[C] - 1)
            ):
                self._merge(s, spans, si + 1)
        if si:
            a = spans[si - 1]
            if (
                a[D]
                and a[P] == peer
                and a[C] + a[N] == s[C]
                and s[R] == a[R]
                and s[L] == (peer, s[C] - 1)
            ):
                self._merge(a, spans, si)

    def check_range(self, peer: str, ctr: int, count: int) -> None:
        """Raise KeyError unless every element ``ctr .. ctr+count-1`` of ``peer`` exists."""
        end = ctr + count
        while ctr < end:
            span, off = self.locate(peer, ctr)
            ctr += span[N] - off

    # ------------------------------------------------------------------ internals

    def _slot_after(self, ident: Id) -> tuple[int, int]:
        """(chunk, span) index of the slot right after element ``ident``, splitting
        its span there if needed. KeyError if ``ident`` is unknown."""
        span, off = self.locate(*ident)
        chunk = span[CH]
        ci = self._chunk_index(chunk)
        si = _span_index(chunk, span)
        if off < span[N] - 1:
            self._split(span, chunk, si, off + 1)
        return ci, si + 1

    def _span_from(self, ci: int, si: int) -> Span | None:
        """The first span at or after slot (``ci``, ``si``), or None at the end."""
        chunks = self.chunks
        while ci < len(chunks):
            spans = chunks[ci].spans
            if si < len(spans):
                span: Span = spans[si]
                return span
            ci += 1
            si = 0
        return None

    def _position_of(self, span: Span) -> tuple[int, int]:
        chunk = span[CH]
        return self._chunk_index(chunk), _span_index(chunk, span)

    def _chunk_index(self, chunk: Chunk) -> int:
        """The index of ``chunk`` in :attr:`chunks`. Its ``at`` when that holds it;
        else the chunks from the first one not known exact are renumbered up to
        it (a split renumbers nothing: merging remote runs into the front of a
        long text split chunks there hundreds of times, and renumbered every
        chunk after each split)."""
        ci = chunk.at
        chunks = self.chunks
        if chunks[ci] is chunk:
            return ci
        # ``at`` is below the true index for a chunk not known exact (chunks
        # are only inserted), so the chunk lies at ``_stale`` or after.
        ci = self._stale
        c = chunks[ci]
        while c is not chunk:
            c.at = ci
            ci += 1
            c = chunks[ci]
        chunk.at = ci
        self._stale = ci + 1
        return ci

    #: (A method too, for tests; the sequence calls the module function.)
    _span_index = staticmethod(_span_index)

    def find(self, peer: str, ctr: int) -> Span | None:
        """The span holding element ``(peer, ctr)``, or None."""
        return self._find(peer, ctr)

    def next_known(self, peer: str, ctr: int) -> int | None:
        """The first counter >= ``ctr`` of an element of ``peer`` held here, or None."""
        if self._find(peer, ctr) is not None:
            return ctr
        starts = self._starts.get(peer)
        return None if starts is None else starts.ceiling(ctr)

    def find_or_next(self, peer: str, ctr: int) -> tuple[Span | None, int | None]:
        """``(span holding (peer, ctr), None)``, or ``(None, the first counter >
        ctr of an element of peer held here, or None)``.

        :meth:`find` then :meth:`next_known` from ``ctr + 1`` in one lookup (a
        snapshot merge asks both of each incoming span): the floor and the
        ceiling of ``ctr`` among the peer's span starts come from one block.
        """
        s = self._last
        if s is not None and s[P] == peer and s[C] <= ctr < s[C] + s[N]:
            return s, None
        where = self._where.get(peer)
        if where is None:
            return None, None
        s = where.get(ctr)
        if s is None:
            starts = self._starts[peer]
            maxes = starts.maxes
            i = bisect_right(maxes, ctr)
            after: int | None = None
            if i < len(maxes):
                block = starts.blocks[i]
                j = bisect_right(block, ctr)
                after = block[j]  # maxes[i] > ctr: block holds a start past ctr
                floor = block[j - 1] if j else (maxes[i - 1] if i else None)
            else:
                floor = maxes[-1] if maxes else None
            if floor is None:
                return None, after
            s = where[floor]
            if ctr >= floor + s[N]:
                return None, after
        self._last = s
        return s, None

    def _find(self, peer: str, ctr: int) -> Span | None:
        s = self._last
        if s is not None and s[P] == peer and s[C] <= ctr < s[C] + s[N]:
            return s
        # ``_find_indexed``, inline (one call less for the many callers that miss).
        where = self._where.get(peer)
        if where is None:
            return None
        s = where.get(ctr)
        if s is None:
            start = self._starts[peer].floor(ctr)
            if start is None:
                return None
            s = where[start]
            if ctr >= start + s[N]:
                return None
        self._last = s
        return s

    def _find_indexed(self, peer: str, ctr: int) -> Span | None:
        """:meth:`_find` past the span of the last lookup (the caller tried it).

        A span that starts at ``ctr`` is taken from the index directly (a
        remote delete mostly starts at a span's first element, a remote
        insert after an element that is a span of its own): no bisection."""
        where = self._where.get(peer)
        if where is None:
            return None
        s = where.get(ctr)
        if s is None:
            start = self._starts[peer].floor(ctr)
            if start is None:
                return None
            s = where[start]
            if ctr >= start + s[N]:
                return None
        self._last = s
        return s

    def _seek(self, pos: int) -> tuple[int, int, int]:
        """(chunk, span, offset) of the visible element at ``pos`` (0 <= pos < length)."""
        if not 0 <= pos < self.length:
            raise IndexError(pos)
        chunks = self.chunks
        cur = self._cur
        if cur is not None:
            ci, si, vs = cur
            steps = 64
            if pos >= vs:
                while steps:
                    spans = chunks[ci].spans
                    if si >= len(spans):
                        ci += 1
                        si = 0
                        continue
                    s = spans[si]
                    if not s[D]:
                        n = s[N]
                        if pos < vs + n:
                            self._cur = (ci, si, vs)
                            return ci, si, pos - vs
                        vs += n
                    si += 1
                    steps -= 1
            else:
                while steps:
                    si -= 1
                    while si < 0:
                        ci -= 1
                        si = len(chunks[ci].spans) - 1
                    s = chunks[ci].spans[si]
                    if not s[D]:
                        vs -= s[N]
                        if vs <= pos:
                            self._cur = (ci, si, vs)
                            return ci, si, pos - vs
                    steps -= 1
        # Far jump: sum chunk lengths, then walk one chunk.
        acc = 0
        ci = 0
        for chunk in chunks:
            if acc + chunk.vis > pos:
                break
            acc += chunk.vis
            ci += 1
        for si, s in enumerate(chunk.spans):
            if not s[D]:
                n = s[N]
                if pos < acc + n:
                    self._cur = (ci, si, acc)
                    return ci, si, pos - acc
                acc += n
        raise AssertionError("visible lengths are inconsistent")  # pragma: no cover

    def _extend(self, s: Span, content: Any, n: int, vis: int) -> None:
        """Grow span ``s`` by ``n`` elements (``content`` is empty for text tombstones)."""
        s[N] += n
        if content:
            s[X] = s[X] + content
        if vis:
            s[CH].vis += vis
            self.length += vis

    def _insert_span(self, ci: int, si: int, span: Span) -> None:
        chunk = self.chunks[ci]
        span[CH] = chunk
        span[SI] = si
        chunk.spans.insert(si, span)
        if not span[D]:
            chunk.vis += span[N]
            self.length += span[N]
        self._index_add(span)

    def _index_add(self, span: Span) -> None:
        peer = span[P]
        starts = self._starts.get(peer)
        if starts is None:
            starts = self._starts[peer] = SortedInts()
            self._where[peer] = {}
        where = self._where[peer]
        start = span[C]
        if start not in where:
            starts.add(start)
        where[start] = span

    def _index_remove(self, span: Span) -> None:
        peer = span[P]
        del self._where[peer][span[C]]
        self._starts[peer].remove(span[C])
        if self._last is span:
            self._last = None

    def _split(self, s: Span, chunk: Chunk, si: int, off: int) -> Span:
        """Split span ``s`` (at ``chunk.spans[si]``) before offset ``off``; returns the tail."""
        content = s[X]
        peer = s[P]
        start = s[C] + off
        tail = [
            peer,
            start,
            s[N] - off,
            content[off:],
            s[D],
            (peer, start - 1),
            s[R],
            chunk,
            si + 1,
        ]
        s[N] = off
        s[X] = content[:off]
        chunk.spans.insert(si + 1, tail)
        # ``_index_add(tail)``, inline (the peer has a span already: ``s``).
        where = self._where[peer]
        if start not in where:
            self._starts[peer].add(start)
        where[start] = tail
        return tail

    def _set_deleted(
        self, s: Span, off: int, take: int, deleted: bool, ci: int, si: int, vs: int
    ) -> None:
        """Flip the deleted flag of ``take`` elements of ``s`` (at ``spans[si]``) from ``off``.

        For local deletes ``ci`` and ``vs`` (chunk index, visible elements before
        ``s``) keep the cursor cache pointing at the new tombstone; pass -1 otherwise.
        """
        chunk = s[CH]
        spans = chunk.spans
        n = s[N]
        if (
            deleted
            and not s[D]
            and not self.keep
            # A tombstone beside the deleted prefix or suffix (else no shift).
            and (
                (off and off + take == n and si + 1 < len(spans) and spans[si + 1][D])
                or (not off and take < n and si and spans[si - 1][D])
            )
            and self._shift_boundary(s, spans, si, off, take)
        ):
            # Backspace or forward delete next to a tombstone of the same run:
            # the boundary between them moved, no span was split or merged.
            chunk.vis -= take
            self.length -= take
            self._cur = (ci, si, vs) if ci >= 0 and vs >= 0 else None
            return
        if off:
            if not s[D]:
                vs += off
            s = self._split(s, chunk, si, off)
            si += 1
        if take < s[N]:
            self._split(s, chunk, si, take)
        s[D] = deleted
        delta = -take if deleted else take
        chunk.vis += delta
        self.length += delta
        if deleted and not self.keep:
            s[X] = self.empty
        # Merge with neighbouring pieces of the same run now in the same state.
        if si + 1 < len(spans) and self._mergeable(s, spans[si + 1]):
            self._merge(s, spans, si + 1)
        if si > 0 and self._mergeable(spans[si - 1], s):
            prev_n = spans[si - 1][N]
            self._merge(spans[si - 1], spans, si)
            si -= 1
            if not deleted:
                vs -= prev_n
        if ci >= 0 and vs >= 0:
            self._cur = (ci, si, vs)
        else:
            self._cur = None

    def _shift_boundary(self, s: Span, spans: list[Span], si: int, off: int, take: int) -> bool:
        """Delete a prefix or suffix of visible text span ``s`` into the tombstone of
        the same run beside it, by moving their boundary. False if that does not apply.
        """
        n = s[N]
        peer = s[P]
        if off and off + take == n and si + 1 < len(spans):
            t = spans[si + 1]  # the tombstone after s?
            if (
                t[D]
                and t[P] == peer
                and t[C] == s[C] + n
                and t[R] == s[R]
                and t[L] == (peer, t[C] - 1)
            ):
                self._move_start(t, t[C] - take)
                t[N] += take
                t[L] = (peer, t[C] - 1)
                s[N] = off
                s[X] = s[X][:off]
                return True
        elif not off and take < n and si:
            q = spans[si - 1]  # the tombstone before s?
            if (
                q[D]
                and q[P] == peer
                and q[C] + q[N] == s[C]
                and q[R] == s[R]
                and s[L] == (peer, s[C] - 1)
            ):
                q[N] += take
                self._move_start(s, s[C] + take)
                s[N] -= take
                s[X] = s[X][take:]
                s[L] = (peer, s[C] - 1)
                return True
        return False

    def _move_start(self, span: Span, start: int) -> None:
        """Re-key ``span`` in the id index under a new first counter ``start``."""
        peer = span[P]
        where = self._where[peer]
        del where[span[C]]
        where[start] = span
        self._starts[peer].replace(span[C], start)
        span[C] = start

    @staticmethod
    def _mergeable(a: Span, b: Span) -> bool:
        return bool(
            a[D] == b[D]
            and a[P] == b[P]
            and a[C] + a[N] == b[C]
            and b[R] == a[R]
            and b[L] == (a[P], b[C] - 1)
        )

    def _merge(self, a: Span, spans: list[Span], bi: int) -> None:
        b = spans[bi]
        a[N] += b[N]
        a[X] = a[X] + b[X]
        del spans[bi]
        self._index_remove(b)

    def _rebalance(self, ci: int) -> None:
        chunk = self.chunks[ci]
        spans = chunk.spans
        if len(spans) <= CHUNK_MAX:
            return
        half = len(spans) // 2
        moved = spans[half:]
        del spans[half:]
        new = Chunk(moved, 0, ci + 1)
        vis = 0
        for k, s in enumerate(moved):
            s[CH] = new
            s[SI] = k
            if not s[D]:
                vis += s[N]
        new.vis = vis
        chunk.vis -= vis
        chunks = self.chunks
        chunks.insert(ci + 1, new)
        # The chunks after ``new`` moved one place: renumbered when asked.
        if self._stale > ci + 2:
            self._stale = ci + 2
        cur = self._cur
        if cur is not None:
            cci, csi, cvs = cur
            if cci == ci and csi >= half:
                self._cur = (ci + 1, csi - half, cvs)
            elif cci > ci:
                self._cur = (cci + 1, csi, cvs)

    # ------------------------------------------------------------------ copying

    def backup(self) -> Backup:
        """A copy of the content to roll back to with :meth:`restore`: one list
        copy per span, nothing else (the chunks, slots and id index are rebuilt
        only if restored). The copies still name the live chunks, so they form
        no reference cycle and are freed as soon as the backup is dropped."""
        return [list(map(list.copy, chunk.spans)) for chunk in self.chunks]

    def restore(self, backup: Backup) -> None:
        """Put back the content saved by :meth:`backup` (which must not be used after)."""
        chunks: list[Chunk] = []
        where: dict[str, dict[int, Span]] = {}
        length = 0
        for spans in backup:
            chunk = Chunk(spans, 0, len(chunks))
            vis = 0
            for k, s in enumerate(spans):
                s[CH] = chunk
                s[SI] = k
                if not s[D]:
                    vis += s[N]
                w = where.get(s[P])
                if w is None:
                    w = where[s[P]] = {}
                w[s[C]] = s
            chunk.vis = vis
            length += vis
            chunks.append(chunk)
        self.chunks = chunks
        self._stale = len(chunks)
        self.length = length
        self._where = where
        self._starts = {peer: SortedInts(list(w)) for peer, w in where.items()}
        self._cur = None
        self._last = None

    # ------------------------------------------------------------------ loading

    def load_spans(self, spans: list[Span]) -> None:
        """Replace the content with ``spans`` (document order, all nine fields;
        the chunk one is set here, the slot hints are set on first use).

        Raises DecodeError if an element id appears twice.
        """
        chunks: list[Chunk] = []
        where: dict[str, dict[int, Span]] = {}
        size = CHUNK_MAX // 2
        length = 0
        for i in range(0, len(spans), size):
            part = spans[i : i + size]
            chunk = Chunk(part, 0, len(chunks))
            vis = 0
            for s in part:
                s[CH] = chunk  # (slots are hints: found on first use)
                if not s[D]:
                    vis += s[N]
            chunk.vis = vis
            length += vis
            chunks.append(chunk)
        for s in spans:
            w = where.get(s[P])
            if w is None:
                w = where[s[P]] = {}
            w[s[C]] = s
        if sum(map(len, where.values())) != len(spans):
            from .exceptions import DecodeError

            raise DecodeError("an element appears twice in the sequence")
        self.chunks = chunks or [Chunk([], 0)]
        self._stale = len(self.chunks)
        self.length = length
        self._where = where
        self._starts = {peer: SortedInts(list(w)) for peer, w in where.items()}
        self._cur = None
        self._last = None

    # --------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Raise AssertionError if the internal structure is inconsistent (tests)."""
        total = 0
        seen: set[tuple[str, int]] = set()
        if len(self.chunks) > 1 and any(not ch.spans for ch in self.chunks):
            raise AssertionError("empty chunk among several")
        for at, chunk in enumerate(self.chunks):
            # Exact before ``_stale``; at most the true index after it.
            if chunk.at != at and (at < self._stale or chunk.at > at):
                raise AssertionError(f"chunk {at} thinks it is chunk {chunk.at}")
            vis = 0
            for s in chunk.spans:
                if s[CH] is not chunk:
                    raise AssertionError(f"span {s[:3]} points at the wrong chunk")
                if s[N] <= 0:
                    raise AssertionError(f"empty span {s[:3]}")
                if (not s[D] or self.keep) and len(s[X]) != s[N]:
                    raise AssertionError(f"span {s[:3]} content length {len(s[X])}")
                if self._where[s[P]].get(s[C]) is not s:
                    raise AssertionError(f"span {s[:3]} missing from the id index")
                if (s[P], s[C]) in seen:
                    raise AssertionError(f"span {s[:3]} twice")
                seen.add((s[P], s[C]))
                if not s[D]:
                    vis += s[N]
            if vis != chunk.vis:
                raise AssertionError(f"chunk visible count {chunk.vis} != {vis}")
            total += vis
        if total != self.length:
            raise AssertionError(f"length {self.length} != {total}")
        indexed = sum(len(w) for w in self._where.values())
        if indexed != len(seen):
            raise AssertionError(f"id index has {indexed} spans, sequence {len(seen)}")
        for peer, starts in self._starts.items():
            if sorted(self._where[peer]) != list(starts):
                raise AssertionError(f"sorted starts of {peer} disagree with the index")
            if starts.maxes != [block[-1] for block in starts.blocks if block] or any(
                len(block) > _BLOCK_MAX for block in starts.blocks
            ):
                raise AssertionError(
                    f"sorted starts of {peer}: a block is empty, too long or its max is wrong"
                )
        if self._cur is not None:
            ci, si, vs = self._cur
            spans = self.chunks[ci].spans
            if si < len(spans):
                expect = self.span_visible_start(spans[si])
                if expect != vs:
                    raise AssertionError(f"cursor cache says {vs}, actual {expect}")
