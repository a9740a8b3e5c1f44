"""The L3 data path (tunnel.tunmode's read_packets/write_packets, vpn.routing) and the Device's offload path,
without root: fakes for the tun and the network.

* :func:`read_packets` then :func:`route_reads` (as the Device calls them) turn vnet-hdr reads (plain
  packets, TSO super-packets, packets that need their checksum finished, garbage headers) into valid
  packets per peer, counting every drop;
* :func:`tun_buffers` coalesces for a vnet tun and passes packets through for a plain one;
* two Devices over :mod:`tunnel.testing` fakes with vnet-hdr tuns: a TSO super-packet read on one side
  leaves as standalone, equal-sized WireGuard messages and is written on the other side as one GRO
  super-packet carrying the same bytes; a plain tun on one side still interoperates.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

from crypto.keys import private_from_random, public_from_private
from tunnel.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VirtioNetHdr,
    checksum,
    gro,
    segment,
)
from tunnel.testing import MemoryNetwork, MemoryTun
from tunnel.tunmode import TunMode, configure_tun, read_packets, tun_buffers, write_packets
from tunnel.udpopts import gso_max_segs
from vpn.allowedips import AllowedIPs
from vpn.device import Device
from vpn.routing import route_reads
from vpn.testlab.differential import check_bulk_matches_loop, random_batches
from vpn.testlab.packets import ACK, PSH, TCP, UDP, ipv4, ipv6, tcp, udp

A4, B4 = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd00::1", "fd00::2"


def tcp4(src: str, dst: str, seq: int, payload: bytes, flags: int = ACK) -> bytes:
    return ipv4(src, dst, TCP, tcp(40000, 5201, payload, seq=seq, ack=777, flags=flags, window=502), ident=1,
                l4_csum="full")


def tso4(src: str, dst: str, seq: int, payload: bytes, mss: int) -> bytes:
    """A vnet-hdr read: TCPv4 super-packet, NEEDS_CSUM with the pseudo-header sum in the field."""
    seg = tcp(40000, 5201, payload, seq=seq, ack=777, flags=PSH | ACK, window=502)
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, mss, 20, 16)
    return hdr.pack() + ipv4(src, dst, TCP, seg, ident=1, csum=False, l4_csum="partial")


def tso6(src: str, dst: str, seq: int, payload: bytes, mss: int) -> bytes:
    seg = tcp(40000, 5201, payload, seq=seq, ack=777, window=502)
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6, 60, mss, 40, 16)
    return hdr.pack() + ipv6(src, dst, TCP, seg, l4_csum="partial")


def read_and_route(bufs: list[bytes], vnet: bool, lookup: Any, drops: Any, *,
                   bulk: bool = True) -> dict[Any, list[bytes]]:
    """What ``Device._on_tun`` does with a batch of tun reads: plain packets (drops counted as the device
    counts them), grouped by peer."""
    packets, short, bad = read_packets(bufs, TunMode(vnet_hdr=vnet))
    if short:
        drops["tun_short_packet"] += short
    if bad:
        drops["tun_bad_offload"] += bad
    return route_reads(packets, lookup, drops, bulk=bulk)


def table() -> tuple[AllowedIPs[str], str, str]:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert(f"{B4}/32", "peer-b")
    t.insert("fd00::/64", "peer-b6")
    return t, "peer-b", "peer-b6"


def test_route_reads_vnet_mixture() -> None:
    allowed, pb, pb6 = table()
    from collections import Counter

    drops: Counter[str] = Counter()
    payload = os.urandom(1380 * 5 + 100)
    plain = tcp4(A4, B4, 1, b"hello")
    bufs = [
        bytes(10) + plain,  # GSO_NONE: header stripped
        tso4(A4, B4, 1000, payload, 1380),  # 6 segments
        tso6(A6, B6, 5, payload[:3000], 1360),  # 3 segments, other peer
        b"\x00\x09" + bytes(8) + plain,  # unknown gso_type: dropped
        bytes(10) + tcp4(A4, "100.64.9.9", 1, b"x"),  # no route
        tso4(A4, "100.64.9.9", 1, payload, 1380),  # no route, 6 segments
        bytes(10) + b"\x45" + bytes(5),  # short
        bytes(10) + b"\x15" + bytes(40),  # not IP
        bytes(10),  # header only
        b"\x00",  # not even a header
    ]
    out = read_and_route(bufs, True, allowed.lookup, drops)
    assert set(out) == {pb, pb6}
    assert out[pb][0] == plain
    assert out[pb][1:] == segment(bufs[1]) and len(out[pb]) == 7
    assert out[pb6] == segment(bufs[2]) and len(out[pb6]) == 3
    assert all(len(p) <= 1420 for p in out[pb] + out[pb6])
    assert drops == Counter(tun_bad_offload=1, no_route=7, tun_short_packet=3, tun_not_ip=1)
    # every segment is a valid, standalone packet: IPv4 header and TCP checksums verify
    for p in out[pb][1:]:
        assert checksum(p[:20]) == 0
        pseudo = p[12:20] + struct.pack("!BBH", 0, 6, len(p) - 20)
        assert checksum(pseudo + p[20:]) == 0


def test_route_reads_plain_tun() -> None:
    allowed, pb, _ = table()
    from collections import Counter

    drops: Counter[str] = Counter()
    p = tcp4(A4, B4, 1, b"x" * 100)
    assert read_and_route([p, p, b"\x45"], False, allowed.lookup, drops) == {pb: [p, p]}
    assert drops == Counter(tun_short_packet=1)


def test_tun_buffers_and_modes() -> None:
    segs = [tcp4(B4, A4, 1 + i * 1000, os.urandom(1000)) for i in range(10)]
    assert tun_buffers(segs, TunMode()) is segs
    merged = tun_buffers(segs, TunMode(vnet_hdr=True, gro_tcp=True))
    assert len(merged) == 1
    assert VirtioNetHdr.unpack(merged[0]).gso_type == VIRTIO_NET_HDR_GSO_TCPV4
    assert TunMode(vnet_hdr=True, tso_reads=True, gro_tcp=True, gro_udp=True).names() == [
        "tun:vnet_hdr", "tun:tso", "tun:gro", "tun:gro-udp"]
    assert configure_tun(MemoryTun("x")) == TunMode()
    vt = MemoryTun("y", vnet_hdr=True, offloads={"csum", "tso4", "tso6", "uso"})
    assert configure_tun(vt) == TunMode(vnet_hdr=True, tso_reads=False, gro_tcp=True, gro_udp=True)
    assert configure_tun(vt, tso_reads=True).tso_reads
    assert gso_max_segs(1420) == 45 and gso_max_segs(9000) == 7 and gso_max_segs(600) == 64


# -- two devices over fakes -------------------------------------------------------------------------------


class Node:
    def __init__(self, net: MemoryNetwork, host: str, port: int, name: str, vnet: bool) -> None:
        self.priv = private_from_random(os.urandom(32))
        self.pub = public_from_private(self.priv)
        self.tun = MemoryTun(name, vnet_hdr=vnet, offloads={"csum", "tso4", "tso6", "uso"})
        self.udp = net.endpoint(host, port)
        self.addr = (host, port)
        self.dev = Device(tun=self.tun, udp=self.udp, private_key=self.priv)


async def _until(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


def _pair(vnet_a: bool, vnet_b: bool) -> tuple[Node, Node, list[list[bytes]]]:
    wire: list[list[bytes]] = []

    def hook(src, dst, datagrams):  # type: ignore[no-untyped-def]
        wire.append(list(datagrams))
        return datagrams

    net = MemoryNetwork(hook)
    a = Node(net, "198.18.0.1", 51820, "a", vnet_a)
    b = Node(net, "198.18.0.2", 51820, "b", vnet_b)
    a.dev.add_peer(b.pub, allowed_ips=[f"{B4}/32"], endpoint=b.addr)
    b.dev.add_peer(a.pub, allowed_ips=[f"{A4}/32"], endpoint=a.addr)
    return a, b, wire


def test_devices_tso_in_gro_out() -> None:
    async def main() -> None:
        a, b, wire = _pair(True, True)
        a.dev.start()
        b.dev.start()
        try:
            a.tun.inject([bytes(10) + tcp4(A4, B4, 1, b"ping")])
            assert await _until(lambda: len(b.tun.written) == 1)
            b.tun.take_written()
            wire.clear()
            payload = os.urandom(1380 * 20)
            a.tun.inject([tso4(A4, B4, 5000, payload, 1380)])
            assert await _until(lambda: b.tun.written)
            # on the wire: 20 standalone type-4 messages of one size (one GSO run)
            msgs = [d for batch in wire for d in batch]
            assert len(msgs) == 20 and {len(m) for m in msgs} == {1452}
            assert all(m[:4] == b"\x04\0\0\0" for m in msgs)
            # into b's tun: one super-packet with the same bytes
            (buf,) = b.tun.take_written()
            hdr = VirtioNetHdr.unpack(buf)
            assert hdr.gso_type == VIRTIO_NET_HDR_GSO_TCPV4 and hdr.gso_size == 1380
            assert buf[10 + 40:] == payload
            assert not a.dev.drop_counts() and not b.dev.drop_counts()
            assert a.dev.offloads()[:3] == ["tun:vnet_hdr", "tun:gro", "tun:gro-udp"]
        finally:
            a.dev.close()
            b.dev.close()

    asyncio.run(main())


def test_devices_vnet_to_plain() -> None:
    async def main() -> None:
        a, b, _ = _pair(True, False)
        a.dev.start()
        b.dev.start()
        try:
            payload = os.urandom(1380 * 3)
            a.tun.inject([tso4(A4, B4, 9, payload, 1380)])
            assert await _until(lambda: len(b.tun.written) == 3)
            got = b.tun.take_written()
            assert b"".join(p[40:] for p in got) == payload  # plain packets, no header
            b.tun.inject([tcp4(B4, A4, 1, b"back")])
            assert await _until(lambda: a.tun.written)
            (w,) = a.tun.take_written()
            assert w[:10] == bytes(10) and w[10:] == tcp4(B4, A4, 1, b"back")
            assert not any(o.startswith("tun:") for o in b.dev.offloads())
        finally:
            a.dev.close()
            b.dev.close()

    asyncio.run(main())


# -- gro(): the run fast path in front of tunnel.offload.coalesce -----------------------------------------


def tcp_seg(version: int, seq: int, payload: bytes, *, flags: int = ACK, ack: int = 777, sport: int = 40000,
            opts: bytes = b"", ip_id: int = 1, tos: int = 0) -> bytes:
    """A valid TCP segment over IPv4 (no options, DF) or IPv6, with ``opts`` as TCP options."""
    seg = tcp(sport, 5201, payload, seq=seq, ack=ack, flags=flags, window=502, options=opts)
    if version == 4:
        return ipv4(A4, B4, TCP, seg, ident=ip_id, tos=tos, l4_csum="full")
    return ipv6(A6, B6, TCP, seg, tclass=tos, l4_csum="full")


TS_OPTS = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP timestamps, as Linux sends


def _run(version: int, seq: int, k: int, mss: int, *, last: int | None = None, psh: bool = False,
         sport: int = 40000, opts: bytes = TS_OPTS) -> list[bytes]:
    out = []
    for i in range(k):
        n = last if (last is not None and i == k - 1) else mss
        out.append(tcp_seg(version, seq, os.urandom(n), flags=0x18 if psh and i == k - 1 else 0x10, sport=sport,
                       opts=opts, ip_id=i))
        seq = (seq + n) & 0xFFFFFFFF
    return out


def test_gro_equals_coalesce_on_runs() -> None:
    from tunnel.offload import coalesce

    cases = [
        _run(4, 1000, 45, 1368),
        _run(4, 0xFFFFF000, 45, 1368, last=500, psh=True),  # sequence wraps, shorter PSH tail
        _run(6, 5, 30, 1348, opts=b""),
        _run(6, 5, 3, 1348, psh=True),
        _run(4, 9, 60, 1368),  # beyond 64 KiB: two super-packets
        _run(4, 9, 1, 1368),  # a lone segment
        _run(4, 9, 2, 1368, last=1400),  # a longer second segment does not join
        _run(4, 1, 10, 1000) + _run(4, 1, 10, 1000, sport=40001) + _run(6, 1, 5, 700),
    ]
    for packets in cases:
        assert gro(packets) == coalesce(packets)
    big = gro(_run(4, 9, 60, 1368))
    assert len(big) == 2 and all(len(b) - 10 <= 65535 for b in big)


def _flows(buffers: list[bytes]) -> tuple[dict[int, list[tuple[int, int, int, bytes]]], list[bytes]]:
    """Segment ``buffers`` back into packets; per source port (seq, ack, flags, payload), other packets."""
    flows: dict[int, list[tuple[int, int, int, bytes]]] = {}
    other: list[bytes] = []
    for b in buffers:
        h = VirtioNetHdr.unpack(b)
        if h.gso_type:
            assert len(b) - 10 <= 65535
            if b[10] == 0x45:
                assert checksum(b[10:30]) == 0  # the merged IPv4 header checksum is right
        for p in segment(b):
            l4 = 20 if p[0] >> 4 == 4 else 40
            proto = p[9] if l4 == 20 else p[6]
            if proto != 6:
                other.append(p)
                continue
            hl = l4 + (p[l4 + 12] >> 4) * 4
            sport, _, seq, ack = struct.unpack_from("!HHII", p, l4)
            flows.setdefault(sport, []).append((seq, ack, p[l4 + 13], p[hl:]))
    return flows, other


def test_gro_random_mixes_keep_every_flow() -> None:
    import random

    merged = 0
    for seed in range(60):
        rng = random.Random(seed)
        queues: list[list[bytes]] = []
        for f in range(rng.randint(1, 4)):
            version, mss = rng.choice([4, 6]), rng.choice([200, 536, 1368])
            seq, ack, pk = rng.getrandbits(32), 55, []
            for i in range(rng.randint(1, 40)):
                ev = rng.random()
                n = mss if ev > 0.15 else rng.randint(0, mss)
                flags = 0x18 if rng.random() < 0.08 else (0x11 if rng.random() < 0.02 else 0x10)
                if rng.random() < 0.05:
                    ack += 1000
                pk.append(tcp_seg(version, seq, rng.randbytes(n), flags=flags, ack=ack, sport=41000 + f, ip_id=i,
                              opts=TS_OPTS if rng.random() < 0.9 else b"", tos=rng.choice([0, 0, 0, 2])))
                if rng.random() < 0.05:
                    pk.append(pk[rng.randrange(len(pk))])  # a duplicate
                seq = (seq + (n if rng.random() > 0.05 else n + 7)) & 0xFFFFFFFF  # sometimes a gap
            queues.append(pk)
        queues.append([bytes(10) + b"\x45" + bytes(30), tcp_seg(4, 1, b"x")[:30]])  # garbage, truncated
        mixed: list[bytes] = []
        runs = rng.random() < 0.5  # whole runs one after the other, or packet-level interleaving
        while any(queues):
            q = rng.choice([q for q in queues if q])
            take = rng.randint(1, 50) if runs else 1
            mixed.extend(q[:take])
            del q[:take]
        want = _flows([bytes(10) + p for p in mixed if len(p) >= 40 and p[0] >> 4 in (4, 6)])
        good = [p for p in mixed if len(p) >= 40 and p[0] >> 4 in (4, 6)]
        out = gro(good, udp=True)
        assert _flows(out) == want, seed
        merged += sum(1 for b in out if b[1])
        assert len(gro(mixed)) <= len(mixed)
    assert merged > 100  # the fast path and coalesce both had work


def test_write_packets_falls_back_when_gso_writes_are_refused() -> None:
    class NoGsoTun(MemoryTun):
        def write_batch(self, packets: list[bytes]) -> int:
            ok = [p for p in packets if p[1] == 0]
            self.write_errors["EINVAL"] += len(packets) - len(ok)
            return super().write_batch(ok)

    tun = NoGsoTun("nogso", vnet_hdr=True, offloads={"csum", "tso4", "tso6"})
    mode = configure_tun(tun)
    assert mode.gro_tcp and not mode.gro_udp
    segs = _run(4, 1, 10, 1000)
    mode = write_packets(tun, segs, mode)
    assert not mode.gro_tcp and mode.vnet_hdr and tun.take_written() == []  # refused once, then off
    assert write_packets(tun, segs, mode) == mode
    assert tun.take_written() == [bytes(10) + s for s in segs]
    plain = MemoryTun("plain")
    assert write_packets(plain, segs, TunMode()) == TunMode() and plain.take_written() == segs


def test_random_bytes_never_raise() -> None:
    from collections import Counter

    from hypothesis import given, settings
    from hypothesis import strategies as st

    allowed, _, _ = table()
    segs = _run(4, 1, 3, 500)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=120), max_size=6), st.booleans(), st.integers(0, 3))
    def check(bufs: list[bytes], vnet: bool, where: int) -> None:
        drops: Counter[str] = Counter()
        out = read_and_route(bufs, vnet, allowed.lookup, drops)
        assert sum(map(len, out.values())) <= sum(1 for _ in bufs) * 64
        mixed = segs[:where] + bufs + segs[where:]
        assert len(gro(mixed, udp=True)) <= len(mixed)

    check()


def _gro(packets: list[bytes], bulk: bool) -> list[bytes]:
    return gro(packets, bulk=bulk)


def test_gro_bulk_equals_the_loop() -> None:
    """_gro_bulk (a whole batch that is one run, checked with C-level loops) gives exactly the loop's
    super-packets, and declines (None) whenever the batch is not one clean run."""
    import random

    from tunnel.offload.gro import _gro_bulk

    clean = [
        _run(4, 1000, 45, 1368),
        _run(4, 1000, 44, 1368, last=500, psh=True),
        _run(4, 1000, 4, 1368, psh=True),
        _run(6, 5, 30, 1348, opts=b""),
        _run(6, 5, 30, 1348, last=17),
        _run(4, 9, 100, 1368),  # three super-packets
        _run(4, 9, 48, 1368),  # 47 + 1: the last would be alone
        _run(4, 0xFFFFF000, 45, 1368),  # the sequence number wraps
    ]
    assert check_bulk_matches_loop(_gro, clean) == len(clean)
    assert sum(_gro_bulk(p) is not None for p in clean) == 6  # all but the lone-leftover and the wrapping case

    def damaged_run(rng: random.Random) -> list[bytes]:
        version = rng.choice([4, 6])
        packets = _run(version, rng.getrandbits(31), rng.randint(4, 50), rng.choice([536, 1368]),
                       last=rng.choice([None, None, rng.randint(1, 600)]), psh=rng.random() < 0.3)
        i = rng.randrange(len(packets))
        p = bytearray(packets[i])
        l4 = 20 if version == 4 else 40
        what = rng.randrange(9)
        if what == 0:
            p[l4 + 13] |= 0x08  # PSH in the middle
        elif what == 1:
            p[l4 + 8] ^= 1  # another ACK number
        elif what == 2:
            p[1] ^= 4  # TOS / traffic class
        elif what == 3:
            p = p[:-1]  # one byte short (IP length now wrong)
        elif what == 4:
            p[l4 + 7] ^= 1  # sequence gap
        elif what == 5:
            p[4 if version == 4 else 7] ^= 1  # IPv4 ID (allowed to differ) / IPv6 hop limit
        elif what == 6:
            p[l4 + 1] ^= 1  # destination port
        elif what == 7:
            p[8 if version == 4 else 3] ^= 1  # TTL / flow label
        packets[i] = bytes(p)
        return packets

    batches = list(random_batches(damaged_run, random.Random(7), 300))
    assert check_bulk_matches_loop(_gro, batches) == 300
    declined = sum(_gro_bulk(b) is None for b in batches)
    assert 100 < declined < 300


def test_route_bulk_equals_the_loop() -> None:
    """route_reads' bulk branch (one destination, plain packets) gives the loop's result, and batches it
    declines (mixed destinations, offload headers, runts, no route, not IP) come out as the loop says."""
    import collections
    import random

    import vpn.routing as routing

    allowed, _, _ = table()
    lookup = allowed.lookup
    rng = random.Random(5)

    def ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
        return ipv4(src, dst, UDP, udp(1, 2, payload))

    def ipv6_udp(src: str, dst: str, payload: bytes) -> bytes:
        return ipv6(src, dst, UDP, udp(1, 2, payload))

    def route(bufs: list[bytes], vnet: bool, bulk: bool) -> tuple[dict[Any, list[bytes]], collections.Counter[str]]:
        drops: collections.Counter[str] = collections.Counter()
        return read_and_route(bufs, vnet, lookup, drops, bulk=bulk), drops

    v4 = [ipv4_udp("100.64.0.1", "100.64.0.2", rng.randbytes(rng.randint(12, 1300))) for _ in range(20)]
    v4b = [ipv4_udp("100.64.0.1", "100.64.0.3", b"x" * 30) for _ in range(5)]
    v6 = [ipv6_udp("fd00::1", "fd00::2", rng.randbytes(100)) for _ in range(8)]
    nowhere = [ipv4_udp("100.64.0.1", "203.0.113.9", b"y" * 30) for _ in range(5)]
    cases = [v4, v6, v4[:4], v4 + v4b, v4[:3] + v6[:3], nowhere, v4[:5] + [b"\x45" + bytes(10)],
             v4[:4] + [b"\x00" * 40]]
    assert check_bulk_matches_loop(lambda bufs, bulk: route(bufs, False, bulk), cases) == len(cases)
    vnet_cases = [[bytes(10) + p for p in packets] for packets in cases]
    # a vnet header with NEEDS_CSUM: the packet's checksum is finished before routing, in bulk or not
    tcp_bufs = [bytes(10) + p for p in v4[:5]]
    tcp_bufs[2] = b"\x01" + tcp_bufs[2][1:]
    vnet_cases.append(tcp_bufs)
    assert check_bulk_matches_loop(lambda bufs, bulk: route(bufs, True, bulk), vnet_cases) == len(vnet_cases)
    assert routing._route_bulk(v4, lookup) == {lookup(v4[0][16:20]): v4}

    def random_reads(r: random.Random) -> list[bytes]:
        """Mostly one destination (what the bulk branch takes), sometimes a stray packet of another kind."""
        pool = r.choice([v4, v6, nowhere, v4b])
        batch = [r.choice(pool) for _ in range(r.randrange(0, 40))]
        if batch and r.random() < 0.3:
            batch.insert(r.randrange(len(batch)), r.choice([v4b[0], v6[0], nowhere[0], b"\x45" + bytes(10), b""]))
        return batch

    batches = list(random_batches(random_reads, random.Random(6), 300))
    assert check_bulk_matches_loop(lambda bufs, bulk: route(bufs, False, bulk), batches) == 300
    assert sum(routing._route_bulk(b, lookup) is not None for b in batches if len(b) >= 4) > 50
    assert routing._route_bulk(v4 + v4b, lookup) is None


def test_gro_bulk_cuts_batches_of_several_bursts_like_the_loop() -> None:
    """Back-to-back bursts of one flow (each closed by a shorter segment or PSH) in one batch: the bulk
    path cuts where the loop ends runs and gives the same super-packets; odd shapes fall back."""
    import random

    from tunnel.offload.gro import _gro_bulk

    def bursts(rng: random.Random) -> list[bytes]:
        version, mss = rng.choice([4, 6]), rng.choice([536, 1368])
        seq, batch = rng.getrandbits(30), []
        for _ in range(rng.randint(1, 4)):
            k = rng.randint(1, 40)
            last = rng.choice([None, rng.randint(1, mss - 1)])
            batch += _run(version, seq, k, mss, last=last, psh=rng.random() < 0.5)
            seq += (k - 1) * mss + (last or mss)
        return batch

    batches = [b for b in random_batches(bursts, random.Random(11), 200) if len(b) >= 4]
    assert check_bulk_matches_loop(_gro, batches) == len(batches)
    assert sum(_gro_bulk(b) is not None for b in batches) > 50


def _udp(version: int, ttl: int, payload: bytes, *, ident: int = 0, proto: int = UDP) -> bytes:
    """An IPv4 (with a correct header checksum) or IPv6 packet with this TTL / hop limit."""
    if version == 4:
        return ipv4(A4, B4, proto, payload, ident=ident, ttl=ttl)
    return ipv6(A6, B6, proto, payload, hops=ttl)


def test_ttl_checksum_matches_a_full_recomputation() -> None:
    """RFC 1624's incremental update gives the checksum a full recomputation gives, for every checksum
    value class, including the 0xFEFF -> 0x0000 corner (eqn. 3 is exact where eqn. 2 is not)."""
    import random

    from vpn.routing import ttl_checksum

    rng = random.Random(3)
    seen_corner = False
    for i in range(20000):
        h = bytearray(rng.randbytes(20))
        h[0], h[8] = 0x45, rng.randint(2, 255)
        if i < 16:  # aim at the corner: pick the ID that makes the checksum 0xFEFF (one's complement sum 0x0100)
            h[4:6] = h[10:12] = b"\0\0"
            x = checksum(bytes(h)) + 0x0100  # 0x0100 minus the sum without the ID, in one's complement
            h[4:6] = ((x & 0xFFFF) + (x >> 16)).to_bytes(2, "big")
        h[10:12] = b"\0\0"
        before = checksum(bytes(h))
        seen_corner |= before == 0xFEFF
        h[8] -= 1
        h[10:12] = b"\0\0"
        after = checksum(bytes(h))
        assert ttl_checksum(before) == after, (bytes(h).hex(), before, after)
    assert seen_corner


def test_forward_hop_decrements_and_drops_at_zero() -> None:
    import collections

    from vpn.routing import forward_hop

    drops: collections.Counter[str] = collections.Counter()
    p4, p6 = _udp(4, 64, b"four"), _udp(6, 64, b"six")
    out = forward_hop([p4, _udp(4, 1, b"dies"), p6, _udp(6, 1, b"dies"), _udp(4, 0, b"dead")], drops)
    assert drops == {"ttl_exceeded": 3}
    assert [len(p) for p in out] == [len(p4), len(p6)]
    q4, q6 = out
    assert q4[8] == 63 and checksum(q4[:20]) == 0 and q4[:8] == p4[:8] and q4[12:] == p4[12:]
    assert q6[7] == 63 and q6[:7] == p6[:7] and q6[8:] == p6[8:]
