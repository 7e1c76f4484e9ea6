"""Exceptions raised by :mod:`crdt_sync`.

The tree::

    CRDTError                      base of everything this package raises on purpose
    ├── DecodeError                malformed, truncated or hostile bytes (carries .offset)
    │   └── TooLargeError          data that decodes past the size bound it was given
    ├── InvalidChangeError         a decoded change that cannot be applied (bad references,
    │                              overlapping op ids, kind mismatch); nothing of it is applied
    ├── PendingBufferFullError     too many changes wait for missing dependencies
    ├── HistoryCompactedError      the history asked for was dropped by compact()
    └── HandlerError               a (name, kind) already has a handler, or a name
                                   given without its kind names several objects

Bad arguments to the public API raise what Python containers raise: ``IndexError``,
``ValueError`` and ``TypeError``.
"""

from __future__ import annotations


class CRDTError(Exception):
    """Base class of the errors :mod:`crdt_sync` raises on purpose."""


class DecodeError(CRDTError):
    """Bytes could not be decoded. ``offset`` is where decoding stopped (or -1)."""

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(f"{message} (at byte {offset})" if offset >= 0 else message)
        self.offset = offset
        self.detail = message


class TooLargeError(DecodeError):
    """Data decodes (inflates) past the size bound it was given."""


class InvalidChangeError(CRDTError):
    """A change is well-formed bytes but cannot be applied to this document."""


class PendingBufferFullError(CRDTError):
    """The bounded buffer of changes waiting for their dependencies is full.

    ``applied`` is how many changes of the call were applied before it filled up.
    """

    def __init__(self, message: str, applied: int) -> None:
        super().__init__(message)
        self.applied = applied


class HistoryCompactedError(CRDTError):
    """The changes asked for were dropped by :meth:`CRDTDocument.compact`."""


class HandlerError(CRDTError):
    """A name and kind already have another handler, or a name is ambiguous without its kind."""
