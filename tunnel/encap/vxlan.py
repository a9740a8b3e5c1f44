"""VXLAN (RFC 7348) framing, pure: header pack/unpack and whole outer IPv4/IPv6 + UDP datagrams.

Theory of operation
-------------------
A stock WireGuard peer only carries IPv4/IPv6 (PROTOCOL-NOTES §1.15, §2), so an Ethernet frame crosses the
tunnel as an ordinary IP packet: ``IP(src VTEP → dst VTEP) ‖ UDP(sport → 4789) ‖ VXLAN(vni) ‖ frame``.  That
packet is the plaintext of a type-4 WireGuard message, and a stock Linux peer can decapsulate it with
``ip link add vx0 type vxlan id N dstport 4789 ...`` over its ``wg0``.

1. :func:`encap_ip` builds the complete outer packet (IPv4 with header checksum, or IPv6) around a frame.
2. :func:`decap_ip` checks that a packet is an unfragmented IPv4/IPv6 UDP datagram to the VXLAN port with a
   valid VXLAN header and returns ``(vni, frame, src_ip)``; anything else raises :class:`VxlanError`.
3. :func:`pack_header` / :func:`unpack_header` do the 8-byte VXLAN header alone.

All VXLAN, UDP and IP fields are **big-endian** (network order), unlike WireGuard's little-endian fields.

Choices, with their reasons
---------------------------
* **Reserved bits on receipt.**  RFC 7348 §5 says the 7 R flag bits and the 24 + 8 reserved bits "MUST be set
  to zero on transmission and ignored on receipt".  Linux diverges on purpose: ``vxlan_rcv`` drops a header
  that uses any bit not enabled by the device's configuration (``SKB_DROP_REASON_VXLAN_INVALID_HDR``; made
  configurable as ``reserved_bits`` in early 2025, still strict by default; ``tests/netns/test_vxlan_kernel.py``
  checks this on the running kernel).  We follow the RFC by default (only the I flag is required) and offer
  ``strict=True`` for the Linux behaviour.  We always transmit zeros, so either choice interoperates.
* **UDP checksum.**  RFC 7348 §5: over IPv4 it "SHOULD be transmitted as zero" and a zero checksum "MUST be
  accepted".  Over IPv6 a zero checksum is only allowed for tunnels by RFC 6935/6936, and Linux's vxlan
  drops such datagrams unless ``udp6zerocsumrx`` is set (off by default), so IPv6 checksums are always
  computed unless the caller opts out.  Linux itself computes IPv4 checksums too by default (``udpcsum``);
  ``udp_checksum=True`` reproduces that, at the price of a pass over the frame in Python (the figure is in
  benchmarks/results-by-commit.md).
* **Checksums on receipt are not verified by default.**  The packet has just passed the WireGuard AEAD,
  which authenticates every byte; Linux WireGuard marks decrypted packets ``CHECKSUM_UNNECESSARY`` at every
  level for the same reason (``wireguard-linux-compat:src/receive.c``).  ``verify_checksum=True`` checks the
  IPv4 header checksum and the UDP checksum (and then rejects a zero IPv6 UDP checksum, like Linux).
* **Source port.**  RFC 7348 §5 recommends a hash of the inner frame in 49152–65535.  :func:`flow_src_port`
  hashes (CRC-32) the inner addresses, protocol and ports when the frame carries IPv4/IPv6 (behind up to two
  VLAN tags), else the MACs and EtherType, so one inner flow keeps one outer 5-tuple and different flows
  spread over a stock Linux receiver's RSS/GRO.  Inside WireGuard the outer datagram is encrypted, so this
  entropy gives no ECMP benefit in the underlay; a fixed ``src_port`` works as well.
* **DF and fragments.**  RFC 7348 §4.3: "VTEPs MUST NOT fragment VXLAN packets" and "the destination VTEP
  MAY silently discard such VXLAN fragments".  :func:`encap_ip` sets DF by default (Linux's vxlan leaves it
  clear unless ``df set``; ``df=False`` matches) and :func:`decap_ip` rejects fragments (no reassembly).
  Size frames with :func:`mtu_for_tap`.
* **ECN/DSCP** are not copied from the inner packet (Linux copies inner ECN per RFC 6040); pass ``tos``.
* **IPv6 extension headers** are not walked: the next header must be UDP (Linux sends none).
"""

from __future__ import annotations

