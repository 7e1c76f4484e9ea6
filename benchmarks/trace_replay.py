"""Replay real editing traces through crdt_sync (and optionally pycrdt) and print the figures.

    python benchmarks/trace_replay.py [--trace NAME ...] [--compare pycrdt] [--repeat N]
                                      [--traces-dir DIR] [--no-memory]

For each trace in ``../shared/traces/sequential`` (``--trace all`` for every one;
default ``automerge-paper``) it measures, for crdt_sync:

- local replay: one ``with doc.transaction():`` per trace transaction, each
  patch applied with ``CRDTTextHandler.delete`` / ``insert``;
- encoded document: ``len(doc.take_snapshot().to_bytes())``, and the full
  change history ``len(doc.binary_export_changes())`` (with their encode times);
- load: ``Snapshot.from_bytes`` + ``CRDTDocument.from_snapshot`` + reading the text;
- remote apply: the full history imported into a fresh document, once as
  ``binary_import_changes(bytes)`` and then as ``import_changes(list of Change)``
  (each followed by reading the text; the list is decoded after the bytes'
  import, so that import does not run with its ~260k objects alive);
- peak memory of the local replay, in a fresh child process: the tracemalloc
  peak (Python allocations) and the growth of the process's peak RSS;
- the peak RSS of a whole replay process: each library's replay alone in its
  own fresh interpreter (a small standalone program importing only that
  library), its high-water mark (``VmHWM``, i.e. ``ru_maxrss``) read at the
  end, interpreter and trace included, printed side by side with the bar
  (<= 1.3x pycrdt's, issue 9);
- ``endContent`` verified after the replay, after the load and after each
  remote apply (OK / MISMATCH).

With ``--compare pycrdt`` the same trace (its ``ascii_only`` copy: Yrs indexes
text by UTF-8 bytes) is replayed with pycrdt in the same run and every figure
is printed side by side with the ratio ours/pycrdt, plus the bars of issues 2 and 9
(automerge-paper only). Times are medians over ``--repeat`` runs; with more
than one run the spread (min..max) is printed too. Wall and CPU time are both
shown: on a busy machine the CPU time is the fairer comparison.
Each run also prints the host's pace: a fixed pure-Python loop timed before
every repetition (``host_pace``), whose spread shows how far the shared
host's own speed moved while the figures were taken.

Scenarios (``--scenario``):

- ``replay`` (default): the figures above.
- ``merge``: two replicas built from the two halves of the trace, each merged
  into the other. SYNTHETIC: the trace is one author's, so replica A replays
  its first half and replica B its second half from an empty document (each
  position clamped to the text B has), unaware of each other; then A imports
  B's history (``binary_import_changes`` of B's export since A's version) and
  B imports A's, and, on fresh copies, each merges the other's snapshot, and
  each receives the other's changes as the app does (a ``DocumentStatus``
  frame into a connected ``ClientProtocol``, the text observed and the
  document's updates subscribed to). The texts must converge (checked). And
  A reconnects to a server that has none of its half: the time its
  ``ClientProtocol`` takes from the handshake answer to the queued
  ``Changes`` frames, and their bytes (pycrdt: ``get_update()``). pycrdt does the same with
  ``apply_update(other.get_update(state))``.
- ``concurrent``: several authors editing at once, one peer per author. Given
  ``--concurrent-trace FILE`` (the editing-traces concurrent format: txns with
  ``agent`` and ``parents``), each txn is applied by its agent's peer after it
  has merged exactly the txn's parents. Without one (there is none in
  ``../shared/traces``) a SYNTHETIC run: ``--agents`` agents each replay one
  contiguous part of the sequential trace (positions clamped), in rounds of
  ``--round`` txns each, broadcasting their new changes to every other agent
  after each round. The figure is the total time of all peers (local edits
  plus imports); converged texts are checked.

It prints and never asserts. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import marshal
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # benchmarks/ is not a package
    fmt_bytes,
    fmt_ratio,
    machine_banner,
    median_spread,
    print_table,
    rss_bytes,
)

from crdt_sync import (
    CRDTDocument,
    CRDTTextHandler,
    Snapshot,
    UpdateEvent,
    VersionVector,
    decode_change_batch,
    decode_changes,
)
from crdt_sync.sync import ClientProtocol, DocumentStatus, HandshakeResponse, encode_message

REPO = Path(__file__).resolve().parent.parent
#: ``../shared/traces/sequential`` relative to the repository.
DEFAULT_TRACES_DIR = REPO.parent / "shared" / "traces" / "sequential"
DEFAULT_TRACE = "automerge-paper"

#: Bars of issue 2, defined on automerge-paper.
BAR_TRACE = "automerge-paper"
BAR_LOCAL_RATIO = 0.5
BAR_ENCODED_BYTES = 160_000
BAR_LOAD_S = 0.020
BAR_REMOTE_S = 1.0
#: Bars of issue 9 on the default table (automerge-paper): local replay
#: against pycrdt's, snapshot encode, load, whole-history binary import, the
#: peak RSS of a replay process against pycrdt's, memory held after replay.
BAR9_LOCAL_RATIO = 0.3
BAR9_ENCODE_S = 0.030
BAR9_LOAD_S = 0.010
BAR9_BINARY_IMPORT_S = 0.300
BAR_PEAK_RSS_RATIO = 1.3
BAR9_HELD_BYTES = 30 << 20

Patch = tuple[int, int, str]
Txns = tuple[tuple[Patch, ...], ...]


@dataclass(frozen=True)
class Trace:
    """A trace as plain tuples, ready to replay."""

    name: str
    txns: Txns
    end_content: str

    @property
    def patch_count(self) -> int:
        return sum(len(t) for t in self.txns)


def trace_path(traces_dir: Path, name: str, ascii_only: bool) -> Path:
    folder = traces_dir / "ascii_only" if ascii_only else traces_dir
    return folder / f"{name}.json.gz"


def available_traces(traces_dir: Path) -> list[str]:
    return sorted(p.name.removesuffix(".json.gz") for p in traces_dir.glob("*.json.gz"))


def load_trace(traces_dir: Path, name: str, ascii_only: bool = False) -> Trace:
    """Read a gzipped JSON trace and convert it to tuples of ints and strs.

    Done before any timing, and on purpose: ``json.load`` builds ~260k dicts
    and lists for automerge-paper, all tracked by the garbage collector. Left
    alive during a replay they make every full collection walk them, which
    slows whichever library is being replayed for reasons that have nothing to
    do with it. Tuples holding only ints and strs are untracked by the
    collector after their first collection, so the converted trace costs the
    replays nothing.
    """
    with gzip.open(trace_path(traces_dir, name, ascii_only), "rt", encoding="utf-8") as f:
        raw = json.load(f)
    txns: Txns = tuple(
        tuple((int(p[0]), int(p[1]), str(p[2])) for p in txn["patches"]) for txn in raw["txns"]
    )
    trace = Trace(name, txns, str(raw["endContent"]))
    del raw
    gc.collect()
    return trace


# ---------------------------------------------------------------- measuring


@dataclass
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, Timing]:
    """Run ``fn(*args)`` after a full collection; return its result and wall/CPU seconds.

    A collection the call leaves due (crdt_sync's paused collector leaves one
    at the end of an import) runs at the next allocation of an object the
    collector tracks: one is made before the clocks are read, so it is inside
    the time, as it is for a caller (the clocks themselves make only floats).
    """
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    due = [result]
    c1, w1 = time.process_time(), time.perf_counter()
    del due
    return result, Timing(w1 - w0, c1 - c0)


def host_pace() -> float:
    """CPU seconds of a fixed pure-Python loop (dict lookups of tuple keys,
    int steps), run before each repetition: its spread over a run shows how
    far the host's own speed moved while the figures were taken. It allocates
    nothing (a collection or a page fault would time the memory, not the
    CPU). On a shared machine it can move by 1.7x within seconds, and the
    figures of both libraries slow with it, roughly, while their instruction
    counts do not."""
    keys, table = _PACE_KEYS, _PACE_TABLE
    gc.collect()
    c0 = time.process_time()
    total = 0
    for _ in range(100):
        for key in keys:
            total ^= table[key]
    return time.process_time() - c0


_PACE_KEYS = [(i & 31, i >> 5) for i in range(1024)]
_PACE_TABLE = dict(zip(_PACE_KEYS, range(1024), strict=True))


def pace_note(ours: Results, theirs: Results | None) -> str | None:
    """The line that reports the host's pace over a run, or None if not taken."""
    parts = []
    for name, res in (("crdt_sync", ours), ("pycrdt", theirs)):
        if res is not None and res.pace:
            med, lo, hi = median_spread(res.pace)
            parts.append(
                f"{name}'s repetitions {med * 1000:.1f} ms ({lo * 1000:.1f}..{hi * 1000:.1f} ms)"
            )
    if not parts:
        return None
    return (
        "host pace: a fixed pure-Python loop (host_pace) took, before "
        + "; before ".join(parts)
        + ". A slower loop means a slower host around then; the figures of both libraries "
        "slow with it, roughly"
    )


