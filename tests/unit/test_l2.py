"""vpn/l2/ without root: the pure planning helpers, then whole Devices with L2 runtimes over in-memory fakes.

The runtime tests wire real :class:`vpn.device.Device` objects (real crypto, real event loop) to
``MemoryTun(tap=True)`` taps and a :class:`tunnel.testing.MemoryNetwork`, so a frame injected into one tap
crosses the WireGuard session as VXLAN-in-UDP-in-IP and comes out of the other tap.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from rich.console import Console

from crypto.keys import encode_key, private_from_random, public_from_private
from tunnel.encap.vxlan import encap_ip, pack_header
from tunnel.testing import MemoryNetwork, MemoryTun, MemoryUdp
from vpn.config import parse_config
from vpn.device import Device
from vpn.l2.plan import L2ConfigError, TapPlan, choose_vtep, local_vteps, plan_segments
from vpn.l2.runtime import L2Runtime
from vpn.status import render
from vpn.testlab import packets

KEYS = [private_from_random(bytes([i + 1]) * 32) for i in range(5)]
PUBS = [public_from_private(k) for k in KEYS]
BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def eth(dst: bytes, src: bytes, payload: bytes = b"hello", ethertype: int = 0x88B5) -> bytes:
    return packets.eth(payload, dst=dst, src=src, ethertype=ethertype)


def tagged(dst: bytes, src: bytes, vid: int, payload: bytes = b"tagged") -> bytes:
    return packets.eth(payload, dst=dst, src=src, ethertype=0x88B5, vlan=vid)


def ipv4_udp(src: str, dst: str, payload: bytes, dport: int) -> bytes:
    return packets.ipv4(src, dst, packets.UDP, packets.udp(40000, dport, payload))


# -- pure helpers ----------------------------------------------------------------------------------------------
def test_local_vteps_first_of_each_family() -> None:
    got = local_vteps(["198.19.0.1/24", "fd00:19::1/64", "198.19.1.1/24"])
    assert str(got[4]) == "198.19.0.1" and str(got[6]) == "fd00:19::1"
    assert local_vteps([]) == {}


@pytest.mark.parametrize(("allowed", "explicit", "families", "want"), [
    (["198.19.0.2/32"], None, (4, 6), "198.19.0.2"),
    (["198.19.0.0/24", "fd00:19::/64"], None, (4, 6), "198.19.0.1"),  # a client's view of its server
    (["198.19.0.4/31"], None, (4,), "198.19.0.4"),  # RFC 3021: both addresses are hosts
    (["fd00:19::/64", "198.19.0.7/32"], None, (4, 6), "198.19.0.7"),  # IPv4 preferred
    (["fd00:19::/64", "198.19.0.7/32"], None, (6,), "fd00:19::1"),  # only the families we have
    (["fd00:19::5/128"], None, (6,), "fd00:19::5"),
    (["0.0.0.0/0", "::/0"], None, (4, 6), None),  # a full tunnel names no VTEP: set Vtep
    (["0.0.0.0/0"], "198.19.0.9", (4,), "198.19.0.9"),
    (["198.19.0.2/32"], "fd00::9", (4,), None),  # explicit, but we have no IPv6 address
    ([], None, (4, 6), None),
])
def test_choose_vtep(allowed: list[str], explicit: str | None, families: tuple[int, ...], want: str | None) -> None:
    local = local_vteps([a for v, a in ((4, "198.19.0.1/24"), (6, "fd00:19::1/64")) if v in families])
    got = choose_vtep(allowed, explicit, local)
    assert (str(got) if got is not None else None) == want


def conf(segments: str, *, address: str = "198.19.0.1/24, fd00:19::1/64", peers: Sequence[tuple[int, str]] = (
        (1, "198.19.0.2/32, fd00:19::2/128"),), mtu: int | None = None) -> str:
    text = f"[Interface]\nPrivateKey = {encode_key(KEYS[0])}\n"
    if address:
        text += f"Address = {address}\n"
    if mtu:
        text += f"MTU = {mtu}\n"
    for i, allowed in peers:
        text += f"\n[Peer]\n#pyvpn Name = p{i}\nPublicKey = {encode_key(PUBS[i])}\nAllowedIPs = {allowed}\n"
    return text + segments


def seg(vni: int, tap: str, *extra: str) -> str:
    return "\n".join(["", "#pyvpn [Segment]", f"#pyvpn VNI = {vni}", f"#pyvpn Tap = {tap}",
                      *(f"#pyvpn {e}" for e in extra)]) + "\n"


def test_plan_mtus_hub_and_defaults() -> None:
    cfg = parse_config(conf(seg(100, "tap100", "Bridge = br100") + seg(7, "tapp", "Mode = plain",
                                                                         "Local = 198.18.0.1",
                                                                         "Remote = 198.18.0.2, 198.18.0.3:4790")))
    taps = {t.name: t for t in plan_segments(cfg, role="server", tunnel_mtu=1420)}
    t100, tp = taps["tap100"], taps["tapp"]
    assert (t100.mtu, t100.bridge, t100.trunk, t100.vlan_map()) == (1370, "br100", True, None)
    s100 = t100.segments[0]
    assert (s100.hub, s100.plain, s100.port, s100.ipv6_vteps, s100.members) == (True, False, 4789, False, ())
    sp = tp.segments[0]
    assert tp.mtu == 1450 and sp.plain and not sp.hub  # plain segments never relay
    assert sp.remotes == (("198.18.0.2", 4789), ("198.18.0.3", 4790))
    client = plan_segments(cfg, role="client", tunnel_mtu=1420)
    assert not any(s.hub for t in client for s in t.segments)


def test_plan_ipv6_vteps_and_explicit_mtu(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(conf(seg(100, "tap100"), address="fd00:19::1/64", peers=[(1, "fd00:19::2/128")]))
    (tp,) = plan_segments(cfg, role="client", tunnel_mtu=1420)
    assert tp.mtu == 1350 and tp.segments[0].ipv6_vteps
    # one IPv6-only member is enough for the larger headroom
    cfg = parse_config(conf(seg(100, "tap100"), peers=[(1, "198.19.0.2/32"), (2, "fd00:19::3/128")]))
    assert plan_segments(cfg, role="server", tunnel_mtu=1420)[0].mtu == 1350
    cfg = parse_config(conf(seg(100, "tap100", "Peers = p1"), peers=[(1, "198.19.0.2/32"), (2, "fd00:19::3/128")]))
    assert plan_segments(cfg, role="server", tunnel_mtu=1420)[0].mtu == 1370
    cfg = parse_config(conf(seg(100, "tap100", "MTU = 1400")))
    with caplog.at_level(logging.WARNING, logger="pyvpn.l2"):
        (tp,) = plan_segments(cfg, role="client", tunnel_mtu=1420)
    assert tp.mtu == 1400 and "larger than 1370" in caplog.text
    cfg = parse_config(conf(seg(100, "tap100", "MTU = 1200")))
    assert plan_segments(cfg, role="client", tunnel_mtu=1420)[0].mtu == 1200


def test_plan_vlans_share_a_tap() -> None:
    cfg = parse_config(conf(seg(100, "trunk0", "VLAN = 10") + seg(200, "trunk0", "VLAN = 20", "Bridge = br0")))
    (tp,) = plan_segments(cfg, role="client", tunnel_mtu=1420)
    assert not tp.trunk and tp.bridge == "br0" and [s.vni for s in tp.segments] == [100, 200]
    vm = tp.vlan_map()
    assert vm is not None and vm.untagged is None
    assert vm.to_vni(tagged(BCAST, mac(1), 20)) == (200, eth(BCAST, mac(1), b"tagged"))
    assert vm.to_vni(eth(BCAST, mac(1))) is None
    # one segment with VLAN on its own tap: only that VLAN passes, untagged on the inside
    (tp,) = plan_segments(parse_config(conf(seg(100, "t0", "VLAN = 10"))), role="client", tunnel_mtu=1420)
    assert not tp.trunk and tp.vlan_map() is not None


@pytest.mark.parametrize("segments", [
    seg(100, "t0") + seg(200, "t0"),
    seg(100, "t0", "VLAN = 5") + seg(200, "t0", "VLAN = 5"),
    seg(100, "t0", "VLAN = 5", "Bridge = a") + seg(200, "t0", "VLAN = 6", "Bridge = b"),
    seg(100, "t0", "Mode = plain", "Local = 198.18.0.1", "Remote = fd00::2"),
])
def test_plan_errors(segments: str) -> None:
    # the config parser catches some of these first (ConfigError), the planner the rest (L2ConfigError)
    with pytest.raises(ValueError):
        plan_segments(parse_config(conf(segments)), role="client", tunnel_mtu=1420)


def test_plan_errors_the_parser_lets_through() -> None:
    cfg = parse_config(conf(seg(100, "t0", "VLAN = 5", "Bridge = a") + seg(200, "t0", "VLAN = 6", "Bridge = b")))
    with pytest.raises(L2ConfigError, match="different bridges"):
        plan_segments(cfg, role="client", tunnel_mtu=1420)


def test_plan_tunnel_mode_needs_an_address() -> None:
    with pytest.raises(L2ConfigError, match="needs an interface Address"):
        plan_segments(parse_config(conf(seg(100, "t0"), address="")), role="client", tunnel_mtu=1420)


def test_plan_tiny_tunnel_mtu_is_an_error() -> None:
    with pytest.raises(L2ConfigError, match="below 68"):
        plan_segments(parse_config(conf(seg(100, "t0"))), role="client", tunnel_mtu=100)


# -- whole devices over fakes ----------------------------------------------------------------------------------
class Node:
    """A Device on a MemoryNetwork with an L2 runtime on MemoryTun taps, built from a real config text."""

    def __init__(self, net: MemoryNetwork, index: int, text: str, *, role: str, vnet: bool = False) -> None:
        self.index = index
        self.cfg = parse_config(text)
        self.tun = MemoryTun(f"wg{index}")
        self.udp = net.endpoint(f"198.18.0.{index + 1}", 51820)
        # Any: Device's Protocols declare settable attributes that the fakes expose as properties
        fakes: dict[str, Any] = {"tun": self.tun, "udp": self.udp}
        self.dev = Device(**fakes, private_key=self.cfg.interface.private_key)
        for p in self.cfg.peers:
            self.dev.add_peer(p.public_key, allowed_ips=[str(n) for n in p.allowed_ips], name=p.name,
                              endpoint=p.endpoint)
        self.plans = plan_segments(self.cfg, role=role, tunnel_mtu=1420)
        # vnet: taps as open_segments opens them (virtio_net_hdr on every buffer, TSO/checksum offloads)
        self.taps = {tp.name: MemoryTun(tp.name, tp.mtu, tap=True, vnet_hdr=vnet,
                                        offloads=("csum", "tso4", "tso6") if vnet else ())
                     for tp in self.plans}
        self.plain: dict[tuple[str, int], MemoryUdp] = {}
        for tp in self.plans:
            for sp in tp.segments:
                if sp.plain and sp.local is not None:
                    self.plain[(sp.local, sp.port)] = net.endpoint(sp.local, sp.port)
        self.l2 = L2Runtime(self.dev, self.plans, taps=self.taps, plain_sockets=self.plain,
                            interface_addresses=[str(a) for a in self.cfg.interface.addresses],
                            peer_vteps={p.public_key: p.vtep for p in self.cfg.peers if p.vtep})

    def start(self) -> None:
        self.dev.start()
        self.l2.start()

    def close(self) -> None:
        self.l2.close()
        self.dev.close()

    def written(self, tap: str) -> list[bytes]:
        return self.taps[tap].take_written()


def star(n_clients: int, server_segments: str, client_segments: Callable[[int], str] | str, *, vnet: bool = False,
         ) -> tuple[MemoryNetwork, Node, list[Node]]:
    """A pyvpn server (index 0, 198.19.0.1) and clients 1..n (198.19.0.i+1) that know its endpoint."""
    net = MemoryNetwork()
    srv_peers = "".join(
        f"\n[Peer]\n#pyvpn Name = c{i}\nPublicKey = {encode_key(PUBS[i])}\nAllowedIPs = 198.19.0.{i + 1}/32\n"
        for i in range(1, n_clients + 1))
    server = Node(net, 0, f"[Interface]\nPrivateKey = {encode_key(KEYS[0])}\nAddress = 198.19.0.1/24\n"
                  + srv_peers + server_segments, role="server", vnet=vnet)
    clients = []
    for i in range(1, n_clients + 1):
        segs = client_segments(i) if callable(client_segments) else client_segments
        clients.append(Node(net, i, f"[Interface]\nPrivateKey = {encode_key(KEYS[i])}\n"
                            f"Address = 198.19.0.{i + 1}/24\n\n[Peer]\n#pyvpn Name = srv\n"
                            f"PublicKey = {encode_key(PUBS[0])}\nEndpoint = 198.18.0.1:51820\n"
                            f"AllowedIPs = 198.19.0.0/24\n" + segs, role="client", vnet=vnet))
    return net, server, clients


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.005)
    return bool(pred())


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0.002)


def run_nodes(nodes: Sequence[Node], body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        for n in nodes:
            n.start()
        try:
            await body()
        finally:
            for n in nodes:
                n.close()

    asyncio.run(main())


async def handshake(server: Node, clients: Sequence[Node], tap: str = "tap100") -> None:
    """Each client announces a MAC with a broadcast; wait until the server's switch learned it."""
    for c in clients:
        c.taps[tap].inject([eth(BCAST, mac(c.index), b"announce")])
    assert await until(lambda: len(server.l2.switch(100).table) >= len(clients))
    await settle()
    for n in (server, *clients):
        for t in n.taps.values():
            t.take_written()


