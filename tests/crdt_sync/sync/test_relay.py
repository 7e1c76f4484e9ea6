"""Relay frames of protocol version 4 (``crdt_sync/sync/relay.py``): records whose ids
are references into a per-document dictionary, resolved by the receiving connection."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    VersionVector,
    decode_changes,
    encode_changes,
)
from crdt_sync import changes as changes_module
from crdt_sync.changes import TEXT_INSERT
from crdt_sync.codec import inflate
from crdt_sync.exceptions import DecodeError
from crdt_sync.sync import (
    Changes,
    ClientProtocol,
    Dictionary,
    DictionaryError,
    DocumentStatus,
    ErrorCode,
    HandshakeRequest,
    HandshakeResponse,
    MessageDecodeError,
    Relay,
    UnsupportedProtocolVersion,
    decode_message,
    encode_message,
)
from crdt_sync.sync.events import ChangesReceived, ErrorOccurred
from crdt_sync.sync.messages import encode_dictionary_frame, encode_relay_frame
from crdt_sync.sync.relay import (
    MAX_DELTA_ENTRIES,
    MAX_ENTRIES,
    MAX_ENTRY_BYTES,
    MAX_SPLIT_CHANGES,
    RECORD_BATCH,
    RECORD_CHANGE,
    RECORD_INSERT,
    RelayDictionary,
    decode_relay,
    encode_records,
    time_base,
)

BOUND = 1 << 24


def session_changes(seed: int, peers: int = 3, rounds: int = 6) -> list[list[Change]]:
    """Batches of several replicas editing text, a list and a map at random places,
    each replica seeing the others' earlier batches (so origins name other peers)."""
    rng = random.Random(seed)
    docs = [CRDTDocument() for _ in range(peers)]
    made: list[list[Change]] = [[] for _ in range(peers)]
    for doc, box in zip(docs, made, strict=True):
        doc.on_change(box.append)
    handlers = [
        (CRDTTextHandler(d, "text"), CRDTListHandler(d, "items"), CRDTMapHandler(d, "métadonnées"))
        for d in docs
    ]
    batches: list[list[Change]] = []
    for _ in range(rounds):
        for index, (text, items, meta) in enumerate(handlers):
            for _ in range(rng.randint(1, 4)):
                roll = rng.random()
                if roll < 0.5 or not text.value:
                    text.insert(
                        rng.randint(0, len(text.value)), rng.choice(["a", "é", "😀", "xyz"])
                    )
                elif roll < 0.65:
                    text.delete(rng.randrange(len(text.value)), 1)
                elif roll < 0.85:
                    items.insert(rng.randint(0, len(items)), {"n": rng.randint(0, 9)})
                else:
                    meta.set(rng.choice("ab"), [rng.random()])
            batch, made[index][:] = list(made[index]), []
            batches.append(batch)
        for doc in docs:
            for batch in batches[-peers:]:
                doc.import_changes(batch)
    return batches


def relay_frame(batches: list[list[Change]], dictionary: RelayDictionary) -> bytes:
    """One Relay frame holding ``batches``, as a server's flush makes it."""
    base = time_base(batches)
    parts, count = [], 0
    for batch in batches:
        part, n = encode_records(batch, encode_changes(batch), dictionary, base)
        parts.append(part)
        count += n
    return encode_relay_frame(count, base, parts)


def round_trip(batches: list[list[Change]], dictionary: RelayDictionary) -> tuple[Change, ...]:
    message = decode_message(relay_frame(batches, dictionary))
    assert isinstance(message, Relay)
    return decode_relay(message.body, list(dictionary.entries), BOUND)


@pytest.mark.parametrize("seed", range(4))
def test_records_round_trip_every_kind_of_change(seed: int) -> None:
    batches = session_changes(seed)
    dictionary = RelayDictionary()
    assert round_trip(batches, dictionary) == tuple(c for b in batches for c in b)
    # Every peer and handler name was entered once, in the order first relayed.
    assert len(dictionary.entries) == len(set(dictionary.entries))
    assert {"text", "items", "métadonnées"} <= set(dictionary.entries)


