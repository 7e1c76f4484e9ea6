"""Smoke test of benchmarks/sync_load.py: two raw clients for one second against a real
server child process on 127.0.0.1. It checks that the generator's bookkeeping is
whole (every edit sent, stamped on arrival, acknowledged, held by the server) and
that the report prints; it never asserts a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture()
def sync_load(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import sync_load

    return sync_load


def test_sync_load_two_clients_one_second(sync_load: Any, capsys: Any) -> None:
    args = sync_load.parse_args(
        [
            "--clients",
            "2",
            "--rate",
            "10",
            "--seconds",
            "1",
            "--registry",
            "memory",
            "--workers",
            "1",
            # Never refuse this run for the machine's load: the test is about bookkeeping.
            "--max-generator-cpu",
            "1000",
            "--max-loop-lag-ms",
            "1000000",
        ]
    )
    run = sync_load.one_run("crdt_sync", args, 2, 10.0, 1.0)
    assert run.failure == ""
    assert run.edits_sent == 20
    assert run.expected == 20
    assert run.delivered == 20, run.messages_in
    assert (run.duplicates, run.unknown, run.unparsed) == (0, 0, 0)
    assert run.edits_acked == 20
    assert run.final_check == "yes"
    assert run.saturated == []
    assert sync_load.report([run], args) == 0
    out = capsys.readouterr().out
    assert "propagation p99" in out
    assert "deliveries received / expected" in out


@pytest.fixture()
def trace_replay(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import trace_replay

    return trace_replay


def test_the_host_pace_note_reports_each_library_s_loop(trace_replay: Any) -> None:
    assert isinstance(trace_replay.host_pace(), float)  # runs; its time is never asserted
    ours, theirs = trace_replay.Results(), trace_replay.Results()
    assert trace_replay.pace_note(ours, theirs) is None
    ours.pace = [0.009, 0.016, 0.010]
    note = trace_replay.pace_note(ours, None)
    assert "crdt_sync's repetitions 10.0 ms (9.0..16.0 ms)" in note
    assert "pycrdt" not in note
    theirs.pace = [0.008]
    note = trace_replay.pace_note(ours, theirs)
    assert (
        "crdt_sync's repetitions 10.0 ms (9.0..16.0 ms); "
        "before pycrdt's repetitions 8.0 ms (8.0..8.0 ms)"
    ) in note