def test_frames_cross_both_ways_and_macs_are_learned() -> None:
    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"))

    async def body() -> None:
        f1 = eth(BCAST, mac(1), b"who-has")
        cli.taps["tap100"].inject([f1])
        assert await until(lambda: f1 in srv.taps["tap100"].written)
        f2 = eth(mac(1), mac(9), b"is-at" * 100)
        srv.taps["tap100"].inject([f2])
        assert await until(lambda: f2 in cli.taps["tap100"].written)
        assert srv.l2.switch(100).table.lookup(mac(1), now=asyncio.get_running_loop().time()) == PUBS[1]
        assert cli.l2.switch(100).table.lookup(mac(9), now=asyncio.get_running_loop().time()) == PUBS[0]
        assert srv.tun.written == [] and cli.tun.written == []  # nothing leaked to the L3 tun
        snap = srv.dev.snapshot()
        (s,) = snap["segments"]
        assert (s["vni"], s["tap"], s["macs"], s["plain"], s["hub"], s["mtu"], s["peers"]) == (
            100, "tap100", 2, False, True, 1370, ["c1"])
        assert cli.dev.snapshot()["segments"][0]["hub"] is False

    run_nodes([srv, cli], body)


def test_hub_relays_once_to_each_other_client_and_never_back() -> None:
    _, srv, clients = star(3, seg(100, "tap100"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, clients)
        c1, c2, c3 = clients
        frames = [eth(BCAST, mac(1), b"bcast %d" % i) for i in range(10)]
        c1.taps["tap100"].inject(frames)
        assert await until(lambda: all(len(n.taps["tap100"].written) >= 10 for n in (srv, c2, c3)))
        await settle()
        for n in (srv, c2, c3):
            assert n.written("tap100") == frames  # exactly once, in order
        assert c1.written("tap100") == []  # split horizon: never back to the sender
        # unicast between spokes goes through the hub's table, to that spoke only
        f = eth(mac(3), mac(2), b"spoke to spoke")
        c2.taps["tap100"].inject([f])
        assert await until(lambda: f in c3.taps["tap100"].written)
        await settle()
        assert c3.written("tap100") == [f]
        assert srv.written("tap100") == [] and c1.written("tap100") == []
        assert srv.l2.switch(100).counters["unicast"] >= 1

    run_nodes([srv, *clients], body)


def test_vni_isolation_and_membership() -> None:
    # VNI 200 on the server lists c1 only; c2 configures VNI 200 anyway and must not get in.
    srv_segs = seg(100, "tap100") + seg(200, "tap200", "Peers = c1")
    _, srv, (c1, c2) = star(2, srv_segs, seg(100, "tap100") + seg(200, "tap200"))

    async def body() -> None:
        await handshake(srv, [c1, c2])
        f100 = eth(BCAST, mac(1), b"vni 100 only")
        c1.taps["tap100"].inject([f100])
        assert await until(lambda: f100 in c2.taps["tap100"].written)
        await settle()
        assert srv.written("tap200") == [] and c2.written("tap200") == []
        f200 = eth(BCAST, mac(2), b"intruder")
        c2.taps["tap200"].inject([f200])
        assert await until(lambda: srv.dev.drop_counts()["l2_vni_not_member"] >= 1)
        await settle()
        assert srv.written("tap200") == [] and c1.written("tap200") == []
        f200ok = eth(BCAST, mac(1), b"member")
        c1.taps["tap200"].inject([f200ok])
        assert await until(lambda: f200ok in srv.taps["tap200"].written)
        await settle()
        assert c2.written("tap200") == []  # the hub never floods VNI 200 to a non-member
        assert srv.written("tap100") == [f100]
        assert srv.l2.switch(200).peers == (PUBS[1],)
        assert "l2_vni_not_member" in srv.dev.snapshot()["drops"]

    run_nodes([srv, c1, c2], body)


def test_unknown_vni_bad_vxlan_and_plain_udp_to_the_vtep() -> None:
    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, [cli])
        frame = eth(BCAST, mac(1))
        # built by hand and sent through the client's L3 tun, so it arrives as ordinary tunnel traffic
        unknown = encap_ip(frame, vni=4242, src_ip=socket.inet_aton("198.19.0.2"),
                           dst_ip=socket.inet_aton("198.19.0.1"))
        bad = bytearray(encap_ip(frame, vni=100, src_ip=socket.inet_aton("198.19.0.2"),
                                 dst_ip=socket.inet_aton("198.19.0.1")))
        bad[28] = 0  # VXLAN flags: I bit clear
        other_port = ipv4_udp("198.19.0.2", "198.19.0.1", b"dns?", 53)
        to_4789_elsewhere = ipv4_udp("198.19.0.2", "198.19.0.1", pack_header(100) + frame, 4790)
        cli.tun.inject([unknown, bytes(bad), other_port, to_4789_elsewhere])
        assert await until(lambda: len(srv.tun.written) >= 2)
        await settle()
        assert srv.tun.written == [other_port, to_4789_elsewhere]  # not ours: to the tun as before
        drops = srv.dev.drop_counts()
        assert drops["l2_unknown_vni"] == 1 and drops["l2_bad_vxlan"] == 1
        assert srv.written("tap100") == []

    run_nodes([srv, cli], body)


