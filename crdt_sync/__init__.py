"""crdt_sync: a pure-Python CRDT document (text, list, map) and its sync protocol.

Quick start::

    from crdt_sync import CRDTDocument, CRDTTextHandler

    a, b = CRDTDocument(), CRDTDocument()
    ta, tb = CRDTTextHandler(a, "shared_text"), CRDTTextHandler(b, "shared_text")
    ta.insert(0, "hello")
    b.import_changes(a.export_changes())
    print(tb.value)  # hello
"""

from .change_batch import ChangeBatch, decode_change_batch
from .changes import Change, decode_changes, encode_changes
from .document import CRDTDocument
from .events import (
    Delete,
    Insert,
    ListEvent,
    MapEvent,
    Retain,
    Subscription,
    TextEvent,
    UpdateEvent,
    apply_delta,
)
from .exceptions import (
    CRDTError,
    DecodeError,
    HandlerError,
    HistoryCompactedError,
    InvalidChangeError,
    PendingBufferFullError,
)
from .handlers import CRDTListHandler, CRDTMapHandler, CRDTTextHandler, Handler
from .ids import OpId, PeerId, VersionVector
from .snapshot import Snapshot
from .sticky import StickyIndex
from .undo import UndoManager

__all__ = [
    "CRDTDocument",
    "CRDTError",
    "CRDTListHandler",
    "CRDTMapHandler",
    "CRDTTextHandler",
    "Change",
    "ChangeBatch",
    "DecodeError",
    "Delete",
    "Handler",
    "HandlerError",
    "HistoryCompactedError",
    "Insert",
    "InvalidChangeError",
    "ListEvent",
    "MapEvent",
    "OpId",
    "PeerId",
    "PendingBufferFullError",
    "Retain",
    "Snapshot",
    "StickyIndex",
    "Subscription",
    "TextEvent",
    "UndoManager",
    "UpdateEvent",
    "VersionVector",
    "apply_delta",
    "decode_change_batch",
    "decode_changes",
    "encode_changes",
]
