"""Compressors: round trips, typed errors on garbage, bounded output."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdt_sync.sync import (
    Compressor,
    DecompressionError,
    GzipCompressor,
    MessageTooLarge,
    NoCompression,
    compressor_for_name,
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=5000))
def test_round_trip(data: bytes) -> None:
    for compressor in (NoCompression(), GzipCompressor(), GzipCompressor(level=1)):
        assert compressor.decompress(compressor.compress(data)) == data


def test_gzip_shrinks_repetitive_data_and_is_real_gzip() -> None:
    import gzip

    data = b"the same sentence again. " * 400
    packed = GzipCompressor().compress(data)
    assert len(packed) < len(data) // 10
    assert gzip.decompress(packed) == data  # interoperable with any gzip reader


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_gzip_garbage_raises_only_decompression_error(data: bytes) -> None:
    with pytest.raises(DecompressionError):
        GzipCompressor().decompress(data)


def test_truncated_and_trailing_gzip_are_rejected() -> None:
    packed = GzipCompressor().compress(b"x" * 1000)
    for cut in (1, 10, len(packed) - 1):
        with pytest.raises(DecompressionError):
            GzipCompressor().decompress(packed[:cut])
    with pytest.raises(DecompressionError, match="trailing"):
        GzipCompressor().decompress(packed + packed)


def test_decompressed_size_is_bounded() -> None:
    bomb = GzipCompressor().compress(b"\x00" * 10_000_000)
    with pytest.raises(MessageTooLarge) as info:
        GzipCompressor().decompress(bomb, max_size=4096)
    assert info.value.limit == 4096
    assert GzipCompressor().decompress(GzipCompressor().compress(b"a" * 4096), 4096) == b"a" * 4096
    with pytest.raises(MessageTooLarge):
        NoCompression().decompress(b"a" * 10, max_size=9)


def test_names_and_lookup() -> None:
    assert compressor_for_name("none").name == "none"
    assert compressor_for_name("gzip").name == "gzip"
    assert isinstance(GzipCompressor(), Compressor)
    with pytest.raises(ValueError, match="brotli"):
        compressor_for_name("brotli")
    with pytest.raises(ValueError):
        GzipCompressor(level=11)
