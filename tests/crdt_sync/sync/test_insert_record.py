"""The keystroke fast path of ``crdt_sync/sync/relay.py`` (``_insert_record``): the
insert record of a relayed change of one text insert with derived deps, written
without the general writer. It must write exactly the bytes the general writer
(``_write_change``) writes and leave the dictionary as it leaves it, and decline
everything else (the general writer then writes it, or raises)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdt_sync import Change, decode_changes, encode_changes
from crdt_sync.changes import TEXT_INSERT
from crdt_sync.sync import relay
from crdt_sync.sync.relay import RelayDictionary, decode_relay, encode_records

from .test_relay import session_changes

A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"
C = "00000000-0000-4000-8000-00000000000c"
MS = 1_700_000_000_000


def outcome(change: Change, dictionary: RelayDictionary, base: int, fast: bool) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(relay, "_INSERT_RECORDS", fast)
        try:
            return encode_records([change], encode_changes([change]), dictionary, base)
        except (ValueError, TypeError) as error:
            return (type(error), str(error))


class Pair:
    """Two dictionaries fed the same changes, one written each way."""

    def __init__(self, limit: int = relay.MAX_ENTRIES, prefill: int = 0) -> None:
        self.fast, self.general = RelayDictionary(limit), RelayDictionary(limit)
        for k in range(prefill):
            self.fast.number(f"name{k}")
            self.general.number(f"name{k}")
        self.taken = 0

    def check(self, change: Change, base: int | None = None) -> Any:
        if base is None:
            base = change.timestamp >> 16
        real = relay._insert_record
        took = []

        def counting(*args: Any) -> Any:
            record = real(*args)
            took.append(record is not None)
            return record

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(relay, "_insert_record", counting)
            got = outcome(change, self.fast, base, True)
        expected = outcome(change, self.general, base, False)
        assert got == expected, change
        assert self.fast.entries == self.general.entries
        self.taken += sum(took)
        if isinstance(got, tuple) and isinstance(got[0], bytes):
            # And it reads back as the change (ids as tuples, as any decoder gives them).
            body = bytes([1]) + _uint(base) + got[0]
            assert decode_relay(body, self.fast.entries, 1 << 20) == tuple(
                decode_changes(encode_changes([change]))
            )
        return got


def _uint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_relayed_changes_one_by_one_are_written_as_the_general_writer_writes_them() -> None:
    pair = Pair()
    for seed in range(4):
        for batch in session_changes(seed):
            for change in batch:
                pair.check(change)
                pair.check(change)  # again, every string entered now
    assert pair.taken > 100


def insert(
    peer: str = A,
    ctr: int = 5,
    left: Any = (A, 4),
    right: Any = None,
    deps: Any = None,
    text: str = "x",
    stamp: int = MS << 16 | 3,
    name: str = "text",
) -> Change:
    if deps is None:
        own = ((peer, ctr - 1),) if ctr else ()
        named: dict[str, int] = {}
        for origin in (left, right):
            if origin is not None and origin[0] != peer:
                named[origin[0]] = max(named.get(origin[0], -1), origin[1])
        deps = own + tuple(named.items())
    op = (TEXT_INSERT, name, left, right, text)
    return Change((peer, ctr, stamp, deps, (op,), len(text)))


def test_forged_inserts_are_written_as_the_general_writer_writes_them() -> None:
    cases = [
        insert(),
        insert(ctr=0, left=None),
        insert(ctr=0, left=None, deps=((A, 0),)),  # a dep at counter 0
        insert(left=(B, 7)),
        insert(right=(B, 7)),
        insert(left=(B, 7), right=(C, 2)),
        insert(left=(B, 7), right=(B, 9)),  # the newer of one peer's two
        insert(left=(B, 9), right=(B, 7)),
        insert(left=(B, 7), right=(B, 9), deps=((A, 4), (B, 7))),  # not the newer
        insert(left=(B, 7), right=(C, 2), deps=((A, 4), (C, 2), (B, 7))),  # reordered
        insert(left=(B, 7), deps=((A, 4),)),  # a named peer's dep missing
        insert(deps=((A, 4), (B, 1))),  # an extra dep
        insert(deps=((A, 3),)),  # not the previous op
        insert(deps=()),  # no dep on the previous op
        insert(deps=[(A, 4)]),  # deps not a tuple
        insert(left=(B, 7), deps=((A, 4), [B, 7])),  # a dep not a tuple
        insert(left=[B, 7]),  # an origin not a tuple
        insert(ctr=200, left=(A, 199)),
        insert(ctr=1 << 40, left=(B, 1 << 35), right=(C, 300)),
        insert(stamp=MS << 16 | 0xFFFF),
        insert(stamp=(MS + 300) << 16 | 200),
        insert(text="é" * 100),  # 200 bytes: a two-byte length
        insert(text="\ud800"),  # a lone surrogate
        insert(name="n" * 100),  # a name that stays literal
        insert(name=""),
        insert(peer="not-a-uuid", left=("not-a-uuid", 4)),
        Change((A, 5, MS << 16, ((A, 4),), ((TEXT_INSERT, "text", (A, 4), None, "x"),) * 2, 2)),
    ]
    for base in (MS, MS - 5, MS - 300, MS + 1):  # MS + 1: past some stamps (ValueError)
        pair = Pair()
        for change in cases:  # every string entered, where the dictionary takes it
            pair.check(change, MS - 300)
        for change in cases:
            pair.check(change, base)
            pair.check(change, base)
        assert pair.taken > (10 if base <= MS else 0)
    # Dictionary indexes of two bytes (over 127 entries), and a full dictionary.
    for pair in (
        Pair(prefill=126),
        Pair(prefill=127),  # the first peer entered is entry 127: reference 128, two bytes
        Pair(prefill=300),
        Pair(limit=3, prefill=1),
        Pair(limit=0),
    ):
        for change in cases:
            pair.check(change, MS - 5)
            pair.check(change, MS - 5)


def origin(rng: random.Random, peer: str, ctr: int) -> Any:
    roll = rng.random()
    if roll < 0.3:
        return None
    if roll < 0.5 and ctr:
        return (peer, ctr - 1)
    return (rng.choice([A, B, C]), rng.choice([0, 3, 200, 1 << 20]))


def test_random_keystrokes_with_random_deps() -> None:
    rng = random.Random(7)
    pair = Pair(prefill=120)
    peers = [A, B, C]
    for _ in range(3000):
        peer = rng.choice(peers)
        ctr = rng.choice([0, 1, 5, 127, 128, 300, 1 << 30])

        left, right = origin(rng, peer, ctr), origin(rng, peer, ctr)
        change = insert(peer, ctr, left, right, text=rng.choice(["a", "bc", "😀"]))
        if rng.random() < 0.3:
            deps = list(change.data[3])
            if deps and rng.random() < 0.5:
                deps.pop(rng.randrange(len(deps)))
            else:
                deps.insert(rng.randint(0, len(deps)), (rng.choice(peers), rng.randrange(9)))
            change = insert(peer, ctr, left, right, deps=tuple(deps))
        pair.check(change, (change.timestamp >> 16) - rng.choice([0, 1, 200]))
    assert pair.taken > 1000


def test_a_batch_of_several_changes_is_written_by_the_general_writer() -> None:
    typing = [insert(ctr=5), insert(ctr=6, left=(A, 5), stamp=MS << 16 | 4)]
    pair = Pair()
    for change in typing:
        pair.check(change)  # every string entered
    written = []
    for fast in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(relay, "_INSERT_RECORDS", fast)
            written.append(encode_records(typing, encode_changes(typing), pair.fast, MS))
    assert written[0] == written[1]
    assert written[0][1] == 2
