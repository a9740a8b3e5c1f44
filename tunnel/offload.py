"""TUN offload packet work: the virtio_net_hdr, GSO segmentation and GRO coalescing.

Theory of operation
-------------------
A tun device opened with ``IFF_VNET_HDR`` and configured with ``TUNSETOFFLOAD`` (``TUN_F_CSUM``,
``TUN_F_TSO4``, ``TUN_F_TSO6``, optionally ``TUN_F_USO4``/``TUN_F_USO6``) prefixes every packet read and
written with a ``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h):

* **Read side (send path, GSO).**  The kernel hands us TCP "super-packets" of up to 64 KiB (one IP+TCP
  header, many MSS worth of payload) and packets whose L4 checksum is left for us to finish
  (``VIRTIO_NET_HDR_F_NEEDS_CSUM``: the checksum field holds only the pseudo-header sum).  A WireGuard peer
  must receive standalone, valid IP packets, so :func:`segment` turns one read into a list of ordinary IP
  packets, exactly as the kernel's software GSO (``tcp_gso_segment``/``__udp_gso_segment``) would:

  1. unpack and validate the header (the checks of :meth:`VirtioNetHdr.unpack`);
  2. ``GSO_NONE``: finish the checksum if asked (``skb_checksum_help`` semantics) and return the packet;
  3. ``TCPV4``/``TCPV6``/``UDP_L4``: parse the IP and L4 headers ourselves (``hdr_len`` from the kernel is
     only a hint: it can be the whole linear part of the skb), cut the payload into ``gso_size`` pieces and
     give each piece its own copy of the headers with length, IPv4 ID and header checksum, TCP sequence
     number and flags, and a full L4 checksum.

* **Write side (receive path, GRO).**  :func:`coalesce` merges consecutive in-order TCP segments of one
  flow (decrypted from WireGuard) into one super-packet with a GSO header, so the kernel's stack sees one
  big skb instead of ~45 small ones and we make one ``write`` instead of ~45.  The merged packet carries
  ``NEEDS_CSUM`` and the pseudo-header partial sum (``CHECKSUM_PARTIAL``), as the kernel expects.
  Everything else goes out unchanged behind an all-zero (``GSO_NONE``, flags 0) header: with a vnet-hdr
  tun *every* write needs the header, and flags 0 means the kernel verifies the checksums itself.

Taps
----
A tap's buffers are Ethernet frames: the same work with the Ethernet header (14 bytes, 18 or 22 with one or
two 802.1Q/802.1ad tags) in front of the IP header.  ``segment(l2=True)`` copies it in front of every
segment (``csum_start`` counts it, as the kernel writes it), :func:`gro` and :func:`coalesce` take it as
``l2=`` and put it back in front of each output (counted in ``hdr_len`` and ``csum_start``), and
:func:`gro_frames` groups a batch of frames by that header.  One segmenter and one GRO serve tun and tap.

Checksums
---------
The one's-complement sum of 16-bit big-endian words equals the value of the bytes read as one big-endian
integer, modulo ``0xffff`` (because ``2**16 == 1 (mod 0xffff)``).  ``int.from_bytes`` and a few big-int
folds (``x & (2**h - 1)`` plus ``x >> h`` with ``h`` a multiple of 16, and of CPython's 30-bit digit, so
``2**h - 1`` is a multiple of ``0xffff``) run at C speed; the final ``% 0xffff`` on a short integer is
cheap.  Measured in CPU time on the reference machine (benchmarks/micro_offload.py): ~2.6 us per 1440
bytes, against ~3.1 us for a plain ``int.from_bytes(d) % 0xffff``, ~7 us for
``sum(memoryview(d).cast('Q'))`` and ~14 us for ``sum(array('H', d))``.  :func:`segment` reads each
segment's payload as two halves (same residue, shorter folds).  The checksum is still about two thirds of
the ~3.5 us that :func:`segment` spends per 1380-byte segment; the rest is one ``struct.pack`` of the
headers and one concatenation per segment.

Byte order: the virtio_net_hdr fields are in the tun's "vnet endianness", which is the host's native order
unless ``TUNSETVNETLE``/``TUNSETVNETBE`` says otherwise; pyvpn targets little-endian hosts (x86-64, arm64),
so this module packs them little-endian.  IP, TCP and UDP fields are big-endian (network order).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import repeat
from operator import and_, itemgetter
from typing import Final, Literal

__all__ = [
    "BULK_MIN",
    "MAX_SUPER_PACKET",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_F_RSC_INFO",
    "VIRTIO_NET_HDR_GSO_ECN",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VIRTIO_NET_HDR_LEN",
    "VIRTIO_NET_HDR_MRG_RXBUF_LEN",
    "OffloadError",
    "VirtioNetHdr",
    "checksum",
    "coalesce",
    "gro",
    "gro_frames",
    "l2_header_len",
    "segment",
    "split_reads",
    "with_hdr",
    "without_hdr",
]

# --- specification: include/uapi/linux/virtio_net.h -------------------------------------------------
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1  # csum_start/csum_offset are valid; finish the L4 checksum
VIRTIO_NET_HDR_F_DATA_VALID: Final = 2  # checksum already verified (tun sets it for CHECKSUM_UNNECESSARY)
VIRTIO_NET_HDR_F_RSC_INFO: Final = 4  # receive-segment-coalescing info (never set by tun)
VIRTIO_NET_HDR_GSO_NONE: Final = 0
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
VIRTIO_NET_HDR_GSO_UDP: Final = 3  # UFO (IP fragmentation); the kernel no longer generates it
VIRTIO_NET_HDR_GSO_TCPV6: Final = 4
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5  # USO (Linux >= 6.2 on tun)
VIRTIO_NET_HDR_GSO_ECN: Final = 0x80  # OR-ed into gso_type: the TCP segment has CWR set

#: ``struct virtio_net_hdr``: u8 flags, u8 gso_type, then u16 hdr_len, gso_size, csum_start, csum_offset.
#: This is what a tun uses unless told otherwise.
VIRTIO_NET_HDR_LEN: Final = 10
#: ``struct virtio_net_hdr_mrg_rxbuf`` adds u16 num_buffers.  Only used when the tun was switched to it with
#: ``TUNSETVNETHDRSZ`` (virtio 1.0 devices always use 12 bytes); tun ignores num_buffers on write and writes
#: 0 on read, so the only reason to choose 12 is to share buffers with virtio-1.0-shaped code.
VIRTIO_NET_HDR_MRG_RXBUF_LEN: Final = 12

# --- implementation -----------------------------------------------------------------------------
#: Largest IP packet :func:`coalesce` builds (the IPv4 total-length field is 16 bits; tun's default
#: gso_max_size is 65536).
MAX_SUPER_PACKET: Final = 65535
#: Smallest batch for which the data path's bulk branches (:func:`gro` here, ``route_reads`` and
#: ``Device._route_flow`` in vpn/, the policy's one-verdict batch) try their C-level loops before the general
#: loop: below it the checks cost more than they save.  Each bulk branch gives exactly its loop's result or
#: declines; the functions that have one take ``bulk=False`` to run the loop alone (tests compare both).
BULK_MIN: Final = 4
#: Most datagrams :func:`coalesce` merges into one USO packet (the kernel's UDP_MAX_SEGMENTS was 64
#: before it became 128; stay under both).
UDP_MAX_SEGMENTS: Final = 64

_HDR10 = struct.Struct("<BBHHHH")
_HDR12 = struct.Struct("<BBHHHHH")
_KNOWN_FLAGS = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO
_GSO_TYPES = frozenset(
    (VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_TCPV6,
     VIRTIO_NET_HDR_GSO_UDP_L4)
)

_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_TCP_FIN: Final = 0x01
_TCP_SYN: Final = 0x02
_TCP_RST: Final = 0x04
_TCP_PSH: Final = 0x08
_TCP_ACK: Final = 0x10
_TCP_URG: Final = 0x20
_TCP_ECE: Final = 0x40
_TCP_CWR: Final = 0x80
_TCP_CSUM_OFFSET: Final = 16
_UDP_CSUM_OFFSET: Final = 6

Buffer = bytes | bytearray | memoryview


class OffloadError(ValueError):
    """A virtio_net_hdr or the packet behind it is malformed, truncated or unsupported."""


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """``struct virtio_net_hdr`` (10 bytes) or ``virtio_net_hdr_mrg_rxbuf`` (12 bytes).

    :param flags: ``VIRTIO_NET_HDR_F_*`` bits.
    :param gso_type: ``VIRTIO_NET_HDR_GSO_*``, possibly OR-ed with ``VIRTIO_NET_HDR_GSO_ECN``.
    :param hdr_len: length of the headers to copy into each segment (a hint only: tun may report the whole
        linear part of the skb here).
    :param gso_size: payload bytes per segment (the MSS for TCP); non-zero when ``gso_type`` is not NONE.
    :param csum_start: offset of the L4 header from the start of the IP packet (with NEEDS_CSUM).
    :param csum_offset: offset of the checksum field from ``csum_start`` (16 for TCP, 6 for UDP).
    :param num_buffers: only in the 12-byte form; ``None`` means the 10-byte form.
    """

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int | None = None

    def __post_init__(self) -> None:
        for name in ("flags", "gso_type"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= 0xFF:
                raise OffloadError(f"virtio_net_hdr.{name} {v!r} is not a u8")
        for name in ("hdr_len", "gso_size", "csum_start", "csum_offset"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= 0xFFFF:
                raise OffloadError(f"virtio_net_hdr.{name} {v!r} is not a u16")
        nb = self.num_buffers
        if nb is not None and (type(nb) is not int or not 0 <= nb <= 0xFFFF):
            raise OffloadError(f"virtio_net_hdr.num_buffers {nb!r} is not a u16")

    @property
    def size(self) -> int:
        """Packed size: 10, or 12 with ``num_buffers``."""
        return VIRTIO_NET_HDR_LEN if self.num_buffers is None else VIRTIO_NET_HDR_MRG_RXBUF_LEN

    def pack(self) -> bytes:
        """Encode in the tun's (little-endian) vnet byte order."""
        if self.num_buffers is None:
            return _HDR10.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                               self.csum_offset)
        return _HDR12.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                           self.csum_offset, self.num_buffers)

    @classmethod
    def unpack(cls, data: Buffer, *, hdr_size: int = VIRTIO_NET_HDR_LEN) -> VirtioNetHdr:
        """Decode and validate the header at the start of ``data``.

        :param data: at least ``hdr_size`` bytes (what a vnet-hdr tun read returns).
        :param hdr_size: 10 or 12, as set on the tun with ``TUNSETVNETHDRSZ``.
        :raises OffloadError: short buffer, unknown flags or GSO type, or ``gso_size`` 0 with GSO.
        """
        num_buffers = None if hdr_size == VIRTIO_NET_HDR_LEN else 0
        fields = _unpack_hdr(data, hdr_size)
        if num_buffers is not None:
            num_buffers = int.from_bytes(data[10:12], "little")
        return cls(*fields, num_buffers)


