"""The registry contract: where the server keeps its documents.

Theory of operation
-------------------
The server holds one :class:`~crdt_sync.CRDTDocument` per document id and asks
a *registry* for it. A registry answers three questions (the ones the Dart
reference's README asks of a custom registry) and this module derives the
rest from them:

* :meth:`CRDTServerRegistry.get_document` -- the document under an id, or None;
* :meth:`CRDTServerRegistry.set_document` -- store a document under an id;
* :meth:`CRDTServerRegistry.document_ids` -- every id stored.

Everything else (creating documents with an epoch, applying a client's
changes, snapshots, unloading, flushing, closing) has a default built on
those three, so a dict-backed registry is a dozen lines (see
``docs/server.md``). Persistent registries override the defaults to keep
their promises:

* **Durability before acknowledgement.** :meth:`apply_changes` returns only
  once the changes it reports as applied are durably stored; the server
  acknowledges a client's changes after that call returns, never before.
* **Epochs.** Every document gets a random *epoch* id when it is created.
  Clients remember it; a server that lost a document and recreated it has a
  new epoch, so a client can tell "the server is behind me" (send it my
  history) from "this is a different document that happens to have the same
  name" (do not merge blindly).

Every method is a coroutine so a registry may do I/O; the server only ever
calls them from its event loop. The implementations live next to this
module: :mod:`server.registry.memory` and :mod:`server.registry.sqlite`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from crdt_sync import (
    Change,
    ChangeBatch,
    CRDTDocument,
    CRDTError,
    DecodeError,
    Snapshot,
    UpdateEvent,
    VersionVector,
    encode_changes,
)
from crdt_sync.sync import AwarenessUpdate
from crdt_sync.sync.document_ids import MAX_DOCUMENT_ID_LENGTH, document_id_problem

from ..exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    DocumentNotFoundError,
    InvalidDocumentIdError,
)

__all__ = [
    "MAX_DOCUMENT_ID_LENGTH",
    "MAX_SECRET_HASH_BYTES",
    "Applied",
    "CRDTServerRegistry",
    "HistoryPage",
    "RegistryObserver",
    "SnapshotListener",
    "applied_result",
    "check_secret_hash",
    "import_and_collect",
    "merge_snapshot_checked",
    "new_epoch",
    "validate_document_id",
    "version_vector_of",
]

#: ``listener(document_id, snapshot)``, see :meth:`CRDTServerRegistry.add_snapshot_listener`.
SnapshotListener = Callable[[str, Snapshot], None]

#: Longest replica-secret hash :meth:`CRDTServerRegistry.claim_peer` stores, in bytes.
MAX_SECRET_HASH_BYTES = 64


@dataclass(frozen=True, slots=True, eq=False)
class Applied:
    """What :meth:`CRDTServerRegistry.apply` did with a client's changes.

    The registry, not the server, looks at the document: the server relays
    :attr:`encoded`, acknowledges with what :attr:`stored` resolves to, and
    answers :attr:`waiting` with ``OUT_OF_SYNC``.

    Attributes:
        applied: every change newly applied by the call, in application order
            (earlier pending changes made ready included; duplicates and
            changes still waiting for dependencies excluded).
        unblocked: the changes of :attr:`applied` that were not in the input:
            they waited for dependencies that the input brought, so its sender
            has never seen them.
        encoded: ``encode_changes(applied)`` (empty when nothing was applied):
            the one encoding, shared by the store and the relay frame.
        waiting: how many changes of the input wait for missing dependencies.
        pending_count: how many changes the document holds waiting (all senders).
        refusal: the core's error when it refused part of the input (an invalid
            change, a full pending buffer); :attr:`applied` lists what it applied
            before that, and it is stored all the same.
        stored: resolves once :attr:`applied` is durably stored, to the
            document's durable version vector (the server acknowledges with
            it); raises a ``StorageError`` when the store fails.
    """

    applied: Sequence[Change]
    unblocked: tuple[Change, ...]
    encoded: bytes
    waiting: int
    pending_count: int
    refusal: CRDTError | None
    stored: Awaitable[VersionVector]


@dataclass(frozen=True, slots=True, eq=False)
class HistoryPage:
    """One page of a document's kept history (:meth:`CRDTServerRegistry.history_page`).

    Attributes:
        start: where the kept history starts: empty when it reaches back to the
            document's creation, else the version vector of :attr:`base`.
        base: the state at :attr:`start` (first page only; None when
            :attr:`start` is empty).
        batches: change batches as :func:`crdt_sync.encode_changes` encoded
            them, in causal order (sent as they are).
        next_cursor: the cursor of the next page; 0 on the last page.
    """

    start: VersionVector
    base: Snapshot | None
    batches: tuple[bytes, ...]
    next_cursor: int


#: Changes encoded together by the default :meth:`CRDTServerRegistry.history_page`.
_HISTORY_CHUNK = 256


def encoding_of(
    applied: Sequence[Change], changes: Sequence[Change], received: bytes | None
) -> bytes:
    """The encoding of ``applied``: ``received`` (the batch ``changes`` arrived in)
    when ``applied`` is exactly ``changes`` (equal values, same order; the
    decoder is deterministic, so every reader decodes those bytes to these
    changes), else a fresh :func:`crdt_sync.encode_changes`. Saves encoding
    what a client sent when all of it applies (the usual case)."""
    if received is not None and _same_changes(applied, changes):
        return received
    return encode_changes(applied) if applied else b""


def _same_changes(applied: Sequence[Change], changes: Sequence[Change]) -> bool:
    """Whether ``applied`` is exactly ``changes`` (the import usually hands back
    the very objects it was given, or the very batch: identity first, equality
    otherwise)."""
    if applied is changes:
        return True
    count = len(applied)
    if count != len(changes):
        return False
    if count == 1:  # a keystroke: no generator
        first, given = applied[0], changes[0]
        return first is given or first == given
    return all(a is c or a == c for a, c in zip(applied, changes, strict=True))


def applied_result(
    document: CRDTDocument,
    changes: Sequence[Change],
    applied: Sequence[Change],
    refusal: CRDTError | None,
    stored: Awaitable[VersionVector],
    encoded: bytes | None = None,
) -> Applied:
    """Build the :class:`Applied` of an import of ``changes`` into ``document``."""
    if _same_changes(applied, changes):
        # The usual case (every change applied, none waited): nothing unblocked,
        # nothing waiting, no id sets to build.
        return Applied(
            applied=applied if isinstance(applied, ChangeBatch) else tuple(applied),
            unblocked=(),
            encoded=(encode_changes(applied) if applied else b"") if encoded is None else encoded,
            waiting=0,
            pending_count=document.pending_count,
            refusal=refusal,
            stored=stored,
        )
    submitted = {change.id for change in changes}
    known = document.version_vector
    return Applied(
        applied=tuple(applied),
        unblocked=tuple(change for change in applied if change.id not in submitted),
        encoded=(encode_changes(applied) if applied else b"") if encoded is None else encoded,
        waiting=sum(1 for change in changes if not known.includes(change.id)),
        pending_count=document.pending_count,
        refusal=refusal,
        stored=stored,
    )


class RegistryObserver:
    """What a registry shared by several server processes tells the server unasked.

    The server registers one with :meth:`CRDTServerRegistry.add_observer`. The
    memory and SQLite registries never call it; a registry shared between
    processes (Redis) calls it, on the event loop, when another process's work
    reaches this one. Every method is a no-op here.
    """

    def remote_changes(
        self, document_id: str, changes: Sequence[Change], encoded: bytes, appended_at: float
    ) -> None:
        """``changes`` (another process's, encoded as ``encoded``, appended to the shared
        store at ``appended_at``, seconds since the epoch) are now in the document."""

    def remote_snapshot(self, document_id: str, snapshot: Snapshot) -> None:
        """Another process merged a client's uploaded ``snapshot``; so did this one."""

    def remote_presence(self, document_id: str, update: AwarenessUpdate) -> None:
        """A client of another process published (or withdrew) its presence."""

    def durable_advanced(self, document_id: str, durable: VersionVector) -> None:
        """Writes that had failed were stored later: ``durable`` now covers them."""

    def storage_problem(self, document_id: str | None, message: str) -> None:
        """The store reported a problem nobody asked about (a malformed entry, a
        key of the wrong type), for ``document_id`` (None: not one document's)."""

    async def peer_alive(self, document_id: str, peer_id: str) -> bool:
        """Another process asks: is this process's connection of ``peer_id`` on
        ``document_id`` alive (it answers a ping)? One that does not is dropped.
        No connection: False."""
        return False


