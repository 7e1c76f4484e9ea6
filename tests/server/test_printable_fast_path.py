"""server.trust.printable's fast path (every event on the hot path goes through it)
gives exactly what the per-character rule gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from server.trust import printable

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def by_the_rule(raw: str, limit: int) -> str:
    out = []
    for char in raw[:limit]:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0 or char in "\u2028\u2029":
            out.append(_ESCAPES.get(char, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(char)
    return "".join(out) + ("…" if len(raw) > limit else "")


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=40))
def test_printable_matches_the_per_character_rule(raw: str, limit: int) -> None:
    assert printable(raw, limit) == by_the_rule(raw, limit)


def test_printable_fast_path_examples() -> None:
    for raw in ("client abc joined 'notes'", "Zoë 🎨", "a\u00a0b", "x\u2028y", "\x85", ""):
        assert printable(raw) == by_the_rule(raw, 200)