def _unpack_hdr(data: Buffer, hdr_size: int) -> tuple[int, int, int, int, int, int]:
    """Validated ``(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)`` (see ``unpack``)."""
    if hdr_size != VIRTIO_NET_HDR_LEN and hdr_size != VIRTIO_NET_HDR_MRG_RXBUF_LEN:
        raise OffloadError(f"hdr_size must be 10 or 12, not {hdr_size!r}")
    if len(data) < hdr_size:
        raise OffloadError(f"need {hdr_size} bytes of virtio_net_hdr, got {len(data)}")
    fields: tuple[int, int, int, int, int, int] = _HDR10.unpack_from(data)
    flags, gso_type, _, gso_size, _, _ = fields
    if flags & ~_KNOWN_FLAGS:
        raise OffloadError(f"unknown virtio_net_hdr flags {flags:#x}")
    if gso_type:
        base = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
        if base not in _GSO_TYPES or (gso_type != base and base not in (1, 4)):
            raise OffloadError(f"unknown virtio_net_hdr gso_type {gso_type:#x}")
        if gso_size == 0:
            raise OffloadError("GSO packet with gso_size 0")
    return fields


def _check_hdr_size(hdr_size: int) -> None:
    if hdr_size not in (VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_MRG_RXBUF_LEN):
        raise OffloadError(f"hdr_size must be 10 or 12, not {hdr_size!r}")


# --- checksums ------------------------------------------------------------------------------------

_fold_plans: dict[int, tuple[tuple[int, int], ...]] = {}
_FOLD_STOP = 1600  # bits; below this a single `% 0xffff` beats another fold step (measured)


def _fold_plan(nbytes: int) -> tuple[tuple[int, int], ...]:
    """Fold steps ``(h, 2**h - 1)`` that shrink an ``nbytes``-byte integer to about 1600 bits.

    ``h`` is a multiple of 240 bits (16-bit words and 30-bit CPython digits), so every step keeps the value
    modulo ``0xffff`` and the shifts and masks are digit-aligned.
    """
    plan = _fold_plans.get(nbytes)
    if plan is None:
        steps = []
        bits = nbytes * 8
        while bits > _FOLD_STOP:
            h = ((bits >> 1) + 239) // 240 * 240
            steps.append((h, (1 << h) - 1))
            bits = h + 1
        plan = tuple(steps)
        if len(_fold_plans) < 4096:
            _fold_plans[nbytes] = plan
    return plan


def _sum16(data: Buffer) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words, as a residue modulo ``0xffff``.

    An odd trailing byte is padded with a zero byte (RFC 1071).  The result is in ``[0, 0xfffe]``; 0 stands
    for the one's-complement "0xffff" (and for all-zero data).
    """
    n = len(data)
    x = int.from_bytes(data, "big")
    if n > _FOLD_STOP // 8:
        for h, m in _fold_plan(n):
            x = (x & m) + (x >> h)
    x %= 0xFFFF
    if n & 1:
        x = (x << 8) % 0xFFFF
    return x


def checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 Internet checksum of ``data`` (plus ``initial``, e.g. a pseudo-header sum).

    :returns: the 16-bit value to store in the checksum field (0 when the sum is 0xffff, as the kernel's
        ``csum_fold`` does; UDP callers map 0 to 0xffff themselves).  All-zero input (sum 0) gives 0xffff.
    """
    r = (_sum16(data) + initial) % 0xFFFF
    if r:
        return 0xFFFF - r
    mv = memoryview(data).cast("B")
    return 0xFFFF if initial == 0 and mv.tobytes().count(0) == len(mv) else 0


# --- header parsing shared by segment() and coalesce() --------------------------------------------


def _parse_ip(pkt: Buffer) -> tuple[int, int, int, int]:
    """Return ``(version, l4_offset, l4_proto, ip_len)`` of a packet whose L4 header follows the IP header.

    :raises OffloadError: truncated or malformed header, fragment, IPv6 extension header or jumbogram.
    """
    n = len(pkt)
    if n < 1:
        raise OffloadError("empty packet")
    version = pkt[0] >> 4
    if version == 4:
        if n < 20:
            raise OffloadError(f"IPv4 packet of {n} bytes")
        l4 = (pkt[0] & 0x0F) * 4
        ip_len = (pkt[2] << 8) | pkt[3]
        if l4 < 20 or ip_len < l4 or ip_len > n:
            raise OffloadError(f"bad IPv4 header (ihl {l4}, total length {ip_len}, have {n})")
        if (pkt[6] & 0x3F) or pkt[7]:
            raise OffloadError("IPv4 fragment cannot be segmented")
        return 4, l4, pkt[9], ip_len
    if version == 6:
        if n < 40:
            raise OffloadError(f"IPv6 packet of {n} bytes")
        plen = (pkt[4] << 8) | pkt[5]
        if plen == 0 or 40 + plen > n:
            raise OffloadError(f"bad IPv6 payload length {plen} (have {n - 40})")
        return 6, 40, pkt[6], 40 + plen
    raise OffloadError(f"IP version {version}")


