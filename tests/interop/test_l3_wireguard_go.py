"""The running ``pyvpn server`` / ``pyvpn client`` against Debian's wireguard-go, at L3.

Both directions, each side configured from a wg-quick style file (pyvpn reads it itself; the
harness applies the same keys to wireguard-go with ``wg setconf`` and ``ip``):

- pyvpn server <-> wireguard-go client, and wireguard-go server <-> pyvpn client: ping over
  IPv4 and IPv6 both ways, iperf3 TCP in both directions, ``wg show`` on the wireguard-go side
  reporting the handshake and the bytes, ``pyvpn show --json`` on ours;
- an IPv6 underlay endpoint, and packets of exactly the tunnel MTU both ways;
- a client with ``AllowedIPs = 0.0.0.0/0, ::/0`` (wg-quick's fwmark policy routing, installed
  by the daemon) still reaches the server over the underlay, and the server's underlay address
  and a network behind it through the tunnel; the rules go away with the daemon.

Topology: two namespaces joined by a veth, 198.18.0.1/24 (server) - 198.18.0.2/24 (client),
tunnel 198.19.0.0/24 and fd00:19::/64.  :class:`vpn.testlab.pyvpn.PyvpnFile` starts
``pyvpn server|client CONFIG`` in a namespace and waits for its UAPI and control sockets.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vpn.testlab.configs import WgPeer, wg_quick_file
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, namespaces, veth, wait_for
from vpn.testlab.pyvpn import CLI4, CLI6, SRV4, SRV6, PyvpnFile, workdir
from vpn.testlab.traffic import TrafficError, iperf3_bytes, iperf3_client, iperf3_server, parse_ping, ping, ping_ok
from vpn.testlab.wggo import WgPeerStatus, WireguardGo, unique_ifname

pytestmark = [pytest.mark.root, pytest.mark.interop]

STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
CMD_TIMEOUT = 10.0
IPERF_SECONDS = 1

SRV_UL, CLI_UL = "198.18.0.1", "198.18.0.2"


@contextlib.contextmanager
def two_hosts(tag_a: str = "srv", tag_b: str = "cli") -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces over a veth ``eth0``: 198.18.0.1/24 and 198.18.0.2/24 (IPv6 off the underlay)."""
    with namespaces(tag_a, tag_b) as (a, b):
        veth(a, "eth0", b, "eth0")
        a.run(f"ip addr add {SRV_UL}/24 dev eth0")
        b.run(f"ip addr add {CLI_UL}/24 dev eth0")
        yield a, b


def ping_count(ns: Netns, addr: str, count: int, interval: float = 0.05) -> tuple[int, int]:
    """Ping ``count`` times (bounded); return ``(transmitted, received)``."""
    return parse_ping(ping(ns, addr, count=count, interval=interval, wait=1).stdout)


def _iperf3(b: Netns, addr: str, *, reverse: bool) -> dict[str, Any]:
    """One TCP run; retried once when iperf3's control connection fails (a busy machine can make the
    server reset it while it still winds the previous test down: an iperf3 matter, not the tunnel's)."""
    try:
        return iperf3_client(b, addr, IPERF_SECONDS, reverse=reverse)
    except TrafficError as e:
        if "control message" not in str(e) and "control socket" not in str(e):
            raise
        time.sleep(0.5)
        return iperf3_client(b, addr, IPERF_SECONDS, reverse=reverse)


def traffic_both_ways(a: Netns, b: Netns, a4: str, a6: str, b4: str, b6: str) -> None:
    """Ping v4 and v6 from each side to the other, then iperf3 TCP from ``b`` to ``a`` and back."""
    for ns, addr in ((b, a4), (b, a6), (a, b4), (a, b6)):
        assert ping_ok(ns, addr, count=3), f"no ping from {ns.name} to {addr}"
    server = iperf3_server(a, a4)
    try:
        up = _iperf3(b, a4, reverse=False)
        down = _iperf3(b, a4, reverse=True)
    finally:
        server.terminate()
        server.wait(STOP_TIMEOUT)
    assert iperf3_bytes(up) > 100_000 and iperf3_bytes(down) > 100_000


