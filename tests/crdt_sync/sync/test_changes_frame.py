"""encode_changes_frame: a Changes frame around changes encoded once, for store and relay."""

from __future__ import annotations

import pytest

from crdt_sync import CRDTDocument, CRDTTextHandler, encode_changes
from crdt_sync.sync import Changes, GzipCompressor, NoCompression, decode_message, encode_message
from crdt_sync.sync.compression import Compressor
from crdt_sync.sync.messages import encode_changes_frame


@pytest.mark.parametrize("compressor", [None, NoCompression(), GzipCompressor()])
@pytest.mark.parametrize("length", [1, 400])
def test_the_frame_equals_encoding_the_message(compressor: Compressor | None, length: int) -> None:
    document = CRDTDocument()
    made = []
    document.on_change(made.append)
    CRDTTextHandler(document, "text").insert(0, "x" * length)
    frame = encode_changes_frame(encode_changes(made), compressor)
    assert frame == encode_message(Changes(tuple(made)), compressor)
    decoded = decode_message(frame, compressor)
    assert isinstance(decoded, Changes) and list(decoded.changes) == made