def _pseudo_sum(pkt: Buffer, version: int) -> int:
    """Sum of the source and destination addresses (the address part of the pseudo-header)."""
    if version == 4:
        return int.from_bytes(pkt[12:20], "big") % 0xFFFF
    return int.from_bytes(pkt[8:40], "big") % 0xFFFF


# --- segment (read side) --------------------------------------------------------------------------


def segment(buf: Buffer, *, hdr_size: int = VIRTIO_NET_HDR_LEN, l2: bool = False) -> list[bytes]:
    """Turn what a vnet-hdr tun (or tap) read returned into complete, valid IP packets (or Ethernet frames).

    :param buf: the virtio_net_hdr followed by one packet or GSO super-packet.
    :param hdr_size: the tun's vnet header size, 10 (default) or 12.
    :param l2: the device is a tap: behind the header is an Ethernet frame (14 bytes of header, 4 more per
        802.1Q/802.1ad tag, at most two), whose header is copied in front of every segment; ``csum_start``
        then counts from the start of the frame, as the kernel writes it.
    :returns: one packet for ``GSO_NONE``; ``ceil(payload / gso_size)`` packets for TCP and USO.
    :raises OffloadError: malformed header or packet, unsupported GSO type (UFO), inconsistent fields.
    """
    if type(buf) is memoryview and (buf.ndim != 1 or buf.itemsize != 1):
        try:
            buf = buf.cast("B")
        except TypeError as e:
            raise OffloadError(f"unusable buffer: {e}") from None
    flags, gso_type, _, gso_size, csum_start, csum_offset = _unpack_hdr(buf, hdr_size)
    if not gso_type and not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:  # the per-packet common case
        if len(buf) == hdr_size:
            raise OffloadError("empty packet")
        return [bytes(buf[hdr_size:])]
    mv = memoryview(buf)
    pkt = mv[hdr_size:]
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:  # with NEEDS_CSUM
        if not len(pkt):
            raise OffloadError("empty packet")
        return [_finish_csum(pkt, csum_start, csum_offset)]
    if gso == VIRTIO_NET_HDR_GSO_UDP:
        raise OffloadError("UFO (VIRTIO_NET_HDR_GSO_UDP) is not supported")
    l2len = l2_header_len(pkt) if l2 else 0
    version, l4, proto, ip_len = _parse_ip(pkt[l2len:])
    if l2 and (pkt[l2len - 2] == 0x08) != (version == 4):
        raise OffloadError(f"EtherType {bytes(pkt[l2len - 2:l2len]).hex()} carries an IPv{version} packet")
    if gso == VIRTIO_NET_HDR_GSO_UDP_L4:
        want_proto, csum_off = _PROTO_UDP, _UDP_CSUM_OFFSET
    else:
        if (gso == VIRTIO_NET_HDR_GSO_TCPV4) != (version == 4):
            raise OffloadError(f"gso_type {gso_type:#x} on an IPv{version} packet")
        want_proto, csum_off = _PROTO_TCP, _TCP_CSUM_OFFSET
    if proto != want_proto:
        raise OffloadError(f"gso_type {gso_type:#x} on IP protocol {proto}")
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (csum_start != l2len + l4 or csum_offset != csum_off):
        raise OffloadError(f"csum_start/offset {csum_start}/{csum_offset}, expected {l2len + l4}/{csum_off}")
    raw = buf if type(buf) is bytes else mv.tobytes()
    off = hdr_size + l2len
    mac = raw[hdr_size:off]
    if want_proto == _PROTO_UDP:
        if ip_len < l4 + 8:
            raise OffloadError("truncated UDP header")
        return _segment_udp(raw, off, ip_len, version, l4, gso_size, mac)
    if ip_len < l4 + 20:
        raise OffloadError("truncated TCP header")
    thl = (pkt[l2len + l4 + 12] >> 4) * 4
    if thl < 20 or l4 + thl > ip_len:
        raise OffloadError(f"bad TCP data offset {thl}")
    return _segment_tcp(raw, off, ip_len, version, l4, thl, gso_size, mac)


#: EtherTypes of the VLAN tags :func:`l2_header_len` steps over (802.1Q C-tag, 802.1ad S-tag).
_VLAN_TPIDS: Final = (0x8100, 0x88A8)
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ETH_HLEN: Final = 14


def l2_header_len(frame: Buffer) -> int:
    """Length of the Ethernet header of an IPv4/IPv6 frame: 14, 18 (one VLAN tag) or 22 (two).

    :raises OffloadError: a runt, more than two tags, or an EtherType other than IPv4/IPv6 (only IP frames
        can be segmented or coalesced).
    """
    n = len(frame)
    off = 12
    for _ in range(3):
        if n < off + 2:
            raise OffloadError(f"Ethernet frame of {n} bytes")
        et = (frame[off] << 8) | frame[off + 1]
        if et == ETH_P_IP or et == ETH_P_IPV6:
            return off + 2
        if et not in _VLAN_TPIDS or off > 16:
            break
        off += 4
    raise OffloadError(f"EtherType {et:#06x} cannot be segmented")


def _finish_csum(pkt: memoryview, start: int, offset: int) -> bytes:
    """``skb_checksum_help``: sum ``pkt[start:]`` (the field holds the pseudo-header seed) and store it."""
    at = start + offset
    if at + 2 > len(pkt):
        raise OffloadError(f"csum_start {start} + csum_offset {offset} beyond a {len(pkt)}-byte packet")
    r = _sum16(pkt[start:])
    c = 0xFFFF - r  # the kernel writes 0xffff (CSUM_MANGLED_0) rather than 0
    return b"".join((pkt[:at], c.to_bytes(2, "big"), pkt[at + 2:]))


_tcp_structs: dict[tuple[int, int, int, int], struct.Struct] = {}


def _tcp_struct(version: int, l4: int, thl: int, l2len: int) -> struct.Struct:
    """Header layout with the per-segment fields broken out (see the pack calls in `_segment_tcp`); the
    first field is the Ethernet header of a tap frame (``0s``, empty, for a tun)."""
    key = (version, l4, thl, l2len)
    s = _tcp_structs.get(key)
    if s is None:
        if version == 4:
            # ver/ihl+tos, total length, id, frag+ttl+proto, header checksum, addrs+options+ports,
            # seq, ack+data offset, flags, window, checksum, urgent pointer+options
            fmt = f"!{l2len}s2sHH4sH{l4 - 12 + 4}sI5sB2sH{thl - 18}s"
        else:
            # ver/tc/flow label, payload length, next header+hop limit+addrs+ports, then as above
            fmt = f"!{l2len}s4sH{l4 - 6 + 4}sI5sB2sH{thl - 18}s"
        s = _tcp_structs[key] = struct.Struct(fmt)
    return s


