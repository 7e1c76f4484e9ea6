# mypy: disable-error-code="no-untyped-call"
"""Tests for the one code-point <-> UTF-16 position converter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editor.positions import code_point_length, to_code_points, to_utf16, utf16_length

GRINNING = "\U0001f600"  # astral: two UTF-16 units
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # ZWJ sequence: 5 code points, 8 units
E_ACUTE_COMBINING = "e\u0301"  # two code points, two units
GOTHIC = "\U00010348"  # non-emoji astral letter


def test_ascii_positions_are_identical() -> None:
    assert [to_utf16("hello", i) for i in range(6)] == list(range(6))
    assert [to_code_points("hello", i) for i in range(6)] == list(range(6))


def test_astral_character_counts_two_units() -> None:
    text = f"a{GRINNING}b"
    assert utf16_length(text) == 4
    assert [to_utf16(text, i) for i in range(4)] == [0, 1, 3, 4]
    assert [to_code_points(text, u) for u in (0, 1, 3, 4)] == [0, 1, 2, 3]


def test_offset_inside_surrogate_pair_rounds_down() -> None:
    text = f"a{GRINNING}b"
    assert to_code_points(text, 2) == 1


def test_zwj_sequence_and_gothic_letter() -> None:
    text = f"{FAMILY}x{GOTHIC}"
    assert utf16_length(FAMILY) == 8
    assert to_utf16(text, 5) == 8
    assert to_utf16(text, 6) == 9
    assert to_utf16(text, 7) == 11
    assert to_code_points(text, 11) == 7


def test_combining_marks_are_one_unit_each() -> None:
    text = f"caf{E_ACUTE_COMBINING}!"
    assert utf16_length(text) == len(text) == 6
    assert to_utf16(text, 5) == 5
    assert to_code_points(text, 5) == 5


def test_code_point_length_of_a_removed_range() -> None:
    text = f"x{GRINNING}{E_ACUTE_COMBINING}{GRINNING}y"
    # Qt removes 6 units starting after "x": emoji (2) + e + mark + emoji (2).
    assert code_point_length(text, 1, 6) == 4


@pytest.mark.parametrize("bad", [-1, 4])
def test_out_of_range_code_point_index_raises(bad: int) -> None:
    with pytest.raises(IndexError):
        to_utf16(f"ab{GRINNING}", bad)


@pytest.mark.parametrize("text", ["abc", f"a{GRINNING}"])
def test_out_of_range_utf16_offset_raises(text: str) -> None:
    with pytest.raises(IndexError):
        to_code_points(text, utf16_length(text) + 1)
    with pytest.raises(IndexError):
        to_code_points(text, -1)


@settings(max_examples=200, derandomize=True)
@given(st.text(alphabet=st.characters(codec="utf-8")), st.data())
def test_round_trip_for_any_text(text: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(text)))
    offset = to_utf16(text, index)
    assert offset == len(text[:index].encode("utf-16-le")) // 2
    assert to_code_points(text, offset) == index
