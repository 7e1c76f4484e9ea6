"""What a client that is behind gets: changes, or a snapshot kept per document.

Theory of operation
-------------------
A client that joins (handshake) or resynchronises (``DocumentStatusRequest``)
gets what its version vector lacks. A client that lacks little gets exactly
the missing changes, in the answer itself. A client that lacks much (a new
client with an empty vector, on a document of thousands of changes) would
cost the server a full export and a full snapshot per request: about 50 ms of
event loop for 5,000 changes, so fifty new connections stalled every document
for seconds (issue 7).

Instead each document keeps a *base*: a snapshot at some version ``V0`` of
the live document, encoded once. A client far behind gets the base in the
answer, followed at once by one ``Changes`` frame holding what the document
applied since ``V0`` (its stored encoding, reused: :meth:`CRDTDocument.
binary_export_changes`). The delta arrives in the same write as the answer, so
it is exactly like a relay of edits made while the client connected.

The base is renewed when the delta grows past :data:`REFRESH_OPS` operations,
and, before a handshake, when it is older than :data:`REFRESH_AGE` seconds and
anything changed (so a quiet document gets an exact answer). Before a
handshake it is renewed off the event loop (:func:`refresh`: a shallow copy on
the loop, the walk and compression in a worker thread); a status request
(synchronous, rate limited) renews it in place only when it has to.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass

from crdt_sync import Change, CRDTDocument, Snapshot, VersionVector

__all__ = ["Payload", "base_snapshot", "payload_for", "refresh"]

#: A client lacking fewer operations than this gets the changes themselves.
EXACT_BELOW = 1024
#: Up to this many, when they are clearly smaller than the snapshot (a big document).
EXACT_UP_TO = 4096
# Bytes of snapshot per missing operation above which changes are sent (a generous
# bound on one operation's encoding: the changes are then clearly smaller).
_BYTES_PER_OP = 32
#: The base is renewed once the document holds this many operations more.
REFRESH_OPS = 2048
#: Before a handshake, a base older than this (seconds) is renewed if anything changed.
REFRESH_AGE = 1.0


@dataclass(frozen=True, slots=True)
class Payload:
    """What a client lacks: ``changes`` or ``snapshot`` for the answer itself (never
    both; both empty: nothing), and ``then``: encoded changes (``encode_changes``)
    to send right after the answer, or b""."""

    changes: tuple[Change, ...] = ()
    snapshot: Snapshot | None = None
    then: bytes = b""


class _Base:
    """A document's snapshot at ``snapshot.version_vector``, and the delta since, cached
    for one document version."""

    __slots__ = ("delta", "delta_version", "snapshot", "taken_at")

    def __init__(self, snapshot: Snapshot, taken_at: float) -> None:
        self.snapshot = snapshot
        self.taken_at = taken_at
        self.delta = b""
        self.delta_version = snapshot.version_vector


_bases: weakref.WeakKeyDictionary[CRDTDocument, _Base] = weakref.WeakKeyDictionary()


def missing_ops(have: VersionVector, since: VersionVector) -> int:
    """How many operations ``have`` holds that ``since`` lacks (by counters)."""
    return sum(
        counter - since.get(peer, 0)
        for peer, counter in have.items()
        if counter > since.get(peer, 0)
    )


def _usable(document: CRDTDocument, base: _Base | None, limit: int) -> bool:
    """Whether ``base`` can serve ``document`` now with a delta under ``limit`` ops."""
    if base is None:
        return False
    since = base.snapshot.version_vector
    return document.can_export(since) and missing_ops(document.version_vector, since) < limit


def base_snapshot(document: CRDTDocument) -> Snapshot:
    """The document's base snapshot (taken now, on this thread, if it has none that serves)."""
    base = _bases.get(document)
    if base is None or not _usable(document, base, REFRESH_OPS):
        base = _bases[document] = _Base(document.take_snapshot(), time.monotonic())
    return base.snapshot


async def refresh(document: CRDTDocument, *, force: bool = False) -> Snapshot:
    """Renew the base off the event loop if it is missing, too far behind, or old
    while the document changed (``force``: always); returns the base."""
    base = _bases.get(document)
    if not force and _usable(document, base, REFRESH_OPS) and base is not None:
        fresh = time.monotonic() - base.taken_at < REFRESH_AGE
        if fresh or base.snapshot.version_vector == document.version_vector:
            return base.snapshot
    capture = Snapshot.capture(document)  # a shallow copy, here on the loop
    snapshot = await asyncio.to_thread(capture.encode)
    current = _bases.get(document)
    if current is None or not (snapshot.version_vector <= current.snapshot.version_vector):
        _bases[document] = _Base(snapshot, time.monotonic())
        return snapshot
    return current.snapshot


def _delta(document: CRDTDocument, base: _Base) -> bytes:
    """The encoded changes the document applied since the base (cached per version)."""
    version = document.version_vector
    if base.delta_version != version:
        since = base.snapshot.version_vector
        base.delta = b"" if version == since else document.binary_export_changes(since)
        base.delta_version = version
    return base.delta


def payload_for(document: CRDTDocument, since: VersionVector) -> Payload:
    """What a peer at ``since`` lacks (see the module's docstring)."""
    exportable = document.can_export(since)
    missing = missing_ops(document.version_vector, since) if exportable else 0
    if exportable and missing < EXACT_BELOW:
        return Payload(tuple(document.export_changes(since)))
    snapshot = base_snapshot(document)  # renewed here only when it cannot serve
    if exportable and (
        snapshot.version_vector <= since  # past the base: it lacks less than the delta
        or (missing < EXACT_UP_TO and missing * _BYTES_PER_OP < len(snapshot))
    ):
        return Payload(tuple(document.export_changes(since)))
    return Payload(snapshot=snapshot, then=_delta(document, _bases[document]))
