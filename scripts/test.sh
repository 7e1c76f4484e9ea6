#!/usr/bin/env bash
# Install the project with its test extra, then lint, type-check and run the
# whole test suite. Extra arguments go to pytest (e.g. `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
python3 -m pip install -q -e '.[test]'
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest "$@"