import struct
import zlib
from operator import itemgetter
from typing import NamedTuple

from tunnel.offload.checksum import _sum16

__all__ = [
    "ETH_HEADER_SIZE",
    "IPV4_HEADER_SIZE",
    "IPV6_HEADER_SIZE",
    "UDP_HEADER_SIZE",
    "VXLAN_FLAG_I",
    "VXLAN_HEADER_SIZE",
    "VXLAN_HEADROOM_IPV4",
    "VXLAN_HEADROOM_IPV6",
    "VXLAN_PORT",
    "VXLAN_VNI_MAX",
    "Decapsulated",
    "VxlanError",
    "decap_ip",
    "decap_ip_batch",
    "encap_ip",
    "encap_ip_batch",
    "flow_src_port",
    "mtu_for_tap",
    "pack_header",
    "unpack_header",
]

# -- specification (RFC 7348 §5; all fields big-endian) -------------------------------------------------------
VXLAN_HEADER_SIZE = 8  # flags(1) ‖ reserved(3) ‖ VNI(3, BE) ‖ reserved(1)
VXLAN_FLAG_I = 0x08  # flags byte: "I" = VNI valid; the other 7 bits are reserved (RFC 7348 §5)
VXLAN_VNI_MAX = (1 << 24) - 1  # 24-bit VXLAN Network Identifier (RFC 7348 §5)
VXLAN_PORT = 4789  # IANA-assigned UDP destination port (RFC 7348 §5); Linux defaults to 8472 without dstport
SOURCE_PORT_MIN = 49152  # RFC 7348 §5: hashed source ports "SHOULD be within the dynamic/private port range"
SOURCE_PORT_MAX = 65535

ETH_HEADER_SIZE = 14  # dst MAC(6) ‖ src MAC(6) ‖ EtherType(2, BE); IEEE 802.3
IPV4_HEADER_SIZE = 20  # without options (RFC 791)
IPV6_HEADER_SIZE = 40  # fixed header (RFC 8200)
UDP_HEADER_SIZE = 8  # sport ‖ dport ‖ length ‖ checksum, all u16 BE (RFC 768)

# Outer IP + UDP + VXLAN + inner Ethernet header, as Linux's VXLAN_HEADROOM / VXLAN6_HEADROOM.
VXLAN_HEADROOM_IPV4 = IPV4_HEADER_SIZE + UDP_HEADER_SIZE + VXLAN_HEADER_SIZE + ETH_HEADER_SIZE  # 50
VXLAN_HEADROOM_IPV6 = IPV6_HEADER_SIZE + UDP_HEADER_SIZE + VXLAN_HEADER_SIZE + ETH_HEADER_SIZE  # 70
VLAN_TAG_SIZE = 4  # one 802.1Q tag (TPID ‖ TCI)
MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link must carry 68 bytes

# -- implementation -------------------------------------------------------------------------------------------
_IPPROTO_UDP = 17
_IPPROTO_TCP = 6
_IPPROTO_SCTP = 132
_IPPROTO_UDPLITE = 136
_PORTED_PROTOCOLS = frozenset({_IPPROTO_TCP, _IPPROTO_UDP, _IPPROTO_SCTP, _IPPROTO_UDPLITE})
_VLAN_TPID_BYTES = (b"\x81\x00", b"\x88\xa8")  # 802.1Q C-tag, 802.1ad S-tag (BE)
_IPV4_DF = 0x4000
_IPV4_MF_OFFSET = 0x3FFF  # MF flag and fragment offset
_IPV4_DEFAULT_TTL = 64

_HEADER = struct.Struct("!II")  # flags ‖ reserved(24), VNI(24) ‖ reserved(8); BE
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")
_OUTER_V4 = IPV4_HEADER_SIZE + UDP_HEADER_SIZE + VXLAN_HEADER_SIZE  # 36
_OUTER_V6 = IPV6_HEADER_SIZE + UDP_HEADER_SIZE + VXLAN_HEADER_SIZE  # 56
_MAX_IPV4_TOTAL = 0xFFFF
_MAX_UDP_LENGTH = 0xFFFF


class VxlanError(ValueError):
    """A received packet is not a valid VXLAN datagram (the peer sent garbage); drop and count it."""


class Decapsulated(NamedTuple):
    """What :func:`decap_ip` found: the VNI, the inner Ethernet frame and the outer source address."""

    vni: int
    frame: bytes
    src_ip: bytes  # 4 or 16 bytes, the sending VTEP


