"""Document registries: where the server keeps its documents.

* :mod:`server.registry.base` -- the contract (:class:`CRDTServerRegistry`)
  and the helpers every implementation shares;
* :mod:`server.registry.memory` -- :class:`InMemoryServerRegistry`, a dict;
* :mod:`server.registry.sqlite` -- :class:`SqliteServerRegistry`, one SQLite
  file with group commit;
* :mod:`server.registry.redis` -- :class:`RedisServerRegistry`, Redis streams
  shared by several server processes.
"""

from __future__ import annotations

from .base import (
    MAX_DOCUMENT_ID_LENGTH,
    MAX_SECRET_HASH_BYTES,
    Applied,
    CRDTServerRegistry,
    HistoryPage,
    RegistryObserver,
    SnapshotListener,
    applied_result,
    check_secret_hash,
    import_and_collect,
    merge_snapshot_checked,
    new_epoch,
    validate_document_id,
    version_vector_of,
)
from .memory import InMemoryServerRegistry
from .redis import RedisServerRegistry
from .sqlite import SqliteServerRegistry

__all__ = [
    "MAX_DOCUMENT_ID_LENGTH",
    "MAX_SECRET_HASH_BYTES",
    "Applied",
    "CRDTServerRegistry",
    "HistoryPage",
    "InMemoryServerRegistry",
    "RedisServerRegistry",
    "RegistryObserver",
    "SnapshotListener",
    "SqliteServerRegistry",
    "applied_result",
    "check_secret_hash",
    "import_and_collect",
    "merge_snapshot_checked",
    "new_epoch",
    "validate_document_id",
    "version_vector_of",
]
