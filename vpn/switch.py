"""A learning Ethernet switch for one L2 segment (one VXLAN VNI), pure: no I/O, time comes in as ``now=``.

Theory of operation
-------------------
Each node has one local port (its tap, usually in a Linux bridge) and one port per WireGuard peer in the
segment.  For every frame the caller asks the :class:`Switch` where it goes and gets a :class:`Forward`
decision back: deliver it to the local tap or not, and the peers to send a copy to (head-end replication:
VXLAN over WireGuard has no multicast underlay, so a flood is one unicast copy per peer).

1. A frame shorter than an Ethernet header (14 bytes), or with a group (multicast/broadcast) or all-zero
   source MAC, is dropped and counted (Linux's bridge drops the same: ``is_valid_ether_addr``).
2. The source MAC is learned on the port it came in on (``LOCAL`` or the peer).  A MAC seen on another port
   moves there.
3. The destination decides:

   ================================  ============================  ===================================
   destination                       frame from the local tap      frame from peer X
   ================================  ============================  ===================================
   group bit (broadcast, multicast)  all peers                     local; hub: also all peers except X
   unknown unicast                   all peers                     local; hub: also all peers except X
   learned LOCAL                     drop (already on the LAN)     local
   learned behind X itself           (not possible)                drop (hairpin)
   learned behind peer Y ≠ X         Y                             hub: Y; otherwise drop
   ================================  ============================  ===================================

**Hub or not.**  Only a hub (``hub=True``, the server of a star) relays frames between peers.  Spokes and
full-mesh nodes never do: in a full mesh every node replicates its own frames to every peer, so a relay
would deliver duplicates and, worse, make the receivers learn MACs on the relaying peer (the vpncloud
issue 13 pitfall: "learning from the wrong peer when a node forwards flooded frames").  With relaying only
at a hub, the peer a frame arrives from is always the right next hop for its source MAC: a spoke learns
everything remote on the hub, and the hub learns each spoke's MACs on that spoke, because spokes never
forward.  So no "flooded by sender" marker is needed (VXLAN has none to carry), and split horizon (never
back to the port a frame came from) guarantees no frame returns to its source and no peer gets two copies.

**Bounded table.**  :class:`MacTable` holds at most ``max_entries`` MACs.  When it is full, expired entries
are reclaimed first; if none are, the new MAC is **refused** (counted), not learned, and frames to it flood.
That is what Linux does when a limit is set (vxlan ``addrmax``, bridge ``fdb_max_learned``): established,
active entries survive a flood of random source MACs, and memory stays flat.  Evicting the oldest entry
instead would let such a flood push every real host out, turning the switch into a hub.

**Aging.**  An entry lives ``age`` seconds (default 300, as Linux's vxlan and bridge) after the last frame
from its MAC; expired entries are ignored by :meth:`MacTable.lookup` and reclaimed lazily or by
:meth:`MacTable.expire`.  ``now`` must come from a monotonic clock (it must not go backwards).

**VLANs.**  Frames are never modified: an 802.1Q/802.1ad tag sits after the two MACs, so tagged frames are
switched on their MACs (shared VLAN learning, as Linux's vxlan does) and pass through intact.  To give each
VLAN of a trunk its own segment, map VLANs to VNIs with :class:`VlanMap` and run one :class:`Switch` per VNI.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, Literal, Never, TypeVar

__all__ = [
    "DROP",
    "ETH_HEADER_SIZE",
    "LOCAL",
    "LOCAL_ONLY",
    "VLAN_TPIDS",
    "Forward",
    "MacTable",
    "Switch",
    "VlanMap",
    "add_vlan",
    "is_group",
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

# -- implementation ----------------------------------------------------------------------------------------------
DEFAULT_MAX_ENTRIES: Final = 4096
DEFAULT_AGE: Final = 300.0  # seconds; Linux vxlan FDB_AGE_DEFAULT and bridge ageing_time
LOCAL: Final = "local"  # the port of the local tap; peers must not compare equal to it
VNI_MAX: Final = (1 << 24) - 1

P = TypeVar("P", bound=Hashable)
P_co = TypeVar("P_co", bound=Hashable, covariant=True)
_TCI = struct.Struct("!H")


def is_group(mac: bytes | bytearray | memoryview) -> bool:
    """Whether a MAC has the I/G bit set (multicast or broadcast): the lowest bit of the first octet."""
    return bool(mac[0] & 1)


# -- MAC table -----------------------------------------------------------------------------------------------------
class MacTable(Generic[P]):
    """MAC → port with aging and a hard size bound.  Ports are opaque hashable values (peers or ``LOCAL``).

    Counters (in :attr:`counters`): ``learned`` (new entry), ``moved`` (a MAC changed port), ``refused``
    (table full, not learned), ``group_source`` (a multicast/broadcast MAC offered as a source, not
    learned), ``expired`` (entries dropped by age), ``removed`` (entries dropped with their port).

    :param max_entries: the most MACs held at once (>= 1).
    :param age: seconds an entry lives after its MAC was last seen (> 0).
    """

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, age: float = DEFAULT_AGE) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if not age > 0:
            raise ValueError("age must be > 0")
        self.max_entries: Final = max_entries
        self.age: Final = age
        # Oldest "last seen" first: learn() moves a refreshed entry to the end, so expiry scans the front.
        self._entries: OrderedDict[bytes, tuple[P, float]] = OrderedDict()
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, mac: bytes, port: P, *, now: float) -> None:
        """Record that ``mac`` was last seen at ``now`` on ``port``.

        Group MACs are never learned (counted as ``group_source``).  A new MAC on a full table is refused
        once expired entries are gone (counted as ``refused``).

        :param mac: the 6-byte source MAC (bytes: it is a dictionary key).
        :param port: where the frame came from.
        :param now: monotonic time in seconds.
        """
        if mac[0] & 1:
            self.counters["group_source"] += 1
            return
        entries = self._entries
        entry = entries.get(mac)
        if entry is not None:
            old_port, seen = entry
            if now - seen >= self.age:
                self.counters["expired"] += 1
                self.counters["learned"] += 1
            elif old_port != port:
                self.counters["moved"] += 1
            entries[mac] = (port, now)
            entries.move_to_end(mac)
            return
        if len(entries) >= self.max_entries:
            self._expire_front(now)
            if len(entries) >= self.max_entries:
                self.counters["refused"] += 1
                return
        entries[mac] = (port, now)
        self.counters["learned"] += 1

    def lookup(self, mac: bytes, *, now: float) -> P | None:
        """The port ``mac`` was last seen on, or ``None`` when unknown or expired (an expired entry is removed).

        :param mac: the 6-byte destination MAC (bytes).
        :param now: monotonic time in seconds.
        """
        entry = self._entries.get(mac)
        if entry is None:
            return None
        port, seen = entry
        if now - seen >= self.age:
            del self._entries[mac]
            self.counters["expired"] += 1
            return None
        return port

    def expire(self, *, now: float) -> int:
        """Remove every entry older than ``age``; returns how many.  Cost is proportional to that number.

        :param now: monotonic time in seconds.
        """
        return self._expire_front(now)

    def remove_port(self, port: P) -> int:
        """Forget every MAC learned on ``port`` (a peer went away); returns how many.

        :param port: the port whose entries go.
        """
        gone = [mac for mac, (p, _seen) in self._entries.items() if p == port]
        for mac in gone:
            del self._entries[mac]
        self.counters["removed"] += len(gone)
        return len(gone)

    def entries(self, *, now: float) -> list[tuple[bytes, P, float]]:
        """A snapshot for display: ``(mac, port, seconds since last seen)``, oldest first, live ones only.

        :param now: monotonic time in seconds.
        """
        return [(mac, port, now - seen) for mac, (port, seen) in self._entries.items() if now - seen < self.age]

    def _expire_front(self, now: float) -> int:
        entries, age, n = self._entries, self.age, 0
        while entries:
            mac, (_port, seen) = next(iter(entries.items()))
            if now - seen < age:
                break
            del entries[mac]
            n += 1
        if n:
            self.counters["expired"] += n
        return n


# -- decisions -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Forward(Generic[P_co]):
    """Where one frame goes.  Both fields empty/false means it is dropped.

    :param deliver_local: write the frame to the local tap.
    :param to_peers: send one copy to each of these peers, in this order; never contains the peer the frame
        came from, never contains a peer twice.
    """

    deliver_local: bool
    to_peers: tuple[P_co, ...]

    @property
    def dropped(self) -> bool:
        """Neither delivered locally nor sent anywhere."""
        return not self.deliver_local and not self.to_peers


DROP: Final[Forward[Never]] = Forward(False, ())
LOCAL_ONLY: Final[Forward[Never]] = Forward(True, ())


# -- the switch ------------------------------------------------------------------------------------------------------
class Switch(Generic[P]):
    """One L2 segment: a :class:`MacTable` plus the forwarding rules in the module docstring.

    Decisions are precomputed per peer set, so a frame costs a few dictionary operations and allocates no
    decision object.
    Counters (in :attr:`counters`) by decision: ``unicast``, ``flood_group``, ``flood_unknown``, ``local``
    (delivered to the tap only, destination learned there); and by drop reason: ``drop_runt``,
    ``drop_bad_source``, ``drop_unknown_peer``, ``drop_local_destination`` (a tap frame for a MAC on the
    tap's own side), ``drop_hairpin`` (a peer's frame for a MAC behind that same peer), ``drop_other_peer``
    (not a hub: a peer's frame for a MAC behind another peer, who got its own copy).
    Learning counters are in ``table.counters``.

    :param vni: the segment's VXLAN Network Identifier (informational; 0 … 2**24 - 1).
    :param max_entries: MAC table bound.
    :param age: MAC entry lifetime in seconds.
    :param hub: relay frames between peers (the server of a star); ``False`` for spokes and full meshes.
    """

    def __init__(
        self,
        vni: int,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        age: float = DEFAULT_AGE,
        hub: bool = False,
    ) -> None:
        if not 0 <= vni <= VNI_MAX:
            raise ValueError(f"VNI {vni!r} outside 0..{VNI_MAX}")
        self.vni: Final = vni
        self.hub: Final = hub
        self.table: MacTable[P | Literal["local"]] = MacTable(max_entries=max_entries, age=age)
        self.counters: Counter[str] = Counter()
        self._peers: dict[P, None] = {}  # insertion-ordered set
        self._flood_all: Forward[P] = Forward(False, ())
        self._flood_from: dict[P, Forward[P]] = {}
        self._to_peer: dict[Hashable, Forward[P]] = {}  # keyed by table ports, which are peers or LOCAL

    # -- peers ---------------------------------------------------------------------------------------------------
    @property
    def peers(self) -> tuple[P, ...]:
        """The segment's peers, in the order they were added (the order of flooded copies)."""
        return tuple(self._peers)

    def add_peer(self, peer: P) -> None:
        """Add a peer to the segment (no effect if present).

        :raises ValueError: the peer compares equal to ``LOCAL``.
        """
        if peer == LOCAL:
            raise ValueError(f"a peer may not be {LOCAL!r}")
        if peer not in self._peers:
            self._peers[peer] = None
            self._rebuild()

    def remove_peer(self, peer: P) -> int:
        """Remove a peer and forget the MACs learned on it; returns how many MACs (0 if it was absent)."""
        if peer not in self._peers:
            return 0
        del self._peers[peer]
        self._rebuild()
        return self.table.remove_port(peer)

    def _rebuild(self) -> None:
        peers = tuple(self._peers)
        self._flood_all = Forward(False, peers)
        self._flood_from = {p: Forward(True, tuple(q for q in peers if q != p)) for p in peers}
        self._to_peer = {p: Forward(False, (p,)) for p in peers}

    # -- frames --------------------------------------------------------------------------------------------------
    def from_local(self, frame: bytes | bytearray | memoryview, *, now: float) -> Forward[P]:
        """Decide where a frame read from the local tap goes.

        :param frame: an Ethernet frame (tagged or not); never modified.
        :param now: monotonic time in seconds.
        """
        if len(frame) < ETH_HEADER_SIZE:
            self.counters["drop_runt"] += 1
            return DROP
        src = bytes(frame[6:12])
        if src[0] & 1 or src == ZERO_MAC:
            self.counters["drop_bad_source"] += 1
            return DROP
        self.table.learn(src, LOCAL, now=now)
        if frame[0] & 1:
            self.counters["flood_group"] += 1
            return self._flood_all
        port = self.table.lookup(bytes(frame[0:6]), now=now)
        if port is None:
            self.counters["flood_unknown"] += 1
            return self._flood_all
        if port == LOCAL:
            self.counters["drop_local_destination"] += 1
            return DROP
        self.counters["unicast"] += 1
        return self._to_peer[port]

    def from_peer(self, frame: bytes | bytearray | memoryview, peer: P, *, now: float) -> Forward[P]:
        """Decide where a frame received (decapsulated) from ``peer`` goes.  Never back to ``peer``.

        :param frame: an Ethernet frame (tagged or not); never modified.
        :param peer: the peer it came from; frames from peers not in the segment are dropped.
        :param now: monotonic time in seconds.
        """
        flood = self._flood_from.get(peer)
        if flood is None:
            self.counters["drop_unknown_peer"] += 1
            return DROP
        if len(frame) < ETH_HEADER_SIZE:
            self.counters["drop_runt"] += 1
            return DROP
        src = bytes(frame[6:12])
        if src[0] & 1 or src == ZERO_MAC:
            self.counters["drop_bad_source"] += 1
            return DROP
        self.table.learn(src, peer, now=now)
        if frame[0] & 1:
            self.counters["flood_group"] += 1
            return flood if self.hub else LOCAL_ONLY
        port = self.table.lookup(bytes(frame[0:6]), now=now)
        if port is None:
            self.counters["flood_unknown"] += 1
            return flood if self.hub else LOCAL_ONLY
        if port == LOCAL:
            self.counters["local"] += 1
            return LOCAL_ONLY
        if port == peer:
            self.counters["drop_hairpin"] += 1
            return DROP
        if self.hub:
            self.counters["unicast"] += 1
            return self._to_peer[port]
        self.counters["drop_other_peer"] += 1
        return DROP

    def expire(self, *, now: float) -> int:
        """Age out MAC entries (call it now and then, e.g. every 10 s as Linux does); returns how many went."""
        return self.table.expire(now=now)


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
