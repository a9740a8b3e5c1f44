"""IP, TCP, UDP and Ethernet header facts shared by the segmenter and GRO.

Both sides of the offload work parse the same headers: the segmenter validates the IP header of a
super-packet it is about to cut (:func:`_parse_ip`) and, on a tap, steps over the Ethernet header and up
to two VLAN tags (:func:`l2_header_len`); GRO builds super-packets no longer than :data:`MAX_SUPER_PACKET`
and USO packets of at most :data:`UDP_MAX_SEGMENTS` datagrams.  All fields here are big-endian (network
order).
"""

from __future__ import annotations

from typing import Final

from .virtio import Buffer, OffloadError

#: Largest IP packet GRO (:func:`tunnel.offload.coalesce`) builds (the IPv4 total-length field is 16
#: bits; tun's default gso_max_size is 65536).
MAX_SUPER_PACKET: Final = 65535
#: Most datagrams GRO merges into one USO packet (the kernel's UDP_MAX_SEGMENTS was 64 before it became
#: 128; stay under both).
UDP_MAX_SEGMENTS: Final = 64

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