def test_a_full_dictionary_or_a_long_name_falls_back_to_literal_ids() -> None:
    batches = session_changes(7)
    for limit in (0, 1):
        dictionary = RelayDictionary(limit)
        assert round_trip(batches, dictionary) == tuple(c for b in batches for c in b)
        assert len(dictionary.entries) == limit
    doc = CRDTDocument()
    long_name = "n" * (MAX_ENTRY_BYTES + 1)
    CRDTTextHandler(doc, long_name).insert(0, "hi")
    changes = doc.export_changes(VersionVector())
    dictionary = RelayDictionary()
    assert round_trip([changes], dictionary) == tuple(changes)
    assert long_name not in dictionary.entries


def test_a_typical_relayed_insert_is_small() -> None:
    # Three peers typing at random places: each insert names up to three of them.
    batches = session_changes(3, peers=3, rounds=10)
    inserts = [b for b in batches[-6:] if len(b) == 1 and b[0].ops[0][0] == 1]
    assert inserts
    dictionary = RelayDictionary()
    round_trip(batches, dictionary)  # every id entered
    for batch in inserts:
        part, _ = encode_records(batch, encode_changes(batch), dictionary, time_base([batch]))
        assert len(part) < 30 and len(relay_frame([batch], dictionary)) + 2 < 40
        assert len(encode_changes(batch)) > 80


def test_a_long_batch_goes_as_one_batch_record_as_it_came() -> None:
    doc = CRDTDocument()
    made: list[Change] = []
    doc.on_change(made.append)
    text = CRDTTextHandler(doc, "text")
    for index in range(MAX_SPLIT_CHANGES + 5):
        text.insert(index, "x")
    encoded = encode_changes(made)
    part, count = encode_records(made, encoded, RelayDictionary(), 0)
    assert count == 1 and part[0] == RECORD_BATCH and encoded in part
    assert time_base([made]) == 0  # no one-change record: no base needed
    assert decode_relay(bytes([1, 0]) + part, [], BOUND) == tuple(made)


def _typed(count: int, compress: bool) -> tuple[list[Change], bytes, int]:
    """``count`` keystrokes of one peer, their batch record (a change batch as it
    came) and the size of that batch's body decoded (inflated, if compressed)."""
    doc = CRDTDocument()
    made: list[Change] = []
    doc.on_change(made.append)
    text = CRDTTextHandler(doc, "text")
    for index in range(count):
        text.insert(index, "abcdefgh"[index % 8])
    encoded = encode_changes(made, compress)
    part, records = encode_records(made, encoded, RelayDictionary(), 0)
    assert records == 1 and part[0] == RECORD_BATCH
    # docs/encoding.md: 4 bytes of magic, a version byte, a flags byte (bit 0: zlib).
    assert encoded[5] == (1 if compress else 0)
    size = len(zlib.decompress(encoded[6:])) if compress else len(encoded) - 6
    return made, part, size


@pytest.mark.parametrize(
    ("compress", "over"), [(True, "inflates beyond"), (False, "exceed the limit")]
)
def test_the_batch_records_of_a_relay_share_one_size_bound(compress: bool, over: str) -> None:
    made, part, size = _typed(400, compress)
    one = bytes([1, 0]) + part
    two = bytes([2, 0]) + part + part  # the same batch twice (a duplicate: harmless)
    assert decode_relay(one, [], size) == tuple(made)
    with pytest.raises(DecodeError, match=over):
        decode_relay(one, [], size - 1)
    assert decode_relay(two, [], 2 * size) == tuple(made) * 2
    # Each batch is within the bound alone; together they are not.
    assert decode_relay(one, [], 2 * size - 1) == tuple(made)
    with pytest.raises(DecodeError, match=over):
        decode_relay(two, [], 2 * size - 1)


def test_a_compressed_batch_record_is_inflated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    made, part, _ = _typed(400, True)
    calls: list[int] = []

    def counting(data: bytes, offset: int = -1, limit: int = 1 << 30, wbits: int = 15) -> bytes:
        calls.append(len(data))
        return inflate(data, offset, limit, wbits)

    monkeypatch.setattr(changes_module, "inflate", counting)
    assert decode_relay(bytes([1, 0]) + part, [], BOUND) == tuple(made)
    assert len(calls) == 1