# -- 8-byte header --------------------------------------------------------------------------------------------
def pack_header(vni: int) -> bytes:
    """Build a VXLAN header: I flag set, all reserved bits zero (RFC 7348 §5).

    :param vni: the VXLAN Network Identifier, 0 … 2**24 - 1.
    :raises ValueError: ``vni`` is out of range (a caller bug, not a :class:`VxlanError`).
    """
    if not 0 <= vni <= VXLAN_VNI_MAX:
        raise ValueError(f"VNI {vni!r} outside 0..{VXLAN_VNI_MAX}")
    return _HEADER.pack(VXLAN_FLAG_I << 24, vni << 8)


def unpack_header(data: bytes | bytearray | memoryview, *, strict: bool = False) -> tuple[int, bytes]:
    """Parse a VXLAN header and return ``(vni, payload)``; the payload is a copy of the bytes after it.

    :param data: the UDP payload (VXLAN header and inner frame).
    :param strict: reject any reserved bit set, as Linux does, instead of ignoring them as RFC 7348 §5 says.
    :raises VxlanError: fewer than 8 bytes, the I flag clear, or (strict) a reserved bit set.
    """
    if len(data) < VXLAN_HEADER_SIZE:
        raise VxlanError(f"VXLAN header needs {VXLAN_HEADER_SIZE} bytes, got {len(data)}")
    word0, word1 = _HEADER.unpack_from(data)
    if not (word0 >> 24) & VXLAN_FLAG_I:
        raise VxlanError("VXLAN I flag (VNI valid) not set")
    if strict and (word0 != VXLAN_FLAG_I << 24 or word1 & 0xFF):
        raise VxlanError("VXLAN reserved bits set")
    return word1 >> 8, bytes(data[VXLAN_HEADER_SIZE:])


# -- checksums (RFC 1071; the one's-complement sum is tunnel.offload.checksum._sum16) -------------------------------


def _ip_checksum(header: bytes) -> int:
    # Linux's csum_fold never yields 0xFFFF for a non-zero header, so use 0x0000 there (0 ≡ 0xFFFF anyway).
    return (0xFFFF - _sum16(header)) % 0xFFFF


def _udp_checksum(pseudo_and_headers: bytes, frame: bytes | bytearray | memoryview) -> int:
    # Each prefix part has even length, so the sums of the parts add up (RFC 1071 §2(B)).
    total = (_sum16(pseudo_and_headers) + _sum16(frame)) % 0xFFFF
    # RFC 768: a computed checksum of zero is transmitted as all ones (zero means "no checksum").
    return 0xFFFF - total if total else 0xFFFF


# -- source port ----------------------------------------------------------------------------------------------
def flow_src_port(frame: bytes | bytearray | memoryview) -> int:
    """A UDP source port in 49152–65535 derived from the inner frame's flow (RFC 7348 §5).

    IPv4/IPv6 frames (behind up to two VLAN tags) hash the protocol, the addresses and, for TCP/UDP/SCTP/
    UDP-Lite, the ports, except in IPv4 fragments (so all fragments of a datagram share a port, as with
    Linux's flow dissector); other frames hash the MACs and EtherType.  CRC-32 is stable across
    processes (unlike ``hash()``), so a flow keeps its port for the life of the peer.

    :param frame: the inner Ethernet frame; any length (short frames hash what there is).
    """
    n = len(frame)
    ethertype = frame[12:14]
    l3 = ETH_HEADER_SIZE
    while ethertype in _VLAN_TPID_BYTES and l3 <= ETH_HEADER_SIZE + VLAN_TAG_SIZE and n >= l3 + VLAN_TAG_SIZE:
        ethertype = frame[l3 + 2 : l3 + 4]
        l3 += VLAN_TAG_SIZE
    if ethertype == b"\x08\x00" and n >= l3 + IPV4_HEADER_SIZE:
        proto = frame[l3 + 9]
        h = zlib.crc32(frame[l3 + 12 : l3 + 20], proto)  # addresses, seeded with the protocol
        if proto in _PORTED_PROTOCOLS and not (frame[l3 + 6] & 0x3F or frame[l3 + 7]):  # MF, offset: fragment
            ports = l3 + (frame[l3] & 0x0F) * 4
            h = zlib.crc32(frame[ports : ports + 4], h)
    elif ethertype == b"\x86\xdd" and n >= l3 + IPV6_HEADER_SIZE:
        proto = frame[l3 + 6]
        h = zlib.crc32(frame[l3 + 8 : l3 + 40], proto)
        if proto in _PORTED_PROTOCOLS:
            h = zlib.crc32(frame[l3 + 40 : l3 + 44], h)
    else:
        h = zlib.crc32(frame[:ETH_HEADER_SIZE])
    return SOURCE_PORT_MIN | ((h ^ (h >> 16)) & 0x3FFF)


