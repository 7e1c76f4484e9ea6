"""Received change batches: decoded and checked, each change built only when asked for.

A change batch that arrives over the network (the sync protocol's ``Changes``,
handshake answer, document status and relayed batches) used to become one
:class:`Change` per change as it was decoded, and then went into
:meth:`CRDTDocument.import_changes` change by change. A two-peer merge of the
automerge-paper halves took 0.43 s to build the 130,000 changes and 0.29 s
more to import them; the same bytes given to
:meth:`~CRDTDocument.binary_import_changes` merged in 0.05 s, by runs.

:func:`decode_change_batch` decodes a batch as :func:`decode_changes` does (the
whole batch checked, the same typed errors) but keeps it as decoded segments
(``batch.py``): a few objects per run of typing or deleting, none per change.
The :class:`ChangeBatch` it gives is a sequence of :class:`Change` like the
list :func:`decode_changes` returns, building the changes on first use, and
:meth:`CRDTDocument.import_changes` applies one straight from its segments,
as :meth:`~CRDTDocument.binary_import_changes` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from .batch import Segment
from .changes import MAX_INFLATED, Change, ChangeTuple, decode_batch

__all__ = ["ChangeBatch", "decode_change_batch"]


class ChangeBatch(Sequence[Change]):
    """The changes of decoded batches and records, in order: a sequence of
    :class:`Change`, each built when first asked for.

    ``items`` are decoded segments (many changes each) and change tuples (one
    change each, as a version 1 batch or a relay record gives them).
    ``encoded`` is the batch they were decoded from, when there was exactly
    one. It compares equal to a tuple (or another batch) of the same changes.
    """

    __slots__ = ("_built", "_count", "_items", "_segments", "encoded")

    def __init__(
        self, items: Sequence[Segment | ChangeTuple], encoded: bytes | None = None
    ) -> None:
        self._items = items
        self.encoded = encoded
        self._built: tuple[Change, ...] | None = None
        count = 0
        segments: list[Segment] | None = []
        for item in items:
            if isinstance(item, Segment):
                count += item.n
                if segments is not None:
                    segments.append(item)
            else:
                count += 1
                segments = None
        self._count = count
        self._segments = segments

    @property
    def segments(self) -> list[Segment] | None:
        """The decoded segments holding every change, in order; None if some
        change came as a tuple (then :meth:`tuples` gives them all)."""
        return self._segments

    def tuples(self) -> list[ChangeTuple]:
        """Every change as a tuple, in order (built, not kept)."""
        if self._built is not None:
            return [change._data for change in self._built]
        out: list[ChangeTuple] = []
        for item in self._items:
            if isinstance(item, Segment):
                out.extend(item.tuples())
            else:
                out.append(item)
        return out

    def built(self) -> tuple[Change, ...]:
        """Every change, built once and kept."""
        built = self._built
        if built is None:
            built = self._built = tuple(map(Change, self.tuples()))
        return built

    def peers(self) -> list[str]:
        """The peers whose changes these are, in the order they first appear,
        read without building the changes."""
        out: dict[str, None] = {}
        for item in self._items:
            if isinstance(item, Segment):
                out.update(dict.fromkeys(item.summary))
            else:
                out[item[0]] = None
        return list(out)

    def ends(self) -> dict[str, int]:
        """Each peer's counter after its last change here (the smallest version
        vector that includes them all), read without building the changes."""
        out: dict[str, int] = {}
        for item in self._items:
            if isinstance(item, Segment):
                for peer, (_, end) in item.summary.items():
                    if end > out.get(peer, 0):
                        out[peer] = end
            else:
                end = item[1] + item[5]
                if end > out.get(item[0], 0):
                    out[item[0]] = end
        return out

    def op_count(self) -> int:
        """How many operations the changes hold, counted without building them."""
        return sum(
            item.op_count() if isinstance(item, Segment) else len(item[4]) for item in self._items
        )

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Change: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Change, ...]: ...

    def __getitem__(self, index: int | slice) -> Change | tuple[Change, ...]:
        return self.built()[index]

    def __iter__(self) -> Iterator[Change]:
        return iter(self.built())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChangeBatch):
            return self._count == other._count and self.built() == other.built()
        if isinstance(other, tuple):
            return self._count == len(other) and self.built() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.built())

    def __repr__(self) -> str:
        return f"ChangeBatch({self._count} changes)"


def decode_change_batch(data: bytes, max_size: int = MAX_INFLATED) -> ChangeBatch:
    """Decode :func:`encode_changes` output into a :class:`ChangeBatch`; only ever
    raises :class:`~crdt_sync.DecodeError` (as :func:`decode_changes` does, for
    the same bytes). ``max_size`` bounds the decoded body."""
    return ChangeBatch(decode_batch(data, max_size), data)