def validate_document_id(document_id: object) -> str:
    """Return ``document_id`` if it is an allowed document id.

    The rule is :mod:`crdt_sync.sync.document_ids` (shared with the client and
    the app): 1 to :data:`MAX_DOCUMENT_ID_LENGTH` characters, not starting with
    a dot, no ``/``, no control characters.

    Raises:
        InvalidDocumentIdError: anything else (also a ``ValueError``).
    """
    problem = document_id_problem(document_id)
    if problem is not None or not isinstance(document_id, str):
        raise InvalidDocumentIdError(f"invalid document id {document_id!r}: {problem}")
    return document_id


def new_epoch() -> str:
    """A fresh random epoch id (32 lowercase hex digits)."""
    return uuid.uuid4().hex


def version_vector_of(changes: Iterable[Change]) -> VersionVector:
    """The smallest version vector that includes every op of ``changes``."""
    if isinstance(changes, ChangeBatch):
        return VersionVector(changes.ends())  # (read from its segments, nothing built)
    ends: dict[str, int] = {}
    for change in changes:
        end = change.counter + change.size
        if end > ends.get(change.peer, 0):
            ends[change.peer] = end
    return VersionVector(ends)


class _ChangeCollector:
    """Collects the changes a remote import applied (pending ones that became ready too).

    An import that applied exactly a :class:`~crdt_sync.ChangeBatch` (a frame's
    changes, the usual case) gives the batch itself, its changes not built:
    the server relays and stores the bytes it came in and counts it, and a
    batch of 10,000 changes took 28 ms to build (the import itself 2.5 ms)."""

    def __init__(self) -> None:
        self.parts: list[Sequence[Change]] = []

    def __call__(self, event: UpdateEvent) -> None:
        if not event.local:
            self.parts.append(event.changes if event.batch is None else event.batch)

    @property
    def changes(self) -> Sequence[Change]:
        """A :class:`~crdt_sync.ChangeBatch` applied alone, else a list."""
        parts = self.parts
        if len(parts) == 1 and isinstance(parts[0], ChangeBatch):
            return parts[0]
        return [change for part in parts for change in part]


