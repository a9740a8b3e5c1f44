"""Micro benchmark: the device's data path per packet, against the raw ChaCha20Poly1305 call.

Measures, on one core, the CPU time per inner packet of one whole wakeup of :class:`vpn.device.Device`:

* **send** (``Device._on_tun``): a batch of tun reads → :func:`tunnel.tunmode.read_packets` (TSO
  super-packets cut by :func:`tunnel.offload.segment`) → :func:`vpn.routing.route_reads` (AllowedIPs) →
  ``Tunnel.encapsulate`` (seal) → outbox → ``UdpSocket.send_batch`` (UDP GSO);
* **receive** (``Device._on_udp``): a batch of datagrams as ``recv_batch`` returns them after UDP GRO →
  ``Core.decapsulate`` (open) → ACL → :func:`tunnel.tunmode.tun_buffers` (:func:`tunnel.offload.gro` into
  super-packets) → tun write;

each with the tun in vnet-hdr mode (TSO super-packets of ``--segs`` x 1380-byte segments) and in plain mode
(one 1420-byte packet per read), and with or without the system calls (a real UDP socket sending to a sink on
127.0.0.1 that nobody reads, so the kernel drops the datagrams after the send).  The stages are also timed on
their own: ``segment``, ``route_reads``, ``decapsulate``, ``coalesce`` and ``gro``.

Ceilings: ``ChaCha20Poly1305.encrypt``/``decrypt`` of one 1420-byte packet (every packet must be sealed and
opened once, so no path can beat these on one core).

Method: every round prepares fresh inputs untimed (distinct counters, so the replay window accepts them),
then times each row over the same packets, interleaved, in CPU time (``time.process_time``; the 2-core
machine is shared and wall-clock figures swing).  Figures: the best and the median of ``--rounds``
rounds (x AEAD uses the best).

Run: ``.venv/bin/python benchmarks/micro_datapath.py [--rounds 15] [--reads 16] [--segs 45]`` (the Python
that has pyvpn installed).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.keys import private_from_random
from tunnel.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VirtioNetHdr,
    coalesce,
    gro,
    segment,
)
from tunnel.tunmode import TunMode, read_packets, tune_allocator
from tunnel.udp import UdpSocket
from vpn.device import Device
from vpn.routing import route_reads
from vpn.testlab.packets import TCP, ipv4, tcp

MTU = 1420
MSS = MTU - 40
A_ADDR = ("127.0.0.1", 40001)
B_ADDR = ("127.0.0.1", 40002)
A_NET, B_NET = "100.64.0.1", "100.64.0.2"
RX_BATCH = 256  # datagrams per receive wakeup (vpn.device.BATCH)


# -- inputs ------------------------------------------------------------------------------------------------
def tso_read(seq: int, nseg: int, src: str = A_NET, dst: str = B_NET) -> bytes:
    """A tun read with IFF_VNET_HDR: a TCPv4 super-packet of ``nseg`` x MSS, NEEDS_CSUM, as TSO makes."""
    seg = tcp(40000, 5201, random.randbytes(MSS * nseg), seq=seq * MSS * nseg, ack=777, window=502)
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, MSS, 20, 16)
    return hdr.pack() + ipv4(src, dst, TCP, seg, ident=seq, csum=False)


def plain_packet(seq: int, src: str = A_NET, dst: str = B_NET) -> bytes:
    """One 1420-byte TCPv4 segment with valid lengths (checksums are not looked at on these paths)."""
    seg = tcp(40000, 5201, random.randbytes(MSS), seq=seq * MSS, ack=777, window=502)
    return ipv4(src, dst, TCP, seg, ident=seq, csum=False)


# -- stand-ins for the event loop and the devices ----------------------------------------------------------
class _Handle:
    def cancel(self) -> None:
        pass


class StubLoop:
    """Just what Device's data path calls on its loop: time(), call_at(), call_later()."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Callable[[], object]) -> _Handle:
        return _Handle()

    def call_later(self, delay: float, cb: Callable[[], object]) -> _Handle:
        return _Handle()


class FeedTun:
    """A tun whose reads return a prepared batch and whose writes are counted."""

    def __init__(self, name: str, vnet: bool) -> None:
        self.name, self.mtu, self.vnet_hdr = name, MTU, vnet
        self.offloads = frozenset({"csum", "tso4", "tso6", "uso"}) if vnet else frozenset()
        self.feed: list[bytes] = []
        self.written = 0
        self.write_calls = 0

    def fileno(self) -> int:
        return -1

    def read_batch(self, max_packets: int) -> list[bytes]:
        out, self.feed = self.feed[:max_packets], self.feed[max_packets:]
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        self.write_calls += len(packets)
        self.written += len(packets)
        return len(packets)

    def close(self) -> None:
        pass