def test_a_reference_to_an_entry_never_sent_is_a_typed_error() -> None:
    batches = session_changes(1)
    dictionary = RelayDictionary()
    body = relay_frame([batches[0]], dictionary)[5:]
    assert decode_relay(body, dictionary.entries, BOUND)
    with pytest.raises(DictionaryError, match="were sent on this connection"):
        decode_relay(body, dictionary.entries[:-1], BOUND)
    assert issubclass(DictionaryError, MessageDecodeError)
    assert DictionaryError("x").code is ErrorCode.INVALID_MESSAGE


def test_dictionary_frames_round_trip_and_reject_bad_deltas() -> None:
    peer = str(CRDTDocument().peer_id)
    frame = encode_dictionary_frame(3, [peer, "text", "ü"])
    assert decode_message(frame) == Dictionary(3, (peer, "text", "ü"))
    assert len(frame) == 5 + 2 + 17 + 5 + 3  # a UUID entry takes 17 bytes
    assert encode_message(Dictionary(3, (peer, "text", "ü"))) == frame
    with pytest.raises(ValueError):
        encode_dictionary_frame(0, [])
    with pytest.raises(ValueError):
        encode_dictionary_frame(0, ["x" * (MAX_ENTRY_BYTES + 1)])
    empty = b"CS\x01\x15\x00\x00\x00"
    with pytest.raises(MessageDecodeError, match="empty"):
        decode_message(empty)
    too_long = b"CS\x01\x15\x00\x00\x01" + bytes([MAX_ENTRY_BYTES + 1]) + b"x" * 65
    with pytest.raises(MessageDecodeError, match="dictionary entry"):
        decode_message(too_long)
    far = b"CS\x01\x15\x00" + bytes([0x81, 0x80, 0x04]) + b"\x01\x01x"  # first = 65,537
    with pytest.raises(MessageDecodeError, match="first index"):
        decode_message(far)


# ----------------------------------------------------------------- the client side


def connected() -> ClientProtocol:
    protocol = ClientProtocol(CRDTDocument(document_id="doc"), document_id="doc")
    protocol.send_handshake()
    protocol.messages_to_send()
    protocol.receive_message(
        encode_message(HandshakeResponse("s", VersionVector(), "epoch", compression="none"))
    )
    protocol.messages_to_send()
    protocol.events_received()
    return protocol


def test_a_client_resolves_relays_against_the_deltas_it_was_sent() -> None:
    batches = session_changes(2)
    dictionary = RelayDictionary()
    protocol = connected()
    sent = 0
    for batch in batches:
        frame = relay_frame([batch], dictionary)
        if sent < len(dictionary):
            protocol.receive_message(encode_dictionary_frame(sent, dictionary.entries[sent:]))
            sent = len(dictionary)
        protocol.receive_message(frame)
    events = protocol.events_received()
    assert all(isinstance(e, ChangesReceived) for e in events)
    assert protocol.dictionary == dictionary.entries
    expected = CRDTDocument()
    for batch in batches:
        expected.import_changes(batch)
    assert protocol.document.version_vector == expected.version_vector
    assert CRDTTextHandler(protocol.document, "text").value == (
        CRDTTextHandler(expected, "text").value
    )
    # Its history holds full ids: the export decodes in a replica that never
    # saw a dictionary, and no reference survives in it.
    exported = protocol.document.binary_export_changes(VersionVector())
    fresh = CRDTDocument()
    fresh.binary_import_changes(exported)
    assert fresh.version_vector == expected.version_vector
    assert set(decode_changes(exported)) == {c for b in batches for c in b}


