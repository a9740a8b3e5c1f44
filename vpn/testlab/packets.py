"""Packets and frames for tests and benchmarks: the one set of builders.

Pure bytes; no sockets.  Build a packet from the inside out::

    ipv4("100.64.0.1", "100.64.0.2", TCP, tcp(40000, 5201, b"data", seq=1, flags=PSH | ACK), l4_csum="full")
    ipv4("100.64.0.1", "100.64.0.2", ICMP, icmp_echo(0x4242, 1, b"ping"))
    eth(ipv6("fd00::1", "fd00::2", UDP, udp(1, 2, b"x")), vlan=100)

:func:`ipv4` and :func:`ipv6` can fill in the TCP or UDP checksum of their payload (``l4_csum``), with the
checksum helper of :mod:`tunnel.offload`; :func:`ipv4` writes its header checksum unless told not to.
:func:`ipv4_packet` and :func:`ipv6_packet` make packets of an exact size that carry a sequence number
(:func:`seq_of` reads it back).
"""

from __future__ import annotations

import socket
import struct
from typing import Literal

from tunnel.offload import checksum

__all__ = [
    "ACK", "FIN", "ICMP", "ICMPV6", "PSH", "RST", "SYN", "TCP", "UDP", "addr_bytes", "eth", "icmp_echo", "ipv4",
    "ipv4_packet", "ipv6", "ipv6_packet", "l4_pseudo_header", "reference_checksum", "reference_sum", "seq_of", "tcp",
    "udp",
]

# IP protocol numbers (IANA) and TCP flag bits (RFC 9293 §3.1)
ICMP, TCP, UDP, ICMPV6 = 1, 6, 17, 58
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

#: ``l4_csum`` of :func:`ipv4` / :func:`ipv6`: leave the TCP/UDP checksum field as it is (``None``), write
#: the full checksum (``"full"``), or only the pseudo-header sum, as the kernel hands a packet that
#: needs its checksum finished (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) (``"partial"``).
L4Csum = Literal["full", "partial"] | None
Addr = str | bytes

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