def check_wg_side(wg: WireguardGo, pyvpn_pub: str, pyvpn: PyvpnFile, wg_pub: str) -> None:
    """``wg show`` on wireguard-go and ``pyvpn show`` agree that traffic went through a handshake."""
    cli = pyvpn.show_cli()
    assert cli["interface"] == pyvpn.ifname and cli["role"] == pyvpn.role

    def counters() -> tuple[WgPeerStatus, dict[str, Any]]:
        mine = pyvpn.peer(wg_pub)
        assert mine is not None
        return wg.show().peer(pyvpn_pub), mine

    # Compare once the last packets of iperf3 are through: two identical looks in a row (bounded).
    seen: list[tuple[int, ...]] = []

    def quiet() -> bool:
        st, mine = counters()
        seen.append((st.rx_bytes, st.tx_bytes, mine["rx_bytes"], mine["tx_bytes"]))
        return len(seen) >= 2 and seen[-1] == seen[-2]

    wait_for(quiet, 5.0, 0.2)
    st, mine = counters()
    assert st.latest_handshake > 0
    assert st.rx_bytes > 1_000_000 and st.tx_bytes > 1_000_000, st
    assert mine["latest_handshake"] > 0 and mine["handshakes"] >= 1
    assert mine["rx_bytes"] > 1_000_000 and mine["tx_bytes"] > 1_000_000, mine
    # Both count the wire bytes of data messages, so each side receives at most what the other sent, but not
    # always all of it: under iperf3 the receiver's UDP buffer overflows (UdpRcvbufErrors in its namespace,
    # TCP retransmits), wireguard-go's mostly, pyvpn's too when the machine is busy.  The slack is for a
    # keepalive between the two reads.
    assert 0.5 * st.tx_bytes < mine["rx_bytes"] <= st.tx_bytes + 100
    assert 0.5 * mine["tx_bytes"] < st.rx_bytes <= mine["tx_bytes"] + 100
    assert pyvpn.show()["drops"].get("spoofed_source", 0) == 0


# -- tests ---------------------------------------------------------------------------------------------------
def test_pyvpn_server_wireguard_go_client() -> None:
    (ks, ps), (kc, pc) = Keys.new(), Keys.new()
    with workdir() as d, two_hosts() as (srv, cli):
        conf = d / f"{unique_ifname('pvs')}.conf"
        wg_quick_file(conf, private_key=ks, listen_port=51820, address=[f"{SRV4}/24", f"{SRV6}/64"],
                      peers=[WgPeer(pc, allowed_ips=[f"{CLI4}/32", f"{CLI6}/128"])])
        with PyvpnFile(srv, "server", conf) as server, WireguardGo(
                cli, private_key=kc, address=[f"{CLI4}/24", f"{CLI6}/64"],
                peers=[WgPeer(ps, endpoint=f"{SRV_UL}:51820", allowed_ips=["198.19.0.0/24", "fd00:19::/64"])]
        ) as wg:
            traffic_both_ways(srv, cli, SRV4, SRV6, CLI4, CLI6)
            check_wg_side(wg, ps, server, pc)
            assert wg.show().peer(ps).endpoint == f"{SRV_UL}:51820"
            assert server.peer(pc)["endpoint"] == f"{CLI_UL}:{wg.listen_port}"  # type: ignore[index]
            assert server.stop() == 0
        assert not server.uapi_sock.exists() and not server.control_sock.exists()
        assert srv.run(["ip", "link", "show", server.ifname], check=False).returncode != 0


