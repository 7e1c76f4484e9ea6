"""What the server counts, in the Prometheus text format (``GET /metrics``).

The counters are always kept (an increment is cheap); ``--metrics``
(``WebSocketServer(metrics=True)``) serves them. Each server has its own
``prometheus_client`` registry, so several servers in one process (tests)
never share counters.

* ``crdt_connections`` (gauge): open WebSocket connections;
* ``crdt_documents_loaded`` (gauge): documents with a room in this process;
* ``crdt_changes_applied_total``: changes from this process's clients applied;
* ``crdt_changes_relayed_total``: changes sent to clients (one per recipient);
* ``crdt_bytes_received_total``, ``crdt_bytes_sent_total``: WebSocket payloads;
* ``crdt_refusals_total{code}``: clients closed with an error, by error code;
* ``crdt_propagation_seconds{source}`` (histogram): from a change's arrival
  (``local``: its frame reached this process; ``remote``: another process
  appended it to Redis) to its relay here;
* ``crdt_store_seconds`` (histogram): from applying a batch to its being
  stored (the sender's ``Ack``);
* ``crdt_storage_up`` (gauge): 1 when the last store operation succeeded;
* with Redis: ``crdt_redis_lag_seconds`` (gauge: age of the last entry of
  another process when read), ``crdt_redis_appends_total``,
  ``crdt_redis_append_round_trips_total``, ``crdt_redis_read_round_trips_total``
  (blocking reads, each over up to 500 documents' streams),
  ``crdt_redis_round_trips_total`` (every round trip to Redis),
  ``crdt_redis_entries_received_total``,
  ``crdt_redis_malformed_entries_total``, ``crdt_redis_compactions_total``,
  ``crdt_redis_errors_total``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from .registry import CRDTServerRegistry, RedisServerRegistry

__all__ = ["CONTENT_TYPE", "Count", "Histogram", "ServerMetrics"]

#: The Content-Type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Count:
    """A counter or a gauge kept as a plain number (the event loop is its only
    writer, so it needs no lock: ``prometheus_client``'s take one per update)."""

    __slots__ = ("value",)

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class Labelled:
    """Counters by the value of one label (``labels(value)`` makes one on first use)."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, Count] = {}

    def labels(self, value: str) -> Count:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Count()
        return child


class Histogram:
    """Observations counted in fixed buckets (upper bounds, inclusive), with their
    sum; written by the event loop only, read at scrape time."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        # One more than the bounds: the last counts what is above them all (+Inf).
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` per bucket, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


class LabelledHistograms:
    """Histograms by the value of one label."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, Histogram] = {}

    def labels(self, value: str) -> Histogram:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Histogram()
        return child


class _RedisCollector(Collector):
    """Reads a Redis registry's counters at scrape time."""

    def __init__(self, registry: RedisServerRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._registry.stats
        yield GaugeMetricFamily(
            "crdt_redis_lag_seconds",
            "Age of the last stream entry of another process when it was read",
            value=stats.lag_seconds,
        )
        for name, text, value in (
            ("crdt_redis_appends", "Batches appended to document streams", stats.appends),
            (
                "crdt_redis_append_round_trips",
                "Round trips to Redis that appended batches",
                stats.append_round_trips,
            ),
            (
                "crdt_redis_read_round_trips",
                "Blocking reads of document streams (each over many documents)",
                stats.read_round_trips,
            ),
            ("crdt_redis_round_trips", "Every round trip to Redis", stats.round_trips),
            (
                "crdt_redis_entries_received",
                "Stream entries of other processes read",
                stats.entries_received,
            ),
            (
                "crdt_redis_malformed_entries",
                "Malformed stream entries or presence messages skipped",
                stats.malformed_entries,
            ),
            ("crdt_redis_compactions", "Snapshots committed to Redis", stats.compactions),
            ("crdt_redis_errors", "Failed Redis operations", stats.errors),
        ):
            yield CounterMetricFamily(name, text, value=value)


class _Collector(Collector):
    """Reads a :class:`ServerMetrics`'s plain counters and histograms at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        m = self._metrics
        yield GaugeMetricFamily(
            "crdt_storage_up", "1 when the last store operation succeeded", value=m.storage_up.value
        )
        for name, text, count in (
            ("crdt_changes_applied", "Changes from clients applied", m.changes_applied),
            (
                "crdt_changes_relayed",
                "Changes sent to clients (one per recipient)",
                m.changes_relayed,
            ),
            ("crdt_bytes_received", "WebSocket payload bytes received", m.bytes_received),
            ("crdt_bytes_sent", "WebSocket payload bytes sent", m.bytes_sent),
        ):
            yield CounterMetricFamily(name, text, value=count.value)
        refusals = CounterMetricFamily(
            "crdt_refusals", "Clients closed with an error, by error code", labels=["code"]
        )
        for code, count in sorted(m.refusals.children.items()):
            refusals.add_metric([code], count.value)
        yield refusals
        propagation = HistogramMetricFamily(
            "crdt_propagation_seconds",
            "From a change's arrival (local frame or remote append) to its relay here",
            labels=["source"],
        )
        for source, histogram in sorted(m.propagation.children.items()):
            propagation.add_metric([source], histogram.cumulative(), histogram.sum)
        yield propagation
        store = HistogramMetricFamily(
            "crdt_store_seconds", "From applying a batch to its being stored"
        )
        store.add_metric([], m.store_latency.cumulative(), m.store_latency.sum)
        yield store


class ServerMetrics:
    """The counters of one server (see the module docstring for the list).

    The ones updated per edit or per frame are plain numbers (:class:`Count`,
    :class:`Histogram`), turned into Prometheus samples only when scraped.
    """

    def __init__(
        self,
        store: CRDTServerRegistry,
        connections: Callable[[], int] = lambda: 0,
        documents: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._store = store
        Gauge(
            "crdt_connections", "Open WebSocket connections", registry=self.registry
        ).set_function(lambda: float(connections()))
        Gauge(
            "crdt_documents_loaded", "Documents with a room in this process", registry=self.registry
        ).set_function(lambda: float(documents()))
        self.storage_up = Count(1.0)
        self.changes_applied = Count()
        self.changes_relayed = Count()
        self.bytes_received = Count()
        self.bytes_sent = Count()
        self.refusals = Labelled()
        self.propagation = LabelledHistograms()
        self.store_latency = Histogram()
        self.registry.register(_Collector(self))
        if isinstance(store, RedisServerRegistry):
            self.registry.register(_RedisCollector(store))

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