@pytest.mark.parametrize("frame", ["relayed batch", "handshake answer", "document status"])
def test_a_client_imports_long_batches_by_runs_building_no_change(
    changes_built: list[int], segment_imports: list[int], frame: str
) -> None:
    # Another client's offline work, relayed as one batch record, or what a
    # handshake answer or a document status carries: decoded and checked, then
    # applied from its segments, with no Change built (the events say how many).
    author = CRDTDocument()
    text = CRDTTextHandler(author, "text")
    for index in range(3 * MAX_SPLIT_CHANGES):
        text.insert(index, "xy"[index % 2])
    text.delete(5, 20)
    changes = author.export_changes()
    protocol = ClientProtocol(CRDTDocument(document_id="doc"), document_id="doc")
    protocol.send_handshake()
    protocol.messages_to_send()
    if frame == "handshake answer":
        data = encode_message(HandshakeResponse("s", author.version_vector, "e", changes))
    else:
        protocol.receive_message(
            encode_message(HandshakeResponse("s", VersionVector(), "epoch", compression="none"))
        )
        protocol.events_received()
        if frame == "document status":
            data = encode_message(DocumentStatus(author.version_vector, changes))
        else:
            data = relay_frame([changes], RelayDictionary())
    built, calls = changes_built[0], len(segment_imports)
    protocol.receive_message(data)
    received = [e for e in protocol.events_received() if isinstance(e, ChangesReceived)]
    assert len(segment_imports) == calls + 1 and changes_built[0] == built
    assert [(e.count, e.applied) for e in received] == [(len(changes), len(changes))]
    assert CRDTTextHandler(protocol.document, "text").value == text.value
    assert protocol.document.version_vector == author.version_vector


@pytest.mark.parametrize(("first", "why"), [(2, "skips"), (0, "repeats")])
def test_a_delta_that_skips_or_repeats_indices_closes_the_connection(first: int, why: str) -> None:
    protocol = connected()
    protocol.receive_message(encode_dictionary_frame(0, ["a"]))
    protocol.receive_message(encode_dictionary_frame(first, ["b"]))
    (event,) = protocol.events_received()
    assert isinstance(event, ErrorOccurred) and event.code is ErrorCode.INVALID_MESSAGE
    assert why in event.message
    assert protocol.state.name == "CLOSED"


def test_a_delta_past_the_bound_and_a_relay_naming_an_unsent_entry_are_refused() -> None:
    protocol = connected()
    protocol.dictionary.extend(["x"] * (MAX_ENTRIES - 1))
    protocol.receive_message(encode_dictionary_frame(MAX_ENTRIES - 1, ["y", "z"]))
    (event,) = protocol.events_received()
    assert isinstance(event, ErrorOccurred) and "past" in event.message
    protocol = connected()
    batch = session_changes(0)[0]
    protocol.receive_message(relay_frame([batch], RelayDictionary()))  # no delta first
    (event,) = protocol.events_received()
    assert isinstance(event, ErrorOccurred) and event.code is ErrorCode.INVALID_MESSAGE
    assert "dictionary entry" in event.message
    assert protocol.document.version_vector == VersionVector()  # nothing applied


def test_a_version_3_client_is_refused_with_unsupported_protocol_version() -> None:
    old = encode_message(HandshakeRequest("doc", "p", VersionVector(), protocol_version=3))
    with pytest.raises(UnsupportedProtocolVersion) as info:
        decode_message(old)
    assert info.value.code is ErrorCode.UNSUPPORTED_PROTOCOL_VERSION
    assert "4" in info.value.message


# ----------------------------------------------------------------- hostile input


def _valid_bodies() -> list[tuple[bytes, list[str]]]:
    out = []
    for seed in range(3):
        batches = session_changes(seed, rounds=2)
        dictionary = RelayDictionary()
        body = relay_frame(batches, dictionary)[5:]
        out.append((body, list(dictionary.entries)))
    return out


_BODIES = _valid_bodies()


@st.composite
def mutated_relay(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    body, entries = draw(st.sampled_from(_BODIES))
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "entries"]))
        if action == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif action == "cut" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif action == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            entries = entries[: draw(st.integers(0, len(entries)))]
    return bytes(data), entries


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_relay())
def test_mutated_relays_decode_or_raise_decode_error_only(case: tuple[bytes, list[str]]) -> None:
    body, entries = case
    try:
        changes = decode_relay(body, entries, BOUND)
    except DecodeError:
        return
    for change in changes:
        assert isinstance(change, Change)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.text(min_size=1, max_size=8), max_size=4))
def test_random_relay_bytes_never_raise_anything_but_decode_error(
    body: bytes, entries: list[str]
) -> None:
    try:
        decode_relay(body, entries, BOUND)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_relay())