def test_wireguard_go_server_pyvpn_client() -> None:
    (ks, ps), (kc, pc) = Keys.new(), Keys.new()
    with workdir() as d, two_hosts() as (srv, cli):
        conf = d / f"{unique_ifname('pvc')}.conf"
        wg_quick_file(conf, private_key=kc, address=[f"{CLI4}/24", f"{CLI6}/64"],
                      peers=[WgPeer(ps, endpoint=f"{SRV_UL}:51820", allowed_ips=["198.19.0.0/24", "fd00:19::/64"],
                                    persistent_keepalive=25)])
        with WireguardGo(srv, private_key=ks, listen_port=51820, address=[f"{SRV4}/24", f"{SRV6}/64"],
                         peers=[WgPeer(pc, allowed_ips=[f"{CLI4}/32", f"{CLI6}/128"])]) as wg, \
                PyvpnFile(cli, "client", conf) as client:
            # PersistentKeepalive makes the client handshake at start-up, before any traffic.
            st = wg.wait_handshake(pc, timeout=5.0)
            assert st.endpoint is not None and st.endpoint.startswith(f"{CLI_UL}:")
            traffic_both_ways(srv, cli, SRV4, SRV6, CLI4, CLI6)
            check_wg_side(wg, pc, client, ps)
            assert client.stop() == 0
        assert not client.uapi_sock.exists() and not client.control_sock.exists()


def test_ipv6_underlay_and_mtu_edges() -> None:
    """pyvpn server <-> wireguard-go over an IPv6 underlay (the dual-stack socket), and packets of exactly
    the tunnel MTU (1420) pass unfragmented both ways while one byte more is refused (DF)."""
    (ks, ps), (kc, pc) = Keys.new(), Keys.new()
    with workdir() as d, two_hosts() as (srv, cli):
        srv.run("ip addr add fd00:18::1/64 dev eth0 nodad")
        cli.run("ip addr add fd00:18::2/64 dev eth0 nodad")
        conf = d / f"{unique_ifname('pvs')}.conf"
        wg_quick_file(conf, private_key=ks, listen_port=51820, address=[f"{SRV4}/24", f"{SRV6}/64"],
                      peers=[WgPeer(pc, allowed_ips=[f"{CLI4}/32", f"{CLI6}/128"])])
        with PyvpnFile(srv, "server", conf) as server, WireguardGo(
                cli, private_key=kc, address=[f"{CLI4}/24", f"{CLI6}/64"],
                peers=[WgPeer(ps, endpoint="[fd00:18::1]:51820", allowed_ips=["198.19.0.0/24", "fd00:19::/64"])]
        ) as wg:
            assert ping_ok(cli, SRV4, count=2)
            assert server.dump().peers[0].endpoint == f"[fd00:18::2]:{wg.listen_port}"
            for ns, addr, payload in ((cli, SRV4, 1392), (srv, CLI4, 1392), (cli, SRV6, 1372), (srv, CLI6, 1372)):
                r = ns.run(["ping", "-n", "-q", "-c", "2", "-i", "0.1", "-W", "2", "-M", "do", "-s", str(payload),
                            addr], check=False, timeout=CMD_TIMEOUT)
                assert r.returncode == 0, f"{payload}-byte ping to {addr}: {r.stdout}{r.stderr}"
            r = cli.run(["ping", "-n", "-q", "-c", "1", "-W", "1", "-M", "do", "-s", "1393", SRV4], check=False,
                        timeout=CMD_TIMEOUT)
            assert r.returncode != 0  # larger than the tunnel's MTU: refused locally, never sent
            assert wg.show().peer(ps).latest_handshake > 0


def _rules(ns: Netns, family: str) -> str:
    return ns.run(["ip", family, "rule", "show"]).stdout


@contextlib.contextmanager
def routed_hosts() -> Iterator[tuple[Netns, Netns]]:
    """Server 198.18.1.1/24 and client 198.18.0.2/24 on one veth; the client reaches the server only
    through its default route (``via 198.18.1.1 onlink``), the route a /0 tunnel takes over."""
    with namespaces("srv", "cli") as (a, b):
        veth(a, "eth0", b, "eth0")
        a.run("ip addr add 198.18.1.1/24 dev eth0")
        a.run("ip route add 198.18.0.0/24 dev eth0")
        b.run(f"ip addr add {CLI_UL}/24 dev eth0")
        b.run("ip route add default via 198.18.1.1 dev eth0 onlink")
        # A strict reverse-path filter, as on many hosts: replies from the server must pass it although a
        # /0 tunnel routes their source address back into the tunnel (wg-quick's conntrack mark).
        b.run("sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.eth0.rp_filter=1")
        yield a, b


