"""A replica's identity on a server, and how to continue under a new one.

Theory of operation
-------------------
A peer id is *claimed*: the first handshake for a peer id on a server document
carries the replica's secret (:attr:`crdt_sync.CRDTDocument.replica_secret`,
created with the peer id, persisted beside it), and the server keeps a hash of
it; a later handshake with the same peer id and another secret is refused with
``PEER_ID_IN_USE``, and so is a second live connection with the same peer id.
The secret belongs to the replica (the document and what persists it), so a new
:class:`~crdt_sync.sync.WebSocketClient` for the same document, after an app
restart or when failing over to another server process, is accepted.

A replica refused that way must not keep its peer id: two replicas writing ops
under one id would reuse op ids. :func:`fork_with_new_peer` builds a new replica
under a fresh peer id (and a fresh secret) that holds everything the server
acknowledged plus every own edit it did not, re-issued under the new peer id:
each unacknowledged own change is replayed with its op ids shifted to the new
peer (references to those ids inside later changes are shifted alike), so the
edits keep their places and their order. The old document is left untouched.
"""

from __future__ import annotations

from typing import Any

from crdt_sync import Change, CRDTDocument, PeerId, VersionVector
from crdt_sync.changes import (
    LIST_DELETE,
    LIST_INSERT,
    LIST_MOVE,
    LIST_SET,
    TEXT_DELETE,
    TEXT_INSERT,
)
from crdt_sync.exceptions import CRDTError

__all__ = ["ForkError", "fork_with_new_peer"]


class ForkError(CRDTError):
    """The document cannot be forked: its own unacknowledged changes are not in its
    history (it was compacted, or loaded from a snapshot after they were made)."""


def fork_with_new_peer(
    document: CRDTDocument,
    acknowledged: VersionVector,
    *,
    peer_id: PeerId | None = None,
) -> CRDTDocument:
    """A new replica of ``document`` under a fresh peer id, keeping every unsent edit.

    ``acknowledged`` is what the server confirmed (``WebSocketClient.acknowledged``):
    own changes it covers stay as they are (the server has them); own changes it
    does not cover are re-issued under the new peer id. Handlers are not carried
    over: bind the application's handlers to the returned document, then connect
    a new client with it.

    An own change the server stored without acknowledging it (the connection
    dropped before the ``Ack``) comes back as a copy under the new peer id.

    Raises:
        ForkError: the document's history no longer holds its unacknowledged
            own changes (compacted, or loaded from a snapshot).
    """
    old = str(document.peer_id)
    acked = acknowledged.get(old, 0)
    mine = document.version_vector.get(old, 0)
    if not document.can_export(VersionVector()):
        if mine > acked:
            raise ForkError(
                "the document's history does not hold its unacknowledged changes"
                " (compacted or loaded from a snapshot): they cannot be re-issued"
            )
        # Nothing to re-issue: carry the state over as it is.
        fork = CRDTDocument.from_snapshot(document.take_snapshot(), peer_id, document.document_id)
        return fork
    new = str(peer_id if peer_id is not None else PeerId.generate())
    if new == old:
        raise ValueError("the fork needs another peer id")
    fork = CRDTDocument(PeerId.parse(new), document.document_id)
    kept: list[Change] = []
    replayed: list[Change] = []
    for change in document.export_changes():
        if change.peer == old and change.counter + change.size > acked:
            if change.counter < acked:  # pragma: no cover - acks cover whole changes
                raise ForkError("an acknowledgement splits a change")
            replayed.append(_shift(change, old, new, acked))
        else:
            kept.append(change)
    fork.import_changes(kept)
    fork.import_changes(replayed)
    return fork


def _shift(change: Change, old: str, new: str, acked: int) -> Change:
    """``change`` (of ``old``, at or after ``acked``) re-issued under ``new``."""

    def ident(peer: str, counter: int) -> tuple[str, int]:
        if peer == old and counter >= acked:
            return (new, counter - acked)
        return (peer, counter)

    def ref(value: Any) -> Any:
        return None if value is None else ident(value[0], value[1])

    ops: list[tuple[Any, ...]] = []
    for op in change.ops:
        kind = op[0]
        if kind == TEXT_DELETE:
            ranges: list[tuple[str, int, int]] = []
            for peer, counter, length in op[2]:
                if peer == old and counter < acked < counter + length:
                    ranges.append((peer, counter, acked - counter))
                    ranges.append((new, 0, counter + length - acked))
                else:
                    ranges.append((*ident(peer, counter), length))
            ops.append((kind, op[1], tuple(ranges)))
        elif kind == LIST_DELETE:
            targets = tuple(
                (*ident(peer, counter), (stamp[0], *ident(stamp[1], stamp[2])))
                for peer, counter, stamp in op[2]
            )
            ops.append((kind, op[1], targets))
        elif kind == LIST_MOVE:
            ops.append((kind, op[1], ref(op[2]), ref(op[3]), ref(op[4])))
        elif kind == LIST_SET:
            ops.append((kind, op[1], ref(op[2]), op[3]))
        elif kind == TEXT_INSERT or kind == LIST_INSERT:
            ops.append((kind, op[1], ref(op[2]), ref(op[3]), *op[4:]))
        else:  # MAP_SET, MAP_DELETE name no ids
            ops.append(tuple(op))
    deps = tuple(ident(peer, counter) for peer, counter in change.deps)
    counter = change.counter - acked
    return Change((new, counter, change.timestamp, deps, tuple(ops), change.size))
