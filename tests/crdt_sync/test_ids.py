"""Peer ids, op ids and version vectors."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_sync import DecodeError, OpId, PeerId, VersionVector


def test_peer_ids_are_uuids_compared_by_text() -> None:
    generated = PeerId.generate()
    assert uuid.UUID(str(generated)).version == 4
    parsed = PeerId.parse(str(generated).upper())
    assert parsed == generated and hash(parsed) == hash(generated)
    assert str(parsed) == str(generated)
    assert PeerId.generate() != generated
    low, high = PeerId.parse(str(uuid.UUID(int=1))), PeerId.parse(str(uuid.UUID(int=2)))
    assert low < high and sorted([high, low]) == [low, high]
    assert generated != str(generated)


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", "g" * 32])
def test_parsing_anything_but_a_uuid_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        PeerId.parse(bad)


def test_parsing_a_non_str_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        PeerId.parse(123)  # type: ignore[arg-type]


def test_op_ids_are_named_tuples() -> None:
    op = OpId("p", 3)
    assert op.peer == "p" and op.counter == 3 and op == ("p", 3)


def test_version_vector_is_an_immutable_mapping_without_zeros() -> None:
    vv = VersionVector({"a": 2, "b": 0})
    assert dict(vv) == {"a": 2} and len(vv) == 1 and "b" not in vv
    assert vv.get("b") == 0 and vv["a"] == 2
    assert VersionVector() == VersionVector({}) == VersionVector({"x": 0})
    assert hash(VersionVector({"a": 1})) == hash(VersionVector({"a": 1}))
    with pytest.raises(TypeError):
        vv["a"] = 3  # type: ignore[index]


def test_version_vector_rejects_bad_entries() -> None:
    with pytest.raises(ValueError):
        VersionVector({"a": -1})
    with pytest.raises(TypeError):
        VersionVector({"a": "1"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        VersionVector({1: 1})  # type: ignore[dict-item]


def test_version_vector_order_merge_and_includes() -> None:
    a = VersionVector({"p": 3})
    b = VersionVector({"p": 1, "q": 2})
    assert not a <= b and not b <= a, "concurrent"
    merged = a.merge(b)
    assert merged == VersionVector({"p": 3, "q": 2})
    assert a <= merged and b <= merged and a < merged and merged > b and merged >= merged
    assert a.includes(("p", 2)) and not a.includes(("p", 3)) and not a.includes(("q", 0))
    assert VersionVector() <= a


vectors = st.dictionaries(
    st.text(min_size=1, max_size=40), st.integers(0, 2**63 - 1), max_size=8
).map(VersionVector)


@given(vectors)
def test_version_vector_bytes_round_trip(vv: VersionVector) -> None:
    assert VersionVector.from_bytes(vv.to_bytes()) == vv


@given(vectors, vectors)
def test_merge_is_the_least_upper_bound(a: VersionVector, b: VersionVector) -> None:
    m = a.merge(b)
    assert m == b.merge(a) and a <= m and b <= m
    assert (a <= b) == (a.merge(b) == b)


def test_version_vector_bytes_with_unicode_peers() -> None:
    vv = VersionVector({"😀": 1, "\U0001d538e\u0301": 2**40, "中": 7})
    assert VersionVector.from_bytes(vv.to_bytes()) == vv


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x01\x01a", b"\x02\x01a\x01\x01a\x01", b"\x01\x01a\x01\x00", b"\xff" * 12],
    ids=["empty", "truncated", "no counter", "duplicate peer", "trailing", "huge varint"],
)
def test_version_vector_decoding_rejects_bad_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        VersionVector.from_bytes(data)
