"""Ethernet and 802.1Q for the L2 segments, pure: header constants, group MACs, VLAN tags and the VLAN ↔ VNI
map of a trunk tap.

Frames are never modified by the switch: an 802.1Q/802.1ad tag sits after the two MACs, so tagged frames are
switched on their MACs (shared VLAN learning, as Linux's vxlan does) and pass through intact.  To give each
VLAN of a trunk its own segment, map VLANs to VNIs with :class:`VlanMap` and run one
:class:`~vpn.l2.switch.Switch` per VNI.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from itertools import groupby
from operator import itemgetter
from typing import Final

__all__ = [
    "ETH_HEADER_SIZE",
    "VLAN_TPIDS",
    "VNI_MAX",
    "ZERO_MAC",
    "VlanMap",
    "add_vlan",
    "is_group",
    "same_head_runs",
    "strip_vlan",
    "vlan_of",
]

# -- specification (IEEE 802.3 / 802.1Q; big-endian) -----------------------------------------------------------
ETH_HEADER_SIZE: Final = 14  # dst MAC(6) ‖ src MAC(6) ‖ EtherType/TPID(2, BE)
MAC_SIZE: Final = 6
VLAN_TAG_SIZE: Final = 4  # TPID(2, BE) ‖ TCI(2, BE: PCP 3 bits, DEI 1 bit, VID 12 bits)
TPID_8021Q: Final = 0x8100  # C-tag
TPID_8021AD: Final = 0x88A8  # S-tag (QinQ outer)
VLAN_TPIDS: Final = frozenset({TPID_8021Q, TPID_8021AD})
VID_MAX: Final = 4094  # 4095 is reserved; 0 means "priority tag only" (802.1Q §9.6)
ZERO_MAC: Final = bytes(MAC_SIZE)
VNI_MAX: Final = (1 << 24) - 1

_ETH_HEAD = itemgetter(slice(0, ETH_HEADER_SIZE))  # MACs and EtherType (or TPID): what a switch decision depends on


def is_group(mac: bytes | bytearray | memoryview) -> bool:
    """Whether a MAC has the I/G bit set (multicast or broadcast): the lowest bit of the first octet."""
    return bool(mac[0] & 1)


def same_head_runs(frames: list[bytes]) -> list[list[bytes]]:
    """Consecutive frames with the same first 14 bytes (MACs and EtherType or TPID), in order: each run
    needs one switch decision (the L2 runtime's bulk branch)."""
    if len(frames) == 1:
        return [frames]
    heads = list(map(_ETH_HEAD, frames))
    if heads.count(heads[0]) == len(heads):
        return [frames]
    return [list(g) for _, g in groupby(frames, _ETH_HEAD)]


# -- VLAN tags -------------------------------------------------------------------------------------------------------
def vlan_of(frame: bytes | bytearray | memoryview) -> int | None:
    """The VLAN ID of the outermost 802.1Q/802.1ad tag, or ``None`` for an untagged (or too short) frame."""
    if len(frame) < ETH_HEADER_SIZE + VLAN_TAG_SIZE:
        return None
    tpid, tci = struct.unpack_from("!HH", frame, 12)
    return tci & 0x0FFF if tpid in VLAN_TPIDS else None


def strip_vlan(frame: bytes | bytearray | memoryview) -> tuple[int | None, bytes]:
    """Remove the outermost VLAN tag: ``(vid, untagged frame)``, or ``(None, frame)`` when there is none.

    The tag's priority (PCP) and DEI bits are discarded.
    """
    vid = vlan_of(frame)
    if vid is None:
        return None, bytes(frame)
    return vid, bytes(frame[:12]) + bytes(frame[12 + VLAN_TAG_SIZE :])


def add_vlan(frame: bytes | bytearray | memoryview, vid: int, *, pcp: int = 0, tpid: int = TPID_8021Q) -> bytes:
    """Insert a VLAN tag after the MACs (outermost, in front of any existing tag).

    :param vid: VLAN ID, 0 … 4094 (0 = priority tag only).
    :param pcp: priority code point, 0 … 7.
    :param tpid: 0x8100 (802.1Q) or 0x88A8 (802.1ad).
    :raises ValueError: a bad argument or a frame shorter than an Ethernet header.
    """
    if not 0 <= vid <= VID_MAX or not 0 <= pcp <= 7 or tpid not in VLAN_TPIDS:
        raise ValueError(f"bad VLAN tag (vid {vid}, pcp {pcp}, tpid {tpid:#06x})")
    if len(frame) < ETH_HEADER_SIZE:
        raise ValueError("frame shorter than an Ethernet header")
    return bytes(frame[:12]) + struct.pack("!HH", tpid, (pcp << 13) | vid) + bytes(frame[12:])


class VlanMap:
    """Maps the VLANs of a trunk tap to VNIs and back (one :class:`Switch` per VNI).

    Untagged and priority-tagged (VID 0) frames belong to ``untagged`` (or are unmapped when it is
    ``None``).  Frames of unmapped VLANs should be dropped by the caller.

    :param vlans: VLAN ID → VNI; both sides must be unique.
    :param untagged: the VNI of untagged frames, or ``None``.
    :raises ValueError: a VID or VNI out of range, or a VNI used twice.
    """

    def __init__(self, vlans: Mapping[int, int] | Iterable[tuple[int, int]], *, untagged: int | None = None) -> None:
        pairs = list(vlans.items() if isinstance(vlans, Mapping) else vlans)
        vnis = [vni for _vid, vni in pairs] + ([] if untagged is None else [untagged])
        if len(set(vnis)) != len(vnis) or len({vid for vid, _vni in pairs}) != len(pairs):
            raise ValueError("each VLAN and each VNI may appear only once")
        for vid, vni in pairs:
            if not 1 <= vid <= VID_MAX:
                raise ValueError(f"VLAN ID {vid} outside 1..{VID_MAX}")
            if not 0 <= vni <= VNI_MAX:
                raise ValueError(f"VNI {vni} outside 0..{VNI_MAX}")
        if untagged is not None and not 0 <= untagged <= VNI_MAX:
            raise ValueError(f"VNI {untagged} outside 0..{VNI_MAX}")
        self._to_vni: dict[int, int] = dict(pairs)
        self._to_vid: dict[int, int] = {vni: vid for vid, vni in pairs}
        self.untagged: Final = untagged

    def to_vni(self, frame: bytes | bytearray | memoryview) -> tuple[int, bytes] | None:
        """``(vni, frame without its outer tag)`` for a frame read from the trunk, or ``None`` if unmapped."""
        vid, inner = strip_vlan(frame)
        if vid is None or vid == 0:
            return None if self.untagged is None else (self.untagged, inner)
        vni = self._to_vni.get(vid)
        return None if vni is None else (vni, inner)

    def from_vni(self, vni: int, frame: bytes | bytearray | memoryview) -> bytes | None:
        """The frame to write to the trunk for a frame of segment ``vni``, tagged as needed, or ``None``."""
        if vni == self.untagged:
            return bytes(frame)
        vid = self._to_vid.get(vni)
        if vid is None or len(frame) < ETH_HEADER_SIZE:
            return None
        return add_vlan(frame, vid)
