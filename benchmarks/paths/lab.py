"""Namespaces, processes and clean-up for the side-by-side network benchmark.

Theory of operation:

1. A :class:`Lab` owns everything the benchmark creates: network namespaces
   (:class:`vpn.testlab.netns.Netns`) named ``pvb-<pid>-<n><a|b>``, the processes started in them (each in
   its own session, so a terminal Ctrl-C reaches only the benchmark, which then cleans up), and one private
   temporary directory for configs, keys and logs.
2. :meth:`Lab.pair` makes two namespaces joined by a veth, with underlay addresses ``198.18.<slot>.1`` (the
   "client" end) and ``198.18.<slot>.2`` (the "server" end), and applies the veth offload settings.
   In pinned mode (``Lab(pin=(a, b))``, see :func:`pin_cpus`) every command and process of the client
   namespace runs on CPU ``a`` and of the server namespace on CPU ``b`` (``taskset -c``; threads and
   children inherit it): each end's daemon and its iperf3/ping end share one core, like two one-core
   hosts.  Kernel work (softirq of the veth and the tun devices) is not pinned.
3. :meth:`Lab.close` (idempotent; also run by ``with``) stops every process (SIGTERM, then SIGKILL after a
   bounded wait), kills whatever still runs inside the namespaces, deletes them (which deletes the veth
   and any vxlan/tun device in them) and removes the temporary directory.  :func:`sweep_stale` removes
   namespaces left by a benchmark process that no longer exists (``kill -9``).

Every command has a timeout; traffic only flows between the namespaces a Lab created.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from vpn.testlab.netns import Netns, delete_netns, have, list_netns, stop_process, veth

# -- implementation constants ----------------------------------------------------------------------------
NS_PREFIX = "pvb"  # namespace names: pvb-<benchmark pid>-<slot><a|b>
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting ----------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2:].split()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds; 0.0 when the process is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the comm, field 3 (state) is index 0: utime is field 14 -> index 11, stime 15 -> 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children), [] when unknown."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def process_tree(pids: Sequence[int], limit: int = 256) -> list[int]:
    """``pids`` and all their live descendants (bounded to ``limit`` processes)."""
    seen: list[int] = []
    todo = list(pids)
    while todo and len(seen) < limit:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += children_of(pid)
    return seen


def tree_cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds of every live process in the trees rooted at ``pids``, keyed by pid."""
    return {p: process_cpu_seconds(p) for p in process_tree(pids)}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`tree_cpu_seconds` samples.

    A process seen only in ``after`` counts from zero (it started in between); one seen only in ``before``
    has exited and its last interval is lost (rare: VPN daemons live for the whole run).
    """
    return sum(max(0.0, t - before.get(p, 0.0)) for p, t in after.items())


def system_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores; total minus idle and iowait)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    ticks = [int(x) for x in parts[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already inside user/nice: count the first eight fields only.
    return (sum(ticks[:8]) - idle) / CLK_TCK


# -- namespaces ------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete ``pvb-<pid>-*`` namespaces whose benchmark process is gone; return their names."""
    pattern = re.compile(rf"^{NS_PREFIX}-(\d+)-")
    removed = []
    for name in list_netns():
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            delete_netns(name)
            removed.append(name)
    return removed


def pin_cpus(usable: Iterable[int]) -> tuple[int, int]:
    """The two CPUs of pinned mode: the lowest two this process may use (client end, server end).

    :raises ValueError: fewer than two usable CPUs.
    """
    cpus = sorted(set(usable))
    if len(cpus) < 2:
        raise ValueError(f"pinned mode needs two usable CPUs, this process has {len(cpus)}")
    return cpus[0], cpus[1]


@dataclass(frozen=True, slots=True)
class Pair:
    """Two namespaces joined by a veth.

    :param client: namespace of the sending end (iperf3 client, VPN client).
    :param server: namespace of the receiving end.
    :param client_if: veth name in ``client``; ``server_if`` likewise.
    :param client_ip: underlay IPv4 of the client end (``198.18.<slot>.1``); ``server_ip`` is ``.2``.
    :param slot: small integer that keeps the addresses of different pairs apart.
    """

    client: Netns
    server: Netns
    client_if: str
    server_if: str
    client_ip: str
    server_ip: str
    slot: int


