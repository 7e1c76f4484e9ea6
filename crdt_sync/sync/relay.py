"""Relay frames (protocol version 4): the changes a server relays, compacted for the wire.

Why: a relayed one-character insert in a change batch of format 3 names up to
three peers (its own, its left origin's, its right origin's), each as 17 bytes
in the segment's peer table, plus its handler-name table, a column of counts
and its deps, which repeat the origins: 84 to 107 bytes of frame for one
character (28 as a relay record, WebSocket header included).
Between a server and its clients the same ids come back in every frame, so
the server numbers them once per document and refers to them by number.

The *dictionary* of a document (:class:`RelayDictionary`, one per room and
server process) is an append-only list of strings, peer ids and handler names
alike, numbered in the order the server first relays them, bounded by
:data:`MAX_ENTRIES` entries of at most :data:`MAX_ENTRY_BYTES` bytes (past the
bound, or for a longer string, the server simply writes the string itself).
Each connection has been sent a prefix of it; before a relay that uses newer
entries the server sends the missing ones (``Dictionary``, continuing exactly
where the connection's prefix ends), in the same write.

A relay body is a count of *records*, each encoded once per batch and the same
bytes for every recipient (``docs/encoding.md``, "Relay records"):

- a one-change record: its own small peer and name tables whose entries are
  references (or literals), the time stamp (its milliseconds relative to the
  frame's time base, and its logical part), and the change as one row
  of change format 1 (without time stamp) whose deps may be *derived*: a flag
  says they are exactly what :func:`crdt_sync.transaction.deps_of` computes
  from the change (this peer's previous op and the newest op of each other
  peer its ops name), which is what every change made by a local edit has;
- an insert record: a change that is one text insert with derived deps (what
  typing makes, nearly every relay) as just the insert's fields: its peer,
  counter, time stamp, handler name, origins and text;
- a batch record: a whole self-contained change batch (formats 1 to 3), for a
  batch too long to be worth splitting.

The receiver resolves every reference while decoding (:func:`decode_relay`), so
what it imports, keeps in its history and exports holds full ids: references
exist only on the wire, between a server and one connection. A client never
sends them (it sends ``Changes`` of format 3, self-contained, which the server
stores as they came).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Any, Final

from crdt_sync.batch import Segment
from crdt_sync.change_batch import ChangeBatch
from crdt_sync.changes import (
    _F_CHAIN_DEPS,
    _REF_FULL,
    _REF_NONE,
    _REF_PREV,
    MAX_NAME,
    TEXT_INSERT,
    Change,
    ChangeTuple,
    _read_deps_and_ops,
    _read_peer,
    _Tables,
    _write_deps_and_ops,
    decode_batch_within,
)
from crdt_sync.codec import Reader, Writer
from crdt_sync.exceptions import DecodeError
from crdt_sync.transaction import deps_of

from .exceptions import DictionaryError

__all__ = [
    "MAX_DELTA_ENTRIES",
    "MAX_ENTRIES",
    "MAX_ENTRY_BYTES",
    "MAX_SPLIT_CHANGES",
    "RECORD_BATCH",
    "RECORD_CHANGE",
    "RECORD_INSERT",
    "RelayDictionary",
    "decode_relay",
    "encode_records",
    "time_base",
]

MAX_ENTRIES: Final = 1 << 16
"""Entries a document's dictionary holds at most (per room and server process)."""
MAX_ENTRY_BYTES: Final = 64
"""Longest string (UTF-8 bytes) entered in a dictionary; longer ones stay literal."""
MAX_DELTA_ENTRIES: Final = 4096
"""Entries one ``Dictionary`` frame carries at most (the server splits longer deltas)."""
MAX_SPLIT_CHANGES: Final = 32
"""A relayed batch of more changes than this goes as one batch record, as it came."""

RECORD_CHANGE: Final = 1
RECORD_BATCH: Final = 2
RECORD_INSERT: Final = 3
#: Row flag of a one-change record: the deps are those ``deps_of`` derives.
F_DERIVED_DEPS: Final = 8
_ROW_FLAGS: Final = _F_CHAIN_DEPS | F_DERIVED_DEPS
MAX_COUNTER: Final = 1 << 53
MAX_STAMP: Final = 1 << 63
#: Time stamps are hybrid logical clock values, milliseconds << 16 | logical.
MAX_MS: Final = MAX_STAMP >> 16


