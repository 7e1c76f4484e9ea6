"""``python -m editor``: start the desktop app (same as ``crdt-editor``)."""

from __future__ import annotations

import sys

from editor.app import main

if __name__ == "__main__":
    sys.exit(main())
