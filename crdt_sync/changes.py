"""Changes: what a transaction did, with ids, causal deps and a clock stamp.

A change is stored as a plain tuple ``(peer, counter, timestamp, deps, ops, size)``
(plain tuples of ints and strings are not tracked by the garbage collector, which
matters with hundreds of thousands of them); :class:`Change` is the public,
immutable view of one.

Operations are tuples whose first two fields are the kind and the handler name:

============  =========================================================  ======
kind          fields after (kind, handler)                               ids
============  =========================================================  ======
TEXT_INSERT   left origin, right origin, text                            len(text)
TEXT_DELETE   ((peer, counter, length), ...) elements to delete          1
LIST_INSERT   left origin, right origin, (value, ...)                    len(values)
LIST_DELETE   ((elem peer, elem counter, observed stamp), ...)           1
LIST_MOVE     (elem peer, elem counter), left origin, right origin       1
LIST_SET      (elem peer, elem counter), value                           1
MAP_SET       key, value                                                 1
MAP_DELETE    key                                                        1
============  =========================================================  ======

Origins are ``(peer, counter)`` or ``None``; a stamp is ``(timestamp, peer,
counter)`` (the last-writer-wins order). The op ids of a change are
``counter .. counter + size - 1``, handed out to its ops in order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from .codec import _PEER_TEXT, MAX_COUNT, PEER_UUID, ZLIB_LEVEL, Reader, Writer, _uuid_text, _varint
from .codec import MAX_INFLATED as MAX_INFLATED
from .codec import inflate as inflate
from .exceptions import DecodeError
from .ids import OpId

TEXT_INSERT = 1
TEXT_DELETE = 2
LIST_INSERT = 3
LIST_DELETE = 4
LIST_MOVE = 5
LIST_SET = 6
MAP_SET = 7
MAP_DELETE = 8

KIND_TEXT = "text"
KIND_LIST = "list"
KIND_MAP = "map"
#: Which handler kind each op kind addresses.
OP_HANDLER_KIND = {
    TEXT_INSERT: KIND_TEXT,
    TEXT_DELETE: KIND_TEXT,
    LIST_INSERT: KIND_LIST,
    LIST_DELETE: KIND_LIST,
    LIST_MOVE: KIND_LIST,
    LIST_SET: KIND_LIST,
    MAP_SET: KIND_MAP,
    MAP_DELETE: KIND_MAP,
}

ChangeTuple = tuple[str, int, int, tuple[tuple[str, int], ...], tuple[Any, ...], int]

MAGIC = b"CRDC"
#: Version of the snapshot format (and of change batches before columns).
FORMAT_VERSION = 1
#: Version of the change batch format written now (``batch.py``); 1 and 2 are still
#: read. Version 3 is version 2 with peer ids written by ``codec.Writer.peer`` (a
#: canonical UUID as 16 raw bytes) in the segments' peer tables.
CHANGES_VERSION = 3
#: Every change batch version :func:`decode_changes` reads.
READ_CHANGES_VERSIONS = (FORMAT_VERSION, 2, CHANGES_VERSION)
MAX_NAME = 1024


def op_size(op: tuple[Any, ...]) -> int:
    """How many op ids ``op`` consumes."""
    kind = op[0]
    if kind == TEXT_INSERT or kind == LIST_INSERT:
        return len(op[4])
    return 1


class Change:
    """One committed transaction of one peer: immutable, hashable, comparable by value."""

    __slots__ = ("_data",)

    def __init__(self, data: ChangeTuple) -> None:
        self._data = data

    @property
    def id(self) -> OpId:
        return OpId(self._data[0], self._data[1])

    @property
    def peer(self) -> str:
        return self._data[0]

    @property
    def counter(self) -> int:
        return self._data[1]

    @property
    def timestamp(self) -> int:
        """Hybrid logical clock stamp: milliseconds << 16 | logical counter."""
        return self._data[2]

    @property
    def deps(self) -> tuple[OpId, ...]:
        return tuple(OpId(p, c) for p, c in self._data[3])

    @property
    def ops(self) -> tuple[Any, ...]:
        return self._data[4]

    @property
    def size(self) -> int:
        """How many op ids the change consumes (``counter .. counter + size - 1``)."""
        return self._data[5]

    @property
    def data(self) -> ChangeTuple:
        """The change as the plain tuple ``(peer, counter, timestamp, deps, ops, size)``
        (deps as ``(peer, counter)`` pairs): what encoders read, with no object made."""
        return self._data

    def to_bytes(self) -> bytes:
        return encode_changes([self])

    @classmethod
    def from_bytes(cls, data: bytes) -> Change:
        changes = decode_changes(data)
        if len(changes) != 1:
            raise DecodeError(f"expected one change, found {len(changes)}")
        return changes[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Change) and other._data == self._data

    def __hash__(self) -> int:
        return hash((self._data[0], self._data[1], self._data[2]))

    def __repr__(self) -> str:
        peer, ctr, _, deps, ops, size = self._data
        return f"Change({peer[:8]}@{ctr}, size={size}, ops={len(ops)}, deps={len(deps)})"


# --------------------------------------------------------------------- encoding
#
# Layout (see docs/encoding.md): MAGIC, version byte, flags byte (bit 0: the rest
# is zlib-compressed), then the body: peer table, handler-name table, changes.

_F_SAME_PEER = 1
_F_NEXT_COUNTER = 2
_F_CHAIN_DEPS = 4

_REF_NONE = 0
_REF_PREV = 1  # (this change's peer, the op's first id - 1)
_REF_FULL = 2


class _Tables:
    def __init__(self) -> None:
        self.peers: dict[str, int] = {}
        self.names: dict[str, int] = {}

    def peer(self, peer: str) -> int:
        index = self.peers.get(peer)
        if index is None:
            index = self.peers[peer] = len(self.peers)
        return index

    def name(self, name: str) -> int:
        index = self.names.get(name)
        if index is None:
            index = self.names[name] = len(self.names)
        return index


def _write_ref(w: Writer, t: _Tables, ref: tuple[str, int] | None, peer: str, first: int) -> None:
    if ref is None:
        w.byte(_REF_NONE)
    elif ref[0] == peer and ref[1] == first - 1:
        w.byte(_REF_PREV)
    else:
        w.byte(_REF_FULL)
        w.uint(t.peer(ref[0]))
        w.uint(ref[1])


def _write_id(w: Writer, t: _Tables, ref: tuple[str, int]) -> None:
    w.uint(t.peer(ref[0]))
    w.uint(ref[1])


def _write_op(w: Writer, t: _Tables, op: tuple[Any, ...], peer: str, first: int) -> None:
    kind = op[0]
    w.byte(kind)
    w.uint(t.name(op[1]))
    if kind == TEXT_INSERT or kind == LIST_INSERT:
        _write_ref(w, t, op[2], peer, first)
        _write_ref(w, t, op[3], peer, first)
        if kind == TEXT_INSERT:
            w.str(op[4])
        else:
            w.uint(len(op[4]))
            for value in op[4]:
                w.json(value)
    elif kind == TEXT_DELETE:
        w.uint(len(op[2]))
        for p, c, n in op[2]:
            w.uint(t.peer(p))
            w.uint(c)
            w.uint(n)
    elif kind == LIST_DELETE:
        w.uint(len(op[2]))
        for p, c, stamp in op[2]:
            w.uint(t.peer(p))
            w.uint(c)
            w.uint(stamp[0])
            _write_id(w, t, (stamp[1], stamp[2]))
    elif kind == LIST_MOVE:
        _write_id(w, t, op[2])
        _write_ref(w, t, op[3], peer, first)
        _write_ref(w, t, op[4], peer, first)
    elif kind == LIST_SET:
        _write_id(w, t, op[2])
        w.json(op[3])
    elif kind == MAP_SET:
        w.str(op[2])
        w.json(op[3])
    elif kind == MAP_DELETE:
        w.str(op[2])
    else:  # pragma: no cover - ops are built by this package
        raise ValueError(f"unknown op kind {kind}")


def encode_change_tuples(changes: Iterable[ChangeTuple], compress: bool | None = None) -> bytes:
    """Encode change tuples (format version 2: columns and runs, see ``batch.py``);
    ``compress`` None compresses bodies over 4 KiB."""
    from .batch import encode_segment

    changes = list(changes)
    return encode_bodies([encode_segment(changes)] if changes else [], compress)


def encode_bodies(bodies: Iterable[bytes], compress: bool | None = None) -> bytes:
    """A version 2 batch made of segment bodies (``batch.encode_segment``).

    Compressed piece by piece, with no joined copy of the bodies: a zlib stream
    fed in pieces deflates to exactly the bytes of the joined payload.
    """
    parts = list(bodies)
    w = Writer()
    w.uint(len(parts))
    count = w.getvalue()
    if compress is None:
        compress = len(count) + sum(map(len, parts)) > 4096
    if compress:
        deflate = zlib.compressobj(ZLIB_LEVEL)
        out = [MAGIC, bytes([CHANGES_VERSION, 1]), deflate.compress(count)]
        out += [deflate.compress(part) for part in parts]
        out.append(deflate.flush())
        return b"".join(out)
    return b"".join([MAGIC, bytes([CHANGES_VERSION, 0]), count, *parts])


def join_batches(batches: Iterable[bytes]) -> bytes | None:
    """One batch holding the changes of ``batches``, in order, made by joining their
    segments (nothing decoded or encoded again); None unless every batch is an
    uncompressed batch of the current version (then encode the changes instead).
    The caller vouches that the batches are well formed (e.g. they decoded)."""
    parts: list[bytes] = []
    total = 0
    for batch in batches:
        if batch[:4] != MAGIC or len(batch) < 7 or batch[4] != CHANGES_VERSION or batch[5]:
            return None
        r = Reader(batch, 6)
        total += r.uint(MAX_COUNT)
        parts.append(batch[r.pos :])
    w = Writer()
    w.uint(total)
    return MAGIC + bytes([CHANGES_VERSION, 0]) + w.getvalue() + b"".join(parts)


def encode_change_tuples_v1(changes: Iterable[ChangeTuple], compress: bool | None = None) -> bytes:
    """The version 1 (row by row) encoding, still decoded (stored batches, tests)."""
    t = _Tables()
    body = Writer()
    count = 0
    prev_peer = None
    expect = 0
    prev_ts = 0
    for peer, ctr, stamp, deps, ops, _size in changes:
        count += 1
        flags = 0
        if peer == prev_peer:
            flags |= _F_SAME_PEER
            if ctr == expect:
                flags |= _F_NEXT_COUNTER
        if len(deps) == 1 and deps[0][0] == peer and deps[0][1] == ctr - 1:
            flags |= _F_CHAIN_DEPS
        body.byte(flags)
        if not flags & _F_SAME_PEER:
            body.uint(t.peer(peer))
        if not flags & _F_NEXT_COUNTER:
            body.uint(ctr)
        body.sint(stamp - prev_ts)
        expect = _write_deps_and_ops(body, t, peer, ctr, deps, ops, not flags & _F_CHAIN_DEPS)
        prev_peer = peer
        prev_ts = stamp
    head = Writer()
    head.uint(len(t.peers))
    for peer in t.peers:
        head.str(peer)
    head.uint(len(t.names))
    for name in t.names:
        head.str(name)
    head.uint(count)
    payload = head.getvalue() + body.getvalue()
    if compress is None:
        compress = len(payload) > 4096
    if compress:
        return MAGIC + bytes([FORMAT_VERSION, 1]) + zlib.compress(payload, ZLIB_LEVEL)
    return MAGIC + bytes([FORMAT_VERSION, 0]) + payload


def encode_changes(changes: Iterable[Change], compress: bool | None = None) -> bytes:
    """Encode changes (e.g. for the network or a file); see ``docs/encoding.md``."""
    return encode_change_tuples((c._data for c in changes), compress)


def _read_header(
    data: bytes, magic: bytes, max_size: int = MAX_INFLATED, versions: tuple[int, ...] = (1,)
) -> tuple[bytes, int]:
    """The body of ``data`` after its header (inflated if compressed) and where it starts.

    ``max_size`` bounds the body: a compressed body may inflate to at most that
    many bytes, an uncompressed one may be at most that long (DecodeError).
    ``versions`` are the format versions accepted.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, not {type(data).__name__}")
    if not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be an int >= 0, not {max_size!r}")
    data = bytes(data)
    if len(data) < len(magic) + 2 or data[: len(magic)] != magic:
        raise DecodeError("not crdt_sync data (bad magic bytes)", 0)
    version = data[len(magic)]
    if version not in versions:
        raise DecodeError(f"unsupported format version {version}", len(magic))
    flags = data[len(magic) + 1]
    if flags & ~1:
        raise DecodeError(f"unknown flags {flags:#x}", len(magic) + 1)
    start = len(magic) + 2
    if flags & 1:
        return inflate(data[start:], start, max_size), 0
    if len(data) - start > max_size:
        raise DecodeError(f"{len(data) - start} bytes exceed the limit of {max_size}", start)
    return data, start