def _entry_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class RelayDictionary:
    """A document's dictionary on the server: strings numbered in the order first
    relayed, append-only, at most ``limit`` entries."""

    __slots__ = ("_deltas", "_index", "entries", "limit")

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.limit = limit
        self.entries: list[str] = []
        self._index: dict[str, int] = {}
        # Encoded deltas by (first index, entry count): the same for every
        # connection that has been sent the same prefix.
        self._deltas: dict[tuple[int, int], list[bytes]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def number(self, text: str) -> int:
        """The reference for ``text`` (its index + 1), entering it when there is room;
        0 when it stays literal (dictionary full, empty or too long a string)."""
        index = self._index.get(text)
        if index is None:
            if (
                len(self.entries) >= self.limit
                or not text
                or len(text) > MAX_ENTRY_BYTES
                or _entry_size(text) > MAX_ENTRY_BYTES
            ):
                return 0
            index = self._index[text] = len(self.entries)
            self.entries.append(text)
        return index + 1

    def deltas(self, first: int, encode: Any) -> list[bytes]:
        """The frames ``encode(first, entries)`` makes of the entries from ``first`` on,
        at most :data:`MAX_DELTA_ENTRIES` a frame (so a late joiner's catch-up never
        nears a frame bound), made once for each prefix length while the
        dictionary does not grow."""
        key = (first, len(self.entries))
        frames = self._deltas.get(key)
        if frames is None:
            if len(self._deltas) > 16:
                self._deltas.clear()
            frames = self._deltas[key] = [
                encode(at, tuple(self.entries[at : at + MAX_DELTA_ENTRIES]))
                for at in range(first, len(self.entries), MAX_DELTA_ENTRIES)
            ]
        return frames


def _write_peer_ref(w: Writer, dictionary: RelayDictionary, peer: str) -> None:
    ref = dictionary.number(peer)
    w.uint(ref)
    if not ref:
        w.peer(peer)


def _write_name_ref(w: Writer, dictionary: RelayDictionary, name: str) -> None:
    ref = dictionary.number(name) if name else 0
    w.uint(ref)
    if not ref:
        w.str(name)


def _write_change(w: Writer, dictionary: RelayDictionary, change: ChangeTuple, base: int) -> None:
    peer, ctr, stamp, deps, ops, _size = change
    ms = stamp >> 16
    if ms < base:
        raise ValueError(f"time stamp {stamp} is before the frame's time base {base}")
    derived = deps == deps_of(peer, ctr, list(ops))
    if derived and len(ops) == 1 and ops[0][0] == TEXT_INSERT:
        # Typing, the usual relay: nothing but the insert's own fields.
        _, name, left, right, text = ops[0]
        w.byte(RECORD_INSERT)
        _write_peer_ref(w, dictionary, peer)
        w.uint(ctr)
        w.uint(ms - base)
        w.uint(stamp & 0xFFFF)
        _write_name_ref(w, dictionary, name)
        for origin in (left, right):
            if origin is None:
                w.byte(_REF_NONE)
            elif origin[0] == peer and origin[1] == ctr - 1:
                w.byte(_REF_PREV)
            else:
                w.byte(_REF_FULL)
                _write_peer_ref(w, dictionary, origin[0])
                w.uint(origin[1])
        w.str(text)
        return
    t = _Tables()
    row = Writer()
    if len(deps) == 1 and deps[0][0] == peer and deps[0][1] == ctr - 1:
        flags = _F_CHAIN_DEPS
    elif derived:
        flags = F_DERIVED_DEPS
    else:
        flags = 0
    row.byte(flags)
    row.uint(t.peer(peer))
    row.uint(ctr)
    _write_deps_and_ops(row, t, peer, ctr, deps, ops, not flags)
    w.byte(RECORD_CHANGE)
    w.uint(len(t.peers))
    for p in t.peers:
        _write_peer_ref(w, dictionary, p)
    w.uint(len(t.names))
    for name in t.names:
        _write_name_ref(w, dictionary, name)
    w.uint(ms - base)
    w.uint(stamp & 0xFFFF)
    w.buf += row.buf


def time_base(batches: Iterable[Sequence[Change]]) -> int:
    """The time base of a relay frame holding ``batches``: the earliest millisecond of
    their one-change records' time stamps (0 when there is none)."""
    return min(
        (
            change.timestamp >> 16
            for changes in batches
            if len(changes) <= MAX_SPLIT_CHANGES
            for change in changes
        ),
        default=0,
    )


def encode_records(
    changes: Sequence[Change], encoded: bytes, dictionary: RelayDictionary, base: int
) -> tuple[bytes, int]:
    """The relay records of one batch, ``changes`` (which ``encoded`` holds as a change
    batch), numbering its ids in ``dictionary``, their time stamps relative to the
    frame's time ``base`` (:func:`time_base` of every batch the frames made of
    these records hold): (the records' bytes, how many).

    A batch of at most :data:`MAX_SPLIT_CHANGES` changes becomes one record per
    change; a longer one a single batch record holding ``encoded``."""
    if len(changes) == 1 and _INSERT_RECORDS:
        record = _insert_record(changes[0].data, dictionary, base)
        if record is not None:
            return record, 1
    w = Writer()
    if len(changes) > MAX_SPLIT_CHANGES:
        w.byte(RECORD_BATCH)
        w.bytes(encoded)
        return w.getvalue(), 1
    for change in changes:
        _write_change(w, dictionary, change.data, base)
    return w.getvalue(), len(changes)


#: Whether :func:`encode_records` writes a keystroke's insert record with
#: :func:`_insert_record` (tests turn it off to compare with the general writer).
_INSERT_RECORDS = True


def _put(buf: bytearray, value: int) -> None:
    """``value`` as a varint (:meth:`Writer.uint`) of two bytes or more."""
    while value >= 0x80:
        buf.append((value & 0x7F) | 0x80)
        value >>= 7
    buf.append(value)


def _insert_record(change: ChangeTuple, dictionary: RelayDictionary, base: int) -> bytes | None:
    """The insert record :func:`_write_change` writes for ``change`` when it is one
    text insert with derived deps whose peer and name have dictionary entries (a
    relayed keystroke), written without the general writer's calls; None for
    anything else (the general writer then writes it, or raises).

    The deps are compared with what :func:`crdt_sync.transaction.deps_of` derives
    for one insert: this peer's previous op, then the left origin and the right
    origin when another peer's (the newer of the two when the same peer's).
    """
    peer, ctr, stamp, deps, ops, _ = change
    if len(ops) != 1 or type(deps) is not tuple or ops[0][0] != TEXT_INSERT:
        return None
    _, name, left, right, text = ops[0]
    ms = stamp >> 16
    if ms < base:
        return None
    # The derived deps, compared part by part (no tuple built for them).
    at = 0
    if ctr:
        if not deps or deps[0] != (peer, ctr - 1):
            return None
        at = 1
    if left is not None and left[0] != peer:
        if right is not None and right[0] == left[0]:
            if deps[at:] != ((left[0], max(left[1], right[1])),):
                return None
        elif right is not None and right[0] != peer:
            if deps[at:] != (left, right):
                return None
        elif deps[at:] != (left,):
            return None
    elif right is not None and right[0] != peer:
        if deps[at:] != (right,):
            return None
    elif len(deps) != at:
        return None
    index = dictionary._index
    ref = index.get(peer)
    named = index.get(name)
    if ref is None or named is None:
        return None  # a string not entered yet, or staying literal
    buf = bytearray((RECORD_INSERT, ref + 1) if ref < 0x7F else (RECORD_INSERT,))
    if ref >= 0x7F:
        _put(buf, ref + 1)
    if ctr < 0x80:
        buf.append(ctr)
    else:
        _put(buf, ctr)
    ms -= base
    if ms < 0x80:
        buf.append(ms)
    else:
        _put(buf, ms)
    logical = stamp & 0xFFFF
    if logical < 0x80:
        buf.append(logical)
    else:
        _put(buf, logical)
    if named < 0x7F:
        buf.append(named + 1)
    else:
        _put(buf, named + 1)
    for origin in (left, right):
        if origin is None:
            buf.append(_REF_NONE)
        elif origin[0] == peer and origin[1] == ctr - 1:
            buf.append(_REF_PREV)
        else:
            other = index.get(origin[0])
            if other is None:
                return None
            buf.append(_REF_FULL)
            if other < 0x7F:
                buf.append(other + 1)
            else:
                _put(buf, other + 1)
            if origin[1] < 0x80:
                buf.append(origin[1])
            else:
                _put(buf, origin[1])
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) < 0x80:
        buf.append(len(raw))
    else:
        _put(buf, len(raw))
    buf += raw
    return bytes(buf)


