"""Replay real editing traces (``shared/traces/sequential``) and check ``endContent``.

Each trace transaction becomes one local transaction. The replayed document is
then encoded as a snapshot and as binary changes, decoded, and must show the
same text again. A trace is replayed once per distinct file content (the
``ascii_only`` copies of ASCII-only traces are byte-identical to the plain
ones), and the encoding tests reuse that replay.

The traces live next to the repository (``../shared/traces``) or wherever
``CRDT_TRACES_DIR`` points; without them these tests skip, saying so.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crdt_sync import (
    CRDTDocument,
    CRDTTextHandler,
    Snapshot,
)

NAME = "text"


def traces_dir() -> Path:
    configured = os.environ.get("CRDT_TRACES_DIR")
    root = (
        Path(configured) if configured else Path(__file__).parents[2].parent / "shared" / "traces"
    )
    return root / "sequential" if (root / "sequential").is_dir() else root


def trace_files(ascii_only_slow: bool = False) -> list[Any]:
    """One param per trace file; ``ascii_only_slow`` puts the ascii_only copies behind slow.

    (Remote-applying a whole history is the costliest check, and an ascii_only
    copy has the same structure as its plain trace, so CI runs it on the plain ones.)
    """
    directory = traces_dir()
    files = sorted(directory.glob("*.json.gz")) + sorted(directory.glob("ascii_only/*.json.gz"))
    if not files:
        reason = f"no editing traces in {directory} (set CRDT_TRACES_DIR to shared/traces)"
        return [pytest.param(None, id="no-traces", marks=pytest.mark.skip(reason=reason))]
    return [
        pytest.param(
            f,
            id=str(f.relative_to(directory)),
            marks=[pytest.mark.slow] if ascii_only_slow and f.parent.name == "ascii_only" else [],
        )
        for f in files
    ]


@dataclass
class Replayed:
    doc: CRDTDocument
    end: str
    digest: str


_replays: dict[str, Replayed] = {}
# Checks already passed, per (check, trace digest): identical files run once.
_passed: set[tuple[str, str]] = set()


def replay(path: Path) -> Replayed:
    """Replay ``path`` (once per distinct content) into a new document."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    done = _replays.get(digest)
    if done is not None:
        return done
    trace: dict[str, Any] = json.loads(gzip.decompress(raw))
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, NAME)
    assert trace["startContent"] == ""
    for txn in trace["txns"]:
        with doc.transaction():
            for pos, deleted, inserted in txn["patches"]:
                if deleted:
                    text.delete(pos, deleted)
                if inserted:
                    text.insert(pos, inserted)
    result = _replays[digest] = Replayed(doc, trace["endContent"], digest)
    return result


@pytest.mark.parametrize("path", trace_files())
def test_trace_replay_matches_end_content(path: Path) -> None:
    replayed = replay(path)
    assert replayed.doc.get_value(NAME) == replayed.end
    replayed.doc.check_invariants()


@pytest.mark.parametrize("path", trace_files())
def test_trace_survives_snapshot_bytes(path: Path) -> None:
    replayed = replay(path)
    if ("snapshot", replayed.digest) in _passed:
        return
    data = replayed.doc.take_snapshot().to_bytes()
    loaded = CRDTDocument.from_snapshot(Snapshot.from_bytes(data))
    assert CRDTTextHandler(loaded, NAME).value == replayed.end
    assert loaded.version_vector == replayed.doc.version_vector
    loaded.check_invariants()
    _passed.add(("snapshot", replayed.digest))


@pytest.mark.parametrize("path", trace_files(ascii_only_slow=True))
def test_trace_survives_binary_changes(path: Path) -> None:
    replayed = replay(path)
    if ("changes", replayed.digest) in _passed:
        return
    data = replayed.doc.binary_export_changes()
    remote = CRDTDocument()
    applied = remote.binary_import_changes(data)
    assert applied == len(replayed.doc.export_changes())
    assert remote.get_value(NAME) == replayed.end
    assert remote.version_vector == replayed.doc.version_vector
    assert remote.pending_count == 0
    remote.check_invariants()
    _passed.add(("changes", replayed.digest))
