"""Kind hijack: a change that declares the editor's list name as text blocks nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from security_helpers import FAST_RECONNECT, Attacker, wait_for

from crdt_sync import Change, CRDTDocument, CRDTListHandler, CRDTTextHandler, PeerId
from crdt_sync.sync import Ack, Changes, encode_message
from crdt_sync.sync.client import ConnectionStatus, WebSocketClient
from server import InMemoryServerRegistry, WebSocketServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

# The names the desktop app binds (editor/session.py).
TEXT_NAME, LIST_NAME = "shared_text", "shared_list"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[WebSocketServer]:
    running = WebSocketServer("127.0.0.1", 0, InMemoryServerRegistry())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


class Editor:
    """What the app holds: a text and a list under the app's names, and a client."""

    def __init__(self, url: str, name: str) -> None:
        self.document = CRDTDocument()
        self.text = CRDTTextHandler(self.document, TEXT_NAME)
        self.items = CRDTListHandler(self.document, LIST_NAME)
        self.client = WebSocketClient(url, self.document, name, reconnect=FAST_RECONNECT)

    def state(self) -> tuple[str, list[Any]]:
        return self.text.value, list(self.items.value)


async def test_a_list_name_used_as_text_blocks_no_honest_client(server: WebSocketServer) -> None:
    url = f"ws://127.0.0.1:{server.port}/notes"
    # The list is still empty: the attacker is the first to use the name, as text.
    attacker = await Attacker.join(url)
    await attacker.joined()
    hostile = CRDTDocument(PeerId.parse(attacker.peer), "notes")
    made: list[Change] = []
    hostile.on_change(made.append)
    CRDTTextHandler(hostile, LIST_NAME).insert(0, "hijack")
    await attacker.send(encode_message(Changes(tuple(made))))
    assert isinstance(await attacker.recv(), Ack)  # it is its own object: harmless
    editors = [Editor(url, f"user{i}") for i in range(2)]
    try:
        for editor in editors:
            assert await editor.client.connect(), editor.client.last_error
        for index, editor in enumerate(editors):
            editor.items.append(f"item {index}")
            editor.text.insert(0, f"text {index} ")
        await wait_for(
            lambda: (
                all(e.state() == editors[0].state() for e in editors)
                and len(editors[0].items.value) == 2
                and all(e.client.unacknowledged_changes == 0 for e in editors)
            ),
            documents=tuple(e.document for e in editors),
            streams=tuple(e.client.events for e in editors),
            what="convergence",
        )
        assert all(e.client.status is ConnectionStatus.CONNECTED for e in editors)
        # A new client joining later gets everything and is not refused either.
        late = Editor(url, "late")
        assert await late.client.connect(), late.client.last_error
        await wait_for(
            lambda: late.state() == editors[0].state(),
            documents=(late.document,),
            what="the late editor",
        )
        editors.append(late)
    finally:
        for editor in editors:
            await editor.client.disconnect()
            editor.client.close()
        await attacker.close()