@pytest.mark.parametrize("server_kind", ["pyvpn", "wireguard-go"])
def test_client_default_route_keeps_underlay(server_kind: str) -> None:
    """``pyvpn client`` with AllowedIPs = 0.0.0.0/0, ::/0 takes over the default route; its own (marked)
    UDP packets still leave by the underlay's default route, and the replies pass a strict rp_filter, so
    the tunnel works and the server's underlay address is reached through the tunnel.  The rules and the
    nft tables go away with the client."""
    server_ul = "198.18.1.1"
    (ks, ps), (kc, pc) = Keys.new(), Keys.new()
    with workdir() as d, routed_hosts() as (srv, cli), contextlib.ExitStack() as stack:
        # An address behind the server that the client should reach through the tunnel.
        srv.run("ip addr add 198.18.9.1/32 dev lo")
        srv.run("ip addr add fd00:9::1/128 dev lo")
        client_peers = [WgPeer(pc, allowed_ips=[f"{CLI4}/32", f"{CLI6}/128"])]
        if server_kind == "pyvpn":
            sconf = d / f"{unique_ifname('pvs')}.conf"
            wg_quick_file(sconf, private_key=ks, listen_port=51820, address=[f"{SRV4}/24", f"{SRV6}/64"],
                          peers=client_peers)
            stack.enter_context(PyvpnFile(srv, "server", sconf))
        else:
            stack.enter_context(WireguardGo(srv, private_key=ks, listen_port=51820,
                                            address=[f"{SRV4}/24", f"{SRV6}/64"], peers=client_peers))
        before4, before6 = _rules(cli, "-4"), _rules(cli, "-6")
        cconf = d / f"{unique_ifname('pvc')}.conf"
        wg_quick_file(cconf, private_key=kc, address=[f"{CLI4}/24", f"{CLI6}/64"],
                      peers=[WgPeer(ps, endpoint=f"{server_ul}:51820", allowed_ips=["0.0.0.0/0", "::/0"])])
        with PyvpnFile(cli, "client", cconf) as client:
            for fam in ("-4", "-6"):
                rules = _rules(cli, fam)
                assert "not from all fwmark 0xca6c lookup 51820" in rules, rules
                assert "from all lookup main suppress_prefixlength 0" in rules, rules
            for dst in (server_ul, "198.18.9.1"):
                route = cli.run(["ip", "-4", "route", "get", dst]).stdout
                assert f"dev {client.ifname}" in route, route  # unmarked packets take the tunnel
            route = cli.run(["ip", "-4", "route", "get", server_ul, "mark", "51820"]).stdout
            assert "dev eth0" in route, route  # the daemon's own (marked) packets do not
            assert f"pyvpn-{client.ifname}" in cli.run("nft list tables").stdout
            tx0 = client.peer(ps)["tx_packets"]  # type: ignore[index]
            for addr in (SRV4, SRV6, server_ul, "198.18.9.1", "fd00:9::1"):
                assert ping_ok(cli, addr, count=2), f"no ping to {addr} with a /0 tunnel"
            assert client.peer(ps)["tx_packets"] >= tx0 + 10  # type: ignore[index]
            assert ping_ok(srv, CLI4, count=2)
            assert client.stop() == 0
        assert _rules(cli, "-4") == before4 and _rules(cli, "-6") == before6
        assert "pyvpn-" not in cli.run("nft list tables").stdout
        assert "dev eth0" in cli.run(["ip", "-4", "route", "get", server_ul]).stdout
        assert ping_ok(cli, server_ul, count=1)  # the plain underlay works again