@dataclass
class Results:
    """Every figure of one library on one trace; times are lists over repeats."""

    times: dict[str, list[Timing]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: CPU seconds of :func:`host_pace` before each repetition.
    pace: list[float] = field(default_factory=list)

    def add_time(self, key: str, timing: Timing) -> None:
        self.times.setdefault(key, []).append(timing)

    def check(self, key: str, ok: bool) -> None:
        # A single mismatch in any repeat makes the check fail.
        self.checks[key] = self.checks.get(key, True) and ok


# ------------------------------------------------------------------ crdt_sync


def replay_ours(txns: Txns) -> tuple[CRDTDocument, CRDTTextHandler]:
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "text")
    transaction, insert, delete = doc.transaction, text.insert, text.delete
    for patches in txns:
        with transaction():
            for pos, deleted, inserted in patches:
                if deleted:
                    delete(pos, deleted)
                if inserted:
                    insert(pos, inserted)
    return doc, text


def run_ours(trace: Trace, res: Results, first: bool) -> None:
    end = trace.end_content
    (doc, text), t = timed(lambda: replay_ours(trace.txns))
    res.add_time("local", t)
    res.check("after local replay", text.value == end)

    snapshot_bytes, t = timed(lambda d: d.take_snapshot().to_bytes(), doc)
    res.add_time("encode document", t)
    history_bytes, t = timed(doc.binary_export_changes)
    res.add_time("encode history", t)
    if first:
        res.sizes["encoded document"] = len(snapshot_bytes)
        res.sizes["change history"] = len(history_bytes)

    def load() -> str:
        loaded = CRDTDocument.from_snapshot(Snapshot.from_bytes(snapshot_bytes))
        return CRDTTextHandler(loaded, "text").value

    value, t = timed(load)
    res.add_time("load", t)
    res.check("after load", value == end)

    del doc, text
    gc.collect()

    def remote(apply: Callable[[CRDTDocument], int]) -> tuple[int, str]:
        # The receiver has its handler registered, as a real client does, so
        # the import also builds the handler's delta event.
        fresh = CRDTDocument()
        fresh_text = CRDTTextHandler(fresh, "text")
        applied = apply(fresh)
        return applied, fresh_text.value

    # The bytes first: while the list of Change objects below is alive, every
    # full collection in the process walks its ~260k objects, which a client
    # importing bytes does not hold.
    (applied_bytes, value), t = timed(remote, lambda d: d.binary_import_changes(history_bytes))
    res.add_time("remote apply (binary)", t)
    changes = decode_changes(history_bytes)
    res.check("after remote apply (bytes)", value == end and applied_bytes == len(changes))
    (applied, value), t = timed(remote, lambda d: d.import_changes(changes))
    res.add_time("remote apply (changes)", t)
    res.check("after remote apply (list of Change)", value == end and applied == len(changes))


