"""L2 site bridging with real taps and bridges: two sites, and a hub with three client sites.

Two sites (``two_sites`` fixture)::

    site A ns (pyvpn server, ul0 198.18.0.1)  ══ veth ══  site B ns (pyvpn client, ul0 198.18.0.2)
      br100: tap100, veth → ha1, macvlan → ha2             br100 (created by pyvpn): tap100, veth → hb1,
      br200: tap200, veth → ha3                                                      macvlan → hb2
                                                           br200 (created by pyvpn): tap200, veth → hb3

Tunnel 198.19.0.1/.2 and fd00:19::1/::2; VNI 100 and VNI 200 ride the same peers and session.  Site A's
bridges exist before pyvpn starts (it joins them), site B's are created by pyvpn.  Every host on a bridge
uses the tap MTU (1370).  The macvlan hosts sit on a macvlan (mode bridge) whose lower device is the bridge
itself (a bridge *port* cannot be a macvlan lower device: both want the port's rx_handler).  All hosts,
both VNIs, share 100.64.100.0/24 on purpose: only the VNI keeps them apart.

Hub (``test_hub_*``): a server site and three client sites, each site a bridge with one host; VNI 100 has
every client, VNI 200 lists clients 1 and 2 only, and client 3 configures VNI 200 anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from vpn.testlab.configs import PeerSpec, endpoint, segment
from vpn.testlab.keys import Keys
from vpn.testlab.l2sites import (
    SUBNET,
    TAP_MTU,
    add_daemon,
    add_host,
    all_reached,
    bridge,
    bridge_macs,
    count_broadcasts,
    none_reached,
    parallel_pings,
    replies,
    segment_of,
)
from vpn.testlab.netns import Netns, namespaces, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn
from vpn.testlab.traffic import iperf3_bytes, iperf3_client, iperf3_server, ping_ok

pytestmark = pytest.mark.root

PORT = 51820


# -- two sites -------------------------------------------------------------------------------------------------
@dataclass
class Host:
    ns: Netns
    v4: str
    v6: str
    mac: str = ""


@dataclass
class TwoSites:
    site_a: Netns
    site_b: Netns
    server: Pyvpn
    client: Pyvpn
    fleet: Fleet
    vni100: list[Host] = field(default_factory=list)  # ha1, ha2 (macvlan), hb1, hb2 (macvlan)
    vni200: list[Host] = field(default_factory=list)  # ha3, hb3


@pytest.fixture(scope="module")
def two_sites() -> Iterator[TwoSites]:
    with ExitStack() as stack:
        sa, sb, ha1, ha2, ha3, hb1, hb2, hb3 = stack.enter_context(
            namespaces("l2sa", "l2sb", "ha1", "ha2", "ha3", "hb1", "hb2", "hb3"))
        fleet = stack.enter_context(Fleet())
        veth(sa, "ul0", sb, "ul0")
        sa.run("ip addr add 198.18.0.1/24 dev ul0")
        sb.run("ip addr add 198.18.0.2/24 dev ul0")
        ks, kc = Keys.new(), Keys.new()
        bridge(sa, "br100")
        bridge(sa, "br200")
        segs_a = [segment(100, "tap100", "Bridge = br100"), segment(200, "tap200", "Bridge = br200")]
        segs_b = [segment(100, "tap100", "Bridge = br100"), segment(200, "tap200", "Bridge = br200")]
        server = add_daemon(fleet, sa, "server", keys=ks, addresses=["198.19.0.1/24", "fd00:19::1/64"],
                            listen_port=PORT, segments=segs_a, start=False,
                            peers=[PeerSpec(kc.public, ["198.19.0.2/32", "fd00:19::2/128"], name="site-b")])
        client = add_daemon(fleet, sb, "client", keys=kc, addresses=["198.19.0.2/24", "fd00:19::2/64"],
                            segments=segs_b, start=False,
                            peers=[PeerSpec(ks.public, ["198.19.0.0/24", "fd00:19::/64"],
                                            endpoint=endpoint("198.18.0.1", PORT), persistent_keepalive=25,
                                            name="site-a")])
        server.start()  # first, so the client's first initiation is not lost (a retry waits 5 s)
        client.start()
        client.wait_handshake(ks.public)
        sites = TwoSites(sa, sb, server, client, fleet)
        for site, hosts, base in ((sa, (ha1, ha2), 10), (sb, (hb1, hb2), 20)):
            for k, h in enumerate(hosts, 1):
                host = Host(h, f"{SUBNET}.{base + k}", f"fd00:100::{base + k}")
                host.mac = add_host(site, "br100", h, [f"{host.v4}/24", f"{host.v6}/64"], macvlan=k == 2)
                sites.vni100.append(host)
        for site, h, n in ((sa, ha3, 13), (sb, hb3, 23)):
            host = Host(h, f"{SUBNET}.{n}", f"fd00:100::{n}")
            host.mac = add_host(site, "br200", h, [f"{host.v4}/24", f"{host.v6}/64"])
            sites.vni200.append(host)
        try:
            yield sites
        except BaseException:
            print(fleet.logs())
            raise


def test_taps_bridges_and_mtu(two_sites: TwoSites) -> None:
    for site in (two_sites.site_a, two_sites.site_b):
        for vni in (100, 200):
            link = site.run(f"ip -d link show tap{vni}").stdout
            assert f"mtu {TAP_MTU}" in link and f"master br{vni}" in link and "tun type tap" in link, link


def test_every_host_pings_every_other_v4_and_v6(two_sites: TwoSites) -> None:
    hosts = two_sites.vni100
    jobs = [(src.ns, addr) for src in hosts for dst in hosts if src is not dst for addr in (dst.v4, dst.v6)]
    failures = all_reached(jobs, count=5)
    assert not failures, f"{failures}\n{two_sites.fleet.logs()}"
    # ARP and ND crossed: each site's bridge learned the far hosts' MACs through the tap
    assert {hosts[2].mac, hosts[3].mac} <= bridge_macs(two_sites.site_a, "br100")
    assert {hosts[0].mac, hosts[1].mac} <= bridge_macs(two_sites.site_b, "br100")


def test_pings_are_not_duplicated(two_sites: TwoSites) -> None:
    ha1, _, hb1, hb2 = two_sites.vni100
    for dst in (hb1, hb2):
        for rc, out in parallel_pings([(ha1.ns, dst.v4), (ha1.ns, dst.v6)], count=20):
            assert rc == 0 and replies(out) == (20, 0), out


def test_broadcast_reaches_the_other_site_once_and_not_the_other_vni(two_sites: TwoSites) -> None:
    ha1, ha2, hb1, hb2 = two_sites.vni100
    ha3, hb3 = two_sites.vni200
    # one warm-up ping makes sure the session is up before counting
    assert ping_ok(ha1.ns, hb1.v4)
    got = count_broadcasts(ha1.ns, [ha2.ns, hb1.ns, hb2.ns, ha3.ns, hb3.ns], count=5)
    assert got == [5, 5, 5, 0, 0], got


def test_iperf3_across_the_segment(two_sites: TwoSites) -> None:
    ha1, _, hb1, _ = two_sites.vni100
    server = iperf3_server(hb1.ns, hb1.v4)
    try:
        result = iperf3_client(ha1.ns, hb1.v4, seconds=2)
    finally:
        server.terminate()
        server.wait(5)
    received = iperf3_bytes(result)
    mbps = result["end"]["sum_received"]["bits_per_second"] / 1e6
    print(f"iperf3 TCP over VNI 100 (tap → VXLAN → WireGuard): {mbps:.1f} Mbit/s, {received} bytes")
    assert received > 0


def test_vni_isolation(two_sites: TwoSites) -> None:
    ha1, ha2, hb1, hb2 = two_sites.vni100
    ha3, hb3 = two_sites.vni200
    assert ping_ok(ha3.ns, hb3.v4) and ping_ok(hb3.ns, ha3.v6)  # VNI 200 works on its own
    # same subnet, other VNI: no ARP answer ever crosses, so these all fail
    crossed = none_reached([(src.ns, dst.v4) for src, dst in ((ha1, hb3), (hb1, ha3), (ha3, hb1), (hb3, ha2))])
    assert not crossed, f"reached across VNIs: {crossed}"
    macs_b200 = bridge_macs(two_sites.site_b, "br200")
    macs_a200 = bridge_macs(two_sites.site_a, "br200")
    for h in (ha1, ha2, hb1, hb2):
        assert h.mac not in macs_a200 | macs_b200, f"{h.mac} (VNI 100) leaked into a VNI 200 bridge"
    assert ha3.mac in macs_b200 and hb3.mac in macs_a200


def test_show_lists_segments(two_sites: TwoSites) -> None:
    assert ping_ok(two_sites.vni100[0].ns, two_sites.vni100[2].v4)
    for d in (two_sites.server, two_sites.client):
        snap = d.show_json() if d is two_sites.server else d.query() or {}  # the CLI once, the socket once
        assert snap["mode"] == "l3+l2"
        s100, s200 = segment_of(snap, 100), segment_of(snap, 200)
        assert s100["tap"] == "tap100" and s100["plain"] is False and s100["mtu"] == TAP_MTU
        assert isinstance(s100["macs"], int) and s100["macs"] >= 4
        assert isinstance(s200["macs"], int) and s200["macs"] >= 2
        assert s100["hub"] is (d is two_sites.server)
    table = two_sites.server.show_table()
    assert re.search(r"segment vni 100 on tap100: \d+ MACs learned", table), table
    assert "unencrypted" not in table


# -- a hub with three client sites -------------------------------------------------------------------------
def test_hub_three_sites_no_loops_no_duplicates_and_membership() -> None:
    n = 3
    with ExitStack() as stack:
        nss = stack.enter_context(namespaces("hubs", *(f"hubc{i}" for i in range(1, n + 1)),
                                             "hh0", *(f"hh{i}" for i in range(1, n + 1)),
                                             *(f"hv{i}" for i in range(1, n + 1))))
        srv_site, cli_sites = nss[0], nss[1:n + 1]
        h100 = nss[n + 1:2 * n + 2]  # hh0 (server site), hh1..hh3
        h200 = nss[2 * n + 2:]  # hv1..hv3 (VNI 200 hosts at the client sites)
        fleet = stack.enter_context(Fleet())
        ks = Keys.new()
        kc = [Keys.new() for _ in range(n)]
        for i, site in enumerate(cli_sites, 1):
            veth(srv_site, f"ul{i}", site, "ul0")
            srv_site.run(f"ip addr add 198.18.{i}.1/24 dev ul{i}")
            site.run(f"ip addr add 198.18.{i}.2/24 dev ul0")
        server = add_daemon(
            fleet, srv_site, "server", keys=ks, addresses=["198.19.0.1/24"], listen_port=PORT, start=False,
            segments=[segment(100, "tap100", "Bridge = br100"), segment(200, "tap200", "Peers = c1, c2")],
            peers=[PeerSpec(k.public, [f"198.19.0.{i + 1}/32"], name=f"c{i}") for i, k in enumerate(kc, 1)])
        clients = [add_daemon(
            fleet, site, "client", keys=kc[i - 1], addresses=[f"198.19.0.{i + 1}/24"], start=False,
            segments=[segment(100, "tap100", "Bridge = br100"), segment(200, "tap200", "Bridge = br200")],
            peers=[PeerSpec(ks.public, ["198.19.0.0/24"], endpoint=endpoint(f"198.18.{i}.1", PORT),
                            persistent_keepalive=25, name="hub")]) for i, site in enumerate(cli_sites, 1)]
        server.start()
        for d in clients:
            d.start(wait=False)
        for d in clients:
            d.wait_ready()
            d.wait_handshake(ks.public)
        hosts100 = []
        for k, (site, host) in enumerate(zip((srv_site, *cli_sites), h100, strict=True)):
            add_host(site, "br100", host, [f"{SUBNET}.{k + 1}/24"])
            hosts100.append((host, f"{SUBNET}.{k + 1}"))
        for k, (site, host) in enumerate(zip(cli_sites, h200, strict=True), 1):
            add_host(site, "br200", host, [f"{SUBNET}.{100 + k}/24"])
        try:
            # every host of VNI 100 reaches every other, exactly 20 replies each, no DUP!
            problems = all_reached([(src, addr) for src, _ in hosts100 for dst, addr in hosts100 if src is not dst])
            assert not problems, problems
            # a broadcast from client site 1 arrives exactly once everywhere (the hub relays it once per
            # spoke; spokes never relay, so nothing loops back), and never on VNI 200
            got = count_broadcasts(h100[1], [h100[0], h100[2], h100[3], *h200], count=5)
            assert got == [5, 5, 5, 0, 0, 0], got
            # VNI 200 lists clients 1 and 2: they talk (through the hub, which has no bridge for it) ...
            assert ping_ok(h200[0], f"{SUBNET}.102") and ping_ok(h200[1], f"{SUBNET}.101")
            # ... client 3 configured VNI 200 too, but the hub drops its frames and never floods to it
            crossed = none_reached([(h200[2], f"{SUBNET}.101"), (h200[0], f"{SUBNET}.103")])
            assert not crossed, crossed
            snap = server.show_json()
            assert snap["drops"].get("l2_vni_not_member", 0) > 0, snap["drops"]
            s100, s200 = segment_of(snap, 100), segment_of(snap, 200)
            # 4 hosts, plus the bridges' and taps' own MACs (their IPv6 link-local chatter crosses too)
            assert s100["hub"] is True and isinstance(s100["macs"], int) and s100["macs"] >= 4, s100
            assert s200["peers"] == ["c1", "c2"] and isinstance(s200["macs"], int) and s200["macs"] >= 2, s200
            counters = s100["counters"]
            assert isinstance(counters, dict) and counters.get("unicast", 0) > 0
            for c in clients:
                cs = segment_of(c.query() or {}, 100)
                assert cs["hub"] is False and cs["counters"].get("drop_other_peer", 0) == 0, cs
        except BaseException:
            print(fleet.logs())
            raise