def _payload_sums(raw: bytes, pos: int, stop: int, gso_size: int) -> list[int]:
    """Residues modulo 0xffff of the 16-bit-word sums of ``raw[pos:stop]`` cut every ``gso_size`` bytes.

    ``raw`` is a ``bytes`` object, so each slice goes to ``int.from_bytes`` without a second copy.  For an
    even ``gso_size`` each piece is read as two even-length halves whose values are added (the same
    residue, and a shorter first fold: measured ~8 % faster than one ``from_bytes`` of the whole piece).
    A short odd-length last piece is padded with a zero byte as RFC 1071 says.
    """
    frombytes = int.from_bytes
    sums: list[int] = []
    append = sums.append
    full_stop = pos + (stop - pos) // gso_size * gso_size
    if gso_size & 1 or gso_size < 2 * _FOLD_STOP // 8:
        plan = _fold_plan(gso_size)
        for p in range(pos, full_stop, gso_size):
            x = frombytes(raw[p:p + gso_size], "big")
            for h, m in plan:
                x = (x & m) + (x >> h)
            append(x % 0xFFFF if not gso_size & 1 else (x << 8) % 0xFFFF)
    else:
        a = gso_size // 4 * 2
        plan = _fold_plan(gso_size - a)
        if len(plan) == 2:  # ~800..3000-byte segments: the common case, unrolled
            (h1, m1), (h2, m2) = plan
            for p in range(pos, full_stop, gso_size):
                x = frombytes(raw[p:p + a], "big") + frombytes(raw[p + a:p + gso_size], "big")
                x = (x & m1) + (x >> h1)
                append(((x & m2) + (x >> h2)) % 0xFFFF)
        else:
            for p in range(pos, full_stop, gso_size):
                x = frombytes(raw[p:p + a], "big") + frombytes(raw[p + a:p + gso_size], "big")
                for h, m in plan:
                    x = (x & m) + (x >> h)
                append(x % 0xFFFF)
    if full_stop < stop:
        append(_sum16(raw[full_stop:stop]))
    return sums


def _segment_tcp(raw: bytes, off: int, total: int, version: int, l4: int, thl: int,
                 gso_size: int, mac: bytes = b"") -> list[bytes]:
    """Cut the TCP super-packet ``raw[off:off + total]`` (see :func:`segment`); ``mac`` goes in front of
    each segment (a tap frame's Ethernet header)."""
    hl = l4 + thl
    head = raw[off:off + hl]
    seq0 = int.from_bytes(head[l4 + 4:l4 + 8], "big")
    flags0 = head[l4 + 13]
    st = _tcp_struct(version, l4, thl, len(mac))
    # Constant part of the TCP checksum: addresses, protocol, and the TCP header without seq, the flags
    # byte and the checksum (the flags byte is the low byte of its word, so it adds as a plain integer).
    tcp_base = (_pseudo_sum(head, version) + _PROTO_TCP
                + _sum16(head[l4:l4 + 4] + head[l4 + 8:l4 + 13] + b"\0" + head[l4 + 14:l4 + 16]
                         + head[l4 + 18:hl]) + thl)
    ack5, win2, tail = head[l4 + 8:l4 + 13], head[l4 + 14:l4 + 16], head[l4 + 18:hl]
    ip_id0 = ip_base = 0
    ip_mid1 = b""
    if version == 4:
        ip_id0 = (head[4] << 8) | head[5]
        # Constant part of the IPv4 header checksum: everything but total length, id and the checksum.
        ip_base = _sum16(head[0:2] + head[6:10] + head[12:l4])
        ip_pre, ip_mid1, ip_mid2 = head[0:2], head[6:10], head[12:l4 + 4]
    else:
        ip_pre, ip_mid2 = head[0:4], head[6:l4 + 4]

    pos = off + hl
    stop = off + total
    sums = _payload_sums(raw, pos, stop, gso_size)
    nseg = len(sums) or 1
    # FIN and PSH only on the last segment, CWR only on the first (Linux tcp_gso_segment).
    fls = [flags0 & ~(_TCP_FIN | _TCP_PSH | _TCP_CWR)] * nseg
    if nseg == 1:
        fls[0] = flags0
        sums = sums or [0]
    else:
        fls[0] = flags0 & ~(_TCP_FIN | _TCP_PSH)
        fls[-1] = flags0 & ~_TCP_CWR
    out: list[bytes] = []
    append = out.append
    pack = st.pack
    for k in range(nseg):
        end = pos + gso_size
        if end > stop:  # noqa: PLR1730 - an if is cheaper than min() here
            end = stop
        n = end - pos
        seq = (seq0 + k * gso_size) & 0xFFFFFFFF
        fl = fls[k]
        c = (tcp_base + n + (seq >> 16) + (seq & 0xFFFF) + fl + sums[k]) % 0xFFFF
        tc = 0xFFFF - c if c else 0
        if version == 4:
            ip_id = (ip_id0 + k) & 0xFFFF
            tot = hl + n
            ic = (ip_base + tot + ip_id) % 0xFFFF
            append(pack(mac, ip_pre, tot, ip_id, ip_mid1, 0xFFFF - ic if ic else 0, ip_mid2, seq, ack5, fl,
                        win2, tc, tail) + raw[pos:end])
        else:
            append(pack(mac, ip_pre, thl + n, ip_mid2, seq, ack5, fl, win2, tc, tail) + raw[pos:end])
        pos = end
    return out


def _segment_udp(raw: bytes, off: int, total: int, version: int, l4: int, gso_size: int,
                 mac: bytes = b"") -> list[bytes]:
    """Cut the UDP (USO) super-packet ``raw[off:off + total]`` into datagrams (see :func:`segment`);
    ``mac`` goes in front of each (a tap frame's Ethernet header)."""
    hl = l4 + 8
    head = raw[off:off + hl]
    # Addresses, protocol and ports; the UDP length appears twice (pseudo-header and UDP header).
    udp_base = _pseudo_sum(head, version) + _PROTO_UDP + _sum16(head[l4:l4 + 4])
    ip_id0 = ip_base = 0
    ip_mid1 = b""
    if version == 4:
        ip_id0 = (head[4] << 8) | head[5]
        ip_base = _sum16(head[0:2] + head[6:10] + head[12:l4])
        st = struct.Struct(f"!{len(mac)}s2sHH4sH{l4 - 12 + 4}sHH")
        ip_pre, ip_mid1, ip_mid2 = head[0:2], head[6:10], head[12:l4 + 4]
    else:
        st = struct.Struct(f"!{len(mac)}s4sH{l4 - 6 + 4}sHH")
        ip_pre, ip_mid2 = head[0:4], head[6:l4 + 4]
    pos = off + hl
    stop = off + total
    sums = _payload_sums(raw, pos, stop, gso_size) or [0]
    out: list[bytes] = []
    append = out.append
    pack = st.pack
    for k in range(len(sums)):
        end = pos + gso_size
        if end > stop:  # noqa: PLR1730 - an if is cheaper than min() here
            end = stop
        ulen = 8 + end - pos
        uc = 0xFFFF - (udp_base + 2 * ulen + sums[k]) % 0xFFFF  # 0 would mean "no checksum": send 0xffff
        if version == 4:
            ip_id = (ip_id0 + k) & 0xFFFF
            tot = l4 + ulen
            ic = (ip_base + tot + ip_id) % 0xFFFF
            ipc = 0xFFFF - ic if ic else 0
            append(pack(mac, ip_pre, tot, ip_id, ip_mid1, ipc, ip_mid2, ulen, uc) + raw[pos:end])
        else:
            append(pack(mac, ip_pre, ulen, ip_mid2, ulen, uc) + raw[pos:end])
        pos = end
    return out


# --- coalesce (write side) ------------------------------------------------------------------------


