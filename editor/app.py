"""Start the desktop app: command line, QApplication, the qasync loop, clean exit.

This is the one module that touches ``qasync`` (untyped third-party glue) in
the app. The window's ``closed`` signal ends :func:`run`; the window has by
then disconnected, saved and stopped any hosted server, because after
``QApplication.quit()`` nothing can be awaited any more.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from editor.main_window import MainWindow
from editor.resources import icon, style_sheet
from editor.urls import InvalidSessionUrl, parse_session_url

__all__ = ["build_parser", "main", "run"]

ORGANISATION = "crdt-sync-editor"
APPLICATION = "crdt-editor"


def _session_url(text: str) -> str:
    try:
        return parse_session_url(text).url
    except InvalidSessionUrl as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``crdt-editor`` / ``python -m editor``."""
    parser = argparse.ArgumentParser(
        prog="crdt-editor", description="Edit a shared text and list together, live."
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--join", metavar="URL", type=_session_url, help="join the session at ws://HOST:PORT/DOC"
    )
    group.add_argument(
        "--host",
        metavar="PORT",
        nargs="?",
        const=0,
        type=_port,
        help="host a session (on PORT; without it, on any free port)",
    )
    parser.add_argument("--name", help="the name collaborators see (remembered)")
    return parser


async def run(args: argparse.Namespace) -> int:
    """Show the window, start the requested command, and wait until it has closed."""
    window = MainWindow(name=args.name)
    closed = asyncio.Event()
    window.closed.connect(closed.set)
    window.show()
    # A session another window already has open brings that window forward
    # and this one closes (editor.single_instance).
    window.exit_on_handoff = True
    if args.join:
        window.run_task(window.join(args.join))
    elif args.host is not None:
        window.run_task(window.host(args.host))
    else:
        window.run_task(window.reopen_last_session())

    def request_close(_signum: int, _frame: object) -> None:
        QTimer.singleShot(0, window.close)

    previous = {sig: signal.signal(sig, request_close) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Python signal handlers only run when Python code runs: wake up regularly.
    ticker = QTimer()
    ticker.timeout.connect(lambda: None)
    ticker.start(200)
    try:
        await closed.wait()
    finally:
        ticker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        window.shutdown_now()  # no-op after a clean close; covers a cancelled run
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crdt-editor`` console script."""
    args = build_parser().parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("CRDT Editor")
    app.setWindowIcon(icon("app"))
    app.setStyleSheet(style_sheet())
    app.setQuitOnLastWindowClosed(False)
    import qasync  # the only import of the untyped glue

    result: int = qasync.run(run(args))
    return result
