"""Small helpers that several vpn/ modules need: endpoint text, private-file writes, UNIX socket liveness.

Each exists once here; the modules that used to carry their own copy import it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Any


def format_endpoint(ep: Any, *, unmap_v4: bool = False) -> str:
    """``host:port``, or ``[v6]:port`` (what :func:`vpn.config.parse_endpoint` reads back, and ``DstToString``).

    :param ep: ``(host, port)`` or a socket address tuple (extra items ignored); anything else is shown with
        ``str``.
    :param unmap_v4: show an IPv4-mapped IPv6 host (``::ffff:198.18.0.2``, from a dual-stack socket) as IPv4,
        as ``wg show`` does.
    """
    if not (isinstance(ep, tuple) and len(ep) >= 2):
        return str(ep)
    host, port = str(ep[0]), ep[1]
    if unmap_v4 and host[:7].lower() == "::ffff:" and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_private(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) with mode 0600: into a fresh temporary file in the target's directory,
    then an atomic rename.  A crash never leaves half a file, and the temporary file comes from ``mkstemp``
    (an unpredictable name, ``O_CREAT|O_EXCL|O_NOFOLLOW``), so a file or symlink planted beside the target
    cannot catch or redirect the private key; a symlink at the target itself is replaced, not followed.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def socket_is_live(path: str | os.PathLike[str]) -> bool:
    """Whether a process listens on the UNIX socket at ``path`` (a stale file says no)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