class _Item:
    """One output super-packet being built from in-order segments of one flow."""

    __slots__ = (
        "base",
        "first",
        "gso",
        "hl",
        "l4",
        "mask",
        "next_seq",
        "open",
        "parts",
        "proto",
        "psh",
        "shift",
        "sig",
        "size",
        "tmpl",
        "version",
    )

    def __init__(self, first: bytes, version: int, proto: int, l4: int, hl: int, sig: object,
                 gso: int, next_seq: int, psh: bool) -> None:
        self.first = first
        self.version = version
        self.proto = proto
        self.l4 = l4
        self.hl = hl
        self.sig = sig
        self.gso = gso  # payload length of the first segment = gso_size
        self.parts: list[bytes] = []  # payloads of the segments after the first
        self.size = len(first)  # IP length of the super-packet so far
        self.next_seq = next_seq
        self.open = not psh  # PSH ends a super-packet (Linux tcp_gro_receive flushes on it)
        self.psh = psh
        # Fast path (TCP): the next full-size segment's header, read as one big-endian integer and masked
        # with `mask` (which drops the IPv4 ID and checksum, PSH and the TCP checksum), must equal `tmpl`:
        # the first header with the expected sequence number.  Built on first use (`template`), since
        # most items in a batch of unrelated packets never get a second segment.
        self.mask = self.base = self.shift = 0
        self.tmpl = -1

    def template(self) -> int:
        """Build the fast-path mask and template (TCP items only); return the template."""
        self.mask, _, self.shift, seq_bits = _tcp_mask(self.version, self.hl)
        self.base = int.from_bytes(self.first[:self.hl], "big") & self.mask & ~seq_bits
        self.tmpl = self.base | (self.next_seq << self.shift)
        return self.tmpl

    def build(self, vnet_none: bytes, hdr_size: int, l2: bytes = b"") -> bytes:
        """The buffer to write: ``vnet_none`` (the all-zero header, then ``l2``) and the lone packet, or
        the super-packet behind its GSO header and ``l2`` (a tap frame's Ethernet header)."""
        first = self.first
        if not self.parts:
            return vnet_none + first
        parts: list[bytes | bytearray] = [b"", b"", first[self.hl:], *self.parts]
        return _super_packet(first, parts, self.version, self.hl, self.size, self.gso, self.psh, l2,
                             proto=self.proto, hdr_size=hdr_size)


#: (version, header length) -> :func:`_tcp_mask`'s answer, built once per header shape.
_tcp_masks: dict[tuple[int, int], tuple[int, int, int, int]] = {}


def _tcp_mask(version: int, hl: int) -> tuple[int, int, int, int]:
    """``(mask, short_mask, seq_shift, seq_bits)`` for the merging fast paths (:func:`coalesce` and
    :func:`gro`) on an ``hl``-byte IP+TCP header read as one big-endian integer: the header bits that must
    equal the first segment's (all but the IPv4 ID and checksum, PSH and the TCP checksum), the same without
    the IP length (for a shorter last segment), and where the sequence number sits."""
    key = (version, hl)
    r = _tcp_masks.get(key)
    if r is None:
        l4 = 20 if version == 4 else 40
        m = bytearray(b"\xff" * hl)
        if version == 4:
            m[4:6] = m[10:12] = b"\0\0"  # IPv4 ID and header checksum may differ
        m[l4 + 13] &= ~_TCP_PSH & 0xFF
        m[l4 + 16:l4 + 18] = b"\0\0"  # TCP checksum
        shift = 8 * (hl - l4 - 8)
        mask = int.from_bytes(m, "big")
        length = 0xFFFF << 8 * (hl - (4 if version == 4 else 6))  # IPv4 total / IPv6 payload length
        r = _tcp_masks[key] = (mask, mask & ~length, shift, 0xFFFFFFFF << shift)
    return r


# IPv4 without options + fixed TCP header: ver/ihl+tos, total length, (id), frag+ttl+proto, (checksum),
# addresses+ports, seq, ack+data offset, flags, window, (checksum)
_TCP4_KEY = struct.Struct("!2sH2x4s2x12sI5sB2s2x")
# IPv6 + fixed TCP header: ver/tc/flow label, payload length, next header+hop limit, addresses+ports, ...
_TCP6_KEY = struct.Struct("!4sH2s36sI5sB2s2x")
# IPv6 extension headers (IANA "IPv6 Extension Header Types") and No Next Header
_IPV6_EXT = frozenset((0, 43, 44, 50, 51, 59, 60, 135, 139, 140, 253, 254))
_TCP_FLAGS_MASK = 0xFF & ~(_TCP_PSH | _TCP_ECE)  # what remains must be exactly ACK


_VNET_NONE = {VIRTIO_NET_HDR_LEN: bytes(VIRTIO_NET_HDR_LEN),
              VIRTIO_NET_HDR_MRG_RXBUF_LEN: bytes(VIRTIO_NET_HDR_MRG_RXBUF_LEN)}


def _close(item: _Item | None) -> None:
    if item is not None:
        item.open = False


def _l4_csum_ok(p: bytes, version: int, l4: int, proto: int) -> bool:
    r = (_pseudo_sum(p, version) + proto + (len(p) - l4) + _sum16(memoryview(p)[l4:])) % 0xFFFF
    return r == 0


