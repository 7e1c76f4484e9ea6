"""Wire codec: round trips of every message, and hostile bytes only raise typed errors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTTextHandler,
    DecodeError,
    Snapshot,
    VersionVector,
)
from crdt_sync.sync import (
    Ack,
    AwarenessQuery,
    AwarenessState,
    AwarenessUpdate,
    Changes,
    DecompressionError,
    DocumentStatus,
    DocumentStatusRequest,
    Error,
    ErrorCode,
    GzipCompressor,
    HandshakeRequest,
    HandshakeResponse,
    Message,
    MessageDecodeError,
    MessageTooLarge,
    MessageType,
    NoCompression,
    Ping,
    Pong,
    RemoteProtocolError,
    Role,
    UnknownMessageType,
    UnsupportedProtocolVersion,
    decode_message,
    encode_message,
)
from crdt_sync.sync.messages import SnapshotUpload, encode_ack_frame, peek_message_type


def sample_changes() -> tuple[Change, ...]:
    doc = CRDTDocument()
    changes: list[Change] = []
    doc.on_change(changes.append)
    text = CRDTTextHandler(doc, "t")
    text.insert(0, "héllo 𝄞 wörld")
    text.delete(2, 3)
    CRDTListHandler(doc, "l").append({"done": False, "title": "ünïcode ✓"})
    return tuple(changes)


def sample_messages() -> list[Message]:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "snapshot text 🎉")
    vv = VersionVector({"peer-a": 3, "peer-ü": 2**40})
    changes = sample_changes()
    return [
        HandshakeRequest("doc/ü", "peer", vv, "Zoë 🎨", "tok", ("gzip", "none")),
        HandshakeRequest("d", "p", VersionVector(), compressions=()),
        HandshakeRequest("d", "p", VersionVector()),
        HandshakeResponse("session", vv, "epoch", changes),
        HandshakeResponse("session", vv, "epoch", changes, None, "gzip", Role.READ),
        HandshakeResponse("session", VersionVector(), "epoch", snapshot=doc.take_snapshot()),
        Changes(changes),
        Changes(()),
        Ack(vv),
        DocumentStatusRequest(vv),
        DocumentStatus(vv, changes),
        DocumentStatus(VersionVector(), snapshot=doc.take_snapshot()),
        Ping(2**62, 1_700_000_000_000),
        Pong(0, 0),
        SnapshotUpload(doc.take_snapshot()),
        SnapshotUpload(CRDTDocument().take_snapshot()),
        AwarenessUpdate("peer", 5, {"name": "Å", "cursor": {"anchor": [1, 2]}, "x": 1.5}),
        AwarenessUpdate("peer", 6, None),
        AwarenessQuery(),
        AwarenessState((AwarenessUpdate("a", 1, {}), AwarenessUpdate("b", 2, None))),
        AwarenessState(),
        Error(ErrorCode.OUT_OF_SYNC, "missing ✗"),
    ]


def equivalent(a: Message, b: Message) -> bool:
    """Equality, comparing snapshots by their encoding (snapshots need not define ==)."""
    if isinstance(a, HandshakeResponse | DocumentStatus) and type(a) is type(b):
        assert isinstance(b, HandshakeResponse | DocumentStatus)
        sa = a.snapshot.to_bytes() if a.snapshot else None
        sb = b.snapshot.to_bytes() if b.snapshot else None
        return sa == sb and a.changes == b.changes and a.version_vector == b.version_vector
    return a == b


@pytest.mark.parametrize("compressor", [None, NoCompression(), GzipCompressor()])
@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message, compressor: object) -> None:
    frame = encode_message(message, compressor)  # type: ignore[arg-type]
    assert frame[:2] == b"CS" and frame[2] == 1 and frame[3] == message.TYPE
    assert peek_message_type(frame) is message.TYPE
    decoded = decode_message(frame, compressor)  # type: ignore[arg-type]
    assert type(decoded) is type(message)
    assert equivalent(decoded, message)


def test_large_bodies_are_compressed_and_small_ones_are_not() -> None:
    big = Changes(tuple(sample_changes()) * 20)
    assert encode_message(big, GzipCompressor())[4] == 1
    assert len(encode_message(big, GzipCompressor())) < len(encode_message(big))
    assert encode_message(Ping(1, 2), GzipCompressor())[4] == 0


def test_handshake_and_error_frames_are_never_compressed() -> None:
    request = HandshakeRequest("d" * 200, "p" * 200, VersionVector(), "n" * 900)
    assert encode_message(request, GzipCompressor())[4] == 0
    assert encode_message(Error(ErrorCode.INTERNAL_ERROR, "e" * 5000), GzipCompressor())[4] == 0


def test_compressed_frame_needs_negotiated_compression() -> None:
    frame = encode_message(Changes(sample_changes() * 20), GzipCompressor())
    with pytest.raises(DecompressionError, match="no compression was negotiated"):
        decode_message(frame)
    with pytest.raises(DecompressionError):
        decode_message(frame, NoCompression())


def test_compressed_handshake_is_rejected() -> None:
    frame = b"CS\x01\x01\x01" + GzipCompressor().compress(b"\x01")
    with pytest.raises(DecompressionError):
        decode_message(frame, GzipCompressor())


def test_unsupported_frame_format_and_protocol_versions() -> None:
    frame = bytearray(encode_message(Ping(1, 1)))
    frame[2] = 2
    with pytest.raises(UnsupportedProtocolVersion) as info:
        decode_message(bytes(frame))
    assert info.value.code is ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    request = encode_message(HandshakeRequest("d", "p", VersionVector(), protocol_version=7))
    with pytest.raises(UnsupportedProtocolVersion) as info:
        decode_message(request)
    assert info.value.version == 7 and "7" in str(info.value)


def test_unknown_type_and_flags() -> None:
    with pytest.raises(UnknownMessageType) as info:
        decode_message(b"CS\x01\x42\x00")
    assert info.value.type_code == 0x42 and info.value.code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(MessageDecodeError, match="flags"):
        decode_message(b"CS\x01\x11\x02")


def test_frame_over_the_limit_is_too_large() -> None:
    frame = encode_message(Changes(sample_changes()))
    with pytest.raises(MessageTooLarge) as info:
        decode_message(frame, max_size=len(frame) - 1)
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE


def test_decompression_bomb_is_too_large() -> None:
    body = b"\x00" * 5_000_000
    bomb = b"CS\x01\x11\x01" + GzipCompressor().compress(body)
    assert len(bomb) < 10_000
    with pytest.raises(MessageTooLarge):
        decode_message(bomb, GzipCompressor(), max_size=1_000_000)


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(MessageDecodeError, match="trailing"):
        decode_message(encode_message(Ping(1, 2)) + b"\x00")


def test_errors_are_decode_errors_with_offsets() -> None:
    frame = encode_message(HandshakeRequest("doc", "peer", VersionVector()))
    with pytest.raises(MessageDecodeError) as info:
        decode_message(frame[:-3])
    assert isinstance(info.value, DecodeError)
    assert 5 <= info.value.offset <= len(frame)


def test_bad_utf8_and_bad_json_are_rejected() -> None:
    bad_text = b"CS\x01\x10\x00" + b"\x02\xff\xfe" + b"\x01\x00"
    with pytest.raises(MessageDecodeError, match="UTF-8"):
        decode_message(bad_text)
    not_object = b"CS\x01\x10\x00" + b"\x01p" + b"\x01" + b"\x01" + b"\x03[1]"
    with pytest.raises(MessageDecodeError, match="JSON object"):
        decode_message(not_object)
    nan = b"CS\x01\x10\x00" + b"\x01p" + b"\x01" + b"\x01" + b'\x09{"a":NaN}'
    with pytest.raises(MessageDecodeError):
        decode_message(nan)


def test_duplicate_version_vector_peer_is_rejected() -> None:
    body = b"\x02" + b"\x01a\x01" + b"\x01a\x02"
    with pytest.raises(MessageDecodeError, match="twice"):
        decode_message(b"CS\x01\x04\x00" + body)


def test_unknown_error_code_decodes_as_internal_error() -> None:
    frame = b"CS\x01\x7f\x00" + b"\x63" + b"\x02hi"
    assert decode_message(frame) == Error(ErrorCode.INTERNAL_ERROR, "hi")


def test_snapshot_upload_layout_is_type_9_with_the_snapshot_bytes() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "ünï 🎉")
    CRDTListHandler(doc, "l").append([1, {"a": None}])
    snapshot = doc.take_snapshot()
    data = snapshot.to_bytes()
    frame = encode_message(SnapshotUpload(snapshot))
    # Header, then the snapshot as `bytes`: a varint length and the encoded snapshot.
    assert frame[:5] == b"CS\x01\x09\x00"
    assert int(MessageType.SNAPSHOT_UPLOAD) == 0x09
    assert frame[5:].endswith(data) and len(frame) == 5 + _varint_size(len(data)) + len(data)
    decoded = decode_message(frame)
    assert isinstance(decoded, SnapshotUpload)
    assert decoded.snapshot.version_vector == doc.version_vector
    assert CRDTDocument.from_snapshot(decoded.snapshot).get_value("t") == "ünï 🎉"


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def test_snapshot_upload_with_bad_snapshot_bytes_is_a_typed_decode_error() -> None:
    good = CRDTDocument().take_snapshot().to_bytes()
    for junk in (b"", b"\x00", good[:-1], b"XX" + good[2:]):
        frame = b"CS\x01\x09\x00" + bytes([len(junk)]) + junk
        with pytest.raises(MessageDecodeError, match="uploaded snapshot") as info:
            decode_message(frame)
        assert isinstance(info.value, DecodeError) and info.value.code is ErrorCode.INVALID_MESSAGE
    # A length that runs past the frame is refused before anything is allocated.
    with pytest.raises(MessageDecodeError):
        decode_message(b"CS\x01\x09\x00" + b"\xff\xff\xff\xff\x0f" + good)


def test_snapshot_upload_respects_the_frame_and_decompression_bounds() -> None:
    doc = CRDTDocument()
    CRDTTextHandler(doc, "t").insert(0, "x" * 50_000)
    message = SnapshotUpload(doc.take_snapshot())
    plain = encode_message(message)
    with pytest.raises(MessageTooLarge):
        decode_message(plain, max_size=len(plain) - 1)
    packed = encode_message(message, GzipCompressor())
    assert packed[4] == 1 and len(packed) < len(plain)
    with pytest.raises(MessageTooLarge):  # small on the wire, too big once inflated
        decode_message(packed, GzipCompressor(), max_size=len(plain) - 10)
    # The snapshot format's own compression is bounded by the same limit: its
    # 50,000 characters do not fit in a bound the frame itself fits in.
    with pytest.raises(MessageDecodeError, match="inflates beyond"):
        decode_message(packed, GzipCompressor(), max_size=len(plain))
    decoded = decode_message(packed, GzipCompressor(), max_size=100_000)
    assert isinstance(decoded, SnapshotUpload) and decoded.snapshot == message.snapshot


def test_the_change_formats_own_compression_is_bounded_by_the_frame_bound() -> None:
    doc = CRDTDocument()
    made: list[Change] = []
    doc.on_change(made.append)
    CRDTTextHandler(doc, "t").insert(0, "y" * 200_000)
    frame = encode_message(Changes(tuple(made)))
    assert len(frame) < 10_000  # the change format compressed it
    with pytest.raises(MessageDecodeError, match="inflates beyond"):
        decode_message(frame, max_size=100_000)
    decoded = decode_message(frame, max_size=300_000)
    assert isinstance(decoded, Changes) and decoded.changes == tuple(made)


def test_snapshot_upload_needs_a_snapshot() -> None:
    with pytest.raises(TypeError):
        encode_message(SnapshotUpload(b"not a snapshot"))  # type: ignore[arg-type]


def test_encode_refuses_out_of_bounds_fields() -> None:
    with pytest.raises(ValueError):
        encode_message(HandshakeRequest("d" * 1000, "p", VersionVector()))
    with pytest.raises(ValueError):
        encode_message(Ping(-1, 0))
    with pytest.raises(ValueError):
        HandshakeResponse(
            "s", VersionVector(), "e", sample_changes(), CRDTDocument().take_snapshot()
        )


# --------------------------------------------------------------------------- fuzzing

FRAMES = [encode_message(m) for m in sample_messages()] + [
    encode_message(m, GzipCompressor()) for m in sample_messages()
]


def _decode_only_typed(data: bytes) -> None:
    for compressor in (None, GzipCompressor()):
        with contextlib.suppress(RemoteProtocolError):
            decode_message(data, compressor, max_size=1 << 20)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(FRAMES), st.data())
def test_truncations_only_raise_typed_errors(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, max(0, len(frame) - 1)))
    with pytest.raises(RemoteProtocolError):
        decode_message(frame[:cut], GzipCompressor())


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.sampled_from(FRAMES), st.data())
def test_bit_flips_only_raise_typed_errors(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] ^= 1 << data.draw(st.integers(0, 7))
    _decode_only_typed(bytes(mutated))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_typed_errors(data: bytes) -> None:
    _decode_only_typed(data)
    for kind in MessageType:
        for flags in (0, 1):
            _decode_only_typed(bytes([0x43, 0x53, 1, kind, flags]) + data)


@pytest.mark.slow
# 20,000 examples take minutes on a busy 2-core machine: the suite-wide 120 s
# guard against hangs would cut the run short, not find a hang.
@pytest.mark.timeout(900)
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FRAMES), st.binary(max_size=64), st.integers(0, 10_000))
def test_long_fuzz_splices(frame: bytes, junk: bytes, position: int) -> None:
    at = position % (len(frame) + 1)
    _decode_only_typed(frame[:at] + junk + frame[at:])


_text = st.text(max_size=30)
# A peer id is never empty; canonical UUIDs take the 16-byte form on the wire.
_peer = st.text(min_size=1, max_size=30) | st.uuids().map(str)
_vv = st.dictionaries(
    st.text(min_size=1, max_size=40) | st.uuids().map(str), st.integers(1, 2**63 - 1), max_size=5
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_state = st.none() | st.dictionaries(st.text(max_size=8), _json, max_size=4)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    """A snapshot of a document edited by a few generated operations."""
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    items = CRDTListHandler(doc, "l")
    for value in draw(st.lists(st.text(max_size=8), max_size=6)):
        text.insert(draw(st.integers(0, len(text))), value)
        if len(text) and draw(st.booleans()):
            text.delete(draw(st.integers(0, len(text) - 1)), 1)
        items.append(value)
    return doc.take_snapshot()


@settings(max_examples=50, deadline=None, derandomize=True)
@given(snapshots(), st.sampled_from([None, GzipCompressor()]))
def test_generated_snapshot_uploads_round_trip(snapshot: Snapshot, compressor: object) -> None:
    frame = encode_message(SnapshotUpload(snapshot), compressor)  # type: ignore[arg-type]
    decoded = decode_message(frame, compressor)  # type: ignore[arg-type]
    assert decoded == SnapshotUpload(snapshot)
    assert isinstance(decoded, SnapshotUpload)
    assert decoded.snapshot.version_vector == snapshot.version_vector


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.one_of(
        st.builds(
            HandshakeRequest,
            _text,
            _peer,
            _vv.map(VersionVector),
            _text,
            st.none() | _text,
            st.lists(_text, max_size=4).map(tuple),
        ),
        st.builds(Ack, _vv.map(VersionVector)),
        st.builds(Ping, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
        st.builds(AwarenessUpdate, _peer, st.integers(0, 2**63 - 1), _state),
        st.builds(Error, st.sampled_from(list(ErrorCode)), _text),
    )
)
def test_generated_messages_round_trip(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.none() | _peer,
    st.integers(0, 2**63 - 1),
    st.sampled_from([None, NoCompression(), GzipCompressor()]),
)
def test_ack_frame_of_one_peer_is_the_ack_message(
    peer: str | None, counter: int, compressor: object
) -> None:
    vv = VersionVector({peer: counter}) if peer is not None else VersionVector()
    expected = encode_message(Ack(vv), compressor)  # type: ignore[arg-type]
    assert encode_ack_frame(peer, counter, compressor) == expected  # type: ignore[arg-type]


def test_ack_frames_of_a_peer_reuse_its_prefix() -> None:
    # The second frame of a peer comes from the cached prefix; a long peer id
    # (whose Ack may be compressed) is never cached.
    for peer in ("00000000-0000-4000-8000-0000000000aa", "p" * 200):
        for counter in (1, 127, 128, 2**63 - 1):
            for _ in range(2):
                expected = encode_message(Ack(VersionVector({peer: counter})), GzipCompressor())
                assert encode_ack_frame(peer, counter, GzipCompressor()) == expected
        for bad in (-1, 2**63):
            with pytest.raises(ValueError):
                encode_ack_frame(peer, bad)