class FeedUdp:
    """A UDP endpoint whose receives return a prepared batch; sends go to a real socket or nowhere."""

    def __init__(self, port: int, real: UdpSocket | None) -> None:
        self.port = port
        self.real = real
        self.feed: list[tuple[list[bytes], Any]] = []
        self.sent = 0

    def fileno(self) -> int:
        return -1

    def recv_batch(self, max_datagrams: int) -> list[tuple[list[bytes], Any]]:
        out, self.feed = self.feed, []
        return out

    def backlog_bytes(self) -> int:
        return 0

    def send_batch(self, addr: Any, datagrams: list[bytes]) -> None:
        self.sent += len(datagrams)
        if self.real is not None:
            self.real.send_batch(addr, datagrams)

    def close(self) -> None:
        pass


def make_devices(vnet: bool, real_udp: UdpSocket | None, *, tso: bool = False) -> tuple[Device, Device]:
    """Two devices with a completed handshake: ``a`` sends to ``b``; ``tso``: ``a`` reads super-packets."""
    r = random.Random(7)
    ka, kb = private_from_random(r.randbytes(32)), private_from_random(r.randbytes(32))
    a = Device(tun=FeedTun("a", vnet), udp=FeedUdp(A_ADDR[1], real_udp), private_key=ka,
               rng=random.Random(8).randbytes)
    b = Device(tun=FeedTun("b", vnet), udp=FeedUdp(B_ADDR[1], None), private_key=kb,
               rng=random.Random(9).randbytes)
    a.add_peer(b.core.public_key, allowed_ips=[f"{B_NET}/32"], endpoint=B_ADDR)
    b.add_peer(a.core.public_key, allowed_ips=[f"{A_NET}/32"])
    for d in (a, b):
        d._loop = StubLoop()  # type: ignore[assignment]
    if vnet:
        a.tun_mode = TunMode(vnet_hdr=True, tso_reads=tso, gro_tcp=True, gro_udp=True)
    now = 1000.0
    ta = a.core.peers[b.core.public_key]
    ta.initiate(now=now)
    for src, dst, addr in ((a, b, A_ADDR), (b, a, B_ADDR), (a, b, A_ADDR)):
        for _, datagrams in src.core.take_outbox():
            dst.core.decapsulate(addr, datagrams, now=now)
    assert ta.current is not None and b.core.peers[a.core.public_key].current is not None
    return a, b


def decrypt_all(aead: ChaCha20Poly1305, nonce: bytes, cts: list[bytes]) -> None:
    for c in cts:
        aead.decrypt(nonce, c, None)


