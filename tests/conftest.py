"""Shared test configuration: Hypothesis profiles.

``ci`` (the default) is derandomized, so every run explores the same examples
and a failure reproduces, with a modest budget to keep the suite fast. ``slow``
is for tests marked ``@pytest.mark.slow`` (they opt in with
``settings(parent=settings.get_profile("slow"))``); it explores far more
examples with random seeds. ``HYPOTHESIS_PROFILE`` selects another default.
No deadline: this machine is shared, and a slow example is not a failure.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

# When a Hypothesis test fails, its pytest plugin imports this module (through
# libcst, which triggers a third-party DeprecationWarning); with warnings as
# errors that turns every property failure into a pytest INTERNALERROR that
# hides the counterexample. Importing it once here, warnings silenced, avoids that.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # pragma: no cover - optional dependency missing
        pass

# The "explain" phase traces every line of a failing example again, which
# takes minutes on the core's hot loops: report failures without it.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=30,
    deadline=None,
    print_blob=True,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "slow",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the Qt tests (``tests/editor``) after every other test.

    Once a ``QApplication`` exists, pytest-qt processes Qt events around every
    later test, Qt or not; a long asyncio test then lets timers and deferred
    events of earlier windows pile up. Keeping the Qt tests together and last
    keeps the event processing of each test about that test's own widgets.
    The order within each group is unchanged.
    """
    editor = Path(__file__).parent / "editor"
    items.sort(key=lambda item: editor in Path(str(item.path)).parents)


@pytest.fixture
def changes_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``[count]``: how many :class:`crdt_sync.Change` objects were made since the
    test began (read it before and after what must build none)."""
    from crdt_sync import Change

    built = [0]
    real = Change.__init__

    def counting(self: Change, data: Any) -> None:
        built[0] += 1
        real(self, data)

    monkeypatch.setattr(Change, "__init__", counting)
    return built


@pytest.fixture
def segment_imports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of segments of each call of ``crdt_sync.remote.import_segments``
    (an import by runs) since the test began."""
    from crdt_sync import remote

    calls: list[int] = []
    real = remote.import_segments

    def spy(*args: Any) -> int:
        calls.append(len(args[1]))
        return real(*args)

    monkeypatch.setattr(remote, "import_segments", spy)
    return calls
