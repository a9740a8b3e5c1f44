"""A hub: one ``pyvpn server`` and three ``pyvpn client`` s, each in its own namespace.

The underlay is a bridge in a ``lan`` namespace with a veth to every node (198.18.0.1 for the server,
198.18.0.11-13 for the clients, .14 for a stranger).  The tunnel is 100.64.0.0/24 and fd00:64::/64.
Checks:

* by default (as WireGuard) packets between clients go through the server's kernel, so its
  ``ip_forward`` and firewall decide: with ``ip_forward=0`` clients cannot reach each other, nor with
  ``ip_forward=1`` and a FORWARD drop rule (``iifname wg oifname wg drop``, client isolation), and with
  ``ip_forward=1`` alone they can, the kernel taking one off the TTL;
* with ``#pyvpn Forward = on`` client-to-client pings are forwarded inside the daemon (the server's tun
  never sees them and its kernel does not forward: ``ip_forward`` stays 0), and the TTL (hop limit)
  arrives decremented, as through a router;
* a packet whose source is outside the sender's AllowedIPs is dropped and counted as
  ``spoofed_source``; a key the server does not know gets no session.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from vpn.testlab.configs import PeerSpec, endpoint
from vpn.testlab.keys import Keys
from vpn.testlab.netns import Netns, namespaces, veth, wait_for
from vpn.testlab.pyvpn import Fleet, Pyvpn
from vpn.testlab.traffic import iperf3_client, iperf3_server, ping, ping_ok

pytestmark = pytest.mark.root

PORT = 51820
N_CLIENTS = 3


def tun4(i: int) -> str:
    return f"100.64.0.{i}"


def tun6(i: int) -> str:
    return f"fd00:64::{i}"


@dataclass
class Hub:
    server: Pyvpn
    srv_ns: Netns
    clients: list[Pyvpn]
    cli_ns: list[Netns]
    stranger: Pyvpn
    fleet: Fleet


@contextmanager
def hub(*, forward: bool, policies: Sequence[Sequence[str]] = ()) -> Iterator[Hub]:
    """The topology above (``#pyvpn Forward = on`` with ``forward``); ``policies[i]`` are extra ``[Peer]``
    lines for client i in the server's file (``#pyvpn Allow = ...``)."""
    tags = ["lan", "srv", *(f"c{i}" for i in range(N_CLIENTS)), "stranger"]
    with ExitStack() as stack:
        lan, srv_ns, *rest = stack.enter_context(namespaces(*tags))
        cli_ns, stranger_ns = rest[:N_CLIENTS], rest[N_CLIENTS]
        fleet = stack.enter_context(Fleet())
        lan.run("ip link add br0 type bridge")
        lan.run("ip link set br0 up")
        nodes = [(srv_ns, 1), *((ns, 11 + i) for i, ns in enumerate(cli_ns)), (stranger_ns, 11 + N_CLIENTS)]
        for k, (ns, host) in enumerate(nodes):
            veth(lan, f"p{k}", ns, "eth0")
            lan.run(f"ip link set p{k} master br0")
            ns.run(f"ip addr add 198.18.0.{host}/24 dev eth0")

        skeys = Keys.new()
        ckeys = [Keys.new() for _ in range(N_CLIENTS + 1)]  # the last one is the stranger's
        server_peers = [PeerSpec(k.public, [f"{tun4(11 + i)}/32", f"{tun6(11 + i)}/128"], name=f"c{i}",
                                 extra=policies[i] if i < len(policies) else ())
                        for i, k in enumerate(ckeys[:N_CLIENTS])]
        server = fleet.add(srv_ns, "server", keys=skeys, listen_port=PORT,
                           addresses=[f"{tun4(1)}/24", f"{tun6(1)}/64"], peers=server_peers, start=False,
                           extra=["#pyvpn Forward = on"] if forward else [])
        hub_ep = endpoint("198.18.0.1", PORT)
        to_server = PeerSpec(skeys.public, ["100.64.0.0/24", "fd00:64::/64"], endpoint=hub_ep,
                             persistent_keepalive=25, name="hub")
        clients = [fleet.add(ns, "client", keys=ckeys[i], peers=[to_server], start=False,
                             addresses=[f"{tun4(11 + i)}/24", f"{tun6(11 + i)}/64"])
                   for i, ns in enumerate(cli_ns)]
        stranger = fleet.add(stranger_ns, "client", keys=ckeys[N_CLIENTS],
                             addresses=[f"{tun4(11 + N_CLIENTS)}/24"],
                             peers=[PeerSpec(skeys.public, ["100.64.0.0/24"], endpoint=hub_ep,
                                             persistent_keepalive=1)], start=False)
        server.start()
        for d in (*clients, stranger):
            d.start(wait=False)
        for d in (*clients, stranger):
            d.wait_ready()
        try:
            yield Hub(server, srv_ns, clients, cli_ns, stranger, fleet)
        except BaseException:
            print(fleet.logs())
            raise


def reply_ttl(ns: Netns, addr: str) -> int | None:
    """The TTL (hop limit) of the echo reply to one ping from ``ns``, or None without a reply."""
    r = ns.run(["ping", "-n", "-c", "1", "-W", "2", addr], check=False, timeout=15)
    m = re.search(r"ttl=(\d+)", r.stdout)
    return int(m.group(1)) if r.returncode == 0 and m else None


def test_default_hub_leaves_client_to_client_to_the_kernel() -> None:
    """Issue 13: no ``Forward`` line, so the server's kernel decides, as with WireGuard."""
    with hub(forward=False) as h:
        for c in h.clients:
            assert c.keys is not None
            h.server.wait_handshake(c.keys.public, timeout=10.0)
        srv, wg = h.srv_ns, h.server.ifname
        assert srv.run("sysctl -n net.ipv4.ip_forward").stdout.strip() == "0"
        c0, c1 = h.cli_ns[0], h.cli_ns[1]
        for ns in h.cli_ns:  # the hub itself answers: the tunnel works
            assert ping_ok(ns, tun4(1)) and ping_ok(ns, tun6(1))

        # ip_forward=0: the hub does not route between its clients
        assert ping(c0, tun4(12), count=2, wait=1.0).returncode != 0, "forwarded despite ip_forward=0"
        assert ping(c0, tun6(12), count=2, wait=1.0).returncode != 0, "forwarded despite forwarding=0"
        assert h.server.show_json().get("forwarded_packets", 0) == 0

        # ip_forward=1 with client isolation in the FORWARD chain: still no way through
        srv.run("sysctl -qw net.ipv4.ip_forward=1")
        srv.run("sysctl -qw net.ipv6.conf.all.forwarding=1")
        srv.run("nft -f -", input=(f"add table inet iso\nadd chain inet iso isolate {{ type filter hook forward "
                                  f"priority 0; policy accept; }}\nadd rule inet iso isolate iifname {wg} oifname {wg} "
                                  "counter drop\n"))
        assert ping(c0, tun4(12), count=2, wait=1.0).returncode != 0, "the FORWARD drop rule was bypassed"
        assert ping(c1, tun6(11), count=2, wait=1.0).returncode != 0, "the FORWARD drop rule was bypassed"
        counted = srv.run("nft list chain inet iso isolate").stdout
        assert re.search(r"counter packets [1-9]", counted), counted  # the rule saw the packets

        # the rule gone, the kernel forwards (and takes one off the TTL): the same path works
        srv.run("nft delete table inet iso")
        assert ping_ok(c0, tun4(12)) and ping_ok(c1, tun6(11))
        assert reply_ttl(c0, tun4(12)) == 63
        assert h.server.show_json().get("forwarded_packets", 0) == 0


def test_hub_forwarding_spoofing_and_strangers() -> None:
    with hub(forward=True) as h:
        assert h.server.keys is not None and h.stranger.keys is not None
        for c in h.clients:
            assert c.keys is not None
            h.server.wait_handshake(c.keys.public, timeout=10.0)
        assert h.srv_ns.run("sysctl -n net.ipv4.ip_forward").stdout.strip() == "0"

        # Every client reaches the server (a positive control for the tun counter below).
        before = h.server.sysfs_stat("rx_packets")
        for ns in h.cli_ns:
            assert ping_ok(ns, tun4(1)) and ping_ok(ns, tun6(1))
        assert h.server.sysfs_stat("rx_packets") > before

        # Client to client, both families, every ordered pair: through the hub, never its tun.
        snap0 = h.server.query()
        assert snap0 is not None
        rx0 = h.server.sysfs_stat("rx_packets")  # packets the daemon wrote to its tun
        for i, ns in enumerate(h.cli_ns):
            for j in range(N_CLIENTS):
                if i != j:
                    assert ping_ok(ns, tun4(11 + j)), f"c{i} → c{j} (IPv4)"
                    assert ping_ok(ns, tun6(11 + j)), f"c{i} → c{j} (IPv6)"
        assert h.server.sysfs_stat("rx_packets") == rx0, "forwarded packets were written to the server's tun"
        # ... and each hop counts, as through a router: the reply left c1 with 64 and arrives with 63
        assert reply_ttl(h.cli_ns[0], tun4(12)) == 63
        assert reply_ttl(h.cli_ns[0], tun6(12)) == 63
        # ... but counted as forwarded: 6 ordered pairs x 2 families x 3 echoes, requests and replies.
        snap1 = h.server.query()
        assert snap1 is not None
        assert snap1["forwarded_packets"] - snap0["forwarded_packets"] >= 6 * 2 * 3 * 2
        # (tx_packets is not checked: the kernel's own IPv6 chatter, e.g. MLD reports, shows up there.)
        for c in h.clients:
            assert c.keys is not None
            p0, p1 = h.server.peer(c.keys.public, snap0), h.server.peer(c.keys.public, snap1)
            assert p0 is not None and p1 is not None
            assert p1["rx_bytes"] > p0["rx_bytes"] and p1["tx_bytes"] > p0["tx_bytes"]

        # A source address outside the sender's AllowedIPs: dropped at the hub and counted.
        c0 = h.clients[0]
        assert c0.keys is not None
        c0.ns.run(f"ip addr add 100.64.0.99/32 dev {c0.ifname}")
        spoofed_before = (h.server.query() or {}).get("drops", {}).get("spoofed_source", 0)
        r = ping(h.cli_ns[0], tun4(12), count=3, wait=1.0, source="100.64.0.99")
        assert r.returncode != 0, "a spoofed ping got an answer"
        snap = h.server.show_json()
        assert snap["drops"].get("spoofed_source", 0) >= spoofed_before + 3, snap["drops"]
        (p,) = [p for p in snap["peers"] if p["public_key"] == c0.keys.public]
        assert p["drops"].get("spoofed_source", 0) >= 3, p
        # The legitimate address still works.
        assert ping_ok(h.cli_ns[0], tun4(12))

        # A stranger (PersistentKeepalive = 1, so it keeps initiating) gets no session.
        def refused() -> bool:
            return bool((h.server.query() or {}).get("drops", {}).get("unknown_peer", 0) >= 1)

        assert wait_for(refused, 8.0, 0.2), (h.server.query() or {}).get("drops")
        assert h.stranger.handshake_time(h.server.keys.public) == 0
        assert ping(h.stranger.ns, tun4(1), count=1, wait=1.0).returncode != 0
        assert len(h.server.show_json()["peers"]) == N_CLIENTS
        assert "packets so far" in h.server.show_table()


# -- per-client policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("forward", ["on", "off"])
def test_hub_access_rules(forward: str) -> None:
    """c0 may reach the server (IPv4 only) and ping c1, nothing else: a denied destination is unreachable
    while an allowed one works, whether the server forwards inside the daemon (``Forward = on``) or its
    kernel routes between clients (``off``); denied packets are counted for c0 alone."""
    policy = ["#pyvpn Allow = 100.64.0.1/32, 100.64.0.12/32 icmp"]
    with hub(forward=forward == "on", policies=[policy]) as h:
        if forward == "off":  # the kernel routes between clients
            h.srv_ns.run("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        for c in h.clients:
            assert c.keys is not None
            h.server.wait_handshake(c.keys.public, timeout=10.0)
        c0 = h.cli_ns[0]
        assert ping_ok(c0, tun4(1)), "allowed: the server"
        assert ping_ok(c0, tun4(12)), "allowed: c1, ICMP"
        assert ping(c0, tun4(13), count=3, wait=1.0).returncode != 0, "denied: c2"
        assert ping(c0, tun6(1), count=3, wait=1.0).returncode != 0, "denied: the server over IPv6"
        # c1 has no policy: it reaches c2, and c2 reaches c0 (replies from c0 to c2 are denied, though)
        assert ping_ok(h.cli_ns[1], tun4(13)) and ping_ok(h.cli_ns[1], tun6(1))
        snap = h.server.show_json()
        by_name = {p["name"]: p for p in snap["peers"]}
        assert by_name["c0"]["denied"] >= 6 and by_name["c0"]["drops"]["policy_denied"] >= 6, by_name["c0"]
        assert by_name["c0"]["policy"]["allow"] == ["100.64.0.1/32", "100.64.0.12/32 icmp"]
        assert by_name["c1"]["denied"] == 0 and by_name["c2"]["denied"] == 0
        table = h.server.show_table()
        assert "policy: active" in table and "allow 100.64.0.12/32 icmp" in table  # a pipe: the block layout


def test_hub_rate_limit() -> None:
    """c0 is limited to 16 Mbit/s each way: its iperf3 rate lands near the limit (a broad band) both ways
    and drops are counted, while c1, unlimited, is not held back (compared with c0, not in absolute terms)."""
    limit = 16e6
    with hub(forward=False, policies=[["#pyvpn RateLimit = 16mbit"]]) as h:
        for c in h.clients:
            assert c.keys is not None
            h.server.wait_handshake(c.keys.public, timeout=10.0)
        server = iperf3_server(h.srv_ns, tun4(1))
        try:
            up = iperf3_client(h.cli_ns[0], tun4(1), seconds=4)
            down = iperf3_client(h.cli_ns[0], tun4(1), seconds=4, reverse=True)
            other = iperf3_client(h.cli_ns[1], tun4(1), seconds=4)
        finally:
            server.terminate()
            server.wait(5)
        rates = [r["end"]["sum_received"]["bits_per_second"] for r in (up, down, other)]
        mbit = [f"{x / 1e6:.1f}" for x in rates]
        print(f"iperf3 through the hub, Mbit/s: limited client up {mbit[0]}, down {mbit[1]}; unlimited client "
              f"up {mbit[2]}")
        assert 0.5 * limit <= rates[0] <= 1.3 * limit, rates
        assert 0.5 * limit <= rates[1] <= 1.3 * limit, rates
        assert rates[2] > 2 * max(rates[0], rates[1]), rates
        by_name = {p["name"]: p for p in h.server.show_json()["peers"]}
        c0 = by_name["c0"]
        assert c0["drops"].get("ratelimit_in", 0) > 0 and c0["drops"].get("ratelimit_out", 0) > 0, c0["drops"]
        assert c0["ratelimited"] == c0["drops"]["ratelimit_in"] + c0["drops"]["ratelimit_out"]
        assert c0["policy"]["rate_limit"] == 16_000_000
        assert by_name["c1"]["ratelimited"] == 0