def coalesce(packets: list[bytes], *, hdr_size: int = VIRTIO_NET_HDR_LEN, udp: bool = False,
             verify_csum: bool = False, max_size: int = MAX_SUPER_PACKET, l2: bytes = b"") -> list[bytes]:
    """Merge in-order TCP segments of one flow into GSO super-packets, ready for a vnet-hdr tun write.

    A TCP segment joins the current super-packet of its flow (same addresses and ports) when: IPv4 has no
    options, DF set and is not a fragment, or IPv6 has no extension headers; the TOS/traffic class, TTL/hop
    limit (and IPv6 flow label), ACK number, window, data offset, TCP options and ECE flag equal the first
    segment's; flags are ACK or ACK|PSH (no SYN, FIN, RST, URG, CWR); it carries payload; its sequence
    number follows the previous segment; every earlier segment had exactly ``gso_size`` bytes (the first
    segment's payload) and this one has at most that many; no earlier segment had PSH; and the result stays
    within ``max_size``.  Any TCP packet of the flow that does not join closes the flow's super-packet, so
    the order within each flow is kept; packets of different flows may move relative to each other.

    With ``udp=True`` (only if the tun accepted ``TUN_F_USO4|TUN_F_USO6``), UDP datagrams of one flow with
    equal sizes (the last may be shorter), a non-zero checksum, IPv4 DF and no options, are merged into a
    ``GSO_UDP_L4`` packet of at most :data:`UDP_MAX_SEGMENTS` datagrams; the kernel delivers them as
    separate datagrams again.

    :param packets: plain IP packets (already trimmed to their IP length; longer ones are not merged).
    :param hdr_size: the tun's vnet header size, 10 (default) or 12.
    :param udp: also merge UDP datagrams into USO packets.
    :param verify_csum: check each packet's L4 checksum before merging it (wireguard-go does).  Off by
        default: kernel WireGuard marks decrypted packets CHECKSUM_UNNECESSARY and GROs them unverified,
        because the AEAD already authenticated them (wireguard-linux-compat src/receive.c,
        ``wg_packet_consume_data_done``); checking costs about as much as the decryption.
    :param max_size: largest IP packet to build (at most 65535).
    :param l2: for a tap: the Ethernet header (with any VLAN tags) that every one of ``packets`` had in
        front of it; it goes back in front of each output packet, after the virtio_net_hdr, whose
        ``hdr_len`` and ``csum_start`` then count it (:func:`gro_frames` splits frames by this header).
    :returns: one buffer per tun write, each starting with a virtio_net_hdr: merged packets carry
        ``NEEDS_CSUM`` and a TCPV4/TCPV6/UDP_L4 gso_type; all others an all-zero header and the packet
        unchanged.
    """
    vnet_none = _VNET_NONE.get(hdr_size)
    if vnet_none is None:
        raise OffloadError(f"hdr_size must be 10 or 12, not {hdr_size!r}")
    if l2:
        vnet_none += l2
    if not 0 < max_size <= MAX_SUPER_PACKET:
        raise ValueError(f"max_size must be in 1..{MAX_SUPER_PACKET}")
    out: list[bytes | _Item] = []
    emit = out.append
    tcp_flows: dict[bytes, _Item] = {}
    udp_flows: dict[bytes, _Item] = {}
    frombytes = int.from_bytes
    last: _Item | None = None  # the TCP super-packet that took the previous TCP segment
    for p in packets:
        n = len(p)
        # ---- fast path: the next full-size in-order segment of the flow we just extended -------------
        if (last is not None and last.open and n == len(last.first) and last.size + last.gso <= max_size
                # (the template is built on first use, before `last.mask` is read)
                and (last.tmpl if last.tmpl >= 0 else last.template())
                == frombytes(p[:last.hl], "big") & last.mask
                and not (verify_csum and not _l4_csum_ok(p, last.version, last.l4, _PROTO_TCP))):
            last.parts.append(p[last.hl:])
            last.size += last.gso
            seq = last.next_seq = (last.next_seq + last.gso) & 0xFFFFFFFF
            last.tmpl = last.base | (seq << last.shift)
            if p[last.l4 + 13] & _TCP_PSH:
                last.psh = True
                last.open = False
            continue
        if n < 28:
            emit(vnet_none + p)
            continue
        b0 = p[0]
        # ---- IPv4 TCP, no IP options: the common case -------------------------------------------------
        if b0 == 0x45 and p[9] == _PROTO_TCP:
            if n < 40:
                emit(vnet_none + p)
                continue
            thl = (p[32] >> 4) * 4
            a, tot, b, key, seq, c, fl, d = _TCP4_KEY.unpack_from(p)
            hl = 20 + thl
            plen = tot - hl
            if (tot != n or thl < 20 or plen <= 0 or p[6] != 0x40 or p[7] or fl & _TCP_FLAGS_MASK != _TCP_ACK
                    or (verify_csum and not _l4_csum_ok(p, 4, 20, _PROTO_TCP))):
                _close(tcp_flows.pop(key, None))
                emit(vnet_none + p)
                continue
            sig = (a, b, c, fl & _TCP_ECE, d, p[38:hl])
            version, l4 = 4, 20
        # ---- IPv6 TCP, no extension headers ------------------------------------------------------------
        elif b0 >> 4 == 6 and p[6] == _PROTO_TCP:
            if n < 60:
                emit(vnet_none + p)
                continue
            thl = (p[52] >> 4) * 4
            a, plen6, b, key, seq, c, fl, d = _TCP6_KEY.unpack_from(p)
            hl = 40 + thl
            plen = plen6 + 40 - hl
            if (plen6 + 40 != n or thl < 20 or plen <= 0 or fl & _TCP_FLAGS_MASK != _TCP_ACK
                    or (verify_csum and not _l4_csum_ok(p, 6, 40, _PROTO_TCP))):
                _close(tcp_flows.pop(key, None))
                emit(vnet_none + p)
                continue
            sig = (a, b, c, fl & _TCP_ECE, d, p[58:hl])
            version, l4 = 6, 40
        elif udp and (b0 == 0x45 and p[9] == _PROTO_UDP or b0 >> 4 == 6 and p[6] == _PROTO_UDP):
            _udp_one(p, out, udp_flows, vnet_none, verify_csum, max_size)
            continue
        else:
            if (b0 >> 4 == 4 and p[9] in (_PROTO_TCP, _PROTO_UDP)) or (b0 >> 4 == 6 and p[6] in _IPV6_EXT):
                # TCP/UDP with IP options, or IPv6 with extension headers (maybe TCP or UDP): we cannot
                # tell the flow cheaply, so close every open super-packet to keep per-flow order.
                for it in tcp_flows.values():
                    it.open = False
                tcp_flows.clear()
                udp_flows.clear()
            emit(vnet_none + p)
            continue
        psh = bool(fl & _TCP_PSH)
        item = tcp_flows.get(key)
        if (item is not None and item.open and seq == item.next_seq and item.sig == sig
                and plen <= item.gso and item.size + plen <= max_size):
            item.parts.append(p[hl:])
            item.size += plen
            seq = item.next_seq = (seq + plen) & 0xFFFFFFFF
            if item.tmpl >= 0:
                item.tmpl = item.base | (seq << item.shift)
            if psh:
                item.psh = True
                item.open = False
            elif plen < item.gso:
                item.open = False
            last = item
            continue
        if item is not None:
            item.open = False
        item = _Item(p, version, _PROTO_TCP, l4, hl, sig, plen, (seq + plen) & 0xFFFFFFFF, psh)
        tcp_flows[key] = item
        emit(item)
        last = item
    return [x if type(x) is bytes else x.build(vnet_none, hdr_size, l2) for x in out]  # type: ignore[union-attr]


def _udp_one(p: bytes, out: list[bytes | _Item], flows: dict[bytes, _Item], vnet_none: bytes,
             verify_csum: bool, max_size: int) -> None:
    n = len(p)
    if p[0] == 0x45:
        version, l4 = 4, 20
        ok = (p[2] << 8 | p[3]) == n and p[6] == 0x40 and not p[7]
        key = p[12:24]
        sig: object = (p[1], p[8])
    else:
        version, l4 = 6, 40
        ok = n >= 48 and (p[4] << 8 | p[5]) + 40 == n
        key = p[8:44]
        sig = (p[0:4], p[7])
    hl = l4 + 8
    plen = n - hl
    ok = (ok and plen > 0 and (p[l4 + 4] << 8 | p[l4 + 5]) == n - l4 and (p[l4 + 6] | p[l4 + 7]) != 0
          and not (verify_csum and not _l4_csum_ok(p, version, l4, _PROTO_UDP)))
    if not ok:
        flows.pop(key, None)
        out.append(vnet_none + p)
        return
    item = flows.get(key)
    if (item is not None and item.open and item.sig == sig and plen <= item.gso
            and item.size + plen <= max_size):
        item.parts.append(p[hl:])
        item.size += plen
        item.next_seq += 1  # datagram count
        if plen < item.gso or item.next_seq >= UDP_MAX_SEGMENTS:
            item.open = False
        return
    item = _Item(p, version, _PROTO_UDP, l4, hl, sig, plen, 1, False)
    flows[key] = item
    out.append(item)


# --- gro: runs of consecutive segments first, coalesce() for the rest ----------------------------------
_PSH = 0x08
_MAX_SUPER = MAX_SUPER_PACKET
_NEEDS_CSUM_TCP4 = bytes((1, 1))  # virtio_net_hdr flags NEEDS_CSUM, gso_type TCPV4
_NEEDS_CSUM_TCP6 = bytes((1, 4))  # ... TCPV6
_NEEDS_CSUM_UDP_L4 = bytes((1, 5))  # ... UDP_L4 (USO)
_VNET_TAIL = struct.Struct("<HHHH")  # hdr_len, gso_size, csum_start, csum_offset (little-endian)


