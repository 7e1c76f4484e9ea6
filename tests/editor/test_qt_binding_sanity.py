"""Guards against a PySide6 build that corrupts CPython's reference counts.

PySide6 6.12.0 drops one reference to ``True`` on every ``Signal.emit()`` and to
``None`` on some void calls; on CPython 3.11 (where those objects are not
immortal) the app aborts after a few thousand signals. pyproject.toml keeps it
out; this test fails if a broken build comes back.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, QTimer, Signal
app = QCoreApplication([])
class Emitter(QObject):
    fired = Signal(int)
emitter = Emitter()
emitter.fired.connect(lambda value: None)
timer = QTimer()
true_before, none_before = sys.getrefcount(True), sys.getrefcount(None)
for _ in range(2000):
    emitter.fired.emit(1)
    timer.start(1000)
print(true_before - sys.getrefcount(True), none_before - sys.getrefcount(None))
"""


def test_signals_and_void_calls_keep_reference_counts() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        env={"QT_QPA_PLATFORM": "offscreen", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    lost_true, lost_none = (int(x) for x in result.stdout.split())
    # A handful of references move with interpreter internals; thousands do not.
    assert lost_true < 100, f"{lost_true} references to True lost"
    assert lost_none < 100, f"{lost_none} references to None lost"