def test_vlan_map_strips_and_adds_tags_and_trunk_passes_them() -> None:
    # server: one trunk tap carrying VNI 100 as VLAN 10 and VNI 200 as VLAN 20;
    # client: VNI 100 on an untagged tap, VNI 200 on a trunk tap (tags pass unchanged).
    srv_segs = seg(100, "trunk0", "VLAN = 10") + seg(200, "trunk0", "VLAN = 20")
    _, srv, (cli,) = star(1, srv_segs, seg(100, "tap100") + seg(200, "tap200"))

    async def body() -> None:
        await handshake(srv, [cli])  # the server learns the client's endpoint
        trunk = srv.taps["trunk0"]
        trunk.inject([tagged(BCAST, mac(9), 10, b"ten"), tagged(BCAST, mac(9), 20, b"twenty"),
                      tagged(BCAST, mac(9), 30, b"unmapped"), eth(BCAST, mac(9), b"untagged")])
        assert await until(lambda: bool(cli.taps["tap100"].written and cli.taps["tap200"].written))
        await settle()
        assert cli.written("tap100") == [eth(BCAST, mac(9), b"ten")]
        assert cli.written("tap200") == [eth(BCAST, mac(9), b"twenty")]
        assert srv.dev.drop_counts()["l2_unmapped_vlan"] == 2
        # the client's trunk passes its tag; the server maps VLANs on trunk0, so a peer's own tag is dropped
        # (counted) rather than nested under VLAN 20
        cli.taps["tap200"].inject([tagged(mac(9), mac(1), 77, b"peer's own tag")])
        cli.taps["tap100"].inject([eth(mac(9), mac(1), b"back on ten")])
        assert await until(lambda: len(trunk.written) >= 1 and srv.dev.drop_counts()["l2_peer_vlan_tag"] == 1)
        await settle()
        assert trunk.take_written() == [tagged(mac(9), mac(1), 10, b"back on ten")]

    run_nodes([srv, cli], body)