class Lab:
    """Owner of every namespace, process and file the benchmark makes; see the module docstring.

    :param pin: ``(client_cpu, server_cpu)`` for pinned mode (:func:`pin_cpus`), or None (shared mode).
    """

    def __init__(self, pin: tuple[int, int] | None = None) -> None:
        self.pin = pin
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="pyvpn-netbench-"))
        self._closed = False
        self._cleanups: list[Callable[[], None]] = []

    # -- building ---------------------------------------------------------------------------------------
    def netns(self, tag: str, cpu: int | None = None) -> Netns:
        ns = Netns(name=f"{NS_PREFIX}-{os.getpid()}-{tag}", cpu=cpu)
        self.namespaces.append(ns)
        return ns

    def pair(self, slot: int, *, veth_gso: bool) -> tuple[Pair, str]:
        """Two namespaces joined by a veth with underlay addresses; returns the pair and an offload note.

        :param veth_gso: keep the kernel's veth defaults (UDP GSO datagrams cross the veth unsegmented)
            instead of the realistic settings (see :func:`apply_offloads`).
        """
        if not 0 < slot < 255:
            raise ValueError(f"slot {slot} out of range 1..254")
        cpu_a, cpu_b = self.pin if self.pin is not None else (None, None)
        a, b = self.netns(f"{slot}a", cpu_a), self.netns(f"{slot}b", cpu_b)
        veth(a, "ul0", b, "ul0", up=False)
        pair = Pair(a, b, "ul0", "ul0", f"198.18.{slot}.1", f"198.18.{slot}.2", slot)
        for ns, ip in ((a, pair.client_ip), (b, pair.server_ip)):
            ns.run(["ip", "addr", "add", f"{ip}/24", "dev", "ul0"])
            ns.run(["ip", "link", "set", "ul0", "up"])
        note = apply_offloads(pair, veth_gso=veth_gso)
        return pair, note

    def popen(self, ns: Netns, cmd: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
              cwd: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns`` in its own session, stdout+stderr appended to ``log``."""
        with open(log, "ab") as f:
            f.write(f"### netbench: {' '.join(cmd)} in {ns.name}\n".encode())
            f.flush()
            proc = subprocess.Popen(ns.argv(cmd), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` during :meth:`close`, before the namespaces go (errors ignored)."""
        self._cleanups.append(fn)

    # -- teardown ---------------------------------------------------------------------------------------
    stop = staticmethod(stop_process)

    def close(self) -> None:
        """Stop everything and delete everything this lab made (idempotent, never raises)."""
        if self._closed:
            return
        self._closed = True
        for fn in reversed(self._cleanups):
            with contextlib.suppress(Exception):  # clean-up goes on whatever one step does
                fn()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.stop(proc)
        for ns in reversed(self.namespaces):
            ns.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- veth offloads ---------------------------------------------------------------------------------------
REALISTIC_OFFLOADS = "tx-udp-segmentation off (sender), gro + rx-udp-gro-forwarding on (receiver)"


def apply_offloads(pair: Pair, *, veth_gso: bool) -> str:
    """Apply the veth settings of PROTOCOL-NOTES section 3 to both ends; return what was used.

    A veth lets UDP GSO datagrams through unsegmented, which a real NIC path does not.  The realistic
    setting switches off ``tx-udp-segmentation`` where datagrams are sent and switches on ``gro`` and
    ``rx-udp-gro-forwarding`` where they are received.  Traffic flows both ways (data one way, ACKs the
    other), so both ends get both settings.

    :param veth_gso: keep the kernel defaults.
    """
    if veth_gso:
        return "veth defaults (--veth-gso: UDP GSO crosses the veth unsegmented)"
    if not have("ethtool"):
        return "veth defaults (ethtool not installed: run benchmarks/setup.sh)"
    for ns, ifname in ((pair.client, pair.client_if), (pair.server, pair.server_if)):
        r1 = ns.run(["ethtool", "-K", ifname, "tx-udp-segmentation", "off"], check=False)
        r2 = ns.run(["ethtool", "-K", ifname, "gro", "on", "rx-udp-gro-forwarding", "on"], check=False)
        if r1.returncode or r2.returncode:
            why = (r1.stderr.strip() or r2.stderr.strip()).splitlines()[-1:] or ["?"]
            return f"veth defaults (ethtool -K failed: {why[0]})"
    return REALISTIC_OFFLOADS