# -- whole outer packets --------------------------------------------------------------------------------------
def encap_ip(
    frame: bytes | bytearray | memoryview,
    *,
    vni: int,
    src_ip: bytes,
    dst_ip: bytes,
    src_port: int | None = None,
    dst_port: int = VXLAN_PORT,
    ttl: int = _IPV4_DEFAULT_TTL,
    tos: int = 0,
    ip_id: int = 0,
    df: bool = True,
    flow_label: int = 0,
    udp_checksum: bool | None = None,
) -> bytes:
    """Wrap an Ethernet frame in VXLAN, UDP and an outer IPv4 or IPv6 header (chosen by address length).

    :param frame: the inner Ethernet frame (not checked: the switch in front of this did that).
    :param vni: VXLAN Network Identifier, 0 … 2**24 - 1.
    :param src_ip: local VTEP address, 4 bytes (IPv4) or 16 bytes (IPv6).
    :param dst_ip: remote VTEP address, same family as ``src_ip``.
    :param src_port: UDP source port; ``None`` = :func:`flow_src_port` of the frame.
    :param dst_port: UDP destination port, default 4789 (IANA).
    :param ttl: IPv4 TTL / IPv6 hop limit.
    :param tos: IPv4 TOS byte / IPv6 traffic class (DSCP ‖ ECN); no RFC 6040 ECN copying is done here.
    :param ip_id: IPv4 identification (RFC 6864 lets atomic DF datagrams use any value); ignored for IPv6.
    :param df: IPv4 Don't Fragment (RFC 7348 §4.3: VTEPs must not fragment); ignored for IPv6.
    :param flow_label: IPv6 flow label (20 bits); ignored for IPv4.
    :param udp_checksum: ``None`` = zero over IPv4 (RFC 7348 §5) and computed over IPv6; ``True`` = always
        computed (what Linux sends by default); ``False`` = always zero (IPv6 receivers then need
        ``udp6zerocsumrx``).
    :raises ValueError: bad arguments (address lengths or families, ranges, a frame too large for one
        datagram).
    :returns: the whole IP packet, ready to be the plaintext of a WireGuard transport message.
    """
    if not 0 <= vni <= VXLAN_VNI_MAX:
        raise ValueError(f"VNI {vni!r} outside 0..{VXLAN_VNI_MAX}")
    if src_port is None:
        src_port = flow_src_port(frame)
    if not (0 <= src_port <= 0xFFFF and 0 <= dst_port <= 0xFFFF):
        raise ValueError("UDP ports must be 0..65535")
    if not (0 <= ttl <= 255 and 0 <= tos <= 255):
        raise ValueError("ttl and tos must be 0..255")
    udp_len = UDP_HEADER_SIZE + VXLAN_HEADER_SIZE + len(frame)
    vxlan = _HEADER.pack(VXLAN_FLAG_I << 24, vni << 8)
    if len(src_ip) == 4 and len(dst_ip) == 4:
        total = IPV4_HEADER_SIZE + udp_len
        if total > _MAX_IPV4_TOTAL:
            raise ValueError(f"frame of {len(frame)} bytes does not fit one IPv4 datagram")
        if not 0 <= ip_id <= 0xFFFF:
            raise ValueError("ip_id must be 0..65535")
        checksum = 0
        if udp_checksum:
            pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, _IPPROTO_UDP, udp_len)
            checksum = _udp_checksum(pseudo + _UDP.pack(src_port, dst_port, udp_len, 0) + vxlan, frame)
        flags = _IPV4_DF if df else 0
        header = _IPV4.pack(0x45, tos, total, ip_id, flags, ttl, _IPPROTO_UDP, 0, src_ip, dst_ip)
        header = _IPV4.pack(
            0x45, tos, total, ip_id, flags, ttl, _IPPROTO_UDP, _ip_checksum(header), src_ip, dst_ip
        )
    elif len(src_ip) == 16 and len(dst_ip) == 16:
        if udp_len > _MAX_UDP_LENGTH:
            raise ValueError(f"frame of {len(frame)} bytes does not fit one UDP datagram (no jumbograms)")
        if not 0 <= flow_label <= 0xFFFFF:
            raise ValueError("flow_label must be 0..2**20-1")
        checksum = 0
        if udp_checksum is None or udp_checksum:
            pseudo = src_ip + dst_ip + struct.pack("!IxxxB", udp_len, _IPPROTO_UDP)
            checksum = _udp_checksum(pseudo + _UDP.pack(src_port, dst_port, udp_len, 0) + vxlan, frame)
        header = _IPV6.pack((6 << 28) | (tos << 20) | flow_label, udp_len, _IPPROTO_UDP, ttl, src_ip, dst_ip)
    else:
        raise ValueError("src_ip and dst_ip must both be 4 (IPv4) or both 16 (IPv6) bytes")
    return b"".join((header, _UDP.pack(src_port, dst_port, udp_len, checksum), vxlan, frame))


