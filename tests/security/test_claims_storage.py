"""Claims are kept by the registry: read back without claiming, durable in SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import InMemoryServerRegistry, SqliteServerRegistry
from server.session import secret_hash

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_claimed_peers_reads_claims_without_making_any(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite3"
    for registry in (InMemoryServerRegistry(), SqliteServerRegistry(path)):
        await registry.create_document("notes")
        assert await registry.claimed_peers("notes", ["a", "b"]) == set()
        assert await registry.claim_peer("notes", "a", secret_hash("notes", "a", b"s" * 32))
        assert await registry.claimed_peers("notes", ["a", "b"]) == {"a"}
        assert await registry.claimed_peers("other", ["a"]) == set()
        await registry.close()
    reopened = SqliteServerRegistry(path)
    assert await reopened.claimed_peers("notes", ["a", "b"]) == {"a"}
    # First claim wins, after a restart too.
    assert not await reopened.claim_peer("notes", "a", secret_hash("notes", "a", b"t" * 32))
    assert await reopened.claim_peer("notes", "a", secret_hash("notes", "a", b"s" * 32))
    await reopened.close()