def gro(packets: list[bytes], *, udp: bool = False, l2: bytes = b"", bulk: bool = True) -> list[bytes]:
    """:func:`coalesce` for the data path, with a cheaper path for the common case.

    Decrypted packets mostly come as runs of consecutive in-order segments of one TCP flow (one
    super-packet at the sender is sealed, sent and received as one GSO/GRO batch).  Such a run (the first
    segment with payload, ACK only, no PSH, IPv4 with DF and no options, or IPv6 without extension headers;
    the next ones with the same headers but for IPv4 ID, checksums and PSH, the next sequence number and
    the same size, except that a last one may be shorter or carry PSH) becomes one super-packet here,
    built as ``coalesce`` builds it.  Everything else goes through ``coalesce`` in order, so the order of
    each flow is kept.  The result is what ``coalesce`` returns for the same packets, except that segments
    of one flow split by another flow's packets may end up in more super-packets.

    :param packets: plain IP packets trimmed to their length.
    :param udp: let ``coalesce`` merge UDP datagrams too (the tun accepted USO).
    :param l2: for a tap, the Ethernet header that every packet had in front of it (as in :func:`coalesce`).
    :param bulk: try the bulk branch (:data:`BULK_MIN` packets or more); ``False`` runs the loop alone.
    :returns: buffers for a vnet-hdr (10-byte) tun or tap.
    """
    if bulk and len(packets) >= BULK_MIN:
        done = _gro_bulk(packets, l2)
        if done is not None:
            return done
    out: list[bytes] = []
    rest: list[bytes] = []
    frombytes = int.from_bytes
    n = len(packets)
    i = 0
    while i < n:
        p = packets[i]
        i += 1
        size = len(p)
        b0 = p[0] if size >= 60 else 0
        if b0 == 0x45:
            if p[9] != 6 or p[6] != 0x40 or p[7] or p[33] != 0x10 or (p[2] << 8 | p[3]) != size:
                rest.append(p)
                continue
            version, l4 = 4, 20
        elif b0 >> 4 == 6:
            if p[6] != 6 or p[53] != 0x10 or (p[4] << 8 | p[5]) + 40 != size:
                rest.append(p)
                continue
            version, l4 = 6, 40
        else:
            rest.append(p)
            continue
        hl = l4 + ((p[l4 + 12] >> 4) << 2)
        plen = size - hl
        if plen <= 0 or hl < l4 + 20 or i >= n or len(packets[i]) > size:
            rest.append(p)
            continue
        mask, short_mask, shift, _ = _tcp_mask(version, hl)
        seq = (frombytes(p[l4 + 4:l4 + 8], "big") + plen) & 0xFFFFFFFF
        base = frombytes(p[:hl], "big") & mask & ~(0xFFFFFFFF << shift)
        limit = min(n, i + (_MAX_SUPER - size) // plen)
        j = i
        total = size
        psh = False
        expect = base | (seq << shift)  # the next full-size segment's masked header
        step = plen << shift
        while j < limit:
            q = packets[j]
            m = len(q)
            if m == size:
                if frombytes(q[:hl], "big") & mask != expect:
                    break
                j += 1
                total += plen
                seq += plen
                if seq > 0xFFFFFFFF:  # the sequence number wraps: no carry into the ACK field
                    seq &= 0xFFFFFFFF
                    expect = base | (seq << shift)
                else:
                    expect += step
                if q[l4 + 13] & _PSH:
                    psh = True
                    break
                continue
            # a shorter last segment: same headers but for the length, which must be right
            if (m <= hl or frombytes(q[:hl], "big") & short_mask != (base | (seq << shift)) & short_mask
                    or (version == 4 and (q[2] << 8 | q[3]) != m)
                    or (version == 6 and (q[4] << 8 | q[5]) + 40 != m)):
                break
            j += 1
            total += m - hl
            psh = bool(q[l4 + 13] & _PSH)
            break
        if j == i:  # nothing to merge with
            rest.append(p)
            continue
        if rest:
            out.extend(coalesce(rest, udp=udp, l2=l2))
            rest = []
        parts: list[bytes | bytearray] = [b"", b"", p[hl:]]
        parts += [q[hl:] for q in packets[i:j]]
        out.append(_super_packet(p, parts, version, hl, total, plen, psh, l2))
        i = j
    if rest:
        out.extend(coalesce(rest, udp=udp, l2=l2))
    return out


def _super_packet(first: bytes, parts: list[bytes | bytearray], version: int, hl: int, total: int,
                  gso: int, psh: bool, l2: bytes = b"", *, proto: int = _PROTO_TCP,
                  hdr_size: int = VIRTIO_NET_HDR_LEN) -> bytes:
    """One GSO super-packet (TCP, or USO with ``proto`` UDP) for a vnet-hdr tun, the one builder of
    :func:`gro` and :func:`coalesce`: ``first``'s headers with the total length (and the UDP length), PSH
    if ``psh`` (TCP), the IPv4 header checksum and the pseudo-header checksum seed (CHECKSUM_PARTIAL),
    behind a ``hdr_size``-byte virtio_net_hdr and ``l2`` (a tap frame's Ethernet header, counted in
    ``hdr_len`` and ``csum_start``); ``parts[0:2]`` are filled in here and ``parts[2:]`` are the payloads
    in order.  ``gso`` is the payload size of every segment but the last."""
    l4 = 20 if version == 4 else 40
    h = bytearray(first[:hl])
    if version == 4:
        h[2:4] = total.to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = checksum(h[:20]).to_bytes(2, "big")
        pseudo = int.from_bytes(h[12:20], "big")
    else:
        h[4:6] = (total - 40).to_bytes(2, "big")
        pseudo = int.from_bytes(h[8:40], "big")
    if proto == _PROTO_TCP:
        vh = _NEEDS_CSUM_TCP4 if version == 4 else _NEEDS_CSUM_TCP6
        csum_off = _TCP_CSUM_OFFSET
        if psh:
            h[l4 + 13] |= _PSH
    else:
        vh = _NEEDS_CSUM_UDP_L4
        csum_off = _UDP_CSUM_OFFSET
        h[l4 + 4:l4 + 6] = (total - l4).to_bytes(2, "big")
    seed = (pseudo + proto + total - l4) % 0xFFFF or 0xFFFF  # CHECKSUM_PARTIAL: the pseudo-header sum
    h[l4 + csum_off:l4 + csum_off + 2] = seed.to_bytes(2, "big")
    m = len(l2)
    tail = b"\0\0" if hdr_size == VIRTIO_NET_HDR_MRG_RXBUF_LEN else b""  # num_buffers, unused by tun
    parts[0] = vh + _VNET_TAIL.pack(hl + m, gso, l4 + m, csum_off) + tail + l2
    parts[1] = h
    return b"".join(parts)


# --- GRO in bulk: a whole batch that is one run of one TCP flow, checked with C-level loops -------------
_BIG: Literal["big"] = "big"


def _gro_bulk(packets: list[bytes], l2: bytes = b"") -> list[bytes] | None:
    """:func:`gro` for a batch of back-to-back runs of one flow: the same super-packets, or ``None``
    (then the general loop decides).

    A batch often holds several bursts of the sender (each closed by a shorter segment or PSH); it is
    cut after each such segment, where the loop would end a run, and each piece goes through
    :func:`_gro_run`.
    """
    n = len(packets)
    size = len(packets[0])
    if size < 60:
        return None
    p0 = packets[0]
    l4 = 20 if p0[0] >> 4 == 4 else 40
    lens = list(map(len, packets))
    flags = bytes(map(itemgetter(l4 + 13), packets)) if min(lens) > l4 + 13 else b""
    if lens.count(size) == n and flags.count(0x10) == n:
        return _gro_run(packets, lens, flags, l2)
    if len(flags) != n:
        return None
    out: list[bytes] = []
    start = 0
    for i in [i for i, (m, f) in enumerate(zip(lens, flags, strict=True)) if m != size or f & _PSH]:
        if i - start < 1:  # a run of one: the loop would pass it on as it is
            return None
        r = _gro_run(packets[start:i + 1], lens[start:i + 1], flags[start:i + 1], l2)
        if r is None:
            return None
        out += r
        start = i + 1
    if start < n:
        if n - start < 2:
            return None
        r = _gro_run(packets[start:], lens[start:], flags[start:], l2)
        if r is None:
            return None
        out += r
    return out


def _gro_run(packets: list[bytes], lens: list[int], flags: bytes, l2: bytes = b"") -> list[bytes] | None:
    """:func:`gro` for packets that are exactly one run: the same super-packets, or ``None``.
    ``lens`` and ``flags`` are their lengths and TCP flag bytes (computed once by :func:`_gro_bulk`).

    The first segment must pass the loop's test; every other one must be full-size with the same headers
    under the loop's mask and the next sequence number, except that the last may be shorter and the last
    may carry PSH.  The headers become integers with one ``map`` each (slice, ``int.from_bytes``, mask)
    and are compared with a ``range`` of the expected values, so no bytecode runs per segment (0.88
    against 1.28 us a segment for the loop, 45 x 1368 B, best of 7); runs longer than a super-packet are
    cut where the loop cuts them.
    """
    p = packets[0]
    size = len(p)
    if size < 60:
        return None
    b0 = p[0]
    if b0 == 0x45:
        if p[9] != 6 or p[6] != 0x40 or p[7] or p[33] != 0x10 or (p[2] << 8 | p[3]) != size:
            return None
        version, l4 = 4, 20
    elif b0 >> 4 == 6:
        if p[6] != 6 or p[53] != 0x10 or (p[4] << 8 | p[5]) + 40 != size:
            return None
        version, l4 = 6, 40
    else:
        return None
    hl = l4 + ((p[l4 + 12] >> 4) << 2)
    plen = size - hl
    if plen <= 0 or hl < l4 + 20:
        return None
    n = len(packets)
    full = lens.count(size)
    last = lens[-1]
    if full != n and (full != n - 1 or not hl < last < size):
        return None
    frombytes = int.from_bytes
    seq0 = frombytes(p[l4 + 4:l4 + 8], "big")
    if seq0 + n * plen > 0xFFFFFFFF:
        return None  # the sequence number wraps inside the batch: the loop handles it
    mask, short_mask, shift, _ = _tcp_mask(version, hl)
    step = plen << shift
    first = (frombytes(p[:hl], "big") & mask & ~(0xFFFFFFFF << shift)) | (seq0 << shift)
    heads = list(map(frombytes, map(itemgetter(slice(0, hl)), packets), repeat(_BIG)))
    if list(map(and_, heads[:full], repeat(mask))) != list(range(first, first + full * step, step)):
        return None
    if full != n:  # a shorter last segment: the same headers but for the length, which must be right
        q = packets[-1]
        if (heads[-1] & short_mask != (first + full * step) & short_mask
                or (version == 4 and (q[2] << 8 | q[3]) != last)
                or (version == 6 and (q[4] << 8 | q[5]) + 40 != last)):
            return None
    psh_last = flags[-1] & _PSH != 0
    if flags.count(0x10) != n - psh_last:
        return None  # PSH before the last segment: the loop ends the run there
    cut = itemgetter(slice(hl, None))
    per = 1 + (_MAX_SUPER - size) // plen  # segments per super-packet, as the loop counts them
    out: list[bytes] = []
    for i in range(0, n, per):
        j = min(n, i + per)
        if j - i == 1:  # a lone segment left over: the loop would pass it on as it is
            return None
        parts: list[bytes | bytearray] = [b"", b""]
        parts += map(cut, packets[i:j])
        total = (j - i - 1) * plen + lens[j - 1]
        out.append(_super_packet(packets[i], parts, version, hl, total, plen, j == n and psh_last, l2))
    return out


# --- frames: gro() for a tap ---------------------------------------------------------------------------
_VNET_NONE10 = bytes(VIRTIO_NET_HDR_LEN)


def gro_frames(frames: list[bytes], *, udp: bool = False) -> list[bytes]:
    """:func:`gro` for Ethernet frames, ready for a vnet-hdr (10-byte) tap write.

    Consecutive IPv4/IPv6 frames with the same Ethernet header (MACs, VLAN tags, EtherType; see
    :func:`l2_header_len`) form one group; its IP packets go through :func:`gro` with that header as
    ``l2``, so a super-frame is one Ethernet header, one IP+TCP header and many segments' payloads.  Every
    other frame (ARP, other EtherTypes, runts) goes out unchanged behind an all-zero header, in its place.

    :param frames: whole Ethernet frames (an IP packet's padding to 60 bytes is cut off by :func:`gro`'s
        length checks: such a frame is written unchanged).
    :param udp: let :func:`coalesce` merge UDP datagrams too (the tap accepted USO).
    """
    n = len(frames)
    if n > 1:  # the common batch: one flow's frames, one header (compared with C-level loops)
        try:
            m = l2_header_len(frames[0])
        except OffloadError:
            m = 0
        if m:
            cut = itemgetter(slice(0, m))
            heads = list(map(cut, frames))
            if heads.count(heads[0]) == n:
                return gro(list(map(itemgetter(slice(m, None)), frames)), udp=udp, l2=heads[0])
    out: list[bytes] = []
    i = 0
    while i < n:
        f = frames[i]
        try:
            m = l2_header_len(f)
        except OffloadError:
            out.append(_VNET_NONE10 + f)
            i += 1
            continue
        l2 = f[:m]
        j = i + 1
        while j < n and frames[j][:m] == l2:
            j += 1
        out += gro([g[m:] for g in frames[i:j]], udp=udp, l2=l2)
        i = j
    return out


# --- reads -------------------------------------------------------------------------------------------
_after_hdr10 = itemgetter(slice(VIRTIO_NET_HDR_LEN, None))
_hdr10 = itemgetter(slice(0, VIRTIO_NET_HDR_LEN))


def split_reads(bufs: list[bytes], *, l2: bool = False) -> tuple[list[bytes], int, int]:
    """What a batch of vnet-hdr (10-byte) reads holds: plain packets (or frames, ``l2``), each read's
    header dropped and super-packets cut by :func:`segment`.

    A batch of plain buffers (all-zero headers: the kernel segmented and checksummed them itself) is
    unwrapped with one C-level pass; otherwise each buffer is looked at.

    :param bufs: what :meth:`tunnel.tun.PytunDevice.read_batch` returned.
    :param l2: the device is a tap (Ethernet frames; see :func:`segment`).
    :returns: ``(packets, short, bad)``: the packets in read order, how many buffers held no more than a
        header and how many had a header :func:`segment` refused (both dropped).
    """
    if list(map(_hdr10, bufs)).count(_VNET_NONE10) == len(bufs) and min(map(len, bufs), default=11) > 10:
        return list(map(_after_hdr10, bufs)), 0, 0
    out: list[bytes] = []
    short = bad = 0
    for b in bufs:
        if len(b) <= VIRTIO_NET_HDR_LEN:
            short += 1
        elif b[1] or b[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            try:
                out += segment(b, l2=l2)
            except OffloadError:
                bad += 1
        else:
            out.append(b[VIRTIO_NET_HDR_LEN:])
    return out, short, bad


# --- helpers --------------------------------------------------------------------------------------


def with_hdr(pkt: Buffer, hdr: VirtioNetHdr | None = None, *, hdr_size: int = VIRTIO_NET_HDR_LEN) -> bytes:
    """Prefix ``pkt`` with ``hdr`` (default: an all-zero GSO_NONE header of ``hdr_size`` bytes).

    :raises OffloadError: ``hdr`` does not have ``hdr_size`` bytes, or ``hdr_size`` is not 10 or 12.
    """
    _check_hdr_size(hdr_size)
    if hdr is None:
        return bytes(hdr_size) + pkt
    if hdr.size != hdr_size:
        raise OffloadError(f"header packs to {hdr.size} bytes, tun expects {hdr_size}")
    return hdr.pack() + pkt


def without_hdr(buf: Buffer, *, hdr_size: int = VIRTIO_NET_HDR_LEN) -> bytes:
    """Drop the virtio_net_hdr from ``buf`` without interpreting it (use :func:`segment` for reads).

    :raises OffloadError: ``buf`` is shorter than the header.
    """
    _check_hdr_size(hdr_size)
    if len(buf) < hdr_size:
        raise OffloadError(f"need {hdr_size} bytes of virtio_net_hdr, got {len(buf)}")
    return bytes(buf[hdr_size:])
