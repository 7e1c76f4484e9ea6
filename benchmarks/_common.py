"""Helpers shared by the benchmark scripts: machine facts, statistics, tables, memory.

Nothing here asserts anything: benchmarks print figures for people to read.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = [
    "Row",
    "fmt_bytes",
    "fmt_ms",
    "fmt_ratio",
    "fmt_s",
    "machine_banner",
    "max_rss_bytes",
    "median_spread",
    "percentile",
    "print_table",
    "rss_bytes",
]

#: A table row: a label followed by already-formatted cells.
Row = Sequence[str]


def machine_banner() -> str:
    """One line naming the machine, the interpreter and the date (for pasted results)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now} | {platform.machine()} {os.cpu_count()} CPUs | "
        f"{platform.python_implementation()} {platform.python_version()} | "
        f"{platform.system()} {platform.release()}"
    )


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    return statistics.median(values), min(values), max(values)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence (0 < fraction <= 1).

    Nearest rank (no interpolation) so p99 and max are always observed values.
    """
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * fraction // 1)))
    return sorted_values[int(rank) - 1]


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 10 * 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if abs(n) >= 10 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def fmt_ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def print_table(header: Row, rows: Sequence[Row], file: TextIO | None = None) -> None:
    """Print a plain-text table with columns padded to their widest cell."""
    out = sys.stdout if file is None else file
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Row) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print(line(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print(line(row), file=out)


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes (Linux /proc, else peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
