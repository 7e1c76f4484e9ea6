"""Byte-level primitives shared by every encoder: varints, strings, JSON values.

A :class:`Reader` never raises anything but :class:`DecodeError` on bad input, and
every length it reads is checked against the bytes that remain (so a small input
cannot make it allocate much), against :data:`MAX_COUNT` for element counts.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import zlib
from collections.abc import Mapping
from typing import Any

from .exceptions import DecodeError, TooLargeError

#: Upper bound on any count read from the wire (items, ops, peers, changes).
MAX_COUNT = 1 << 24
#: Upper bound on nesting of JSON values (lists and dicts inside each other).
MAX_JSON_DEPTH = 64
#: Default bound on what compressed data may inflate to.
MAX_INFLATED = 64 << 20
#: The zlib level of everything the package compresses (change batches over
#: 4 KiB, snapshot bodies); a reader inflates any level. Level 2 is zlib's
#: fast deflate. Measured on automerge-paper: B's changes that A lacks (a
#: 2.1 MB body, half of it the fixed-width stamp column) deflate in 10.7 ms to
#: 163.8 KB at level 2, against 33.4 ms and 143.2 KB at level 6 (the level
#: before 2026-12-01), and inflate in 3.4 ms against 4.0 ms; the snapshot
#: body (460 KB) in 30 M instructions to 104.9 KB, against 43.5 M and 97.6 KB
#: at level 4 and about three times that at level 6.
ZLIB_LEVEL = 2

JSONValue = Any
#: Marker of a peer id written as 16 raw bytes (:meth:`Writer.peer`): a ``str`` of
#: length 0 cannot be a peer id, so the byte is free.
PEER_UUID = 0
#: A canonical peer id: a UUID as ``str(uuid.UUID(...))`` writes it (lowercase).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A version vector as the codec sees it (peer -> next counter).
VectorEntries = Mapping[str, int]


def check_json(value: object, depth: int = 0, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is JSON-compatible.

    JSON-compatible: None, bool, int, finite float, str, and lists / dicts with str
    keys of those, nested at most ``max_depth`` deep. The package's one JSON
    validator (values of lists and maps, awareness states).
    """
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite float {value!r} is not JSON")
        return
    if depth >= max_depth:
        raise ValueError(f"value nested deeper than {max_depth} levels")
    if isinstance(value, list):
        for item in value:
            check_json(item, depth + 1, max_depth)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            check_json(item, depth + 1, max_depth)
        return
    raise TypeError(f"{type(value).__name__} is not a JSON-compatible value")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def dump_json(value: JSONValue) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def load_json(data: bytes | str, offset: int = -1, max_depth: int = MAX_JSON_DEPTH) -> JSONValue:
    """Parse and check one JSON value (:func:`check_json`); DecodeError if it is not one."""
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
        check_json(value, 0, max_depth)
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad JSON value: {exc}", offset) from None
    return value


def inflate(
    data: bytes, offset: int = -1, limit: int = MAX_INFLATED, wbits: int = zlib.MAX_WBITS
) -> bytes:
    """Decompress ``data`` (zlib; ``wbits`` as in :mod:`zlib`: 31 for gzip) to at most
    ``limit`` bytes: the package's one bounded inflate.

    Raises :class:`TooLargeError` past the limit, :class:`DecodeError` for bad,
    truncated or trailing data.
    """
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, limit + 1)
        if len(out) > limit:
            raise TooLargeError(f"compressed data inflates beyond {limit} bytes", offset)
        if not d.eof:
            raise DecodeError("truncated compressed data", offset)
        if d.unused_data:
            raise DecodeError("trailing bytes after compressed data", offset)
    except zlib.error as exc:
        raise DecodeError(f"bad compressed data: {exc}", offset) from None
    return out