def test_plain_mode_over_the_underlay() -> None:
    net = MemoryNetwork()
    a_text = conf(seg(100, "vx0", "Mode = plain", "Local = 198.18.1.1", "Remote = 198.18.1.2"))
    b_text = conf(seg(100, "vx0", "Mode = plain", "Local = 198.18.1.2", "Remote = 198.18.1.1"), peers=())
    a, b = Node(net, 0, a_text, role="server"), Node(net, 1, b_text, role="client")
    stranger = net.endpoint("198.18.1.66", 4789)

    async def body() -> None:
        f = eth(BCAST, mac(1), b"plain")
        a.taps["vx0"].inject([f])
        assert await until(lambda: f in b.taps["vx0"].written)
        g = eth(mac(1), mac(2), b"reply")
        b.taps["vx0"].inject([g])
        assert await until(lambda: g in a.taps["vx0"].written)
        stranger.send_batch(("198.18.1.2", 4789), [pack_header(100) + eth(BCAST, mac(66))])
        stranger.send_batch(("198.18.1.2", 4789), [b"\x00" * 8 + eth(BCAST, mac(66))])
        stranger.send_batch(("198.18.1.2", 4789), [pack_header(5) + eth(BCAST, mac(66))])
        assert await until(lambda: sum(b.dev.drop_counts()[k] for k in (
            "l2_plain_unknown_source", "l2_bad_vxlan", "l2_unknown_vni")) == 3)
        assert b.written("vx0") == [f]
        (s,) = b.dev.snapshot()["segments"]
        assert s["plain"] is True and s["macs"] == 2 and s["peers"] == ["198.18.1.1:4789"]
        assert a.dev.peers and not a.l2.vteps  # no tunnel segment: the device hook stays idle

    run_nodes([a, b], body)


