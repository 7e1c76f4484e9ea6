"""Identities and clocks: peers, op ids, version vectors, the hybrid logical clock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from typing import NamedTuple


class PeerId:
    """A peer's identity: a UUID, compared and hashed by its canonical text."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    @classmethod
    def generate(cls) -> PeerId:
        """A new random (version 4) peer id."""
        return cls(str(uuid.uuid4()))

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse a UUID; raises ``ValueError`` when ``text`` is not one."""
        if not isinstance(text, str):
            raise TypeError(f"peer id must be a str, not {type(text).__name__}")
        try:
            value = uuid.UUID(text)
        except ValueError:
            raise ValueError(f"not a peer id (a UUID): {text!r}") from None
        return cls(str(value))

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"PeerId({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other._text == self._text

    def __lt__(self, other: PeerId) -> bool:
        return self._text < other._text

    def __hash__(self) -> int:
        return hash(self._text)


class OpId(NamedTuple):
    """The id of one operation: the peer that made it and that peer's counter."""

    peer: str
    counter: int


class VersionVector(Mapping[str, int]):
    """An immutable map from peer to the next op counter not yet seen from it.

    ``a <= b`` means ``b`` has seen everything ``a`` has. Peers at 0 are omitted.
    """

    __slots__ = ("_entries", "_hash")

    def __init__(self, entries: Mapping[str, int] | None = None) -> None:
        clean: dict[str, int] = {}
        if entries:
            for peer, counter in entries.items():
                if not isinstance(peer, str) or not isinstance(counter, int):
                    raise TypeError("a version vector maps str peers to int counters")
                if counter < 0:
                    raise ValueError(f"negative counter {counter} for peer {peer}")
                if counter:
                    clean[peer] = counter
        self._entries = clean
        self._hash: int | None = None

    def __getitem__(self, peer: str) -> int:
        return self._entries[peer]

    def get(self, peer: str, default: int = 0) -> int:  # type: ignore[override]
        return self._entries.get(peer, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"VersionVector({self._entries!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VersionVector):
            return self._entries == other._entries
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._entries.items()))
        return self._hash

    def __le__(self, other: VersionVector) -> bool:
        get = other._entries.get
        return all(get(peer, 0) >= counter for peer, counter in self._entries.items())

    def __ge__(self, other: VersionVector) -> bool:
        return other <= self

    def __lt__(self, other: VersionVector) -> bool:
        return self <= other and self != other

    def __gt__(self, other: VersionVector) -> bool:
        return other < self

    def includes(self, op_id: tuple[str, int]) -> bool:
        """Whether the op ``op_id`` is covered by this vector."""
        return self._entries.get(op_id[0], 0) > op_id[1]

    def merge(self, other: Mapping[str, int]) -> VersionVector:
        """The per-peer maximum of both vectors."""
        merged = dict(self._entries)
        for peer, counter in other.items():
            if counter > merged.get(peer, 0):
                merged[peer] = counter
        return VersionVector(merged)

    def to_bytes(self) -> bytes:
        """Encode as ``varint count`` then ``(varint len, utf-8 peer, varint counter)*``."""
        from .codec import Writer

        w = Writer()
        w.version_vector(self._entries)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> VersionVector:
        """Decode :meth:`to_bytes` output; raises :class:`DecodeError` on bad input."""
        from .codec import Reader

        r = Reader(data)
        vv: VersionVector = r.version_vector()
        r.expect_end()
        return vv


class HybridLogicalClock:
    """A hybrid logical clock packed in one int: milliseconds << 16 | logical counter.

    ``tick()`` stamps a local event; ``observe(stamp)`` folds in a remote stamp, so
    every later local stamp is greater than anything seen.
    """

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def tick(self) -> int:
        now = time.time_ns() // 1_000_000 << 16
        last = self.last
        self.last = now if now > last else last + 1
        return self.last

    def observe(self, stamp: int) -> None:
        if stamp > self.last:
            self.last = stamp
