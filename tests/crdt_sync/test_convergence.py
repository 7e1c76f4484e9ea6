"""N-peer convergence: random edits under random delivery, driven by Hypothesis.

A run is a list of steps: local edits (text, list, map, and multi-op
transactions) on any peer, deliveries of queued messages in any order,
duplicates, partitions and heals, disconnects and reconnects, snapshot merges,
reloads from a snapshot and compactions. After every step every peer's
invariants and event mirrors are checked; at the end the network is quiesced
and every peer must hold the same values and version, nothing pending, and
equal documents when rebuilt from its snapshot or its history.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from network import Network, Peer

# Characters that stress code-point indexing: combining marks, astral emoji,
# a ZWJ sequence, CJK, and plain ASCII.
CHARS = [
    *("a", "b", "c", " ", "\n", "é", "e\u0301"),
    *("😀", "👩\u200d💻", "\U0001d538", "中", "\U0001f1eb"),
]
texts = st.lists(st.sampled_from(CHARS), min_size=1, max_size=5).map("".join)
keys = st.sampled_from(["k", "title", "ключ", "🔑"])
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=4,
)
peer_ix = st.integers(0, 4)
anywhere = st.integers(0, 1 << 16)

edit = st.one_of(
    st.tuples(st.just("text_insert"), anywhere, texts),
    st.tuples(st.just("text_delete"), anywhere, anywhere),
    st.tuples(st.just("list_insert"), anywhere, json_values),
    st.tuples(st.just("list_delete"), anywhere, anywhere),
    st.tuples(st.just("list_move"), anywhere, anywhere),
    st.tuples(st.just("list_update"), anywhere, json_values),
    st.tuples(st.just("map_set"), keys, json_values),
    st.tuples(st.just("map_delete"), keys),
    st.tuples(st.just("clash_text"), anywhere, texts),
    st.tuples(st.just("clash_list"), anywhere, json_values),
)
step = st.one_of(
    st.tuples(st.just("edit"), peer_ix, edit),
    st.tuples(st.just("edit"), peer_ix, edit),
    st.tuples(st.just("txn"), peer_ix, st.lists(edit, min_size=1, max_size=4)),
    st.tuples(st.just("deliver"), peer_ix, anywhere),
    st.tuples(st.just("deliver"), peer_ix, anywhere),
    st.tuples(st.just("deliver_all"), peer_ix),
    st.tuples(st.just("duplicate"), peer_ix, anywhere),
    st.tuples(st.just("partition"), st.integers(1, 30)),
    st.tuples(st.just("heal")),
    st.tuples(st.just("disconnect"), peer_ix),
    st.tuples(st.just("reconnect"), peer_ix, anywhere),
    st.tuples(st.just("snapshot_merge"), peer_ix, peer_ix),
    st.tuples(st.just("reload"), peer_ix),
    st.tuples(st.just("compact"), peer_ix),
)


def apply_edit(peer: Peer, op: tuple[Any, ...]) -> None:
    """Apply one edit, mapping the raw ints onto valid indexes of the current value."""
    kind = op[0]
    if kind == "text_insert":
        peer.text.insert(op[1] % (len(peer.text) + 1), op[2])
    elif kind == "text_delete":
        n = len(peer.text)
        if n:
            start = op[1] % n
            # Counts up to the whole rest, so deletes span runs of several peers.
            peer.text.delete(start, 1 + op[2] % (n - start))
    elif kind == "list_insert":
        peer.lst.insert(op[1] % (len(peer.lst) + 1), op[2])
    elif kind == "list_delete":
        n = len(peer.lst)
        if n:
            start = op[1] % n
            peer.lst.delete(start, 1 + op[2] % min(3, n - start))
    elif kind == "list_move":
        n = len(peer.lst)
        if n:
            before = peer.lst.value
            src, dst = op[1] % n, op[2] % n
            peer.lst.move(src, dst)
            expected = list(before)
            expected.insert(dst, expected.pop(src))
            assert peer.lst.value == expected, "local move is list.insert(to, list.pop(from))"
    elif kind == "list_update":
        n = len(peer.lst)
        if n:
            i = op[1] % n
            peer.lst.update(i, op[2])
            assert peer.lst[i] == op[2]
    elif kind == "map_set":
        peer.meta.set(op[1], op[2])
        assert peer.meta[op[1]] == op[2]
    elif kind == "map_delete":
        if op[1] in peer.meta:
            peer.meta.delete(op[1])
            assert op[1] not in peer.meta
    elif kind == "clash_text":
        # The text named like the list: another object than the list.
        before = peer.lst.value
        peer.text_named_list.insert(op[1] % (len(peer.text_named_list) + 1), op[2])
        assert peer.lst.value == before
    elif kind == "clash_list":
        before = peer.text.value
        peer.list_named_text.insert(op[1] % (len(peer.list_named_text) + 1), op[2])
        assert peer.text.value == before
    else:  # pragma: no cover - the strategies make only the kinds above
        raise AssertionError(kind)


def run_step(net: Network, s: tuple[Any, ...]) -> None:
    action = s[0]
    n = len(net.peers)
    if action == "edit":
        apply_edit(net.peers[s[1] % n], s[2])
    elif action == "txn":
        peer = net.peers[s[1] % n]
        with peer.doc.transaction(origin="txn"):
            for op in s[2]:
                apply_edit(peer, op)
    elif action == "deliver":
        net.deliver(s[1], s[2])
    elif action == "deliver_all":
        net.deliver_all(s[1])
    elif action == "duplicate":
        net.duplicate(s[1], s[2])
    elif action == "partition":
        net.partition(s[1])
    elif action == "heal":
        net.heal()
    elif action == "disconnect":
        net.disconnect(s[1])
    elif action == "reconnect":
        net.reconnect(s[1], s[2])
    elif action == "snapshot_merge":
        net.snapshot_merge(s[1], s[2])
    elif action == "reload":
        net.reload(s[1])
    elif action == "compact":
        net.compact(s[1])
    else:  # pragma: no cover
        raise AssertionError(action)


def run(count: int, steps: list[tuple[Any, ...]], binary: bool) -> Network:
    net = Network(count, binary=binary)
    for s in steps:
        run_step(net, s)
        net.check()
    net.quiesce()
    net.assert_converged()
    return net


# The suite's central property: worth more examples than the profile's default.
@settings(max_examples=120)
@given(
    count=st.integers(2, 5),
    steps=st.lists(step, max_size=40),
    binary=st.booleans(),
)
def test_peers_converge_under_random_delivery_partitions_and_snapshots(
    count: int, steps: list[tuple[Any, ...]], binary: bool
) -> None:
    run(count, steps, binary)


@given(steps=st.lists(st.tuples(st.just("edit"), peer_ix, edit), min_size=1, max_size=30))
def test_two_peers_editing_concurrently_converge_after_one_exchange(
    steps: list[tuple[Any, ...]],
) -> None:
    run(2, steps, binary=False)


@pytest.mark.slow
@settings(parent=settings.get_profile("slow"), max_examples=2000)
@given(
    count=st.integers(2, 5),
    steps=st.lists(step, max_size=120),
    binary=st.booleans(),
)
def test_long_random_runs_converge(count: int, steps: list[tuple[Any, ...]], binary: bool) -> None:
    run(count, steps, binary)


def random_steps(rng: random.Random, length: int, clash: bool = False) -> list[tuple[Any, ...]]:
    """A long seeded run drawn without Hypothesis (cheap to generate in bulk).

    ``clash`` mixes in edits of the list named like the text and the text named
    like the list.
    """
    out: list[tuple[Any, ...]] = []
    for _ in range(length):
        r = rng.random()
        p = rng.randrange(5)
        if r < 0.55:
            out.append(("edit", p, random_edit(rng, clash)))
        elif r < 0.6:
            edits = [random_edit(rng, clash) for _ in range(rng.randint(1, 4))]
            out.append(("txn", p, edits))
        elif r < 0.85:
            out.append(("deliver", p, rng.randrange(1 << 16)))
        elif r < 0.87:
            out.append(("deliver_all", p))
        elif r < 0.89:
            out.append(("duplicate", p, rng.randrange(1 << 16)))
        elif r < 0.91:
            out.append(("partition", rng.randint(1, 30)))
        elif r < 0.93:
            out.append(("heal",))
        elif r < 0.94:
            out.append(("disconnect", p))
        elif r < 0.96:
            out.append(("reconnect", p, rng.randrange(5)))
        elif r < 0.97:
            out.append(("snapshot_merge", p, rng.randrange(5)))
        elif r < 0.98:
            out.append(("reload", p))
        else:
            out.append(("compact", p))
    return out


def random_edit(rng: random.Random, clash: bool = False) -> tuple[Any, ...]:
    kind = rng.choice(
        ["text_insert"] * 4
        + ["text_delete"] * 2
        + ["list_insert"] * 2
        + ["list_delete", "list_move", "list_move", "list_update", "map_set", "map_delete"]
        + (["clash_text", "clash_list"] * 2 if clash else [])
    )
    a, b = rng.randrange(1 << 16), rng.randrange(1 << 16)
    text = "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 6)))
    if kind in ("text_insert", "clash_text"):
        return (kind, a, text)
    if kind == "clash_list":
        return (kind, a, rng.choice([None, a, text]))
    if kind in ("text_delete", "list_delete", "list_move"):
        return (kind, a, b)
    if kind in ("list_insert", "list_update"):
        return (kind, a, rng.choice([None, True, a, text, [text, {"k": b}]]))
    if kind == "map_set":
        return (kind, rng.choice(["k", "title", "🔑"]), rng.choice([None, b, text]))
    return (kind, rng.choice(["k", "title", "🔑"]))


@pytest.mark.parametrize("seed", range(8))
def test_seeded_long_run_converges(seed: int) -> None:
    rng = random.Random(seed)
    run(rng.randint(2, 5), random_steps(rng, 300), binary=bool(seed % 2))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8, 408))
def test_many_seeded_long_runs_converge(seed: int) -> None:
    rng = random.Random(seed)
    run(rng.randint(2, 5), random_steps(rng, 400), binary=bool(seed % 2))


@pytest.mark.parametrize("seed", range(4))
def test_seeded_runs_with_one_name_of_two_kinds_converge(seed: int) -> None:
    """A name used as a text and as a list is two objects: both converge."""
    rng = random.Random(1000 + seed)
    net = run(rng.randint(2, 5), random_steps(rng, 300, clash=True), binary=bool(seed % 2))
    doc = net.peers[0].doc
    assert set(doc.state_names["text"]) == {"text", "list"}
