"""Client-side presence ("awareness"): who is here, their name, colour, cursor.

Theory of operation
-------------------
Each peer owns one state (a JSON object, or None when it has left) and a
``clock`` that grows with every update it makes. An update is accepted when its
clock is newer than the one known for that peer, or equal with a None state (a
leave announced by the server on the peer's behalf). The clock starts at the
wall clock in milliseconds, so a peer that restarts with the same id still
counts up from above its previous session's values.

Liveness without chatter: the local state is re-sent every ``renew_interval_s``
(15 s) even when unchanged, an unchanged :meth:`Awareness.set_local_state` sends
nothing, and a remote state not renewed within ``timeout_s`` (30 s) is dropped.
The server also announces a leave when a peer's connection ends.

This class is I/O-free: the client calls :meth:`Awareness.receive_update`,
:meth:`Awareness.receive_state`, :meth:`Awareness.tick` (periodically) and
:meth:`Awareness.clear_remote` (on disconnect), and sends the updates handed to
its ``outgoing`` subscribers. Applications read :attr:`Awareness.states` and
subscribe to :attr:`Awareness.changes`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .messages import MAX_AWARENESS_BYTES, MAX_COUNTER, AwarenessState, AwarenessUpdate
from .streams import EventStream

__all__ = ["MAX_SANE_CLOCK", "Awareness", "AwarenessChanged"]

MAX_SANE_CLOCK = MAX_COUNTER >> 1
"""Clocks above this are ignored: a wall-clock start in milliseconds stays far
below it for millennia, and following a peer's absurd clock (2**63 - 1) would
push our own past what the wire can carry."""


@dataclass(frozen=True, slots=True)
class AwarenessChanged:
    """Peers whose presence appeared, changed or disappeared (``local`` when it was
    this peer's own state)."""

    added: frozenset[str]
    updated: frozenset[str]
    removed: frozenset[str]
    local: bool = False


class Awareness:
    """Presence states of the peers on one document, from one peer's point of view."""

    def __init__(
        self,
        peer_id: str,
        *,
        renew_interval_s: float = 15.0,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        initial_clock: int | None = None,
    ) -> None:
        if timeout_s <= renew_interval_s:
            raise ValueError("timeout_s must exceed renew_interval_s, or live peers expire")
        self.peer_id = peer_id
        self.renew_interval_s = renew_interval_s
        self.timeout_s = timeout_s
        self._now = clock
        self._clock = int(time.time() * 1000) if initial_clock is None else initial_clock
        self._local: dict[str, Any] | None = None
        self._last_sent_at: float | None = None
        # peer -> (clock, state, time last heard)
        self._remote: dict[str, tuple[int, dict[str, Any], float]] = {}
        self.changes: EventStream[AwarenessChanged] = EventStream()
        """Every change of :attr:`states`."""
        self.outgoing: EventStream[AwarenessUpdate] = EventStream()
        """Updates of the local state to send to the server (the client subscribes)."""

    # ------------------------------------------------------------------ reading

    @property
    def local_state(self) -> Mapping[str, Any] | None:
        return None if self._local is None else MappingProxyType(self._local)

    @property
    def states(self) -> Mapping[str, Mapping[str, Any]]:
        """peer id -> state, for every peer present, this one included when it has a state."""
        result: dict[str, Mapping[str, Any]] = {
            peer: MappingProxyType(state) for peer, (_, state, _) in self._remote.items()
        }
        if self._local is not None:
            result[self.peer_id] = MappingProxyType(self._local)
        return MappingProxyType(result)

    @property
    def clock(self) -> int:
        return self._clock

    def local_update(self) -> AwarenessUpdate:
        """The message announcing the current local state (None: not present)."""
        state = None if self._local is None else copy.deepcopy(self._local)
        return AwarenessUpdate(self.peer_id, self._clock, state)

    # ------------------------------------------------------------------ local

    def set_local_state(self, state: Mapping[str, Any] | None) -> None:
        """Set this peer's presence (a JSON-compatible mapping) or None to leave.

        Raises ``TypeError``/``ValueError`` for a state that is not JSON or is larger
        than the wire allows. An equal state changes nothing and sends nothing.
        """
        new: dict[str, Any] | None = None
        if state is not None:
            if not isinstance(state, Mapping):
                raise TypeError("an awareness state is a mapping (a JSON object)")
            text = json.dumps(dict(state), allow_nan=False, separators=(",", ":"))
            if len(text.encode()) > MAX_AWARENESS_BYTES:
                raise ValueError(f"awareness state over {MAX_AWARENESS_BYTES} bytes")
            new = json.loads(text)  # a private, JSON-normalised copy
        if new == self._local:
            return
        was_present = self._local is not None
        self._local = new
        self._clock += 1
        me = frozenset({self.peer_id})
        none: frozenset[str] = frozenset()
        if new is None:
            self.changes.emit(AwarenessChanged(none, none, me, local=True))
        elif was_present:
            self.changes.emit(AwarenessChanged(none, me, none, local=True))
        else:
            self.changes.emit(AwarenessChanged(me, none, none, local=True))
        self._announce()

    def _announce(self) -> None:
        self._last_sent_at = self._now()
        self.outgoing.emit(self.local_update())

    def leave_update(self) -> AwarenessUpdate:
        """The update to send when closing: this peer leaves (the local state is
        kept, and announced again on the next connection)."""
        return AwarenessUpdate(self.peer_id, self._clock + 1, None)

    # ------------------------------------------------------------------ remote

    def receive_update(self, update: AwarenessUpdate) -> None:
        """Apply a remote peer's update (stale updates and our own echo are ignored)."""
        changed = self._apply(update, self._now())
        if changed is not None:
            self.changes.emit(changed)

    def _apply(self, update: AwarenessUpdate, now: float) -> AwarenessChanged | None:
        peer = update.peer_id
        none: frozenset[str] = frozenset()
        if not 0 <= update.clock <= MAX_SANE_CLOCK:
            return None  # hostile or broken: never adopt it, never let it win
        if peer == self.peer_id:
            if update.clock > self._clock and self._local is not None:
                # Someone (an earlier session of ours) is ahead of our clock: jump past
                # it and re-announce, or the others would ignore us.
                self._clock = update.clock + 1
                self._announce()
            return None
        known = self._remote.get(peer)
        if update.state is None:
            if known is None or update.clock < known[0]:
                return None
            del self._remote[peer]
            return AwarenessChanged(none, none, frozenset({peer}))
        if known is not None and update.clock <= known[0]:
            if update.clock == known[0]:
                # A renewal of the same state keeps the peer alive.
                self._remote[peer] = (known[0], known[1], now)
            return None
        self._remote[peer] = (update.clock, dict(update.state), now)
        if known is None:
            return AwarenessChanged(frozenset({peer}), none, none)
        if known[1] == update.state:
            return None  # renewed with a new clock, same content
        return AwarenessChanged(none, frozenset({peer}), none)

    def receive_state(self, message: AwarenessState) -> None:
        """Apply the server's full list: peers missing from it are gone."""
        now = self._now()
        added: set[str] = set()
        updated: set[str] = set()
        removed: set[str] = set()
        listed = {update.peer_id for update in message.states}
        for peer in list(self._remote):
            if peer not in listed:
                del self._remote[peer]
                removed.add(peer)
        for update in message.states:
            changed = self._apply(update, now)
            if changed is not None:
                added |= changed.added
                updated |= changed.updated
                removed |= changed.removed
        if added or updated or removed:
            self.changes.emit(
                AwarenessChanged(frozenset(added), frozenset(updated), frozenset(removed))
            )

    def clear_remote(self) -> None:
        """Forget every remote peer (the connection is gone: we cannot know)."""
        if self._remote:
            removed = frozenset(self._remote)
            self._remote.clear()
            self.changes.emit(AwarenessChanged(frozenset(), frozenset(), removed))

    def tick(self) -> None:
        """Periodic upkeep: renew the local state when due, expire silent peers."""
        now = self._now()
        if (
            self._local is not None
            and self._last_sent_at is not None
            and now - self._last_sent_at >= self.renew_interval_s
        ):
            self._clock += 1
            self._announce()
        expired = frozenset(
            peer for peer, (_, _, heard) in self._remote.items() if now - heard > self.timeout_s
        )
        if expired:
            for peer in expired:
                del self._remote[peer]
            self.changes.emit(AwarenessChanged(frozenset(), frozenset(), expired))

    def reannounce(self) -> None:
        """Send the local state again (after a reconnect), if there is one."""
        if self._local is not None:
            self._announce()
