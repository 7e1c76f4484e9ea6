"""Words for the user: technical failure texts turned into plain sentences.

The raw text is never thrown away: callers show :func:`human_reason`'s sentence
and keep the original for a tooltip (the sync log, the status line).
"""

from __future__ import annotations

import re

__all__ = ["human_reason", "port_in_use_message"]

_PORT_IN_USE = re.compile(
    r"errno 98|errno 48|errno 10048|address already in use|only one usage of each socket",
    re.IGNORECASE,
)
_PORT_NUMBER = re.compile(r"""['"(,\s](\d{1,5})\)""")

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"connection ?refused|connect call failed|errno 111|errno 61", re.IGNORECASE),
        "nobody is accepting connections at that address (is the session still hosted?)",
    ),
    (
        re.compile(
            r"gaierror|name or service not known|nodename nor servname|getaddrinfo", re.IGNORECASE
        ),
        "the host name could not be found",
    ),
    (
        re.compile(r"timed? ?out|timeouterror", re.IGNORECASE),
        "the other side did not answer in time",
    ),
    (
        re.compile(r"network is unreachable|no route to host|errno 101|errno 113", re.IGNORECASE),
        "the network cannot reach that address",
    ),
    (
        re.compile(r"certificate|ssl", re.IGNORECASE),
        "the secure connection could not be set up (certificate problem)",
    ),
)


def port_in_use_message(text: str, port: int | None = None) -> str | None:
    """A sentence for "the port is taken" failures, or ``None`` if ``text`` is not one."""
    if not _PORT_IN_USE.search(text):
        return None
    if port is None:
        found = _PORT_NUMBER.search(text)
        port = int(found.group(1)) if found else None
    which = f"Port {port}" if port else "The chosen port"
    return (
        f"{which} is already in use by another program. Choose another port, "
        "or leave the port at \u201cany free port\u201d."
    )


def human_reason(text: str) -> str:
    """A short plain sentence for a connection failure ``text`` (``text`` if unknown)."""
    in_use = port_in_use_message(text)
    if in_use is not None:
        return in_use
    for pattern, sentence in _PATTERNS:
        if pattern.search(text):
            return sentence
    return text
