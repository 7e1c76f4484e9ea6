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
