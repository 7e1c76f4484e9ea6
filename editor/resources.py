"""The one module that loads files from ``resources/`` (icons, style sheet).

An installed app carries ``resources/`` as the data package ``editor.assets``.

Icons are SVG files drawn for this project. When the folder is absent (an
install that did not ship it), every function degrades gracefully: icons come
back empty and the style sheet is the empty string, so the app still runs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap

__all__ = ["colour_dot", "icon", "resource_path", "style_sheet"]


def _find_root() -> Path:
    """``resources/`` of a source checkout, else the installed ``editor.assets``."""
    checkout = Path(__file__).resolve().parent.parent / "resources"
    if checkout.is_dir():
        return checkout
    from importlib.util import find_spec

    spec = find_spec("editor.assets")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout


_ROOT = _find_root()


def resource_path(relative: str) -> Path:
    """Absolute path of a file under ``resources/`` (it may not exist)."""
    return _ROOT / relative


@cache
def icon(name: str) -> QIcon:
    """The icon ``resources/icons/<name>.svg``; an empty icon when missing.

    Needs a ``QGuiApplication``. Names in use: ``app``, ``host``, ``join``,
    ``disconnect``, ``stop``, ``copy``, ``lock``, ``status-<state>`` for each connection
    state.
    """
    path = resource_path(f"icons/{name}.svg")
    return QIcon(str(path)) if path.is_file() else QIcon()


def style_sheet() -> str:
    """The application's style sheet (``resources/style.qss``), or ``""``."""
    path = resource_path("style.qss")
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def colour_dot(colour: str, size: int = 12) -> QIcon:
    """A filled circle in ``colour`` (any name ``QColor`` accepts), for peer lists."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(colour))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawEllipse(1, 1, size - 2, size - 2)
    painter.end()
    return QIcon(pixmap)
