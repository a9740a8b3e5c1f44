"""WireGuard's namespace integration (wireguard-go's ``tests/netns.sh`` topology), with ``pyvpn-wg``.

::

    ns1: tun wg1 198.19.16.1/24 fd00:16::1/64   ns0: both daemons, lo (MTU 65536)   ns2: tun wg2 .2
         (moved here right after creation)          UDP 127.0.0.1 / ::1, ports 10000 and 20000

1. Both daemons start in ns0, whose only link is ``lo``; each tun is moved into its own namespace right
   after creation (``ip link set IFACE netns NS``), then addressed and brought up there.  Keys, preshared
   key, listen ports, peers, allowed IPs and endpoints (``127.0.0.1:port`` or ``[::1]:port``) are set with
   ``wg set`` from ns0, over the UAPI socket.  The underlay is loopback, whose 64 KiB MTU lets UDP GSO
   sends cross unsegmented and arrive as one buffer.
2. :func:`test_bulk_over_loopback`: with IPv4 endpoints, then IPv6 ones: pings both ways over IPv4 and
   IPv6, a sha256-checked TCP transfer of 200 MiB each way (one per endpoint family), and a 10 s iperf3 run
   in which no one-second interval may be empty (progress, not speed; a transfer fails after 20 s without
   a byte).  Cases: two pyvpn-wg, the same with every offload off (``PYVPN_OFFLOAD=off``: no tun vnet_hdr,
   no UDP GSO/GRO; and the kernel's GSO/GRO/TSO off on ``lo`` and both tuns), and wireguard-go as one
   side.  ``pyvpn show --json`` must report no data-path stall.
3. :func:`test_allowed_ips_change_takes_effect_for_the_next_datagram`: netns.sh's crypto-RP filter check,
   extended to both directions: single UDP datagrams before and after each ``wg set ... allowed-ips``.

Everything is bounded in time and removed on exit (namespaces, daemons, sockets).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpn.testlab.keys import Keys, genpsk
from vpn.testlab.netns import Netns, namespaces
from vpn.testlab.pyvpn import PyvpnWg, unique_ifname
from vpn.testlab.traffic import Transfer, iperf3_client, iperf3_server, ping
from vpn.testlab.wggo import WireguardGo

pytestmark = [pytest.mark.root, pytest.mark.slow]

ADDR4 = ("198.19.16.1", "198.19.16.2")
ADDR6 = ("fd00:16::1", "fd00:16::2")
PORTS = (10000, 20000)
BULK = 200 << 20  # bytes each way
IPERF_SECONDS = 10
IDLE_TIMEOUT = 20.0  # seconds a transfer may go without a byte before it counts as stalled
START_TIMEOUT = 15.0
#: Kernel offloads switched off for the "every offload off" cases (those a device lacks are skipped).
KERNEL_OFFLOADS = ("gso", "gro", "tso", "tx-udp-segmentation", "rx-udp-gro-forwarding", "rx-gro-list")


@dataclass
class Side:
    ns: Netns  # where the tun lives
    ifname: str
    keys: Keys
    port: int
    addr4: str
    addr6: str
    daemon: PyvpnWg | WireguardGo


@dataclass
class Topology:
    ns0: Netns
    one: Side
    two: Side
    psk: str
    workdir: Path

    def wg(self, *args: str) -> str:
        """``wg ARGS`` from ns0 (over the UAPI socket)."""
        p = self.ns0.run(["wg", *args], check=False, timeout=10)
        assert p.returncode == 0, f"wg {' '.join(args)}: {p.stderr}"
        return p.stdout

    def set_endpoints(self, host: str) -> None:
        """Point each side at the other's port on ``host`` (127.0.0.1 or ::1), as netns.sh does."""
        for me, other in ((self.one, self.two), (self.two, self.one)):
            ep = f"[{host}]:{other.port}" if ":" in host else f"{host}:{other.port}"
            self.wg("set", me.ifname, "peer", other.keys.public, "endpoint", ep)

    def logs(self) -> str:
        out = []
        for s in (self.one, self.two):
            text = s.daemon.log()
            out.append(f"===== {s.ifname}\n" + "\n".join(text.splitlines()[-40:]))
        return "\n".join(out)


def _key_file(workdir: Path, name: str, key: str) -> str:
    path = workdir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return str(path)


def offloads_off(ns: Netns, dev: str) -> None:
    """Switch the kernel's segmentation and receive offloads off on ``dev`` and check GSO and GRO are off."""
    for feature in KERNEL_OFFLOADS:
        ns.run(["ethtool", "-K", dev, feature, "off"], check=False)
    shown = ns.run(["ethtool", "-k", dev]).stdout
    for feature in ("generic-segmentation-offload", "generic-receive-offload", "tcp-segmentation-offload"):
        line = next((ln for ln in shown.splitlines() if ln.startswith(feature + ":")), f"{feature}: off")
        assert ": off" in line, f"{dev}: {line}"