class Writer:
    """Appends primitives to a growing buffer."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self.buf)

    def raw(self, data: bytes) -> None:
        self.buf += data

    def byte(self, value: int) -> None:
        self.buf.append(value)

    def uint(self, value: int) -> None:
        """Unsigned LEB128 varint."""
        buf = self.buf
        while value >= 0x80:
            buf.append((value & 0x7F) | 0x80)
            value >>= 7
        buf.append(value)

    def sint(self, value: int) -> None:
        """Zig-zag signed varint."""
        self.uint(value << 1 if value >= 0 else ((-value) << 1) - 1)

    def bytes(self, data: bytes) -> None:
        self.uint(len(data))
        self.buf += data

    def str(self, text: str) -> None:
        # surrogatepass keeps lone surrogates (possible in Python str) lossless.
        self.bytes(text.encode("utf-8", "surrogatepass"))

    def json(self, value: JSONValue) -> None:
        self.bytes(dump_json(value))

    def peer(self, peer: builtins.str) -> None:
        """A peer id: a canonical lowercase UUID as the byte :data:`PEER_UUID` then its
        16 bytes; any other (non-empty) text as ``str``. The package's one way to
        write a peer id (change batches' peer tables, version vectors, the sync
        protocol's peer fields); :meth:`Reader.peer` reads it."""
        raw = _PEER_BYTES.get(peer)
        if raw is None:
            if not peer:
                raise ValueError("an empty peer id cannot be written")
            if len(peer) != 36 or _CANONICAL_UUID.fullmatch(peer) is None:
                self.str(peer)
                return
            raw = bytes.fromhex(peer.replace("-", ""))
            if len(_PEER_BYTES) >= _PEER_CACHE:
                _PEER_BYTES.clear()
            _PEER_BYTES[peer] = raw
        buf = self.buf
        buf.append(PEER_UUID)
        buf += raw

    def version_vector(self, vv: VectorEntries) -> None:
        """``uint`` count, then a peer (:meth:`peer`) and ``uint`` counter per entry,
        peers sorted: the package's one version-vector layout."""
        self.uint(len(vv))
        for peer in sorted(vv):
            self.peer(peer)
            self.uint(vv[peer])


#: Peer ids seen lately, both ways (they repeat in every batch): bounded caches.
_PEER_CACHE = 4096
_PEER_BYTES: dict[str, bytes] = {}
_PEER_TEXT: dict[bytes, str] = {}


def _uuid_text(raw: bytes) -> str:
    text = _PEER_TEXT.get(raw)
    if text is None:
        h = raw.hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if len(_PEER_TEXT) >= _PEER_CACHE:
            _PEER_TEXT.clear()
        _PEER_TEXT[raw] = text
    return text


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A LEB128 varint at ``pos`` and the position after it; IndexError if truncated,
    ValueError past 64 bits (:meth:`Reader.uint`'s limits; the callers fall back to it)."""
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result > 1 << 64:
                raise ValueError("varint out of range")
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


class Reader:
    """Reads primitives from ``data``; any problem raises :class:`DecodeError`."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"expected bytes, not {type(data).__name__}")
        self.data = bytes(data)
        self.pos = pos
        self.end = len(self.data)

    def fail(self, message: str) -> DecodeError:
        return DecodeError(message, self.pos)

    def remaining(self) -> int:
        return self.end - self.pos

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes")

    def byte(self) -> int:
        if self.pos >= self.end:
            raise self.fail("truncated: expected a byte")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self, limit: int = 1 << 64) -> int:
        data, pos, end = self.data, self.pos, self.end
        if pos < end:
            b = data[pos]
            if b < 0x80 and b <= limit:
                # One-byte varints are the common case: small counts, indexes, deltas.
                self.pos = pos + 1
                return b
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise DecodeError("truncated varint", pos)
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise DecodeError("varint too long", pos)
        if result > limit:
            raise DecodeError(f"value {result} exceeds the limit {limit}", self.pos)
        self.pos = pos
        return result

    def count(self, min_bytes_each: int = 1) -> int:
        """A count of elements that each need at least ``min_bytes_each`` bytes."""
        n = self.uint(MAX_COUNT)
        if min_bytes_each and n * min_bytes_each > self.end - self.pos:
            raise self.fail(f"count {n} is larger than the remaining input allows")
        return n

    def sint(self) -> int:
        v = self.uint()
        return -((v + 1) >> 1) if v & 1 else v >> 1

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"truncated: expected {n} bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def bytes(self) -> bytes:
        n = self.uint(self.end - self.pos)
        return self.raw(n)

    def str(self) -> str:
        start = self.pos
        data = self.bytes()
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise DecodeError("invalid UTF-8 text", start) from None

    def json(self) -> JSONValue:
        start = self.pos
        return load_json(self.bytes(), start)

    def peer(self, max_bytes: int | None = None) -> builtins.str:
        """A peer id written by :meth:`Writer.peer`: 16 raw bytes after the marker
        (a canonical UUID), else a non-empty ``str`` of at most ``max_bytes`` bytes."""
        data, pos = self.data, self.pos
        if pos < self.end and data[pos] == PEER_UUID:
            if pos + 17 > self.end:
                raise self.fail("truncated: expected a 16-byte peer id")
            self.pos = pos + 17
            return _uuid_text(data[pos + 1 : pos + 17])
        if max_bytes is not None:
            size = self.uint()
            self.pos = pos
            if size > max_bytes:
                raise self.fail(f"peer id of {size} bytes; the limit is {max_bytes}")
        return self.str()

    def version_vector(self, max_peer_bytes: int | None = None, max_counter: int = 1 << 64) -> Any:
        """A version vector (:meth:`Writer.version_vector`); ``max_peer_bytes``
        bounds each peer id's UTF-8 length, ``max_counter`` each counter."""
        from .ids import VersionVector

        n = self.count(2)
        entries: dict[str, int] = {}
        for _ in range(n):
            peer = self.peer(max_peer_bytes)
            counter = self.uint(max_counter)
            if peer in entries:
                raise self.fail(f"peer {peer!r} twice in a version vector")
            entries[peer] = counter
        return VersionVector(entries)