# -- batches of one flow (C-level loops; the single-packet functions above stay the reference) ------------
_S12_15 = itemgetter(slice(12, 15))  # EtherType + IPv4 version/IHL of an untagged frame
_S20_24 = itemgetter(slice(20, 24))  # IPv4 fragment field, TTL, protocol
_S26_38 = itemgetter(slice(26, 38))  # IPv4 addresses and ports
_S12_14 = itemgetter(slice(12, 14))
_S20_21 = itemgetter(slice(20, 21))  # IPv6 next header
_S22_58 = itemgetter(slice(22, 58))  # IPv6 addresses and ports
_V4_FRAME = b"\x08\x00\x45"
_V6_TYPE = b"\x86\xdd"


def _batch_src_port(frames: list[bytes]) -> int | None:
    """:func:`flow_src_port` of every frame when they all hash the same fields (untagged IPv4 without
    options, unfragmented, or untagged IPv6; same protocol, addresses and ports), else None."""
    n = len(frames)
    f0 = frames[0]
    shortest = min(map(len, frames))
    if shortest < ETH_HEADER_SIZE + IPV4_HEADER_SIZE + 4:
        return None
    if list(map(_S12_15, frames)).count(_V4_FRAME) == n:
        a = list(map(_S20_24, frames))
        if a.count(a[0]) != n or f0[20] & 0x3F or f0[21]:
            return None
        b = list(map(_S26_38, frames))
    elif shortest >= ETH_HEADER_SIZE + IPV6_HEADER_SIZE + 4 and list(map(_S12_14, frames)).count(_V6_TYPE) == n:
        a = list(map(_S20_21, frames))
        if a.count(a[0]) != n:
            return None
        b = list(map(_S22_58, frames))
    else:
        return None
    if b.count(b[0]) != n:
        return None
    return flow_src_port(f0)


def encap_ip_batch(
    frames: list[bytes], *, vni: int, src_ip: bytes, dst_ip: bytes, dst_port: int = VXLAN_PORT
) -> list[bytes]:
    """:func:`encap_ip` (default TTL, TOS, ID, DF and checksum choices) of every frame, in order.

    Frames of one flow over IPv4 VTEPs (the bulk of a TCP stream) share one outer header per frame length:
    it is built once per length by :func:`encap_ip` and joined to each frame in a C-level loop, which is
    exact because that header depends only on the length (the outer UDP checksum is zero over IPv4).
    Anything else is encapsulated frame by frame.

    :raises ValueError: as :func:`encap_ip`.
    """
    if not frames:
        return []
    if len(src_ip) != 4:
        return [encap_ip(f, vni=vni, src_ip=src_ip, dst_ip=dst_ip, dst_port=dst_port) for f in frames]
    sport = _batch_src_port(frames) if len(frames) > 1 else None
    if sport is None:
        return [_outer_v4(len(f), vni, src_ip, dst_ip, dst_port, flow_src_port(f)) + f for f in frames]
    lens = list(map(len, frames))
    heads = {n: _outer_v4(n, vni, src_ip, dst_ip, dst_port, sport) for n in set(lens)}
    return list(map(bytes.__add__, map(heads.__getitem__, lens), frames))


