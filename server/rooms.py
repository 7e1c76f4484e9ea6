"""Rooms: one per loaded document, with its clients; applying and relaying changes.

No sockets here. A room's members are anything with a session and a
``flush()`` (:class:`Member`; the server's connections in production): a
room hands them frames through ``member.session`` and calls ``flush()`` to
have them sent.

A room is created when the first client's handshake is accepted (creating
the document in the registry when ``allow_create`` is on) and released
``idle_unload_after`` seconds after the last client left (the registry
flushes it first). A per-document lock serialises joining and unloading so
no client ever holds a copy the registry has dropped.

Ordering guarantees:

* a client's changes are applied in the order it sent them (the connection
  awaits each :meth:`Rooms.apply` in turn);
* they are relayed to the other clients as soon as they are in the document,
  and acknowledged to the sender with the registry's *durable* version
  vector once stored, so an acknowledged change survives a crash; the
  client's next frame is read, applied and relayed while the store works
  (only the Ack waits for the disk), and its Acks go out in the order of
  its batches;
* changes applied within one turn of the event loop (from several clients)
  are relayed together at the end of that turn, or, when the room relayed
  less than ``relay_interval`` ago, once that interval is over (a quiet room
  holds nothing back; a busy one sends each client at most one relay frame
  per interval instead of one per change), each batch encoded once:
  a client that sent none of them gets them all as **one** frame (the same
  bytes for every such client); a client that sent some of them gets the
  others' batches, each as the frame encoded for it, never its own changes.
  Anything else sent to the room's clients first flushes what is waiting, so
  relayed changes keep the order in which they were applied;
* changes that waited for missing dependencies and that a client's change
  made ready are relayed to every client, that client included (it has
  never seen them);
* a joining client is added to the room in the same step that computes
  what it lacks, so it misses no relay (at worst it gets a duplicate,
  which the CRDT ignores);
* a client's snapshot upload (its document cannot send changes: loaded
  from a snapshot, or compacted) is merged only if the merge is possible,
  stored (the merged state) before the ``Ack``, and pushed to the other
  clients as an unsolicited ``DocumentStatus`` carrying the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crdt_sync import Change, CRDTDocument, CRDTError, Snapshot, VersionVector, encode_changes
from crdt_sync.exceptions import PendingBufferFullError
from crdt_sync.snapshot import merge_introduces
from crdt_sync.sync import (
    AwarenessUpdate,
    Compressor,
    DocumentStatus,
    ErrorCode,
    HandshakeRequest,
    Role,
    encode_message,
)
from crdt_sync.sync.messages import (
    encode_changes_frame,
    encode_dictionary_frame,
    encode_relay_frame,
)
from crdt_sync.sync.relay import RelayDictionary, encode_records, time_base

from .catchup import refresh
from .events import ServerEventType
from .exceptions import (
    ChangesRejectedError,
    DocumentExistsError,
    RegistryError,
    StorageUnavailableError,
)
from .metrics import ServerMetrics
from .presence import REMOTE, RoomPresence, presence_size
from .registry import CRDTServerRegistry, RegistryObserver
from .session import ServerSession, SessionState
from .trust import HostQuotas, KeyedGates, Limits, UploadRefusal, upload_violation

__all__ = ["Emit", "Member", "Room", "Rooms", "Spawn"]

_log = logging.getLogger(__name__)

#: ``emit(type, message, **data)``: report a server event.
Emit = Callable[..., None]
#: ``spawn(coroutine, name)``: run a background task the server cancels on stop.
Spawn = Callable[[Awaitable[Any], str], "asyncio.Task[Any]"]


class Member(Protocol):
    """A client in a room: its protocol session, and a way to send what it queued."""

    client_id: str
    session: ServerSession
    room: Room | None
    #: The client's address, for per-address quotas ("" when unknown).
    host: str
    #: ``time.perf_counter()`` when its latest frame arrived (propagation metrics).
    received_at: float

    def flush(self) -> None:
        """Send what the session queued (never blocks)."""

    def relay(self, frame: bytes) -> bool:
        """``session.send_frame(frame)`` then :meth:`flush` (``frame`` is the same
        bytes object for many members: a relay frame), if the session is open;
        returns whether it is (False: nothing sent)."""

    async def answers_ping(self, timeout: float) -> bool:
        """Whether the client answers a liveness ping within ``timeout`` seconds."""

    def drop(self, code: ErrorCode, reason: str) -> None:
        """End the connection now (best-effort ``Error``, then cut the transport)."""


class _Relay:
    """A batch of applied changes waiting for the end of the loop's turn (a plain
    class: made for every edit, and a frozen dataclass's ``__init__`` costs more)."""

    __slots__ = ("changes", "encoded", "sender")

    def __init__(self, changes: Sequence[Change], encoded: bytes, sender: object) -> None:
        self.changes = changes
        self.encoded = encoded
        self.sender = sender  # the member whose changes they are, or None


