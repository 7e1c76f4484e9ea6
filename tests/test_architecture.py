"""The import direction of the three packages, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["crdt_sync", "crdt_sync.sync", "server", "server.cli"])
def test_package_never_imports_qt(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        "roots = ('PySide6', 'qasync', 'editor')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "", f"{package} pulled in {out.stdout.strip()}"


def test_core_never_imports_the_network_layer() -> None:
    code = (
        "import sys, crdt_sync\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('websockets', 'server'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "", f"crdt_sync pulled in {out.stdout.strip()}"