_outer_cache: dict[tuple[int, int, bytes, bytes, int, int], bytes] = {}
_OUTER_CACHE_MAX = 4096


def _outer_v4(n: int, vni: int, src_ip: bytes, dst_ip: bytes, dst_port: int, src_port: int) -> bytes:
    """The 36-byte outer IPv4 + UDP + VXLAN header that :func:`encap_ip` puts in front of an ``n``-byte frame
    (it depends on nothing else over IPv4, whose outer UDP checksum is zero), built by it and cached."""
    key = (n, src_port, src_ip, dst_ip, vni, dst_port)
    head = _outer_cache.get(key)
    if head is None:
        if len(_outer_cache) >= _OUTER_CACHE_MAX:
            _outer_cache.clear()
        head = _outer_cache[key] = encap_ip(bytes(n), vni=vni, src_ip=src_ip, dst_ip=dst_ip, dst_port=dst_port,
                                            src_port=src_port)[:_OUTER_V4]
    return head


#: byte 0, total length, fragment field, protocol, UDP destination port and length, VXLAN words (BE)
_V4_VXLAN = struct.Struct("!BxH2xHxB10x2xHH2xII")
_AFTER_OUTER_V4 = itemgetter(slice(_OUTER_V4, None))


def decap_ip_batch(packets: list[bytes], *, dst_port: int = VXLAN_PORT) -> tuple[int, list[bytes]] | None:
    """:func:`decap_ip` of a batch that is all of one kind: IPv4 without options, unfragmented, UDP to
    ``dst_port``, exactly as long as the IP length says, one VXLAN header (I flag set, the same VNI and
    reserved bits) and a whole Ethernet header inside.  Returns ``(vni, frames)``, or None (nothing done)
    for any other batch, which the caller then takes packet by packet.

    :param packets: decrypted inner packets (trimmed to their IP length).
    """
    if not packets:
        return None
    rows = list(map(_V4_VXLAN.unpack_from, packets)) if min(map(len, packets)) >= _OUTER_V4 else []
    if not rows:
        return None
    b0, _, frag, proto, dport, _, w0, w1 = rows[0]
    if (b0 != 0x45 or frag & _IPV4_MF_OFFSET or proto != _IPPROTO_UDP or dport != dst_port
            or not (w0 >> 24) & VXLAN_FLAG_I):
        return None
    lens = list(map(len, packets))
    if min(lens) < _OUTER_V4 + ETH_HEADER_SIZE:
        return None
    ok = 0
    for n in set(lens):
        ok += rows.count((b0, n, frag, proto, dport, n - IPV4_HEADER_SIZE, w0, w1))
    if ok != len(packets):
        return None
    return w1 >> 8, list(map(_AFTER_OUTER_V4, packets))