@dataclass(eq=False)
class Room:
    """A loaded document and the clients on it."""

    document_id: str
    document: CRDTDocument
    epoch: str
    members: set[Member] = field(default_factory=set)
    presence: RoomPresence = field(default_factory=RoomPresence)
    unload_task: asyncio.Task[None] | None = None
    #: Estimated encoded size of the document (its snapshot when loaded, plus
    #: what was applied since), for ``Limits.max_document_bytes``.
    size: int = 0
    #: Applied batches not yet relayed, oldest first, and the flush scheduled for them.
    relays: list[_Relay] = field(default_factory=list)
    relay_flush: asyncio.Handle | None = None
    #: When the room last relayed (the event loop's clock).
    relayed_at: float = float("-inf")
    #: Peer ids and handler names numbered for relay frames (protocol version 4):
    #: append-only for the room's life, so a member's ``session.dictionary_sent``
    #: (how many entries it was sent) stays meaningful.
    dictionary: RelayDictionary = field(default_factory=RelayDictionary)


class _Refused(Exception):
    """A handshake refused for a quota (code and message for the client)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Rooms(RegistryObserver):
    """Every room of a server, and what clients do in them.

    It observes the registry: what clients of other server processes do
    (a shared registry reports it) is relayed to this process's clients.

    Args:
        registry: where documents live.
        compressor: the frame compression every client uses.
        allow_create: create a document on its first handshake.
        max_pending_changes: bound on changes waiting for dependencies.
        idle_unload_after: seconds a room outlives its last client.
        awareness_timeout: seconds a presence state lives without renewal.
        emit: reports server events.
        spawn: runs background tasks (idle unloads) that the server cancels.
        metrics: the counters to keep.
        relay_interval: seconds a busy room gathers changes into one relay
            frame (0: relay at the end of every turn of the event loop).
        relay_frames_per_second: how many relay frames a busy room sends per
            second at most, all its clients together: a room of ``n`` clients
            gathers for ``n / relay_frames_per_second`` seconds when that is
            longer than ``relay_interval`` (a big room sends fewer, bigger
            frames); 0 or infinity: no such bound.
    """

    def __init__(
        self,
        registry: CRDTServerRegistry,
        compressor: Compressor,
        *,
        allow_create: bool,
        max_pending_changes: int,
        idle_unload_after: float,
        awareness_timeout: float,
        emit: Emit,
        spawn: Spawn,
        limits: Limits | None = None,
        hosts: HostQuotas | None = None,
        metrics: ServerMetrics | None = None,
        relay_interval: float = 0.0,
        relay_frames_per_second: float = 0.0,
    ) -> None:
        if relay_interval < 0:
            raise ValueError(f"relay_interval must not be negative, not {relay_interval}")
        if not relay_frames_per_second >= 0:
            raise ValueError(
                f"relay_frames_per_second must not be negative, not {relay_frames_per_second}"
            )
        self.relay_interval = relay_interval
        # Seconds of gathering per client of a room (0: the room's size does not count).
        self._gap_per_member = (
            1.0 / relay_frames_per_second if 0 < relay_frames_per_second < float("inf") else 0.0
        )
        self.registry = registry
        self.limits = limits if limits is not None else Limits()
        self.hosts = hosts if hosts is not None else HostQuotas(self.limits)
        self.metrics = metrics if metrics is not None else ServerMetrics(registry)
        # Observed per edit: the histogram's child is looked up once.
        self._local_propagation = self.metrics.propagation.labels("local")
        self.compressor = compressor
        self.allow_create = allow_create
        self.max_pending_changes = max_pending_changes
        self.idle_unload_after = idle_unload_after
        self.awareness_timeout = awareness_timeout
        self._emit = emit
        self._spawn = spawn
        self.rooms: dict[str, Room] = {}
        self._locks = KeyedGates(asyncio.Lock)
        #: Set when the server stops: no new joins, no idle unloads.
        self.closing = False
        #: Emit CLIENT_CHANGE_APPLIED for each batch applied (one per edit).
        self.change_events = True

    def get(self, document_id: str) -> Room | None:
        """The room of a loaded document, or None."""
        return self.rooms.get(document_id)

    def _lock(self, document_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the document's lock (forgotten once nobody holds or waits for it)."""
        return self._locks.hold(document_id)

    @property
    def lock_count(self) -> int:
        """How many per-document locks exist (documents being joined or unloaded)."""
        return len(self._locks)

    # -- joining and leaving -----------------------------------------------------------

    async def join(
        self,
        member: Member,
        request: HandshakeRequest,
        document_id: str,
        role: Role = Role.WRITE,
    ) -> None:
        """Answer ``member``'s handshake: open the room (loading or creating) and join it
        with ``role`` (a READ member's changes are refused by its session)."""
        session = member.session
        try:
            # The liveness ping of an existing connection with this peer id takes a
            # round trip (seconds, for a dead one): never while holding the lock.
            if not await self._replace_stale(member, document_id, request.peer_id):
                return
            if document_id in self.rooms and not await self._claimed_by(
                member, document_id, request.peer_id
            ):
                # The document exists: the claim (a committed write on SQLite, a
                # round trip on Redis) is made before taking its lock, so joins
                # at once share a commit instead of waiting for one each in turn.
                return
            async with self._lock(document_id):
                room = self.rooms.get(document_id)
                if room is None:
                    room = await self._open_room(document_id, member.host)
                    if room is None:
                        session.reject_handshake(
                            ErrorCode.DOCUMENT_NOT_FOUND,
                            f"no document {document_id!r} on this server",
                        )
                        return
                if room.unload_task is not None:
                    room.unload_task.cancel()
                    room.unload_task = None
                if not await self._admit_peer(member, room, request.peer_id):
                    self._unload_if_empty(room)
                    return
                await refresh(room.document)  # off the loop, if the cached one is stale
                durable = await self.registry.durable_version_vector(document_id)
                if session.state is not SessionState.HANDSHAKING or self.closing:
                    # Timed out or closed while we looked the document up.
                    if not any(m.session.peer_id == request.peer_id for m in room.members):
                        self.registry.peer_disconnected(document_id, request.peer_id)
                    return
                # Same synchronous step: compute what the client lacks, join the room.
                session.accept_handshake(room.document, room.epoch, durable, role)
                room.members.add(member)
                member.room = room
        except _Refused as refusal:
            if session.state is SessionState.HANDSHAKING:
                session.reject_handshake(refusal.code, refusal.message)
            return
        except RegistryError as error:
            self._emit(
                ServerEventType.ERROR,
                f"cannot open {document_id!r}: {error}",
                client_id=member.client_id,
                document_id=document_id,
            )
            if session.state is SessionState.HANDSHAKING:
                session.reject_handshake(
                    storage_code(error), f"the document cannot be opened: {error}"
                )
            room = self.rooms.get(document_id)
            if room is None or not any(m.session.peer_id == request.peer_id for m in room.members):
                self.registry.peer_disconnected(document_id, request.peer_id)
            return
        self._emit(
            ServerEventType.CLIENT_HANDSHAKE,
            f"client {member.client_id} joined {document_id!r} as {request.peer_id}",
            client_id=member.client_id,
            document_id=document_id,
            peer_id=request.peer_id,
            name=request.display_name,
            role=role.label,
        )

    async def _replace_stale(self, member: Member, document_id: str, peer_id: str) -> bool:
        """Before joining: question existing connections with the same peer id.

        Only a client holding the peer id's claim gets that far (the claim is
        checked first), so nobody else can make the server question its owner's
        connection. An existing connection that answers a ping keeps its place
        and the new one is refused (``PEER_ID_IN_USE``: two windows of one
        replica must not both write); one that does not (a dropped network, a
        half-open socket) is dropped, so a network drop never locks its owner
        out. Returns whether the new connection may go on joining.
        """
        room = self.rooms.get(document_id)
        olds = [] if room is None else [m for m in room.members if m.session.peer_id == peer_id]
        if not olds:
            # Another server process on a shared registry (Redis) may hold it: that
            # process pings its connection and answers (one that does not is dropped).
            if await self.registry.peer_holder(document_id, peer_id) is None:
                return True
            if not await self._claimed_by(member, document_id, peer_id):
                return False
            timeout = self.limits.peer_check_timeout
            if await self.registry.peer_live_elsewhere(document_id, peer_id, timeout):
                self._refuse_in_use(member, document_id, peer_id)
                return False
            return True
        if not await self._claimed_by(member, document_id, peer_id):
            return False
        for old in olds:
            if await old.answers_ping(self.limits.peer_check_timeout):
                self._refuse_in_use(member, document_id, peer_id)
                return False
            if old.room is not None:
                _log.info("replacing an unresponsive connection of peer %s", peer_id)
                old.drop(ErrorCode.TIMEOUT, "replaced: a liveness ping went unanswered")
                self.leave(old)
        return True

    async def _admit_peer(self, member: Member, room: Room, peer_id: str) -> bool:
        """The identity rule at the door (under the document's lock): the peer id is
        this replica's, and no live connection uses it (one that joined while this
        one's liveness check ran is not questioned again: the newcomer is refused)."""
        if not await self._claimed_by(member, room.document_id, peer_id):
            return False
        if any(m.session.peer_id == peer_id for m in room.members):
            self._refuse_in_use(member, room.document_id, peer_id)
            return False
        if not await self.registry.hold_peer(room.document_id, peer_id):
            # A connection of it joined on another process meanwhile.
            self._refuse_in_use(member, room.document_id, peer_id)
            return False
        return True

    async def _claimed_by(self, member: Member, document_id: str, peer_id: str) -> bool:
        """Claim ``peer_id`` for ``member``'s replica (first secret wins), or refuse it."""
        session = member.session
        if await self.registry.claim_peer(document_id, peer_id, session.secret_hash):
            return True
        if session.state is SessionState.HANDSHAKING:
            session.reject_handshake(
                ErrorCode.PEER_ID_IN_USE,
                f"peer id {peer_id} belongs to another replica of {document_id!r}"
                " (another secret claimed it first): continue under a new peer id",
            )
        return False

    def _refuse_in_use(self, member: Member, document_id: str, peer_id: str) -> None:
        if member.session.state is SessionState.HANDSHAKING:
            member.session.reject_handshake(
                ErrorCode.PEER_ID_IN_USE,
                f"peer id {peer_id} is connected to {document_id!r} already (the same"
                " replica open twice?)",
            )

    async def _open_room(self, document_id: str, host: str) -> Room | None:
        """Load (or create) the document and make its room; None if it does not exist.

        Raises:
            _Refused: creating it would exceed ``max_documents`` or the creation
                quota of the client's address.
        """
        document = await self.registry.get_document(document_id)
        if document is None:
            if not self.allow_create:
                return None
            if len(await self.registry.document_ids()) >= self.limits.max_documents:
                raise _Refused(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"the server holds its maximum of {self.limits.max_documents} documents",
                )
            if not self.hosts.may_create(host):
                raise _Refused(
                    ErrorCode.RATE_LIMITED,
                    f"{host} created {self.limits.documents_per_ip_per_minute} documents"
                    " within a minute: try again later",
                )
            try:
                document = await self.registry.create_document(document_id)
            except DocumentExistsError:  # created behind our back (shared registry)
                document = await self.registry.get_document(document_id)
                if document is None:
                    return None
        epoch = await self.registry.get_epoch(document_id)
        room = Room(document_id, document, epoch)
        # Encoded off the event loop, and kept: new clients' answers start from it.
        room.size = len(await refresh(document, force=True))
        self.rooms[document_id] = room
        return room

    def leave(self, member: Member) -> None:
        """``member`` is gone: drop it and its presence; unload the room later if empty."""
        room = member.room
        if room is None:
            return
        member.room = None
        room.members.discard(member)
        peer_id = member.session.peer_id
        if peer_id is not None and not any(m.session.peer_id == peer_id for m in room.members):
            self.registry.peer_disconnected(room.document_id, peer_id)
        for removal in room.presence.remove_owner(member):
            self._relay_awareness(room, removal, member)
            self.registry.publish_presence(room.document_id, removal)
        self._unload_if_empty(room)

    def _unload_if_empty(self, room: Room) -> None:
        """Schedule the unload of a room nobody is in (once)."""
        if not room.members and not self.closing and room.unload_task is None:
            room.unload_task = self._spawn(
                self._unload_later(room), f"crdt-unload-{room.document_id}"
            )

    async def _unload_later(self, room: Room) -> None:
        await asyncio.sleep(self.idle_unload_after)
        async with self._lock(room.document_id):
            if room.members or self.rooms.get(room.document_id) is not room:
                return
            try:
                await self.registry.release_document(room.document_id)
            except RegistryError as error:
                self._emit(
                    ServerEventType.ERROR,
                    f"could not release {room.document_id!r}: {error}",
                    document_id=room.document_id,
                )
                return  # keep it loaded: nothing is dropped that was not stored
            del self.rooms[room.document_id]
            room.unload_task = None
            _log.info("unloaded idle document %r", room.document_id)

    async def release_all(self) -> None:
        """Release every loaded document (the server is stopping)."""
        for document_id in list(self.rooms):
            try:
                await self.registry.release_document(document_id)
            except RegistryError as error:
                self._emit(
                    ServerEventType.ERROR,
                    f"could not release {document_id!r}: {error}",
                    document_id=document_id,
                )
        self.rooms.clear()

    # -- changes ------------------------------------------------------------------------

    async def apply(
        self, member: Member, changes: Sequence[Change], encoded: bytes | None = None
    ) -> None:
        """Apply ``member``'s changes: relay, store, acknowledge; refuse what is invalid.

        The changes are relayed as soon as they are in the document, while the
        registry still stores them: only the sender's ``Ack`` waits for
        durability. If the server dies before the write, nothing is lost: the
        sender still holds them unacknowledged and every client sends what the
        server lacks at the next handshake. The relay frame wraps the bytes the
        registry encoded for its store (one encoding per batch), or ``encoded``,
        the batch the changes arrived in, when exactly they were applied.
        """
        session = member.session
        room = member.room
        if room is None:  # pragma: no cover - OPEN sessions are always in a room
            return
        bound = self.limits.max_document_bytes
        if bound is not None and room.size >= bound:
            session.fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"document {room.document_id!r} holds about {room.size} bytes, its limit"
                f" is {bound}: changes refused, nothing applied",
            )
            return
        pending_before = room.document.pending_count
        metrics = self.metrics
        try:
            result = await self.registry.apply(room.document_id, changes, encoded=encoded)
            room.size += len(result.encoded)
            applied_at = time.perf_counter()
            if result.applied:
                metrics.changes_applied.inc(len(result.applied))
                self._relay_encoded(room, result.applied, result.encoded, member)
                self._local_propagation.observe(time.perf_counter() - member.received_at)
                if result.unblocked:
                    # They waited for dependencies the sender's changes brought: the
                    # sender has never seen them (the others got them just above).
                    self.relay_changes_to(member, list(result.unblocked))
                if self.change_events:
                    self._emit(
                        ServerEventType.CLIENT_CHANGE_APPLIED,
                        f"{len(result.applied)} change(s) from {member.client_id} applied to"
                        f" {room.document_id!r}",
                        client_id=member.client_id,
                        document_id=room.document_id,
                        count=len(result.applied),
                    )
            stored = result.stored
            if (
                result.refusal is None
                and result.pending_count <= self.max_pending_changes
                and not (result.waiting and result.pending_count > pending_before)
                and not (isinstance(stored, asyncio.Future) and stored.done())
            ):
                # The usual case: nothing to report but the Ack, which goes out once
                # the changes are stored; the client's next frame is read (and
                # applied, and relayed) meanwhile, not after the disk.
                if not isinstance(stored, asyncio.Future):
                    stored = asyncio.ensure_future(stored)
                stored.add_done_callback(
                    functools.partial(self._stored, member, room, bool(result.applied), applied_at)
                )
                return
            durable = await stored
            if result.applied:
                metrics.store_latency.observe(time.perf_counter() - applied_at)
            metrics.storage_up.set(1)
        except RegistryError as error:
            self._store_failed(member, room, error)
            return
        session.send_acknowledgement(durable)
        if result.refusal is not None:
            refuse(session, result.refusal, "change")
            return
        if result.pending_count > self.max_pending_changes:
            session.fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"the document holds more than {self.max_pending_changes} changes waiting"
                " for missing dependencies",
            )
            return
        if result.waiting and result.pending_count > pending_before:
            # Only news: changes that already waited (resent after a resync, their
            # dependency's author not back yet) would make the client loop.
            session.send_out_of_sync(
                f"{result.waiting} change(s) wait for dependencies the server lacks: resynchronise"
            )
            self._emit(
                ServerEventType.CLIENT_OUT_OF_SYNC,
                f"client {member.client_id} is out of sync ({result.waiting} waiting)",
                client_id=member.client_id,
                document_id=room.document_id,
                count=result.waiting,
            )

    def _stored(
        self,
        member: Member,
        room: Room,
        applied: bool,
        applied_at: float,
        stored: asyncio.Future[VersionVector],
    ) -> None:
        """A batch of ``member``'s is stored (or failed to be): acknowledge it.

        Futures of one registry resolve in the order of the writes, so the Acks
        of a client go out in the order of its batches (each covering more)."""
        if stored.cancelled():
            return
        error = stored.exception()
        if error is not None:
            if isinstance(error, RegistryError):
                self._store_failed(member, room, error)
            else:
                _log.error("storing changes of %s failed: %r", member.client_id, error)
                member.session.fail(ErrorCode.INTERNAL_ERROR, "the server could not store them")
        else:
            if applied:
                self.metrics.store_latency.observe(time.perf_counter() - applied_at)
            self.metrics.storage_up.set(1)
            member.session.send_acknowledgement(stored.result())
            if room.relay_flush is not None and any(r.sender is not member for r in room.relays):
                # A relay frame goes to this client within relay_interval, and
                # flush_relays writes what its session queued first: the Ack
                # rides in that write instead of a send of its own.
                return
        member.flush()

    def _store_failed(self, member: Member, room: Room, error: RegistryError) -> None:
        self.metrics.storage_up.set(0)
        self._emit(
            ServerEventType.ERROR,
            f"storing changes of {member.client_id} failed: {error}",
            client_id=member.client_id,
            document_id=room.document_id,
        )
        member.session.fail(
            storage_code(error),
            f"the server could not store the changes ({error}); reconnect and resend",
        )

    async def apply_snapshot(self, member: Member, snapshot: Snapshot) -> None:
        """A client uploaded its whole state: merge, store, acknowledge, push to the others.

        The merge is validated before the document is touched (the registry's
        ``apply_snapshot``); the upload is acknowledged only once the merged state
        is durable. The other clients get the uploaded snapshot itself (exactly
        what they lack, and covered by the durable version vector sent with it)
        as an unsolicited ``DocumentStatus``; changes that waited for what the
        snapshot brought are relayed to everyone, the uploader included.
        """
        session = member.session
        room = member.room
        if room is None:  # pragma: no cover - OPEN sessions are always in a room
            return
        refusal: Exception | None = None
        news = not snapshot.version_vector <= room.document.version_vector
        violation = await self._upload_violation(room, session, snapshot)
        if violation is not None:
            if violation.final:
                session.fail(ErrorCode.FORBIDDEN_PEER, violation.message)
            else:  # an honest replica may hold it: nothing merged, the connection stays
                session.refuse_upload(violation.message)
            return
        bound = self.limits.max_document_bytes
        if bound is not None and news and max(room.size, len(snapshot)) >= bound:
            session.fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"document {room.document_id!r} would exceed its limit of {bound} bytes:"
                " snapshot refused, nothing merged",
            )
            return
        try:
            merged, ready = await self.registry.apply_snapshot(room.document_id, snapshot)
        except ChangesRejectedError as error:
            ready, refusal = error.applied, error.cause
            # Refused before the merge (document untouched) or after it (stored).
            merged = news and snapshot.version_vector <= room.document.version_vector
        except RegistryError as error:
            self._emit(
                ServerEventType.ERROR,
                f"storing the snapshot of {member.client_id} failed: {error}",
                client_id=member.client_id,
                document_id=room.document_id,
            )
            session.fail(storage_code(error), "the server could not store the snapshot")
            return
        if refusal is not None and not merged:
            # Refused before the merge: the document and the store are untouched.
            refuse(session, refusal, "snapshot")
            return
        durable = await self.registry.durable_version_vector(room.document_id)
        session.send_acknowledgement(durable, whole=True)
        if merged:
            room.size = max(room.size, len(snapshot))
            others = [m for m in room.members if m is not member]
            self.flush_relays(room)  # what was applied before the merge goes first
            if others:
                push = encode_message(DocumentStatus(durable, snapshot=snapshot), self.compressor)
                for target in others:
                    target.session.send_frame(push)
                    target.flush()
            if ready:
                self.relay_changes(room, ready, None)
            self._emit(
                ServerEventType.CLIENT_CHANGE_APPLIED,
                f"snapshot from {member.client_id} ({len(snapshot)} bytes) merged into"
                f" {room.document_id!r}",
                client_id=member.client_id,
                document_id=room.document_id,
                peer_id=session.peer_id,
                snapshot=True,
                snapshot_bytes=len(snapshot),
                version_vector=dict(snapshot.version_vector),
                count=len(ready),
            )
        if refusal is not None:
            refuse(session, refusal, "snapshot")

    async def _upload_violation(
        self, room: Room, session: ServerSession, snapshot: Snapshot
    ) -> UploadRefusal | None:
        """Why ``snapshot`` may not be merged (:func:`server.trust.upload_violation`)."""
        uploader = session.peer_id or ""
        server_vv = room.document.version_vector
        beyond = [
            peer
            for peer, counter in snapshot.version_vector.items()
            if peer != uploader and counter > server_vv.get(peer, 0)
        ]
        claimed = await self.registry.claimed_peers(room.document_id, beyond) if beyond else set()
        try:
            introduced, deletions = merge_introduces(room.document, snapshot)
        except CRDTError:
            introduced, deletions = {}, 0  # the merge refuses it (INVALID_MESSAGE)
        return upload_violation(
            uploader,
            snapshot.version_vector,
            server_vv,
            claimed,
            self.limits.max_counter_jump,
            introduced,
            deletions,
        )

    def relay_changes(self, room: Room, changes: list[Change], sender: Member | None) -> None:
        """Send ``changes`` to the room's clients except ``sender`` (None: to all)."""
        self._relay_encoded(room, changes, encode_changes(changes), sender)

    def relay_changes_to(self, member: Member, changes: list[Change]) -> None:
        """Send ``changes`` to ``member`` only (after what waits to be relayed)."""
        if member.room is not None:
            self.flush_relays(member.room)
        self.metrics.changes_relayed.inc(len(changes))
        member.session.send_frame(encode_changes_frame(encode_changes(changes), self.compressor))
        member.flush()

    def _relay_encoded(
        self, room: Room, changes: Sequence[Change], encoded: bytes, sender: Member | None
    ) -> None:
        """Relay ``changes`` (``encoded``) to the room's clients except ``sender``, with
        whatever else is applied in this turn of the event loop (:meth:`flush_relays`)."""
        room.relays.append(_Relay(changes, encoded, sender))
        if room.relay_flush is None:
            loop = asyncio.get_running_loop()
            wait = room.relayed_at + self.gathering_time(room) - loop.time()
            if wait > 0:
                room.relay_flush = loop.call_later(wait, self.flush_relays, room)
            else:
                room.relay_flush = loop.call_soon(self.flush_relays, room)

    def gathering_time(self, room: Room) -> float:
        """Seconds ``room`` gathers changes after a relay before it relays again:
        ``relay_interval``, or longer in a room whose clients would otherwise get
        more than ``relay_frames_per_second`` relay frames a second together."""
        return max(self.relay_interval, len(room.members) * self._gap_per_member)

    def flush_relays(self, room: Room) -> None:
        """Send the batches waiting in ``room`` as ``Relay`` frames (protocol version 4):
        one frame for each client that sent none of them, a frame of the others'
        batches for a client that sent some.

        Each batch is encoded once, as relay records whose ids refer to the
        room's dictionary (``crdt_sync/sync/relay.py``), and the same bytes go in
        every frame it is part of; a client that has not been sent the
        dictionary's newest entries gets them first, in the same write. Members
        write synchronously (no task per recipient).
        """
        if room.relay_flush is not None:
            room.relay_flush.cancel()
            room.relay_flush = None
        relays, room.relays = room.relays, []
        if not relays:
            return
        room.relayed_at = asyncio.get_running_loop().time()
        members = room.members
        if not members or (len(members) == 1 and all(r.sender in members for r in relays)):
            return  # nobody else to tell (a document edited alone)
        compressor = self.compressor
        dictionary = room.dictionary
        # One time base for every frame of the flush: the records are shared.
        base = time_base(relay.changes for relay in relays)
        parts: list[bytes] = []
        counts: list[int] = []
        for relay in relays:
            part, count = encode_records(relay.changes, relay.encoded, dictionary, base)
            parts.append(part)
            counts.append(count)
        size = len(dictionary)
        relayed = 0
        if len(relays) == 1:
            # The usual flush: one batch, one frame for everyone but its sender. A
            # member whose session is not open (leaving) sends nothing: relay()
            # says so, and one that lacks dictionary entries is asked first.
            (relay,) = relays
            sender = relay.sender
            frame = encode_relay_frame(counts[0], base, parts, compressor)
            for target in members:
                if target is sender:
                    continue
                if target.session.dictionary_sent < size:
                    if target.session.state is not SessionState.OPEN:
                        continue
                    self._send_with_entries(target, frame, dictionary, size)
                elif not target.relay(frame):
                    continue
                relayed += 1
            self.metrics.changes_relayed.inc(relayed * len(relay.changes))
            return
        senders = {id(relay.sender) for relay in relays}
        combined: bytes | None = None
        total = sum(len(relay.changes) for relay in relays)
        for target in members:
            if target.session.state is not SessionState.OPEN:
                continue
            if id(target) not in senders:
                if combined is None:
                    combined = encode_relay_frame(sum(counts), base, parts, compressor)
                frame = combined
                relayed += total
            else:
                others = [i for i, relay in enumerate(relays) if relay.sender is not target]
                if not others:
                    continue
                frame = encode_relay_frame(
                    sum(counts[i] for i in others), base, [parts[i] for i in others], compressor
                )
                relayed += sum(len(relays[i].changes) for i in others)
            if target.session.dictionary_sent < size:
                self._send_with_entries(target, frame, dictionary, size)
            else:
                target.relay(frame)
        self.metrics.changes_relayed.inc(relayed)

    def _send_with_entries(
        self, target: Member, frame: bytes, dictionary: RelayDictionary, size: int
    ) -> None:
        """Send ``frame`` to ``target`` after the dictionary entries it lacks (up to
        ``size``), in the same write."""
        session = target.session
        delta = functools.partial(encode_dictionary_frame, compressor=self.compressor)
        for entries in dictionary.deltas(session.dictionary_sent, delta):
            session.send_frame(entries)
        session.dictionary_sent = size
        session.send_frame(frame)
        target.flush()

    # -- presence -----------------------------------------------------------------------

    def awareness_update(self, member: Member, update: AwarenessUpdate) -> None:
        """``member`` published (or withdrew) its presence: record it, relay it."""
        room = member.room
        if room is None:  # pragma: no cover - OPEN sessions are always in a room
            return
        size = presence_size(update)
        if size > self.limits.max_presence_bytes:
            member.session.fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"a presence state of {size} bytes; the limit is {self.limits.max_presence_bytes}",
            )
            return
        if room.presence.receive(
            member, update, time.monotonic(), total_limit=self.limits.max_presence_total
        ):
            self._relay_awareness(room, update, member)
            self.registry.publish_presence(room.document_id, update)

    def awareness_states(self, member: Member) -> Iterable[AwarenessUpdate]:
        """Every presence state of ``member``'s room (its answer to an ``AwarenessQuery``)."""
        room = member.room
        return () if room is None else room.presence.states()

    def _relay_awareness(self, room: Room, update: AwarenessUpdate, sender: object) -> None:
        frame: bytes | None = None
        for target in room.members:
            if target is sender or target.session.state is not SessionState.OPEN:
                continue
            if frame is None:
                frame = encode_message(update, self.compressor)
            target.session.send_frame(frame)
            target.flush()

    def expire_awareness(self, now: float) -> int:
        """Drop presence states last renewed before ``now - awareness_timeout``.

        Relays the removals; returns how many were dropped.
        """
        dropped = 0
        deadline = now - self.awareness_timeout
        for room in list(self.rooms.values()):
            for removal, owner in room.presence.expire(deadline):
                dropped += 1
                self._relay_awareness(room, removal, owner)
                if owner is not REMOTE:  # the others expire remote states themselves
                    self.registry.publish_presence(room.document_id, removal)
        return dropped

    # -- what other server processes did (RegistryObserver) -----------------------------------

    def remote_changes(
        self, document_id: str, changes: Sequence[Change], encoded: bytes, appended_at: float
    ) -> None:
        room = self.rooms.get(document_id)
        if room is not None and changes:
            self._relay_encoded(room, changes, encoded, None)
            self.metrics.propagation.labels("remote").observe(max(0.0, time.time() - appended_at))

    def storage_problem(self, document_id: str | None, message: str) -> None:
        self._emit(ServerEventType.ERROR, message, document_id=document_id)

    async def peer_alive(self, document_id: str, peer_id: str) -> bool:
        """Another process asks whether our connection of ``peer_id`` is alive: ping
        it (as for a reconnect here); one that does not answer is dropped."""
        room = self.rooms.get(document_id)
        olds = [] if room is None else [m for m in room.members if m.session.peer_id == peer_id]
        alive = False
        for old in olds:
            if await old.answers_ping(self.limits.peer_check_timeout):
                alive = True
            elif old.room is not None:
                _log.info("dropping an unresponsive connection of peer %s", peer_id)
                old.drop(ErrorCode.TIMEOUT, "replaced: a liveness ping went unanswered")
                self.leave(old)
        return alive

    def remote_snapshot(self, document_id: str, snapshot: Snapshot) -> None:
        room = self.rooms.get(document_id)
        if room is None or not room.members:
            return
        push = encode_message(
            DocumentStatus(snapshot.version_vector, snapshot=snapshot), self.compressor
        )
        self.flush_relays(room)
        for target in room.members:
            if target.session.state is SessionState.OPEN:
                target.session.send_frame(push)
                target.flush()

    def remote_presence(self, document_id: str, update: AwarenessUpdate) -> None:
        room = self.rooms.get(document_id)
        if room is not None and room.presence.receive(REMOTE, update, time.monotonic()):
            self._relay_awareness(room, update, REMOTE)

    def durable_advanced(self, document_id: str, durable: VersionVector) -> None:
        room = self.rooms.get(document_id)
        if room is None:
            return
        for target in room.members:
            if target.session.state is SessionState.OPEN:
                target.session.send_acknowledgement(durable)
                target.flush()


def storage_code(error: Exception) -> ErrorCode:
    """The code a client gets when the registry failed with ``error``:
    ``STORAGE_UNAVAILABLE`` (transient: reconnect later) or ``INTERNAL_ERROR``."""
    if isinstance(error, StorageUnavailableError):
        return ErrorCode.STORAGE_UNAVAILABLE
    return ErrorCode.INTERNAL_ERROR


def refuse(session: ServerSession, refusal: Exception, what: str) -> None:
    """End the session of a client whose input the document refused."""
    if isinstance(refusal, PendingBufferFullError):
        session.fail(ErrorCode.LIMIT_EXCEEDED, f"too many changes wait: {refusal}")
    elif isinstance(refusal, CRDTError):
        # Invalid change, a snapshot that cannot be merged (kind clash, dangling
        # origins): the client's data, not our failure.
        session.fail(ErrorCode.INVALID_MESSAGE, f"invalid {what}: {refusal}")
    else:
        session.fail(ErrorCode.INTERNAL_ERROR, f"{what} refused: {refusal}")
