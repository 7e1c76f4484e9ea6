"""An in-memory network of N peers for convergence tests.

Every peer is a :class:`CRDTDocument` with a text (``"text"``), a list
(``"list"``) and a map (``"meta"``) handler, plus a list named ``"text"`` and a
text named ``"list"``: the kind is part of an object's identity, so those are
two more objects, which must converge without disturbing the first three. Each
locally created change is sent to every other online peer's inbox; nothing is
delivered until the test says so, and then in whatever order it picks, so
messages are reordered and delayed. The test can also duplicate old messages,
partition the peers into two groups (messages across the cut stay queued until
:meth:`Network.heal`), take a peer offline (messages to it are lost, its own
edits are not sent) and bring it back (it then catches up through an anti-
entropy sync, by changes when the other side still has them, by snapshot when
they were compacted away), merge snapshots mid-run, reload a peer from its own
snapshot and compact.

Every choice is an explicit int argument (reduced modulo what is available),
so a Hypothesis strategy or a seeded ``random.Random`` can drive it, and a
failing run shrinks and replays.

Each peer also keeps *mirrors* of its text, list and map, updated only from
the handlers' events; :meth:`Network.check` asserts they equal the real
values, which proves the deltas are right for local, remote, multi-op and
snapshot-merge updates alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from crdt_sync import (
    Change,
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    ListEvent,
    MapEvent,
    PeerId,
    Snapshot,
    TextEvent,
    VersionVector,
    apply_delta,
    decode_changes,
    encode_changes,
)

#: The handler names every peer uses.
TEXT, LIST, MAP = "text", "list", "meta"


def roundtrip_snapshot(doc: CRDTDocument) -> Snapshot:
    """``doc``'s snapshot after a trip through bytes (as a network would carry it)."""
    return Snapshot.from_bytes(doc.take_snapshot().to_bytes())


def document_values(doc: CRDTDocument) -> dict[str, Any]:
    """Every named state's value, keyed by name and kind (empty states omitted).

    A document that never received an op for a name has no state for it, while
    one with a handler has an empty one: both mean the same, so empty values are
    left out.
    """
    out: dict[str, Any] = {}
    for name, kinds in doc.state_names.items():
        for kind in kinds:
            value = doc.get_value(name, kind)
            if value or not isinstance(value, str | list | dict):
                out[f"{kind}:{name}"] = value
    return out


@dataclass
class Message:
    """One change in flight: who sent it and its payload (objects or bytes)."""

    sender: int
    payload: list[Change] | bytes


class Peer:
    """One replica: its document, handlers, inbox and event mirrors."""

    def __init__(self, index: int, doc: CRDTDocument) -> None:
        self.index = index
        self.inbox: list[Message] = []
        self.online = True
        self.group = 0
        self.events = 0
        self.bind(doc)

    def bind(self, doc: CRDTDocument) -> None:
        """Use ``doc`` (a new one after a reload): handlers, mirrors, observers."""
        self.doc = doc
        self.text = CRDTTextHandler(doc, TEXT)
        self.lst = CRDTListHandler(doc, LIST)
        self.meta = CRDTMapHandler(doc, MAP)
        # Same names, other kinds: other objects.
        self.list_named_text = CRDTListHandler(doc, TEXT)
        self.text_named_list = CRDTTextHandler(doc, LIST)
        self.text_mirror: str = self.text.value
        self.list_mirror: list[Any] = self.lst.value
        self.map_mirror: dict[str, Any] = self.meta.value
        self.text.observe(self._on_text)
        self.lst.observe(self._on_list)
        self.meta.observe(self._on_map)

    def _on_text(self, event: TextEvent) -> None:
        self.events += 1
        self.text_mirror = apply_delta(self.text_mirror, event.delta)

    def _on_list(self, event: ListEvent) -> None:
        self.events += 1
        self.list_mirror = apply_delta(self.list_mirror, event.delta)

    def _on_map(self, event: MapEvent) -> None:
        self.events += 1
        for key in event.keys_changed:
            if key in self.meta:
                self.map_mirror[key] = self.meta[key]
            else:
                self.map_mirror.pop(key, None)

    def check(self) -> None:
        """Internal invariants hold and the event mirrors match the values."""
        self.doc.check_invariants()
        assert self.text_mirror == self.text.value, "text events disagree with the text"
        assert self.list_mirror == self.lst.value, "list events disagree with the list"
        assert self.map_mirror == self.meta.value, "map events disagree with the map"


