"""The command line: the server as a real child process (`python -m server`)."""

from __future__ import annotations

import inspect
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from server_helpers import Peer, peers, wait_converged, wait_for
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from crdt_sync.sync.client import ConnectionStatus
from server.auth import TokenAuthority, default_secret_path
from server.cli import (
    DEFAULT_COMMIT_INTERVAL,
    _make_registry,
    build_parser,
    listening_line,
    main,
)
from server.registry import SqliteServerRegistry
from server.tls import create_self_signed_certificate

# What the desktop app uses to find the port.
PORT_RE = re.compile(r"listening on wss?://[^ ]*:(\d+)/")
ROOT = Path(__file__).resolve().parents[2]


def test_listening_line_is_parseable_and_names_a_share_url() -> None:
    line = listening_line("127.0.0.1", 8765)
    match = PORT_RE.search(line)
    assert match is not None and match.group(1) == "8765"
    assert line.startswith("crdt-sync-server listening on ws://127.0.0.1:8765/ (share: ws://")
    assert line.endswith(":8765/<document-id>)")
    wildcard = listening_line("0.0.0.0", 9000)
    assert PORT_RE.search(wildcard) is not None
    assert "share: ws://0.0.0.0" not in wildcard  # a wildcard is not an address to share
    assert PORT_RE.search(listening_line("::1", 9001)) is not None


def test_parser_defaults_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.memory, args.compression) == (
        "127.0.0.1",
        8080,
        False,
        "none",
    )
    assert not args.no_create and not args.exit_with_parent
    for bad in (["--port", "70000"], ["--memory", "--db", "x"], ["--compression", "brotli"]):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(bad)
        assert caught.value.code == 2
    capsys.readouterr()


def test_commit_interval_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("-0.001", "1.5", "nan", "inf", "25ms"):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(["--commit-interval", bad])
        assert caught.value.code == 2
        assert "--commit-interval" in capsys.readouterr().err
    # The other stores have no commits to space out: refused, not silently ignored.
    for store in (["--memory"], ["--redis", "redis://127.0.0.1:1/0"]):
        with pytest.raises(SystemExit) as caught:
            main([*store, "--commit-interval", "0.05", "--port", "0"])
        assert caught.value.code == 2
        assert "SQLite store only" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_commit_interval_reaches_the_sqlite_store(tmp_path: Path) -> None:
    default_signature = inspect.signature(SqliteServerRegistry).parameters["commit_interval"]
    assert default_signature.default == DEFAULT_COMMIT_INTERVAL
    for given, expected in (([], DEFAULT_COMMIT_INTERVAL), (["0.05"], 0.05), (["0"], 0.0)):
        option = ["--commit-interval", *given] if given else []
        args = build_parser().parse_args(["--db", str(tmp_path / "d.sqlite3"), *option])
        registry = _make_registry(args)
        try:
            assert isinstance(registry, SqliteServerRegistry)
            assert registry.commit_interval == expected
        finally:
            await registry.close()


def start_server(*arguments: str) -> tuple[subprocess.Popen[str], int]:
    """Start `python -m server ...` and return it with the port from its first line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--log-level", "WARNING", *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 20)
    assert ready, "the server printed nothing"
    line = process.stdout.readline()
    match = PORT_RE.search(line)
    if match is None:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {err}")
    return process, int(match.group(1))


@contextmanager
def running(*arguments: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process, port = start_server(*arguments)
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=20)


def test_sigterm_stops_cleanly_with_status_zero(tmp_path: Path) -> None:
    with running("--port", "0", "--db", str(tmp_path / "store.sqlite3")) as (process, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stdout is not None and process.stdout.read() == ""  # one line only
    assert (tmp_path / "store.sqlite3").exists()


def test_a_busy_port_is_a_clear_startup_failure(tmp_path: Path) -> None:
    with running("--port", "0", "--memory", "--no-auth") as (_, port):
        second = subprocess.run(
            [sys.executable, "-m", "server", "--port", str(port), "--memory", "--no-auth"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert "cannot listen" in second.stderr


def test_a_corrupt_database_is_a_clear_startup_failure(tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite3"
    path.write_bytes(b"definitely not sqlite" * 50)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--db", str(path), "--no-auth"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "not a crdt-sync-server database" in result.stderr
    assert result.stdout == ""


def pid_exits_within(pid: int, seconds: float) -> bool:
    """Wait for a process that is not our child to end (Linux pidfd: no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], seconds)
        return bool(ready)
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")
def test_exit_with_parent_leaves_no_orphan(tmp_path: Path) -> None:
    # A stand-in for the desktop app: starts the server, prints its pid, then is killed.
    launcher = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-m', 'server', '--port', '0', '--memory',"
        " '--no-auth', '--exit-with-parent'], stdout=subprocess.PIPE, text=True)\n"
        "print(child.pid, child.stdout.readline().strip(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", launcher],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    first = parent.stdout.readline()
    child_pid = int(first.split()[0])
    assert PORT_RE.search(first)
    assert not pid_exits_within(child_pid, 0.2)  # alive while the parent lives
    parent.kill()
    parent.communicate(timeout=20)  # also closes our ends of its pipes
    assert pid_exits_within(child_pid, 20), "the server outlived its parent"


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_sigkill_mid_session_loses_no_acknowledged_change(tmp_path: Path) -> None:
    database = str(tmp_path / "store.sqlite3")
    process, port = start_server("--port", "0", "--db", database)
    url = f"ws://127.0.0.1:{port}/meeting"
    # Tokens are required by default: sign one with the secret the server created.
    authority, created = TokenAuthority.from_file(default_secret_path(Path(database)))
    assert not created
    token = authority.issue("meeting")
    try:
        async with peers(url, 3, auth_token=token) as group:
            ada, bob, cy = group
            ada.text.insert(0, "minutes: ")
            bob.items.append("agenda item")
            cy.meta.set("title", "Weekly")
            await wait_converged(group)
            for peer in group:
                await peer.wait_acknowledged()
            acknowledged = ada.state()

            process.kill()  # SIGKILL: no flush, no goodbye
            process.communicate(timeout=20)
            for peer in group:
                await peer.wait_status(ConnectionStatus.RECONNECTING)
            # Everyone keeps editing while the server is down.
            ada.text.insert(len(ada.text.value), "offline note")
            bob.items.append("offline item")

            process, _ = start_server("--port", str(port), "--db", database)
            for peer in group:
                await peer.wait_status(ConnectionStatus.CONNECTED)
            await wait_converged(group)
            for peer in group:
                await peer.wait_acknowledged()
            assert "minutes: " in ada.text.value and "offline note" in cy.text.value
            assert ada.items.value[0] == "agenda item" or "agenda item" in ada.items.value

        # A newcomer, knowing nothing, finds everything acknowledged before the kill.
        newcomer = Peer(url, "newcomer", auth_token=token)
        await newcomer.connect()
        await wait_for(
            lambda: (
                newcomer.meta.value == acknowledged[2]
                and acknowledged[0] in newcomer.text.value
                and "agenda item" in newcomer.items.value
            ),
            documents=(newcomer.document,),
            what="the newcomer sees the acknowledged state",
        )
        await newcomer.client.disconnect()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)