def import_and_collect(
    document: CRDTDocument, changes: Iterable[Change]
) -> tuple[Sequence[Change], CRDTError | None]:
    """Import ``changes`` into ``document``; return (the changes applied, the refusal).

    The changes applied are ``changes`` itself when it is a
    :class:`~crdt_sync.ChangeBatch` the import applied exactly (nothing
    built), else a list. They include earlier pending changes that this import made ready,
    in the order the document applied them, and excludes duplicates and
    changes left pending for missing dependencies. The second item is the
    core's error if it refused part of the input (an invalid change, a full
    pending buffer); what it applied before that is still in the list, and
    the caller must store it before reporting the error.
    """
    if isinstance(changes, list | tuple) and len(changes) == 1 and not document.pending_count:
        # A lone change with nothing waiting (a keystroke): the import applies it,
        # finds it a duplicate, or leaves it waiting, and it cannot make another
        # change ready, so its count says which, without an update subscription
        # (and the event, and its copies of the changes, that the import then makes).
        try:
            count = document.import_changes(changes)
        except CRDTError as error:
            return [], error  # an import applies whole or not at all
        return (list(changes) if count else []), None
    collector = _ChangeCollector()
    subscription = document.on_update(collector)
    refusal: CRDTError | None = None
    try:
        document.import_changes(changes)
    except CRDTError as error:
        refusal = error
    finally:
        subscription.cancel()
    return collector.changes, refusal


