"""Presence (awareness) of one document: who is here, where their cursor is.

Presence is ephemeral: it lives in memory only, per room. Each peer's latest
:class:`~crdt_sync.sync.AwarenessUpdate` is kept with the connection that
published it and when it was last renewed. A state that is not renewed within
the server's ``awareness_timeout`` is removed, and so is every state of a
connection that leaves; each removal is relayed to the others as an update
with no state, so their cursors vanish.

This module decides *what* to relay; the room (:mod:`server.rooms`) sends it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from crdt_sync.sync import AwarenessUpdate
from crdt_sync.sync.awareness import MAX_SANE_CLOCK

__all__ = ["REMOTE", "PresenceEntry", "RoomPresence", "presence_size"]


def presence_size(update: AwarenessUpdate) -> int:
    """The encoded size of an update's state (0 for a leave), as bounded by the limits."""
    if update.state is None:
        return 0
    text = json.dumps(update.state, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


#: The owner of a presence state published through another server process.
REMOTE: object = object()


@dataclass
class PresenceEntry:
    """A peer's latest presence, who published it (a connection, or :data:`REMOTE`), and
    when (monotonic)."""

    update: AwarenessUpdate
    owner: object
    last_seen: float
    size: int = 0


class RoomPresence:
    """The presence states of one room, keyed by peer id."""

    def __init__(self) -> None:
        self._entries: dict[str, PresenceEntry] = {}
        self._total = 0

    @property
    def total_size(self) -> int:
        """The encoded size of every state held."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def states(self) -> list[AwarenessUpdate]:
        """Every current state (the answer to an ``AwarenessQuery``)."""
        return [entry.update for entry in self._entries.values()]

    def receive(
        self,
        owner: object,
        update: AwarenessUpdate,
        now: float,
        *,
        total_limit: int | None = None,
    ) -> bool:
        """Record ``update`` from ``owner``; return whether to relay it.

        A stale update (a lower clock than the one held: reordered or replayed)
        is ignored. So is a removal of a peer that never announced a state:
        relaying it would cost one message per other client for every
        departure, so N clients leaving together would cost N squared.
        Renewals are relayed: clients expire presence that is not renewed.
        A clock above :data:`~crdt_sync.sync.awareness.MAX_SANE_CLOCK` is ignored
        (clients ignore it too), and so is a state that would take the room's
        states past ``total_limit`` bytes (the answer to a query must stay well
        within every client's frame bound).
        """
        if update.clock > MAX_SANE_CLOCK:
            return False
        current = self._entries.get(update.peer_id)
        if current is not None and update.clock < current.update.clock:
            return False
        if update.state is None:
            if current is None:
                return False
            del self._entries[update.peer_id]
            self._total -= current.size
        else:
            size = presence_size(update)
            held = current.size if current is not None else 0
            if total_limit is not None and self._total - held + size > total_limit:
                return False
            self._entries[update.peer_id] = PresenceEntry(update, owner, now, size)
            self._total += size - held
        return True

    def remove_owner(self, owner: object) -> list[AwarenessUpdate]:
        """Drop every state ``owner`` published (it left); return the removals to relay."""
        removals = []
        for peer_id, entry in list(self._entries.items()):
            if entry.owner is owner:
                del self._entries[peer_id]
                self._total -= entry.size
                removals.append(AwarenessUpdate(peer_id, entry.update.clock, None))
        return removals

    def expire(self, deadline: float) -> list[tuple[AwarenessUpdate, object]]:
        """Drop states last renewed before ``deadline``; return (removal, its owner) pairs."""
        expired = []
        for peer_id, entry in list(self._entries.items()):
            if entry.last_seen < deadline:
                del self._entries[peer_id]
                self._total -= entry.size
                expired.append((AwarenessUpdate(peer_id, entry.update.clock, None), entry.owner))
        return expired
