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
  ``import_changes(list of Change)`` and once as ``binary_import_changes(bytes)``
  (each followed by reading the text);
- peak memory of the local replay, in a fresh child process: the tracemalloc
  peak (Python allocations) and the growth of the process's peak RSS;
- ``endContent`` verified after the replay, after the load and after each
  remote apply (OK / MISMATCH).

With ``--compare pycrdt`` the same trace (its ``ascii_only`` copy: Yrs indexes
text by UTF-8 bytes) is replayed with pycrdt in the same run and every figure
is printed side by side with the ratio ours/pycrdt, plus the bars of issue 2
(automerge-paper only). Times are medians over ``--repeat`` runs; with more
than one run the spread (min..max) is printed too. Wall and CPU time are both
shown: on a busy machine the CPU time is the fairer comparison.

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

from crdt_sync import CRDTDocument, CRDTTextHandler, Snapshot

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
    """Run ``fn(*args)`` after a full collection; return its result and wall/CPU seconds."""
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    c1, w1 = time.process_time(), time.perf_counter()
    return result, Timing(w1 - w0, c1 - c0)


@dataclass
class Results:
    """Every figure of one library on one trace; times are lists over repeats."""

    times: dict[str, list[Timing]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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

    changes = doc.export_changes()
    del doc, text
    gc.collect()

    def remote(apply: Callable[[CRDTDocument], int]) -> tuple[int, str]:
        # The receiver has its handler registered, as a real client does, so
        # the import also builds the handler's delta event.
        fresh = CRDTDocument()
        fresh_text = CRDTTextHandler(fresh, "text")
        applied = apply(fresh)
        return applied, fresh_text.value

    (applied, value), t = timed(remote, lambda d: d.import_changes(changes))
    res.add_time("remote apply (changes)", t)
    res.check("after remote apply (list of Change)", value == end and applied == len(changes))
    (applied, value), t = timed(remote, lambda d: d.binary_import_changes(history_bytes))
    res.add_time("remote apply (binary)", t)
    res.check("after remote apply (bytes)", value == end and applied == len(changes))


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


def measure_memory(library: str, trace: Trace) -> dict[str, int]:
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
        header.append("bar (issue 2)")
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
                row.append(bar_cell(key, attr, mine, other, theirs is not None))
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
        rows.append(row)
    memory_keys = (
        "tracemalloc peak",
        "tracemalloc held after replay",
        "peak RSS growth",
        "RSS held after replay",
    )
    for key in memory_keys:
        row = [f"local replay memory: {key}", fmt_bytes(ours.memory.get(key))]
        if theirs is not None:
            row += [
                fmt_bytes(theirs.memory.get(key)),
                fmt_ratio(ours.memory.get(key), theirs.memory.get(key)),
            ]
        if bars:
            row.append("")
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


def bar_cell(
    key: str,
    attr: str,
    mine: list[Timing] | None,
    other: list[Timing] | None,
    comparing: bool,
) -> str:
    value = median_of(mine, attr)
    if value is None:
        return ""
    if key == "local":
        if not comparing:
            return "<= 0.5x pycrdt: needs --compare pycrdt"
        theirs = median_of(other, attr)
        if theirs is None:
            return ""
        return f"<= {BAR_LOCAL_RATIO}x pycrdt: {met(value <= BAR_LOCAL_RATIO * theirs)}"
    if key == "load":
        return f"<= {BAR_LOAD_S * 1000:.0f} ms: {met(value <= BAR_LOAD_S)}"
    if key.startswith("remote apply"):
        return f"<= {BAR_REMOTE_S:.0f} s: {met(value <= BAR_REMOTE_S)}"
    return ""


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    for name in names:
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

    for name in names:
        trace = load_trace(traces_dir, name)
        ascii_trace = load_trace(traces_dir, name, ascii_only=True) if args.compare else None
        ours = Results()
        theirs = Results() if args.compare else None
        # Interleave the libraries run by run so drift in machine load hits both.
        for i in range(args.repeat):
            run_ours(trace, ours, first=i == 0)
            if theirs is not None and ascii_trace is not None:
                run_pycrdt(ascii_trace, theirs, first=i == 0)
        if not args.no_memory:
            ours.memory = measure_memory("ours", trace)
            if theirs is not None and ascii_trace is not None:
                theirs.memory = measure_memory("pycrdt", ascii_trace)
        report(trace, ours, theirs)
        del trace, ascii_trace
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
