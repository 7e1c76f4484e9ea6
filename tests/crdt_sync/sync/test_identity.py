"""Replica identity: secrets in the handshake, and forking under a fresh peer id."""

from __future__ import annotations

import pytest

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    VersionVector,
)
from crdt_sync.sync import (
    ErrorCode,
    ForkError,
    HandshakeRequest,
    MessageDecodeError,
    decode_message,
    encode_message,
    fork_with_new_peer,
)
from crdt_sync.sync.awareness import Awareness
from crdt_sync.sync.exceptions import FINAL_ERROR_CODES
from crdt_sync.sync.messages import MAX_COUNTER, AwarenessUpdate


def test_the_replica_secret_travels_in_the_handshake_and_is_bounded() -> None:
    document = CRDTDocument()
    assert 16 <= len(document.replica_secret) <= 64
    request = HandshakeRequest(
        "d", str(document.peer_id), VersionVector(), replica_secret=document.replica_secret
    )
    decoded = decode_message(encode_message(request))
    assert isinstance(decoded, HandshakeRequest)
    assert decoded.replica_secret == document.replica_secret
    with pytest.raises(ValueError):
        encode_message(HandshakeRequest("d", "p", VersionVector(), replica_secret=b"short"))
    # A hand-made frame with a 3-byte secret is refused by the decoder.
    frame = bytearray(encode_message(request))
    frame[-len(document.replica_secret) - 1] = 3
    with pytest.raises(MessageDecodeError):
        decode_message(bytes(frame[: len(frame) - len(document.replica_secret) + 3]))


def test_a_document_keeps_a_given_secret_and_refuses_a_bad_one() -> None:
    secret = bytes(range(32))
    assert CRDTDocument(replica_secret=secret).replica_secret == secret
    with pytest.raises(ValueError):
        CRDTDocument(replica_secret=b"x" * 8)
    assert CRDTDocument().replica_secret != CRDTDocument().replica_secret


def test_identity_refusals_are_final() -> None:
    assert ErrorCode.PEER_ID_IN_USE in FINAL_ERROR_CODES
    assert ErrorCode.FORBIDDEN_PEER in FINAL_ERROR_CODES
    assert ErrorCode.RATE_LIMITED not in FINAL_ERROR_CODES


def edited_document() -> tuple[CRDTDocument, VersionVector]:
    """A document with acknowledged edits, a peer's edits, then unacknowledged ones."""
    other = CRDTDocument(document_id="doc")
    CRDTTextHandler(other, "text").insert(0, "shared ")
    document = CRDTDocument(document_id="doc")
    text = CRDTTextHandler(document, "text")
    items = CRDTListHandler(document, "items")
    meta = CRDTMapHandler(document, "meta")
    document.import_changes(other.export_changes())
    text.insert(len(text.value), "acked")
    items.insert(0, "a")
    acknowledged = document.version_vector
    # Unacknowledged: inserts after acked text, deletes across old and new ids,
    # list and map edits touching acked and new elements.
    text.insert(len(text.value), " more")
    text.insert(0, ">> ")
    text.delete(len(">> shared ac"), 5)  # "ked m": acked and unacked ids
    items.insert(1, "b")
    items.move(1, 0)
    items.update(1, "A")
    items.insert(0, "z")
    items.delete(1)
    meta.set("title", "t")
    meta.delete("title")
    meta.set("k", 1)
    return document, acknowledged


def test_a_fork_keeps_every_unsent_edit_under_a_new_peer() -> None:
    document, acknowledged = edited_document()
    fork = fork_with_new_peer(document, acknowledged)
    assert fork.peer_id != document.peer_id
    assert fork.replica_secret != document.replica_secret
    assert fork.document_id == document.document_id
    for name in ("text", "items", "meta"):
        assert fork.get_value(name) == document.get_value(name)
    old = str(document.peer_id)
    assert fork.version_vector.get(old, 0) == acknowledged[old]
    # What the server lacks is only the new peer's: it may send all of it.
    lacking = fork.export_changes(acknowledged)
    assert lacking and {c.peer for c in lacking} == {str(fork.peer_id)}
    # A server holding the acknowledged state converges with the fork.
    server = CRDTDocument(document_id="doc")
    server.import_changes(document.export_changes(VersionVector()))  # everything...
    acked_only = CRDTDocument(document_id="doc")
    acked_only.import_changes(
        [c for c in server.export_changes() if c.peer != old or c.counter < acknowledged[old]]
    )
    acked_only.import_changes(lacking)
    assert acked_only.get_value("text") == document.get_value("text")
    assert acked_only.get_value("items") == document.get_value("items")
    # The fork edits on as its own peer.
    CRDTTextHandler(fork, "text").insert(0, "!")
    assert fork.get_value("text") == "!" + document.get_value("text")


def test_a_fork_with_nothing_unsent_is_a_copy() -> None:
    document, _ = edited_document()
    fork = fork_with_new_peer(document, document.version_vector)
    assert fork.get_value("text") == document.get_value("text")
    assert fork.version_vector == document.version_vector


def test_a_fork_of_a_compacted_document_with_unsent_edits_is_refused() -> None:
    document, acknowledged = edited_document()
    document.compact()
    with pytest.raises(ForkError):
        fork_with_new_peer(document, acknowledged)
    # Nothing unsent: the state is carried over.
    fork = fork_with_new_peer(document, document.version_vector)
    assert fork.get_value("text") == document.get_value("text")


def test_an_absurd_presence_clock_never_crashes_the_client() -> None:
    awareness = Awareness("me", initial_clock=10)
    sent: list[AwarenessUpdate] = []
    awareness.outgoing.subscribe(sent.append)
    awareness.set_local_state({"name": "me"})
    # A spoofed update for our own peer, and one for another, at the wire's maximum.
    awareness.receive_update(AwarenessUpdate("me", MAX_COUNTER, {"name": "evil"}))
    awareness.receive_update(AwarenessUpdate("them", MAX_COUNTER, {"name": "evil"}))
    assert "them" not in awareness.states
    awareness.set_local_state({"name": "me", "cursor": 1})
    for update in [*sent, awareness.leave_update()]:
        encode_message(update)  # never beyond what the wire carries
    assert awareness.clock < MAX_COUNTER
