"""Log lines for where stderr goes: a terminal, the systemd journal, or a pipe or file.

- A terminal: ``HH:MM:SS LEVEL   message`` (the operator watching has no other clock).
- The journal (``JOURNAL_STREAM`` names stderr's device and inode, as systemd sets it for a service):
  ``<N>message``, where ``<N>`` is the syslog priority that journald reads off the line
  (sd-daemon(3)); the journal adds time, unit and PID itself, and ``journalctl -p warning`` works.
  Every line of a multi-line message carries the prefix.
- Anything else (a pipe, a file, a supervisor): ``LEVEL message``, no time stamp, no colour.

pyvpn's own loggers get the chosen level; libraries stay at INFO or above (pyroute2 and asyncio log
every netlink message and selector at DEBUG, which would drown the daemon's own lines).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from . import OUR_LOGGERS

# syslog priorities (RFC 5424 section 6.2.1) for Python's levels
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    """The syslog priority for a Python log level (``ERROR`` → 3, ``INFO`` → 6, ``DEBUG`` → 7)."""
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return _DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """``<priority>message``, on every line of the message."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journal stream systemd announced in ``JOURNAL_STREAM`` (``dev:inode``)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(value) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def formatter(stream: TextIO, environ: Mapping[str, str] | None = None) -> logging.Formatter:
    """The formatter for ``stream`` (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if is_journal(stream, environ):
        return JournalFormatter("%(message)s")
    try:
        tty = stream.isatty()
    except (ValueError, AttributeError):
        tty = False
    if tty:
        return logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    return logging.Formatter("%(levelname)s %(message)s")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """pyvpn's own handler on the root logger (so a second :func:`setup` replaces it)."""


def setup(level: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Send log records to ``stream`` (stderr) in its form, pyvpn's loggers at ``level``.

    :param level: ``debug``, ``info``, ``warning`` or ``error``.
    """
    stream = stream if stream is not None else sys.stderr
    lvl = getattr(logging, level.upper(), logging.INFO)
    handler = _Handler(stream)
    handler.setFormatter(formatter(stream, environ))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _Handler):  # set up again: replace, not add
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(max(lvl, logging.INFO))
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(lvl)
