"""What every benchmarked path provides: set-up in a fresh namespace pair, the daemon pids, a version.

A path's life in one benchmark run:

1. ``unavailable()`` says why the path cannot run at all (a tool is missing, a hook is not wired yet), or
   returns None.
2. ``setup(lab, slot, veth_gso=...)`` builds its namespaces and tunnel and returns :class:`Endpoints`;
   it raises (any exception) with a readable message when that fails, and the path is then reported as
   ``failed: <message>`` while the other paths go on.
3. Between measurements the benchmark calls ``alive()`` (a daemon that died turns the path into
   ``failed``) and ``daemon_pids()`` (CPU accounting, summed over both ends).
4. The lab, not the path, removes everything at the end.
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vpn.testlab.netns import LabError, Netns, have, sh, wait_for

from .lab import Lab, Pair


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where traffic for one path goes.

    :param client: namespace that runs the iperf3 client and ping.
    :param server: namespace that runs the iperf3 server.
    :param server_addr: the address the client sends to (tunnel address, or the underlay for raw veth).
    :param mtu: MTU of the interface the traffic crosses (informational).
    :param offloads: the veth offload setting that was applied.
    :param detail: one line on how the path is configured (cipher, mode, ports).
    """

    client: Netns
    server: Netns
    server_addr: str
    mtu: int
    offloads: str
    detail: str


class BenchPath(ABC):
    """One way of carrying traffic between two namespaces."""

    key: ClassVar[str]  # short name used by --paths and in the JSON
    title: ClassVar[str]  # label in the table and the chart
    is_vpn: ClassVar[bool] = True  # False for kernel paths without daemons (no per-process CPU)
    requires: ClassVar[tuple[str, ...]] = ()  # tools that must be on PATH (checked by unavailable())

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def unavailable(self) -> str | None:
        """Why this path cannot run here (e.g. a tool of :attr:`requires` is missing), or None."""
        missing = [t for t in self.requires if not have(t)]
        return f"not installed: {', '.join(missing)} (run benchmarks/setup.sh)" if missing else None

    @abstractmethod
    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        """Build the path in fresh namespaces; raise with a readable message on failure."""

    def version(self) -> str:
        """Version of the software behind this path (for the JSON)."""
        return ""

    def daemon_pids(self) -> list[int]:
        """Pids of this path's daemons at both ends (their descendants are added by the caller)."""
        return [p.pid for p in self.procs if p.poll() is None]

    def wait_ready(self, ns: Netns, addr: str, *, timeout: float, what: str) -> None:
        """:func:`wait_reachable`, with the daemons' state in the error (a dead daemon's log tail).

        :raises LabError: nothing answered within ``timeout`` seconds.
        """
        try:
            wait_reachable(ns, addr, timeout=timeout, what=what)
        except LabError as e:
            raise LabError(f"{e}; {self.alive() or 'daemons still running'}") from None

    def alive(self) -> str | None:
        """None while every daemon runs, else a reason with the end of its log."""
        for proc, log in zip(self.procs, self.logs, strict=False):
            if proc.poll() is not None:
                return f"daemon exited {proc.returncode}: {log_tail(log)}"
        return None


def log_tail(path: Path, lines: int = 3, width: int = 300) -> str:
    """The last ``lines`` non-empty lines of ``path`` joined by " / " (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    headers = ("### ", "--- start ")  # what the lab and the lab's runners write before a command's output
    tail = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(headers)]
    return " / ".join(tail[-lines:])[-width:] or "(empty log)"


def wait_reachable(ns: Netns, addr: str, *, timeout: float, what: str) -> None:
    """Ping ``addr`` from ``ns`` until one reply comes back (bounded by ``timeout`` seconds).

    :raises LabError: when nothing answers in time.
    """
    def answered() -> bool:
        r = ns.run(["ping", "-n", "-c", "1", "-W", "1", addr], check=False, timeout=5.0)
        return r.returncode == 0

    if not wait_for(answered, timeout, interval=0.2):
        raise LabError(f"no ping reply from {addr} through {what} within {timeout:g}s")


def first_line(argv: Sequence[str]) -> str:
    """The first line ``argv`` prints (a ``--version``), or "" when it prints nothing or is missing."""
    out = sh(argv, check=False, timeout=5.0).stdout.strip()
    return out.splitlines()[0].strip() if out else ""


def has_link(ns: Netns, ifname: str) -> bool:
    """True when ``ifname`` exists in namespace ``ns``."""
    return ns.run(["ip", "link", "show", "dev", ifname], check=False, timeout=5.0).returncode == 0


def wait_links(path: BenchPath, ns: Netns, links: Sequence[str], *, timeout: float, what: str) -> None:
    """Wait until every one of ``links`` exists in ``ns`` (the daemon that makes them is ``path.procs[-1]``).

    :raises LabError: the daemon exited, or a link did not appear within ``timeout`` seconds.
    """
    proc = path.procs[-1]

    def links_up() -> bool:
        return proc.poll() is not None or all(has_link(ns, name) for name in links)

    wait_for(links_up, timeout, interval=0.1)
    if (dead := path.alive()) is not None:
        raise LabError(f"{what}: {dead}")
    missing = [name for name in links if not has_link(ns, name)]
    if missing:
        raise LabError(f"{what} made no {', '.join(missing)} within {timeout:g}s")


def address_link(ns: Netns, ifname: str, *, slot: int, host: int, mtu: int) -> None:
    """Give a daemon's tunnel device in ``ns`` the path's tunnel addresses (``198.19.<slot>.<host>/24``,
    ``fd00:<slot>::<host>/64``) and ``mtu``, and set it up (for daemons that leave this to the admin)."""
    ns.run(["ip", "addr", "add", f"198.19.{slot}.{host}/24", "dev", ifname])
    ns.run(["ip", "-6", "addr", "add", f"fd00:{slot:x}::{host}/64", "dev", ifname, "nodad"])
    ns.run(["ip", "link", "set", ifname, "mtu", str(mtu), "up"])


def underlay_only(pair: Pair, offloads: str) -> Endpoints:
    """Endpoints for traffic straight over the veth (no tunnel)."""
    return Endpoints(pair.client, pair.server, pair.server_ip, 1500, offloads, "veth, no tunnel")
