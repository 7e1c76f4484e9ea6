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

from dataclasses import dataclass

from crdt_sync.sync import AwarenessUpdate

__all__ = ["REMOTE", "PresenceEntry", "RoomPresence"]

#: The owner of a presence state published through another server process.
REMOTE: object = object()


@dataclass
class PresenceEntry:
    """A peer's latest presence, who published it (a connection, or :data:`REMOTE`), and
    when (monotonic)."""

    update: AwarenessUpdate
    owner: object
    last_seen: float


class RoomPresence:
    """The presence states of one room, keyed by peer id."""

    def __init__(self) -> None:
        self._entries: dict[str, PresenceEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def states(self) -> list[AwarenessUpdate]:
        """Every current state (the answer to an ``AwarenessQuery``)."""
        return [entry.update for entry in self._entries.values()]

    def receive(self, owner: object, update: AwarenessUpdate, now: float) -> bool:
        """Record ``update`` from ``owner``; return whether to relay it.

        A stale update (a lower clock than the one held: reordered or replayed)
        is ignored. So is a removal of a peer that never announced a state:
        relaying it would cost one message per other client for every
        departure, so N clients leaving together would cost N squared.
        Renewals are relayed: clients expire presence that is not renewed.
        """
        current = self._entries.get(update.peer_id)
        if current is not None and update.clock < current.update.clock:
            return False
        if update.state is None:
            if current is None:
                return False
            del self._entries[update.peer_id]
        else:
            self._entries[update.peer_id] = PresenceEntry(update, owner, now)
        return True

    def remove_owner(self, owner: object) -> list[AwarenessUpdate]:
        """Drop every state ``owner`` published (it left); return the removals to relay."""
        removals = []
        for peer_id, entry in list(self._entries.items()):
            if entry.owner is owner:
                del self._entries[peer_id]
                removals.append(AwarenessUpdate(peer_id, entry.update.clock, None))
        return removals

    def expire(self, deadline: float) -> list[tuple[AwarenessUpdate, object]]:
        """Drop states last renewed before ``deadline``; return (removal, its owner) pairs."""
        expired = []
        for peer_id, entry in list(self._entries.items()):
            if entry.last_seen < deadline:
                del self._entries[peer_id]
                expired.append((AwarenessUpdate(peer_id, entry.update.clock, None), entry.owner))
        return expired
