"""A real redis-server for tests, and real server processes that share it.

``RedisServer`` runs ``redis-server`` on a free loopback port in a temporary
directory with AOF on (``appendfsync always``), and can stop, kill and
restart it on the same port and data. ``ServerProcess`` runs
``python -m server --redis URL --port 0`` and reads the port from its
listening line. Nothing sleeps to synchronise: both wait for a line the
program prints, with a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT = 20.0


def require_redis_server() -> str:
    """The redis-server binary; skip (locally) or fail (in CI) when it is missing."""
    if REDIS_SERVER is not None:
        return REDIS_SERVER
    if os.environ.get("CI") == "true":
        pytest.fail("redis-server is not installed: CI must install it (.ci/run)")
    pytest.skip("redis-server is not installed here (apt-get install redis-server)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_line(
    stream: IO[bytes], pattern: re.Pattern[bytes], timeout: float, what: str
) -> re.Match[bytes]:
    """Read ``stream`` until a line matches ``pattern`` (AssertionError after ``timeout``).

    Reads the file descriptor directly (no Python buffer that select cannot see).
    """
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            *lines, _ = output.split(b"\n")
            for line in lines:
                match = pattern.search(line)
                if match is not None:
                    return match
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"timed out waiting for {what}; output: {output!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"{what}: the program exited; output: {output!r}")
            output += chunk


def _drain(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while os.read(stream.fileno(), 65536):
            pass
    with contextlib.suppress(OSError):
        stream.close()


class RedisServer:
    """One redis-server with its data in ``directory``; restartable on the same port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--logfile",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        try:
            wait_for_line(
                self.process.stdout,
                re.compile(rb"Ready to accept connections"),
                START_TIMEOUT,
                "redis-server to start",
            )
        except BaseException:
            self.kill()  # never leave a half-started server behind
            raise
        # Keep reading its log so a full pipe never blocks it.
        threading.Thread(target=_drain, args=(self.process.stdout,), daemon=True).start()

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM: it finishes writing the AOF)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=START_TIMEOUT)
        self._close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=START_TIMEOUT)
        self._close()

    def _close(self) -> None:
        self.process = None


class ServerProcess:
    """``python -m server --redis URL`` on a free port, as its own OS process."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--redis",
                redis_url,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-level",
                "WARNING",
                "--no-auth",  # tokens are tested elsewhere; here: Redis
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        try:
            match = wait_for_line(
                self.process.stdout,
                re.compile(rb"listening on ws://[^ ]*:(\d+)/"),
                START_TIMEOUT,
                "the server process to listen",
            )
        except BaseException:
            self.kill()  # never leave a half-started server behind
            raise
        self.port = int(match.group(1))

    def url(self, document_id: str = "notes") -> str:
        return f"ws://127.0.0.1:{self.port}/{document_id}"

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=START_TIMEOUT)
        self._close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            with contextlib.suppress(OSError):
                self.process.stdout.close()
