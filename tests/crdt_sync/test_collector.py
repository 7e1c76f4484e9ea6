"""The garbage collector is paused during an import and restored afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from crdt_sync import CRDTDocument, CRDTTextHandler, DecodeError, decode_changes
from crdt_sync.collector import paused_collector


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def typed_history() -> bytes:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "t")
    for i in range(50):
        text.insert(i, "x")
    return doc.binary_export_changes()


@pytest.mark.parametrize("binary", [True, False])
def test_an_import_runs_with_the_collector_paused_and_enables_it_again(binary: bool) -> None:
    gc.enable()
    data = typed_history()
    target = CRDTDocument()
    seen: list[bool] = []
    target.on_update(lambda event: seen.append(gc.isenabled()))
    if binary:
        target.binary_import_changes(data)
    else:
        target.import_changes(decode_changes(data))
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled() -> None:
    gc.disable()
    CRDTDocument().binary_import_changes(typed_history())
    assert not gc.isenabled()


def test_a_failed_import_enables_the_collector_again() -> None:
    gc.enable()
    data = bytearray(typed_history())
    data[-3] ^= 0xFF
    doc = CRDTDocument()
    with pytest.raises(DecodeError):
        doc.binary_import_changes(bytes(data))
    assert gc.isenabled()
    assert doc.version_vector == CRDTDocument().version_vector


def test_overlapping_pauses_restore_the_state_only_when_the_last_one_ends() -> None:
    gc.enable()
    first, second = paused_collector(), paused_collector()
    first.__enter__()
    second.__enter__()
    assert not gc.isenabled()
    first.__exit__(None, None, None)  # another thread's import ending first
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_client_protocol_decodes_and_imports_a_frame_in_one_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crdt_sync.sync import ClientProtocol, HandshakeResponse, encode_message
    from crdt_sync.sync import protocol as protocol_module
    from crdt_sync.sync.messages import Changes

    gc.enable()
    doc = CRDTDocument()
    client = ClientProtocol(doc, document_id="d")
    client.send_handshake()
    answer = HandshakeResponse("session", doc.version_vector, "epoch", compression="none")
    client.receive_message(encode_message(answer))
    decoding: list[bool] = []
    decode = protocol_module.decode_message

    def watched(*args: object, **kwargs: object) -> object:
        decoding.append(gc.isenabled())
        return decode(*args, **kwargs)

    monkeypatch.setattr(protocol_module, "decode_message", watched)
    client.receive_message(encode_message(Changes(decode_changes(typed_history()))))
    assert decoding == [False]
    assert gc.isenabled()
    assert CRDTTextHandler(doc, "t").value == "x" * 50
    client.receive_message(b"\xff not a frame")  # a violation: the pause ends all the same
    assert client.error_code is not None
    assert gc.isenabled()
