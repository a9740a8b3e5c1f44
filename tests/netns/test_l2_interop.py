"""A stock WireGuard peer joins a pyvpn L2 segment with the kernel's own ``vxlan`` device over its tunnel.

Topology (every address inside namespaces this test creates)::

    site B: wireguard-go 198.19.0.2 ─┐                         ┌─ site A: pyvpn server 198.19.0.1, fd00:19::1
      vx100 (kernel vxlan, IPv4 VTEPs│ ul 198.18.1.0/24        │    tap100 in br100 ── host ha
      198.19.0.2 → 198.19.0.1) in br100 ── host hb             │
    site C: wireguard-go fd00:19::3 ─┘ ul 198.18.2.0/24  ──────┘
      vx100 (kernel vxlan, IPv6 VTEPs fd00:19::3 → fd00:19::1) in br100 ── host hc

Site B's peer has an IPv4 tunnel address, site C's an IPv6 one only, so pyvpn talks VXLAN over IPv4 to B and
over IPv6 (UDP checksum computed, which Linux requires) to C, and relays between them as the hub.  The
kernel devices are configured exactly as a user would: ``ip link add vx100 type vxlan id 100 dstport 4789
local <wg address> remote <pyvpn tunnel address>``.  The tap MTU is 1420 - 70 = 1350 (one member uses IPv6
VTEPs); site B's vxlan gets 1370, site C's 1350; every host uses 1350.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from vpn.testlab.configs import PeerSpec, WgPeer, segment
from vpn.testlab.keys import Keys
from vpn.testlab.l2sites import add_daemon, add_host, all_reached, bridge, bridge_macs, count_broadcasts, segment_of
from vpn.testlab.netns import Netns, namespaces, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn
from vpn.testlab.traffic import ping_ok
from vpn.testlab.wggo import WireguardGo

pytestmark = [pytest.mark.root, pytest.mark.interop]

PORT = 51820
HOST_MTU = 1350


@dataclass
class Interop:
    pyvpn: Pyvpn
    site_a: Netns
    site_b: Netns
    site_c: Netns
    hosts: dict[str, tuple[Netns, str, str, str]]  # name -> (ns, v4, v6, mac)
    fleet: Fleet


@pytest.fixture(scope="module")
def interop() -> Iterator[Interop]:
    with ExitStack() as stack:
        sa, sb, sc, ha, hb, hc = stack.enter_context(namespaces("l2ia", "l2ib", "l2ic", "iha", "ihb", "ihc"))
        fleet = stack.enter_context(Fleet())
        for i, site in ((1, sb), (2, sc)):
            veth(sa, f"ul{i}", site, "ul0")
            sa.run(f"ip addr add 198.18.{i}.1/24 dev ul{i}")
            site.run(f"ip addr add 198.18.{i}.2/24 dev ul0")
        ka, kb, kc = Keys.new(), Keys.new(), Keys.new()
        bridge(sa, "br100")
        server = add_daemon(fleet, sa, "server", keys=ka, addresses=["198.19.0.1/24", "fd00:19::1/64"],
                            listen_port=PORT, segments=[segment(100, "tap100", "Bridge = br100")],
                            peers=[PeerSpec(kb.public, ["198.19.0.2/32"], name="wg-b"),
                                   PeerSpec(kc.public, ["fd00:19::3/128"], name="wg-c")])
        wg_b = stack.enter_context(WireguardGo(
            sb, private_key=kb.private, address=["198.19.0.2/24"],
            peers=[WgPeer(ka.public, endpoint=f"198.18.1.1:{PORT}", allowed_ips=["198.19.0.1/32"],
                          persistent_keepalive=25)]))
        wg_c = stack.enter_context(WireguardGo(
            sc, private_key=kc.private, address=["fd00:19::3/64"],
            peers=[WgPeer(ka.public, endpoint=f"198.18.2.1:{PORT}", allowed_ips=["fd00:19::1/128"],
                          persistent_keepalive=25)]))
        wg_b.wait_handshake()
        wg_c.wait_handshake()
        # the stock side: a kernel vxlan device over the WireGuard interface, in a bridge
        sb.run(f"ip link add vx100 mtu 1370 type vxlan id 100 dstport 4789 local 198.19.0.2 remote 198.19.0.1 "
               f"dev {wg_b.ifname}")
        sc.run(f"ip link add vx100 mtu 1350 type vxlan id 100 dstport 4789 local fd00:19::3 remote fd00:19::1 "
               f"dev {wg_c.ifname}")
        hosts: dict[str, tuple[Netns, str, str, str]] = {}
        for site in (sb, sc):
            bridge(site, "br100")
            site.run("ip link set vx100 master br100")
            site.run("ip link set vx100 up")
        for name, site, host, n in (("ha", sa, ha, 11), ("hb", sb, hb, 21), ("hc", sc, hc, 31)):
            v4, v6 = f"100.64.100.{n}", f"fd00:100::{n}"
            mac = add_host(site, "br100", host, [f"{v4}/24", f"{v6}/64"], mtu=HOST_MTU)
            hosts[name] = (host, v4, v6, mac)
        try:
            yield Interop(server, sa, sb, sc, hosts, fleet)
        except BaseException:
            print(fleet.logs())
            print(wg_b.log()[-3000:], wg_c.log()[-3000:])
            raise


def test_tap_mtu_accounts_for_ipv6_vteps(interop: Interop) -> None:
    assert "mtu 1350" in interop.site_a.run("ip link show tap100").stdout


def test_hosts_behind_kernel_vxlan_and_pyvpn_ping_each_other(interop: Interop) -> None:
    hosts = interop.hosts
    jobs = [(src[0], addr) for a, src in hosts.items() for b, dst in hosts.items() if a != b
            for addr in (dst[1], dst[2])]
    problems = all_reached(jobs, count=10)
    assert not problems, f"{problems}\n{interop.fleet.logs()}"
    # the kernel vxlan devices learned the far MACs behind pyvpn's VTEP, and site A's bridge theirs
    ha, hb, hc = (hosts[n][3] for n in ("ha", "hb", "hc"))
    assert {hb, hc} <= bridge_macs(interop.site_a, "br100")
    for site in (interop.site_b, interop.site_c):
        fdb = site.run("bridge fdb show dev vx100").stdout
        assert ha in fdb, fdb


def test_broadcast_from_pyvpn_site_reaches_both_stock_sites_once(interop: Interop) -> None:
    hosts = interop.hosts
    assert ping_ok(hosts["ha"][0], hosts["hb"][1]) and ping_ok(hosts["ha"][0], hosts["hc"][1])
    assert count_broadcasts(hosts["ha"][0], [hosts["hb"][0], hosts["hc"][0]], count=5) == [5, 5]
    # and from a stock site through pyvpn's hub to the other stock site
    assert count_broadcasts(hosts["hb"][0], [hosts["ha"][0], hosts["hc"][0]], count=5) == [5, 5]


def test_pyvpn_reports_both_vteps(interop: Interop) -> None:
    assert ping_ok(interop.hosts["hb"][0], interop.hosts["hc"][1])
    snap = interop.pyvpn.query() or {}
    seg = segment_of(snap, 100)
    assert seg["peers"] == ["wg-b", "wg-c"] and isinstance(seg["macs"], int) and seg["macs"] >= 3, seg
    assert not {k: v for k, v in snap["drops"].items() if k.startswith("l2_") and k != "l2_local_destination"}, \
        snap["drops"]


def test_tcp_between_pyvpn_taps_and_kernel_vxlan_is_intact(interop: Interop) -> None:
    """sha256-checked TCP both ways between the host behind pyvpn's (offloading) tap and the hosts behind
    the kernel vxlan devices, IPv4 VTEPs to site B and IPv6 VTEPs to site C: the frames pyvpn cuts from
    its tap's reads and the super-frames it writes into it carry the stock peers' traffic intact."""
    from vpn.testlab.traffic import transfer

    ha, hb, hc = (interop.hosts[n] for n in ("ha", "hb", "hc"))
    jobs = [(ha, hb, hb[1], 5001), (hb, ha, ha[1], 5002), (ha, hc, hc[2], 5003), (hc, ha, ha[2], 5004)]
    for src, dst, addr, port in jobs:
        r = transfer(src[0], dst[0], addr, 4 << 20, port=port)
        assert r.ok and r.received_bytes == 4 << 20, (addr, r, interop.fleet.logs())
    seg = segment_of(interop.pyvpn.query() or {}, 100)
    assert {"tun:vnet_hdr", "tun:gro"} <= set(seg["offloads"]), seg
    rx = [int(interop.site_a.run(["cat", f"/sys/class/net/tap100/statistics/{c}"]).stdout)
          for c in ("rx_bytes", "rx_packets")]
    assert rx[0] / rx[1] > HOST_MTU + 14, rx  # GRO super-frames were written into the tap
