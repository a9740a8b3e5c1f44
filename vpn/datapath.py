"""The L3 data path between the tun device and the WireGuard core, with TUN and UDP offloads.

Flow (called by :class:`vpn.device.Device` once per wakeup; no timers, so a lone packet goes out at once):

1. **tun → peers** (:func:`route_reads`).  A tun read returns one buffer.  Without a vnet header it is one IP
   packet.  With ``IFF_VNET_HDR`` it starts with a 10-byte ``virtio_net_hdr``: a plain packet (``GSO_NONE``
   without ``NEEDS_CSUM``) just loses the header; anything else, above all a TCP super-packet of up to 64 KiB
   (only with TSO reads, see below), is cut by :func:`tunnel.offload.segment` into standalone, MTU-sized IP
   packets with their own checksums, so that every WireGuard message carries one ordinary packet and stock
   peers accept it.  The destination is looked up once per buffer and cached across buffers.
2. The core seals each packet as a type-4 message.  Packets of equal size give messages of equal size
   (16 + MTU + 16 bytes for full-size segments), and :meth:`tunnel.udp.UdpSocket.send_batch` sends each run
   in one ``sendmsg`` with ``UDP_SEGMENT`` (at most :func:`gso_max_segs` messages a send).
3. **peers → tun** (:func:`write_tun`).  Datagrams arrive GRO-coalesced and are split by the UDP socket; the
   core opens them; the device applies the AllowedIPs ACL and forwarding.  With a vnet header,
   :func:`tunnel.offload.gro` merges runs of in-order TCP segments into super-packets (and
   :func:`tunnel.offload.coalesce` handles the rest, UDP into USO packets too), each written in one call;
   every other packet gets the all-zero header.  L2 taps use the same mode and writer (``l2=True``:
   :func:`tunnel.offload.gro_frames`).
4. **peer → peer** (:func:`forward_hop`, only with ``#pyvpn Forward = on``).  A packet for another peer is
   not written to the tun: like a router, the daemon takes one off its TTL (IPv4, with the header checksum
   updated incrementally, RFC 1624) or hop limit (IPv6), drops it at zero (counted as ``ttl_exceeded``; no
   ICMP is generated), and hands it to the other peer's tunnel.  This bypasses the host's firewall
   (FORWARD chain, conntrack, NAT, ``ip_forward``), which is why it is off by default.

What was measured, and kept or dropped (2-vCPU VM shared with other work, so wall-clock figures swing;
CPU time per packet or per GB is the steadier measure; iperf3 TCP through pyvpn between two namespaces):

* **TSO reads lose.**  With the tun's read offloads on, cutting super-packets in Python costs 3.6-5.5 us per
  segment (the TCP checksum alone is two thirds of it), more than one ``read`` per packet plus the kernel's
  own software GSO in C: the sending daemon needed 10.6-11.5 CPU s/GB against 8.1-8.7 with the kernel
  segmenting.  So :func:`configure_tun` switches read offloads off (``TUNSETOFFLOAD(0)``) and keeps the vnet
  header for GSO writes, which the kernel takes whatever ``TUNSETOFFLOAD`` says.  ``PYVPN_TSO_READS=1``
  turns TSO reads back on (tests run both).  Capping the tun's ``gso_max_segs`` at :func:`gso_max_segs` is
  then moot; with TSO reads a 47-segment super-packet costs one extra ``sendmsg``, about 0.1 us a packet.
* **GRO writes win.**  The receiving daemon needed 6.8-8.0 CPU s/GB against 10.4-11.1 writing one packet per
  ``write`` (each write is a system call plus a trip through the kernel's TCP receive path).
* **glibc malloc tuning wins** (:func:`tune_allocator`): without it, 64 KiB buffers made glibc trim and
  re-fault heap pages on every batch; GRO cost 2.1 us a packet instead of 1.2.
* **``encrypt_into`` loses** here: sealing into slices of one preallocated buffer cost 2.65 us a packet
  against 2.24 for ``encrypt`` plus a concatenation (1420-byte packets, best of 30 interleaved runs).
* **More threads or processes did not help on 2 cores** (both tunnel ends, iperf3 and the kernel share
  them): tun writes and UDP sends in a second thread moved 0.44-0.62 to 0.40-0.75 Gbit/s (noise) for 5-15 %
  more CPU per GB and 0.2-1.4 ms more RTT; two daemon pairs with one peer each (the shape of
  ``IFF_MULTI_QUEUE`` + ``SO_REUSEPORT`` workers with their own peer subsets) against one pair carrying both
  streams: 0.14-0.24 against 0.12-0.30 Gbit/s.  One process per interface stays.

* **Bulk paths win a little** (2026-11-28).  Per-packet bytecode was the biggest part of the receiving
  daemon's user time (``_PyEval_EvalFrameDefault`` 16 % of its samples, the cipher about 11 %).  Each stage
  now has a branch for the common batch, done with C-level loops (``map`` over ``struct`` unpackers,
  ``itemgetter`` slices, ``int.from_bytes``; ``range`` for expected counters and headers) and declining to
  the general loop otherwise: ``Core._decapsulate_run``, :func:`_gro_bulk`, ``Device._route_flow``,
  ``Keypair.seal_batch`` for one size, ``route_reads`` for one destination, ``send_batch`` for one size,
  and a tun drain through ``list.extend(map(os.read, ...))``.  Micro (best of 15): receive with GRO 5.05
  -> 3.78 us a packet, send 4.06 -> 3.76.  End to end, interleaved A/B against the previous commit
  (iperf3 TCP, 3 x 5 s): 0.90-1.05 against 0.85-1.01 Gbit/s, 13.0-15.4 against 13.7-16.5 CPU s/GB for
  both daemons.  Less than the micro figures promise: in the real run every stage runs with cold
  caches (the same Python work costs 2-4 times as much 10 ms after the last call as in a tight loop on
  this shared VM), and the kernel's share (tun reads, UDP sends, TCP receive) does not shrink.
* **A lone packet** (ping) costs three sleeping daemon wake-ups per round trip; on a busy CPU the wait for
  the CPU dominated, which the loop thread's short scheduler slice (:mod:`vpn.latency`) removes.  What was
  measured and tried for latency (polling after traffic, timer slack, GC, uvloop against asyncio) is in
  ``benchmarks/latency-results.md``.

Byte order: the virtio_net_hdr is little-endian (host order on the machines pyvpn targets); IP headers are
big-endian.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from tunnel.offload import OffloadError, gro, gro_frames, segment

log = logging.getLogger("pyvpn.datapath")

__all__ = [
    "TSO_READS_DEFAULT",
    "TUN_TXQUEUELEN",
    "VNET_HDR_SIZE",
    "TunMode",
    "batch_ip_version",
    "configure_tun",
    "forward_hop",
    "gro",
    "gso_max_segs",
    "route_reads",
    "set_txqueuelen",
    "ttl_checksum",
    "tun_buffers",
    "tune_allocator",
    "write_tun",
]

#: The virtio_net_hdr size pyvpn's tun uses (``tunnel.tun.VNET_HDR_SIZE``).
VNET_HDR_SIZE = 10
#: WireGuard transport overhead on top of the padded plaintext: 16-byte header + 16-byte tag.
TRANSPORT_OVERHEAD = 32
#: Linux limits for one UDP GSO send (``UDP_MAX_SEGMENTS``; 65535 - 8 - 20).
_GSO_SEGMENTS = 64
_GSO_PAYLOAD = 65507


#: Whether the tun hands us TSO super-packets to segment in Python (see :func:`configure_tun`).  Off by
#: default: measured, cutting them here costs more than the kernel's software GSO plus one read per packet.
#: ``PYVPN_TSO_READS=1`` turns it on (benchmarks and tests compare both).
TSO_READS_DEFAULT = os.environ.get("PYVPN_TSO_READS", "") == "1"


@dataclass(frozen=True, slots=True)
class TunMode:
    """What the data path does with the tun's offloads (decided once, by :func:`configure_tun`).

    :param vnet_hdr: every read and write carries a virtio_net_hdr.
    :param tso_reads: the kernel may hand us TSO/USO super-packets and packets that need their checksum
        finished (``TUN_F_CSUM|TSO4|TSO6[|USO]``); otherwise it segments and checksums itself and every
        read is one finished packet.
    :param gro_tcp: merge TCP segments into super-packets on write.
    :param gro_udp: merge UDP datagrams into USO packets on write (the kernel knows USO).
    """

    vnet_hdr: bool = False
    tso_reads: bool = False
    gro_tcp: bool = False
    gro_udp: bool = False

    def names(self) -> list[str]:
        """Labels for ``pyvpn show``: ``tun:vnet_hdr``, ``tun:tso``, ``tun:gro``, ``tun:gro-udp``."""
        out = ["tun:vnet_hdr"] if self.vnet_hdr else []
        for flag, name in ((self.tso_reads, "tun:tso"), (self.gro_tcp, "tun:gro"), (self.gro_udp, "tun:gro-udp")):
            if flag:
                out.append(name)
        return out


def configure_tun(tun: Any, *, tso_reads: bool = TSO_READS_DEFAULT) -> TunMode:
    """Decide and apply how the data path uses ``tun``'s offloads.

    A tun without a vnet header gets plain reads and writes.  With one, writes always coalesce (the kernel
    takes GSO writes whatever ``TUNSETOFFLOAD`` says), UDP too when the kernel accepted USO at open time.
    Unless ``tso_reads``, the read-side offloads are switched off again with ``TUNSETOFFLOAD(0)``, so the
    kernel segments and checksums in C before the packets reach us.

    :param tun: a :class:`tunnel.tun.PytunDevice` (the ioctl is only tried on a real tun) or a fake.
    :param tso_reads: keep the kernel's TSO/CSUM offloads on the read side.
    """
    if not getattr(tun, "vnet_hdr", False):
        return TunMode()
    offloads = frozenset(getattr(tun, "offloads", ()) or ())
    uso = "uso" in offloads
    if not tso_reads:
        from tunnel.tun import PytunDevice

        if isinstance(tun, PytunDevice):
            from tunnel.tun import _TUNSETOFFLOAD  # the ioctl number for this architecture

            try:
                fcntl.ioctl(tun.fileno(), _TUNSETOFFLOAD, 0)
            except OSError as e:  # keep whatever the kernel gave us; segment() copes with all of it
                log.info("%s: cannot switch read offloads off (%s); segmenting in Python", tun.name, e)
                tso_reads = True
    return TunMode(vnet_hdr=True, tso_reads=tso_reads and bool(offloads), gro_tcp=True, gro_udp=uso)


#: The tun's transmit queue (packets the kernel queues for us to read).  The default, 500, overflows when the
#: daemon is off-CPU for a moment during a TCP burst: measured, 220-250 retransmits in 5 s of iperf3 at
#: 0.86-0.88 Gbit/s against none with 2000 (same throughput).  Every drop there is a TCP loss, since the
#: tun gives no backpressure to the qdisc.
TUN_TXQUEUELEN = 2000
_SIOCSIFTXQLEN = 0x8943  # linux/sockios.h


def set_txqueuelen(name: str, qlen: int = TUN_TXQUEUELEN) -> bool:
    """Set the transmit queue length of interface ``name`` in this network namespace (best effort).

    :returns: False (logged at debug level) when the kernel refuses or the interface is not here.
    """
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), _SIOCSIFTXQLEN, struct.pack("16si12x", name.encode(), qlen))
    except (OSError, ValueError) as e:
        log.debug("%s: cannot set txqueuelen %d: %s", name, qlen, e)
        return False
    return True


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_allocator` sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_TRIM_THRESHOLD = 32 << 20  # give heap memory back to the kernel only when this much is free at the top
_TOP_PAD = 8 << 20  # grow the heap in steps of at least this much
_MMAP_THRESHOLD = 1 << 20  # 64 KiB tun reads and GRO buffers come from the heap, never from fresh mmaps
_allocator_tuned = False


def tune_allocator() -> bool:
    """Stop glibc from returning and re-faulting heap pages on every batch (process-wide, once).

    Every tun read allocates a 64 KiB buffer and every GRO write joins one; with glibc's defaults the top of
    the heap is trimmed and grown again all the time, and the page faults (zeroing fresh pages) cost about
    a fifth of the receive path's CPU time (measured with ``perf record -e cpu-clock`` on the receive
    wakeup of benchmarks/micro_datapath.py).  The price is up to ``_TRIM_THRESHOLD`` bytes of heap kept
    after a burst.  Does nothing (returns False) where libc has no ``mallopt`` (musl) or it refuses.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD), (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)))
    _allocator_tuned = ok
    return ok