# ----------------------------------------------------------------------- decoding


def _read_entry(r: Reader, entries: Sequence[str], literal: Any, what: str) -> builtins.str:
    ref = r.uint()
    if not ref:
        text: str = literal()
        return text
    if ref > len(entries):
        raise DictionaryError(
            f"{what} refers to dictionary entry {ref - 1}, but only {len(entries)}"
            " entries were sent on this connection",
            r.pos,
        )
    return entries[ref - 1]


def _read_change(r: Reader, entries: Sequence[str], base: int) -> ChangeTuple:
    peers = [_read_entry(r, entries, r.peer, "a peer") for _ in range(r.count(1))]
    if any(not p or len(p) > MAX_NAME for p in peers):
        raise r.fail("bad peer id in the peer table")
    names = [_read_entry(r, entries, r.str, "a handler name") for _ in range(r.count(1))]
    if any(len(n) > MAX_NAME for n in names):
        raise r.fail("handler name too long")
    stamp = (base + r.uint(MAX_MS)) << 16 | r.uint(0xFFFF)
    if stamp >= MAX_STAMP:
        raise r.fail("time stamp out of range")
    flags = r.byte()
    if flags & ~_ROW_FLAGS or flags == _ROW_FLAGS:
        raise r.fail(f"unknown change flags {flags:#x}")
    peer = _read_peer(r, peers)
    ctr = r.uint(MAX_COUNTER)
    deps, ops, first = _read_deps_and_ops(
        r, peers, names, peer, ctr, bool(flags & _F_CHAIN_DEPS), not flags
    )
    if first > MAX_COUNTER:
        raise r.fail("counter too large")
    if flags & F_DERIVED_DEPS:
        deps = deps_of(peer, ctr, list(ops))
    return (peer, ctr, stamp, deps, ops, first - ctr)