class Network:
    """N peers joined by lossy, reordering, duplicating, partitionable links."""

    def __init__(self, count: int, *, binary: bool = False) -> None:
        if count < 1:
            raise ValueError("a network needs at least one peer")
        self.binary = binary
        self.peers: list[Peer] = []
        self.sent: list[Message] = []
        for i in range(count):
            # Fixed peer ids: tie-breaks between peers, and so failures, reproduce.
            peer = Peer(i, CRDTDocument(PeerId.parse(f"00000000-0000-4000-8000-{i + 1:012d}")))
            self.peers.append(peer)
            self._subscribe(peer)

    # ---------------------------------------------------------------- wiring

    def _subscribe(self, peer: Peer) -> None:
        def send(change: Change) -> None:
            self._broadcast(peer, change)

        peer.doc.on_change(send)

    def _encode(self, changes: list[Change]) -> list[Change] | bytes:
        return encode_changes(changes) if self.binary else list(changes)

    def _broadcast(self, sender: Peer, change: Change) -> None:
        if not sender.online:
            return  # offline: the edit reaches others by sync on reconnect
        message = Message(sender.index, self._encode([change]))
        self.sent.append(message)
        for peer in self.peers:
            if peer is not sender and peer.online:
                peer.inbox.append(message)

    def _import(self, peer: Peer, payload: list[Change] | bytes) -> int:
        if isinstance(payload, bytes):
            return peer.doc.binary_import_changes(payload)
        return peer.doc.import_changes(payload)

    # --------------------------------------------------------------- actions

    def deliver(self, index: int, pick: int) -> bool:
        """Deliver one queued message to peer ``index`` (not across a partition)."""
        peer = self.peers[index % len(self.peers)]
        if not peer.online:
            return False
        ready = [k for k, m in enumerate(peer.inbox) if self.peers[m.sender].group == peer.group]
        if not ready:
            return False
        message = peer.inbox.pop(ready[pick % len(ready)])
        self._import(peer, message.payload)
        return True

    def deliver_all(self, index: int) -> None:
        """Deliver every deliverable message queued for peer ``index``, newest first."""
        while self.deliver(index, -1):
            pass

    def duplicate(self, index: int, pick: int) -> None:
        """Queue a copy of an already sent message for peer ``index`` again."""
        peer = self.peers[index % len(self.peers)]
        if self.sent and peer.online:
            peer.inbox.append(self.sent[pick % len(self.sent)])

    def partition(self, mask: int) -> None:
        """Split the peers in two groups by the bits of ``mask``."""
        for peer in self.peers:
            peer.group = (mask >> peer.index) & 1

    def heal(self) -> None:
        for peer in self.peers:
            peer.group = 0

    def disconnect(self, index: int) -> None:
        """Take a peer offline: what is queued for it is lost."""
        peer = self.peers[index % len(self.peers)]
        peer.online = False
        peer.inbox.clear()

    def reconnect(self, index: int, via: int) -> None:
        """Bring a peer back and sync it both ways with an online peer of its group."""
        peer = self.peers[index % len(self.peers)]
        if peer.online:
            return
        peer.online = True
        others = [p for p in self.peers if p is not peer and p.online and p.group == peer.group]
        if others:
            other = others[via % len(others)]
            self.sync(other, peer)
            self.sync(peer, other)

    def sync(self, source: Peer, target: Peer) -> None:
        """Anti-entropy: give ``target`` what ``source`` has and it lacks."""
        have = target.doc.version_vector
        if have >= source.doc.version_vector:
            return
        if source.doc.can_export(have):
            self._import(target, self._encode(source.doc.export_changes(have)))
        else:
            target.doc.import_snapshot(roundtrip_snapshot(source.doc))

    def snapshot_merge(self, index: int, source: int) -> None:
        """Peer ``index`` merges peer ``source``'s snapshot (through bytes)."""
        target = self.peers[index % len(self.peers)]
        other = self.peers[source % len(self.peers)]
        if other is not target:
            target.doc.import_snapshot(roundtrip_snapshot(other.doc))

    def reload(self, index: int) -> None:
        """Restart a peer from its own latest snapshot, keeping its peer id."""
        peer = self.peers[index % len(self.peers)]
        old = peer.doc
        doc = CRDTDocument.from_snapshot(roundtrip_snapshot(old), peer_id=old.peer_id, resume=True)
        assert doc.version_vector == old.version_vector
        peer.bind(doc)
        self._subscribe(peer)

    def compact(self, index: int) -> None:
        self.peers[index % len(self.peers)].doc.compact()

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        """Invariants and event mirrors of every peer (call after every step)."""
        for peer in self.peers:
            peer.check()

    def quiesce(self) -> None:
        """Heal, reconnect, deliver everything queued, then anti-entropy until equal."""
        self.heal()
        for peer in self.peers:
            if not peer.online:
                self.reconnect(peer.index, 0)
        for peer in self.peers:
            self.deliver_all(peer.index)
        hub = self.peers[0]
        for peer in self.peers[1:]:
            self.sync(peer, hub)
        for peer in self.peers[1:]:
            self.sync(hub, peer)
        self.check()

    def assert_converged(self) -> None:
        """Same version, same values, nothing pending; rebuilt documents are equal."""
        first = self.peers[0]
        expected = document_values(first.doc)
        for peer in self.peers:
            assert peer.doc.pending_count == 0, f"peer {peer.index} still has pending changes"
            assert peer.doc.version_vector == first.doc.version_vector
            assert document_values(peer.doc) == expected, f"peer {peer.index} diverged"
            assert peer.text.value == first.text.value
            assert peer.lst.value == first.lst.value
            assert peer.meta.value == first.meta.value
            assert_rebuilds_equal(peer.doc)


