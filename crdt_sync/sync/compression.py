"""Pluggable compression of message bodies.

A :class:`Compressor` has a wire ``name`` (announced in the handshake), and turns
bytes into bytes both ways. Decompression is bounded: it never produces more than
``max_size`` bytes, so a small hostile frame cannot expand into gigabytes (a "zip
bomb"); it raises :class:`MessageTooLarge` instead. Corrupt input raises
:class:`DecompressionError`, never a ``zlib.error``.

Both ends must use the same compressor; the handshake checks the names and a
mismatch is refused with ``UNSUPPORTED_COMPRESSION`` (see ``docs/protocol.md``).
"""

from __future__ import annotations

import zlib
from typing import Protocol, runtime_checkable

from crdt_sync.codec import inflate
from crdt_sync.exceptions import DecodeError, TooLargeError

from .exceptions import DecompressionError, MessageTooLarge

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "Compressor",
    "GzipCompressor",
    "NoCompression",
    "compressor_for_name",
]

DEFAULT_MAX_DECOMPRESSED_SIZE = 64 * 1024 * 1024
"""Default bound on a decompressed body (64 MiB)."""

# wbits for zlib: 16 + MAX_WBITS selects the gzip container (RFC 1952).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Decompress in slices so the bound is enforced before memory is spent.


@runtime_checkable
class Compressor(Protocol):
    """Compression of message bodies. ``name`` is ASCII, at most 32 bytes."""

    @property
    def name(self) -> str:
        """The name announced in the handshake (``"none"``, ``"gzip"``, ...)."""
        ...

    def compress(self, data: bytes) -> bytes:
        """Compress ``data``; must never fail for any input."""
        ...

    def decompress(self, data: bytes, max_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE) -> bytes:
        """Inverse of :meth:`compress`.

        Raises :class:`DecompressionError` when ``data`` is not valid output of
        :meth:`compress`, and :class:`MessageTooLarge` when the result would exceed
        ``max_size`` bytes.
        """
        ...


class NoCompression:
    """The identity compressor (wire name ``"none"``)."""

    @property
    def name(self) -> str:
        return "none"

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes, max_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE) -> bytes:
        if len(data) > max_size:
            raise MessageTooLarge(len(data), max_size, "body")
        return bytes(data)

    def __repr__(self) -> str:
        return "NoCompression()"


class GzipCompressor:
    """gzip (RFC 1952, DEFLATE) compression (wire name ``"gzip"``)."""

    def __init__(self, level: int = 6) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"gzip level must be 0..9, not {level}")
        self._level = level

    @property
    def name(self) -> str:
        return "gzip"

    def compress(self, data: bytes) -> bytes:
        compressor = zlib.compressobj(self._level, zlib.DEFLATED, _GZIP_WBITS)
        return compressor.compress(data) + compressor.flush()

    def decompress(self, data: bytes, max_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE) -> bytes:
        # The package's one bounded inflate (crdt_sync.codec.inflate), gzip container.
        try:
            return inflate(bytes(data), -1, max_size, _GZIP_WBITS)
        except TooLargeError:
            raise MessageTooLarge(max_size + 1, max_size, "decompressed body") from None
        except DecodeError as exc:
            raise DecompressionError(f"corrupt gzip data: {exc.detail}") from None

    def __repr__(self) -> str:
        return f"GzipCompressor(level={self._level})"


def compressor_for_name(name: str) -> Compressor:
    """The built-in compressor called ``name``; ``ValueError`` for an unknown name."""
    if name == "none":
        return NoCompression()
    if name == "gzip":
        return GzipCompressor()
    raise ValueError(f"unknown compression {name!r}; built in: 'none', 'gzip'")