@contextlib.contextmanager
def loopback_topology(kinds: tuple[str, str] = ("pyvpn", "pyvpn"), *, offload: bool = True,
                      endpoint_host: str = "127.0.0.1") -> Iterator[Topology]:
    """netns.sh's first topology (module docstring), torn down on exit even after a failure."""
    if "wireguard-go" in kinds and shutil.which("wireguard-go") is None:
        pytest.skip("wireguard-go is not installed")
    keys = (Keys.new(), Keys.new())
    psk = genpsk()
    workdir = Path(tempfile.mkdtemp(prefix="pyvpn-lo-"))
    daemons: list[PyvpnWg | WireguardGo] = []
    try:
        with namespaces("lo0", "lo1", "lo2") as (ns0, ns1, ns2):
            if not offload:
                offloads_off(ns0, "lo")
            sides: list[Side] = []
            for i, (kind, ns) in enumerate(zip(kinds, (ns1, ns2), strict=True)):
                name = unique_ifname("pvl")
                d: PyvpnWg | WireguardGo
                if kind == "pyvpn":
                    d = PyvpnWg(ns0, name, logfile=workdir / f"{name}.log",
                                env={"LOG_LEVEL": "verbose", "PYVPN_OFFLOAD": "auto" if offload else "off"}).start()
                else:  # the reference: configured in ns0 first (its own harness), then moved the same way
                    d = WireguardGo(ns0, name, private_key=keys[i].private, listen_port=PORTS[i], routes=False)
                daemons.append(d)
                ns0.run(["ip", "link", "set", name, "netns", ns.name])  # right after creation
                sides.append(Side(ns, name, keys[i], PORTS[i], ADDR4[i], ADDR6[i], d))
            one, two = sides
            topo = Topology(ns0, one, two, psk, workdir)
            psk_file = _key_file(workdir, "psk", psk)
            for me, other in ((one, two), (two, one)):
                topo.wg("set", me.ifname, "private-key", _key_file(workdir, f"{me.ifname}.key", me.keys.private),
                        "listen-port", str(me.port), "peer", other.keys.public, "preshared-key", psk_file,
                        "allowed-ips", f"{other.addr4}/32,{other.addr6}/128")
                me.ns.run(["ip", "addr", "add", f"{me.addr4}/24", "dev", me.ifname])
                me.ns.run(["ip", "addr", "add", f"{me.addr6}/64", "dev", me.ifname, "nodad"])
                me.ns.run(["ip", "link", "set", me.ifname, "up"])
                if not offload:
                    offloads_off(me.ns, me.ifname)
            topo.set_endpoints(endpoint_host)
            try:
                yield topo
            except BaseException:
                sys.stderr.write(topo.logs() + "\n")
                raise
    finally:
        for d in daemons:
            with contextlib.suppress(Exception):
                d.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _check_transfer(src: Netns, dst: Netns, addr: str, port: int) -> None:
    t = Transfer(src, dst, addr, BULK, port=port, timeout=IDLE_TIMEOUT).start()
    result = t.wait(timeout=240)  # bounded; a stall fails sooner, on the idle timeout
    assert result.ok, result
    assert result.received_bytes == BULK


def _check_iperf(src: Netns, dst: Netns, addr: str) -> None:
    server = iperf3_server(dst, addr)
    try:
        result = iperf3_client(src, addr, seconds=IPERF_SECONDS, timeout=IPERF_SECONDS + 30)
    finally:
        server.terminate()
        server.wait(5)
    intervals = [int(i["sum"]["bytes"]) for i in result["intervals"]]
    assert len(intervals) >= IPERF_SECONDS, intervals
    assert all(b > 0 for b in intervals), f"iperf3 stalled: bytes per second {intervals}"


@pytest.mark.parametrize(("kinds", "offload"), [
    (("pyvpn", "pyvpn"), True),
    (("pyvpn", "pyvpn"), False),
    pytest.param(("wireguard-go", "pyvpn"), True, marks=pytest.mark.interop),
], ids=["pyvpn-pyvpn", "offloads-off", "wireguard-go-pyvpn"])
def test_bulk_over_loopback(kinds: tuple[str, str], offload: bool) -> None:
    """Over IPv4 endpoints first, then (``wg set ... endpoint [::1]:port``, as netns.sh does) IPv6 ones:
    pings, 200 MiB each way (one per endpoint family), 10 s of iperf3 over the IPv6 endpoints."""
    with loopback_topology(kinds, offload=offload, endpoint_host="127.0.0.1") as topo:
        one, two = topo.one, topo.two
        _check_pings(one, two)
        _check_transfer(one.ns, two.ns, two.addr4, 5001)
        topo.set_endpoints("::1")
        _check_pings(one, two)
        _check_transfer(two.ns, one.ns, one.addr6, 5002)
        _check_iperf(one.ns, two.ns, two.addr4)
        out = topo.wg("show", "all", "endpoints")
        assert f"[::1]:{one.port}" in out and f"[::1]:{two.port}" in out, out
        for side in (one, two):
            if isinstance(side.daemon, PyvpnWg):
                assert side.daemon.running(), side.daemon.log()
                snap = side.daemon.show_json()
                stall = snap["stall"]
                assert isinstance(stall, dict) and stall["state"] == "ok" and stall["stalls"] == 0, stall
                assert stall["loop_blocked"] == 0, stall
                assert "data path stalled" not in side.daemon.log()
                offloads = snap["offloads"]
                assert isinstance(offloads, list)
                if offload:
                    assert "tun:vnet_hdr" in offloads and "udp:gso" in offloads, offloads
                else:
                    assert offloads == [], offloads


