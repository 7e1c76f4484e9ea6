"""What the server trusts, and the bounds it sets on everything else.

Theory of operation
-------------------
Every client is hostile until checked. The protocol session
(:mod:`server.session`) checks what one frame can show by itself: the
identity rule for ``Changes`` and ``AwarenessUpdate`` (a connection speaks only
for the peer id of its handshake). The rules that need the server's state live
here, one copy each, and the driver (:mod:`server.rooms`,
:mod:`server.connection`, :mod:`server.server`) applies them:

* :func:`upload_violation` -- what a ``SnapshotUpload`` may claim;
* :class:`Limits` -- every bound on one client's work, with its default
  (the CLI exposes each as an option: ``docs/server.md``, "Security model");
* :class:`TokenBucket` -- the per-connection message and byte rates;
* :class:`HostQuotas` -- connections and document creations per client address,
  and the cool-down of an address whose connection was refused for abuse;
* :func:`printable` -- client-supplied strings made safe for one log line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Set
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "HostQuotas",
    "Limits",
    "TokenBucket",
    "UploadRefusal",
    "add_limit_options",
    "limits_from_args",
    "printable",
    "upload_violation",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one client (connection, address) may make the server do.

    Attributes:
        max_counter_jump: how far beyond the server's known next counter a
            snapshot upload may take the uploader's own peer (or a peer nobody
            claimed): op ids a snapshot cannot prove (deletions) are bounded by it.
        peer_check_timeout: seconds an existing connection has to answer the
            liveness ping when a new connection presents the same peer id.
        max_connections_per_ip: open connections from one client address.
        handshakes_per_ip: handshakes of one client address the server works
            on at once (the others wait their turn, within the handshake
            timeout): a crowd of new connections from one address queues behind
            itself instead of in front of everyone's edits.
        messages_per_second, message_burst: per-connection message rate
            (token bucket: the burst is the bucket, refilled at the rate).
        bytes_per_second, byte_burst: per-connection byte rate, frames' sizes.
        max_changes_per_frame: changes in one ``Changes`` frame.
        max_ops_per_frame: operations in one ``Changes`` frame.
        max_handshake_peers: entries of a handshake's version vector.
        status_per_second, status_burst: ``DocumentStatusRequest`` rate per
            connection (each is answered from a cache per document version).
        max_presence_bytes: one presence state, encoded.
        max_presence_total: all presence states of one document, encoded.
        max_documents: documents the server creates (existing ones still open).
        documents_per_ip_per_minute: documents one client address may create
            per minute.
        max_document_bytes: a document whose stored encoding grows past this
            refuses further changes (``LIMIT_EXCEEDED``); None: no bound. A
            document travels whole (a snapshot) to new clients, and a snapshot
            inflates to at most the frame bound: keep this well below
            ``max_message_size`` (the default is half of its default).
        idle_timeout: seconds a handshaken connection may stay completely
            silent (no frame at all; clients ping every 15 s); None: forever.
        abuse_cooldown: seconds a peer id's new connections from an address
            are refused (``RATE_LIMITED``, at the handshake) after one of them
            was refused for its rate, a frame that does not decode or speaking
            for another peer; None:
            never. Reconnecting must not refill a flooding client's bucket, nor
            let it send hostile frames as fast as it can handshake.
    """

    max_counter_jump: int = 1 << 22
    peer_check_timeout: float = 3.0
    max_connections_per_ip: int = 16
    handshakes_per_ip: int = 8
    messages_per_second: float = 100.0
    message_burst: int = 500
    bytes_per_second: float = 2 * 1024 * 1024
    byte_burst: int = 32 * 1024 * 1024
    max_changes_per_frame: int = 10_000
    max_ops_per_frame: int = 100_000
    max_handshake_peers: int = 10_000
    status_per_second: float = 2.0
    status_burst: int = 10
    max_presence_bytes: int = 16 * 1024
    max_presence_total: int = 1024 * 1024
    max_documents: int = 100_000
    documents_per_ip_per_minute: int = 60
    max_document_bytes: int | None = 8 * 1024 * 1024
    idle_timeout: float | None = 600.0
    abuse_cooldown: float | None = 5.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None and spec.name in _OPTIONAL:
                continue
            if not value > 0:
                raise ValueError(f"{spec.name} must be positive, not {value!r}")