def _read_insert(r: Reader, entries: Sequence[str], base: int) -> ChangeTuple:
    peer = _read_entry(r, entries, r.peer, "a peer")
    if not peer or len(peer) > MAX_NAME:
        raise r.fail("bad peer id")
    ctr = r.uint(MAX_COUNTER)
    stamp = (base + r.uint(MAX_MS)) << 16 | r.uint(0xFFFF)
    if stamp >= MAX_STAMP:
        raise r.fail("time stamp out of range")
    name = _read_entry(r, entries, r.str, "a handler name")
    if len(name) > MAX_NAME:
        raise r.fail("handler name too long")
    origins: list[tuple[str, int] | None] = []
    for _ in range(2):
        tag = r.byte()
        if tag == _REF_NONE:
            origins.append(None)
        elif tag == _REF_PREV:
            if not ctr:
                raise r.fail("reference to the op before counter 0")
            origins.append((peer, ctr - 1))
        elif tag == _REF_FULL:
            other = _read_entry(r, entries, r.peer, "an origin's peer")
            if not other or len(other) > MAX_NAME:
                raise r.fail("bad peer id")
            origins.append((other, r.uint()))
        else:
            raise r.fail(f"unknown reference tag {tag}")
    text = r.str()
    if not text:
        raise r.fail("empty insert")
    if ctr + len(text) > MAX_COUNTER:
        raise r.fail("counter too large")
    op = (TEXT_INSERT, name, origins[0], origins[1], text)
    return (peer, ctr, stamp, deps_of(peer, ctr, [op]), (op,), len(text))


def decode_relay(body: bytes, entries: Sequence[str], max_size: int) -> ChangeBatch:
    """The changes of a relay ``body``, every reference resolved against ``entries``
    (what this connection was sent). Only ever raises :class:`DecodeError`
    (:class:`DictionaryError` for a reference to an entry never sent). The batch
    records' batches together inflate to at most ``max_size``. A batch record
    stays decoded segments (``crdt_sync/change_batch.py``): a relayed upload
    of offline work imports by runs."""
    r = Reader(body)
    out: list[Segment | ChangeTuple] = []
    encoded: bytes | None = None  # the batch of a relay of one batch record
    budget = max_size
    try:
        count = r.count(2)
        base = r.uint(MAX_MS) if count else 0
        for _ in range(count):
            form = r.byte()
            if form == RECORD_INSERT:
                out.append(_read_insert(r, entries, base))
            elif form == RECORD_CHANGE:
                out.append(_read_change(r, entries, base))
            elif form == RECORD_BATCH:
                batch = r.bytes()
                decoded, size = decode_batch_within(batch, budget)
                budget -= size
                out.extend(decoded)
                if count == 1:
                    encoded = batch
            else:
                raise r.fail(f"unknown relay record {form}")
        r.expect_end()
    except IndexError:  # pragma: no cover - the readers check every length
        raise DecodeError("truncated relay record", r.pos) from None
    return ChangeBatch(out, encoded)
