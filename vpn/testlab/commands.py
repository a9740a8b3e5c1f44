"""The ``pyvpn`` commands of this installation, run once: a command line, its environment, and a run to
completion (in a pipe, or on a pseudo-terminal as an operator would see it).

:mod:`vpn.testlab.pyvpn` starts the long-running daemons with the same command line and environment.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from vpn.testlab.netns import Netns


def pyvpn_argv(program: str = "pyvpn") -> list[str]:
    """The pyvpn (or ``pyvpn-wg``) of this very installation (the venv's), not whatever is first on PATH."""
    sibling = Path(sys.executable).with_name(program)
    if sibling.exists():
        return [str(sibling)]
    return [sys.executable, "-m", "vpn.cli" if program == "pyvpn" else "vpn.wgcompat"]


def command_env() -> dict[str, str]:
    """The daemons' environment: ours without ``PYVPN_LOG_LEVEL`` (the runner passes ``-l``).  Nothing goes on
    ``PYTHONPATH``: the command is this installation's, which imports pyvpn as installed."""
    env = dict(os.environ)
    env.pop("PYVPN_LOG_LEVEL", None)
    return env


def run_pyvpn(*args: str, timeout: float = 20.0, ns: Netns | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pyvpn ARGS`` to completion (in ``ns`` if given) and return it, whatever its exit code."""
    argv = pyvpn_argv() + list(args)
    if ns is not None:
        argv = ns.argv(argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=command_env(), check=False)


def run_pyvpn_tty(*args: str, columns: int = 80, rows: int = 24, timeout: float = 20.0) -> tuple[int, str]:
    """Run ``pyvpn ARGS`` on a pseudo-terminal of ``columns`` x ``rows`` (as an operator's terminal);
    return its exit code and everything it wrote there, escape sequences removed."""
    import fcntl
    import pty
    import re
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = command_env()
    for var in ("COLUMNS", "LINES", "NO_COLOR"):
        env.pop(var, None)
    env["TERM"] = "xterm-256color"
    try:
        proc = subprocess.Popen(pyvpn_argv() + list(args), stdin=slave, stdout=slave, stderr=slave, env=env,
                                close_fds=True)
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text)