def _read_peer(r: Reader, peers: list[str]) -> str:
    index = r.uint()
    if index >= len(peers):
        raise r.fail(f"peer index {index} out of range")
    return peers[index]


def _read_id(r: Reader, peers: list[str]) -> tuple[str, int]:
    return (_read_peer(r, peers), r.uint())


def _read_ref(r: Reader, peers: list[str], peer: str, first: int) -> tuple[str, int] | None:
    tag = r.byte()
    if tag == _REF_NONE:
        return None
    if tag == _REF_PREV:
        if first == 0:
            raise r.fail("reference to the op before counter 0")
        return (peer, first - 1)
    if tag == _REF_FULL:
        return _read_id(r, peers)
    raise r.fail(f"unknown reference tag {tag}")


def _read_deps_and_ops(
    r: Reader, peers: list[str], names: list[str], peer: str, ctr: int, chained: bool, listed: bool
) -> tuple[tuple[tuple[str, int], ...], tuple[Any, ...], int]:
    """The end of a change row, after its peer and counter: its deps (``chained``: only
    this peer's previous op; ``listed``: a count and ids; neither: none written) and its
    ops. Returns (deps, ops, the counter after the last op). The one reader of this layout
    (change format 1 rows, format 2-3 head rows, relay records)."""
    deps: tuple[tuple[str, int], ...] = ()
    if chained:
        if ctr == 0:
            raise r.fail("chained deps on counter 0")
        deps = ((peer, ctr - 1),)
    elif listed:
        deps = tuple(_read_id(r, peers) for _ in range(r.count(2)))
    op_count = r.count(2)
    if not op_count:
        raise r.fail("change without ops")
    ops = []
    first = ctr
    for _ in range(op_count):
        op = _read_op(r, peers, names, peer, first)
        first += op_size(op)
        ops.append(op)
    return deps, tuple(ops), first


