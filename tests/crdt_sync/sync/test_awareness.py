"""Client-side awareness: clocks, renewals, expiry, leaves, no re-broadcast of equal states."""

from __future__ import annotations

import pytest

from crdt_sync.sync import Awareness, AwarenessChanged, AwarenessState, AwarenessUpdate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    clock: Clock, peer: str = "me"
) -> tuple[Awareness, list[AwarenessUpdate], list[AwarenessChanged]]:
    awareness = Awareness(peer, clock=clock, initial_clock=100)
    sent: list[AwarenessUpdate] = []
    changes: list[AwarenessChanged] = []
    awareness.outgoing.subscribe(sent.append)
    awareness.changes.subscribe(changes.append)
    return awareness, sent, changes


def test_local_state_is_announced_once_per_change() -> None:
    awareness, sent, changes = make(Clock())
    awareness.set_local_state({"name": "A", "cursor": 1})
    awareness.set_local_state({"name": "A", "cursor": 1})  # equal: nothing to send
    awareness.set_local_state({"name": "A", "cursor": 2})
    assert [u.state for u in sent] == [{"name": "A", "cursor": 1}, {"name": "A", "cursor": 2}]
    assert [u.clock for u in sent] == [101, 102]
    assert changes[0].added == {"me"} and changes[0].local
    assert changes[1].updated == {"me"}
    assert awareness.states["me"] == {"name": "A", "cursor": 2}


def test_local_state_must_be_json() -> None:
    awareness, _, _ = make(Clock())
    with pytest.raises(TypeError):
        awareness.set_local_state({"when": object()})
    with pytest.raises(ValueError):
        awareness.set_local_state({"x": float("nan")})
    with pytest.raises(ValueError):
        awareness.set_local_state({"big": "x" * 100_000})


def test_local_state_is_renewed_and_silent_peers_expire() -> None:
    clock = Clock()
    awareness, sent, changes = make(clock)
    awareness.set_local_state({"name": "A"})
    awareness.receive_update(AwarenessUpdate("b", 1, {"name": "B"}))
    clock.now = 14.0
    awareness.tick()
    assert len(sent) == 1  # not yet due
    clock.now = 15.0
    awareness.tick()
    assert len(sent) == 2 and sent[1].clock > sent[0].clock  # renewed, same state
    clock.now = 29.0
    awareness.receive_update(AwarenessUpdate("b", 2, {"name": "B"}))  # b renews
    clock.now = 45.0
    awareness.tick()
    assert "b" in awareness.states
    clock.now = 59.5
    awareness.tick()
    assert "b" not in awareness.states
    assert changes[-1].removed == {"b"}


def test_remote_updates_follow_clocks() -> None:
    awareness, _, changes = make(Clock())
    awareness.receive_update(AwarenessUpdate("b", 5, {"n": 1}))
    awareness.receive_update(AwarenessUpdate("b", 4, {"n": 0}))  # stale
    assert awareness.states["b"] == {"n": 1}
    awareness.receive_update(AwarenessUpdate("b", 6, {"n": 1}))  # renewal, same content
    assert [c.added or c.updated for c in changes] == [frozenset({"b"})]
    awareness.receive_update(AwarenessUpdate("b", 7, {"n": 2}))
    assert changes[-1].updated == {"b"}
    awareness.receive_update(AwarenessUpdate("b", 7, None))  # server's leave, same clock
    assert "b" not in awareness.states and changes[-1].removed == {"b"}
    awareness.receive_update(AwarenessUpdate("c", 1, None))  # leave of an unknown peer
    assert len(changes) == 3


def test_full_state_replaces_remote_peers() -> None:
    awareness, _, changes = make(Clock())
    awareness.receive_update(AwarenessUpdate("b", 1, {}))
    awareness.receive_state(AwarenessState((AwarenessUpdate("c", 1, {"x": 1}),)))
    assert set(awareness.states) == {"c"}
    assert changes[-1] == AwarenessChanged(frozenset({"c"}), frozenset(), frozenset({"b"}))


def test_own_echo_is_ignored_but_a_newer_own_clock_is_overtaken() -> None:
    awareness, sent, _ = make(Clock())
    awareness.set_local_state({"name": "A"})
    awareness.receive_update(AwarenessUpdate("me", awareness.clock, {"name": "A"}))
    assert len(sent) == 1
    # An earlier session of this peer left a higher clock on the server.
    awareness.receive_update(AwarenessUpdate("me", 10_000, {"name": "old"}))
    assert len(sent) == 2 and sent[-1].clock > 10_000 and sent[-1].state == {"name": "A"}
    assert awareness.states["me"] == {"name": "A"}


def test_leave_and_clear_remote() -> None:
    awareness, _, changes = make(Clock())
    awareness.set_local_state({"name": "A"})
    leave = awareness.leave_update()
    assert leave.state is None and leave.clock > awareness.clock - 1
    awareness.receive_update(AwarenessUpdate("b", 1, {}))
    awareness.clear_remote()
    assert set(awareness.states) == {"me"} and changes[-1].removed == {"b"}
    awareness.set_local_state(None)
    assert awareness.states == {} and changes[-1].removed == {"me"}


def test_timeout_must_exceed_renewal() -> None:
    with pytest.raises(ValueError):
        Awareness("p", renew_interval_s=30, timeout_s=30)