def decap_ip(
    packet: bytes | bytearray | memoryview,
    *,
    dst_port: int = VXLAN_PORT,
    strict: bool = False,
    verify_checksum: bool = False,
) -> Decapsulated:
    """Parse a whole IPv4/IPv6 packet carrying VXLAN and return ``(vni, frame, src_ip)``.

    Bytes after the IP total/payload length are ignored (WireGuard padding).  IPv4 options are skipped.

    :param packet: the decrypted plaintext of a WireGuard transport message.
    :param dst_port: the UDP destination port to accept.
    :param strict: reject reserved VXLAN bits (Linux) instead of ignoring them (RFC 7348 §5).
    :param verify_checksum: check the IPv4 header checksum and the UDP checksum; a zero UDP checksum is
        accepted over IPv4 (RFC 7348 §5) and rejected over IPv6 (Linux default).
    :raises VxlanError: not IP, truncated, bad lengths, fragmented, not UDP, another port, a bad VXLAN
        header, an inner frame shorter than an Ethernet header, or (``verify_checksum``) a bad checksum.
    """
    n = len(packet)
    if n < 1:
        raise VxlanError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if n < IPV4_HEADER_SIZE:
            raise VxlanError("truncated IPv4 header")
        vihl, _tos, total, _id, frag, _ttl, proto, _csum, src_ip, dst_ip = _IPV4.unpack_from(packet)
        ihl = (vihl & 0x0F) * 4
        if ihl < IPV4_HEADER_SIZE or total < ihl or total > n:
            raise VxlanError(f"bad IPv4 lengths (ihl {ihl}, total {total}, have {n})")
        if frag & _IPV4_MF_OFFSET:
            raise VxlanError("IPv4 fragment (VXLAN must not be fragmented, RFC 7348 §4.3)")
        if proto != _IPPROTO_UDP:
            raise VxlanError(f"IPv4 protocol {proto} is not UDP")
        if verify_checksum and _sum16(packet[:ihl]):
            raise VxlanError("bad IPv4 header checksum")
        l4, end = ihl, total
        pseudo_tail = struct.pack("!BB", 0, _IPPROTO_UDP)
    elif version == 6:
        if n < IPV6_HEADER_SIZE:
            raise VxlanError("truncated IPv6 header")
        _vtf, payload_len, proto, _hop, src_ip, dst_ip = _IPV6.unpack_from(packet)
        l4, end = IPV6_HEADER_SIZE, IPV6_HEADER_SIZE + payload_len
        if payload_len == 0 or end > n:
            raise VxlanError(f"bad IPv6 payload length {payload_len} (have {n - IPV6_HEADER_SIZE})")
        if proto != _IPPROTO_UDP:
            raise VxlanError(f"IPv6 next header {proto} is not UDP (extension headers are not walked)")
        pseudo_tail = b""
    else:
        raise VxlanError(f"IP version {version} is neither 4 nor 6")
    if end - l4 < UDP_HEADER_SIZE:
        raise VxlanError("truncated UDP header")
    _sport, dport, udp_len, udp_csum = _UDP.unpack_from(packet, l4)
    if dport != dst_port:
        raise VxlanError(f"UDP destination port {dport} is not {dst_port}")
    if udp_len < UDP_HEADER_SIZE + VXLAN_HEADER_SIZE + ETH_HEADER_SIZE or l4 + udp_len > end:
        raise VxlanError(f"bad UDP length {udp_len} (room for {end - l4})")
    if verify_checksum:
        if udp_csum:
            if version == 4:
                pseudo = src_ip + dst_ip + pseudo_tail + _U16.pack(udp_len)
            else:
                pseudo = src_ip + dst_ip + struct.pack("!IxxxB", udp_len, _IPPROTO_UDP)
            if (_sum16(pseudo) + _sum16(packet[l4 : l4 + udp_len])) % 0xFFFF:
                raise VxlanError("bad UDP checksum")
        elif version == 6:
            raise VxlanError("zero UDP checksum over IPv6")
    vx = l4 + UDP_HEADER_SIZE
    word0, word1 = _HEADER.unpack_from(packet, vx)
    if not (word0 >> 24) & VXLAN_FLAG_I:
        raise VxlanError("VXLAN I flag (VNI valid) not set")
    if strict and (word0 != VXLAN_FLAG_I << 24 or word1 & 0xFF):
        raise VxlanError("VXLAN reserved bits set")
    return Decapsulated(word1 >> 8, bytes(packet[vx + VXLAN_HEADER_SIZE : l4 + udp_len]), bytes(src_ip))


def mtu_for_tap(tunnel_mtu: int, ipv6_vtep: bool, *, vlan_tags: int = 0) -> int:
    """The largest MTU a tap/bridge may use so that its frames, VXLAN-encapsulated, fit the tunnel MTU.

    ``tunnel_mtu - 50`` with IPv4 VTEPs, ``- 70`` with IPv6 ones (Linux ``VXLAN_HEADROOM``): 1420 → 1370 / 1350.
    The Ethernet MTU excludes the 14-byte header but a VLAN tag is extra, so pass ``vlan_tags`` when the tap
    carries tagged frames (Linux's vxlan does not account for them).

    :param tunnel_mtu: MTU of the WireGuard tunnel (e.g. 1420).
    :param ipv6_vtep: whether the outer (VTEP) addresses are IPv6.
    :param vlan_tags: how many 802.1Q/802.1ad tags the frames may carry.
    :raises ValueError: the result would be below the IPv4 minimum of 68, or negative tag count.
    """
    if vlan_tags < 0:
        raise ValueError("vlan_tags must be >= 0")
    headroom = VXLAN_HEADROOM_IPV6 if ipv6_vtep else VXLAN_HEADROOM_IPV4
    mtu = tunnel_mtu - headroom - VLAN_TAG_SIZE * vlan_tags
    if mtu < MIN_IPV4_MTU:
        raise ValueError(f"tunnel MTU {tunnel_mtu} leaves {mtu} for the tap, below {MIN_IPV4_MTU}")
    return mtu