def merge_snapshot_checked(
    document: CRDTDocument, snapshot: Snapshot
) -> tuple[bool, list[Change], CRDTError | None]:
    """Merge a client's ``snapshot`` into ``document``, refusing it while nothing changed.

    Returns ``(merged, ready, refusal)``: ``merged`` is False when the snapshot
    held nothing the document lacks (nothing was touched); ``ready`` lists the
    changes that waited for missing dependencies and that the snapshot made
    applicable (applied too, in order); ``refusal`` is the core's error if
    applying one of those failed after the merge (the merged state stands and
    must still be stored before the error is reported).

    The merge is first tried on a scratch copy of the document, because a
    snapshot that decodes can still be impossible to merge (a name that is text
    here and a list there, elements whose origins are nowhere) and the core
    could fail half-way through. Uploads are rare, so the copy is affordable.

    Raises:
        CRDTError: the snapshot cannot be merged; ``document`` is untouched.
    """
    if snapshot.version_vector <= document.version_vector:
        return False, [], None
    try:
        scratch = CRDTDocument.from_snapshot(document.take_snapshot())
        scratch.import_snapshot(snapshot)
    except CRDTError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as error:
        # Remote input: whatever the core trips on is a refusal, not a crash.
        raise DecodeError(f"the snapshot cannot be merged: {error!r}") from error
    collector = _ChangeCollector()
    subscription = document.on_update(collector)
    refusal: CRDTError | None = None
    try:
        document.import_snapshot(snapshot)
    except CRDTError as error:
        refusal = error
    finally:
        subscription.cancel()
    return True, list(collector.changes), refusal