# --------------------------------------------------------------------- pycrdt


def replay_pycrdt(txns: Txns, collect: list[bytes] | None = None) -> tuple[Any, Any]:
    from pycrdt import Doc, Text

    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    if collect is not None:
        doc.observe(lambda event: collect.append(event.update))
    transaction, insert = doc.transaction, text.insert
    for patches in txns:
        with transaction():
            for pos, deleted, inserted in patches:
                if deleted:
                    del text[pos : pos + deleted]
                if inserted:
                    insert(pos, inserted)
    return doc, text


def run_pycrdt(trace: Trace, res: Results, first: bool) -> None:
    from pycrdt import Doc, Text

    end = trace.end_content
    (doc, text), t = timed(lambda: replay_pycrdt(trace.txns))
    res.add_time("local", t)
    res.check("after local replay", str(text) == end)

    update, t = timed(doc.get_update)
    res.add_time("encode document", t)

    def load(data: bytes) -> str:
        loaded: Doc[Any] = Doc()
        loaded.apply_update(data)
        return str(loaded.get("text", type=Text))

    value, t = timed(lambda: load(update))
    res.add_time("load", t)
    res.check("after load", value == end)
    del doc, text
    gc.collect()

    # Yjs keeps no history apart from the document: the nearest thing to our
    # change history is the stream of per-transaction updates a peer sends.
    # Collected in an untimed replay so the observer does not slow the timed one.
    updates: list[bytes] = []
    replay_pycrdt(trace.txns, collect=updates)
    gc.collect()
    if first:
        res.sizes["encoded document"] = len(update)
        res.sizes["change history"] = sum(len(u) for u in updates)
        res.notes.append(
            "pycrdt: encoded document = doc.get_update(); change history = sum of the "
            f"{len(updates):,} per-transaction updates; remote apply (changes) = "
            "applying those updates one by one; remote apply (binary) = apply_update "
            "of the single encoded document"
        )

    def remote(updates: list[bytes]) -> str:
        fresh: Doc[Any] = Doc()
        fresh_text = fresh.get("text", type=Text)
        apply = fresh.apply_update
        for u in updates:
            apply(u)
        return str(fresh_text)

    value, t = timed(remote, updates)
    res.add_time("remote apply (changes)", t)
    res.check("after remote apply (updates)", value == end)
    value, t = timed(lambda: load(update))
    res.add_time("remote apply (binary)", t)
    res.check("after remote apply (one update)", value == end)


# ------------------------------------------------------------- memory probes