def test_plain_datagram_is_rfc7348() -> None:
    net = MemoryNetwork()
    a = Node(net, 0, conf(seg(0x123456, "vx0", "Mode = plain", "Local = 198.18.1.1", "Remote = 198.18.1.9:4790")),
             role="client")
    seen: list[bytes] = []
    sink = net.endpoint("198.18.1.9", 4790)

    async def body() -> None:
        f = eth(BCAST, mac(1), b"raw")
        a.taps["vx0"].inject([f])
        assert await until(lambda: sink.queued == 1)
        ((datagrams, src),) = sink.recv_batch(10)
        seen.extend(datagrams)
        assert src == ("198.18.1.1", 4789)
        assert seen == [bytes.fromhex("08000000 12345600") + f]

    run_nodes([a], body)


def test_peers_added_and_removed_at_runtime() -> None:
    _, srv, (c1, c2) = star(2, seg(100, "tap100"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, [c1, c2])
        srv.dev.remove_peer(PUBS[2])
        srv.l2.sync_peers()
        assert srv.l2.switch(100).peers == (PUBS[1],)
        assert mac(2) not in {m for m, _, _ in srv.l2.switch(100).table.entries(now=asyncio.get_running_loop().time())}
        f = eth(BCAST, mac(1), b"after removal")
        c1.taps["tap100"].inject([f])
        assert await until(lambda: f in srv.taps["tap100"].written)
        await settle()
        assert c2.written("tap100") == []
        srv.dev.add_peer(PUBS[2], allowed_ips=["198.19.0.3/32"], name="c2")
        srv.l2.sync_peers()
        assert srv.l2.switch(100).peers == (PUBS[1], PUBS[2])

    run_nodes([srv, c1, c2], body)


def test_runtime_without_a_socket_for_a_plain_segment_is_a_config_error() -> None:
    net = MemoryNetwork()
    cfg = parse_config(conf(seg(100, "vx0", "Mode = plain", "Local = 198.18.1.1", "Remote = 198.18.1.2")))
    plans: Sequence[TapPlan] = plan_segments(cfg, role="client", tunnel_mtu=1420)
    fakes: dict[str, Any] = {"tun": MemoryTun("wgx"), "udp": net.endpoint("198.18.0.1", 1)}
    dev = Device(**fakes, private_key=KEYS[0])
    with pytest.raises(L2ConfigError, match="no socket"):
        L2Runtime(dev, plans, taps={"vx0": MemoryTun("vx0", tap=True)}, plain_sockets={})
    dev.close()


def test_random_garbage_from_the_tap_and_from_peers_never_raises() -> None:
    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"))
    rng = __import__("random").Random(7)

    async def body() -> None:
        await handshake(srv, [cli])
        junk = [rng.randbytes(rng.randrange(0, 80)) for _ in range(200)]
        cli.taps["tap100"].inject([j for j in junk if j])
        # garbage behind a valid VXLAN header, and truncated VXLAN packets, via the L3 tun
        src, dst = socket.inet_aton("198.19.0.2"), socket.inet_aton("198.19.0.1")
        pkts = []
        for j in junk[:100]:
            p = encap_ip(j.ljust(14, b"\x00"), vni=100, src_ip=src, dst_ip=dst)
            pkts.append(p[: rng.randrange(28, len(p) + 1)])
        cli.tun.inject(pkts)
        await asyncio.sleep(0.2)
        assert srv.dev.snapshot()["segments"][0]["vni"] == 100
        assert sum(srv.dev.drop_counts().values()) > 0

    run_nodes([srv, cli], body)



def test_mac_limit_and_aging_use_the_loop_clock() -> None:
    _, srv, (cli,) = star(1, seg(100, "tap100", "MacLimit = 2", "MacAge = 1"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, [cli])  # the server learned mac(1) behind the client
        srv.taps["tap100"].inject([eth(BCAST, mac(20 + i)) for i in range(3)])
        assert await until(lambda: srv.l2.switch(100).table.counters["refused"] == 2)
        assert srv.dev.snapshot()["segments"][0]["macs"] == 2
        await asyncio.sleep(1.05)
        assert srv.dev.snapshot()["segments"][0]["macs"] == 0  # aged out (shown as live entries only)
        srv.l2._last_expire -= 10  # the next housekeeping sweep is due
        srv.l2._housekeeping()
        assert len(srv.l2.switch(100).table) == 0

    run_nodes([srv, cli], body)


# -- untrusted members ---------------------------------------------------------------------------------------------
def test_a_member_cannot_hijack_a_local_mac_and_claims_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    _, srv, (c1, c2) = star(2, seg(100, "tap100"), seg(100, "tap100"))
    gw = mac(0xFE)

    async def body() -> None:
        await handshake(srv, [c1, c2])
        srv.taps["tap100"].inject([eth(BCAST, gw, b"gateway arp")])  # the hub LAN's gateway
        assert await until(lambda: all(n.taps["tap100"].written for n in (c1, c2)))
        await settle()
        c1.written("tap100"), c2.written("tap100")
        forged = [eth(BCAST, gw, b"i am the gateway %d" % i) for i in range(5)]
        c1.taps["tap100"].inject(forged)
        assert await until(lambda: srv.dev.drop_counts()["l2_local_mac_claim"] == 5)
        await settle()
        assert srv.written("tap100") == [] and c2.written("tap100") == []  # neither delivered nor relayed
        now = asyncio.get_running_loop().time()
        assert srv.l2.switch(100).table.lookup(gw, now=now) == "local"
        # LAN traffic for the gateway still stays on the LAN (nothing goes to c1)
        srv.taps["tap100"].inject([eth(gw, mac(0xF0), b"to the gateway")])
        await settle()
        assert c1.written("tap100") == [] and srv.l2.switch(100).counters["drop_local_destination"] == 1
        with caplog.at_level(logging.WARNING, logger="pyvpn.l2"):
            srv.l2._housekeeping()
        assert f"peer c1 claimed MAC {gw.hex(':')} of the local LAN (5 times)" in caplog.text
        assert "l2_local_mac_claim" in srv.dev.snapshot()["drops"]
        # pyvpn show: the drop reason and the quota
        console = Console(file=io.StringIO(), width=200)
        render([srv.dev.snapshot()], console)
        text = console.file.getvalue()
        assert "l2_local_mac_claim" in text and "MACs learned (at most 256 per peer)" in text, text

    run_nodes([srv, c1, c2], body)


def test_mac_moves_between_members_are_damped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    _, srv, (c1, c2) = star(2, seg(100, "tap100"), seg(100, "tap100"))
    m = mac(0x77)

    async def body() -> None:
        await handshake(srv, [c1, c2])
        sw = srv.l2.switch(100)
        # the MAC roams c1, c2, c1, c2, c1, c2 (5 moves at the hub), then c1 claims it twice more
        for i, node in enumerate((c1, c2, c1, c2, c1, c2, c1, c1)):
            seen = sw.counters["flood_group"] + sw.counters["drop_mac_move_limited"]
            node.taps["tap100"].inject([eth(BCAST, m, b"roam %d" % i)])
            assert await until(lambda s=seen: sw.counters["flood_group"] + sw.counters["drop_mac_move_limited"] > s)
        # 5 moves are allowed (RFC 7432 defaults), the next claims are refused and it stays on c2
        assert sw.table.counters["moved"] == 5 and sw.counters["drop_mac_move_limited"] == 2
        assert sw.table.lookup(m, now=asyncio.get_running_loop().time()) == PUBS[2]
        with caplog.at_level(logging.WARNING, logger="pyvpn.l2"):
            srv.l2._housekeeping()
        assert f"MAC {m.hex(':')} moved from peer c1 to peer c2 (3 times)" in caplog.text
        assert f"MAC {m.hex(':')} moves too often" in caplog.text
        assert srv.dev.drop_counts()["l2_mac_move_limited"] == 2

    run_nodes([srv, c1, c2], body)


def test_segment_storm_control_bounds_what_the_hub_replicates() -> None:
    _, srv, clients = star(3, seg(100, "tap100", "BroadcastRate = 5", "BroadcastBurst = 10",
                                  "BroadcastRatePerPeer = 0"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, clients)  # 3 announcements: 3 of the 10 tokens
        for c in clients:
            c.taps["tap100"].inject([eth(BCAST, mac(c.index), b"storm %d" % i) for i in range(20)])
        assert await until(lambda: srv.dev.drop_counts()["l2_broadcast_rate_segment"] >= 50)
        await settle()
        got = len(srv.written("tap100"))
        drops = srv.dev.drop_counts()["l2_broadcast_rate_segment"]
        assert got + drops == 60 and 7 <= got <= 9, (got, drops)  # 7 tokens left, plus 5/s of refill
        # the tap of the hub is not limited
        srv.taps["tap100"].inject([eth(BCAST, mac(0x50), b"lan %d" % i) for i in range(30)])
        assert await until(lambda: all(len(c.taps["tap100"].written) >= 30 for c in clients))

    run_nodes([srv, *clients], body)


def test_a_member_cannot_inject_into_a_mapped_vlan() -> None:
    # server: VNI 100 as VLAN 10 and VNI 200 as VLAN 20 on one trunk tap; the client's VNI 100 tap is a trunk,
    # so a tagged frame goes out as is.  Before, a frame tagged 20 came out of trunk0 as VLAN 10 ‖ VLAN 20:
    # the double-tagging VLAN hop (the first switch that strips VLAN 10 puts it into VLAN 20).
    _, srv, (cli,) = star(1, seg(100, "trunk0", "VLAN = 10") + seg(200, "trunk0", "VLAN = 20"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, [cli])
        trunk = srv.taps["trunk0"]
        trunk.take_written()
        cli.taps["tap100"].inject([tagged(BCAST, mac(1), 20, b"into vlan 20"), tagged(BCAST, mac(1), 0, b"prio"),
                                   mac(2) + mac(1) + bytes.fromhex("88a80014") + b"s-tag",
                                   eth(BCAST, mac(1), b"plain")])
        assert await until(lambda: len(trunk.written) >= 1)
        await settle()
        assert trunk.take_written() == [tagged(BCAST, mac(1), 10, b"plain")]
        assert srv.dev.drop_counts()["l2_peer_vlan_tag"] == 3
        assert srv.dev.snapshot()["segments"][0]["untagged_only"] is True

    run_nodes([srv, cli], body)


# -- tap offloads: vnet-hdr taps, TSO super-frames read, GRO super-frames written --------------------------------
def tcp_frames(n: int, *, size: int = 1300, seq: int = 1000, src: bytes = mac(1), dst: bytes = mac(9)) -> list[bytes]:
    """``n`` in-order, full-size segments of one IPv4 TCP flow (valid checksums) as Ethernet frames."""
    return [packets.eth(packets.ipv4("198.19.100.1", "198.19.100.2", packets.TCP,
                                     packets.tcp(40000, 5201, bytes([i & 0xFF]) * size, seq=seq + i * size, ack=77,
                                                 window=512), ident=i, l4_csum="full"), dst=dst, src=src)
            for i in range(n)]


async def vnet_handshake(srv: Node, cli: Node) -> None:
    """The session comes up, the server learns mac(1) behind the client and the client mac(9) behind it."""
    cli.taps["tap100"].inject([bytes(10) + eth(BCAST, mac(1), b"i am 1")])
    assert await until(lambda: len(srv.taps["tap100"].written) >= 1)
    srv.taps["tap100"].inject([bytes(10) + eth(mac(1), mac(9), b"i am 9")])
    assert await until(lambda: len(cli.taps["tap100"].written) >= 1)
    for t in (srv.taps["tap100"], cli.taps["tap100"]):
        t.take_written()


def test_vnet_taps_cut_tso_super_frames_and_write_gro_super_frames() -> None:
    """A TSO super-frame read from the client's tap crosses as MTU-sized frames (VXLAN in the tunnel) and
    reaches the server's tap coalesced again: fewer writes than frames, each a valid GSO write, whose
    segments are exactly the frames; the switch counts every frame of a run."""
    from tunnel.offload import VIRTIO_NET_HDR_GSO_TCPV4, VirtioNetHdr, gro_frames, segment

    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"), vnet=True)

    async def body() -> None:
        await vnet_handshake(srv, cli)
        frames = tcp_frames(40)
        (super_frame,) = gro_frames(frames)  # exactly what a TSO tap read looks like
        assert VirtioNetHdr.unpack(super_frame).gso_type == VIRTIO_NET_HDR_GSO_TCPV4
        cli.taps["tap100"].inject([super_frame])
        tap = srv.taps["tap100"]
        assert await until(lambda: sum(len(segment(b, l2=True)) for b in tap.written) >= len(frames))
        await settle()
        written = tap.take_written()
        assert [f for b in written for f in segment(b, l2=True)] == frames
        assert len(written) < len(frames)
        assert any(VirtioNetHdr.unpack(b).gso_type == VIRTIO_NET_HDR_GSO_TCPV4 for b in written)
        assert srv.l2.switch(100).counters["local"] == len(frames)
        assert cli.l2.switch(100).counters["unicast"] == len(frames)
        assert "tun:gro" in srv.dev.snapshot()["segments"][0]["offloads"]
        assert not srv.dev.drop_counts()

    run_nodes([srv, cli], body)


def test_vnet_tap_falls_back_to_frame_writes_when_gso_writes_are_refused() -> None:
    from tunnel.offload import VirtioNetHdr

    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"), vnet=True)
    tap = srv.taps["tap100"]
    plain_write = tap.write_batch

    def refuse_gso(bufs: list[bytes]) -> int:  # a kernel that takes no GSO writes on this tap
        ok = [b for b in bufs if VirtioNetHdr.unpack(b).gso_type == 0]
        tap.write_errors["EINVAL"] += len(bufs) - len(ok)
        return plain_write(ok)

    tap.write_batch = refuse_gso  # type: ignore[method-assign]

    async def body() -> None:
        await vnet_handshake(srv, cli)
        cli.taps["tap100"].inject([bytes(10) + f for f in tcp_frames(20)])
        assert await until(lambda: "tun:gro" not in srv.dev.snapshot()["segments"][0]["offloads"])
        later = tcp_frames(20, seq=1000 + 20 * 1300)
        cli.taps["tap100"].inject([bytes(10) + f for f in later])
        assert await until(lambda: [b[10:] for b in tap.written][-20:] == later)
        assert srv.dev.drop_counts()["l2_tap_write_EINVAL"] >= 1

    run_nodes([srv, cli], body)


def test_batches_to_the_vtep_in_bulk_unknown_vni_and_not_vxlan() -> None:
    """Batches of one address pair to our VTEP take the device's one-flow path: VXLAN of an unknown VNI is
    counted per packet, UDP to another port still reaches the tun, in order."""
    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"))

    async def body() -> None:
        await handshake(srv, [cli])
        vtep_a, vtep_b = socket.inet_aton("198.19.0.2"), socket.inet_aton("198.19.0.1")
        cli.tun.inject([encap_ip(f, vni=4242, src_ip=vtep_a, dst_ip=vtep_b) for f in tcp_frames(6)])
        assert await until(lambda: srv.dev.drop_counts()["l2_unknown_vni"] == 6)
        dns = [ipv4_udp("198.19.0.2", "198.19.0.1", b"q%d" % i, 53) for i in range(6)]
        cli.tun.inject(dns)
        assert await until(lambda: len(srv.tun.written) >= 6)
        assert srv.tun.written == dns
        frames = tcp_frames(6, src=mac(1), dst=mac(9))
        srv.taps["tap100"].inject([eth(mac(1), mac(9), b"9 is here")])
        assert await until(lambda: len(cli.taps["tap100"].written) >= 1)
        cli.tun.inject([encap_ip(f, vni=100, src_ip=vtep_a, dst_ip=vtep_b) for f in frames])
        assert await until(lambda: len(srv.taps["tap100"].written) >= 6)
        assert srv.written("tap100") == frames

    run_nodes([srv, cli], body)


def test_garbage_from_a_vnet_tap_is_counted_never_raised() -> None:
    """Reads from a vnet-hdr tap that are too short or carry a malformed GSO header are dropped and counted
    (``l2_tap_bad_offload``); the valid frames around them still cross."""
    from tunnel.offload import VirtioNetHdr

    _, srv, (cli,) = star(1, seg(100, "tap100"), seg(100, "tap100"), vnet=True)
    rng = __import__("random").Random(8)

    async def body() -> None:
        await vnet_handshake(srv, cli)
        bad_gso = VirtioNetHdr(1, 1, 54, 1000, 34, 16).pack() + eth(mac(9), mac(1), b"not ip at all")
        junk = [rng.randbytes(rng.randrange(0, 10)) for _ in range(20)] + [bad_gso] * 3
        good = tcp_frames(5)
        cli.taps["tap100"].inject([j for j in junk if j] + [bytes(10) + f for f in good])
        tap = srv.taps["tap100"]
        assert await until(lambda: sum(len(segment(b, l2=True)) for b in tap.written) >= len(good))
        assert [f for b in tap.take_written() for f in segment(b, l2=True)] == good
        assert cli.dev.drop_counts()["l2_tap_bad_offload"] == len([j for j in junk if j])

    from tunnel.offload import segment

    run_nodes([srv, cli], body)