def test_the_server_never_imports_qt() -> None:
    code = "import sys, server, server.cli; assert 'PySide6' not in sys.modules, 'Qt imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------ access


def start_with_stderr(*arguments: str) -> tuple[subprocess.Popen[str], int]:
    """Like start_server, at INFO so the access lines on standard error can be read."""
    return start_server("--log-level", "INFO", *arguments)


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_the_server_requires_tokens_by_default_and_says_how_to_invite(
    tmp_path: Path,
) -> None:
    database = tmp_path / "team.sqlite3"
    process, port = start_with_stderr("--port", "0", "--db", str(database))
    try:
        secret = default_secret_path(database)
        assert secret.exists() and (secret.stat().st_mode & 0o077) == 0
        url = f"ws://127.0.0.1:{port}/notes"
        stranger = Peer(url, "stranger")
        assert await stranger.client.connect() is False
        assert stranger.client.status is ConnectionStatus.ERROR
        error = stranger.client.last_error
        assert error is not None and "requires an invite token" in error.message
        await stranger.client.disconnect()
        # The token subcommand signs with the same secret: its link gets in, read-only.
        made = subprocess.run(
            [sys.executable, "-m", "server", "token", "notes", "--role", "read", "--db",
             str(database), "--url", f"ws://127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        link = made.stdout.strip().splitlines()[-1]
        assert link.startswith(f"{url}#token=")
        reader = Peer(link, "reader")
        await reader.connect()
        assert reader.client.role is not None and reader.client.role.label == "read"
        await reader.client.disconnect()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert "created the token secret" in err
    assert "crdt-sync-server token DOCUMENT" in err and f"--db {database}" in err


def test_no_auth_warns_at_every_start(tmp_path: Path) -> None:
    for _ in range(2):
        process, _ = start_server("--port", "0", "--memory", "--no-auth")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        assert "--no-auth" in err and "anyone who can reach this server" in err


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_tls_from_the_command_line_with_a_pinned_invite(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pin = create_self_signed_certificate(cert, key, ["127.0.0.1"])
    secret = tmp_path / "server.secret"
    common = ["--secret-file", str(secret)]
    process, port = start_server(
        "--port", "0", "--memory", "--tls-cert", str(cert), "--tls-key", str(key), *common
    )
    try:
        made = subprocess.run(
            [sys.executable, "-m", "server", "token", "notes", *common,
             "--url", f"wss://127.0.0.1:{port}", "--tls-cert", str(cert)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        link = made.stdout.strip().splitlines()[-1]
        assert link.endswith(f"&pin={pin}")
        async with peers(link, 2) as group:
            assert all(p.client.certificate_fingerprint == pin for p in group)
            group[0].text.insert(0, "over wss")
            await wait_converged(group)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)


def test_tls_options_go_together_and_bad_files_are_a_clear_failure(tmp_path: Path) -> None:
    lone = subprocess.run(
        [sys.executable, "-m", "server", "--memory", "--no-auth", "--tls-cert", "x.pem"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert lone.returncode == 2 and "go together" in lone.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "server", "--memory", "--no-auth", "--port", "0",
         "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(tmp_path / "no-key.pem")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and missing.stdout == ""


@pytest.mark.asyncio
async def test_allow_origin_from_the_command_line() -> None:
    process, port = start_server(
        "--port", "0", "--memory", "--no-auth", "--allow-origin", "https://ok.example"
    )
    url = f"ws://127.0.0.1:{port}/notes"
    try:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, origin=Origin("https://evil.example")):
                pass
        assert caught.value.response.status_code == 403
        async with connect(url, origin=Origin("https://ok.example")) as ws:
            assert ws.response is not None and ws.response.status_code == 101
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
