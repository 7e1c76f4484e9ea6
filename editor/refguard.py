"""Keep PySide6's lost references to ``None``/``True``/``False`` from crashing the app.

Measured here with PySide6 6.12.0 on CPython 3.11: every ``Signal.emit()``
drops one reference to ``True`` and many void C++ methods called from Python
(``QTimer.start``, ``QListWidget.clear``, ``setExtraSelections``,
``QTest.keyClick``...) drop one to ``None``, without having taken it. After a
few thousand such calls the count reaches zero and the interpreter aborts
("Fatal Python error: bool_dealloc" / "none_dealloc"). CPython 3.12 made these
objects immortal, so the bug is harmless there.

The guard holds a reserve of references (a list repeating the object) and
tops it up, from a timer, by as many as were lost since the last check: the
count then never falls below where it started. The cost is 8 bytes per lost
reference, the same as the leak it compensates. The reserve lists are never
freed (one extra reference is taken on each through the C API): freeing them
at exit would give back references that the other owners also give back.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["RefcountGuard"]

_NEEDED = sys.version_info < (3, 12)
_INITIAL_RESERVE = 1_000_000


class RefcountGuard:
    """Call :meth:`top_up` regularly (the app does it every 200 ms)."""

    def __init__(self, reserve: int = _INITIAL_RESERVE) -> None:
        self._objects: tuple[object, ...] = (None, True, False)
        self._bank: dict[int, list[object]] = {}
        self._baseline: dict[int, int] = {}
        if not _NEEDED:
            return
        for obj in self._objects:
            reserve_list: list[object] = [obj] * reserve
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(reserve_list))  # never freed
            self._bank[id(obj)] = reserve_list
            self._baseline[id(obj)] = sys.getrefcount(obj)

    def top_up(self) -> int:
        """Restore every lost reference since the last call; return how many."""
        restored = 0
        for obj in self._objects:
            key = id(obj)
            if key not in self._baseline:
                continue
            lost = self._baseline[key] - sys.getrefcount(obj)
            if lost > 0:
                self._bank[key].extend([obj] * lost)
                restored += lost
            self._baseline[key] = sys.getrefcount(obj)
        return restored
