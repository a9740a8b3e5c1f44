"""Two (or four) full Devices over in-memory tun and UDP fakes: no root, real event loops.

Shaped like wireguard-go's ``genTestPair``: ping both ways, a hub forwarding between clients
inside the daemon, the cryptokey ACL on the way in, and no leaked tasks or readers.  Every
test runs on the stock asyncio loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

import pytest
import uvloop
from rich.console import Console

from crypto.constants import REKEY_AFTER_TIME
from crypto.keys import private_from_random, public_from_private
from tunnel.testing import MemoryNetwork, MemoryTun
from vpn.daemon import rekey_after_time_from_env
from vpn.device import Device
from vpn.stall import LoopWatchdog, StallDetector
from vpn.status import render, to_jsonable
from vpn.testlab.differential import check_bulk_matches_loop, random_batches
from vpn.testlab.packets import UDP, ipv4, ipv6, udp


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    def runner(coro):  # type: ignore[no-untyped-def]
        if request.param == "uvloop":
            return uvloop.run(coro)
        return asyncio.run(coro)

    return runner


def ipv4_udp(src: str, dst: str, payload: bytes, sport: int = 1000, dport: int = 2000, *, ttl: int = 64,
             ident: int = 0) -> bytes:
    return ipv4(src, dst, UDP, udp(sport, dport, payload), ttl=ttl, ident=ident)


def ipv6_udp(src: str, dst: str, payload: bytes, *, hops: int = 64) -> bytes:
    return ipv6(src, dst, UDP, udp(1000, 2000, payload), hops=hops)


class Node:
    def __init__(self, net: MemoryNetwork, host: str, port: int, name: str, *, forward: bool = False) -> None:
        self.priv = private_from_random(os.urandom(32))
        self.pub = public_from_private(self.priv)
        self.tun = MemoryTun(name)
        self.udp = net.endpoint(host, port)
        self.addr = (host, port)
        self.dev = Device(tun=self.tun, udp=self.udp, private_key=self.priv, forward=forward)


def start_hub(n_clients: int, *, forward: bool = False, v6: bool = False) -> tuple[Node, list[Node]]:
    """A hub (``forward`` as given) and ``n_clients`` clients 100.64.0.2... (and fd00::2... with ``v6``), started
    on the running loop."""
    net = MemoryNetwork()
    hub = Node(net, "198.18.0.1", 51820, "hub", forward=forward)
    clients = [Node(net, f"198.18.0.{i + 2}", 51820, f"c{i}") for i in range(n_clients)]
    for i, c in enumerate(clients):
        hub.dev.add_peer(c.pub, allowed_ips=[f"100.64.0.{i + 2}/32", *([f"fd00::{i + 2}/128"] if v6 else [])])
        c.dev.add_peer(hub.pub, allowed_ips=["100.64.0.0/24", *(["fd00::/64"] if v6 else [])], endpoint=hub.addr,
                       persistent_keepalive=25)
    for n in (hub, *clients):
        n.dev.start()
    return hub, clients


async def until(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.005)
    return bool(pred())


def test_ping_both_ways_v4_v6(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        net = MemoryNetwork()
        a, b = Node(net, "198.18.0.1", 51820, "a0"), Node(net, "198.18.0.2", 51820, "b0")
        a.dev.add_peer(b.pub, allowed_ips=["100.64.0.2/32", "fd00::2/128"], endpoint=b.addr)
        b.dev.add_peer(a.pub, allowed_ips=["100.64.0.1/32", "fd00::1/128"])
        a.dev.start()
        b.dev.start()
        try:
            p1 = ipv4_udp("100.64.0.1", "100.64.0.2", b"hello")
            a.tun.inject([p1])
            assert await until(lambda: p1 in b.tun.written)
            p2 = ipv4_udp("100.64.0.2", "100.64.0.1", b"back" * 100)
            b.tun.inject([p2])
            assert await until(lambda: p2 in a.tun.written)
            p3 = ipv6_udp("fd00::1", "fd00::2", b"six" * 7)
            a.tun.inject([p3])
            assert await until(lambda: p3 in b.tun.written)
            # a batch keeps its order
            batch = [ipv4_udp("100.64.0.1", "100.64.0.2", bytes([i]) * (i + 1)) for i in range(100)]
            a.tun.inject(batch)
            assert await until(lambda: all(p in b.tun.written for p in batch))
            got = [p for p in b.tun.written if p in batch]
            assert got == batch
            snap = a.dev.snapshot()
            assert snap["peers"][0]["tx_bytes"] > 0 and snap["peers"][0]["latest_handshake"] > 0
        finally:
            a.dev.close()
            b.dev.close()
        assert len(asyncio.all_tasks()) == 1  # only main(): nothing leaked

    run(main())


def test_hub_forwards_between_clients_and_drops_spoofed(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        hub, clients = start_hub(3, forward=True)
        try:
            assert await until(lambda: all(p.tunnel.has_session for p in hub.dev.peers.values()))
            c0, c1, c2 = clients
            pkt = ipv4_udp("100.64.0.2", "100.64.0.3", b"c0->c1")
            hopped = ipv4_udp("100.64.0.2", "100.64.0.3", b"c0->c1", ttl=63)  # a router's TTL - 1
            c0.tun.inject([pkt])
            assert await until(lambda: hopped in c1.tun.written)
            assert pkt not in hub.tun.written  # forwarded inside the daemon, not via the kernel
            assert pkt not in c1.tun.written
            # TTL 1 cannot take another hop: dropped and counted, like a router
            c0.tun.inject([ipv4_udp("100.64.0.2", "100.64.0.3", b"last hop", ttl=1)])
            assert await until(lambda: hub.dev.drops["ttl_exceeded"] == 1)
            # c2 claims c0's address: dropped by the hub's ACL and counted
            spoof = ipv4_udp("100.64.0.2", "100.64.0.1", b"spoof")
            c2.tun.inject([spoof])
            assert await until(lambda: hub.dev.drops["spoofed_source"] >= 1)
            assert spoof not in hub.tun.written
            peer2 = hub.dev.peers[c2.pub]
            assert peer2.drops["spoofed_source"] == 1
            # kernel route path: with forwarding off, the packet goes to the hub's tun
            hub.dev.forward = False
            pkt2 = ipv4_udp("100.64.0.3", "100.64.0.4", b"c1->c2 via kernel")
            c1.tun.inject([pkt2])
            assert await until(lambda: pkt2 in hub.tun.written)
        finally:
            for n in (hub, *clients):
                n.dev.close()

    run(main())


def test_hub_batches_of_one_flow(run) -> None:  # type: ignore[no-untyped-def]
    """Batches of one address pair take Device._route_flow (one ACL lookup): forwarding (TTL and hop
    limit decremented exactly as by the per-packet loop), spoofed sources (every packet counted), mixed
    batches (the per-packet loop) and the kernel route."""

    async def main() -> None:
        hub, clients = start_hub(3, forward=True, v6=True)
        try:
            assert await until(lambda: all(p.tunnel.has_session for p in hub.dev.peers.values()))
            c0, c1, c2 = clients
            peer2 = hub.dev.peers[c2.pub]
            taken: list[bool] = []
            inner = hub.dev._route_flow

            def spy(*args):  # type: ignore[no-untyped-def]
                taken.append(inner(*args))
                return taken[-1]

            hub.dev._route_flow = spy  # type: ignore[method-assign]
            fwd = [ipv4_udp("100.64.0.2", "100.64.0.3", b"c0->c1 %d" % i, ident=i * 4099) for i in range(6)]
            hopped = [ipv4_udp("100.64.0.2", "100.64.0.3", b"c0->c1 %d" % i, ident=i * 4099, ttl=63)
                      for i in range(6)]
            c0.tun.inject(fwd)
            assert await until(lambda: all(p in c1.tun.written for p in hopped))
            assert not set(fwd) & (set(hub.tun.written) | set(c1.tun.written))
            n_bulk = taken.count(True)
            assert n_bulk >= 1
            fwd6 = [ipv6_udp("fd00::2", "fd00::3", b"six fwd %d" % i) for i in range(6)]
            c0.tun.inject(fwd6)
            hopped6 = [ipv6_udp("fd00::2", "fd00::3", b"six fwd %d" % i, hops=63) for i in range(6)]
            assert await until(lambda: all(p in c1.tun.written for p in hopped6))
            assert taken.count(True) > n_bulk
            # the same forwarding through the per-packet loop (two flows in one batch): the same bytes
            two = [ipv4_udp("100.64.0.2", "100.64.0.3" if i % 2 else "100.64.0.4", b"two %d" % i, ttl=9)
                   for i in range(6)]
            c0.tun.inject(two)
            want = [ipv4_udp("100.64.0.2", "100.64.0.3" if i % 2 else "100.64.0.4", b"two %d" % i, ttl=8)
                    for i in range(6)]
            assert await until(lambda: all(p in c1.tun.written for p in want[1::2])
                               and all(p in c2.tun.written for p in want[0::2]))
            assert taken[-1] is False
            # a batch at TTL 1: nothing goes on, every packet counted
            t0 = hub.dev.drops["ttl_exceeded"]
            c0.tun.inject([ipv4_udp("100.64.0.2", "100.64.0.3", b"ttl1 %d" % i, ttl=1) for i in range(6)])
            assert await until(lambda: hub.dev.drops["ttl_exceeded"] - t0 == 6)
            assert not any(b"ttl1" in p for p in c1.tun.written + hub.tun.written)
            six = [ipv6_udp("fd00::2", "fd00::1", b"six %d" % i) for i in range(6)]
            c0.tun.inject(six)
            assert await until(lambda: all(p in hub.tun.written for p in six))
            spoof = [ipv4_udp("100.64.0.2", "100.64.0.1", b"spoof %d" % i) for i in range(6)]
            d0, p0 = hub.dev.drops["spoofed_source"], peer2.drops["spoofed_source"]
            c2.tun.inject(spoof)
            assert await until(lambda: hub.dev.drops["spoofed_source"] - d0 == 6)
            assert peer2.drops["spoofed_source"] - p0 == 6
            mixed = [ipv4_udp("100.64.0.4" if i % 2 else "100.64.0.2", "100.64.0.1", b"mix %d" % i)
                     for i in range(6)]
            c2.tun.inject(mixed)
            assert await until(lambda: hub.dev.drops["spoofed_source"] - d0 == 9)
            assert await until(lambda: all(p in hub.tun.written for p in mixed[1::2]))
            assert not set(spoof + mixed[0::2]) & set(hub.tun.written)
            hub.dev.forward = False
            via = [ipv4_udp("100.64.0.3", "100.64.0.4", b"via kernel %d" % i) for i in range(6)]
            c1.tun.inject(via)
            assert await until(lambda: all(p in hub.tun.written for p in via))
            assert not set(via) & set(c2.tun.written)
            assert taken.count(True) >= 5 and False in taken  # both paths ran
        finally:
            for n in (hub, *clients):
                n.dev.close()

    run(main())


_HUB_DSTS = {4: ["100.64.0.1", "100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.99"],
             6: ["fd00::1", "fd00::2", "fd00::3", "fd00::4", "fd00::99"]}


def _hub_batch(r: random.Random) -> list[tuple[int, bytes]]:
    """One client's tun batch: ``(sender index, packet)``.  Mostly one address pair (what _route_flow
    takes), else a mix; sources mostly the sender's own (else another client's or nobody's: spoofed);
    destinations the hub, the clients (forwarded) or nobody; TTLs that allow a hop or not."""
    s = r.randrange(3)
    v = r.choice((4, 4, 6))
    dsts = _HUB_DSTS[v]
    own = dsts[s + 1]

    def pair() -> tuple[str, str]:
        src = own if r.random() < 0.8 else r.choice(dsts[1:4] + [dsts[4]])
        return src, r.choice(dsts)

    flow = pair()
    one_flow = r.random() < 0.6
    out = []
    for i in range(r.randrange(1, 13)):
        src, dst = flow if one_flow else pair()
        ttl = r.choice((64, 64, 2, 1))
        payload = r.randbytes(r.randrange(0, 200)) + i.to_bytes(2, "big")
        out.append((s, ipv4_udp(src, dst, payload, ttl=ttl) if v == 4 else ipv6_udp(src, dst, payload, hops=ttl)))
    return out


@pytest.mark.parametrize("flavour", ["asyncio", "uvloop"])
def test_route_flow_bulk_equals_the_loop(flavour: str) -> None:
    """Two identical hub worlds (hub forwarding, three clients), one with every device's bulk branches on
    and one with them off, given the same random batches (one-flow and mixed, spoofed sources, TTL 1,
    v4 and v6): after every batch the same packets on the hub's tun and forwarded to each client, in
    order, and the same drop counters."""
    loop = uvloop.new_event_loop() if flavour == "uvloop" else asyncio.new_event_loop()

    async def world(bulk: bool) -> tuple[Node, list[Node]]:
        hub, clients = start_hub(3, forward=True, v6=True)
        for n in (hub, *clients):
            n.dev.bulk = bulk
        assert await until(lambda: all(p.tunnel.has_session for p in hub.dev.peers.values()))
        for n in (hub, *clients):
            n.tun.take_written()
        return hub, clients

    async def step(hub: Node, clients: list[Node], batch: list[tuple[int, bytes]]) -> list[list[bytes]]:
        outs: list[list[bytes]] = [[] for _ in range(4)]
        drops0 = sum(hub.dev.drops.values())

        def settled() -> bool:
            for i, n in enumerate((hub, *clients)):
                outs[i] += n.tun.take_written()
            return sum(map(len, outs)) + sum(hub.dev.drops.values()) - drops0 >= len(batch)

        clients[batch[0][0]].tun.inject([p for _, p in batch])
        assert await until(settled), "a packet went missing"
        await asyncio.sleep(0.01)
        assert not settled() or sum(map(len, outs)) + sum(hub.dev.drops.values()) - drops0 == len(batch)
        return outs

    worlds = {bulk: loop.run_until_complete(world(bulk)) for bulk in (True, False)}
    taken: dict[bool, list[bool]] = {True: [], False: []}
    for bulk, (hub, _) in worlds.items():
        inner = hub.dev._route_flow

        def spy(*args, _inner=inner, _taken=taken[bulk]):  # type: ignore[no-untyped-def]
            _taken.append(_inner(*args))
            return _taken[-1]

        hub.dev._route_flow = spy  # type: ignore[method-assign]
    try:
        batches = list(random_batches(_hub_batch, random.Random(21), 80))
        n = check_bulk_matches_loop(lambda b, bulk: loop.run_until_complete(step(*worlds[bulk], b)), batches,
                                    drops=lambda bulk: worlds[bulk][0].dev.drops)
        assert n == 80
        addrs = [{p[12:20] if p[0] == 0x45 else p[8:40] for _, p in b} for b in batches if len(b) >= 4]
        one_flow = [a for a in addrs if len(a) == 1]
        assert len(one_flow) >= 20  # the bulk branch had batches to take
        assert taken[True].count(True) >= 10 and not taken[False]  # it took them; Device.bulk=False kept it out
        assert {"spoofed_source", "ttl_exceeded"} <= set(worlds[True][0].dev.drops)
    finally:
        for hub, clients in worlds.values():
            for node in (hub, *clients):
                node.dev.close()
        loop.close()


def test_unroutable_and_garbage_counted(run) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        net = MemoryNetwork()
        a, b = Node(net, "198.18.0.1", 51820, "a0"), Node(net, "198.18.0.2", 51820, "b0")
        a.dev.add_peer(b.pub, allowed_ips=["100.64.0.2/32"], endpoint=b.addr)
        a.dev.start()
        b.dev.start()
        try:
            a.tun.inject([ipv4_udp("100.64.0.1", "100.64.9.9", b"nowhere")])
            assert await until(lambda: a.dev.drops["no_route"] == 1)
            junk = net.endpoint("198.18.0.9", 999)
            junk.send_batch(b.addr, [b"\x01" + os.urandom(147), b"\x04\x00\x00\x00" + os.urandom(60), b"xx"])
            assert await until(lambda: sum(b.dev.drop_counts().values()) >= 3)
            assert b.tun.written == []
            junk.close()
        finally:
            a.dev.close()
            b.dev.close()

    run(main())


def test_default_sends_peer_to_peer_packets_to_the_kernel(run) -> None:  # type: ignore[no-untyped-def]
    """Without ``Forward = on`` (the default, as WireGuard) a packet from one peer to another is written to
    the tun, where the host's routing and firewall decide; the daemon never relays it itself.  This holds
    for a client with two peers as much as for a hub (a client never routes between its peers)."""

    async def main() -> None:
        hub, clients = start_hub(2)
        try:
            assert not hub.dev.forward and hub.dev.snapshot()["forward"] is False
            assert await until(lambda: all(p.tunnel.has_session for p in hub.dev.peers.values()))
            c0, c1 = clients
            one = ipv4_udp("100.64.0.2", "100.64.0.3", b"one")
            batch = [ipv4_udp("100.64.0.2", "100.64.0.3", b"batch %d" % i) for i in range(8)]
            c0.tun.inject([one])
            c0.tun.inject(batch)
            assert await until(lambda: all(p in hub.tun.written for p in [one, *batch]))
            await asyncio.sleep(0.05)
            assert not any(b"one" in p or b"batch" in p for p in c1.tun.written)
            assert hub.dev.forwarded_packets == 0
        finally:
            for n in (hub, *clients):
                n.dev.close()

    run(main())


def test_deep_receive_queue_under_load_sheds_busy_sources(run, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under load, the device measures its socket's backlog on each wakeup; past
    BEHIND_BACKLOG_BYTES the core is behind and sheds handshakes from sources it has just seen."""
    from crypto.noise import LABEL_MAC1
    from crypto.primitives import hash_, mac
    from vpn import device

    monkeypatch.setattr(device, "BEHIND_BACKLOG_BYTES", 1000)

    async def main() -> None:
        net = MemoryNetwork()
        b = Node(net, "198.18.0.2", 51820, "b0")
        b.dev.core.force_under_load = True
        b.dev.start()
        key = hash_(LABEL_MAC1, b.pub)

        def initiations(n: int) -> list[bytes]:
            out = []
            for _ in range(n):
                body = b"\x01\0\0\0" + os.urandom(112)
                out.append(body + mac(key, body) + bytes(16))
            return out

        flood = net.endpoint("198.18.0.9", 999)
        try:
            flood.send_batch(b.addr, initiations(2))  # 296 bytes queued: not behind, answered
            assert await until(lambda: b.dev.core.drops["cookie_reply_sent"] == 2)
            assert not b.dev.core.behind
            flood.send_batch(b.addr, initiations(20))  # 2,960 bytes queued: behind, a busy source
            assert await until(lambda: b.dev.core.drops["handshake_shed"] == 20)
            assert b.dev.core.drops["cookie_reply_sent"] == 2
            flood.send_batch(b.addr, initiations(1))  # the queue is short again
            assert await until(lambda: sum(b.dev.core.drops.values()) == 23)
            assert not b.dev.core.behind
        finally:
            flood.close()
            b.dev.close()

    run(main())


