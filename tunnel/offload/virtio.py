"""The ``struct virtio_net_hdr`` that prefixes every read and write of a vnet-hdr tun or tap.

A tun opened with ``IFF_VNET_HDR`` puts this header (include/uapi/linux/virtio_net.h) in front of each
packet: on a read it says whether the packet is a GSO super-packet (``gso_type``, ``gso_size``) and
whether its L4 checksum is left to finish (``NEEDS_CSUM``, ``csum_start``/``csum_offset``); on a write it
tells the kernel the same about what we hand it.  This module holds the spec constants, the header as a
frozen dataclass with validating ``pack``/``unpack``, the fast validating unpack the segmenter uses, and
the prebuilt byte strings GRO puts in front of its outputs.

Byte order: the fields are in the tun's "vnet endianness", which is the host's native order unless
``TUNSETVNETLE``/``TUNSETVNETBE`` says otherwise; pyvpn targets little-endian hosts (x86-64, arm64), so
they are packed little-endian here.  IP, TCP and UDP fields elsewhere in the package are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

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

_HDR10 = struct.Struct("<BBHHHH")
_HDR12 = struct.Struct("<BBHHHHH")
_KNOWN_FLAGS = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO
_GSO_TYPES = frozenset(
    (VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_TCPV6,
     VIRTIO_NET_HDR_GSO_UDP_L4)
)

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


#: The all-zero (``GSO_NONE``, flags 0) header of each size: "the kernel checks the checksums itself".
_VNET_NONE = {VIRTIO_NET_HDR_LEN: bytes(VIRTIO_NET_HDR_LEN),
              VIRTIO_NET_HDR_MRG_RXBUF_LEN: bytes(VIRTIO_NET_HDR_MRG_RXBUF_LEN)}
_VNET_NONE10 = bytes(VIRTIO_NET_HDR_LEN)
# The first two bytes and the rest of a GRO super-packet's header (see coalesce._super_packet).
_NEEDS_CSUM_TCP4 = bytes((1, 1))  # virtio_net_hdr flags NEEDS_CSUM, gso_type TCPV4
_NEEDS_CSUM_TCP6 = bytes((1, 4))  # ... TCPV6
_NEEDS_CSUM_UDP_L4 = bytes((1, 5))  # ... UDP_L4 (USO)
_VNET_TAIL = struct.Struct("<HHHH")  # hdr_len, gso_size, csum_start, csum_offset (little-endian)


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
