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

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "slow",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
