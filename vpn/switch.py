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

**Untrusted members** (a peer may be hostile; the local tap is trusted):

* *Sticky local MACs.*  A MAC learned on ``LOCAL`` does not move to a peer while its entry lives: a peer's
  frame with that source is dropped (``drop_local_mac_claim``), so one forged frame cannot hijack the LAN's
  gateway, and the local bridge never learns the gateway on the tap.  The local tap always wins: a MAC
  seen on the tap moves back to ``LOCAL`` at once.  (A MAC the tap has not carried within ``age`` can
  still be claimed; the tap only sees a LAN host's broadcasts and its traffic to the far side.)
* *MAC moves between peers* are allowed (a host or VM moving between sites) but damped as EVPN does
  (RFC 7432 §15.1): at most ``move_limit`` moves of one MAC in ``move_window`` seconds; beyond that the
  MAC stays where it is until the window ends and frames claiming it elsewhere are dropped
  (``drop_mac_move_limited``).  Moves and refused claims are recorded for the caller to log
  (:meth:`MacTable.take_events`).
* *Per-peer MAC quota.*  A peer may hold at most ``max_per_peer`` entries (OpenVPN's
  ``max-routes-per-client``); frames from a further source MAC of that peer are dropped
  (``drop_mac_quota``: like a switch port's port-security "restrict"), so no one member can fill the
  table and turn the switch into a hub.
* *Storm control.*  Flooded frames (broadcast, multicast, unknown unicast) from peers pass a token bucket
  per peer (only on a hub, the node that replicates them to N-1 members; a spoke's one peer is the hub,
  whose output is already limited) and one for the whole segment (every node), both optional; the excess
  is dropped (``drop_broadcast_rate_peer``, ``drop_broadcast_rate_segment``).  Frames from the local tap
  are not limited.
* *No peer-supplied VLAN tags* where the segment maps a VLAN (``untagged_only``): a peer's frame that
  carries an 802.1Q/802.1ad tag is dropped (``drop_peer_vlan_tag``), or it would cross into that VLAN on
  the local trunk, another VNI's LAN.

**Aging.**  An entry lives ``age`` seconds (default 300, as Linux's vxlan and bridge) after the last frame
from its MAC; expired entries are ignored by :meth:`MacTable.lookup` and reclaimed lazily or by
:meth:`MacTable.expire`.  ``now`` must come from a monotonic clock (it must not go backwards).

**VLANs.**  Frames are never modified: an 802.1Q/802.1ad tag sits after the two MACs, so tagged frames are
switched on their MACs (shared VLAN learning, as Linux's vxlan does) and pass through intact.  To give each
VLAN of a trunk its own segment, map VLANs to VNIs with :class:`VlanMap` and run one :class:`Switch` per VNI.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Final, Generic, Literal, Never, TypeVar

__all__ = [
    "DEFAULT_MAC_MOVE_LIMIT",
    "DEFAULT_MAC_MOVE_WINDOW",
    "DROP",
    "ETH_HEADER_SIZE",
    "LOCAL",
    "LOCAL_ONLY",
    "VLAN_TPIDS",
    "Forward",
    "MacEvent",
    "MacTable",
    "Switch",
    "TokenBucket",
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
DEFAULT_MAC_MOVE_LIMIT: Final = 5  # moves of one MAC between peers ...
DEFAULT_MAC_MOVE_WINDOW: Final = 180.0  # ... per this many seconds (RFC 7432 §15.1: M = 5, N = 180)
MAX_EVENTS: Final = 64  # distinct MAC events kept between two take_events() calls
LOCAL: Final = "local"  # the port of the local tap; peers must not compare equal to it
VNI_MAX: Final = (1 << 24) - 1

P = TypeVar("P", bound=Hashable)
P_co = TypeVar("P_co", bound=Hashable, covariant=True)
_TCI = struct.Struct("!H")


def is_group(mac: bytes | bytearray | memoryview) -> bool:
    """Whether a MAC has the I/G bit set (multicast or broadcast): the lowest bit of the first octet."""
    return bool(mac[0] & 1)


# -- MAC table -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MacEvent(Generic[P_co]):
    """Something about one MAC worth a log line (see :meth:`MacTable.take_events`).

    :param kind: ``moved`` (from one port to another), ``move_limited`` (a move refused by the damping),
        ``local_claim`` (a peer claimed a MAC learned on the local tap; refused).
    :param mac: the 6-byte MAC.
    :param old: the port it is (or was) on.
    :param new: the port that claimed it.
    """

    kind: Literal["moved", "move_limited", "local_claim"]
    mac: bytes
    old: P_co
    new: P_co


class MacTable(Generic[P]):
    """MAC → port with aging, a hard size bound, a per-peer quota, sticky local MACs and damped moves.

    Ports are opaque hashable values: peers or ``LOCAL`` (the trusted local tap, exempt from the quota).
    Counters (in :attr:`counters`): ``learned`` (new entry), ``moved`` (a MAC changed port), ``refused``
    (table full, not learned), ``refused_quota`` (the peer holds ``max_per_peer`` MACs), ``refused_sticky``
    (a peer claimed a live ``LOCAL`` MAC), ``refused_move`` (move damping), ``group_source`` (a
    multicast/broadcast MAC offered as a source, not learned), ``expired`` (entries dropped by age),
    ``removed`` (entries dropped with their port), ``events_lost`` (events beyond :data:`MAX_EVENTS`).

    :param max_entries: the most MACs held at once (>= 1).
    :param age: seconds an entry lives after its MAC was last seen (> 0).
    :param max_per_peer: the most MACs one peer (any port but ``LOCAL``) may hold, or None for no quota.
    :param move_limit: moves of one MAC between peers allowed per ``move_window`` (>= 1).
    :param move_window: seconds (> 0).
    """

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, age: float = DEFAULT_AGE,
                 max_per_peer: int | None = None, move_limit: int = DEFAULT_MAC_MOVE_LIMIT,
                 move_window: float = DEFAULT_MAC_MOVE_WINDOW) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if not age > 0:
            raise ValueError("age must be > 0")
        if max_per_peer is not None and max_per_peer < 1:
            raise ValueError("max_per_peer must be >= 1 (or None)")
        if move_limit < 1 or not move_window > 0:
            raise ValueError("move_limit must be >= 1 and move_window > 0")
        self.max_entries: Final = max_entries
        self.age: Final = age
        self.max_per_peer: Final = max_per_peer
        self.move_limit: Final = move_limit
        self.move_window: Final = move_window
        # mac → (port, last seen, moves in the current window, start of that window).  Oldest "last seen"
        # first: learn() moves a refreshed entry to the end, so expiry scans the front.
        self._entries: OrderedDict[bytes, tuple[P, float, int, float]] = OrderedDict()
        self._per_port: Counter[P] = Counter()
        self._events: dict[MacEvent[P], int] = {}
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, port: P) -> int:
        """How many MACs ``port`` holds (expired ones included until they are reclaimed)."""
        return self._per_port[port]

    def learn(self, mac: bytes, port: P, *, now: float) -> str | None:
        """Record that ``mac`` was last seen at ``now`` on ``port``.

        Group MACs are never learned (counted as ``group_source``).  A new MAC on a full table is refused
        once expired entries are gone (counted as ``refused``); the frame may still pass (it floods back).

        :param mac: the 6-byte source MAC (bytes: it is a dictionary key).
        :param port: where the frame came from.
        :param now: monotonic time in seconds.
        :returns: None when the frame may pass, else why it must be dropped: ``local_mac_claim`` (a peer
            claimed a live ``LOCAL`` MAC), ``mac_move_limited`` (move damping) or ``mac_quota`` (the
            peer's quota is full).
        """
        if mac[0] & 1:
            self.counters["group_source"] += 1
            return None
        entries = self._entries
        entry = entries.get(mac)
        if entry is not None:
            old_port, seen, moves, since = entry
            if now - seen >= self.age:  # expired: as good as new
                del entries[mac]
                self._per_port[old_port] -= 1
                self.counters["expired"] += 1
                return self._insert(mac, port, now)
            if old_port == port:
                entries[mac] = (port, now, moves, since)
                entries.move_to_end(mac)
                return None
            if port != LOCAL:
                if old_port == LOCAL:
                    self.counters["refused_sticky"] += 1
                    self._event(MacEvent("local_claim", mac, old_port, port))
                    return "local_mac_claim"
                if now - since >= self.move_window:
                    moves, since = 0, now
                if moves >= self.move_limit:
                    self.counters["refused_move"] += 1
                    self._event(MacEvent("move_limited", mac, old_port, port))
                    return "mac_move_limited"
                if self.max_per_peer is not None and self._per_port[port] >= self.max_per_peer:
                    self.counters["refused_quota"] += 1
                    return "mac_quota"
                moves += 1
            self.counters["moved"] += 1
            self._event(MacEvent("moved", mac, old_port, port))
            self._per_port[old_port] -= 1
            self._per_port[port] += 1
            entries[mac] = (port, now, moves, since)
            entries.move_to_end(mac)
            return None
        return self._insert(mac, port, now)

    def _insert(self, mac: bytes, port: P, now: float) -> str | None:
        entries = self._entries
        if port != LOCAL and self.max_per_peer is not None and self._per_port[port] >= self.max_per_peer:
            self._expire_front(now)
            if self._per_port[port] >= self.max_per_peer:
                self.counters["refused_quota"] += 1
                return "mac_quota"
        if len(entries) >= self.max_entries:
            self._expire_front(now)
            if len(entries) >= self.max_entries:
                self.counters["refused"] += 1
                return None
        entries[mac] = (port, now, 0, now)
        self._per_port[port] += 1
        self.counters["learned"] += 1
        return None

    def _event(self, event: MacEvent[P]) -> None:
        events = self._events
        if event in events:
            events[event] += 1
        elif len(events) < MAX_EVENTS:
            events[event] = 1
        else:
            self.counters["events_lost"] += 1

    def take_events(self) -> list[tuple[MacEvent[P], int]]:
        """The MAC events since the last call, each with how often it happened (for a rate-limited log)."""
        events, self._events = self._events, {}
        return list(events.items())

    def lookup(self, mac: bytes, *, now: float) -> P | None:
        """The port ``mac`` was last seen on, or ``None`` when unknown or expired (an expired entry is removed).

        :param mac: the 6-byte destination MAC (bytes).
        :param now: monotonic time in seconds.
        """
        entry = self._entries.get(mac)
        if entry is None:
            return None
        port, seen, _moves, _since = entry
        if now - seen >= self.age:
            del self._entries[mac]
            self._per_port[port] -= 1
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
        gone = [mac for mac, (p, _seen, _m, _s) in self._entries.items() if p == port]
        for mac in gone:
            del self._entries[mac]
        self._per_port.pop(port, None)
        self.counters["removed"] += len(gone)
        return len(gone)

    def entries(self, *, now: float) -> list[tuple[bytes, P, float]]:
        """A snapshot for display: ``(mac, port, seconds since last seen)``, oldest first, live ones only.

        :param now: monotonic time in seconds.
        """
        return [(mac, port, now - seen) for mac, (port, seen, _m, _s) in self._entries.items()
                if now - seen < self.age]

    def _expire_front(self, now: float) -> int:
        entries, age, per_port, n = self._entries, self.age, self._per_port, 0
        while entries:
            mac, (port, seen, _m, _s) = next(iter(entries.items()))
            if now - seen < age:
                break
            del entries[mac]
            per_port[port] -= 1
            n += 1
        if n:
            self.counters["expired"] += n
        return n


class TokenBucket:
    """One token bucket: ``rate`` tokens a second, at most ``burst`` saved up; starts full.  Pure.

    :param rate: tokens per second (> 0).
    :param burst: bucket size (>= 1).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> float:
        """The tokens at ``now`` (a clock going back adds none)."""
        tokens = self._tokens
        last = self._last
        if last is not None and now > last:
            tokens = min(self.burst, tokens + (now - last) * self.rate)
        self._last = now if last is None or now > last else last
        return tokens

    def take(self, *, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens if there are that many (all or none).

        :param now: monotonic time in seconds.
        :param n: tokens to take.
        """
        tokens = self._refill(now)
        if tokens >= n:
            self._tokens = tokens - n
            return True
        self._tokens = tokens
        return False

    def admit(self, packets: list[bytes], *, now: float) -> int:
        """With one token a byte (a rate limit in bytes, :mod:`vpn.policy`): how many packets from the
        start of ``packets`` fit; their bytes are taken, the rest are over the limit.  C-level loops.

        :param now: monotonic time in seconds.
        """
        tokens = self._refill(now)
        sums = list(accumulate(map(len, packets)))
        n = bisect_right(sums, tokens)
        self._tokens = tokens - sums[n - 1] if n else tokens
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
    (not a hub: a peer's frame for a MAC behind another peer, who got its own copy), and the untrusted-member
    rules of the module docstring: ``drop_local_mac_claim``, ``drop_mac_move_limited``, ``drop_mac_quota``,
    ``drop_broadcast_rate_peer``, ``drop_broadcast_rate_segment``, ``drop_peer_vlan_tag``.
    Learning counters are in ``table.counters``.

    :param vni: the segment's VXLAN Network Identifier (informational; 0 … 2**24 - 1).
    :param max_entries: MAC table bound.
    :param age: MAC entry lifetime in seconds.
    :param hub: relay frames between peers (the server of a star); ``False`` for spokes and full meshes.
    :param max_per_peer: MAC quota of each peer, or None for none.
    :param flood_rate_per_peer: / :param flood_burst_per_peer: token bucket (frames/s, frames) for the
        flooded frames of each peer, applied on a hub only; rate 0 = no limit.
    :param flood_rate: / :param flood_burst: one token bucket for the flooded frames of all peers together;
        rate 0 = no limit.
    :param untagged_only: drop peers' frames that carry a VLAN tag (the segment maps a VLAN on its tap).
    :param move_limit: / :param move_window: MAC move damping (see :class:`MacTable`).
    """

    def __init__(
        self,
        vni: int,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        age: float = DEFAULT_AGE,
        hub: bool = False,
        max_per_peer: int | None = None,
        flood_rate_per_peer: float = 0.0,
        flood_burst_per_peer: float = 1.0,
        flood_rate: float = 0.0,
        flood_burst: float = 1.0,
        untagged_only: bool = False,
        move_limit: int = DEFAULT_MAC_MOVE_LIMIT,
        move_window: float = DEFAULT_MAC_MOVE_WINDOW,
    ) -> None:
        if not 0 <= vni <= VNI_MAX:
            raise ValueError(f"VNI {vni!r} outside 0..{VNI_MAX}")
        if flood_rate < 0 or flood_rate_per_peer < 0:
            raise ValueError("flood rates must be >= 0")
        self.vni: Final = vni
        self.hub: Final = hub
        self.untagged_only: Final = untagged_only
        self.table: MacTable[P | Literal["local"]] = MacTable(max_entries=max_entries, age=age,
                                                              max_per_peer=max_per_peer, move_limit=move_limit,
                                                              move_window=move_window)
        self.counters: Counter[str] = Counter()
        self._peer_rate = (flood_rate_per_peer, flood_burst_per_peer) if hub and flood_rate_per_peer else None
        self._peer_buckets: dict[P, TokenBucket] = {}
        self._segment_bucket = TokenBucket(flood_rate, flood_burst) if flood_rate else None
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
            if self._peer_rate is not None:
                self._peer_buckets[peer] = TokenBucket(*self._peer_rate)
            self._rebuild()

    def remove_peer(self, peer: P) -> int:
        """Remove a peer and forget the MACs learned on it; returns how many MACs (0 if it was absent)."""
        if peer not in self._peers:
            return 0
        del self._peers[peer]
        self._peer_buckets.pop(peer, None)
        self._rebuild()
        return self.table.remove_port(peer)

    def _rebuild(self) -> None:
        peers = tuple(self._peers)
        self._flood_all = Forward(False, peers)
        self._flood_from = {p: Forward(True, tuple(q for q in peers if q != p)) for p in peers}
        self._to_peer = {p: Forward(False, (p,)) for p in peers}

    # -- frames --------------------------------------------------------------------------------------------------
    def from_local(self, frame: bytes | bytearray | memoryview, *, now: float, count: int = 1) -> Forward[P]:
        """Decide where a frame read from the local tap goes.

        :param frame: an Ethernet frame (tagged or not); never modified.
        :param now: monotonic time in seconds.
        :param count: how many frames with this frame's MACs and EtherType (or tag) the decision stands for
            (a run of one flow's segments): the counters add ``count``, the MAC is learned once.
        """
        if len(frame) < ETH_HEADER_SIZE:
            self.counters["drop_runt"] += count
            return DROP
        src = bytes(frame[6:12])
        if src[0] & 1 or src == ZERO_MAC:
            self.counters["drop_bad_source"] += count
            return DROP
        self.table.learn(src, LOCAL, now=now)
        if frame[0] & 1:
            self.counters["flood_group"] += count
            return self._flood_all
        port = self.table.lookup(bytes(frame[0:6]), now=now)
        if port is None:
            self.counters["flood_unknown"] += count
            return self._flood_all
        if port == LOCAL:
            self.counters["drop_local_destination"] += count
            return DROP
        self.counters["unicast"] += count
        return self._to_peer[port]

    def from_peer(self, frame: bytes | bytearray | memoryview, peer: P, *, now: float,
                  count: int = 1) -> Forward[P]:
        """Decide where a frame received (decapsulated) from ``peer`` goes.  Never back to ``peer``.

        :param frame: an Ethernet frame (tagged or not); never modified.
        :param peer: the peer it came from; frames from peers not in the segment are dropped.
        :param now: monotonic time in seconds.
        :param count: how many frames with this frame's MACs and EtherType (or tag) the decision stands for:
            the counters add ``count``, the MAC is learned once, and a flood needs ``count`` tokens of
            storm control at once (all pass or all are dropped; callers that want the frame-by-frame
            outcome of a flood pass runs of one, see :meth:`floods`).
        """
        flood = self._flood_from.get(peer)
        if flood is None:
            self.counters["drop_unknown_peer"] += count
            return DROP
        if len(frame) < ETH_HEADER_SIZE:
            self.counters["drop_runt"] += count
            return DROP
        if self.untagged_only and (frame[12] << 8 | frame[13]) in VLAN_TPIDS:
            self.counters["drop_peer_vlan_tag"] += count
            return DROP
        src = bytes(frame[6:12])
        if src[0] & 1 or src == ZERO_MAC:
            self.counters["drop_bad_source"] += count
            return DROP
        refused = self.table.learn(src, peer, now=now)
        if refused is not None:
            self.counters["drop_" + refused] += count
            return DROP
        if frame[0] & 1:
            if not self._may_flood(peer, now, count):
                return DROP
            self.counters["flood_group"] += count
            return flood if self.hub else LOCAL_ONLY
        port = self.table.lookup(bytes(frame[0:6]), now=now)
        if port is None:
            if not self._may_flood(peer, now, count):
                return DROP
            self.counters["flood_unknown"] += count
            return flood if self.hub else LOCAL_ONLY
        if port == LOCAL:
            self.counters["local"] += count
            return LOCAL_ONLY
        if port == peer:
            self.counters["drop_hairpin"] += count
            return DROP
        if self.hub:
            self.counters["unicast"] += count
            return self._to_peer[port]
        self.counters["drop_other_peer"] += count
        return DROP

    def floods(self, frame: bytes | bytearray | memoryview, *, now: float) -> bool:
        """Whether a frame to ``frame``'s destination MAC would be flooded now (group or unknown unicast)."""
        return bool(frame[0] & 1) or self.table.lookup(bytes(frame[0:6]), now=now) is None

    def _may_flood(self, peer: P, now: float, count: int = 1) -> bool:
        """Storm control for ``count`` flooded frames from ``peer``: the peer's bucket (hub), then the
        segment's."""
        if self._peer_buckets:
            bucket = self._peer_buckets.get(peer)
            if bucket is not None and not bucket.take(now=now, n=count):
                self.counters["drop_broadcast_rate_peer"] += count
                return False
        seg = self._segment_bucket
        if seg is not None and not seg.take(now=now, n=count):
            self.counters["drop_broadcast_rate_segment"] += count
            return False
        return True

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