def test_a_client_never_raises_on_mutated_relays(case: tuple[bytes, list[str]]) -> None:
    body, entries = case
    protocol = connected()
    protocol.dictionary.extend(entries)
    protocol.receive_message(b"CS\x01\x16\x00" + body)
    for event in protocol.events_received():
        if isinstance(event, ErrorOccurred):
            assert event.code is ErrorCode.INVALID_MESSAGE
    assert isinstance(decode_message(b"CS\x01\x16\x00" + body), Relay)


def test_clients_never_send_relays_or_dictionaries_upstream() -> None:
    # They are server -> client only: a server refuses them (tests/server), and a
    # client's own Changes are format 3, self-contained.
    protocol = connected()
    document = protocol.document
    CRDTTextHandler(document, "text").insert(0, "mine")
    protocol.send_changes(document.export_changes(VersionVector()))
    (frame,) = protocol.messages_to_send()
    assert isinstance(decode_message(frame), Changes)


def test_a_long_delta_goes_in_frames_of_at_most_max_delta_entries_in_order() -> None:
    dictionary = RelayDictionary()
    for index in range(2 * MAX_DELTA_ENTRIES + 10):
        assert dictionary.number(f"name {index}") == index + 1
    frames = dictionary.deltas(5, encode_dictionary_frame)
    assert dictionary.deltas(5, encode_dictionary_frame) is frames  # made once
    deltas = [decode_message(frame) for frame in frames]
    assert [len(d.entries) for d in deltas if isinstance(d, Dictionary)] == [
        MAX_DELTA_ENTRIES,
        MAX_DELTA_ENTRIES,
        5,
    ]
    protocol = connected()
    protocol.dictionary.extend(dictionary.entries[:5])
    for frame in frames:
        protocol.receive_message(frame)
    assert protocol.events_received() == []
    assert protocol.dictionary == dictionary.entries


def test_time_stamps_go_relative_to_the_frames_time_base_and_come_back_exact() -> None:
    batches = session_changes(5)
    stamps = [c.timestamp for b in batches for c in b]
    assert min(stamps) >> 16 == time_base(batches)
    assert [c.timestamp for c in round_trip(batches, RelayDictionary())] == stamps
    # A stamp before the base is the caller's mistake, not silently wrapped.
    with pytest.raises(ValueError, match="before the frame's time base"):
        encode_records(batches[0], b"", RelayDictionary(), time_base(batches) + (1 << 20))


def test_typing_goes_as_insert_records_and_anything_else_as_change_records() -> None:
    batches = session_changes(6, rounds=4)
    dictionary = RelayDictionary()
    round_trip(batches, dictionary)
    base = time_base(batches)
    forms = set()
    for batch in batches:
        for change in batch:
            part, _ = encode_records([change], b"", dictionary, base)
            typing = len(change.ops) == 1 and change.ops[0][0] == TEXT_INSERT
            assert part[0] == (RECORD_INSERT if typing else RECORD_CHANGE)
            forms.add(part[0])
    assert forms == {RECORD_INSERT, RECORD_CHANGE}
    # An insert whose deps are not the derived ones is a change record.
    doc = CRDTDocument()
    CRDTTextHandler(doc, "text").insert(0, "a")
    (change,) = doc.export_changes(VersionVector())
    peer, ctr, stamp, _, ops, size = change.data
    odd = Change((peer, ctr, stamp, (("someone-else", 7),), ops, size))
    part, _ = encode_records([odd], b"", dictionary, stamp >> 16)
    assert part[0] == RECORD_CHANGE
    body = encode_relay_frame(1, stamp >> 16, [part])[5:]
    assert decode_relay(body, dictionary.entries, BOUND) == (odd,)


@pytest.mark.slow
# 20,000 examples take minutes on a busy 2-core machine: the suite-wide 120 s
# guard against hangs would cut the run short, not find a hang.
@pytest.mark.timeout(900)
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_relay())
def test_mutated_relays_long_run(case: tuple[bytes, list[str]]) -> None:
    body, entries = case
    try:
        decode_relay(body, entries, BOUND)
    except DecodeError:
        pass
