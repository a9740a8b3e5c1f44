"""L2 site helpers shared by the tap tests: daemons with segments, bridges, hosts on them, and checks that
frames crossed (pings in parallel, broadcast counts, learned MACs, a segment's ``show --json`` entry).

The hosts of a site share :data:`SUBNET` on purpose (only the VNI keeps segments apart) and use the tap MTU,
:data:`TAP_MTU`.
"""

from __future__ import annotations

import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from vpn.config import SegmentConfig
from vpn.testlab.configs import PeerSpec
from vpn.testlab.keys import Keys
from vpn.testlab.netns import LabError, Netns, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn, unique_ifname
from vpn.testlab.traffic import TrafficError, ping_ok

__all__ = ["BROADCAST", "SUBNET", "TAP_MTU", "add_daemon", "add_host", "all_reached", "bridge", "bridge_macs",
           "count_broadcasts", "none_reached", "parallel_pings", "replies", "segment_of"]

TAP_MTU = 1370  # 1420 - 50 (IPv4 VTEPs)
SUBNET = "100.64.100"
BROADCAST = f"{SUBNET}.255"


def add_daemon(fleet: Fleet, ns: Netns, role: str, *, keys: Keys, addresses: Sequence[str],
               peers: Sequence[PeerSpec], segments: Sequence[SegmentConfig], listen_port: int | None = None,
               start: bool = True) -> Pyvpn:
    """``Fleet.add`` with segments, named ``pls``/``plc`` + 6 hex."""
    return fleet.add(ns, role, keys=keys, addresses=addresses, listen_port=listen_port, peers=peers,
                     segments=segments, start=start, ifname=unique_ifname("pls" if role == "server" else "plc"))


def bridge(site: Netns, name: str) -> None:
    site.run(f"ip link add {name} type bridge")
    site.run(f"ip link set {name} up")


_counter = iter(range(10**6))


def add_host(site: Netns, br: str, host: Netns, addrs: Sequence[str], *, macvlan: bool = False,
             mtu: int = TAP_MTU) -> str:
    """Attach ``host`` (its ``eth0``) to bridge ``br`` in ``site``; return eth0's MAC."""
    if macvlan:
        tmp = f"mv{next(_counter)}"
        site.run(f"ip link add {tmp} mtu {mtu} link {br} type macvlan mode bridge")
        site.run(f"ip link set {tmp} netns {host.name}")
        host.run(f"ip link set {tmp} name eth0")
        host.run("ip link set eth0 up")
    else:
        port = f"h{next(_counter)}"
        veth(host, "eth0", site, port)
        site.run(f"ip link set {port} mtu {mtu}")
        site.run(f"ip link set {port} master {br}")
        host.run(f"ip link set eth0 mtu {mtu}")
    for a in addrs:
        host.run(f"ip addr add {a} {'nodad' if ':' in a else 'brd +'} dev eth0")
    host.run("sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0")
    return host.run("cat /sys/class/net/eth0/address").stdout.strip()


_LISTENER = r"""
import socket, sys, time
port, token, duration, expected = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
print("ready", flush=True)
end, n = time.monotonic() + duration, 0
while True:
    if n == expected:  # all arrived: stay a little longer to catch duplicates
        end = min(end, time.monotonic() + 0.3)
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        d = s.recv(4096)
    except socket.timeout:
        break
    if d.startswith(token):
        n += 1
print(n, flush=True)
"""

_SENDER = r"""
import socket, sys, time
addr, port, token, count = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for i in range(count):
    s.sendto(token + b" %d" % i, (addr, port))
    time.sleep(0.01)
"""


