"""The snapshot codec: a document's state (tombstones and origins included) to bytes and back.

Text spans are stored column by column as fixed-width little-endian arrays so
that loading is a handful of C-level array reads rather than one varint at a
time; the whole body is zlib-compressed. Lists and maps are small and stored
row by row. The layout is in ``docs/encoding.md``. Decoding validates
everything it reads (only :class:`DecodeError`); ``snapshot.py`` loads and
merges what it returns.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Callable
from collections.abc import Sequence as Sequence_
from itertools import compress, islice
from operator import add, gt
from typing import TYPE_CHECKING, Any

from .changes import FORMAT_VERSION, KIND_LIST, KIND_MAP, KIND_TEXT, MAX_INFLATED, _read_header
from .codec import MAX_COUNT, ZLIB_LEVEL, Reader, Writer
from .exceptions import DecodeError
from .ids import VersionVector
from .sequence import C, D, L, N, P, R, X
from .state import ListState, TextState

if TYPE_CHECKING:
    from .document import CRDTDocument
    from .snapshot import Snapshot

MAGIC = b"CRDS"
_KIND_CODES = {KIND_TEXT: 1, KIND_LIST: 2, KIND_MAP: 3}
_KIND_NAMES = {v: k for k, v in _KIND_CODES.items()}

# Span flag bits.
_DELETED = 1
_LEFT_NONE = 2
_LEFT_PREV = 4  # left origin is (same peer, counter - 1)
_RIGHT_NONE = 8
_RIGHT_SAME = 16  # same right origin as the previous span

_LITTLE = sys.byteorder == "little"


def _array_bytes(code: str, values: list[int]) -> bytes:
    a = array(code, values)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        a.byteswap()
    return a.tobytes()


def _read_array(r: Reader, code: str, n: int) -> array[int]:
    return _read_column(r, code, n)[0]


def _read_column(r: Reader, code: str, n: int) -> tuple[array[int], bytes]:
    """``n`` little-endian values as an array, and their bytes."""
    a = array(code)
    raw = r.raw(a.itemsize * n)
    a.frombytes(raw)
    if not _LITTLE:  # pragma: no cover
        a.byteswap()
    return a, raw


class _Decoded:
    __slots__ = ("document_id", "frontier", "max_ts", "states", "vv")

    def __init__(self) -> None:
        self.document_id = ""
        self.vv = VersionVector()
        self.frontier: dict[str, int] = {}
        self.max_ts = 0
        # (name, kind) -> the decoded state of that object.
        self.states: dict[tuple[str, str], Any] = {}


# ----------------------------------------------------------------- encoding


class SnapshotCapture:
    """What a snapshot of a document holds at one moment, copied (see ``Snapshot.capture``).

    Spans are immutable in the copy: a text span is a slice of the live span
    (its fields are ints, strings and id tuples); a list span also copies its
    element ids, and list elements and map entries are copied per entry.
    """

    __slots__ = ("_clock", "_frontier", "_states", "_vv", "document_id", "version_vector")

    def __init__(self, doc: CRDTDocument, copy: bool = True) -> None:
        # ``copy=False`` keeps the live text spans (no slice per span): only for
        # an encoding that runs at once, before the document changes again.
        self.document_id = doc.document_id
        self.version_vector = doc.version_vector
        self._vv = dict(doc._vv)
        self._frontier = dict(doc._frontier)
        self._clock = doc._clock.last
        states: list[tuple[str, str, Any]] = []
        for (name, kind), state in doc._states.items():
            frozen: Any
            if isinstance(state, TextState):
                live = state.seq.spans()
                frozen = [s[:7] for s in live] if copy else list(live)
            elif isinstance(state, ListState):
                spans = [[*s[:3], tuple(s[X]), *s[4:7]] for s in state.seq.spans()]
                frozen = (spans, [(elem, tuple(entry)) for elem, entry in state.elems.items()])
            else:
                frozen = list(state.entries.items())
            states.append((name, kind, frozen))
        self._states = states

    def encode(self) -> Snapshot:
        """The snapshot of the captured state (safe on another thread)."""
        from .snapshot import Snapshot

        return Snapshot(_encode(self), self.document_id, self.version_vector)


def _encode(doc: SnapshotCapture) -> bytes:
    peers: dict[str, int] = {}

    def pid(peer: str) -> int:
        index = peers.get(peer)
        if index is None:
            index = peers[peer] = len(peers)
        return index

    body = Writer()
    vv = doc._vv
    body.uint(len(vv))
    for peer, counter in vv.items():
        body.uint(pid(peer))
        body.uint(counter)
    body.uint(len(doc._frontier))
    for peer, counter in doc._frontier.items():
        body.uint(pid(peer))
        body.uint(counter)
    body.uint(doc._clock)
    body.uint(len(doc._states))
    # The payload as pieces, compressed one after the other: the large text
    # columns are neither copied into one buffer nor grown append by append.
    pieces: list[bytes] = []
    for name, kind, state in doc._states:
        body.str(name)
        body.byte(_KIND_CODES[kind])
        if kind == KIND_TEXT:
            columns = _encode_text(state, pid, peers)
            body.uint(sum(map(len, columns)))
            pieces.append(body.getvalue())
            pieces += columns
            body = Writer()
            continue
        part = Writer()
        if kind == KIND_LIST:
            spans, elems = state
            _encode_list(part, spans, elems, pid)
        else:
            _encode_map(part, state, pid)
        body.bytes(part.getvalue())
    pieces.append(body.getvalue())
    head = Writer()
    head.str(doc.document_id)
    head.uint(len(peers))
    for peer in peers:
        head.str(peer)
    # At ZLIB_LEVEL (``codec.py``). A stream fed piece by piece deflates to
    # exactly the bytes of the joined payload.
    deflate = zlib.compressobj(ZLIB_LEVEL)
    out = [MAGIC, bytes([FORMAT_VERSION, 1]), deflate.compress(head.getvalue())]
    out += [deflate.compress(piece) for piece in pieces]
    out.append(deflate.flush())
    return b"".join(out)


def _encode_text(spans: list[list[Any]], pid: Any, index: dict[str, int]) -> list[bytes]:
    """The text part of ``spans`` (``docs/encoding.md``) as pieces, in one pass.

    The loop is the encoder's hot path (one pass per span), so it reads span
    fields by literal index (``0`` peer, ``1`` counter, ``2`` length, ``3``
    text, ``4`` deleted, ``5`` left, ``6`` right: the ``P, C, N, X, D, L, R`` of
    ``sequence.py``), uses bound appends, and looks an origin's peer up in
    ``index`` before falling back to ``pid``, which gives a new peer its index.
    """
    get = index.get
    # The peer column as runs: (peer index, first span of the run).
    peer_runs: list[tuple[int, int]] = []
    ctr_col: list[int] = []
    len_col: list[int] = []
    flags = bytearray()
    left_peer: list[int] = []
    left_ctr: list[int] = []
    right_peer: list[int] = []
    right_ctr: list[int] = []
    text: list[str] = []
    add_flag, add_ctr, add_len = flags.append, ctr_col.append, len_col.append
    add_text = text.append
    add_lp, add_lc, add_rp, add_rc = (
        left_peer.append,
        left_ctr.append,
        right_peer.append,
        right_ctr.append,
    )
    prev_right: Any = ()
    prev_peer: Any = None
    for s in spans:
        peer = s[0]
        ctr = s[1]
        if peer != prev_peer:
            peer_runs.append((pid(peer), len(flags)))
            prev_peer = peer
        left = s[5]
        right = s[6]
        if s[4]:
            f = _DELETED
        else:
            f = 0
            add_text(s[3])
        if left is None:
            f |= _LEFT_NONE
        elif left[1] == ctr - 1 and left[0] == peer:
            f |= _LEFT_PREV
        else:
            i = get(left[0])
            add_lp(pid(left[0]) if i is None else i)
            add_lc(left[1])
        if right is None:
            f |= _RIGHT_NONE
        elif right == prev_right:
            f |= _RIGHT_SAME
        else:
            i = get(right[0])
            add_rp(pid(right[0]) if i is None else i)
            add_rc(right[1])
        prev_right = right
        add_flag(f)
        add_ctr(ctr)
        add_len(s[2])
    counts = Writer()
    counts.uint(len(flags))
    counts.uint(len(left_peer))
    counts.uint(len(right_peer))
    text_bytes = "".join(text).encode("utf-8", "surrogatepass")
    text_size = Writer()
    text_size.uint(len(text_bytes))
    return [
        counts.getvalue(),
        bytes(flags),
        _runs_bytes(peer_runs, len(flags)),
        _array_bytes("Q", ctr_col),
        _array_bytes("I", len_col),
        _array_bytes("I", left_peer),
        _array_bytes("Q", left_ctr),
        _array_bytes("I", right_peer),
        _array_bytes("Q", right_ctr),
        text_size.getvalue(),
        text_bytes,
    ]


def _runs_bytes(runs: list[tuple[int, int]], n: int) -> bytes:
    """The ``n`` values of a column given as runs ``(value, first index)``, as ``I`` bytes."""
    if not runs:
        return b""
    ends = [start for _, start in runs[1:]]
    ends.append(n)
    return b"".join(
        _array_bytes("I", [value]) * (end - start)
        for (value, start), end in zip(runs, ends, strict=True)
    )


def _write_opt_id(w: Writer, ident: Any, pid: Any) -> None:
    if ident is None:
        w.byte(0)
    else:
        w.byte(1)
        w.uint(pid(ident[0]))
        w.uint(ident[1])


def _write_stamp(w: Writer, stamp: Any, pid: Any) -> None:
    w.uint(stamp[0])
    w.uint(pid(stamp[1]))
    w.uint(stamp[2])


def _encode_list(w: Writer, spans: list[list[Any]], elems: list[tuple[Any, Any]], pid: Any) -> None:
    w.uint(len(spans))
    for s in spans:
        w.uint(pid(s[P]))
        w.uint(s[C])
        w.uint(s[N])
        w.byte(1 if s[D] else 0)
        _write_opt_id(w, s[L], pid)
        _write_opt_id(w, s[R], pid)
        for elem in s[X]:
            w.uint(pid(elem[0]))
            w.uint(elem[1])
    w.uint(len(elems))
    for elem, (value, vstamp, pos, pstamp, dstamp) in elems:
        w.uint(pid(elem[0]))
        w.uint(elem[1])
        w.json(value)
        _write_stamp(w, vstamp, pid)
        w.uint(pid(pos[0]))
        w.uint(pos[1])
        _write_stamp(w, pstamp, pid)
        if dstamp is None:
            w.byte(0)
        else:
            w.byte(1)
            _write_stamp(w, dstamp, pid)


def _encode_map(w: Writer, entries: list[tuple[str, Any]], pid: Any) -> None:
    w.uint(len(entries))
    for key, (stamp, present, value) in entries:
        w.str(key)
        _write_stamp(w, stamp, pid)
        w.byte(1 if present else 0)
        if present:
            w.json(value)


# ----------------------------------------------------------------- decoding


def _decode(data: bytes, max_size: int = MAX_INFLATED) -> _Decoded:
    body, start = _read_header(data, MAGIC, max_size)
    r = Reader(body, start)
    out = _Decoded()
    out.document_id = r.str()
    if not out.document_id:
        raise r.fail("empty document id")
    peers = [r.str() for _ in range(r.count(1))]
    if any(not p for p in peers):
        raise r.fail("empty peer id")

    def peer_at(index: int) -> str:
        if index >= len(peers):
            raise r.fail(f"peer index {index} out of range")
        return peers[index]

    vv: dict[str, int] = {}
    for _ in range(r.count(2)):
        peer = peer_at(r.uint())
        vv[peer] = r.uint(1 << 53)
    out.vv = VersionVector(vv)
    for _ in range(r.count(2)):
        peer = peer_at(r.uint())
        out.frontier[peer] = r.uint(1 << 53)
    out.max_ts = r.uint()
    for _ in range(r.count(2)):
        name = r.str()
        if not name:
            raise r.fail("empty handler name")
        code = r.byte()
        kind = _KIND_NAMES.get(code)
        if kind is None:
            raise r.fail(f"unknown handler kind {code}")
        if (name, kind) in out.states:
            # One name may hold objects of several kinds, each once.
            raise r.fail(f"repeated {kind} {name!r}")
        part = Reader(r.bytes())
        try:
            if kind == KIND_TEXT:
                value: Any = TextColumns(part, peers, out.vv)
            elif kind == KIND_LIST:
                value = _decode_list(part, peers, out.vv)
            else:
                value = _decode_map(part, peers)
            part.expect_end()
        except DecodeError as exc:
            raise DecodeError(f"in handler {name!r}: {exc}", r.pos) from None
        out.states[(name, kind)] = value
    r.expect_end()
    return out


class TextColumns:
    """A text state as decoded from a snapshot: validated columns, spans on demand.

    Everything that can be wrong with the bytes is checked when decoding; the
    span lists (one Python object per span) are built only by :meth:`spans`, so
    a document loaded to be read or shown never pays for them.
    """

    __slots__ = ("ctr", "flags", "lc", "length", "lp", "peer", "peers", "rc", "rp", "text")

    def __init__(self, r: Reader, peers: list[str], vv: VersionVector) -> None:
        n = r.count(17)
        nl = r.uint(n)
        nr = r.uint(n)
        flags = r.raw(n)
        peer_col, peer_raw = _read_column(r, "I", n)
        ctr_col, ctr_raw = _read_column(r, "Q", n)
        len_col, len_raw = _read_column(r, "I", n)
        self.lp, lp_raw = _read_column(r, "I", nl)
        self.lc = _read_array(r, "Q", nl)
        self.rp, rp_raw = _read_column(r, "I", nr)
        self.rc = _read_array(r, "Q", nr)
        text = r.str()
        # The range checks read the little-endian bytes (byte planes, searches
        # for zero values), not one int object per value.
        npeers = len(peers)
        for raw, col in ((peer_raw, peer_col), (lp_raw, self.lp), (rp_raw, self.rp)):
            if not _all_below(raw, 4, npeers, col):
                raise r.fail("peer index out of range")
        if n and (
            _zero_at(len_raw, 4)
            or not _all_below(ctr_raw, 8, 1 << 53, ctr_col)
            or flags.translate(None, _KNOWN_FLAGS)
        ):
            raise r.fail("empty span, counter out of range or unknown span flags")
        for i in _zero_at(ctr_raw, 8):
            if flags[i] & _LEFT_PREV:
                raise r.fail("left origin before counter 0")
        # The columns must agree with each other: as many explicit origins as
        # spans that name one, as many characters as visible elements.
        if flags.translate(_EXPLICIT_LEFT).count(1) != nl:
            raise r.fail("left origin column does not match the flags")
        if flags.translate(_EXPLICIT_RIGHT).count(1) != nr:
            raise r.fail("right origin column does not match the flags")
        if sum(compress(len_col, flags.translate(_VISIBLE))) != len(text):
            raise r.fail("text length does not match the visible spans")
        one_peer = n > 0 and peer_raw == peer_raw[:4] * n
        _check_id_ranges(r, peer_col, ctr_col, len_col, peers, vv, one_peer)
        self.peers = peers
        self.flags = flags
        self.peer = peer_col
        self.ctr = ctr_col
        self.length = len_col
        self.text = text

    def spans(self) -> list[list[Any]]:
        """The spans, in document order (a new list each call)."""
        get = self.peers.__getitem__
        lefts = iter(list(zip(map(get, self.lp), self.lc, strict=True)))
        rights = iter(list(zip(map(get, self.rp), self.rc, strict=True)))
        text = self.text
        spans: list[list[Any]] = []
        append = spans.append
        tpos = 0
        right: Any = None
        columns = zip(self.flags, map(get, self.peer), self.ctr, self.length, strict=True)
        for f, peer, ctr, length in columns:
            if f & _LEFT_PREV:
                left: Any = (peer, ctr - 1)
            elif f & _LEFT_NONE:
                left = None
            else:
                left = next(lefts)
            if f & _RIGHT_NONE:
                right = None
            elif not f & _RIGHT_SAME:
                right = next(rights)
            if f & _DELETED:
                append([peer, ctr, length, "", True, left, right, None, 0])
            else:
                end = tpos + length
                append([peer, ctr, length, text[tpos:end], False, left, right, None, 0])
                tpos = end
        return spans


def _check_id_ranges(
    r: Reader,
    peer_col: Sequence_[int],
    ctr_col: Sequence_[int],
    len_col: Sequence_[int],
    peers: list[str],
    vv: VersionVector,
    one_peer: bool | None = None,
) -> None:
    """Raise unless the id ranges ``(peer, counter, length)`` of the spans are
    disjoint and inside the snapshot's own version vector.

    A span is a few bytes however many ids it claims: without this bound a
    tiny snapshot could make a replica walk millions of ids, and overlapping
    spans would corrupt the id index. Half-open ranges of one peer are disjoint
    exactly when, with starts and ends each sorted, every end is at most the
    next start: two sorts and a comparison, all at C speed.
    """
    groups: dict[int, tuple[list[int], list[int]]] = {}
    if one_peer is None:
        one_peer = len(set(peer_col)) == 1
    if one_peer:
        groups[peer_col[0]] = (list(ctr_col), list(len_col))
    else:
        for p, c, n in zip(peer_col, ctr_col, len_col, strict=True):
            group = groups.get(p)
            if group is None:
                group = groups[p] = ([], [])
            group[0].append(c)
            group[1].append(n)
    for p, (counters, lengths) in groups.items():
        starts = sorted(counters)
        ends = sorted(map(add, counters, lengths))
        if any(map(gt, ends, islice(starts, 1, None))):
            raise r.fail(f"element ids of {peers[p]} overlap")
        if ends[-1] > vv.get(peers[p], 0):
            raise r.fail(f"a span of {peers[p]} reaches beyond the snapshot's version")


def _flag_table(test: Callable[[int], bool]) -> bytes:
    return bytes(1 if test(f) else 0 for f in range(256))


_EXPLICIT_LEFT = _flag_table(lambda f: not f & (_LEFT_PREV | _LEFT_NONE))
_EXPLICIT_RIGHT = _flag_table(lambda f: not f & (_RIGHT_NONE | _RIGHT_SAME))
_VISIBLE = _flag_table(lambda f: not f & _DELETED)
#: The flag bytes that are valid (deleted by ``translate`` to find any other).
_KNOWN_FLAGS = bytes(range(32))


def _zero_at(raw: bytes, width: int) -> list[int]:
    """The indexes of the zero values in ``raw`` (little-endian, ``width`` bytes each).

    A search for ``width`` zero bytes; a match that is not aligned is part of
    two values, and the search goes on from the next aligned offset.
    """
    zero = bytes(width)
    found: list[int] = []
    at = raw.find(zero)
    while at >= 0:
        skew = at % width
        if skew:
            at = raw.find(zero, at - skew + width)
        else:
            found.append(at // width)
            at = raw.find(zero, at + width)
    return found


def _all_below(raw: bytes, width: int, bound: int, values: array[int]) -> bool:
    """Whether every little-endian value of ``width`` bytes in ``raw`` is below ``bound``.

    A bound up to 256, or a power of two, is checked on the byte planes (the
    high planes all zero, the top one below its limit); any other bound on
    ``values``, the same values as an array.
    """
    if not raw:
        return True
    if bound <= 256:
        whole, top = 1, bound
    elif bound & (bound - 1) == 0:
        q, p = divmod(bound.bit_length() - 1, 8)
        if q >= width:
            return True
        whole, top = (q + 1, 1 << p) if p else (q, 256)
    else:
        return max(values) < bound
    if any(raw[k::width].strip(b"\0") for k in range(whole, width)):
        return False
    return top == 256 or not raw[whole - 1 :: width].translate(None, bytes(range(top)))


def _read_opt_id(r: Reader, peers: list[str]) -> tuple[str, int] | None:
    tag = r.byte()
    if tag == 0:
        return None
    if tag != 1:
        raise r.fail(f"bad id tag {tag}")
    return _read_id(r, peers)


def _read_id(r: Reader, peers: list[str]) -> tuple[str, int]:
    index = r.uint()
    if index >= len(peers):
        raise r.fail(f"peer index {index} out of range")
    return (peers[index], r.uint(1 << 53))


def _read_stamp(r: Reader, peers: list[str]) -> tuple[int, str, int]:
    ts = r.uint()
    peer, ctr = _read_id(r, peers)
    return (ts, peer, ctr)


def _decode_list(
    r: Reader, peers: list[str], vv: VersionVector
) -> tuple[list[list[Any]], dict[Any, list[Any]]]:
    spans: list[list[Any]] = []
    for _ in range(r.count(6)):
        peer, ctr = _read_id(r, peers)
        n = r.uint(MAX_COUNT)
        if not n:
            raise r.fail("empty span")
        deleted = r.byte()
        if deleted > 1:
            raise r.fail("bad deleted flag")
        left = _read_opt_id(r, peers)
        right = _read_opt_id(r, peers)
        if n * 2 > r.remaining():
            raise r.fail("span longer than the input")
        content = tuple(_read_id(r, peers) for _ in range(n))
        spans.append([peer, ctr, n, content, bool(deleted), left, right, None, 0])
    index = {peer: i for i, peer in enumerate(peers)}
    cols = [index[sp[P]] for sp in spans], [sp[C] for sp in spans], [sp[N] for sp in spans]
    _check_id_ranges(r, *cols, peers, vv)
    elems: dict[Any, list[Any]] = {}
    for _ in range(r.count(8)):
        elem = _read_id(r, peers)
        value = r.json()
        vstamp = _read_stamp(r, peers)
        pos = _read_id(r, peers)
        pstamp = _read_stamp(r, peers)
        tag = r.byte()
        if tag > 1:
            raise r.fail("bad delete stamp tag")
        dstamp = _read_stamp(r, peers) if tag else None
        elems[elem] = [value, vstamp, pos, pstamp, dstamp]
    for s in spans:
        for elem in s[X]:
            if elem not in elems:
                raise r.fail(f"list position refers to unknown element {elem}")
    return spans, elems


def _decode_map(r: Reader, peers: list[str]) -> dict[str, tuple[Any, bool, Any]]:
    entries: dict[str, tuple[Any, bool, Any]] = {}
    for _ in range(r.count(5)):
        key = r.str()
        stamp = _read_stamp(r, peers)
        present = r.byte()
        if present > 1:
            raise r.fail("bad presence flag")
        entries[key] = (stamp, bool(present), r.json() if present else None)
    return entries
