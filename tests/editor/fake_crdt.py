"""A minimal stand-in for the ``crdt_sync`` core API, used only while the real
core is not importable yet (see ``conftest.py``).

It implements the contract's names with plain Python strings and lists and no
merging: a "remote" edit is simulated with :func:`remote`, which runs handler
operations whose events say ``local=False``. Enough to drive the Qt adapters.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple


class Retain(NamedTuple):
    count: int


class Insert(NamedTuple):
    content: Any


class Delete(NamedTuple):
    count: int


@dataclass(frozen=True)
class TextEvent:
    delta: tuple[Any, ...]
    origin: object
    local: bool


@dataclass(frozen=True)
class ListEvent:
    delta: tuple[Any, ...]
    origin: object
    local: bool


class Subscription:
    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel()


class PeerId:
    def __init__(self, value: str) -> None:
        self.value = value

    @classmethod
    def generate(cls) -> PeerId:
        return cls(str(uuid.uuid4()))

    def __str__(self) -> str:
        return self.value


class CRDTDocument:
    def __init__(self, peer_id: PeerId | None = None, document_id: str | None = None) -> None:
        self.peer_id = peer_id or PeerId.generate()
        self.document_id = document_id or str(uuid.uuid4())
        self._origin: object = None
        self._local = True
        self._change_callbacks: list[Callable[[object], None]] = []
        self._handlers: dict[str, _Handler] = {}
        # Replication by replay (no merging): (peer, seq, handler, method, args).
        self._log: list[tuple[str, int, str, str, tuple[Any, ...]]] = []
        self._seen: dict[str, int] = {}

    @property
    def version_vector(self) -> dict[str, int]:
        return dict(self._seen)

    def _record(self, handler: str, method: str, args: tuple[Any, ...]) -> None:
        if self._local:
            peer = str(self.peer_id)
            seq = self._seen.get(peer, 0)
            self._seen[peer] = seq + 1
            self._log.append((peer, seq, handler, method, args))

    def export_changes(self, since: dict[str, int] | None = None) -> list[Any]:
        since = since or {}
        return [e for e in self._log if e[1] >= since.get(e[0], 0)]

    def import_changes(self, changes: list[Any]) -> int:
        applied = 0
        for entry in changes:
            peer, seq, handler, method, args = entry
            if seq < self._seen.get(peer, 0):
                continue
            with remote(self):
                getattr(self._handlers[handler], method)(*args)
            self._seen[peer] = seq + 1
            self._log.append(entry)
            applied += 1
        return applied

    @contextmanager
    def transaction(self, origin: object = None) -> Iterator[None]:
        previous = self._origin
        self._origin = origin
        try:
            yield
        finally:
            self._origin = previous
        if self._local:
            for cb in list(self._change_callbacks):
                cb(object())

    def on_change(self, callback: Callable[[object], None]) -> Subscription:
        self._change_callbacks.append(callback)
        return Subscription(lambda: self._change_callbacks.remove(callback))


class _Handler:
    def __init__(self, doc: CRDTDocument, name: str) -> None:
        self.doc = doc
        self.name = name
        self._observers: list[Callable[[Any], None]] = []
        doc._handlers[name] = self

    def observe(self, callback: Callable[[Any], None]) -> Subscription:
        self._observers.append(callback)
        return Subscription(lambda: self._observers.remove(callback))

    def _emit(self, event: Any) -> None:
        for cb in list(self._observers):
            cb(event)


class CRDTTextHandler(_Handler):
    def __init__(self, doc: CRDTDocument, name: str = "shared_text") -> None:
        super().__init__(doc, name)
        self.value = ""

    def __len__(self) -> int:
        return len(self.value)

    def insert(self, index: int, text: str) -> None:
        if not 0 <= index <= len(self.value):
            raise IndexError(index)
        self.doc._record(self.name, "insert", (index, text))
        self.value = self.value[:index] + text + self.value[index:]
        self._emit(TextEvent((Retain(index), Insert(text)), self.doc._origin, self.doc._local))

    def delete(self, index: int, count: int) -> None:
        if index < 0 or index + count > len(self.value):
            raise IndexError(index)
        self.doc._record(self.name, "delete", (index, count))
        self.value = self.value[:index] + self.value[index + count :]
        self._emit(TextEvent((Retain(index), Delete(count)), self.doc._origin, self.doc._local))


class CRDTListHandler(_Handler):
    def __init__(self, doc: CRDTDocument, name: str = "shared_list") -> None:
        super().__init__(doc, name)
        self._items: list[Any] = []

    @property
    def value(self) -> list[Any]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Any:
        return self._items[i]

    def _event(self, *delta: Any) -> None:
        self._emit(ListEvent(tuple(delta), self.doc._origin, self.doc._local))

    def insert(self, index: int, value: Any) -> None:
        if not 0 <= index <= len(self._items):
            raise IndexError(index)
        self.doc._record(self.name, "insert", (index, value))
        self._items.insert(index, value)
        self._event(Retain(index), Insert([value]))

    def append(self, value: Any) -> None:
        self.insert(len(self._items), value)

    def delete(self, index: int, count: int = 1) -> None:
        if index < 0 or index + count > len(self._items):
            raise IndexError(index)
        self.doc._record(self.name, "delete", (index, count))
        del self._items[index : index + count]
        self._event(Retain(index), Delete(count))

    def update(self, index: int, value: Any) -> None:
        self.doc._record(self.name, "update", (index, value))
        self._items[index] = value
        self._event(Retain(index), Delete(1), Insert([value]))

    def move(self, from_index: int, to_index: int) -> None:
        self.doc._record(self.name, "move", (from_index, to_index))
        item = self._items.pop(from_index)
        self._items.insert(to_index, item)
        if from_index < to_index:
            self._event(
                Retain(from_index), Delete(1), Retain(to_index - from_index), Insert([item])
            )
        elif from_index > to_index:
            self._event(Retain(to_index), Insert([item]), Retain(from_index - to_index), Delete(1))


@contextmanager
def remote(doc: CRDTDocument) -> Iterator[None]:
    """Run handler operations as if they arrived from another peer."""
    doc._local = False
    try:
        with doc.transaction(origin="remote"):
            yield
    finally:
        doc._local = True


def as_module() -> types.ModuleType:
    """Return a module object that can stand in for ``crdt_sync``."""
    module = types.ModuleType("crdt_sync")
    for name in (
        "Retain",
        "Insert",
        "Delete",
        "TextEvent",
        "ListEvent",
        "Subscription",
        "PeerId",
        "CRDTDocument",
        "CRDTTextHandler",
        "CRDTListHandler",
    ):
        setattr(module, name, globals()[name])
    return module