def _fast_stall_check(dev: Device, after: float) -> None:
    """Tick housekeeping every 50 ms and report stalls after ``after`` seconds (the defaults are 1 s and 5 s)."""
    dev.housekeeping_interval = 0.05
    dev.stall = StallDetector(after)
    dev.watchdog = LoopWatchdog(dev.name, logging.getLogger("pyvpn.device"), after=after)


def test_stall_is_logged_and_shown_then_recovery(  # type: ignore[no-untyped-def]
        run, caplog: pytest.LogCaptureFixture) -> None:
    """Datagrams wait on b's UDP socket but b no longer takes them in (its reader is gone): a WARNING
    in the log, ``stalled`` in the snapshot and in ``pyvpn show``'s table; an INFO line and ``ok``
    once packets move again.  An idle device, and one that keeps moving, never report a stall."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        net = MemoryNetwork()
        a, b = Node(net, "198.18.0.1", 51820, "a0"), Node(net, "198.18.0.2", 51820, "b0")
        a.dev.add_peer(b.pub, allowed_ips=["100.64.0.2/32"], endpoint=b.addr)
        b.dev.add_peer(a.pub, allowed_ips=["100.64.0.1/32"])
        for n in (a, b):
            _fast_stall_check(n.dev, 0.3)
            n.dev.start()
        try:
            p1 = ipv4_udp("100.64.0.1", "100.64.0.2", b"first")
            a.tun.inject([p1])
            assert await until(lambda: p1 in b.tun.written)
            for i in range(20):  # traffic for 1 s (> the threshold), idle for 0.5 s: no stall
                a.tun.inject([ipv4_udp("100.64.0.1", "100.64.0.2", bytes([i]) * 50)])
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert b.dev.snapshot()["stall"]["state"] == "ok" and b.dev.stall.stalls == 0
            assert "data path stalled" not in caplog.text

            loop.remove_reader(b.udp.fileno())  # the reader is lost; the socket keeps filling
            p2 = ipv4_udp("100.64.0.1", "100.64.0.2", b"stuck")
            a.tun.inject([p2])
            assert await until(lambda: b.dev.stall.stalled, timeout=3.0)
            assert p2 not in b.tun.written
            warning = [r for r in caplog.records if "data path stalled" in r.getMessage()]
            assert warning and warning[0].levelno == logging.WARNING and "udp" in warning[0].getMessage()
            snap = b.dev.snapshot()
            assert snap["stall"]["state"] == "stalled" and snap["stall"]["queued"] == ["udp"]
            assert snap["stall"]["seconds"] >= 0.3 and snap["stall"]["stalls"] == 1
            console = Console(record=True, width=200)
            render([to_jsonable(snap)], console)
            assert "STALLED: packets waiting on udp" in console.export_text()
            assert a.dev.snapshot()["stall"]["state"] == "ok"  # the sender is fine

            loop.add_reader(b.udp.fileno(), b.dev._on_udp)  # taken in again
            assert await until(lambda: p2 in b.tun.written)
            assert await until(lambda: not b.dev.stall.stalled, timeout=3.0)
            assert "data path moving again" in caplog.text
            snap = b.dev.snapshot()
            assert snap["stall"]["state"] == "ok" and snap["stall"]["stalls"] == 1
            console = Console(record=True, width=200)
            render([to_jsonable(snap)], console)
            assert "ok (1 stall(s) so far)" in console.export_text()
        finally:
            a.dev.close()
            b.dev.close()

    with caplog.at_level(logging.INFO, logger="pyvpn"):
        run(main())


def test_blocked_event_loop_is_logged_with_its_stack(  # type: ignore[no-untyped-def]
        run, caplog: pytest.LogCaptureFixture) -> None:
    """A loop that stops running (blocked in a call) cannot check itself: the watchdog thread warns, with
    the stack the loop is stuck in, and says when it runs again; the count shows in the snapshot."""

    def stuck_in_a_blocking_call() -> None:
        time.sleep(1.0)

    async def main() -> None:
        net = MemoryNetwork()
        a = Node(net, "198.18.0.1", 51820, "a0")
        _fast_stall_check(a.dev, 0.3)
        a.dev.start()
        try:
            await asyncio.sleep(0.1)
            stuck_in_a_blocking_call()
            await asyncio.sleep(0.5)
            assert a.dev.snapshot()["stall"]["loop_blocked"] == 1
        finally:
            a.dev.close()
        assert a.dev.watchdog._thread is None  # stopped with the device

    with caplog.at_level(logging.INFO, logger="pyvpn"):
        run(main())
    warning = [r for r in caplog.records if "event loop has not run" in r.getMessage()]
    assert len(warning) == 1 and warning[0].levelno == logging.WARNING
    assert "stuck_in_a_blocking_call" in warning[0].getMessage()
    assert "the event loop runs again" in caplog.text


@pytest.mark.parametrize("offload", [True, False])
def test_rebind_keeps_the_udp_offload_setting(offload: bool) -> None:
    """A new listen port (UAPI ``listen_port``) gets the same UDP GSO/GRO choice as the first socket."""
    from tunnel.udp import UdpSocket

    udp = UdpSocket.bind("127.0.0.1", 0, family="v4", gso=offload, gro=offload)
    dev = Device(tun=MemoryTun("rb0"), udp=udp, private_key=None, udp_offload=offload)
    try:
        dev.rebind(0)
        assert dev.udp is not udp and udp.closed
        assert (dev.udp.gso, dev.udp.gro) == (udp.gso, udp.gro)  # what this kernel gave the first socket
        if not offload:
            assert not dev.udp.gso and not dev.udp.gro and not {"udp:gso", "udp:gro"} & set(dev.offloads())
    finally:
        dev.close()



@pytest.mark.parametrize("forward", [True, False], ids=["forward", "kernel-route"])
def test_hub_applies_per_client_policy(run, forward: bool) -> None:  # type: ignore[no-untyped-def]
    """Access rules on packets a client sends (whether forwarded or written to the tun, bulk batches
    included), a rate limit in both directions, and disable/enable, each on one peer alone."""
    from vpn.policy import ClientPolicy, parse_rule

    async def main() -> None:
        hub, clients = start_hub(3, forward=forward, v6=True)
        c0, c1, c2 = clients
        p0, p1, p2 = (hub.dev.peers[c.pub] for c in clients)
        hub.dev.set_policy(p0, ClientPolicy(allow=(parse_rule("100.64.0.1"), parse_rule("100.64.0.3 udp 2000")),
                                            deny=(parse_rule("100.64.0.1 udp 666"),)))
        try:
            assert await until(lambda: all(p.tunnel.has_session for p in hub.dev.peers.values()))
            # c0: the server and c1's UDP port 2000 only
            ok_hub = [ipv4_udp("100.64.0.2", "100.64.0.1", b"to hub %d" % i) for i in range(6)]  # a bulk batch
            ok_c1 = ipv4_udp("100.64.0.2", "100.64.0.3", b"to c1", dport=2000)
            no = [ipv4_udp("100.64.0.2", "100.64.0.3", b"wrong port", dport=2001),
                  ipv4_udp("100.64.0.2", "100.64.0.4", b"to c2"),
                  ipv4_udp("100.64.0.2", "100.64.0.1", b"denied port", dport=666),
                  ipv6_udp("fd00::2", "fd00::1", b"v6 not allowed")]
            c0.tun.inject(ok_hub)
            c0.tun.inject([ok_c1, *no])
            c0.tun.inject([no[1]] * 8)  # a bulk batch of one denied flow
            assert await until(lambda: p0.drops["policy_denied"] == 12)
            assert await until(lambda: all(p in hub.tun.written for p in ok_hub))
            # (forwarded packets arrive with the TTL decremented: compare payloads)
            def arrived(where: list[bytes], payload: bytes) -> bool:
                return any(p.endswith(payload) for p in where)

            assert await until(lambda: arrived(c1.tun.written if forward else hub.tun.written, b"to c1"))
            await asyncio.sleep(0.05)
            seen = hub.tun.written + c1.tun.written + c2.tun.written
            for payload in (b"wrong port", b"to c2", b"denied port", b"v6 not allowed"):
                assert not arrived(seen, payload), payload
            assert hub.dev.drops["policy_denied"] == 12
            # c1 has no policy: everything passes, nothing is counted
            free = [ipv4_udp("100.64.0.3", "100.64.0.4", b"c1 anywhere %d" % i) for i in range(6)]
            c1.tun.inject(free)
            target = c2.tun.written if forward else hub.tun.written
            assert await until(lambda: all(arrived(target, b"c1 anywhere %d" % i) for i in range(6)))
            assert not p1.drops and not p2.drops

            # a rate limit on c1, both directions: the first bucketful passes, the rest is counted
            hub.dev.set_policy(p1, ClientPolicy(rate_limit=80_000))  # 10 kB/s: refill is negligible here
            bucket = p1.bucket_in
            assert bucket is not None
            fits = int(bucket.burst) // 1428
            up = [ipv4_udp("100.64.0.3", "100.64.0.1", bytes(1400) + b"%4d" % i) for i in range(fits + 20)]
            c1.tun.inject(up[:100])
            c1.tun.inject(up[100:])
            assert await until(lambda: p1.drops["ratelimit_in"] >= 19)
            assert p1.drops["ratelimit_in"] <= 20
            assert await until(lambda: up[0] in hub.tun.written)
            assert up[-1] not in hub.tun.written
            down = [ipv4_udp("100.64.0.1", "100.64.0.3", bytes(1400) + b"%4d" % i) for i in range(fits + 20)]
            hub.tun.inject(down[:100])
            hub.tun.inject(down[100:])
            assert await until(lambda: p1.drops["ratelimit_out"] >= 19)
            assert await until(lambda: down[0] in c1.tun.written)
            assert down[-1] not in c1.tun.written
            assert not p0.drops["ratelimit_in"] and not p2.drops  # the others are untouched
            snap = {p["name"] or p["public_key"]: p for p in hub.dev.snapshot()["peers"]}[c1.pub]
            assert snap["ratelimited"] == p1.drops["ratelimit_in"] + p1.drops["ratelimit_out"]
            assert snap["policy"]["rate_limit"] == 80_000 and snap["policy"]["state"] == "active"

            # disable c2: its session ends at once, its handshakes are refused; c0 is untouched
            hub.dev.set_policy(p2, ClientPolicy(disabled=True))
            assert not p2.tunnel.has_session and p0.tunnel.has_session
            lost = ipv4_udp("100.64.0.4", "100.64.0.1", b"after disable")
            c2.tun.inject([lost])
            assert await until(lambda: hub.dev.core.drops["unknown_index"] >= 1)
            loop = asyncio.get_running_loop()
            c2.dev.peers[hub.pub].tunnel.initiate(now=loop.time() + 10)  # as its retry timer would
            c2.dev._flush()
            assert await until(lambda: p2.tunnel.refused_handshakes == 1)
            assert hub.dev.snapshot()["peers"][2]["policy"]["state"] == "disabled"
            assert lost not in hub.tun.written
            # enabled again: the hub initiates to c2's known endpoint, and traffic flows
            hub.dev.set_policy(p2, ClientPolicy())
            assert await until(lambda: p2.tunnel.has_session)
            back = ipv4_udp("100.64.0.4", "100.64.0.1", b"enabled again")
            c2.tun.inject([back])
            assert await until(lambda: back in hub.tun.written)
        finally:
            for n in (hub, *clients):
                n.dev.close()

    run(main())




def test_expired_peer_is_refused_by_the_housekeeping_timer(run) -> None:  # type: ignore[no-untyped-def]
    import time

    from vpn.policy import ClientPolicy

    async def main() -> None:
        net = MemoryNetwork()
        a, b = Node(net, "198.18.0.1", 51820, "a0"), Node(net, "198.18.0.2", 51820, "b0")
        a.dev.add_peer(b.pub, allowed_ips=["100.64.0.2/32"], endpoint=b.addr)
        peer = b.dev.add_peer(a.pub, allowed_ips=["100.64.0.1/32"],
                              policy=ClientPolicy(expires=int(time.time()) + 2))
        a.dev.start()
        b.dev.start()
        try:
            p1 = ipv4_udp("100.64.0.1", "100.64.0.2", b"before")
            a.tun.inject([p1])
            assert await until(lambda: p1 in b.tun.written)
            assert peer.tunnel.has_session
            assert await until(lambda: not peer.tunnel.has_session, timeout=5.0)  # within a second of expiry
            assert peer.tunnel.refused and b.dev.snapshot()["peers"][0]["policy"]["state"] == "expired"
            # a peer that is already expired when added is refused from the start
            c = Node(net, "198.18.0.3", 51820, "c0")
            late = b.dev.add_peer(c.pub, allowed_ips=["100.64.0.3/32"], policy=ClientPolicy(expires=1))
            assert late.tunnel.refused
        finally:
            a.dev.close()
            b.dev.close()

    run(main())


def test_daemon_passes_the_test_only_rekey_after_time_to_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYVPN_TEST_REKEY_AFTER_TIME (tests/hostile's daemons) is read once, at the daemon's start-up
    (:func:`vpn.daemon.rekey_after_time_from_env`), and reaches Core(rekey_after_time=...) as
    Device(rekey_after_time=...); a value the core would refuse (below 1 s, above REKEY_AFTER_TIME, not a
    number) is ignored, as before.  The Device itself does not read the environment."""
    for raw, expect in (("2", 2.0), ("0.5", REKEY_AFTER_TIME), ("1e9", REKEY_AFTER_TIME), ("nan", REKEY_AFTER_TIME),
                        ("soon", REKEY_AFTER_TIME), ("", REKEY_AFTER_TIME)):
        monkeypatch.setenv("PYVPN_TEST_REKEY_AFTER_TIME", raw)
        assert rekey_after_time_from_env() == expect, raw
        net = MemoryNetwork()
        dev = Device(tun=MemoryTun("rk0"), udp=net.endpoint("10.0.0.1", 51820), private_key=None,
                     rekey_after_time=rekey_after_time_from_env())
        assert dev.core.rekey_after_time == expect, raw
    monkeypatch.setenv("PYVPN_TEST_REKEY_AFTER_TIME", "2")
    dev = Device(tun=MemoryTun("rk1"), udp=MemoryNetwork().endpoint("10.0.0.1", 51820), private_key=None)
    assert dev.core.rekey_after_time == REKEY_AFTER_TIME