def assert_rebuilds_equal(doc: CRDTDocument) -> None:
    """A document rebuilt from ``doc``'s snapshot bytes, or its history, equals it."""
    snapshot = doc.take_snapshot()
    rebuilt = CRDTDocument.from_snapshot(Snapshot.from_bytes(snapshot.to_bytes()))
    rebuilt.check_invariants()
    assert rebuilt.version_vector == doc.version_vector
    assert document_values(rebuilt) == document_values(doc)
    assert rebuilt.take_snapshot().to_bytes() == snapshot.to_bytes()
    if doc.can_export(VersionVector()):
        fresh = CRDTDocument()
        fresh.binary_import_changes(doc.binary_export_changes())
        fresh.check_invariants()
        assert fresh.pending_count == 0
        assert fresh.version_vector == doc.version_vector
        assert document_values(fresh) == document_values(doc)
        again = CRDTDocument()
        again.import_changes(decode_changes(encode_changes(doc.export_changes())))
        assert document_values(again) == document_values(doc)


def exchange(*docs: CRDTDocument) -> None:
    """Bring every document up to date with every other, by changes (full mesh)."""
    for target in docs:
        for source in docs:
            if source is not target:
                target.import_changes(source.export_changes(target.version_vector))


def fingerprint(doc: CRDTDocument) -> tuple[Any, ...]:
    """Everything observable about ``doc``, to prove a failed call changed nothing."""
    return (
        document_values(doc),
        doc.version_vector,
        doc.pending_count,
        doc.take_snapshot().to_bytes(),
    )


def session(seed: int, steps: int = 600) -> list[CRDTDocument]:
    """Three peers typing, backspacing, deleting each other's text, editing a list
    and a map, one keystroke per transaction, exchanging now and then."""
    rng = random.Random(seed)
    docs = [CRDTDocument(PeerId.parse(f"00000000-0000-4000-8000-{i + 1:012d}")) for i in range(3)]
    texts = [CRDTTextHandler(d, "t") for d in docs]
    lists = [CRDTListHandler(d, "l") for d in docs]
    maps = [CRDTMapHandler(d, "m") for d in docs]
    cursors = [0, 0, 0]
    for step in range(steps):
        k = rng.randrange(3)
        text = texts[k]
        cursors[k] = min(cursors[k], len(text))
        r = rng.random()
        if r < 0.6:
            text.insert(cursors[k], rng.choice("abcdé😀 "))
            cursors[k] += 1
        elif r < 0.8 and cursors[k]:
            text.delete(cursors[k] - 1, 1)  # backspace
            cursors[k] -= 1
        elif r < 0.85 and len(text):
            cursors[k] = rng.randrange(len(text) + 1)
        elif r < 0.9 and len(text) > cursors[k]:
            text.delete(cursors[k], 1)  # forward delete
        elif r < 0.95:
            lists[k].append(step)
        else:
            maps[k].set(rng.choice("xy"), step)
        if rng.random() < 0.05:
            other = docs[rng.randrange(3)]
            if other is not docs[k]:
                other.import_changes(docs[k].export_changes(other.version_vector))
    return docs
