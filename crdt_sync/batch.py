"""Change batches as columns and runs (change format version 2).

Real editing is runs: one peer typing on (each change a single insert right
after the previous one, same right origin) or deleting on (each change a
single text delete, backspace or forward delete). Version 2 of the change
format stores a batch as *segments*; in a segment every change is either a
*head* (a full row, as in version 1 but without its time stamp) or a
*continuation* of the run the previous change started, which is fully
determined by that change except for a few numbers kept in columns:

- typing continuation: its text (the text column, lengths in ``tlen``);
- deleting continuation: its one range ``(peer, counter, length)``.

A continuation's peer, counter, handler, origins and deps are derived (deps
exactly as :func:`crdt_sync.document._deps_of` makes them), so a decoder
builds them instead of trusting them: a hostile batch can only describe runs
that are valid by construction. Columns are fixed-width little-endian arrays,
read in bulk (``array.frombytes``), so decoding and applying cost per *run*,
not per change. The layout is in ``docs/encoding.md``.

A segment body is self-contained (its own peer and name tables), so the
history keeps segments as they came (``history.py``) and an export since a
version reuses whole segments instead of re-encoding them.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from .changes import (
    _F_CHAIN_DEPS,
    _F_NEXT_COUNTER,
    _F_SAME_PEER,
    _REF_FULL,
    _REF_NONE,
    _REF_PREV,
    MAX_NAME,
    TEXT_DELETE,
    TEXT_INSERT,
    ChangeTuple,
    _read_deps_and_ops,
    _read_peer,
    _Tables,
    _write_deps_and_ops,
)
from .codec import MAX_COUNT, Reader, Writer, _varint

FULL, TYPING, DELETING = 0, 1, 2
#: The op a continued run's head holds, by the kind of its continuations.
_RUN_OP = (-1, TEXT_INSERT, TEXT_DELETE)
MAX_COUNTER = 1 << 53
MAX_STAMP = 1 << 63

_LITTLE = sys.byteorder == "little"

#: A run: (first change index, end index, kind, head change, offset in tlen,
#: offset in the text column, offset in the delete columns, counter after the run,
#: then its head's peer, counter, size and first op). The head change is None
#: for the usual head, one text insert or delete that depends on its peer's
#: previous change only (no tuples made for its deps and ops: the run carries
#: all there is to it); else it is the head as read, its time stamp 0 (the
#: stamps stay deltas until asked for). :meth:`Segment.head` gives the head,
#: built if need be, with its own time stamp.
Run = tuple[int, int, int, ChangeTuple | None, int, int, int, int, str, int, int, Any]


def _typing_deps(peer: str, ctr: int, right: Any) -> tuple[tuple[str, int], ...]:
    if right is None or right[0] == peer:
        return ((peer, ctr - 1),)
    return ((peer, ctr - 1), (right[0], right[1]))


def _delete_deps(peer: str, ctr: int, p: str, c: int, n: int) -> tuple[tuple[str, int], ...]:
    if p == peer:
        return ((peer, ctr - 1),)
    return ((peer, ctr - 1), (p, c + n - 1))


def _tobytes(code: str, values: Iterable[int]) -> bytes:
    a = array(code, values)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        a.byteswap()
    return a.tobytes()


def _non_negative(data: bytes, start: int, end: int) -> bool:
    """Whether no value of the little-endian ``q`` column ``data[start:end]`` is
    negative: no top byte has its sign bit set (a check of the bytes, with no
    int made per value; ``isascii`` tests a word of them at a time)."""
    return data[start + 7 : end : 8].isascii()


_ONE = (1).to_bytes(4, sys.byteorder)


def _all_ones(values: array[int]) -> bool:
    """Whether every value of an ``I`` array is 1, with no int made per value:
    its bytes begin a run of ones (one ``memcmp``), or for a long array
    ``count`` finds ``len(values)`` non-overlapping 4-byte matches in
    ``4 * len(values)`` bytes, which happens only if they tile the array."""
    raw = values.tobytes()
    if len(raw) <= len(_ONES):
        return _ONES.startswith(raw)  # one memcmp
    return raw.count(_ONE) == len(values)


_ONES = _ONE * 4096


def _all_below(values: array[int], limit: int) -> bool:
    """Whether every value of an unsigned array is below ``limit``: by the bytes
    when ``limit`` is a power of two or at most 256, else by ``max``."""
    if not values:
        return True
    size = values.itemsize
    raw = values.tobytes()
    if not _LITTLE:  # pragma: no cover
        return max(values) < limit
    # The bytes of each place in a value (``raw[k::size]``) are compared with
    # zeros (a ``memcmp``) before anything costlier.
    zeros = bytes(len(values))
    if limit <= 256:
        if not limit:
            return False
        # Only the low byte may be set, and below ``limit``.
        low = raw[0::size]
        if low != zeros and low.translate(None, _BELOW[limit]):
            return False
        return all(raw[k::size] == zeros for k in range(1, size))
    bits = limit.bit_length() - 1
    if limit != 1 << bits:
        return max(values) < limit
    # A power of two: every byte above the limit's is zero, and its own below it.
    byte, bit = divmod(bits, 8)
    if byte < size:
        part = raw[byte::size]
        if part != zeros and part.translate(None, _BELOW[1 << bit]):
            return False
    return all(raw[k::size] == zeros for k in range(byte + 1, size))


#: ``_BELOW[k]``: the bytes 0 .. k-1 (removing them leaves the bytes >= k).
_BELOW = [bytes(range(k)) for k in range(257)]


def _frombytes(r: Reader, code: str, n: int) -> array[int]:
    """The column of ``n`` values at ``r``: copied once, from a view of the batch."""
    a = array(code)
    size = a.itemsize * n
    pos = r.pos
    if pos + size > r.end:
        raise r.fail(f"truncated: expected {size} bytes")
    if size:
        a.frombytes(memoryview(r.data)[pos : pos + size])
        if not _LITTLE:  # pragma: no cover
            a.byteswap()
    r.pos = pos + size
    return a


# ----------------------------------------------------------------- encoding


def encode_segment(changes: Iterable[ChangeTuple]) -> bytes:
    """One segment body holding ``changes`` (in order)."""
    t = _Tables()
    kinds = bytearray()
    stamps: list[int] = []
    tlen: list[int] = []
    texts: list[str] = []
    dpeer: list[int] = []
    dctr: list[int] = []
    dlen: list[int] = []
    rows = Writer()
    prev_peer: str | None = None
    expect = 0
    # The run the previous change can be continued by: (kind, name, right).
    run: tuple[int, str, Any] | None = None
    for change in changes:
        peer, ctr, stamp, deps, ops, size = change
        stamps.append(stamp)
        if run is not None and peer == prev_peer and ctr == expect and len(ops) == 1:
            op = ops[0]
            if run[0] == TYPING:
                if (
                    op[0] == TEXT_INSERT
                    and op[1] == run[1]
                    and op[3] == run[2]
                    and op[2] == (peer, ctr - 1)
                    and deps == _typing_deps(peer, ctr, run[2])
                ):
                    kinds.append(TYPING)
                    tlen.append(size)
                    texts.append(op[4])
                    expect = ctr + size
                    continue
            elif (
                op[0] == TEXT_DELETE
                and op[1] == run[1]
                and len(op[2]) == 1
                and size == 1
                and deps == _delete_deps(peer, ctr, *op[2][0])
            ):
                p, c, n = op[2][0]
                kinds.append(DELETING)
                dpeer.append(t.peer(p))
                dctr.append(c)
                dlen.append(n)
                expect = ctr + 1
                continue
        kinds.append(FULL)
        flags = 0
        if peer == prev_peer:
            flags |= _F_SAME_PEER
            if ctr == expect:
                flags |= _F_NEXT_COUNTER
        if len(deps) == 1 and deps[0][0] == peer and deps[0][1] == ctr - 1:
            flags |= _F_CHAIN_DEPS
        rows.byte(flags)
        if not flags & _F_SAME_PEER:
            rows.uint(t.peer(peer))
        if not flags & _F_NEXT_COUNTER:
            rows.uint(ctr)
        expect = _write_deps_and_ops(rows, t, peer, ctr, deps, ops, not flags & _F_CHAIN_DEPS)
        prev_peer = peer
        run = None
        if len(ops) == 1:
            op = ops[0]
            if op[0] == TEXT_INSERT:
                run = (TYPING, op[1], op[3])
            elif op[0] == TEXT_DELETE:
                run = (DELETING, op[1], None)
    w = Writer()
    w.uint(len(t.peers))
    for peer in t.peers:
        w.peer(peer)
    w.uint(len(t.names))
    for name in t.names:
        w.str(name)
    n = len(kinds)
    w.uint(n)
    w.raw(bytes(kinds))
    # Time stamps as deltas (small numbers compress well).
    w.raw(_tobytes("q", [b - a for a, b in zip([0, *stamps], stamps, strict=False)]))
    w.uint(len(tlen))
    w.raw(_tobytes("I", tlen))
    w.uint(len(dpeer))
    w.raw(_tobytes("I", dpeer))
    w.raw(_tobytes("Q", dctr))
    w.raw(_tobytes("I", dlen))
    w.str("".join(texts))
    w.raw(rows.getvalue())
    return w.getvalue()


def _sections(body: bytes) -> tuple[bytes, int, list[bytes]]:
    """A well-formed segment body cut where :func:`join_bodies` joins: its peer and
    name tables (as bytes), its change count, and as bytes its kinds, stamps,
    text lengths, delete peers, counters and lengths, its text, and its head rows."""
    r = Reader(body)
    for _ in range(r.uint()):
        r.peer()
    for _ in range(r.uint()):
        r.str()
    tables = body[: r.pos]
    n = r.uint()
    kinds, stamps = r.raw(n), r.raw(8 * n)
    t = r.uint()
    tlen = r.raw(4 * t)
    e = r.uint()
    columns = [kinds, stamps, tlen, r.raw(4 * e), r.raw(8 * e), r.raw(4 * e)]
    columns.append(r.bytes())
    columns.append(body[r.pos :])
    return tables, n, columns


def join_bodies(first: bytes, second: bytes) -> bytes | None:
    """One segment body holding the changes of two well-formed ones, in order,
    found from their bytes with nothing decoded, when they have the same peer
    and name tables (one peer typing into one text makes many such segments)
    and the second's first stamp is not below the first's last; else None.

    Every column is the two columns one after the other, but the second's first
    stamp, stored as itself (the first of a segment is relative to 0), becomes
    relative to the first's last. The second's first head row reads the same
    after other rows: a segment's first head names its peer and counter and
    its origins are relative to itself. A segment of 4,096 changes decodes in
    about two thirds of the time four of 1,024 take (each has its tables,
    columns and checks to read)."""
    tables, n1, a = _sections(first)
    tables2, n2, b = _sections(second)
    if tables != tables2:
        return None
    last = sum(_column("q", a[1]))
    stamps2 = _column("q", b[1])
    if not n2 or stamps2[0] < last:
        return None
    stamps2[0] -= last
    w = Writer()
    w.raw(tables)
    w.uint(n1 + n2)
    w.raw(a[0] + b[0])
    w.raw(a[1] + _tobytes("q", stamps2))
    w.uint((len(a[2]) + len(b[2])) // 4)
    w.raw(a[2] + b[2])
    w.uint((len(a[3]) + len(b[3])) // 4)
    w.raw(a[3] + b[3] + a[4] + b[4] + a[5] + b[5])
    w.bytes(a[6] + b[6])
    w.raw(a[7] + b[7])
    return w.getvalue()


def _column(code: str, raw: bytes) -> array[int]:
    values = array(code)
    values.frombytes(raw)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        values.byteswap()
    return values


# ----------------------------------------------------------------- decoding


class Segment:
    """A decoded segment: its columns, its runs (heads decoded), its body bytes.

    Nothing per change is built until asked for (:meth:`tuples`, :meth:`find`).
    """

    __slots__ = (
        "_index",
        "_one_each",
        "_ranges",
        "_runs",
        "_ts",
        "body",
        "dctr",
        "dlen",
        "dpeer",
        "dts",
        "max_ts",
        "n",
        "peers",
        "summary",
        "text",
        "tlen",
    )

    def __init__(
        self,
        body: bytes,
        n: int,
        peers: list[str],
        dts: array[int],
        ts: array[int] | None,
        max_ts: int,
        tlen: array[int],
        dpeer: array[int],
        dctr: array[int],
        dlen: array[int],
        text: str,
        runs: list[Run],
        summary: dict[str, tuple[int, int]],
    ) -> None:
        self.body = body
        self.n = n
        self.peers = peers
        # Time stamps as stored (deltas); ``ts`` adds them up when first asked.
        self.dts = dts
        self._ts = ts
        self.max_ts = max_ts
        self.tlen = tlen
        self.dpeer = dpeer
        self.dctr = dctr
        self.dlen = dlen
        self.text = text
        self._runs: list[Run] | None = runs
        # peer -> (first counter, counter after the last) of its changes here.
        self.summary = summary
        self._index: dict[str, tuple[list[int], list[int]]] | None = None
        self._ranges: dict[int, list[tuple[str, int, int]]] = {}
        self._one_each: set[int] = set()

    @property
    def runs(self) -> list[Run]:
        """The runs, heads decoded (again from :attr:`body` after :meth:`release`)."""
        runs = self._runs
        if runs is None:
            # (A segment just decoded holds its runs: its ``runs`` is them.)
            runs = self._runs = decode_segment(Reader(self.body)).runs
        return runs

    def release(self) -> None:
        """Drop the decoded runs and what was found from them (decoded again if
        asked for): an import drops each segment's as soon as it applied them,
        while they are still in the cache (at the end of a long merge, freeing
        them all took 6 % of it)."""
        self._runs = None
        self._ranges = {}
        self._one_each = set()
        self._index = None

    @property
    def ts(self) -> array[int]:
        """The time stamp of each change (valid: checked when decoded)."""
        ts = self._ts
        if ts is None:
            ts = self._ts = array("q", accumulate(self.dts))
        return ts

    def head(self, run: Run) -> ChangeTuple:
        """The head change of ``run`` with its time stamp."""
        head = run[3]
        if head is None:
            peer, ctr = run[8], run[9]
            return (peer, ctr, self.ts[run[0]], ((peer, ctr - 1),), (run[11],), run[10])
        return (head[0], head[1], self.ts[run[0]], head[3], head[4], head[5])

    def run_changes(self, run: Run) -> list[ChangeTuple]:
        """The changes of ``run``, built."""
        i, j, kind = run[0], run[1], run[2]
        tl0, x0, d0 = run[4], run[5], run[6]
        out = [self.head(run)]
        if kind == FULL:
            return out
        peer = run[8]
        ctr = run[9] + run[10]
        ts = self.ts
        name = run[11][1]
        if kind == TYPING:
            right = run[11][3]
            text = self.text
            x = x0
            for k, length in enumerate(self.tlen[tl0 : tl0 + j - i - 1], i + 1):
                op: Any = (TEXT_INSERT, name, (peer, ctr - 1), right, text[x : x + length])
                out.append((peer, ctr, ts[k], _typing_deps(peer, ctr, right), (op,), length))
                ctr += length
                x += length
        else:
            peers = self.peers
            cols = zip(
                self.dpeer[d0 : d0 + j - i - 1],
                self.dctr[d0 : d0 + j - i - 1],
                self.dlen[d0 : d0 + j - i - 1],
                strict=True,
            )
            for k, (pi, c, n) in enumerate(cols, i + 1):
                p = peers[pi]
                op = (TEXT_DELETE, name, ((p, c, n),))
                out.append((peer, ctr, ts[k], _delete_deps(peer, ctr, p, c, n), (op,), 1))
                ctr += 1
        return out

    def tuples(self) -> list[ChangeTuple]:
        """Every change of the segment, built, in order."""
        out: list[ChangeTuple] = []
        for run in self.runs:
            out.extend(self.run_changes(run))
        return out

    def delete_ranges(self, run: Run) -> list[tuple[str, int, int]]:
        """The ranges a deleting run's continuations delete (not its head's).

        Merged (sorted, consecutive counters joined) when every continuation
        deletes one element of one peer, as backspacing and forward deleting
        do: found from the columns in bulk, with no tuple per change (then
        :meth:`deletes_one_each`). Otherwise one range per continuation.
        """
        ranges = self._ranges.get(run[0])
        if ranges is None:
            ranges = self._ranges[run[0]] = self._delete_ranges(run)
        return ranges

    def deletes_one_each(self, run: Run) -> bool:
        """Whether :meth:`delete_ranges` of ``run`` merged one-element deletes (so
        each element of its ranges is the last one some continuation deleted)."""
        self.delete_ranges(run)
        return run[0] in self._one_each

    def _delete_ranges(self, run: Run) -> list[tuple[str, int, int]]:
        i, d0 = run[0], run[6]
        m = run[1] - i - 1
        peers = self.peers
        if m == 1:
            return [(peers[self.dpeer[d0]], self.dctr[d0], self.dlen[d0])]
        stop = d0 + m
        pcol = self.dpeer[d0:stop]
        if pcol.count(pcol[0]) == m and self.dlen[d0:stop].count(1) == m:
            # One element each, of one peer (backspacing, forward deleting):
            # the merged ranges are the groups of consecutive counters. Found
            # in the order deleted, one pass with no sort: a stretch [lo, hi]
            # grows while the next counter is one below it (backspacing) or
            # one above (forward deleting); the few stretches are then sorted
            # and the touching or overlapping ones joined (a counter deleted
            # twice starts a stretch inside another).
            self._one_each.add(i)
            peer = peers[pcol[0]]
            stretches = []
            col = self.dctr[d0:stop].tolist()
            lo = hi = col[0]
            for c in col:
                if c == lo - 1:
                    lo = c
                elif c == hi + 1:
                    hi = c
                elif c != lo:
                    stretches.append((lo, hi))
                    lo = hi = c
            if not stretches:
                return [(peer, lo, hi - lo + 1)]
            stretches.append((lo, hi))
            stretches.sort()
            out = []
            lo, hi = stretches[0]
            for first, last in stretches:
                if first > hi + 1:
                    out.append((peer, lo, hi - lo + 1))
                    lo = first
                if last > hi:
                    hi = last
            out.append((peer, lo, hi - lo + 1))
            return out
        return list(
            zip(
                [peers[p] for p in pcol],
                self.dctr[d0:stop],
                self.dlen[d0:stop],
                strict=True,
            )
        )

    def op_count(self) -> int:
        """How many operations the segment's changes hold: one per continuation,
        and each head's own."""
        count = self.n
        for run in self.runs:
            head = run[3]
            if head is not None:
                count += len(head[4]) - 1
        return count

    def find(self, peer: str, ctr: int) -> ChangeTuple | None:
        """The change of this segment holding op ``(peer, ctr)``, or None.

        A bisection among the runs of ``peer``, then one change built.
        """
        index = self._index
        if index is None:
            index = self._index = {}
            for k, run in enumerate(self.runs):
                entry = index.get(run[8])
                if entry is None:
                    entry = index[run[8]] = ([], [])
                entry[0].append(run[9])
                entry[1].append(k)
        entry = index.get(peer)
        if entry is None:
            return None
        at = bisect_right(entry[0], ctr) - 1
        if at < 0:
            return None
        run = self.runs[entry[1][at]]
        i, j, kind = run[0], run[1], run[2]
        tl0, x0, d0 = run[4], run[5], run[6]
        if ctr >= run[7]:
            return None
        head_end = run[9] + run[10]
        if ctr < head_end:
            return self.head(run)
        name = run[11][1]
        if kind == TYPING:
            starts = list(accumulate(self.tlen[tl0 : tl0 + j - i - 1], initial=head_end))
            k = bisect_right(starts, ctr) - 1  # the k-th continuation
            at_ctr, length = starts[k], starts[k + 1] - starts[k]
            x = x0 + at_ctr - head_end
            right = run[11][3]
            op: Any = (TEXT_INSERT, name, (peer, at_ctr - 1), right, self.text[x : x + length])
            deps = _typing_deps(peer, at_ctr, right)
            return (peer, at_ctr, self.ts[i + 1 + k], deps, (op,), length)
        k = ctr - head_end
        p, c, n = self.peers[self.dpeer[d0 + k]], self.dctr[d0 + k], self.dlen[d0 + k]
        op = (TEXT_DELETE, name, ((p, c, n),))
        return (peer, ctr, self.ts[i + 1 + k], _delete_deps(peer, ctr, p, c, n), (op,), 1)