def memory_probe(library: str, probe_file: Path) -> dict[str, int]:
    """Measure one local replay's memory in THIS process (meant to be a fresh child).

    The trace comes from ``probe_file`` as marshalled tuples, so the child
    never parses JSON: memory freed after parsing would be reused by the
    replay and hide part of its growth. First a plain replay: the growth of
    the RSS (sampled every 2 ms) over the RSS once the trace is loaded, and
    the RSS still held after it. Then, with that document dropped, a replay
    under tracemalloc for the peak of Python allocations and what is still
    allocated after it (tracemalloc slows the replay, so it is not the timed
    one; it cannot see memory that pycrdt's Rust code allocates).
    """
    txns: Txns = marshal.loads(probe_file.read_bytes())
    replay: Callable[[Txns], Any] = replay_ours if library == "ours" else replay_pycrdt
    gc.collect()
    rss0 = rss_bytes()
    peak = [rss0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    kept = replay(txns)
    gc.collect()
    done.set()
    sampler.join()
    out = {
        "peak RSS growth": max(peak[0], rss_bytes()) - rss0,
        "RSS held after replay": rss_bytes() - rss0,
    }
    del kept
    gc.collect()
    tracemalloc.start()
    kept = replay(txns)
    out["tracemalloc peak"] = tracemalloc.get_traced_memory()[1]
    gc.collect()
    out["tracemalloc held after replay"] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return out


#: The whole-process peak probe: a standalone program, so that neither child
#: imports the other library or this harness (crdt_sync and the harness's
#: imports cost ~10 MiB of RSS of their own). It replays the trace exactly as
#: ``replay_ours`` / ``replay_pycrdt`` do, keeps the document alive, and prints
#: the process's high-water RSS (``VmHWM``; ``ru_maxrss`` where there is no
#: /proc) before the replay (interpreter, library and trace loaded) and after.
PEAK_PROBE = """
import json, marshal, resource, sys

def hwm():
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024

library, probe_file = sys.argv[1], sys.argv[2]
with open(probe_file, "rb") as f:
    txns = marshal.loads(f.read())
if library == "ours":
    from crdt_sync import CRDTDocument, CRDTTextHandler
    before = hwm()
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "text")
    transaction, insert, delete = doc.transaction, text.insert, text.delete
    for patches in txns:
        with transaction():
            for pos, deleted, inserted in patches:
                if deleted:
                    delete(pos, deleted)
                if inserted:
                    insert(pos, inserted)
    length = len(text.value)
else:
    from pycrdt import Doc, Text
    before = hwm()
    doc = Doc()
    text = doc.get("text", type=Text)
    transaction, insert = doc.transaction, text.insert
    for patches in txns:
        with transaction():
            for pos, deleted, inserted in patches:
                if deleted:
                    del text[pos : pos + deleted]
                if inserted:
                    insert(pos, inserted)
    length = len(str(text))
print(json.dumps({"peak RSS before replay": before, "peak RSS of the process": hwm(),
                  "length": length}))
"""


def measure_peak_rss(library: str, trace: Trace) -> dict[str, int]:
    """Run :data:`PEAK_PROBE` for ``library`` in a fresh interpreter; its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "trace.marshal"
        probe_file.write_bytes(marshal.dumps(trace.txns))
        cmd = [sys.executable, "-c", PEAK_PROBE, library, str(probe_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        print(f"peak RSS probe for {library} failed: {proc.stderr.strip()}", file=sys.stderr)
        return {}
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peak_of(library: str, trace: Trace, res: Results) -> dict[str, int]:
    """The whole-process peak RSS of ``library``'s replay (median of 3 fresh processes)."""
    runs = [measure_peak_rss(library, trace) for _ in range(3)]
    runs = [r for r in runs if r]
    if not runs:
        return {}
    res.check("peak RSS probe replay", all(r["length"] == len(trace.end_content) for r in runs))
    out = {}
    for key in ("peak RSS before replay", "peak RSS of the process"):
        out[key] = int(median_spread([r[key] for r in runs])[0])
    return out


def measure_memory(library: str, trace: Trace, traces_dir: Path) -> dict[str, int]:
    """Run :func:`memory_probe` in a child process (a fresh heap) and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "trace.marshal"
        probe_file.write_bytes(marshal.dumps(trace.txns))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-probe",
            library,
            "--probe-file",
            str(probe_file),
            "--traces-dir",
            str(traces_dir),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        print(f"memory probe for {library} failed: {proc.stderr.strip()}", file=sys.stderr)
        return {}
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------- report


def fmt_times(timings: list[Timing], attr: str) -> str:
    med, lo, hi = median_spread([getattr(t, attr) for t in timings])
    text = f"{med * 1000:.1f} ms" if med < 1 else f"{med:.3f} s"
    if len(timings) > 1:
        text += f" ({lo * 1000:.1f}..{hi * 1000:.1f} ms)" if hi < 1 else f" ({lo:.2f}..{hi:.2f} s)"
    return text


def median_of(timings: list[Timing] | None, attr: str) -> float | None:
    if not timings:
        return None
    return median_spread([getattr(t, attr) for t in timings])[0]


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(trace: Trace, ours: Results, theirs: Results | None) -> None:
    print()
    print(
        f"== {trace.name}: {len(trace.txns):,} txns, {trace.patch_count:,} patches, "
        f"final text {len(trace.end_content):,} chars"
    )
    bars = trace.name == BAR_TRACE
    header = ["figure", "crdt_sync"]
    if theirs is not None:
        header += ["pycrdt", "ours/pycrdt"]
    if bars:
        header += ["bar (issue 2)", "bar (issue 9)"]
    rows: list[list[str]] = []

    time_keys = [
        "local",
        "encode document",
        "encode history",
        "load",
        "remote apply (changes)",
        "remote apply (binary)",
    ]
    labels = {
        "local": "local replay",
        "encode document": "encode document",
        "encode history": "encode change history",
        "load": "load (decode + read text)",
        "remote apply (changes)": "remote apply: import_changes(list)",
        "remote apply (binary)": "remote apply: binary_import_changes",
    }
    for key in time_keys:
        for attr in ("wall", "cpu"):
            mine = ours.times.get(key)
            row = [f"{labels[key]} [{attr}]", fmt_times(mine, attr) if mine else "-"]
            other = theirs.times.get(key) if theirs is not None else None
            if theirs is not None:
                row += [
                    fmt_times(other, attr) if other else "-",
                    fmt_ratio(median_of(mine, attr), median_of(other, attr)),
                ]
            if bars:
                for issue_bars in (BARS_ISSUE2, BARS_ISSUE9):
                    row.append(bar_cell(key, attr, mine, other, theirs is not None, issue_bars))
            rows.append(row)
    for key in ("encoded document", "change history"):
        row = [f"{key} [bytes]", f"{ours.sizes.get(key, 0):,}"]
        if theirs is not None:
            row += [
                f"{theirs.sizes.get(key, 0):,}",
                fmt_ratio(ours.sizes.get(key), theirs.sizes.get(key)),
            ]
        if bars:
            row.append(
                f"<= {BAR_ENCODED_BYTES:,}: {met(ours.sizes[key] <= BAR_ENCODED_BYTES)}"
                if key == "encoded document"
                else ""
            )
            row.append("")
        rows.append(row)
    memory_keys = (
        "tracemalloc peak",
        "tracemalloc held after replay",
        "peak RSS growth",
        "RSS held after replay",
        "peak RSS before replay",
        "peak RSS of the process",
    )
    for key in memory_keys:
        row = [f"local replay memory: {key}", fmt_bytes(ours.memory.get(key))]
        mine_value, other_value = ours.memory.get(key), None
        if theirs is not None:
            other_value = theirs.memory.get(key)
            row += [fmt_bytes(other_value), fmt_ratio(mine_value, other_value)]
        if bars:
            cell = ""
            if key == "peak RSS of the process" and mine_value and other_value:
                ok = mine_value <= BAR_PEAK_RSS_RATIO * other_value
                cell = f"<= {BAR_PEAK_RSS_RATIO}x pycrdt: {met(ok)}"
            elif key == "tracemalloc held after replay" and mine_value is not None:
                ok = mine_value <= BAR9_HELD_BYTES
                cell = f"<= {BAR9_HELD_BYTES >> 20} MiB: {met(ok)}"
            row += ["", cell]
        rows.append(row)
    print_table(header, rows)
    for name, res in (("crdt_sync", ours), ("pycrdt", theirs)):
        if res is None:
            continue
        checks = ", ".join(f"{k}: {'OK' if v else 'MISMATCH'}" for k, v in res.checks.items())
        print(f"endContent {name}: {checks}")
    for note in ours.notes + (theirs.notes if theirs is not None else []):
        print(f"note: {note}")
    if theirs is not None:
        print("note: pycrdt's tracemalloc peak misses its Rust heap; compare the RSS rows.")
    pace = pace_note(ours, theirs)
    if pace is not None:
        print(f"note: {pace}")


#: Each issue's bars on the default table's timed rows: local replay as a
#: ratio of pycrdt's, the other rows as a time limit in seconds.
BARS_ISSUE2 = (
    BAR_LOCAL_RATIO,
    {
        "load": BAR_LOAD_S,
        "remote apply (changes)": BAR_REMOTE_S,
        "remote apply (binary)": BAR_REMOTE_S,
    },
)
BARS_ISSUE9 = (
    BAR9_LOCAL_RATIO,
    {
        "encode document": BAR9_ENCODE_S,
        "load": BAR9_LOAD_S,
        "remote apply (binary)": BAR9_BINARY_IMPORT_S,
    },
)


def bar_cell(
    key: str,
    attr: str,
    mine: list[Timing] | None,
    other: list[Timing] | None,
    comparing: bool,
    bars: tuple[float, dict[str, float]],
) -> str:
    """One issue's bar (``bars``) for a timed figure of the default table, as met / NOT met."""
    value = median_of(mine, attr)
    if value is None:
        return ""
    ratio, limits = bars
    if key == "local":
        theirs = median_of(other, attr)
        if not comparing or theirs is None:
            return f"<= {ratio}x pycrdt: needs --compare pycrdt"
        return f"<= {ratio}x pycrdt: {met(value <= ratio * theirs)}"
    limit = limits.get(key)
    if limit is None:
        return ""
    shown = f"{limit * 1000:.0f} ms" if limit < 1 else f"{limit:.0f} s"
    return f"<= {shown}: {met(value <= limit)}"


# --------------------------------------------------------------------- main


# ------------------------------------------------------------ merge scenario


def clamped_replay_ours(txns: Txns) -> tuple[CRDTDocument, CRDTTextHandler]:
    """Replay ``txns`` from an empty text, clamping positions to the text's length."""
    doc = CRDTDocument()
    text = CRDTTextHandler(doc, "text")
    apply_clamped_ours(doc, text, txns)
    return doc, text


def apply_clamped_ours(doc: CRDTDocument, text: CRDTTextHandler, txns: Txns) -> None:
    transaction, insert, delete = doc.transaction, text.insert, text.delete
    for patches in txns:
        with transaction():
            for pos, deleted, inserted in patches:
                n = len(text)
                if pos > n:
                    pos = n
                if deleted and pos < n:
                    delete(pos, min(deleted, n - pos))
                if inserted:
                    insert(pos, inserted)


def clamped_replay_pycrdt(txns: Txns) -> tuple[Any, Any]:
    from pycrdt import Doc, Text

    doc: Doc[Any] = Doc()
    text = doc.get("text", type=Text)
    apply_clamped_pycrdt(doc, text, txns)
    return doc, text


def apply_clamped_pycrdt(doc: Any, text: Any, txns: Txns) -> None:
    transaction, insert = doc.transaction, text.insert
    for patches in txns:
        with transaction():
            for pos, deleted, inserted in patches:
                n = len(text)
                if pos > n:
                    pos = n
                if deleted and pos < n:
                    del text[pos : pos + min(deleted, n - pos)]
                if inserted:
                    insert(pos, inserted)


def materialised_copy(snapshot_bytes: bytes) -> tuple[CRDTDocument, CRDTTextHandler]:
    """A replica at a snapshot's state, its text built (not lazy), ready to merge into."""
    doc = CRDTDocument.from_snapshot(Snapshot.from_bytes(snapshot_bytes))
    text = CRDTTextHandler(doc, "text")
    if len(text):
        text.sticky_index(0)  # builds the spans, as any edit or remote op would
    return doc, text


def connected_copy(snapshot_bytes: bytes) -> tuple[ClientProtocol, CRDTDocument, CRDTTextHandler]:
    """:func:`materialised_copy` with a client protocol that has just connected."""
    doc, text = materialised_copy(snapshot_bytes)
    protocol = ClientProtocol(doc, document_id=doc.document_id)
    protocol.send_handshake()
    protocol.messages_to_send()
    answer = HandshakeResponse("session", doc.version_vector, "epoch", compression="none")
    protocol.receive_message(encode_message(answer))
    protocol.messages_to_send()
    protocol.events_received()
    return protocol, doc, text


def run_merge_ours(trace: Trace, res: Results, first: bool) -> None:
    half = len(trace.txns) // 2
    (a, ta), t_a = timed(clamped_replay_ours, trace.txns[:half])
    (b, tb), t_b = timed(clamped_replay_ours, trace.txns[half:])
    if first:
        res.notes.append(
            f"crdt_sync: replaying the halves took {t_a.wall:.2f} s + {t_b.wall:.2f} s (untimed)"
        )
    a_snap, b_snap = a.take_snapshot().to_bytes(), b.take_snapshot().to_bytes()
    a_from_b, t = timed(b.binary_export_changes, a.version_vector)
    res.add_time("export B for A", t)
    b_from_a = a.binary_export_changes(b.version_vector)
    if first:
        res.sizes["B's changes A lacks"] = len(a_from_b)
        res.sizes["A's changes B lacks"] = len(b_from_a)
    # Each merge runs on a copy of the target, so every repeat merges the same states.
    targets = [materialised_copy(a_snap), materialised_copy(b_snap)]
    (_, t) = timed(targets[0][0].binary_import_changes, a_from_b)
    res.add_time("merge A<-B (changes)", t)
    (_, t) = timed(targets[1][0].binary_import_changes, b_from_a)
    res.add_time("merge B<-A (changes)", t)
    res.check("merge by changes converged", targets[0][1].value == targets[1][1].value)
    targets = [materialised_copy(a_snap), materialised_copy(b_snap)]
    _, t = timed(lambda: targets[0][0].import_snapshot(Snapshot.from_bytes(b_snap)))
    res.add_time("merge A<-B (snapshot)", t)
    _, t = timed(lambda: targets[1][0].import_snapshot(Snapshot.from_bytes(a_snap)))
    res.add_time("merge B<-A (snapshot)", t)
    res.check("merge by snapshots converged", targets[0][1].value == targets[1][1].value)
    # As the app receives them: B's editor gets A's changes in a sync-protocol
    # frame (a document status, as after a resync) and its client protocol
    # decodes and imports it, the text observed and the document's updates
    # subscribed to, as the editor does (it reads only whether an update was local).
    for name, target, snap, data, vv in (
        ("merge A<-B (as the app receives it)", a, a_snap, a_from_b, b.version_vector),
        ("merge B<-A (as the app receives it)", b, b_snap, b_from_a, a.version_vector),
    ):
        protocol, doc, text = connected_copy(snap)
        frame = encode_message(
            DocumentStatus(vv.merge(target.version_vector), decode_change_batch(data))
        )
        seen: list[UpdateEvent] = []
        subscriptions = (text.observe(lambda event: None), doc.on_update(seen.append))
        _, t = timed(protocol.receive_message, frame)
        res.add_time(name, t)
        res.check(
            "the app's merges converged",
            [event.local for event in seen] == [False] and text.value == targets[0][1].value,
        )
        del subscriptions
    # A reconnects after its half offline: its client protocol gets the
    # handshake answer of a server that has none of A's work, and queues the
    # Changes frames of everything A made (what the app does on reconnecting).
    protocol = ClientProtocol(a, document_id=a.document_id)
    protocol.send_handshake()
    protocol.messages_to_send()
    answer = encode_message(HandshakeResponse("session", VersionVector(), "epoch"))

    def reconnect() -> list[bytes]:
        protocol.receive_message(answer)
        return protocol.messages_to_send()

    frames, t = timed(reconnect)
    res.add_time("send A's changes (as the app does on reconnecting)", t)
    if first:
        res.sizes["A's changes as sent"] = sum(map(len, frames))
    # The originals merge too (with their histories), to check all four agree.
    a.binary_import_changes(a_from_b)
    b.binary_import_changes(b_from_a)
    res.check("all merges agree", ta.value == tb.value == targets[0][1].value)


def run_merge_pycrdt(trace: Trace, res: Results, first: bool) -> None:
    from pycrdt import Doc, Text

    half = len(trace.txns) // 2
    a, ta = clamped_replay_pycrdt(trace.txns[:half])
    b, tb = clamped_replay_pycrdt(trace.txns[half:])
    a_full, b_full = a.get_update(), b.get_update()
    a_from_b, t = timed(b.get_update, a.get_state())
    res.add_time("export B for A", t)
    b_from_a = a.get_update(b.get_state())
    if first:
        res.sizes["B's changes A lacks"] = len(a_from_b)
        res.sizes["A's changes B lacks"] = len(b_from_a)
        res.notes.append(
            "pycrdt: merge (changes) = apply_update(other.get_update(own state vector)); "
            "merge (snapshot) = apply_update(other.get_update()); as the app receives it = "
            "merge (changes) with the text and the document observed"
        )

    def copy(update: bytes) -> tuple[Any, Any]:
        doc: Doc[Any] = Doc()
        doc.apply_update(update)
        return doc, doc.get("text", type=Text)

    targets = [copy(a_full), copy(b_full)]
    _, t = timed(targets[0][0].apply_update, a_from_b)
    res.add_time("merge A<-B (changes)", t)
    _, t = timed(targets[1][0].apply_update, b_from_a)
    res.add_time("merge B<-A (changes)", t)
    res.check("merge by changes converged", str(targets[0][1]) == str(targets[1][1]))
    targets = [copy(a_full), copy(b_full)]
    _, t = timed(targets[0][0].apply_update, b_full)
    res.add_time("merge A<-B (snapshot)", t)
    _, t = timed(targets[1][0].apply_update, a_full)
    res.add_time("merge B<-A (snapshot)", t)
    res.check("merge by snapshots converged", str(targets[0][1]) == str(targets[1][1]))
    # As an app receives them: the text and the document observed.
    for name, full, data in (
        ("merge A<-B (as the app receives it)", a_full, a_from_b),
        ("merge B<-A (as the app receives it)", b_full, b_from_a),
    ):
        doc, text = copy(full)
        seen: list[object] = []
        subscriptions = (text.observe(lambda event: None), doc.observe(seen.append))
        _, t = timed(doc.apply_update, data)
        res.add_time(name, t)
        res.check("the app's merges converged", len(seen) == 1 and str(text) == str(targets[0][1]))
        del subscriptions
    sent, t = timed(a.get_update)  # what a y-protocol client sends a server that has nothing
    res.add_time("send A's changes (as the app does on reconnecting)", t)
    if first:
        res.sizes["A's changes as sent"] = len(sent)
    del ta, tb


# ------------------------------------------------------- concurrent scenario


def synthetic_rounds(trace: Trace, agents: int, round_size: int) -> list[list[Txns]]:
    """The trace cut into ``agents`` contiguous parts, each cut in rounds of txns."""
    size = -(-len(trace.txns) // agents)
    parts = [trace.txns[i * size : (i + 1) * size] for i in range(agents)]
    rounds = max(-(-len(p) // round_size) for p in parts)
    return [[p[r * round_size : (r + 1) * round_size] for p in parts] for r in range(rounds)]


def run_concurrent_ours(rounds: list[list[Txns]], res: Results) -> None:
    agents = len(rounds[0])

    def session() -> list[str]:
        docs = [CRDTDocument() for _ in range(agents)]
        texts = [CRDTTextHandler(d, "text") for d in docs]
        for batches in rounds:
            sent = []
            for doc, text, txns in zip(docs, texts, batches, strict=True):
                before = doc.version_vector
                apply_clamped_ours(doc, text, txns)
                sent.append(doc.binary_export_changes(before))
            for i, doc in enumerate(docs):
                for j, data in enumerate(sent):
                    if i != j:
                        doc.binary_import_changes(data)
        return [t.value for t in texts]

    values, t = timed(session)
    res.add_time("concurrent session", t)
    res.check("concurrent peers converged", len(set(values)) == 1)


def run_concurrent_pycrdt(rounds: list[list[Txns]], res: Results) -> None:
    from pycrdt import Doc, Text

    agents = len(rounds[0])

    def session() -> list[str]:
        docs: list[Doc[Any]] = [Doc() for _ in range(agents)]
        texts = [d.get("text", type=Text) for d in docs]
        for batches in rounds:
            sent = []
            for doc, text, txns in zip(docs, texts, batches, strict=True):
                before = doc.get_state()
                apply_clamped_pycrdt(doc, text, txns)
                sent.append(doc.get_update(before))
            for i, doc in enumerate(docs):
                for j, data in enumerate(sent):
                    if i != j:
                        doc.apply_update(data)
        return [str(t) for t in texts]

    values, t = timed(session)
    res.add_time("concurrent session", t)
    res.check("concurrent peers converged", len(set(values)) == 1)


def run_concurrent_trace_ours(path: Path, res: Results) -> None:
    """Replay a concurrent editing trace: one peer per agent, each txn applied by its
    agent after merging exactly the txn's parents (the editing-traces format)."""
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open() as f:
        raw = json.load(f)
    txns = [
        (
            int(t["agent"]),
            tuple(int(p) for p in t["parents"]),
            tuple((int(p[0]), int(p[1]), str(p[2])) for p in t["patches"]),
        )
        for t in raw["txns"]
    ]
    end = str(raw["endContent"])
    agents = int(raw.get("numAgents", 1 + max(a for a, _, _ in txns)))
    del raw
    gc.collect()

    def session() -> str:
        docs = [CRDTDocument() for _ in range(agents)]
        texts = [CRDTTextHandler(d, "text") for d in docs]
        hub = CRDTDocument()
        versions: list[dict[str, int]] = []
        for agent, parents, patches in txns:
            doc, text = docs[agent], texts[agent]
            want: dict[str, int] = {}
            for p in parents:
                for peer, ctr in versions[p].items():
                    if ctr > want.get(peer, 0):
                        want[peer] = ctr
            have = doc.version_vector
            if any(have.get(peer, 0) < ctr for peer, ctr in want.items()):
                missing = [
                    c for c in hub.export_changes(have) if c.counter + c.size <= want.get(c.peer, 0)
                ]
                doc.import_changes(missing)
            with doc.transaction():
                for pos, deleted, inserted in patches:
                    if deleted:
                        text.delete(pos, deleted)
                    if inserted:
                        text.insert(pos, inserted)
            hub.import_changes(doc.export_changes(hub.version_vector))
            versions.append(dict(doc.version_vector))
        for doc in docs:
            doc.import_changes(hub.export_changes(doc.version_vector))
        values = {t.value for t in texts} | {CRDTTextHandler(hub, "text").value}
        return values.pop() if len(values) == 1 else ""

    value, t = timed(session)
    res.add_time("concurrent session", t)
    res.check("concurrent trace endContent", value == end)


def report_scenario(title: str, keys: list[str], ours: Results, theirs: Results | None) -> None:
    print()
    print(f"== {title}")
    header = ["figure", "crdt_sync"]
    if theirs is not None:
        header += ["pycrdt", "ours/pycrdt"]
    rows: list[list[str]] = []
    for key in keys:
        for attr in ("wall", "cpu"):
            mine = ours.times.get(key)
            row = [f"{key} [{attr}]", fmt_times(mine, attr) if mine else "-"]
            if theirs is not None:
                other = theirs.times.get(key)
                row += [
                    fmt_times(other, attr) if other else "-",
                    fmt_ratio(median_of(mine, attr), median_of(other, attr)),
                ]
            rows.append(row)
    for key in ours.sizes:
        row = [f"{key} [bytes]", f"{ours.sizes[key]:,}"]
        if theirs is not None:
            row += [
                f"{theirs.sizes.get(key, 0):,}",
                fmt_ratio(ours.sizes[key], theirs.sizes.get(key)),
            ]
        rows.append(row)
    print_table(header, rows)
    for name, res in (("crdt_sync", ours), ("pycrdt", theirs)):
        if res is not None and res.checks:
            checks = ", ".join(f"{k}: {'OK' if v else 'MISMATCH'}" for k, v in res.checks.items())
            print(f"checks {name}: {checks}")
    for note in ours.notes + (theirs.notes if theirs is not None else []):
        print(f"note: {note}")
    pace = pace_note(ours, theirs)
    if pace is not None:
        print(f"note: {pace}")


def main_merge(args: argparse.Namespace, names: list[str]) -> None:
    for name in names:
        trace = load_trace(args.traces_dir, name)
        ascii_trace = load_trace(args.traces_dir, name, ascii_only=True) if args.compare else None
        ours, theirs = Results(), (Results() if args.compare else None)
        for i in range(args.repeat):
            ours.pace.append(host_pace())
            run_merge_ours(trace, ours, first=i == 0)
            if theirs is not None and ascii_trace is not None:
                theirs.pace.append(host_pace())
                run_merge_pycrdt(ascii_trace, theirs, first=i == 0)
        keys = [
            "merge A<-B (changes)",
            "merge B<-A (changes)",
            "merge A<-B (as the app receives it)",
            "merge B<-A (as the app receives it)",
            "send A's changes (as the app does on reconnecting)",
            "merge A<-B (snapshot)",
            "merge B<-A (snapshot)",
            "export B for A",
        ]
        title = (
            f"{name}, merge of the two halves (SYNTHETIC: A replays the first half, B the "
            "second from an empty text, positions clamped; bar <= 50 ms each way)"
        )
        ours.notes.append(
            "timing, the same for both libraries: each timed call starts after gc.collect(), "
            "with every object of earlier repetitions freed (each repetition builds its own "
            "replicas and drops them); collections the call triggers itself, including the "
            "one crdt_sync's paused collector leaves due at the end of an import, are inside "
            "its time"
        )
        report_scenario(title, keys, ours, theirs)


def main_concurrent(args: argparse.Namespace, names: list[str]) -> None:
    if args.concurrent_trace is not None:
        ours = Results()
        for _ in range(args.repeat):
            ours.pace.append(host_pace())
            run_concurrent_trace_ours(args.concurrent_trace, ours)
        report_scenario(
            f"concurrent trace {args.concurrent_trace.name} (pycrdt: not run on this path)",
            ["concurrent session"],
            ours,
            None,
        )
        return
    print(
        "note: no concurrent trace given (--concurrent-trace) and none in "
        f"{args.traces_dir}: running the SYNTHETIC concurrent scenario"
    )
    for name in names:
        trace = load_trace(args.traces_dir, name)
        ascii_trace = load_trace(args.traces_dir, name, ascii_only=True) if args.compare else None
        for agents in args.agents:
            ours, theirs = Results(), (Results() if args.compare else None)
            rounds = synthetic_rounds(trace, agents, args.round)
            for _ in range(args.repeat):
                ours.pace.append(host_pace())
                run_concurrent_ours(rounds, ours)
                if theirs is not None and ascii_trace is not None:
                    theirs.pace.append(host_pace())
                    run_concurrent_pycrdt(synthetic_rounds(ascii_trace, agents, args.round), theirs)
            title = (
                f"{name}, SYNTHETIC concurrent session: {agents} agents each replaying "
                f"1/{agents} of the trace, exchanging changes every {args.round} txns "
                "(bar: time <= pycrdt's)"
            )
            report_scenario(title, ["concurrent session"], ours, theirs)


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("replay", "merge", "concurrent"), default="replay")
    parser.add_argument(
        "--concurrent-trace",
        type=Path,
        default=None,
        help="a concurrent editing trace (.json[.gz])",
    )
    parser.add_argument(
        "--agents", type=int, nargs="+", default=[2, 3], help="synthetic concurrent: agents"
    )
    parser.add_argument(
        "--round", type=int, default=100, help="synthetic concurrent: txns per agent per round"
    )
    parser.add_argument(
        "--trace",
        action="append",
        nargs="+",
        default=None,
        help=f"trace name(s) in the traces dir, or 'all' (default {DEFAULT_TRACE})",
    )
    parser.add_argument("--compare", choices=("pycrdt",), default=None)
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    parser.add_argument(
        "--traces-dir",
        type=Path,
        default=DEFAULT_TRACES_DIR,
        help=f"directory of *.json.gz traces (default {DEFAULT_TRACES_DIR})",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the memory probes (child processes)"
    )
    parser.add_argument("--memory-probe", choices=("ours", "pycrdt"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    traces_dir: Path = args.traces_dir
    requested = [n for group in (args.trace or [[DEFAULT_TRACE]]) for n in group]
    names = available_traces(traces_dir) if "all" in requested else requested
    given_concurrent = args.scenario == "concurrent" and args.concurrent_trace is not None
    for name in [] if given_concurrent else names:
        if not trace_path(traces_dir, name, False).is_file():
            print(f"no trace {name!r} in {traces_dir}", file=sys.stderr)
            return 2

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.probe_file)))
        return 0

    load = os.getloadavg()
    print(machine_banner())
    print(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        f" | repeat {args.repeat} | traces {traces_dir}"
    )
    if args.compare:
        import pycrdt

        version = getattr(pycrdt, "__version__", None)
        if version is None:
            from importlib.metadata import version as dist_version

            version = dist_version("pycrdt")
        print(f"comparing with pycrdt {version} (ascii_only traces)")
    if load[0] > (os.cpu_count() or 1):
        print("note: the machine is busy (load > CPUs): wall times are inflated, see CPU rows")

    if args.scenario == "merge":
        main_merge(args, names)
        return 0
    if args.scenario == "concurrent":
        main_concurrent(args, names)
        return 0
    for name in names:
        trace = load_trace(traces_dir, name)
        ascii_trace = load_trace(traces_dir, name, ascii_only=True) if args.compare else None
        ours = Results()
        theirs = Results() if args.compare else None
        # Interleave the libraries run by run so drift in machine load hits both.
        for i in range(args.repeat):
            ours.pace.append(host_pace())
            run_ours(trace, ours, first=i == 0)
            if theirs is not None and ascii_trace is not None:
                theirs.pace.append(host_pace())
                run_pycrdt(ascii_trace, theirs, first=i == 0)
        if not args.no_memory:
            ours.memory = measure_memory("ours", trace, traces_dir)
            ours.memory.update(peak_of("ours", trace, ours))
            if theirs is not None and ascii_trace is not None:
                theirs.memory = measure_memory("pycrdt", ascii_trace, traces_dir)
                theirs.memory.update(peak_of("pycrdt", ascii_trace, theirs))
        report(trace, ours, theirs)
        del trace, ascii_trace
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