def count_broadcasts(sender: Netns, listeners: Sequence[Netns], *, count: int = 5, port: int = 9999,
                     duration: float = 1.5) -> list[int]:
    """Send ``count`` UDP broadcasts to the subnet from ``sender``; how many each listener got (bounded).

    A listener stops ``duration`` s after it started, or 0.3 s after its ``count``-th datagram (so a
    duplicate arriving late is still counted).
    """
    token = f"pyvpn-l2-{time.monotonic_ns()}"
    procs = [ns.popen([sys.executable, "-c", _LISTENER, str(port), token, str(duration), str(count)],
                      stderr=subprocess.PIPE) for ns in listeners]
    try:
        for p in procs:
            if p.stdout is None:
                raise LabError("a listener has no stdout pipe")
            ready, _, _ = select.select([p.stdout], [], [], 5.0)
            if not ready or p.stdout.readline().strip() != b"ready":
                raise LabError(f"the broadcast listener in {p.args!r} did not start")
        sender.run([sys.executable, "-c", _SENDER, BROADCAST, str(port), token, str(count)], timeout=10)
        out = []
        for p in procs:
            stdout, _ = p.communicate(timeout=duration + 5)
            out.append(int(stdout.split()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def parallel_pings(jobs: Sequence[tuple[Netns, str]], *, count: int = 1, interval: float = 0.01,
                   wait: float = 2.0) -> list[tuple[int, str]]:
    """Run one bounded ``ping`` per ``(ns, addr)`` at the same time; ``(exit code, output)`` for each.

    ``-w`` (a deadline) rather than ``-W`` alone: without it iputils gives up on outstanding replies about
    two maximum RTTs after the last echo, so one reply that is a few ms late (a busy Python daemon) would
    count as lost.  With ``-w`` ping stops once ``count`` replies are in, and may have sent an extra echo
    meanwhile (so check ``received``, see :func:`replies`, not ``transmitted``).
    """
    deadline = str(max(1, round(count * interval + wait)))
    procs = [ns.popen(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait), "-w", deadline,
                       addr]) for ns, addr in jobs]
    out = []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=count * interval + wait + 10)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, _ = p.communicate(timeout=5)
        out.append((p.returncode, stdout.decode(errors="replace")))
    return out


def replies(text: str) -> tuple[int, int]:
    """``(received, duplicates)`` from a ping summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", text)
    if m is None:
        raise TrafficError(f"no ping summary in {text!r}")
    return int(m.group(2)), int(m.group(3) or 0)


def all_reached(jobs: Sequence[tuple[Netns, str]], *, count: int = 20) -> list[str]:
    """Warm up (ARP/ND, retried), then ``count`` pings per job in parallel; the problems found, if any."""
    problems = []
    for (ns, addr), (rc, _) in zip(jobs, parallel_pings(jobs, count=1), strict=True):
        if rc != 0 and not ping_ok(ns, addr, count=1):
            problems.append(f"{ns.name} -> {addr}: unreachable")
    for (ns, addr), (_, text) in zip(jobs, parallel_pings(jobs, count=count), strict=True):
        if replies(text) != (count, 0):
            problems.append(f"{ns.name} -> {addr}: {text.strip().splitlines()[-2:]}")
    return problems


def none_reached(jobs: Sequence[tuple[Netns, str]]) -> list[str]:
    """Jobs whose ping got an answer (each tries 2 echoes, 1 s wait, all at once)."""
    return [f"{ns.name} -> {addr}" for (ns, addr), (rc, _) in
            zip(jobs, parallel_pings(jobs, count=2, interval=0.2, wait=1), strict=True) if rc == 0]


def bridge_macs(site: Netns, br: str) -> set[str]:
    """MACs the bridge learned (not its own ports' ``permanent`` ones)."""
    out = site.run(f"bridge fdb show br {br}").stdout
    return {line.split()[0] for line in out.splitlines() if "permanent" not in line and line.strip()}


def segment_of(snap: dict[str, Any], vni: int) -> dict[str, Any]:
    """The ``segments`` entry of ``vni`` in a ``pyvpn show --json`` snapshot."""
    segs = snap.get("segments")
    if not isinstance(segs, list):
        raise LabError(f"no segments in {snap!r}")
    for s in segs:
        if s["vni"] == vni:
            return dict(s)
    raise LabError(f"no segment {vni} in {segs}")
