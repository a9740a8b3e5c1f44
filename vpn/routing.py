"""Routing in the L3 data path: which peer a packet from the tun goes to, and what forwarding does to it.

Flow (called by :class:`vpn.device.Device` once per wakeup; the kernel side, vnet headers, segmentation and
GRO, is :mod:`tunnel.tunmode`'s ``read_packets``/``write_packets``):

1. **tun → peers** (:func:`route_reads`).  The plain IP packets of one tun read batch are grouped by the peer
   their destination routes to (AllowedIPs); the destination is looked up once per change of address, and
   a batch to one destination once (a bulk branch with C-level loops).
2. The core seals each group; the UDP socket sends each run of equal sizes in one GSO ``sendmsg``.
3. **peers → tun** (:class:`InboundRoutes`, methods of the device).  Opened packets pass the AllowedIPs
   source check (the cryptokey ACL; otherwise dropped as ``spoofed_source``), packets to one of our VTEP
   addresses are offered to the L2 runtime, and the rest are written with ``tunnel.tunmode.write_packets`` (GRO
   into super-packets).
4. **peer → peer** (:func:`forward_hop`, only with ``#pyvpn Forward = on``).  A packet for another peer is
   not written to the tun: like a router, the daemon takes one off its TTL (IPv4, with the header checksum
   updated incrementally, RFC 1624) or hop limit (IPv6), drops it at zero (counted as ``ttl_exceeded``; no
   ICMP is generated), and hands it to the other peer's tunnel.  This bypasses the host's firewall
   (FORWARD chain, conntrack, NAT, ``ip_forward``), which is why it is off by default.

What was measured for these choices is in benchmarks/results-by-commit.md.  IP headers are big-endian.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from crypto.constants import BULK_MIN

from .peer import Peer

if TYPE_CHECKING:
    from crypto.tunnel import Tunnel

    from .allowedips import AllowedIPs

__all__ = ["InboundRoutes", "L2Hook", "batch_ip_version", "forward_hop", "route_reads", "ttl_checksum"]


def route_reads(packets: list[bytes], lookup: Callable[[bytes], Any], drops: Counter[str], *,
                bulk: bool = True) -> dict[Any, list[bytes]]:
    """Group the IP packets of a batch of tun reads by the peer their destination routes to.

    :param packets: plain IP packets (``tunnel.tunmode.read_packets`` has removed any vnet header).
    :param lookup: AllowedIPs lookup of a 4- or 16-byte destination address (None: no peer).
    :param drops: counts ``tun_short_packet``, ``tun_not_ip`` and ``no_route`` (``link_local_no_peer``
        for multicast and link-local destinations, an expected drop: vpn/drops.py).
    :param bulk: try the bulk branch (one IP version, one routed destination) for batches of
        :data:`crypto.constants.BULK_MIN` or more; ``False`` runs the loop alone (tests compare both).
    :returns: ``{peer: [packet, ...]}`` in read order per peer.
    """
    if bulk and len(packets) >= BULK_MIN:
        done = _route_bulk(packets, lookup)
        if done is not None:
            return done
    by_peer: dict[Any, list[bytes]] = {}
    last_dst: bytes | None = None
    out: list[bytes] | None = None
    for p in packets:
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
            drops["link_local_no_peer" if _link_scope(dst) else "no_route"] += 1
        else:
            out.append(p)
    return by_peer


def _link_scope(dst: bytes) -> bool:
    """Whether ``dst`` (4 or 16 bytes) is multicast, broadcast or IPv6 link-local: what the kernel and
    local services send on any interface (router solicitations, MLD reports, mDNS) and no peer is for."""
    if len(dst) == 16:
        return dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)
    return dst[0] & 0xF0 == 0xE0 or dst == b"\xff\xff\xff\xff"


_first = itemgetter(0)
_v4_dst = itemgetter(slice(16, 20))
_v6_dst = itemgetter(slice(24, 40))


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


def _route_bulk(packets: list[bytes], lookup: Callable[[bytes], Any]) -> dict[Any, list[bytes]] | None:
    """:func:`route_reads` for a batch of packets of one IP version to one routed destination, with C-level
    loops: one lookup, no per-packet bytecode.  ``None`` (nothing done) for anything else, which the general
    loop then handles and counts."""
    if min(map(len, packets)) < 40:
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

    One loop for every batch, whether :meth:`InboundRoutes._route_flow` (one flow) or the per-packet route
    collected it; a bulk branch was measured and dropped (benchmarks/results-by-commit.md).

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


# --- peers → tun: the source check, forwarding and the L2 hook ------------------------------------------
_v4_addrs = itemgetter(slice(12, 20))  # IPv4 source + destination
_v6_addrs = itemgetter(slice(8, 40))  # IPv6 source + destination


class L2Hook(Protocol):
    """What the device needs from :class:`vpn.l2.runtime.L2Runtime` (L2 segments over VXLAN in the tunnel)."""

    vteps: frozenset[bytes]  # our VTEP addresses (packed); packets to them are offered to take()

    def take(self, tunnel: Tunnel, packet: bytes) -> bool: ...
    def take_batch(self, tunnel: Tunnel, packets: list[bytes]) -> list[bytes]: ...
    def drop_counts(self) -> Counter[str]: ...
    def snapshot(self) -> list[dict[str, Any]]: ...



class InboundRoutes:
    """Where the decrypted packets of one peer go (step 3 of the flow above), as methods of
    :class:`vpn.device.Device`, which mixes this class in and owns the state they read: its AllowedIPs,
    ``forward`` and ``bulk`` switches, L2 runtime and drop counters."""

    allowed: AllowedIPs[Tunnel]
    forward: bool
    bulk: bool
    l2: L2Hook | None
    drops: Counter[str]

    def _route_inbound(self, t: Tunnel, packets: list[bytes], to_tun: list[bytes],
                       forwarded: dict[Tunnel, list[bytes]]) -> None:
        lookup = self.allowed.lookup
        forward = self.forward
        l2 = self.l2
        vteps = l2.vteps if l2 is not None else frozenset()
        if self.bulk and len(packets) >= BULK_MIN and self._route_flow(t, packets, to_tun, forwarded, vteps):
            return
        spoofed = 0
        # Consecutive packets mostly belong to one flow: look an address up only when it changes.
        last_src = last_dst = b""
        src_ok = to_l2 = False
        fwd: list[bytes] | None = None
        append = to_tun.append
        for p in packets:
            if p[0] >> 4 == 4:
                src, dst = p[12:16], p[16:20]
            else:
                src, dst = p[8:24], p[24:40]
            if src != last_src:
                last_src = src
                src_ok = lookup(src) is t
            if not src_ok:
                spoofed += 1
                continue
            if dst != last_dst:
                last_dst = dst
                fwd = None
                if forward:
                    d = lookup(dst)
                    if d is not None and d is not t:
                        fwd = forwarded.get(d)
                        if fwd is None:
                            fwd = forwarded[d] = []
                to_l2 = dst in vteps
            if fwd is not None:
                fwd.append(p)
                continue
            if to_l2 and l2 is not None and l2.take(t, p):  # VXLAN for an L2 segment
                continue
            append(p)
        if spoofed:
            self.drops["spoofed_source"] += spoofed
            peer = t.user
            if isinstance(peer, Peer):
                peer.drops["spoofed_source"] += spoofed

    def _route_flow(self, t: Tunnel, packets: list[bytes], to_tun: list[bytes],
                    forwarded: dict[Tunnel, list[bytes]], vteps: Any) -> bool:
        """:meth:`_route_inbound` for a batch of one address pair (what a GRO batch mostly is): one ACL
        lookup and one ``extend`` (to the tun, or with ``forward`` to another peer's list, whose TTLs
        :func:`~vpn.routing.forward_hop` then decrements as for the loop's), the addresses compared
        with C-level loops.  A batch to one of our VTEPs goes to the L2 runtime in one call, and what it
        declines to the tun.  Returns False, having done nothing, unless every packet has the same IP
        version and addresses."""
        version = batch_ip_version(packets)
        if version == 4:
            keys = list(map(_v4_addrs, packets))
            k = keys[0]
            src, dst = k[:4], k[4:]
        elif version == 6:
            keys = list(map(_v6_addrs, packets))
            k = keys[0]
            src, dst = k[:16], k[16:]
        else:
            return False
        if keys.count(k) != len(keys):
            return False
        lookup = self.allowed.lookup
        if lookup(src) is not t:
            n = len(packets)
            self.drops["spoofed_source"] += n
            peer = t.user
            if isinstance(peer, Peer):
                peer.drops["spoofed_source"] += n
            return True
        if self.forward:
            d = lookup(dst)
            if d is not None and d is not t:
                fwd = forwarded.get(d)
                if fwd is None:
                    forwarded[d] = list(packets)
                else:
                    fwd.extend(packets)
                return True
        if dst in vteps and self.l2 is not None:  # VXLAN for an L2 segment: the runtime takes it in bulk
            packets = self.l2.take_batch(t, packets)
        to_tun.extend(packets)
        return True