# The limits that may be None (no bound; 0 on the command line).
_OPTIONAL = ("max_document_bytes", "idle_timeout", "abuse_cooldown")

#: One line of ``--help`` per limit (its default is appended); the option is the
#: field's name with dashes. Optional bounds take 0 for "no bound".
_HELP: dict[str, str] = {
    "max_counter_jump": "how far an upload may take a counter beyond what the server knows",
    "peer_check_timeout": "seconds a connection has to answer when its peer id connects again",
    "max_connections_per_ip": "open connections from one client address",
    "handshakes_per_ip": "handshakes of one client address worked on at once",
    "messages_per_second": "messages per second per connection (sustained)",
    "message_burst": "messages a connection may send at once",
    "bytes_per_second": "bytes per second per connection (sustained)",
    "byte_burst": "bytes a connection may send at once",
    "max_changes_per_frame": "changes in one Changes frame",
    "max_ops_per_frame": "operations in one Changes frame",
    "max_handshake_peers": "peers in a handshake's version vector",
    "status_per_second": "document status requests per second per connection",
    "status_burst": "document status requests a connection may send at once",
    "max_presence_bytes": "bytes of one presence state",
    "max_presence_total": "bytes of all presence states of one document",
    "max_documents": "documents the server creates",
    "documents_per_ip_per_minute": "documents one client address may create per minute",
    "max_document_bytes": "bytes a document may grow to (0: no bound)",
    "idle_timeout": "seconds a handshaken connection may stay silent (0: forever)",
    "abuse_cooldown": "seconds a peer is refused after a rate or decoding refusal (0: never)",
}


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """Add one ``--option`` per :class:`Limits` field, defaulting to the field's default."""
    group = parser.add_argument_group("limits (docs/server.md, 'Security model')")
    defaults = Limits()
    for spec in fields(Limits):
        default = getattr(defaults, spec.name)
        kind: Callable[[str], float] = (
            float
            if isinstance(default, float) or spec.name in ("idle_timeout", "abuse_cooldown")
            else int
        )
        shown = 0 if default is None else default
        group.add_argument(
            "--" + spec.name.replace("_", "-"),
            type=kind,
            default=shown,
            metavar="N",
            help=f"{_HELP[spec.name]} ({shown:,})"
            if kind is int
            else f"{_HELP[spec.name]} ({shown:g})",
        )


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` the options of :func:`add_limit_options` describe.

    Raises:
        ValueError: a limit is not positive (0 is allowed for optional bounds).
    """
    values: dict[str, object] = {}
    for spec in fields(Limits):
        value = getattr(args, spec.name)
        if spec.name in _OPTIONAL and value == 0:
            value = None
        values[spec.name] = value
    return Limits(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class UploadRefusal:
    """Why a ``SnapshotUpload`` is refused (``FORBIDDEN_PEER``), and whether the
    connection ends (``final``) or stays (an honest replica may hold what it was
    refused: it carries on with its own changes)."""

    message: str
    final: bool


def upload_violation(
    uploader: str,
    upload: Mapping[str, int],
    server: Mapping[str, int],
    claimed: Set[str],
    max_counter_jump: int,
    introduced: Mapping[str, int] | None = None,
    deletions: int = 0,
) -> UploadRefusal | None:
    """Why a ``SnapshotUpload`` with version vector ``upload`` must be refused, or None.

    The rule (``docs/protocol.md``, "Snapshot upload"):

    * it may not put anything under an op id the server already holds
      (``introduced``: per peer, the lowest counter the merge would add or make
      win, :func:`crdt_sync.snapshot.merge_introduces`): content the server has
      is never changed, and no one writes in another's name under old ids;
    * it may delete text only when it brings some new op (a deletion is one);
    * it may not claim counters more than ``max_counter_jump`` beyond what the
      server holds, for any peer;
    * it may only add ops of the uploader's own peer, and of peers that hold no
      claim on the document (authors who never connected to this server:
      restoring a reset server, sharing a snapshot file). For a claimed peer
      other than the uploader it may not claim more than the server holds:
      only that peer's replica may send them. An honest replica that joined
      from a snapshot may hold such ops, so this refusal is not final.

    The first three are final (nothing honest breaks them). ``claimed`` holds
    the peers of ``upload`` that have a claim on the document. (The snapshot's
    content is proven against its own vector by the core: no element lies
    beyond it.)
    """
    for peer, lowest in (introduced or {}).items():
        held = server.get(peer, 0)
        if lowest < held:
            return UploadRefusal(
                f"the upload puts content under op id {lowest} of peer {peer!r}, which the"
                f" server already holds (it has up to {held - 1}): refused",
                final=True,
            )
    if deletions and all(counter <= server.get(peer, 0) for peer, counter in upload.items()):
        return UploadRefusal(
            f"the upload deletes {deletions} characters but brings no new operation", final=True
        )
    for peer, counter in upload.items():
        held = server.get(peer, 0)
        if counter - held > max_counter_jump:
            return UploadRefusal(
                f"the upload claims counter {counter} for peer {peer!r}, more than"
                f" {max_counter_jump} beyond the {held} the server knows",
                final=True,
            )
    for peer, counter in upload.items():
        held = server.get(peer, 0)
        if counter > held and peer != uploader and peer in claimed:
            return UploadRefusal(
                f"the upload claims ops {held}..{counter - 1} of peer {peer!r}, which the"
                " server lacks and only that peer's replica may send: nothing merged;"
                " send your own changes",
                final=False,
            )
    return None


class TokenBucket:
    """A rate: ``capacity`` tokens, refilled at ``rate`` per second (monotonic clock)."""

    __slots__ = ("_clock", "_level", "_updated", "capacity", "rate")

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._updated = clock()

    def full(self) -> bool:
        """Whether the bucket has refilled to its capacity."""
        self.take(0.0)
        return self._level >= self.capacity

    def take(self, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens if there are enough; False (nothing spent) if not."""
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now
        if amount > self._level:
            return False
        self._level -= amount
        return True


class KeyedGates:
    """An asyncio lock or semaphore per key (a document id, a client address), made
    when first needed and forgotten when nobody holds or waits for it: the table
    lists only the keys in use, never every key a client ever named."""

    def __init__(self, make: Callable[[], asyncio.Lock | asyncio.Semaphore]) -> None:
        self._make = make
        # key -> [its gate, how many coroutines hold or wait for it]
        self._gates: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Pass ``key``'s gate for the ``async with`` block."""
        entry = self._gates.get(key)
        if entry is None:
            entry = self._gates[key] = [self._make(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._gates.get(key) is entry:
                del self._gates[key]


class HostQuotas:
    """Per client address: open connections, document creations per minute, and the
    cool-down after an abuse."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._connections: dict[str, int] = {}
        self._creations: dict[str, TokenBucket] = {}
        self._handshakes = KeyedGates(lambda: asyncio.Semaphore(limits.handshakes_per_ip))
        self._cooling: dict[tuple[str, str], float] = {}  # (host, peer) -> refused until
        # host -> refusals waiting to be sent (tarpit); set: the waits end (stopping)
        self._tarpitted: dict[str, int] = {}
        self._opened: asyncio.Event | None = None

    def connect(self, host: str) -> bool:
        """Count a new connection from ``host``; False (not counted) when at its cap."""
        count = self._connections.get(host, 0)
        if count >= self._limits.max_connections_per_ip:
            return False
        self._connections[host] = count + 1
        return True

    def disconnect(self, host: str) -> None:
        count = self._connections.get(host, 0) - 1
        if count > 0:
            self._connections[host] = count
        else:
            self._connections.pop(host, None)

    def connections(self, host: str) -> int:
        return self._connections.get(host, 0)

    def handshake_turn(self, host: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Work on a handshake from ``host`` once it is among the address's
        ``handshakes_per_ip`` at once."""
        return self._handshakes.hold(host)

    @contextlib.asynccontextmanager
    async def tarpit(self, host: str) -> AsyncIterator[None]:
        """Wait ``_TARPIT_SECONDS`` before refusing ``host`` for its connection cap,
        if fewer than ``_TARPIT_SLOTS`` of its refusals wait already (else at once:
        waiting sockets are bounded)."""
        held = self._tarpitted.get(host, 0)
        if held >= _TARPIT_SLOTS:
            yield
            return
        self._tarpitted[host] = held + 1
        if self._opened is None:
            self._opened = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TARPIT_SECONDS):
                    await self._opened.wait()
            yield
        finally:
            left = self._tarpitted[host] - 1
            if left:
                self._tarpitted[host] = left
            else:
                del self._tarpitted[host]

    def end_waits(self) -> None:
        """Answer every refusal waiting in :meth:`tarpit` now (the server stops)."""
        if self._opened is None:
            self._opened = asyncio.Event()
        self._opened.set()

    def cool_down(self, host: str, peer_id: str) -> None:
        """A connection of ``peer_id`` from ``host`` was refused for abuse (rate,
        undecodable frame): refuse that peer's new connections from that address
        for ``abuse_cooldown`` seconds (its neighbours behind the same address
        are not affected)."""
        seconds = self._limits.abuse_cooldown
        if seconds is None:
            return
        now = self._clock()
        if len(self._cooling) >= _MAX_TRACKED_HOSTS:
            for key in [k for k, until in self._cooling.items() if until <= now]:
                del self._cooling[key]
        self._cooling[(host, peer_id)] = now + seconds

    def cooling(self, host: str, peer_id: str) -> float:
        """Seconds new connections of ``peer_id`` from ``host`` are still refused (0: none)."""
        key = (host, peer_id)
        until = self._cooling.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._cooling[key]
            return 0.0
        return left

    def may_create(self, host: str) -> bool:
        """Spend one of ``host``'s document creations; False when its quota is used up."""
        per_minute = self._limits.documents_per_ip_per_minute
        bucket = self._creations.get(host)
        if bucket is None:
            if len(self._creations) >= _MAX_TRACKED_HOSTS:
                # Forget hosts whose quota has refilled: they are as good as new.
                for key in [k for k, b in self._creations.items() if b.full()]:
                    del self._creations[key]
            bucket = TokenBucket(per_minute / 60.0, per_minute, self._clock)
            self._creations[host] = bucket
        return bucket.take()


_MAX_TRACKED_HOSTS = 10_000
# An address over its connection cap gets its refusal after this pause, this many
# at a time (the others at once).
_TARPIT_SECONDS = 1.0
_TARPIT_SLOTS = 64

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, limit: int = 200) -> str:
    """``text`` for one log line: control characters escaped, at most ``limit`` characters.

    Client-supplied strings (display names, error texts, ids) go through it
    before they reach a log, so a newline cannot forge a log line.
    """
    raw = str(text)
    if len(raw) <= limit and raw.isprintable():
        # The common case, in C: nothing below is escaped in a printable string
        # (str.isprintable is False for every character escaped here).
        return raw
    out: list[str] = []
    for char in raw[:limit]:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0 or char in "\u2028\u2029":
            out.append(_ESCAPES.get(char, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(char)
    if len(raw) > limit:
        out.append("…")
    return "".join(out)