def addr_bytes(addr: Addr) -> bytes:
    """An IPv4 or IPv6 address as bytes (text is parsed; bytes are returned as they are)."""
    if isinstance(addr, bytes):
        return addr
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header (checksum 0: none, unless :func:`ipv4`/:func:`ipv6` fill it in) and ``payload``."""
    return _UDP.pack(sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes = b"", *, seq: int = 0, ack: int = 0, flags: int = ACK,
        window: int = 65535, options: bytes = b"", urgent: int = 0) -> bytes:
    """A TCP header with ``options`` (a multiple of 4 bytes) and ``payload``; checksum 0 unless
    :func:`ipv4`/:func:`ipv6` fill it in."""
    thl = 20 + len(options)
    if thl % 4 or thl > 60:
        raise ValueError(f"TCP options must fill whole 32-bit words, at most 40 bytes (got {len(options)})")
    return _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (thl // 4) << 4, flags, window, 0,
                     urgent) + options + payload


def icmp_echo(ident: int, seq: int, data: bytes = b"", *, reply: bool = False) -> bytes:
    """An ICMPv4 echo request (or reply) with its checksum (RFC 792)."""
    body = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + data
    return body[:2] + checksum(body).to_bytes(2, "big") + body[4:]


def l4_pseudo_header(src: Addr, dst: Addr, proto: int, length: int) -> bytes:
    """The TCP/UDP pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1) for these addresses."""
    s, d = addr_bytes(src), addr_bytes(dst)
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def _fill_l4(pseudo: bytes, proto: int, segment: bytes, how: L4Csum) -> bytes:
    if how is None:
        return segment
    off = 16 if proto == TCP else 6 if proto == UDP else -1
    if off < 0 or len(segment) < off + 2:
        raise ValueError(f"l4_csum needs a TCP or UDP segment (protocol {proto}, {len(segment)} bytes)")
    seg = segment[:off] + b"\0\0" + segment[off + 2:]
    if how == "partial":
        # the pseudo-header's one's-complement sum, not complemented: the kernel's NEEDS_CSUM seed
        c = (0xFFFF - checksum(pseudo)) % 0xFFFF
    else:
        c = checksum(pseudo + seg)
        if c == 0 and proto == UDP:
            c = 0xFFFF  # RFC 768: a computed zero is sent as all ones (zero means "no checksum")
    return seg[:off] + c.to_bytes(2, "big") + seg[off + 2:]


def ipv4(src: Addr, dst: Addr, proto: int, payload: bytes = b"", *, ident: int = 0, df: bool = True,
         frag: int = 0, ttl: int = 64, tos: int = 0, options: bytes = b"", total: int | None = None,
         csum: bool = True, l4_csum: L4Csum = None) -> bytes:
    """An IPv4 packet: header (with ``options``, a multiple of 4 bytes) and ``payload``.

    :param df: set Don't Fragment; ``frag`` holds the other flag bits and the fragment offset (e.g.
        ``0x2000`` for More Fragments).
    :param total: the total-length field, when a test wants it wrong (default: the real length).
    :param csum: write the header checksum (``False`` leaves 0, which the tunnel core does not check).
    :param l4_csum: fill in ``payload``'s TCP/UDP checksum (see :data:`L4Csum`).
    """
    s, d = addr_bytes(src), addr_bytes(dst)
    ihl = 20 + len(options)
    if ihl % 4 or ihl > 60:
        raise ValueError(f"IPv4 options must fill whole 32-bit words, at most 40 bytes (got {len(options)})")
    payload = _fill_l4(l4_pseudo_header(s, d, proto, len(payload)), proto, payload, l4_csum)
    length = ihl + len(payload) if total is None else total
    head = _IPV4.pack(0x40 | ihl // 4, tos, length, ident & 0xFFFF, (0x4000 if df else 0) | frag, ttl, proto, 0,
                      s, d) + options
    if csum:
        head = head[:10] + checksum(head).to_bytes(2, "big") + head[12:]
    return head + payload


def ipv6(src: Addr, dst: Addr, next_header: int, payload: bytes = b"", *, hops: int = 64, tclass: int = 0,
         flow: int = 0, l4_csum: L4Csum = None) -> bytes:
    """An IPv6 packet (no extension headers unless ``payload`` starts with them and ``next_header`` says so).

    :param l4_csum: fill in ``payload``'s TCP/UDP checksum (see :data:`L4Csum`).
    """
    s, d = addr_bytes(src), addr_bytes(dst)
    payload = _fill_l4(l4_pseudo_header(s, d, next_header, len(payload)), next_header, payload, l4_csum)
    return _IPV6.pack((6 << 28) | (tclass << 20) | flow, len(payload), next_header, hops, s, d) + payload


def eth(payload: bytes, *, dst: bytes = bytes(6), src: bytes = bytes(6), ethertype: int | None = None,
        vlan: int | None = None, tags: bytes = b"") -> bytes:
    """An Ethernet frame around ``payload``.

    :param ethertype: default: IPv4 or IPv6 from ``payload``'s version nibble.
    :param vlan: add an 802.1Q tag (TPID 0x8100) with this TCI (VLAN id and priority bits).
    :param tags: further tags as raw bytes (e.g. an 802.1ad S-tag), after the ``vlan`` tag.
    """
    if ethertype is None:
        ethertype = 0x86DD if payload[:1] and payload[0] >> 4 == 6 else 0x0800
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return dst + src + tag + tags + ethertype.to_bytes(2, "big") + payload


def ipv4_packet(size: int, seq: int = 0, *, src: str = "100.64.0.1", dst: str = "100.64.0.2") -> bytes:
    """An IPv4/UDP packet of exactly ``size`` bytes (≥ 28) whose payload starts with ``seq``
    (when ``size`` ≥ 32).

    The total-length field is right, which is all the receiver uses to strip padding; the header checksum
    is left 0 (the tunnel core and the fakes do not check it).
    """
    assert 28 <= size <= 65535
    body = (struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(max(0, size - 32))))[:size - 28]
    return ipv4(src, dst, UDP, udp(40000, 9, body), ident=seq, df=False, csum=False)


def ipv6_packet(size: int, seq: int = 0) -> bytes:
    """An IPv6 packet of exactly ``size`` bytes (≥ 40): payload length = size - 40; the payload
    starts with ``seq`` when ``size`` ≥ 44."""
    assert 40 <= size <= 65535 + 40
    body = struct.pack("!I", seq) + bytes((seq * 7 + i) & 0xFF for i in range(max(0, size - 44)))
    return ipv6("fd00::1", "fd00::2", 59, body[:size - 40])  # next header: none


def reference_sum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: 16-bit big-endian words (an odd byte padded with zero), added with
    end-around carry.  An independent reference for checking tunnel.offload's sums; builders use
    :func:`tunnel.offload.checksum`."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes) -> int:
    """The complement of :func:`reference_sum`: 0 over a header or segment whose checksum is right."""
    return ~reference_sum(data) & 0xFFFF


def seq_of(packet: bytes) -> int:
    """The sequence number written by :func:`ipv4_packet` / :func:`ipv6_packet`."""
    off = 28 if packet[0] >> 4 == 4 else 40
    value: int = struct.unpack_from("!I", packet, off)[0]
    return value