class CRDTServerRegistry(ABC):
    """Where a server keeps its documents (abstract base).

    Subclasses must implement :meth:`get_document`, :meth:`set_document` and
    :meth:`document_ids`; every other method has a working default built on
    those three. A subclass that defines ``__init__`` should call
    ``super().__init__()`` (the defaults keep a little state: epochs and the
    latest snapshots); one that does not still works.

    Document ids passed in by the server have already been checked with
    :func:`validate_document_id`.
    """

    #: Whether the server may run :meth:`apply` (and the other calls a client's
    #: frame leads to) outside any task, straight from the socket's callback
    #: (``server/connection.py``): true for a registry whose calls use nothing
    #: that needs the current task (``asyncio.timeout`` does). Where such a call
    #: suspends, the connection's task carries it on. False by default (a
    #: custom registry may do anything).
    runs_outside_tasks = False

    def __init__(self) -> None:
        self._default_epochs: dict[str, str] = {}
        self._default_snapshots: dict[str, Snapshot] = {}
        self._snapshot_listeners: list[SnapshotListener] = []
        self._observers: list[RegistryObserver] = []
        self._default_claims: dict[tuple[str, str], bytes] = {}

    # -- the three required operations ----------------------------------------------------

    @abstractmethod
    async def get_document(self, document_id: str) -> CRDTDocument | None:
        """Return the document stored under ``document_id``, or None if there is none."""

    @abstractmethod
    async def set_document(self, document_id: str, document: CRDTDocument) -> None:
        """Store ``document`` under ``document_id``, replacing any earlier one."""

    @abstractmethod
    async def document_ids(self) -> list[str]:
        """Every document id stored (loaded or not), in no particular order."""

    # -- derived operations, override for efficiency or durability --------------------------

    def _epochs(self) -> dict[str, str]:
        # Tolerate subclasses that skipped super().__init__().
        try:
            return self._default_epochs
        except AttributeError:
            self._default_epochs = {}
            return self._default_epochs

    def _listeners(self) -> list[SnapshotListener]:
        try:
            return self._snapshot_listeners
        except AttributeError:
            self._snapshot_listeners = []
            return self._snapshot_listeners

    def add_snapshot_listener(self, listener: SnapshotListener) -> Callable[[], None]:
        """Call ``listener(document_id, snapshot)`` after every stored snapshot.

        Returns a function that removes the listener. The server uses this to
        emit ``SNAPSHOT_CREATED``. Listeners run on the event loop and must
        not raise (an exception propagates to whoever triggered the snapshot).
        """
        listeners = self._listeners()
        listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                listeners.remove(listener)

        return remove

    def notify_snapshot(self, document_id: str, snapshot: Snapshot) -> None:
        """Tell the listeners a snapshot of ``document_id`` was stored (subclasses call it)."""
        for listener in list(self._listeners()):
            listener(document_id, snapshot)

    def add_observer(self, observer: RegistryObserver) -> Callable[[], None]:
        """Tell ``observer`` what other processes do (see :class:`RegistryObserver`).

        Returns a function that removes it.
        """
        try:
            observers = self._observers
        except AttributeError:
            observers = self._observers = []
        observers.append(observer)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                observers.remove(observer)

        return remove

    def observers(self) -> list[RegistryObserver]:
        """The registered observers (subclasses call them)."""
        try:
            return list(self._observers)
        except AttributeError:
            return []

    def publish_presence(self, document_id: str, update: AwarenessUpdate) -> None:
        """Tell the other server processes about a local client's presence.

        Presence is ephemeral: best effort, never waited for. The default (one
        process) does nothing.
        """
        return None

    async def peer_holder(self, document_id: str, peer_id: str) -> str | None:
        """The id of another server process that has a connection of ``peer_id`` on
        ``document_id`` marked live (a registry shared by processes). The default
        (one process): None."""
        return None

    async def peer_live_elsewhere(self, document_id: str, peer_id: str, timeout: float) -> bool:
        """Whether another server process has a live connection of ``peer_id`` on
        ``document_id``: it asks that process, which pings it within ``timeout``
        seconds and drops it if it does not answer. The default: False."""
        return False

    async def hold_peer(self, document_id: str, peer_id: str) -> bool:
        """Mark this process's new connection of ``peer_id`` on ``document_id`` live
        (the other processes may ask about it); False if another process holds the
        mark. The default (one process): True."""
        return True

    def peer_disconnected(self, document_id: str, peer_id: str) -> None:
        """This process's connection of ``peer_id`` on ``document_id`` is gone. The
        default does nothing."""
        return None

    async def check_health(self) -> None:
        """Return when the store answers (for ``/healthz``); raise ``StorageError`` if not.

        The default has nothing to check.
        """
        return None

    def _snapshots(self) -> dict[str, Snapshot]:
        try:
            return self._default_snapshots
        except AttributeError:
            self._default_snapshots = {}
            return self._default_snapshots

    async def has_document(self, document_id: str) -> bool:
        """Whether a document is stored under ``document_id``."""
        return await self.get_document(document_id) is not None

    async def document_count(self) -> int:
        """How many documents are stored."""
        return len(await self.document_ids())

    async def create_document(self, document_id: str) -> CRDTDocument:
        """Create, store and return an empty document with a fresh epoch.

        Raises:
            DocumentExistsError: a document with that id exists.
            InvalidDocumentIdError: the id is not valid.
        """
        validate_document_id(document_id)
        if await self.has_document(document_id):
            raise DocumentExistsError(document_id)
        document = CRDTDocument(document_id=document_id)
        self._epochs()[document_id] = new_epoch()
        await self.set_document(document_id, document)
        return document

    async def get_epoch(self, document_id: str) -> str:
        """The epoch id the document got when it was created.

        The default keeps epochs in memory, so a custom in-memory registry
        gets a new epoch per process (which is right: its documents do not
        survive a restart either). A document stored behind this default's
        back (``set_document`` without ``create_document``) gets an epoch on
        first request.

        Raises:
            DocumentNotFoundError: no such document.
        """
        if not await self.has_document(document_id):
            raise DocumentNotFoundError(document_id)
        return self._epochs().setdefault(document_id, new_epoch())

    async def apply(
        self, document_id: str, changes: Sequence[Change], *, encoded: bytes | None = None
    ) -> Applied:
        """Import a client's ``changes`` into the document; say what happened (:class:`Applied`).

        ``encoded`` is the change batch ``changes`` arrived in, if known: when
        exactly those changes are applied it is :attr:`Applied.encoded` (stored
        and relayed as it is; :func:`encoding_of`).

        Returns once the changes are in the document (the server relays them at
        once); :attr:`Applied.stored` resolves once they are durably stored (the
        server acknowledges them then). Stores keep the order of calls: what one
        call's ``stored`` covers includes everything applied by earlier calls.

        The default imports into the document from :meth:`get_document` and
        stores it again with :meth:`set_document` (the only persistence hook a
        minimal custom registry has) before returning.

        Raises:
            DocumentNotFoundError: no such document.
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        applied, refusal = import_and_collect(document, changes)
        if applied:
            await self.set_document(document_id, document)
        stored = asyncio.get_running_loop().create_future()
        stored.set_result(await self.durable_version_vector(document_id))
        return applied_result(
            document, changes, applied, refusal, stored, encoding_of(applied, changes, encoded)
        )

    async def apply_changes(self, document_id: str, changes: Sequence[Change]) -> list[Change]:
        """:meth:`apply`, then wait until stored; return the changes applied.

        Raises:
            DocumentNotFoundError: no such document.
            ChangesRejectedError: the document refused part of the input; the
                changes applied before the refusal are stored and listed in
                the error's ``applied``.
            StorageError: the store failed.
        """
        result = await self.apply(document_id, changes)
        await result.stored
        if result.refusal is not None:
            raise ChangesRejectedError(result.refusal, result.applied) from result.refusal
        return list(result.applied)

    async def claim_peer(self, document_id: str, peer_id: str, secret_hash: bytes) -> bool:
        """Claim ``peer_id`` on the document for the replica whose secret hashes to ``secret_hash``.

        First claim wins: the first call for a (document, peer id) stores the
        hash and returns True; later calls return True only with the same hash
        (compared in constant time). The claim is stored as durably as the
        documents, and holds for every server process sharing the registry.
        It lives as long as the document (:meth:`remove_document` drops it).
        The default keeps claims in memory.

        Raises:
            ValueError: ``secret_hash`` is not 1 to :data:`MAX_SECRET_HASH_BYTES` bytes.
        """
        stored = self._claims().setdefault((document_id, peer_id), check_secret_hash(secret_hash))
        return hmac.compare_digest(stored, secret_hash)

    async def claimed_peers(self, document_id: str, peer_ids: Iterable[str]) -> set[str]:
        """Which of ``peer_ids`` hold a claim on the document (see :meth:`claim_peer`).

        Read-only: it claims nothing. The server asks it before merging a snapshot
        upload that brings ops of peers other than the uploader's.
        """
        claims = self._claims()
        return {peer for peer in peer_ids if (document_id, peer) in claims}

    def _claims(self) -> dict[tuple[str, str], bytes]:
        try:
            return self._default_claims
        except AttributeError:
            self._default_claims = {}
            return self._default_claims

    async def apply_snapshot(
        self, document_id: str, snapshot: Snapshot
    ) -> tuple[bool, list[Change]]:
        """Merge a client's uploaded ``snapshot`` into the document and store the result.

        Returns ``(merged, ready)``: ``merged`` is False when the snapshot held
        nothing new (nothing stored); ``ready`` lists changes that waited for
        dependencies the snapshot brought, now applied. When this returns, the
        merged state is stored as durably as the registry can store it, and
        :meth:`durable_version_vector` covers ``snapshot.version_vector``: the
        server acknowledges the upload next. The document's history no longer
        covers everything it holds, so clients lagging behind get a snapshot.

        The default merges into the document from :meth:`get_document` and
        stores it again with :meth:`set_document`.

        Raises:
            DocumentNotFoundError: no such document.
            ChangesRejectedError: the snapshot cannot be merged (the document is
                untouched, ``applied`` is empty), or applying a change it made
                ready failed after the merge (the merged state is stored, the
                changes applied are in ``applied``).
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        try:
            merged, ready, refusal = merge_snapshot_checked(document, snapshot)
        except CRDTError as error:
            raise ChangesRejectedError(error, []) from error
        if merged:
            await self.set_document(document_id, document)
        if refusal is not None:
            raise ChangesRejectedError(refusal, ready) from refusal
        return merged, ready

    async def durable_version_vector(self, document_id: str) -> VersionVector:
        """What of the document is durably stored (the server acknowledges up to this).

        Never covers more than the in-memory document's version vector, and
        never shrinks while the document stays loaded. The default (for
        registries that store on every :meth:`apply_changes`) is the
        document's version vector.

        Raises:
            DocumentNotFoundError: no such document.
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        return document.version_vector

    async def create_snapshot(self, document_id: str) -> Snapshot:
        """Take a snapshot of the document, remember it as the latest, and return it.

        Raises:
            DocumentNotFoundError: no such document.
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        snapshot = document.take_snapshot()
        self._snapshots()[document_id] = snapshot
        self.notify_snapshot(document_id, snapshot)
        return snapshot

    async def history_page(self, document_id: str, cursor: int, max_bytes: int) -> HistoryPage:
        """One page of the document's kept history, from ``cursor`` (0: the start).

        A page holds batches totalling about ``max_bytes`` encoded bytes (at
        least one batch while any remain). The default serves the history the
        document in memory holds (``export_changes``; the cursor is an index
        into it): complete from creation unless the document was loaded from a
        snapshot or merged one, in which case the history kept here starts at
        the current state (``start`` is its version vector, ``base`` the state).
        Persistent registries keep more (``SqliteServerRegistry``).
        """
        document = await self.get_document(document_id)
        if document is None:
            raise DocumentNotFoundError(document_id)
        if not document.can_export(VersionVector()):
            base = document.take_snapshot() if cursor == 0 else None
            return HistoryPage(document.version_vector, base, (), 0)
        changes = document.export_changes()
        position = min(cursor, len(changes))
        batches: list[bytes] = []
        size = 0
        while position < len(changes) and (not batches or size < max_bytes):
            batch = encode_changes(changes[position : position + _HISTORY_CHUNK])
            position = min(len(changes), position + _HISTORY_CHUNK)
            batches.append(batch)
            size += len(batch)
        next_cursor = position if position < len(changes) else 0
        return HistoryPage(VersionVector(), None, tuple(batches), next_cursor)

    async def get_latest_snapshot(self, document_id: str) -> Snapshot | None:
        """The latest snapshot made by :meth:`create_snapshot`, or None."""
        return self._snapshots().get(document_id)

    async def remove_document(self, document_id: str) -> bool:
        """Delete the document; return whether there was one.

        The default cannot delete through the three required operations and
        raises ``NotImplementedError``; registries that support deletion
        override it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot remove documents")

    async def release_document(self, document_id: str) -> None:
        """The server no longer needs the document in memory (its last client left).

        A persistent registry flushes it and drops it from memory; the next
        :meth:`get_document` loads it again. The default keeps it (a memory
        registry has nowhere else to keep it).
        """
        return None

    async def flush(self) -> None:
        """Wait until everything written so far is durably stored."""
        return None

    async def close(self) -> None:
        """Flush and release resources. The registry must not be used afterwards."""
        await self.flush()


def check_secret_hash(secret_hash: object) -> bytes:
    """``secret_hash`` as bytes if it is 1 to :data:`MAX_SECRET_HASH_BYTES` bytes long."""
    if not isinstance(secret_hash, bytes | bytearray):
        raise ValueError(f"a secret hash is bytes, not {type(secret_hash).__name__}")
    if not 0 < len(secret_hash) <= MAX_SECRET_HASH_BYTES:
        raise ValueError(
            f"a secret hash has 1 to {MAX_SECRET_HASH_BYTES} bytes, not {len(secret_hash)}"
        )
    return bytes(secret_hash)
