"""The trust rules and limits of server/trust.py, each on its own (no sockets)."""

from __future__ import annotations

from server.session import secret_hash
from server.trust import upload_violation


def test_the_upload_rule_in_one_place() -> None:
    server = {"a": 5, "b": 3}
    # Nothing new, or only the uploader's own next ops: fine.
    assert upload_violation("u", {"a": 5, "b": 2}, server, set(), 100) is None
    assert upload_violation("u", {"u": 40}, server, {"u"}, 100) is None
    # A claimed peer's ops the server lacks: only that peer may send them.
    assert upload_violation("u", {"a": 6}, server, {"a"}, 100) is not None
    # A peer nobody claimed (an author who never connected here) may be restored...
    assert upload_violation("u", {"c": 50}, server, set(), 100) is None
    # ...within the jump bound, like the uploader's own counter.
    assert upload_violation("u", {"c": 500}, server, set(), 100) is not None
    assert upload_violation("u", {"u": 101}, server, set(), 100) is not None


def test_the_stored_hash_depends_on_document_and_peer() -> None:
    secret = b"k" * 32
    hashes = {
        secret_hash("notes", "a", secret),
        secret_hash("notes", "b", secret),
        secret_hash("other", "a", secret),
    }
    assert len(hashes) == 3


def test_status_answers_are_encoded_once_per_document_version() -> None:
    from crdt_sync import CRDTDocument, CRDTTextHandler, PeerId, VersionVector
    from crdt_sync.sync import DocumentStatusRequest, HandshakeRequest, encode_message
    from server.session import ServerSession

    document = CRDTDocument(document_id="notes")
    text = CRDTTextHandler(document, "text")
    text.insert(0, "x" * 1000)
    session = ServerSession("notes")
    session.receive_message(
        encode_message(HandshakeRequest("notes", str(PeerId.generate()), VersionVector()))
    )
    session.accept_handshake(document, "e")
    session.messages_to_send()
    request = encode_message(DocumentStatusRequest(VersionVector()))
    session.receive_message(request)
    session.receive_message(request)
    first, second = session.messages_to_send()
    assert first is second  # the very same encoding
    text.insert(0, "y")  # a new version: a new answer
    session.receive_message(request)
    [third] = session.messages_to_send()
    assert third is not first and third != first


def test_a_token_bucket_refills_at_its_rate() -> None:
    from server.trust import TokenBucket

    now = [0.0]
    bucket = TokenBucket(2.0, 4, lambda: now[0])
    assert all(bucket.take() for _ in range(4))
    assert not bucket.take()
    now[0] += 1.0  # two tokens back
    assert bucket.take() and bucket.take() and not bucket.take()
    assert not bucket.take(100)  # more than the bucket holds: never


def test_printable_escapes_control_characters() -> None:
    from server.trust import printable

    assert printable("a\nb\r\x1b[31m\u2028") == "a\\nb\\r\\x1b[31m\\u2028"
    assert printable("x" * 10, 4) == "xxxx…"
    assert printable("Zoë 🎨") == "Zoë 🎨"
