"""Byte primitives: varints, strings, JSON values, and the bounds on what a Reader reads."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_sync import DecodeError
from crdt_sync.codec import MAX_JSON_DEPTH, Reader, Writer, check_json

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@given(st.lists(st.integers(0, 2**64 - 1)), st.lists(st.integers(-(2**62), 2**62)))
def test_varints_round_trip(unsigned: list[int], signed: list[int]) -> None:
    w = Writer()
    for u in unsigned:
        w.uint(u)
    for s in signed:
        w.sint(s)
    r = Reader(w.getvalue())
    assert [r.uint() for _ in unsigned] == unsigned
    assert [r.sint() for _ in signed] == signed
    r.expect_end()


@given(st.text(alphabet=st.characters(codec=None)))
def test_strings_round_trip_including_astral_and_lone_surrogates(text: str) -> None:
    w = Writer()
    w.str(text)
    w.str("😀e\u0301\U0001d538\ud800")
    r = Reader(w.getvalue())
    assert r.str() == text
    assert r.str() == "😀e\u0301\U0001d538\ud800"
    r.expect_end()


@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    w = Writer()
    w.json(value)
    assert Reader(w.getvalue()).json() == value


def test_small_varints_are_one_byte() -> None:
    w = Writer()
    w.uint(127)
    w.sint(-64)
    assert len(w.getvalue()) == 2


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b"", lambda r: r.uint()),
        (b"\x80", lambda r: r.uint()),
        (b"\xff" * 10 + b"\x01", lambda r: r.uint()),
        (b"\x05ab", lambda r: r.str()),
        (b"\x02\xc3\x28", lambda r: r.str()),
        (b"\x03nan", lambda r: r.json()),
        (b"\x08Infinity", lambda r: r.json()),
        (b"\x01{", lambda r: r.json()),
        (b"\xff\xff\xff\xff\x0f", lambda r: r.count()),
        (b"\x10abc", lambda r: r.count()),
        (b"\x05", lambda r: r.raw(6)),
    ],
    ids=[
        "empty varint",
        "truncated varint",
        "overlong varint",
        "truncated str",
        "invalid utf-8",
        "json NaN",
        "json Infinity",
        "broken json",
        "count over the limit",
        "count beyond the input",
        "raw past the end",
    ],
)
def test_reader_raises_decode_error_on_bad_input(data: bytes, read: Any) -> None:
    with pytest.raises(DecodeError):
        read(Reader(data))


def test_deeply_nested_json_is_refused_on_both_sides() -> None:
    deep: Any = []
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ValueError):
        check_json(deep)
    payload = b"[" * 100_000 + b"]" * 100_000
    w = Writer()
    w.bytes(payload)
    with pytest.raises(DecodeError):
        Reader(w.getvalue()).json()


@pytest.mark.parametrize("value", [object(), (1, 2), {1: 2}, b"x", {"a": {3}}, complex(1, 2)])
def test_check_json_rejects_non_json_types(value: object) -> None:
    with pytest.raises(TypeError):
        check_json(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, [-math.inf]])
def test_check_json_rejects_non_finite_floats(value: object) -> None:
    with pytest.raises(ValueError):
        check_json(value)


def test_reader_refuses_non_bytes() -> None:
    with pytest.raises(TypeError):
        Reader("text")  # type: ignore[arg-type]


def test_one_bounded_inflate_for_zlib_and_gzip() -> None:
    import gzip
    import zlib

    from crdt_sync.codec import inflate
    from crdt_sync.exceptions import TooLargeError

    data = b"abc" * 1000
    assert inflate(zlib.compress(data), 0, len(data)) == data  # exactly at the limit
    assert inflate(gzip.compress(data), 0, len(data), wbits=31) == data
    with pytest.raises(TooLargeError):
        inflate(zlib.compress(data), 0, len(data) - 1)
    with pytest.raises(TooLargeError):
        inflate(gzip.compress(data), 0, 100, wbits=31)
    for bad in (zlib.compress(data)[:-3], zlib.compress(data) + b"x", b"not zlib"):
        with pytest.raises(DecodeError) as info:
            inflate(bad, 7)
        assert not isinstance(info.value, TooLargeError) and info.value.offset == 7


def test_one_json_validator_with_a_depth_bound() -> None:
    from crdt_sync.codec import load_json

    nested = "[" * 10 + "]" * 10
    assert load_json(nested) == load_json(nested.encode(), 0, 10)
    with pytest.raises(DecodeError, match="deeper"):
        load_json(nested, 0, 9)
    for bad in ("NaN", "[1,", '"\\ud800"x'):
        with pytest.raises(DecodeError):
            load_json(bad)


def test_one_version_vector_codec_with_bounds() -> None:
    from crdt_sync import VersionVector
    from crdt_sync.codec import Reader, Writer

    vv = VersionVector({"b" * 40: 7, "a": 1 << 40})
    w = Writer()
    w.version_vector(vv)
    assert w.getvalue() == vv.to_bytes()
    assert Reader(w.getvalue()).version_vector() == vv
    assert Reader(w.getvalue()).version_vector(40, 1 << 40) == vv
    with pytest.raises(DecodeError, match="limit is 39"):
        Reader(w.getvalue()).version_vector(39)
    with pytest.raises(DecodeError):
        Reader(w.getvalue()).version_vector(None, (1 << 40) - 1)
