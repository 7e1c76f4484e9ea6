"""Compact acks (protocol version 2): the real client protocol and the real server
session, in memory. An Ack holds only the client's own counter, and the client's
count of unacknowledged changes is what it was with whole vectors."""

from __future__ import annotations

from crdt_sync import Change, CRDTDocument, CRDTTextHandler, PeerId, VersionVector
from crdt_sync.sync import Ack, decode_message
from crdt_sync.sync.events import Acknowledged
from crdt_sync.sync.protocol import ClientProtocol, ClientState
from server.session import ChangesReceived, HandshakeRequested, ServerSession

OTHERS = VersionVector({str(PeerId.generate()): 5 + index for index in range(50)})


class Pair:
    """A client protocol and a server session joined in memory, with a server document."""

    def __init__(self) -> None:
        self.server_document = CRDTDocument(document_id="notes")
        self.client = ClientProtocol(CRDTDocument(), document_id="notes")
        self.session = ServerSession("notes")
        self.acks: list[Ack] = []
        self.events: list[object] = []
        self.received: list[tuple[Change, ...]] = []

    def pump(self) -> None:
        for _ in range(50):
            moved = False
            for frame in self.client.messages_to_send():
                self.session.receive_message(frame)
                moved = True
            for event in self.session.events_received():
                if isinstance(event, HandshakeRequested):
                    self.session.accept_handshake(self.server_document, "epoch-1")
                elif isinstance(event, ChangesReceived):
                    self.received.append(event.changes)
            for frame in self.session.messages_to_send():
                message = decode_message(frame, self.session.compressor)
                if isinstance(message, Ack):
                    self.acks.append(message)
                self.client.receive_message(frame)
                moved = True
            self.events.extend(self.client.events_received())
            if not moved:
                return
        raise AssertionError("the pair never went quiet")


def test_compact_acks_count_unacknowledged_changes_exactly() -> None:
    pair = Pair()
    pair.client.send_handshake()
    pair.pump()
    assert pair.client.state is ClientState.CONNECTED
    text = CRDTTextHandler(pair.client.document, "text")
    made: list[Change] = []
    pair.client.document.on_change(made.append)
    for index, char in enumerate("abc"):
        text.insert(index, char)
    pair.client.send_changes(made)
    pair.pump()
    assert pair.client.unacknowledged_changes == 3
    (batch,) = pair.received
    peer = pair.client.document.peer_id
    # The server stored the first two (and 50 other writers' changes): the Ack
    # names only this client's counter, and one change stays unacknowledged.
    pair.server_document.import_changes(batch[:2])
    pair.session.send_acknowledgement(OTHERS.merge(pair.server_document.version_vector))
    pair.pump()
    assert pair.acks[-1] == Ack(VersionVector({str(peer): 2}))
    assert pair.client.unacknowledged_changes == 1
    pair.server_document.import_changes(batch[2:])
    pair.session.send_acknowledgement(OTHERS.merge(pair.server_document.version_vector))
    pair.pump()
    assert pair.acks[-1] == Ack(VersionVector({str(peer): 3}))
    assert pair.client.unacknowledged_changes == 0
    acknowledged = [e for e in pair.events if isinstance(e, Acknowledged)]
    assert [e.unacknowledged for e in acknowledged] == [1, 0]
    # What the client knows is stored: the handshake's vector merged with the acks.
    assert pair.client.acknowledged.get(str(peer), 0) == 3