def _check_pings(one: Side, two: Side) -> None:
    for src, dst in ((one, two), (two, one)):
        for addr in (dst.addr4, dst.addr6):
            r = ping(src.ns, addr, count=10, interval=0.01, wait=2.0)
            assert r.returncode == 0, f"ping {addr} from {src.ns.name}: {r.stdout}{r.stderr}"


# -- crypto-key routing at run time ----------------------------------------------------------------------------
_LISTENER = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
print("listening", flush=True)
while True:
    data, src = s.recvfrom(2048)
    print(data.decode(errors="replace"), src[0], flush=True)
"""

_SENDER = r"""
import socket, sys
src, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.sendto(payload.encode(), (dst, port))
"""


class Listener:
    """A UDP listener on ``host:port`` in ``ns`` that prints each datagram as ``payload source``."""

    def __init__(self, ns: Netns, host: str, port: int = 1111) -> None:
        self.proc = ns.popen([sys.executable, "-c", _LISTENER, host, str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert self.readline(5.0) == "listening"

    def readline(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode().strip() if ready else None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def delivered(sender: Netns, src: str, listener: Listener, dst: str, payload: str) -> bool:
    """Send one datagram from ``src`` (in ``sender``) to ``dst``; True if the listener got it within 1 s."""
    sender.run([sys.executable, "-c", _SENDER, src, dst, "1111", payload])
    line = listener.readline(1.0)
    if line is None:
        return False
    assert line == f"{payload} {src}", line
    return True


def test_allowed_ips_change_takes_effect_for_the_next_datagram() -> None:
    """``wg set IFACE peer KEY allowed-ips ...`` on the UAPI socket changes the ACL (inbound: which sources
    a peer may use) and the routing (outbound: which peer gets a destination) for the very next datagram."""
    with loopback_topology() as topo:
        one, two = topo.one, topo.two
        extra = "198.19.16.3"  # a second address in ns2, outside wg1's allowed-ips for wg2 at first
        two.ns.run(["ip", "addr", "add", f"{extra}/24", "dev", two.ifname])
        at_one, at_two = Listener(one.ns, one.addr4), Listener(two.ns, "0.0.0.0")
        try:
            assert delivered(two.ns, two.addr4, at_one, one.addr4, "in-1"), topo.logs()
            assert delivered(one.ns, one.addr4, at_two, two.addr4, "out-1")
            # Not yet allowed: .3 as a source from wg2 is refused by wg1 (spoofed), and wg1 routes .3 nowhere.
            assert not delivered(two.ns, extra, at_one, one.addr4, "in-2")
            assert not delivered(one.ns, one.addr4, at_two, extra, "out-2")
            if isinstance(one.daemon, PyvpnWg):
                drops = one.daemon.show_json()["drops"]
                assert isinstance(drops, dict)
                assert drops.get("spoofed_source", 0) >= 1 and drops.get("no_route", 0) >= 1, drops

            topo.wg("set", one.ifname, "peer", two.keys.public, "allowed-ips", "198.19.16.0/24")
            assert delivered(two.ns, extra, at_one, one.addr4, "in-3")  # the next datagram: accepted
            assert delivered(one.ns, one.addr4, at_two, extra, "out-3")  # and routed to wg2

            # A more specific prefix for another peer takes .2 away from wg2 in both directions.
            stranger = Keys.new().public
            topo.wg("set", one.ifname, "peer", stranger, "allowed-ips", f"{two.addr4}/32")
            assert not delivered(two.ns, two.addr4, at_one, one.addr4, "in-4")
            assert not delivered(one.ns, one.addr4, at_two, two.addr4, "out-4")
            assert delivered(two.ns, extra, at_one, one.addr4, "in-5")  # the rest of the /24 still works

            topo.wg("set", one.ifname, "peer", stranger, "remove")
            assert delivered(two.ns, two.addr4, at_one, one.addr4, "in-6")
            assert delivered(one.ns, one.addr4, at_two, two.addr4, "out-6")

            # Narrowed again: .3 is refused and unrouted from the next datagram on.
            topo.wg("set", one.ifname, "peer", two.keys.public, "allowed-ips", f"{two.addr4}/32,{two.addr6}/128")
            assert not delivered(two.ns, extra, at_one, one.addr4, "in-7")
            assert not delivered(one.ns, one.addr4, at_two, extra, "out-7")
            assert delivered(two.ns, two.addr4, at_one, one.addr4, "in-8")
            allowed = topo.wg("show", one.ifname, "allowed-ips")
            assert f"{two.addr4}/32" in allowed and "198.19.16.0/24" not in allowed, allowed
        finally:
            at_one.close()
            at_two.close()