def decode_segment(r: Reader) -> Segment:
    """Read one segment body at ``r``; only ever raises :class:`DecodeError`."""
    start = r.pos
    peers = [r.peer() for _ in range(r.count(1))]
    if any(not p or len(p) > MAX_NAME for p in peers):
        raise r.fail("bad peer id in the peer table")
    names = [r.str() for _ in range(r.count(1))]
    if any(len(n) > MAX_NAME for n in names):
        raise r.fail("handler name too long")
    n = r.count(9)
    kinds = r.raw(n)
    # Each head (a 0) and its continuations: the pieces after the first.
    pieces = kinds.split(b"\x00")
    # Counted (a fast pass each): the kinds are only 0, 1 and 2 if these add up.
    typing, deleting = kinds.count(TYPING), kinds.count(DELETING)
    if len(pieces) - 1 + typing + deleting != n:
        raise r.fail("unknown change kind")
    if n and kinds[0] != FULL:
        raise r.fail("a segment cannot start with a continuation")
    # Stamps are stored as deltas, and kept so (``Segment.ts`` adds them up when
    # asked). Nearly always none is negative (one peer's clock only grows), and
    # then the stamps rise from the first to their sum: checked with no int per
    # change. Otherwise added up and checked one by one.
    at = r.pos
    dts = _frombytes(r, "q", n)
    ts: array[int] | None = None
    max_ts = 0
    if n:
        if _non_negative(r.data, at, r.pos):
            pass  # their sum is checked below, added up with the heads' stamps
        else:
            try:
                ts = array("q", accumulate(dts))
            except OverflowError:
                raise r.fail("time stamp out of range") from None
            if min(ts) < 0:
                raise r.fail("negative time stamp")
            max_ts = max(ts)
    nt = r.count(4)
    if nt != typing:
        raise r.fail("typing lengths do not match the changes")
    tlen = _frombytes(r, "I", nt)
    # Typing one character per change is the rule: then the text offsets are
    # the indexes themselves (``tcum`` stays None), checked with no int per change.
    ones = _all_ones(tlen)
    if nt and not ones and min(tlen) < 1:
        raise r.fail("empty typing change")
    nd = r.count(16)
    if nd != deleting:
        raise r.fail("delete ranges do not match the changes")
    dpeer = _frombytes(r, "I", nd)
    dctr = _frombytes(r, "Q", nd)
    dlen = _frombytes(r, "I", nd)
    if nd and not (
        _all_below(dpeer, len(peers))
        and _all_below(dctr, MAX_COUNTER)
        and (_all_ones(dlen) or (min(dlen) >= 1 and max(dlen) <= MAX_COUNT))
    ):
        raise r.fail("bad delete range")
    text = r.str()
    if len(text) != (nt if ones else sum(tlen)):
        raise r.fail("text length does not match the typing changes")
    # (``rfind``, not ``in``: given bytes, ``in`` first tries them as an int,
    # raising and catching a TypeError; and ``find`` took twice as long in
    # kinds that are nearly all ones, for either pair.)
    if kinds.rfind(b"\x01\x02") >= 0 or kinds.rfind(b"\x02\x01") >= 0:
        raise r.fail("a run mixes typing and deleting")
    # Text offsets of the typing continuations: the text of ``tlen[a:b]`` is
    # ``text[tcum[a]:tcum[b]]``.
    tcum = None if ones else list(accumulate(tlen, initial=0))
    runs: list[Run] = []
    append = runs.append
    firsts: dict[str, int] = {}
    ends: dict[str, int] = {}
    prev_peer = ""
    expect = 0
    tl = d = 0
    data = r.data
    j = 0
    pos = r.pos
    # The tables as a one-byte index reaches them: ``[index]`` past either
    # raises IndexError, which declines the row (an index of 128 or more is
    # not one byte long).
    peers1 = peers[:0x80]
    names1 = names[:0x80]
    chained = _CHAINED
    low7, high7, high14 = _LOW7, _HIGH7, _HIGH14
    # The batch from ``base`` on as a list of ints, ``buf``: the next row is at
    # ``base + p``. A list subscript costs a fraction of a bytes one, and ``p``
    # stays a small int (no int object made per step). Converted a stretch at a
    # time, when ``p`` passes _REFILL; emptied when a row is read by the readers
    # below (``pos`` is the position while it is empty).
    buf: list[int] = []
    base = p = 0
    for m in map(len, pieces[1:]):
        i = j
        j += m + 1
        # The usual head after a segment's first, read here from ``buf``:
        # flags 7 (the previous change's peer, the next counter, deps
        # chained), then one text insert or one text delete of one range,
        # with every index one byte, every varint one to three bytes and an
        # insert's text under 128 bytes. Anything else (malformed input
        # included) declines to the readers below, which give the same change
        # for every row read here (``tests/crdt_sync/test_batch.py`` compares
        # them).
        # The head: its change if read by a reader below, None if read here
        # (the usual one: see ``Run``); ``op``, its first op, stays None until read.
        head: ChangeTuple | None = None
        op: Any = None
        if i and chained:
            if p > _REFILL or not buf:
                if buf:
                    pos = base + p
                base = pos
                p = 0
                buf = list(data[pos : pos + _STRETCH])
            try:
                if buf[p] != 7 or buf[p + 1] != 1 or not expect:
                    raise _Unusual
                name = names1[buf[p + 3]]
                starts = buf[p + 2]
                if starts == TEXT_INSERT:
                    tag = buf[p + 4]
                    if tag == _REF_FULL:
                        b = buf[p + 6]
                        if b < 0x80:
                            at = p + 7
                        else:
                            c = buf[p + 7]
                            if c < 0x80:
                                b = low7[b] + high7[c]
                                at = p + 8
                            elif buf[p + 8] < 0x80:
                                b = low7[b] + high7[c] + high14[buf[p + 8]]
                                at = p + 9
                            else:
                                raise _Unusual
                        left: tuple[str, int] | None = (peers1[buf[p + 5]], b)
                    elif tag == _REF_PREV:
                        left = (prev_peer, expect - 1)
                        at = p + 5
                    elif tag == _REF_NONE:
                        left = None
                        at = p + 5
                    else:
                        raise _Unusual
                    tag = buf[at]
                    if tag == _REF_FULL:
                        b = buf[at + 2]
                        if b < 0x80:
                            k = at + 3
                        else:
                            c = buf[at + 3]
                            if c < 0x80:
                                b = low7[b] + high7[c]
                                k = at + 4
                            elif buf[at + 4] < 0x80:
                                b = low7[b] + high7[c] + high14[buf[at + 4]]
                                k = at + 5
                            else:
                                raise _Unusual
                        right: tuple[str, int] | None = (peers1[buf[at + 1]], b)
                    elif tag == _REF_PREV:
                        right = (prev_peer, expect - 1)
                        k = at + 1
                    elif tag == _REF_NONE:
                        right = None
                        k = at + 1
                    else:
                        raise _Unusual
                    size = buf[k]
                    if size == 1:
                        # One ASCII character, looked up (IndexError past 0x7f).
                        chars = _ASCII[buf[k + 1]]
                        at = k + 2
                    else:
                        # Its length in one varint byte, its bytes all in ``buf``.
                        at = size + k + 1
                        if not size or size >= 0x80 or at > len(buf):
                            raise _Unusual
                        chars = bytes(buf[k + 1 : at]).decode("utf-8", "surrogatepass")
                        size = len(chars)
                    op = (TEXT_INSERT, name, left, right, chars)
                elif starts == TEXT_DELETE:
                    if buf[p + 4] != 1:
                        raise _Unusual
                    b = buf[p + 6]
                    if b < 0x80:
                        k = p + 7
                    else:
                        c = buf[p + 7]
                        if c < 0x80:
                            b = low7[b] + high7[c]
                            k = p + 8
                        elif buf[p + 8] < 0x80:
                            b = low7[b] + high7[c] + high14[buf[p + 8]]
                            k = p + 9
                        else:
                            raise _Unusual
                    size = buf[k]
                    if not size or size >= 0x80:
                        raise _Unusual
                    op = (TEXT_DELETE, name, ((peers1[buf[p + 5]], b, size),))
                    size = 1
                    at = k + 1
                else:
                    raise _Unusual
                ctr = expect
                p = at
                end = ctr + size
            except (IndexError, ValueError, _Unusual):  # past ``buf``, bad UTF-8
                op = None
        if op is None:
            if buf:
                pos = base + p
                buf = []
            if i:
                row = _fast_row(data, pos, peers, names, prev_peer, expect, 0, True)
            else:
                row = _fast_row(data, pos, peers, names, prev_peer, expect, 0, False)
            if row is None:
                r.pos = pos
                head = _read_row(r, peers, names, prev_peer, expect, 0, i > 0)
                pos = r.pos
            else:
                head, pos = row
            peer, ctr, _, _, ops, size = head
            end = ctr + size
            op = ops[0] if ops else None
            # The kind of run the head can start (a continuation says which).
            starts = ops[0][0] if len(ops) == 1 else -1
            if peer != prev_peer:
                # The summary (first and end counter per peer), kept up as the peer changes.
                if prev_peer:
                    ends[prev_peer] = expect
                if peer not in firsts:
                    firsts[peer] = ctr
                prev_peer = peer
        if m:
            kind = kinds[i + 1]
            if starts != _RUN_OP[kind]:
                r.pos = base + p if buf else pos
                raise r.fail("a continuation of a change that starts no such run")
            if kind == TYPING:
                if tcum is None:
                    end += m
                    append((i, j, TYPING, head, tl, tl, d, end, prev_peer, ctr, size, op))
                else:
                    x0 = tcum[tl]
                    end += tcum[tl + m] - x0
                    append((i, j, TYPING, head, tl, x0, d, end, prev_peer, ctr, size, op))
                tl += m
            else:
                end += m
                x0 = tl if tcum is None else tcum[tl]
                append((i, j, DELETING, head, tl, x0, d, end, prev_peer, ctr, size, op))
                d += m
        else:
            x0 = tl if tcum is None else tcum[tl]
            append((i, j, FULL, head, tl, x0, d, end, prev_peer, ctr, size, op))
        if end > MAX_COUNTER:
            r.pos = base + p if buf else pos
            raise r.fail("counter too large")
        expect = end
    if prev_peer:
        ends[prev_peer] = expect
    if buf:
        pos = base + p
    r.pos = pos
    if ts is None and n:
        max_ts = sum(dts)
        if max_ts >= MAX_STAMP:
            raise r.fail("time stamp out of range")
    return Segment(
        r.data[start:pos],
        n,
        peers,
        dts,
        ts,
        max_ts,
        tlen,
        dpeer,
        dctr,
        dlen,
        text,
        runs,
        {peer: (first, ends[peer]) for peer, first in firsts.items()},
    )


