"""Plain (unencrypted) RFC 7348 VXLAN: pyvpn at one site, the kernel's ``vxlan`` device at the other.

Topology (every address inside namespaces this test creates)::

    site A: pyvpn (Mode = plain)                      ul0 198.18.0.1, fd00:18::1 ══ veth ══ ul0 198.18.0.2, fd00:18::2
      VNI 100 tap100 in br100 (Local 198.18.0.1)  ── host ha1          site B: kernel vx100 (IPv4, dstport 4789)
      VNI 101 tap101 in br101 (Local fd00:18::1)  ── host ha2                  kernel vx101 (IPv6, dstport 4789)
                                                                               each in its bridge with a host

pyvpn runs as a client with no peers at all: plain segments use their own UDP socket on ``Local:4789`` and
never touch WireGuard.  The tap MTUs are 1500 - 50 = 1450 (IPv4 underlay) and 1500 - 70 = 1430 (IPv6).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from vpn.testlab.configs import segment
from vpn.testlab.keys import Keys
from vpn.testlab.l2sites import add_daemon, add_host, all_reached, bridge, count_broadcasts, segment_of
from vpn.testlab.netns import Netns, namespaces, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn
from vpn.testlab.traffic import ping_ok

pytestmark = [pytest.mark.root, pytest.mark.interop]


@dataclass
class Plain:
    pyvpn: Pyvpn
    site_a: Netns
    site_b: Netns
    hosts: dict[str, tuple[Netns, str, str]]  # name -> (ns, v4, v6)


@pytest.fixture(scope="module")
def plain() -> Iterator[Plain]:
    with ExitStack() as stack:
        sa, sb, ha1, ha2, hb1, hb2 = stack.enter_context(namespaces("l2pa", "l2pb", "pha1", "pha2", "phb1", "phb2"))
        fleet = stack.enter_context(Fleet())
        veth(sa, "ul0", sb, "ul0")
        for site, n in ((sa, 1), (sb, 2)):
            site.run(f"ip addr add 198.18.0.{n}/24 dev ul0")
            site.run(f"ip addr add fd00:18::{n}/64 nodad dev ul0")
        segs = [segment(100, "tap100", "Bridge = br100", "Mode = plain", "Local = 198.18.0.1", "Remote = 198.18.0.2"),
                segment(101, "tap101", "Bridge = br101", "Mode = plain", "Local = fd00:18::1",
                        "Remote = [fd00:18::2]:4789")]
        daemon = add_daemon(fleet, sa, "client", keys=Keys.new(), addresses=["198.19.0.1/24"], peers=[],
                            segments=segs)
        sb.run("ip link add vx100 mtu 1450 type vxlan id 100 dstport 4789 local 198.18.0.2 remote 198.18.0.1 dev ul0")
        sb.run("ip link add vx101 mtu 1430 type vxlan id 101 dstport 4789 local fd00:18::2 remote fd00:18::1 dev ul0")
        for vni in (100, 101):
            bridge(sb, f"br{vni}")
            sb.run(f"ip link set vx{vni} master br{vni}")
            sb.run(f"ip link set vx{vni} up")
        hosts = {}
        for name, site, host, br, n, mtu in (("ha1", sa, ha1, "br100", 11, 1450), ("hb1", sb, hb1, "br100", 21, 1450),
                                             ("ha2", sa, ha2, "br101", 12, 1430), ("hb2", sb, hb2, "br101", 22, 1430)):
            v4, v6 = f"100.64.100.{n}", f"fd00:100::{n}"
            add_host(site, br, host, [f"{v4}/24", f"{v6}/64"], mtu=mtu)
            hosts[name] = (host, v4, v6)
        try:
            yield Plain(daemon, sa, sb, hosts)
        except BaseException:
            print(fleet.logs())
            raise


def test_taps_get_the_underlay_mtu(plain: Plain) -> None:
    assert "mtu 1450" in plain.site_a.run("ip link show tap100").stdout
    assert "mtu 1430" in plain.site_a.run("ip link show tap101").stdout


def test_hosts_ping_over_ipv4_and_ipv6_underlays(plain: Plain) -> None:
    h = plain.hosts
    jobs = []
    for a, b in (("ha1", "hb1"), ("hb1", "ha1"), ("ha2", "hb2"), ("hb2", "ha2")):
        jobs += [(h[a][0], h[b][1]), (h[a][0], h[b][2])]
    problems = all_reached(jobs, count=20)
    assert not problems, problems


def test_full_size_frames_cross(plain: Plain) -> None:
    # 1450-byte IP packets: the largest the IPv4-underlay segment carries without fragmenting the VXLAN packet
    ha1, hb1 = plain.hosts["ha1"], plain.hosts["hb1"]
    assert ping_ok(ha1[0], hb1[1])
    big = ha1[0].run(["ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "2", "-w", "4", "-M", "do", "-s",
                      str(1450 - 28), hb1[1]], check=False)
    assert big.returncode == 0, big.stdout + big.stderr


def test_segments_stay_apart(plain: Plain) -> None:
    h = plain.hosts
    assert ping_ok(h["ha1"][0], h["hb1"][1])
    # VNI 100 and 101 share the subnet; a broadcast on VNI 100 reaches only VNI 100
    assert count_broadcasts(h["ha1"][0], [h["hb1"][0], h["ha2"][0], h["hb2"][0]], count=5) == [5, 0, 0]


def test_show_marks_plain_segments_and_the_log_warns(plain: Plain) -> None:
    snap = plain.pyvpn.show_json()
    for vni in (100, 101):
        seg = segment_of(snap, vni)
        assert seg["plain"] is True and isinstance(seg["macs"], int) and seg["macs"] >= 2, seg
    assert segment_of(snap, 101)["peers"] == ["[fd00:18::2]:4789"]
    table = plain.pyvpn.show_table()
    assert re.search(r"segment vni 100 on tap100: \d+ MACs learned \(plain VXLAN, unencrypted\)", table), table
    assert "NOT encrypted" in plain.pyvpn.log()