def _write_deps_and_ops(
    w: Writer, t: _Tables, peer: str, ctr: int, deps: Any, ops: Any, listed: bool
) -> int:
    """What :func:`_read_deps_and_ops` reads: the deps when ``listed``, then the ops.
    Returns the counter after the last op."""
    if listed:
        w.uint(len(deps))
        for dep in deps:
            _write_id(w, t, dep)
    w.uint(len(ops))
    first = ctr
    for op in ops:
        _write_op(w, t, op, peer, first)
        first += op_size(op)
    return first


def _read_op(r: Reader, peers: list[str], names: list[str], peer: str, first: int) -> Any:
    kind = r.byte()
    index = r.uint()
    if index >= len(names):
        raise r.fail(f"handler index {index} out of range")
    name = names[index]
    if kind == TEXT_INSERT:
        left = _read_ref(r, peers, peer, first)
        right = _read_ref(r, peers, peer, first)
        text = r.str()
        if not text:
            raise r.fail("empty insert")
        return (kind, name, left, right, text)
    if kind == LIST_INSERT:
        left = _read_ref(r, peers, peer, first)
        right = _read_ref(r, peers, peer, first)
        n = r.count(2)
        if not n:
            raise r.fail("empty insert")
        return (kind, name, left, right, tuple(r.json() for _ in range(n)))
    if kind == TEXT_DELETE:
        n = r.count(3)
        ranges = []
        for _ in range(n):
            p, c = _read_id(r, peers)
            length = r.uint(MAX_COUNT)
            if not length:
                raise r.fail("empty delete range")
            ranges.append((p, c, length))
        return (kind, name, tuple(ranges))
    if kind == LIST_DELETE:
        n = r.count(5)
        items = []
        for _ in range(n):
            p, c = _read_id(r, peers)
            ts = r.uint()
            sp, sc = _read_id(r, peers)
            items.append((p, c, (ts, sp, sc)))
        return (kind, name, tuple(items))
    if kind == LIST_MOVE:
        elem = _read_id(r, peers)
        return (
            kind,
            name,
            elem,
            _read_ref(r, peers, peer, first),
            _read_ref(r, peers, peer, first),
        )
    if kind == LIST_SET:
        return (kind, name, _read_id(r, peers), r.json())
    if kind == MAP_SET:
        return (kind, name, r.str(), r.json())
    if kind == MAP_DELETE:
        return (kind, name, r.str())
    raise DecodeError(f"unknown op kind {kind}", r.pos - 1)


