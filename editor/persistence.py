"""Offline persistence: each session's document kept in the user data directory.

A session's document lives in ``<data dir>/sessions/<hash of URL>.crdt`` (its
full change history, ``binary_export_changes()``) beside ``<same>.json`` (the
URL, the document id, this app's peer id for it and the replica secret that
proves that peer id to the server, so a reopened document keeps its peer id,
its op counters never repeat and the server accepts it as the same replica).

The history, not a snapshot, is stored: a document rebuilt from a snapshot has
no changes to send, and the next handshake must send the server every change
made offline.
Writes are atomic (a temporary file of its own, then ``os.replace``) so a crash
mid-write leaves the previous copy intact, and two writers never share a
temporary file.

``<same>.ack.json`` keeps the version the server last confirmed storing, so
"not yet acknowledged" shows the same count after the app is reopened as
before it was closed (before the first handshake, too).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from crdt_sync import CRDTDocument, CRDTError, PeerId, Snapshot, VersionVector

__all__ = [
    "StoredSession",
    "data_dir",
    "load_acknowledged",
    "load_document",
    "save_acknowledged",
    "save_document",
    "session_path",
    "write_atomically",
]

APP_NAME = "crdt-editor"


def data_dir() -> Path:
    """The per-user data directory (``CRDT_EDITOR_DATA_DIR`` overrides it, for tests)."""
    override = os.environ.get("CRDT_EDITOR_DATA_DIR")
    if override:
        return Path(override)
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """Where one session URL's document is kept."""

    url: str
    snapshot_path: Path
    meta_path: Path


def session_path(url: str, root: Path | None = None) -> StoredSession:
    """The files for ``url`` (not created); an invite link's #token/pin do not count."""
    address = url.partition("#")[0]
    digest = hashlib.sha256(address.encode("utf-8")).hexdigest()[:24]
    folder = (root or data_dir()) / "sessions"
    return StoredSession(url, folder / f"{digest}.crdt", folder / f"{digest}.json")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with open(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def save_document(document: CRDTDocument, stored: StoredSession) -> None:
    """Write ``document``'s change history, id and peer id for ``stored.url``.

    A document that merged a snapshot (the server sends one when it has no
    history to send) holds no history before it: it is stored as a snapshot
    (``"format": "snapshot"`` in the meta file) and reloaded under a new peer id.
    """
    store_format = "changes"
    if document.can_export(VersionVector()):
        data = document.binary_export_changes()
    else:
        data = document.take_snapshot().to_bytes()
        store_format = "snapshot"
    write_atomically(stored.snapshot_path, data)
    meta = {
        "url": stored.url,
        "peer_id": str(document.peer_id),
        "document_id": document.document_id,
        "replica_secret": base64.b64encode(document.replica_secret).decode("ascii"),
        "format": store_format,
    }
    write_atomically(stored.meta_path, json.dumps(meta).encode("utf-8"))


def load_document(stored: StoredSession) -> CRDTDocument | None:
    """The stored document for ``stored.url``, or ``None`` when there is none.

    A corrupt or unreadable store is treated as absent (``None``): the server
    still has every acknowledged change, and the caller starts afresh.
    """
    try:
        data = stored.snapshot_path.read_bytes()
        meta = json.loads(stored.meta_path.read_text(encoding="utf-8"))
        peer_id = PeerId.parse(str(meta["peer_id"]))
        if meta.get("format") == "snapshot":
            # No history to continue from: go on as a new peer (always safe);
            # what the server lacks is sent as a snapshot at the next handshake.
            return CRDTDocument.from_snapshot(
                Snapshot.from_bytes(data), document_id=str(meta["document_id"])
            )
        # A store written before secrets existed gets a new one: the server then
        # accepts it only if no other replica claimed the peer id first.
        encoded = meta.get("replica_secret")
        secret = None if encoded is None else base64.b64decode(str(encoded), validate=True)
        document = CRDTDocument(
            peer_id=peer_id, document_id=str(meta["document_id"]), replica_secret=secret
        )
        document.binary_import_changes(data)
        return document
    except (OSError, ValueError, KeyError, TypeError, CRDTError):
        return None


def _acknowledged_path(stored: StoredSession) -> Path:
    return stored.meta_path.with_name(stored.meta_path.stem + ".ack.json")


def save_acknowledged(stored: StoredSession, acknowledged: Mapping[str, int]) -> None:
    """Remember the version the server last confirmed storing for ``stored.url``."""
    data = json.dumps({str(k): int(v) for k, v in acknowledged.items()})
    write_atomically(_acknowledged_path(stored), data.encode("utf-8"))


def load_acknowledged(stored: StoredSession) -> VersionVector:
    """The remembered acknowledged version (empty when none or unreadable)."""
    try:
        raw = json.loads(_acknowledged_path(stored).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            return VersionVector()
        return VersionVector({str(k): v for k, v in raw.items() if type(v) is int and v >= 0})
    except (OSError, ValueError, TypeError):
        return VersionVector()
