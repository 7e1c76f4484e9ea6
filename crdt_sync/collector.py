"""Pausing the cyclic garbage collector while a bulk import runs.

An import of a long history makes tens of thousands of long-lived objects
(spans, tuples, index entries) and frees almost nothing: every collection the
allocations trigger meanwhile walks the young objects and finds no garbage,
and the older generations' collections walk all of them again (10-15 % of a
whole-history import, measured with ``gc.callbacks``). Paused, the collector
sees the new objects once, after the import, when it runs on its own.

The collector is process-wide, so the pause is counted: the first of several
overlapping pauses (other threads importing too) records whether the collector
was enabled and disables it; the last one restores exactly that. A collector
the application had disabled stays disabled, and one paused here is enabled
again even if the import raised.
"""

from __future__ import annotations

import gc
import threading
from types import TracebackType

_lock = threading.Lock()
_depth = 0
_was_enabled = False


class _Pause:
    """The ``with`` block of :func:`paused_collector`. It holds no state of its own
    (the count is module-wide), so one instance serves every pause, and entering
    it is two method calls: an import of one keystroke pays for it too, where a
    ``contextlib.contextmanager`` would make a generator and a wrapper each time."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _depth, _was_enabled
        with _lock:
            if not _depth:
                _was_enabled = gc.isenabled()
                gc.disable()
            _depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _depth
        with _lock:
            _depth -= 1
            if not _depth and _was_enabled:
                gc.enable()


_PAUSE = _Pause()


def paused_collector() -> _Pause:
    """Disable :mod:`gc` collections for the ``with`` block, then restore the previous
    state (also when the block raises)."""
    return _PAUSE