def decode_change_tuples(data: bytes, max_size: int = MAX_INFLATED) -> list[ChangeTuple]:
    """Decode :func:`encode_changes` output; only ever raises :class:`DecodeError`
    (for bad bytes; ``TypeError``/``ValueError`` for bad arguments).

    ``max_size`` bounds the decoded body: what a compressed batch inflates to,
    or an uncompressed batch's length (a server passes its message size limit).
    """
    one = _one_change(data, max_size)
    if one is not None:
        return [one]
    version, r = _batch_reader(data, max_size)
    if version != FORMAT_VERSION:
        from .batch import decode_segments

        return [t for segment in decode_segments(r) for t in segment.tuples()]
    return _decode_version_1(r)


def _decode_version_1(r: Reader) -> list[ChangeTuple]:
    """The changes of a version 1 batch body at ``r`` (its header read)."""
    peers = [r.str() for _ in range(r.count(1))]
    if any(not p or len(p) > MAX_NAME for p in peers):
        raise r.fail("bad peer id in the peer table")
    names = [r.str() for _ in range(r.count(1))]
    if any(len(n) > MAX_NAME for n in names):
        raise r.fail("handler name too long")
    n = r.count(4)
    try:
        out = _decode_body(r, n, peers, names)
    except IndexError:
        # Reading past the end of the body: the inline readers below rely on it.
        raise DecodeError("truncated change", r.pos) from None
    r.expect_end()
    return out


