"""TUN offload packet work: the virtio_net_hdr, the one segmenter and the one GRO, for tun and tap.

Theory of operation
-------------------
A tun device opened with ``IFF_VNET_HDR`` and configured with ``TUNSETOFFLOAD`` (``TUN_F_CSUM``,
``TUN_F_TSO4``, ``TUN_F_TSO6``, optionally ``TUN_F_USO4``/``TUN_F_USO6``) prefixes every packet read and
written with a ``struct virtio_net_hdr`` (:mod:`.virtio`).

* **Read side (send path, GSO)**: :func:`segment` (:mod:`.segment`) turns one read, possibly a 64 KiB
  TCP or USO super-packet or a packet whose checksum is left to finish, into standalone, valid IP
  packets, as the kernel's software GSO would; :func:`split_reads` does it for a batch of reads.
* **Write side (receive path, GRO)**: :func:`gro` (:mod:`.gro`) merges decrypted in-order segments of
  one flow into GSO super-packets, runs of one flow first and :func:`coalesce` (:mod:`.coalesce`) for
  the rest, so the kernel sees one big skb and we make one ``write`` instead of ~45.
* **Checksums** (:mod:`.checksum`): RFC 1071 sums as big-integer residues at C speed.
* **Headers** (:mod:`.headers`): IP/TCP/UDP constants and parsing, the Ethernet header of a tap frame.

Taps: a tap's buffers are Ethernet frames, so the same work runs with the Ethernet header (14 bytes, 18
or 22 with one or two 802.1Q/802.1ad tags) in front of the IP header: ``segment(l2=True)`` copies it in
front of every segment, :func:`gro` and :func:`coalesce` take it as ``l2=``, and :func:`gro_frames`
groups a batch of frames by it.  One segmenter and one GRO serve tun and tap.

Everything public is importable from ``tunnel.offload`` itself.
"""

from __future__ import annotations

from .checksum import checksum
from .coalesce import coalesce
from .gro import gro, gro_frames
from .headers import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, MAX_SUPER_PACKET, UDP_MAX_SEGMENTS, l2_header_len
from .segment import segment, split_reads
from .virtio import (
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_F_RSC_INFO,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN,
    VIRTIO_NET_HDR_MRG_RXBUF_LEN,
    Buffer,
    OffloadError,
    VirtioNetHdr,
    with_hdr,
    without_hdr,
)

__all__ = [
    "ETH_HLEN",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "MAX_SUPER_PACKET",
    "UDP_MAX_SEGMENTS",
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
    "Buffer",
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
