"""The one document-id rule (crdt_sync.sync.document_ids), table-driven, and its URL form."""

from __future__ import annotations

import pytest

from crdt_sync.sync.document_ids import (
    MAX_DOCUMENT_ID_LENGTH,
    InvalidDocumentId,
    document_id_from_url_path,
    document_id_problem,
    document_url_path,
    validate_document_id,
)

# (document id, allowed?, a word the reason must contain when refused)
RULE = [
    ("a", True, ""),
    ("0", True, ""),
    ("doc-1", True, ""),
    ("Team_Notes.v2", True, ""),
    ("x~y", True, ""),
    ("meeting notes", True, ""),
    ("Notizen-Ü", True, ""),
    ("заметки", True, ""),
    ("メモ", True, ""),
    ("ملاحظات", True, ""),
    ("a?b#c%20d", True, ""),
    ("back\\slash", True, ""),
    ("end.", True, ""),
    ("a..b", True, ""),
    ("🌍", True, ""),
    ("A" * MAX_DOCUMENT_ID_LENGTH, True, ""),
    ("é" * MAX_DOCUMENT_ID_LENGTH, True, ""),
    ("", False, "empty"),
    ("A" * (MAX_DOCUMENT_ID_LENGTH + 1), False, "at most"),
    ("é" * (MAX_DOCUMENT_ID_LENGTH + 1), False, "at most"),
    (".hidden", False, "'.'"),
    (".", False, "'.'"),
    ("..", False, "'.'"),
    ("a/b", False, "'/'"),
    ("/", False, "'/'"),
    ("team-*", False, "'*'"),
    ("*", False, "'*'"),
    ("a\x00", False, "U+0000"),
    ("tab\there", False, "U+0009"),
    ("line\nbreak", False, "U+000A"),
    ("del\x7f", False, "U+007F"),
    ("c1\x85", False, "U+0085"),
    ("lone\ud800", False, "U+D800"),
]


@pytest.mark.parametrize(("document_id", "allowed", "reason"), RULE)
def test_the_document_id_rule(document_id: str, allowed: bool, reason: str) -> None:
    problem = document_id_problem(document_id)
    if allowed:
        assert problem is None
        assert validate_document_id(document_id) == document_id
    else:
        assert problem is not None and reason in problem
        with pytest.raises(InvalidDocumentId, match="invalid document id"):
            validate_document_id(document_id)


@pytest.mark.parametrize("value", [None, 42, b"notes", ["notes"]])
def test_a_document_id_is_text(value: object) -> None:
    assert document_id_problem(value) is not None
    with pytest.raises(ValueError):  # InvalidDocumentId is a ValueError
        validate_document_id(value)


@pytest.mark.parametrize(
    "document_id", [d for d, allowed, _ in RULE if allowed and "\\" not in d] + ["back\\slash"]
)
def test_every_allowed_id_survives_the_url_path(document_id: str) -> None:
    path = document_url_path(document_id)
    assert path.isascii() and path.startswith("/") and "/" not in path[1:]
    assert document_id_from_url_path(path) == document_id
    assert document_id_from_url_path(path + "?token=x") == document_id


def test_url_paths_without_a_document() -> None:
    assert document_id_from_url_path("/") is None
    assert document_id_from_url_path("") is None
    assert document_id_from_url_path("/?x=1") is None
    assert document_id_from_url_path("/n%C3%B6tes") == "nötes"
    # A percent-encoded '/' decodes to one, which the rule then refuses.
    assert document_id_problem(document_id_from_url_path("/a%2Fb")) is not None
    # Bytes that are not UTF-8 decode to replacement characters, never an exception.
    assert document_id_from_url_path("/%FF") == "\ufffd"