def gso_max_segs(mtu: int) -> int:
    """Most full-size transport messages that fit one UDP GSO ``sendmsg`` for a tunnel of ``mtu`` bytes.

    :param mtu: the tunnel MTU (largest plaintext packet).
    """
    return max(1, min(_GSO_SEGMENTS, _GSO_PAYLOAD // (mtu + TRANSPORT_OVERHEAD)))


def route_reads(bufs: list[bytes], vnet: bool, lookup: Callable[[bytes], Any],
                drops: Counter[str]) -> dict[Any, list[bytes]]:
    """Turn a batch of tun reads into IP packets grouped by the peer their destination routes to.

    :param bufs: what the tun returned, each with a virtio_net_hdr when ``vnet`` is true.
    :param vnet: the tun was opened with ``IFF_VNET_HDR``.
    :param lookup: AllowedIPs lookup of a 4- or 16-byte destination address (None: no peer).
    :param drops: counts ``tun_short_packet``, ``tun_not_ip``, ``tun_bad_offload`` and ``no_route``
        (``link_local_no_peer`` for multicast and link-local destinations, an expected drop: vpn/drops.py).
    :returns: ``{peer: [packet, ...]}`` in read order per peer.
    """
    if len(bufs) >= 4:
        bulk = _route_bulk(bufs, vnet, lookup)
        if bulk is not None:
            return bulk
    by_peer: dict[Any, list[bytes]] = {}
    last_dst: bytes | None = None
    out: list[bytes] | None = None
    for b in bufs:
        segs: list[bytes] | None = None
        if vnet:
            if len(b) <= VNET_HDR_SIZE:
                drops["tun_short_packet"] += 1
                continue
            if b[1] or b[0] & 1:  # a GSO type, or NEEDS_CSUM: segment() finishes the work
                try:
                    segs = segment(b)
                except OffloadError:
                    drops["tun_bad_offload"] += 1
                    continue
                p = segs[0]
            else:
                p = b[VNET_HDR_SIZE:]
        else:
            p = b
        n = len(p)
        if n < 20:
            drops["tun_short_packet"] += 1
            continue
        v = p[0] >> 4
        if v == 4:
            dst = p[16:20]
        elif v == 6 and n >= 40:
            dst = p[24:40]
        else:
            drops["tun_not_ip"] += 1
            continue
        if dst != last_dst:
            last_dst = dst
            t = lookup(dst)
            if t is None:
                out = None
            else:
                out = by_peer.get(t)
                if out is None:
                    out = by_peer[t] = []
        if out is None:  # wg: "Required key not available"
            drops["link_local_no_peer" if _link_scope(dst) else "no_route"] += len(segs) if segs else 1
        elif segs is None:
            out.append(p)
        else:
            out.extend(segs)
    return by_peer


def _link_scope(dst: bytes) -> bool:
    """Whether ``dst`` (4 or 16 bytes) is multicast, broadcast or IPv6 link-local: what the kernel and
    local services send on any interface (router solicitations, MLD reports, mDNS) and no peer is for."""
    if len(dst) == 16:
        return dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)
    return dst[0] & 0xF0 == 0xE0 or dst == b"\xff\xff\xff\xff"


_vnet_hdr = itemgetter(slice(0, VNET_HDR_SIZE))
_after_vnet = itemgetter(slice(VNET_HDR_SIZE, None))
_first = itemgetter(0)
_v4_dst = itemgetter(slice(16, 20))
_v6_dst = itemgetter(slice(24, 40))
_VNET_NONE = bytes(VNET_HDR_SIZE)  # GSO_NONE, no flags: the kernel checks the checksums itself


def batch_ip_version(packets: list[bytes]) -> int:
    """4 or 6 when every packet's first nibble says that IP version, else 0 (one C-level pass).

    :param packets: non-empty packets.
    """
    b0 = bytes(map(_first, packets))
    lo, hi = min(b0), max(b0)
    if 0x40 <= lo and hi <= 0x4F:
        return 4
    if 0x60 <= lo and hi <= 0x6F:
        return 6
    return 0


def _route_bulk(bufs: list[bytes], vnet: bool, lookup: Callable[[bytes], Any]) -> dict[Any, list[bytes]] | None:
    """:func:`route_reads` for a batch of plain packets (all-zero vnet headers) of one IP version to one
    routed destination, with C-level loops: one lookup, no per-packet bytecode.  ``None`` (nothing done)
    for anything else, which the general loop then handles and counts."""
    if vnet:
        if list(map(_vnet_hdr, bufs)).count(_VNET_NONE) != len(bufs):
            return None
        packets = list(map(_after_vnet, bufs))
    else:
        packets = bufs
    lens = list(map(len, packets))
    if min(lens) < 40:
        return None
    version = batch_ip_version(packets)
    if version == 4:
        dsts = list(map(_v4_dst, packets))
    elif version == 6:
        dsts = list(map(_v6_dst, packets))
    else:
        return None
    if dsts.count(dsts[0]) != len(dsts):
        return None
    t = lookup(dsts[0])
    if t is None:
        return None
    return {t: packets}


def tun_buffers(packets: list[bytes], mode: TunMode, *, l2: bool = False) -> list[bytes]:
    """What to write to the tun for ``packets`` (plain IP packets trimmed to their length).

    :param mode: with a vnet header, TCP segments are merged into super-packets (:func:`gro`), UDP
        datagrams too with ``gro_udp``, and the rest get the all-zero header.
    :param l2: ``packets`` are Ethernet frames for a tap (:func:`tunnel.offload.gro_frames`).
    """
    if not mode.vnet_hdr:
        return packets
    if not (mode.gro_tcp or mode.gro_udp):
        return [_VNET_NONE + p for p in packets]
    return gro_frames(packets, udp=mode.gro_udp) if l2 else gro(packets, udp=mode.gro_udp)


def write_tun(tun: Any, packets: list[bytes], mode: TunMode, *, l2: bool = False) -> TunMode:
    """Write ``packets`` (plain IP packets, or Ethernet frames to a tap with ``l2``) to ``tun`` as
    :func:`tun_buffers` says; return the mode to keep.

    If the kernel refuses writes with ``EINVAL`` while GRO is on (a kernel that does not take our GSO
    headers), GRO is switched off for good: the caller keeps the returned mode, the refused buffers are
    lost once (TCP retransmits them) and every later packet goes out plain, behind a zero header.

    :param tun: the device (``write_batch``, and ``write_errors`` counted by errno name).
    :param mode: the current mode.
    """
    if not (mode.gro_tcp or mode.gro_udp):
        tun.write_batch([_VNET_NONE + p for p in packets] if mode.vnet_hdr else packets)
        return mode
    errors = getattr(tun, "write_errors", None)
    before = errors["EINVAL"] if errors is not None else 0
    bufs = tun_buffers(packets, mode, l2=l2)
    if tun.write_batch(bufs) < len(bufs) and errors is not None and errors["EINVAL"] > before:
        log.warning("%s: the kernel refused GSO writes (EINVAL); writing plain packets from now on",
                    getattr(tun, "name", "tun"))
        return TunMode(vnet_hdr=True, tso_reads=mode.tso_reads)
    return mode

# --- forwarding between peers inside the daemon (Forward = on) ------------------------------------------
#: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for the 16-bit word m = TTL << 8 | protocol when the TTL drops by
#: one: m' = m - 0x0100, so ~m + m' = 0xFEFF whatever m is, and the new checksum depends on the old one only.
_TTL_DEC = 0xFEFF


def ttl_checksum(hc: int) -> int:
    """The IPv4 header checksum after the TTL drops by one, from the checksum before (RFC 1624 eqn. 3).

    :param hc: the header checksum field as an integer (big-endian on the wire).
    """
    x = (hc ^ 0xFFFF) + _TTL_DEC
    return ((x & 0xFFFF) + (x >> 16)) ^ 0xFFFF


def forward_hop(packets: list[bytes], drops: Counter[str]) -> list[bytes]:
    """What a router does to the packets it forwards: the TTL (IPv4) or hop limit (IPv6) minus one, the IPv4
    header checksum updated to match (RFC 1624); a packet that arrives with 1 or 0 is dropped and counted as
    ``ttl_exceeded`` (no ICMP time exceeded is sent: pyvpn generates no ICMP).

    One loop for every batch, whether :meth:`vpn.device.Device._route_flow` (one flow) or the per-packet route
    collected it.  A bulk branch built with C-level maps (one TTL and protocol per batch) was measured and
    dropped: 1.40-1.47 against 1.48-1.54 us a 64-byte packet, nothing at 1420 bytes (best of 9, 64-packet
    batches); copying each packet costs the time either way, so a second code path was not worth it.

    :param packets: whole IPv4/IPv6 packets as ``Core.decapsulate`` returns them (headers complete).
    :param drops: counts ``ttl_exceeded``.
    :returns: the packets to send on, in order.
    """
    out: list[bytes] = []
    expired = 0
    for p in packets:
        if p[0] >> 4 == 4:
            ttl = p[8]
            if ttl <= 1:
                expired += 1
                continue
            hc = ttl_checksum(p[10] << 8 | p[11])
            out.append(b"".join((p[:8], bytes((ttl - 1, p[9], hc >> 8, hc & 0xFF)), p[12:])))
        else:
            hop = p[7]
            if hop <= 1:
                expired += 1
                continue
            out.append(b"".join((p[:7], bytes((hop - 1,)), p[8:])))
    if expired:
        drops["ttl_exceeded"] += expired
    return out
