"""The keystroke fast path of ``crdt_sync/sync/messages.py`` (``_keystroke``): an
uncompressed ``CHANGES`` frame whose batch holds one change the batch decoder's
one-change fast path reads is decoded without the frame reader. It must give
exactly what the general way gives (the same message, the same ``encoded``
bytes), and decline everything else, so that the general way decodes it or
raises its own error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from crdt_sync import Change, decode_changes
from crdt_sync.changes import encode_change_tuples
from crdt_sync.codec import Writer
from crdt_sync.sync import messages
from crdt_sync.sync.exceptions import RemoteProtocolError
from crdt_sync.sync.messages import Changes, decode_message, encode_message

from .test_one_change import keystrokes, mutated

BOUND = 1 << 20


def frame_of(batch: bytes) -> bytes:
    return encode_message(Changes(tuple(decode_changes(batch))))


def plain_frame(batch: bytes) -> bytes:
    """A ``CHANGES`` frame around ``batch`` as it is (not encoded again)."""
    w = Writer()
    w.bytes(batch)
    return b"CS\x01\x03\x00" + w.getvalue()


FRAMES = [frame_of(batch) for seed in range(3) for batch in keystrokes(seed, edits=30)]


def outcome(data: bytes, max_size: int = BOUND) -> Any:
    try:
        message = decode_message(data, max_size=max_size)
    except RemoteProtocolError as error:
        return ("error", type(error), str(error))
    encoded = message.encoded if isinstance(message, Changes) else None
    return ("ok", message, encoded)


def both_ways(
    monkeypatch: pytest.MonkeyPatch, data: bytes, max_size: int = BOUND
) -> tuple[Any, Any, int]:
    """(the outcome with the fast path, the outcome without it, how often it answered)."""
    real = messages._keystroke
    answered = [0]

    def counting(frame: bytes, bound: int) -> Any:
        result = real(frame, bound)
        answered[0] += result is not None
        return result

    with monkeypatch.context() as patch:
        patch.setattr(messages, "_keystroke", counting)
        fast = outcome(data, max_size)
    with monkeypatch.context() as patch:
        patch.setattr(messages, "_keystroke", lambda frame, bound: None)
        general = outcome(data, max_size)
    return fast, general, answered[0]


def test_keystroke_frames_take_the_fast_path_with_the_general_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for data in FRAMES:
        fast, general, answered = both_ways(monkeypatch, data)
        assert answered == 1
        assert fast == general
        assert fast[0] == "ok" and fast[2] == general[2]


def test_a_batch_of_two_length_bytes_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = "00000000-0000-4000-8000-000000000001"
    change = (peer, 0, 5, (), ((1, "text", None, None, "x" * 300),), 300)
    data = frame_of(encode_change_tuples([change]))
    assert data[5] >= 0x80  # the batch's length takes two bytes
    fast, general, answered = both_ways(monkeypatch, data)
    assert answered == 1
    assert fast == general
    assert fast[1].changes == (Change(change),)


def test_other_frames_decline(monkeypatch: pytest.MonkeyPatch) -> None:
    data = FRAMES[0]
    peer = "00000000-0000-4000-8000-000000000001"
    insert = (peer, 0, 5, (), ((1, "text", None, None, "a"),), 1)
    typing = (peer, 1, 6, ((peer, 0),), ((1, "text", (peer, 0), None, "b"),), 1)
    cases = [
        (data + b"\x00", BOUND),  # a trailing byte after the batch
        (data[:-1], BOUND),  # the batch cut short
        (data[:5] + bytes([data[5] + 1]) + data[6:], BOUND),  # a length past the end
        (data[:5] + bytes([data[5] - 1]) + data[6:], BOUND),  # a length short of it
        (data, len(data) - 1),  # over the frame bound
        (data[:5] + bytes([data[5] | 0x80, 0]) + data[6:], BOUND),  # a long-form length
        (frame_of(encode_change_tuples([insert, typing])), BOUND),  # two changes
        (data[:5], BOUND),  # no body at all
        (data[:5] + b"\x80", BOUND),  # half a length
    ]
    for case, bound in cases:
        fast, general, answered = both_ways(monkeypatch, case, bound)
        assert fast == general
        if case is not cases[5][0]:
            assert answered == 0, case
    # The long-form length (0x80 | n, 0) is a length the general way reads too.
    assert both_ways(monkeypatch, cases[5][0])[0][0] == "ok"


def test_a_length_of_three_bytes_goes_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = "00000000-0000-4000-8000-000000000001"
    change = (peer, 0, 5, (), ((1, "text", None, None, "x" * 17_000),), 17_000)
    batch = encode_change_tuples([change], compress=False)
    data = plain_frame(batch)
    assert data[5] >= 0x80 and data[6] >= 0x80  # three length bytes
    fast, general, answered = both_ways(monkeypatch, data)
    assert answered == 0
    assert fast == general and fast[0] == "ok"
    # The batch's length in two bytes whose second has its continuation bit set:
    # the general way reads a third byte (the batch's first) and a length far
    # past the frame; read as two bytes it would be exactly the batch.
    size = len(batch)
    forged = data[:5] + bytes([0x80 | size & 0x7F, size >> 7]) + batch
    assert size >> 7 >= 0x80
    fast, general, answered = both_ways(monkeypatch, forged)
    assert answered == 0
    assert fast == general and fast[0] == "error"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Often in the frame header and the batch's length, which this path reads.
@given(mutated(FRAMES, head=8))
def test_mutated_frames_decode_as_the_general_way_does(data: bytes) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, general, _ = both_ways(monkeypatch, data)
    assert fast == general
