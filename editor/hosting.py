"""Host a session: run the bundled headless server as a child process.

The server runs as ``python -m server --host 0.0.0.0 --port N --db <data
dir>/host.db --exit-with-parent`` in a ``QProcess``: a busy session never
freezes the window, and ``--exit-with-parent`` makes the child stop by itself
if the app is killed, so no orphan is left behind. The child prints one line
once it listens; the bound port is read from it (so port 0 picks a free port).

:meth:`HostedServer.stop` terminates the child (SIGTERM: the server flushes
its SQLite store and exits) and waits for it, killing it if it does not exit
in time. Nothing here imports the ``server`` package.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal

__all__ = ["HostedServer", "HostingError", "invite_link", "lan_address"]

LISTENING_LINE = re.compile(rb"listening on wss?://[^ ]*:(\d+)/")
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class HostingError(RuntimeError):
    """The child server could not be started (the message says why)."""


def lan_address() -> str:
    """This machine's address on the local network, or ``127.0.0.1`` without one.

    Uses the address the system would route an outside packet from; a UDP
    "connect" sends nothing.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never actually contacted
        address = str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
    return address if not address.startswith("0.") else "127.0.0.1"


def invite_link(port: int, document_id: str, host: str | None = None) -> str:
    """The URL others paste to join: ``ws://<LAN address>:<port>/<document-id>``."""
    return f"ws://{host or lan_address()}:{port}/{document_id}"


class HostedServer(QObject):
    """One child server process. Start it with :meth:`start`, end it with :meth:`stop`.

    The documents are stored in the SQLite file ``db_path`` (``memory=True``:
    kept in memory only, for benchmarks). ``bind_address`` is every interface by
    default, so people on the LAN can join; tests and benchmarks use loopback.

    ``exited`` is emitted with the exit code whenever the child ends, also when
    it ends on its own (crash, killed from outside).
    """

    exited = Signal(int)

    def __init__(
        self,
        db_path: Path,
        port: int = 0,
        log_path: Path | None = None,
        parent: QObject | None = None,
        *,
        memory: bool = False,
        bind_address: str = "0.0.0.0",
    ) -> None:
        super().__init__(parent)
        self._memory = memory
        self._bind_address = bind_address
        self._db_path = db_path
        self._requested_port = port
        self._log_path = log_path or db_path.with_suffix(".log")
        self._process: QProcess | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._output = b""
        self._ready: asyncio.Future[int] | None = None
        self._finished: asyncio.Future[int] | None = None

    @property
    def port(self) -> int | None:
        """The port the child listens on, once started."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The child's process id (kept after it exits, to check it is gone)."""
        return self._pid

    @property
    def running(self) -> bool:
        """True while the child process exists."""
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    def arguments(self) -> list[str]:
        """The child's command-line arguments (after the Python executable)."""
        return [
            "-m",
            "server",
            "--host",
            self._bind_address,
            "--port",
            str(self._requested_port),
            *(["--memory"] if self._memory else ["--db", str(self._db_path)]),
            # Tokens and TLS for hosted sessions come with the app's invite links.
            "--no-auth",
            "--exit-with-parent",
        ]

    async def start(self, timeout: float = 30.0) -> int:
        """Start the child and return the port it listens on.

        Raises :class:`HostingError` if it exits, fails to start or does not
        report a port within ``timeout`` seconds (it is then stopped).
        """
        if self.running:
            raise HostingError("the server is already running")
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._finished = loop.create_future()
        self._output = b""
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        process = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        python_path = environment.value("PYTHONPATH", "")
        root = str(_PROJECT_ROOT)
        environment.insert("PYTHONPATH", root + (os.pathsep + python_path if python_path else ""))
        environment.insert("PYTHONUNBUFFERED", "1")
        process.setProcessEnvironment(environment)
        process.setStandardErrorFile(str(self._log_path))
        process.readyReadStandardOutput.connect(self.on_process_readyReadStandardOutput)
        process.finished.connect(self.on_process_finished)
        process.errorOccurred.connect(self.on_process_errorOccurred)
        process.started.connect(self.on_process_started)
        self._process = process
        process.start(sys.executable, self.arguments())
        try:
            port = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.stop()
            raise HostingError(f"the server did not report its port within {timeout:g} s") from None
        self._port = port
        return port

    async def stop(self, timeout: float = 10.0) -> None:
        """Terminate the child and wait until it has exited (kill it after ``timeout``)."""
        process = self._process
        if process is None or self._finished is None:
            return
        if process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(self._finished), timeout)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(asyncio.shield(self._finished), timeout)
        self._port = None

    def stop_now(self, timeout_ms: int = 10000) -> None:
        """Blocking :meth:`stop`, for when no event loop can run any more."""
        process = self._process
        if process is None or process.state() == QProcess.ProcessState.NotRunning:
            return
        process.terminate()
        if not process.waitForFinished(timeout_ms):
            process.kill()
            process.waitForFinished(timeout_ms)
        self._port = None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the child's standard error (for error messages)."""
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")[-limit:]
        except OSError:
            return ""

    # -- QProcess slots -----------------------------------------------------------
    def on_process_readyReadStandardOutput(self) -> None:
        """Collect output until the "listening on" line names the port."""
        if self._process is None:
            return
        self._output += bytes(self._process.readAllStandardOutput().data())
        self._output = self._output[-65536:]
        match = LISTENING_LINE.search(self._output)
        if match and self._ready is not None and not self._ready.done():
            self._ready.set_result(int(match.group(1)))

    def on_process_started(self) -> None:
        """Remember the child's pid (kept after it exits, so tests can check it is gone)."""
        if self._process is not None:
            self._pid = int(self._process.processId()) or None

    def on_process_finished(self, exit_code: int, _status: QProcess.ExitStatus) -> None:
        """Resolve the waits and report the exit."""
        if self._ready is not None and not self._ready.done():
            tail = self.log_tail().strip().splitlines()
            reason = tail[-1] if tail else f"exit code {exit_code}"
            self._ready.set_exception(HostingError(f"the server stopped: {reason}"))
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(exit_code)
        self._port = None
        self.exited.emit(exit_code)

    def on_process_errorOccurred(self, error: QProcess.ProcessError) -> None:
        """A child that cannot even start fails :meth:`start`."""
        if error == QProcess.ProcessError.FailedToStart:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(HostingError(f"cannot run {sys.executable}"))
            if self._finished is not None and not self._finished.done():
                self._finished.set_result(-1)
