"""The upload rule against random histories: an honest replica's upload is never
refused for content under held ids (no false positive locks anyone out), and a
replica replaying someone's old ids with other content always is."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt_sync import (
    CRDTDocument,
    CRDTListHandler,
    CRDTMapHandler,
    CRDTTextHandler,
    PeerId,
)
from crdt_sync.snapshot import merge_introduces
from server.trust import upload_violation

PEERS = [str(PeerId.generate()) for _ in range(3)]


def edit(document: CRDTDocument, rng: random.Random, count: int) -> None:
    """``count`` random edits of every kind: text, list (move, update) and map."""
    handlers = _handlers(document)
    text: CRDTTextHandler = handlers["t"]  # type: ignore[assignment]
    items: CRDTListHandler = handlers["l"]  # type: ignore[assignment]
    meta: CRDTMapHandler = handlers["m"]  # type: ignore[assignment]
    for _ in range(count):
        choice = rng.random()
        if choice < 0.4 or not text.value:
            text.insert(
                rng.randint(0, len(text.value)), rng.choice(["a", "bc", "déf", "\U0001f600"])
            )
        elif choice < 0.55:
            start = rng.randrange(len(text.value))
            text.delete(start, rng.randint(1, min(3, len(text.value) - start)))
        elif choice < 0.7 or not items.value:
            items.insert(rng.randint(0, len(items.value)), rng.randint(0, 99))
        elif choice < 0.8:
            items.move(rng.randrange(len(items.value)), rng.randrange(len(items.value)))
        elif choice < 0.85:
            items.update(rng.randrange(len(items.value)), rng.randint(0, 99))
        elif choice < 0.9:
            items.delete(rng.randrange(len(items.value)))
        else:
            meta.set(rng.choice("xyz"), rng.randint(0, 9))


_registry: dict[int, dict[str, object]] = {}


def _handlers(document: CRDTDocument) -> dict[str, object]:
    found = _registry.get(id(document))
    if found is None or found.get("doc") is not document:
        found = _registry[id(document)] = {
            "doc": document,
            "t": CRDTTextHandler(document, "text"),
            "l": CRDTListHandler(document, "items"),
            "m": CRDTMapHandler(document, "meta"),
        }
    return found


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.integers(0, 2**32), st.integers(1, 30), st.integers(0, 30), st.integers(0, 20))
def test_honest_uploads_pass_and_replayed_ids_do_not(
    seed: int, before: int, mine: int, after: int
) -> None:
    rng = random.Random(seed)
    # The server's document: two authors' edits.
    server = CRDTDocument(PeerId.parse(PEERS[0]), "notes")
    other = CRDTDocument(PeerId.parse(PEERS[1]), "notes")
    edit(server, rng, before)
    edit(other, rng, before)
    server.import_changes(other.export_changes())
    other.import_changes(server.export_changes())
    # A replica that joined from the server's snapshot edits; the server moves on.
    replica = CRDTDocument.from_snapshot(server.take_snapshot(), PeerId.parse(PEERS[2]))
    edit(replica, rng, mine)
    edit(other, rng, after)
    server.import_changes(other.export_changes(server.version_vector))
    upload = replica.take_snapshot()
    introduced, deletions = merge_introduces(server, upload)
    refusal = upload_violation(
        PEERS[2],
        upload.version_vector,
        server.version_vector,
        {PEERS[0], PEERS[1]},
        1 << 22,
        introduced,
        deletions,
    )
    assert refusal is None, refusal
    # Someone starting over under the other author's id replays ids the server
    # holds, with other content (here in an object of its own).
    forger = CRDTDocument(PeerId.parse(PEERS[1]), "notes")
    CRDTTextHandler(forger, "forged").insert(0, "not theirs")
    introduced, deletions = merge_introduces(server, forger.take_snapshot())
    refusal = upload_violation(
        PEERS[2],
        forger.version_vector,
        server.version_vector,
        {PEERS[0], PEERS[1]},
        1 << 22,
        introduced,
        deletions,
    )
    assert refusal is not None and refusal.final