#: How many bytes of a batch :func:`decode_segment` turns into a list at a
#: time, and how far into them it reads the next row from that list (after
#: that it converts the next stretch): a usual row is under 24 bytes, and every
#: offset into the list stays a small int.
_STRETCH = 224
_REFILL = 192

#: The one-character strings of the ASCII bytes, by byte: a head's text of one
#: ASCII byte (a typing run's head, nearly always) is looked up here instead of
#: sliced and decoded; a byte past 0x7f is an IndexError, which declines the row.
_ASCII = [chr(b) for b in range(0x80)]

#: A varint's bytes by their place, as the parts of its value they give: list
#: lookups and additions (specialised by the interpreter) cost about half the
#: masks and shifts they stand for, which it does not specialise. The callers
#: have checked which bytes have their top bit set.
_LOW7 = [b & 0x7F for b in range(256)]
_HIGH7 = [(b & 0x7F) << 7 for b in range(256)]
_HIGH14 = [(b & 0x7F) << 14 for b in range(256)]

#: Whether :func:`decode_segment` reads the usual head rows itself (tests turn
#: it off to compare with the readers it defers to).
_CHAINED = True


class _Unusual(Exception):
    """A head row :func:`decode_segment` leaves to :func:`_fast_row`."""


def _fast_row(
    data: bytes,
    pos: int,
    peers: list[str],
    names: list[str],
    prev_peer: str,
    expect: int,
    ts: int,
    has_prev: bool,
) -> tuple[ChangeTuple, int] | None:
    """The row at ``pos`` when it is a well-formed change of one text insert or
    one text delete (nearly every head of a run), and the position after it.

    None for anything else, malformed input included: the caller then reads
    the row with :func:`_read_row`, which accepts exactly the same rows and
    raises the typed error for the rest. This is the same decoding without
    the per-field calls, for the one row each run of a batch has.
    """
    try:
        flags = data[pos]
        pos += 1
        if flags & ~7:
            return None
        if flags & _F_SAME_PEER:
            if not has_prev:
                return None
            peer = prev_peer
        else:
            if flags & _F_NEXT_COUNTER:
                return None
            index = data[pos]
            pos += 1
            if index >= 0x80 or index >= len(peers):
                return None
            peer = peers[index]
        if flags & _F_NEXT_COUNTER:
            ctr = expect
        else:
            ctr = data[pos]
            pos += 1
            if ctr >= 0x80:  # a longer varint, inline (as _varint)
                ctr &= 0x7F
                shift = 7
                while True:
                    b = data[pos]
                    pos += 1
                    ctr |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 63:
                        return None
                if ctr > MAX_COUNTER:
                    return None
        if flags & _F_CHAIN_DEPS:
            if ctr == 0:
                return None
            deps: tuple[tuple[str, int], ...] = ((peer, ctr - 1),)
        else:
            count = data[pos]
            pos += 1
            if count >= 0x80 or count * 2 > len(data) - pos:
                return None
            dep_list = []
            for _ in range(count):
                index = data[pos]
                pos += 1
                if index >= 0x80 or index >= len(peers):
                    return None
                dctr, pos = _varint(data, pos)
                dep_list.append((peers[index], dctr))
            deps = tuple(dep_list)
        if data[pos] != 1:  # one op
            return None
        kind = data[pos + 1]
        index = data[pos + 2]
        pos += 3
        if index >= 0x80 or index >= len(names):
            return None
        name = names[index]
        if kind == TEXT_INSERT:
            # The two origins, each a tag and maybe (peer, varint); varints of
            # up to three bytes (counters below 2**21) decoded without a loop.
            tag = data[pos]
            if tag == _REF_FULL:
                index = data[pos + 1]
                if index >= 0x80 or index >= len(peers):
                    return None
                b = data[pos + 2]
                if b < 0x80:
                    pos += 3
                else:
                    c = data[pos + 3]
                    if c < 0x80:
                        b = (b & 0x7F) | c << 7
                        pos += 4
                    else:
                        c2 = data[pos + 4]
                        if c2 < 0x80:
                            b = (b & 0x7F) | (c & 0x7F) << 7 | c2 << 14
                            pos += 5
                        else:
                            b, pos = _varint(data, pos + 2)
                left: tuple[str, int] | None = (peers[index], b)
            elif tag == _REF_NONE:
                left = None
                pos += 1
            elif tag == _REF_PREV and ctr:
                left = (peer, ctr - 1)
                pos += 1
            else:
                return None
            tag = data[pos]
            if tag == _REF_FULL:
                index = data[pos + 1]
                if index >= 0x80 or index >= len(peers):
                    return None
                b = data[pos + 2]
                if b < 0x80:
                    pos += 3
                else:
                    c = data[pos + 3]
                    if c < 0x80:
                        b = (b & 0x7F) | c << 7
                        pos += 4
                    else:
                        c2 = data[pos + 4]
                        if c2 < 0x80:
                            b = (b & 0x7F) | (c & 0x7F) << 7 | c2 << 14
                            pos += 5
                        else:
                            b, pos = _varint(data, pos + 2)
                right: tuple[str, int] | None = (peers[index], b)
            elif tag == _REF_NONE:
                right = None
                pos += 1
            elif tag == _REF_PREV and ctr:
                right = (peer, ctr - 1)
                pos += 1
            else:
                return None
            size = data[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _varint(data, pos)
            if not size or pos + size > len(data):
                return None
            text = data[pos : pos + size].decode("utf-8", "surrogatepass")
            pos += size
            op: Any = (TEXT_INSERT, name, left, right, text)
            n = len(text)
        elif kind == TEXT_DELETE:
            count = data[pos]
            pos += 1
            if count >= 0x80 or not count or count * 3 > len(data) - pos:
                return None
            ranges = []
            for _ in range(count):
                index = data[pos]
                if index >= 0x80 or index >= len(peers):
                    return None
                # Counter and length, the usual short forms without a call.
                b = data[pos + 1]
                c = data[pos + 2]
                if b >= 0x80 and c >= 0x80 and data[pos + 3] < 0x80:
                    rctr = (b & 0x7F) | (c & 0x7F) << 7 | data[pos + 3] << 14
                    pos += 4
                else:
                    rctr, pos = _varint(data, pos + 1)
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = _varint(data, pos)
                if not length or length > MAX_COUNT:
                    return None
                ranges.append((peers[index], rctr, length))
            op = (TEXT_DELETE, name, tuple(ranges))
            n = 1
        else:
            return None
    except (IndexError, ValueError):  # truncated, too long, bad UTF-8
        return None
    return (peer, ctr, ts, deps, (op,), n), pos


def _read_row(
    r: Reader,
    peers: list[str],
    names: list[str],
    prev_peer: str,
    expect: int,
    ts: int,
    has_prev: bool,
) -> ChangeTuple:
    flags = r.byte()
    if flags & ~7:
        raise r.fail(f"unknown change flags {flags:#x}")
    if flags & _F_SAME_PEER:
        if not has_prev:
            raise r.fail("first change cannot reuse the previous peer")
        peer = prev_peer
    else:
        if flags & _F_NEXT_COUNTER:
            raise r.fail("next-counter flag without the same-peer flag")
        peer = _read_peer(r, peers)
    ctr = expect if flags & _F_NEXT_COUNTER else r.uint(MAX_COUNTER)
    chained = bool(flags & _F_CHAIN_DEPS)
    deps, ops, first = _read_deps_and_ops(r, peers, names, peer, ctr, chained, not chained)
    return (peer, ctr, ts, deps, ops, first - ctr)


def decode_segments(r: Reader) -> list[Segment]:
    """The segments of a version 2 batch body at ``r`` (to its end)."""
    count = r.count(1)
    segments = [decode_segment(r) for _ in range(count)]
    r.expect_end()
    return segments