# -- the run -----------------------------------------------------------------------------------------------
def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="rounds; figures are medians over them")
    ap.add_argument("--reads", type=int, default=16, help="tun reads (super-packets) per wakeup")
    ap.add_argument("--segs", type=int, default=45, help="segments per TSO super-packet")
    ap.add_argument("--wakeups", type=int, default=8, help="wakeups timed per row and round")
    ap.add_argument("--no-tune-allocator", action="store_true",
                    help="keep glibc's malloc defaults (the daemon calls tunnel.tunmode.tune_allocator)")
    args = ap.parse_args()
    if not args.no_tune_allocator:
        tune_allocator()
    random.seed(1)
    nseg, nreads, wakeups = args.segs, args.reads, args.wakeups
    per_wakeup = nseg * nreads

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(B_ADDR)
    real = UdpSocket.bind("127.0.0.1", A_ADDR[1], family="v4")
    a_t, _ = make_devices(True, None, tso=True)
    a_ts, _ = make_devices(True, real, tso=True)
    a_v, b_v = make_devices(True, None)
    a_vs, _ = make_devices(True, real)
    a_p, b_p = make_devices(False, None)
    a_ps, _ = make_devices(False, real)
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(12)
    reads = [tso_read(i, nseg) for i in range(nreads)]
    plains = [plain_packet(i) for i in range(per_wakeup)]
    vplains = [bytes(10) + p for p in plains]  # what a vnet tun without read offloads returns
    segs = [s for r in reads for s in segment(r)]
    assert len(segs) == per_wakeup

    rows: dict[str, list[float]] = {}

    def rec(name: str, seconds: float, packets: int) -> None:
        rows.setdefault(name, []).append(seconds / packets)

    n = wakeups * per_wakeup
    for _ in range(args.rounds):
        rec("raw encrypt 1420 B (ceiling)", cpu(lambda: [aead.encrypt(nonce, p, None) for p in segs * wakeups]), n)
        cts = [aead.encrypt(nonce, p, None) for p in segs]
        rec("raw decrypt 1420 B (ceiling)", cpu(functools.partial(decrypt_all, aead, nonce, cts * wakeups)), n)
        rec("segment (TSO read -> packets)", cpu(lambda: [segment(r) for _ in range(wakeups) for r in reads]), n)
        vnet = TunMode(vnet_hdr=True, tso_reads=True)
        rec("read_packets + route_reads (segment + route)",
            cpu(lambda vnet=vnet: [route_reads(read_packets(reads, vnet)[0], a_t.allowed.lookup, a_t.drops)
                                   for _ in range(wakeups)]), n)

        # send path, whole wakeups (plain reads: one packet per read, the kernel segmented them)
        for name, dev, feed in (("send, TSO super-packets, no syscalls", a_t, reads),
                                ("send, TSO super-packets + UDP GSO sends", a_ts, reads),
                                ("send, vnet tun reads, no syscalls", a_v, vplains),
                                ("send, vnet tun reads + UDP GSO sends", a_vs, vplains),
                                ("send, plain tun reads, no syscalls", a_p, plains),
                                ("send, plain tun reads + UDP GSO sends", a_ps, plains)):
            tun = dev.tun

            def run_tx(dev: Device = dev, tun: Any = tun, feed: list[bytes] = feed) -> None:
                for _ in range(wakeups):
                    tun.feed = list(feed)
                    while tun.feed:
                        dev._on_tun()
            rec(name, cpu(run_tx), n)

        # receive path: each wakeup's datagrams are sealed (untimed) right before it runs, so that they are
        # as warm in the cache as datagrams just copied out of a socket
        ta_p = a_p.core.peers[b_p.core.public_key]
        ta_v = a_v.core.peers[b_v.core.public_key]

        def sealed(t: Any, core: Any) -> list[bytes]:
            t.encapsulate(segs[:RX_BATCH], now=1000.0)
            return [d for _, ds in core.take_outbox() for d in ds]

        m = wakeups * RX_BATCH
        tot = 0.0
        for _ in range(wakeups):
            ds = sealed(ta_p, a_p.core)
            tot += cpu(functools.partial(b_p.core.decapsulate, A_ADDR, ds, now=1000.0))
        rec("decapsulate (open, unpad, group)", tot, m)
        rec("coalesce (GRO, 45 segments a flow)", cpu(lambda: [coalesce(segs) for _ in range(wakeups)]), n)
        rec("offload.gro (runs, else coalesce)", cpu(lambda: [gro(segs) for _ in range(wakeups)]), n)
        for name, dev, src in (("receive, GRO super-packets to a vnet tun", b_v, (ta_v, a_v.core)),
                               ("receive, plain tun writes", b_p, (ta_p, a_p.core))):
            tot = 0.0
            for _ in range(wakeups):
                feed_udp: Any = dev.udp
                feed_udp.feed = [(sealed(*src), A_ADDR)]
                tot += cpu(dev._on_udp)
            rec(name, tot, m)
        assert not b_p.drop_counts(), dict(b_p.drop_counts())

    real.close()
    sink.close()
    enc = min(rows["raw encrypt 1420 B (ceiling)"])
    dec = min(rows["raw decrypt 1420 B (ceiling)"])
    print(f"# pyvpn micro_datapath: Python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"{platform.machine()}; {args.rounds} rounds x {wakeups} wakeups x {nreads} reads x {nseg} segments "
          f"of {MSS} B; CPU time per inner packet, best and median of the rounds; "
          f"allocator {'default' if args.no_tune_allocator else 'tuned'}")
    print(f"{'operation':<44} {'packets/s':>10} {'us best':>8} {'us med':>8} {'Gbit/s':>7} {'x AEAD':>7}")
    for name, v in rows.items():
        t, med = min(v), statistics.median(v)
        ceiling = dec if ("receive" in name or "decap" in name or "coalesce" in name or "decrypt" in name) else enc
        print(f"{name:<44} {1 / t:>10,.0f} {t * 1e6:>8.2f} {med * 1e6:>8.2f} {MSS * 8 / t / 1e9:>7.2f} "
              f"{ceiling / t:>7.2f}")


if __name__ == "__main__":
    main()
