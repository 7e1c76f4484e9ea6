"""The one place that converts text positions between the CRDT and Qt.

The CRDT (``crdt_sync``) counts Unicode code points, exactly like Python ``str``
indexes. Qt (``QTextDocument``, ``QTextCursor``, ``contentsChange``) counts UTF-16
code units: every character outside the Basic Multilingual Plane (most emoji,
many CJK extension characters) is two units there and one code point here.
Combining marks are ordinary code points in both worlds (one unit each), so they
need no special case; they are covered by the tests all the same.

Every function takes the text the position refers to. A UTF-16 offset that
falls between the two halves of a surrogate pair cannot be a code-point index;
:func:`to_code_points` rounds it down to the start of that character, which is
what Qt itself does with a cursor placed there.

Cost: O(length of the prefix) with C-speed encoding, and O(1) extra work for
ASCII text (the common case while typing prose).
"""

from __future__ import annotations

__all__ = [
    "code_point_length",
    "to_code_points",
    "to_utf16",
    "utf16_length",
]


def utf16_length(text: str) -> int:
    """Return the number of UTF-16 code units Qt uses to store ``text``."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def to_utf16(text: str, index: int) -> int:
    """Convert the code-point ``index`` into ``text`` to a Qt UTF-16 offset.

    ``index`` may be ``len(text)`` (the end). Raises :class:`IndexError` when it
    is negative or past the end: a caller with such an index has lost track of
    the document, and silently clamping would hide that.
    """
    if index < 0 or index > len(text):
        raise IndexError(f"code point index {index} outside 0..{len(text)}")
    if text.isascii():
        return index
    return utf16_length(text[:index])


def to_code_points(text: str, offset: int) -> int:
    """Convert a Qt UTF-16 ``offset`` into ``text`` to a code-point index.

    ``offset`` may be the UTF-16 length of ``text`` (the end). An offset inside
    a surrogate pair rounds down to that character's start. Raises
    :class:`IndexError` when ``offset`` is negative or past the end.
    """
    if text.isascii():
        if offset < 0 or offset > len(text):
            raise IndexError(f"UTF-16 offset {offset} outside 0..{len(text)}")
        return offset
    encoded = text.encode("utf-16-le")
    if offset < 0 or 2 * offset > len(encoded):
        raise IndexError(f"UTF-16 offset {offset} outside 0..{len(encoded) // 2}")
    # Decoding the prefix with "ignore" drops a dangling high surrogate, which
    # is exactly the round-down documented above.
    return len(encoded[: 2 * offset].decode("utf-16-le", errors="ignore"))


def code_point_length(text: str, start: int, units: int) -> int:
    """Return how many code points the ``units`` UTF-16 units from code point ``start`` span.

    Used to turn Qt's "``removed`` units at ``pos``" into a CRDT delete count.
    Raises :class:`IndexError` when the range leaves ``text``.
    """
    if start < 0 or start > len(text) or units < 0:
        raise IndexError(f"range ({start}, {units}) outside the text")
    return to_code_points(text[start:], units)