#: The header and segment count of an uncompressed version 3 batch of one segment.
_ONE_SEGMENT = MAGIC + bytes((CHANGES_VERSION, 0, 1))
#: A segment's change count, kinds and the empty columns and text after its one
#: stamp, when it holds one change (a head) and no run continues it.
_ONE_HEAD = b"\x01\x00"
_NO_COLUMNS = b"\x00\x00\x00"
#: Change counters stay below this (``batch.MAX_COUNTER``).
_MAX_COUNTER = 1 << 53


def _one_change(data: Any, max_size: Any) -> ChangeTuple | None:
    """The change of a batch holding one change of one text insert or delete
    (what a client sends for each keystroke), read straight from the bytes; None
    for anything else, malformed input included, which then goes the general way
    (:func:`decode_change_tuples`), so results and errors are the general way's.

    The batch: version 3, uncompressed, one segment whose peer table holds raw
    UUIDs (under 128 of them) and whose name table holds one name under 128
    bytes, one head and no continuation, a stamp that is not negative, no column
    values and no text. The head row: deps chained or listed, one op, every
    peer and name index one byte; it accepts exactly the rows the general
    reader accepts or declines (``tests/crdt_sync/sync/test_one_change.py``).
    """
    if type(data) is not bytes or type(max_size) is not int or len(data) - 6 > max_size:
        return None
    if not data.startswith(_ONE_SEGMENT):
        return None
    end = len(data)
    try:
        # The peer table (count, then the raw-UUID marker and 16 bytes each),
        # then a one-name table (a length byte, the name).
        count = data[7]
        pos = 8 + 17 * count
        if not 0 < count < 0x80 or data[pos] != 1:
            return None
        size = data[pos + 1]
        at = pos + 2 + size
        if size >= 0x80 or at + 17 > end or data[8:pos:17].count(PEER_UUID) != count:
            return None
        name = data[pos + 2 : at].decode("utf-8", "surrogatepass")
        # The peer ids as the peer cache knows them (no call per peer).
        peers = []
        for p in range(9, pos, 17):
            raw = data[p : p + 16]
            peers.append(_PEER_TEXT.get(raw) or _uuid_text(raw))
        pos = at
        if data[pos] != 1 or data[pos + 1] or data[pos + 10 : pos + 13] != _NO_COLUMNS:
            return None
        stamp = int.from_bytes(data[pos + 2 : pos + 10], "little", signed=True)
        if stamp < 0:
            return None
        # The head row: flags (0: deps listed; 4: chained), the peer, the counter.
        # A peer index is one byte below the count: ``peers[index]`` raises
        # IndexError for any other (declined below).
        flags = data[pos + 13]
        index = data[pos + 14]
        peer = peers[index]
        ctr = data[pos + 15]
        pos += 16
        if ctr >= 0x80:
            ctr, pos = _varint(data, pos - 1)  # past the bound: declined at the end
        if flags == _F_CHAIN_DEPS:
            if not ctr:
                return None
            deps: tuple[tuple[str, int], ...] = ((peer, ctr - 1),)
        elif not flags:
            n = data[pos]
            pos += 1
            if n >= 0x80:
                return None
            listed = []
            for _ in range(n):
                index = data[pos]
                c = data[pos + 1]
                if c < 0x80:
                    pos += 2
                else:
                    c, pos = _varint(data, pos + 1)
                listed.append((peers[index], c))
            deps = tuple(listed)
        else:
            return None
        # One op, of the one name.
        if data[pos] != 1 or data[pos + 2]:
            return None
        kind = data[pos + 1]
        pos += 3
        if kind == TEXT_INSERT:
            origins: list[tuple[str, int] | None] = []
            for _ in range(2):
                tag = data[pos]
                if tag == _REF_FULL:
                    index = data[pos + 1]
                    c = data[pos + 2]
                    if c < 0x80:
                        pos += 3
                    else:
                        c, pos = _varint(data, pos + 2)
                    origins.append((peers[index], c))
                elif tag == _REF_PREV and ctr:
                    origins.append((peer, ctr - 1))
                    pos += 1
                elif tag == _REF_NONE:
                    origins.append(None)
                    pos += 1
                else:
                    return None
            size = data[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _varint(data, pos)
            if not size or pos + size != end:
                return None
            text = data[pos:end].decode("utf-8", "surrogatepass")
            size = len(text)
            op: Any = (TEXT_INSERT, name, origins[0], origins[1], text)
        elif kind == TEXT_DELETE:
            n = data[pos]
            pos += 1
            if n >= 0x80:
                return None
            ranges = []
            for _ in range(n):
                index = data[pos]
                c = data[pos + 1]
                if c < 0x80:
                    pos += 2
                else:
                    c, pos = _varint(data, pos + 1)
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = _varint(data, pos)
                if not length or length > MAX_COUNT:
                    return None
                ranges.append((peers[index], c, length))
            if pos != end:
                return None
            op = (TEXT_DELETE, name, tuple(ranges))
            size = 1
        else:
            return None
    except (IndexError, ValueError):  # truncated, a varint too long, bad UTF-8
        return None
    if ctr + size > _MAX_COUNTER:
        return None
    return (peer, ctr, stamp, deps, (op,), size)


def _batch_reader(data: bytes, max_size: int) -> tuple[int, Reader]:
    """The format version of a change batch and a reader at the start of its body."""
    body, start = _read_header(data, MAGIC, max_size, READ_CHANGES_VERSIONS)
    return data[len(MAGIC)], Reader(body, start)


def decode_batch(data: bytes, max_size: int = MAX_INFLATED) -> Any:
    """Decode a batch for import: a list of :class:`batch.Segment` (version 2), or a
    list of change tuples (version 1). Only ever raises :class:`DecodeError`."""
    return decode_batch_within(data, max_size)[0]


def decode_batch_within(data: bytes, budget: int) -> tuple[Any, int]:
    """:func:`decode_batch` with its body bounded by ``budget``, and the size of
    that body (inflated, if compressed): for a caller that bounds several
    batches together, with one inflate each."""
    version, r = _batch_reader(data, budget)
    size = len(r.data) - r.pos
    if version != FORMAT_VERSION:
        from .batch import decode_segments

        return decode_segments(r), size
    return _decode_version_1(r), size


def _decode_body(r: Reader, n: int, peers: list[str], names: list[str]) -> list[ChangeTuple]:
    """The changes of a batch. Hot: varints under 128 and text ops are read inline
    (an index past the end raises IndexError, which the caller turns into a
    DecodeError); everything else goes through the Reader."""
    data = r.data
    npeers = len(peers)
    nnames = len(names)
    out: list[ChangeTuple] = []
    peer = ""
    expect = 0
    ts = 0
    for _ in range(n):
        flags = data[r.pos]
        r.pos += 1
        if flags & ~7:
            raise r.fail(f"unknown change flags {flags:#x}")
        if flags & _F_SAME_PEER:
            if not out:
                raise r.fail("first change cannot reuse the previous peer")
        else:
            if flags & _F_NEXT_COUNTER:
                raise r.fail("next-counter flag without the same-peer flag")
            peer = _read_peer(r, peers)
        ctr = expect if flags & _F_NEXT_COUNTER else r.uint(1 << 53)
        ts += r.sint()
        if not 0 <= ts < 1 << 63:
            raise r.fail("time stamp out of range")
        if flags & _F_CHAIN_DEPS:
            if ctr == 0:
                raise r.fail("chained deps on counter 0")
            deps: tuple[tuple[str, int], ...] = ((peer, ctr - 1),)
        else:
            deps = tuple(_read_id(r, peers) for _ in range(r.count(2)))
        op_count = r.count(2)
        if not op_count:
            raise r.fail("change without ops")
        ops = []
        first = ctr
        for _ in range(op_count):
            pos = r.pos
            kind = data[pos]
            index = data[pos + 1]
            if kind == TEXT_INSERT and index < 0x80 and index < nnames:
                # Typing: kind, handler, two origin tags, then the text.
                pos += 2
                tag = data[pos]
                if tag == _REF_PREV and first:
                    left: tuple[str, int] | None = (peer, first - 1)
                    pos += 1
                elif tag == _REF_NONE:
                    left = None
                    pos += 1
                else:
                    r.pos = pos
                    left = _read_ref(r, peers, peer, first)
                    pos = r.pos
                tag = data[pos]
                if tag == _REF_NONE:
                    right: tuple[str, int] | None = None
                    pos += 1
                elif (
                    tag == _REF_FULL and data[pos + 1] < min(npeers, 0x80) and data[pos + 2] < 0x80
                ):
                    right = (peers[data[pos + 1]], data[pos + 2])
                    pos += 3
                else:
                    r.pos = pos
                    right = _read_ref(r, peers, peer, first)
                    pos = r.pos
                r.pos = pos
                text = r.str()
                if not text:
                    raise r.fail("empty insert")
                op: Any = (TEXT_INSERT, names[index], left, right, text)
                first += len(text)
            else:
                op = _read_op(r, peers, names, peer, first)
                first += op_size(op)
            ops.append(op)
        expect = first
        out.append((peer, ctr, ts, deps, tuple(ops), first - ctr))
    return out


def decode_changes(data: bytes, max_size: int = MAX_INFLATED) -> list[Change]:
    """Decode :func:`encode_changes` output; only ever raises :class:`DecodeError`
    for bad bytes. ``max_size`` bounds the decoded body (see :func:`decode_change_tuples`).
    """
    return [Change(t) for t in decode_change_tuples(data, max_size)]
