# mypy: disable-error-code="no-untyped-call"
"""One table of document ids, run against the Join dialog and the server (issue 11, item 5).

The dialog accepts exactly what the server accepts: every accepted id is also
joined through a real server, by the URL the dialog produced.
"""

from __future__ import annotations

import asyncio

import pytest
from editor_helpers import run, start_server
from pytestqt.qtbot import QtBot

from crdt_sync import CRDTDocument
from crdt_sync.sync.client import WebSocketClient
from crdt_sync.sync.document_ids import document_url_path
from editor.dialogs import JoinDialog
from server.registry import validate_document_id

#: (document id, allowed)
CASES: list[tuple[str, bool]] = [
    ("notes", True),
    ("meeting notes", True),
    ("Notizen für Mai", True),
    ("ü", True),
    ("заметки", True),
    ("メモ", True),
    ("a.b~c_d-e", True),
    ("q?and#hash%", True),
    ("x" * 128, True),
    ("x" * 129, False),
    (".notes", False),
    ("..", False),
    ("a/b", False),
    ("team*", False),
    ("tab\there", False),
    ("bell\x07", False),
]


def dialog_verdict(qtbot: QtBot, url: str) -> tuple[bool, str]:
    dialog = JoinDialog()
    qtbot.addWidget(dialog)
    dialog.url_edit.setCurrentText(url)
    dialog.accept()
    if dialog.session_url is None:
        return False, dialog.error_label.text()
    return True, dialog.session_url.url


def server_verdict(document_id: str) -> bool:
    try:
        validate_document_id(document_id)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("document_id", "allowed"), CASES)
def test_dialog_and_server_agree_on_each_id(qtbot: QtBot, document_id: str, allowed: bool) -> None:
    url = "ws://127.0.0.1:9" + document_url_path(document_id)
    accepted, detail = dialog_verdict(qtbot, url)
    assert accepted is allowed, detail
    assert server_verdict(document_id) is allowed
    if not allowed:
        assert detail.startswith("The document id is not allowed:")


def test_ids_typed_as_they_are_get_a_canonical_url(qtbot: QtBot) -> None:
    accepted, url = dialog_verdict(qtbot, "ws://127.0.0.1:9/Notizen für Mai")
    assert accepted and url == "ws://127.0.0.1:9/Notizen%20f%C3%BCr%20Mai"
    accepted, reason = dialog_verdict(qtbot, "ws://127.0.0.1:9/.notes")
    assert not accepted and "'.'" in reason


def test_every_id_the_dialog_accepts_joins_a_real_server(
    qtbot: QtBot, loop: asyncio.AbstractEventLoop
) -> None:
    del loop
    server = run(qtbot, start_server())
    try:
        for document_id, allowed in CASES:
            if not allowed:
                continue
            accepted, url = dialog_verdict(
                qtbot, f"ws://127.0.0.1:{server.port}{document_url_path(document_id)}"
            )
            assert accepted
            document = CRDTDocument(document_id=document_id)
            client = WebSocketClient(url, document)
            try:
                assert run(qtbot, client.connect()), document_id
            finally:
                run(qtbot, client.disconnect())
                client.close()
    finally:
        run(qtbot, server.stop())
