"""Host a session: run the bundled headless server as a child process.

The server runs as ``python -m server --host 0.0.0.0 --port N --db <data
dir>/host.db --exit-with-parent --tls-cert ... --tls-key ... --secret-file ...``
in a ``QProcess``: a busy session never freezes the window, and
``--exit-with-parent`` makes the child stop by itself if the app is killed, so
no orphan is left behind. The child prints one line once it listens; the bound
port is read from it (so port 0 picks a free port).

Hosting is secure by default (``secure=True``):

* **TLS.** A self-signed certificate and its key are created once in the app's
  data folder (``<data dir>/tls/``, the key with mode 0600) and reused, so
  the pin in earlier links stays valid for the certificate's life. The server
  serves ``wss://`` on every interface.
* **Tokens.** Each hosting session writes a **new** secret (mode 0600), so the
  links of an earlier session stop working. :meth:`HostedServer.invite_links`
  signs two links, *Can edit* and *Can view*:
  ``wss://HOST:PORT/DOC#token=...&pin=sha256:...``. Joining with one verifies
  the pin (the certificate is accepted only if it is exactly that one).

:meth:`HostedServer.stop` terminates the child (SIGTERM: the server flushes
its SQLite store and exits) and waits for it, killing it if it does not exit
in time. Only the ``server`` package's token and TLS helpers are used here;
the server itself runs in the child.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from pathlib import Path
from typing import NamedTuple

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal

from crdt_sync.sync import Role
from server.auth import SecretFileError, TokenAuthority, load_or_create_secret
from server.auth import invite_link as signed_link
from server.tls import certificate_pin, create_self_signed_certificate

__all__ = ["HostedServer", "HostingError", "InviteLinks", "invite_link", "lan_address"]

#: How long a hosted session's invite links are valid (they also stop working
#: when hosting stops: the next hosting session has a new secret).
INVITE_LIFETIME_S = 30 * 24 * 3600
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


def invite_link(port: int, document_id: str, host: str | None = None, scheme: str = "ws") -> str:
    """The URL others paste to join: ``ws://<LAN address>:<port>/<document-id>``
    (without a token: see :meth:`HostedServer.invite_links` for a secure session)."""
    return f"{scheme}://{host or lan_address()}:{port}/{document_id}"


class InviteLinks(NamedTuple):
    """The two links of a hosted session: ``edit`` (Can edit) and ``view`` (Can view)."""

    edit: str
    view: str


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
        secure: bool = True,
        tls_dir: Path | None = None,
    ) -> None:
        super().__init__(parent)
        self._memory = memory
        self.secure = secure
        tls_folder = tls_dir if tls_dir is not None else db_path.parent / "tls"
        self.cert_path = tls_folder / "host-cert.pem"
        self.key_path = tls_folder / "host-key.pem"
        self.secret_path = db_path.with_name(db_path.name + ".secret")
        self._authority: TokenAuthority | None = None
        self._pin: str | None = None
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
    def scheme(self) -> str:
        """``"wss"`` for a secure session, else ``"ws"``."""
        return "wss" if self.secure else "ws"

    @property
    def pin(self) -> str | None:
        """The certificate's pin (``sha256:...``), once a secure session started."""
        return self._pin

    def invite_links(self, document_id: str, host: str | None = None) -> InviteLinks:
        """The Can edit and Can view links for ``document_id`` on this machine's LAN
        address (or ``host``; a server bound to one address is reached there).
        Without ``secure`` both are the plain URL.

        Raises:
            HostingError: the server is not running.
        """
        if self._port is None:
            raise HostingError("the server is not running")
        if host is None and self._bind_address not in ("0.0.0.0", "::", ""):
            host = self._bind_address  # bound to one address: the only way in
        url = invite_link(self._port, document_id, host, self.scheme)
        if self._authority is None:
            return InviteLinks(url, url)
        edit, view = (
            self._authority.issue(document_id, role, INVITE_LIFETIME_S)
            for role in (Role.WRITE, Role.READ)
        )
        return InviteLinks(
            signed_link(url, document_id, edit, self._pin),
            signed_link(url, document_id, view, self._pin),
        )

    def own_link(self, document_id: str) -> str:
        """The link the hosting window itself connects with (loopback, Can edit)."""
        return self.invite_links(document_id, "127.0.0.1").edit

    def _prepare_access(self) -> list[str]:
        """Certificate (once) and a new secret; the child's extra arguments."""
        if not self.secure:
            self._authority = self._pin = None
            return ["--no-auth"]
        if self.cert_path.exists() and self.key_path.exists():
            self._pin = certificate_pin(self.cert_path)
        else:
            hosts = {lan_address(), "127.0.0.1", "localhost"}
            name = socket.gethostname()
            if re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", name):
                hosts.add(name)  # a DNS name (clients that pin do not check names)
            self._pin = create_self_signed_certificate(self.cert_path, self.key_path, sorted(hosts))
        # A new secret per hosting session: links of an earlier session stop working.
        self.secret_path.unlink(missing_ok=True)
        secret, _ = load_or_create_secret(self.secret_path)
        self._authority = TokenAuthority(secret)
        return [
            "--tls-cert",
            str(self.cert_path),
            "--tls-key",
            str(self.key_path),
            "--secret-file",
            str(self.secret_path),
        ]

    @property
    def running(self) -> bool:
        """True while the child process exists."""
        return (
            self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning
        )

    def arguments(self, access: list[str] | None = None) -> list[str]:
        """The child's command-line arguments (after the Python executable); ``access``
        are the TLS and token options (``--no-auth`` when None)."""
        return [
            "-m",
            "server",
            "--host",
            self._bind_address,
            "--port",
            str(self._requested_port),
            *(["--memory"] if self._memory else ["--db", str(self._db_path)]),
            *(access if access is not None else ["--no-auth"]),
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
        try:
            access = self._prepare_access()
        except (OSError, ValueError, SecretFileError) as error:
            raise HostingError(f"cannot prepare the certificate or secret: {error}") from None
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
        process.start(sys.executable, self.arguments(access))
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
