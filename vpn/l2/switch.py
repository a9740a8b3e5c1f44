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

**Bounded table** and **aging**: see :mod:`vpn.l2.mactable`.

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
  (:meth:`~vpn.l2.mactable.MacTable.take_events`).
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

**VLANs.**  Frames are never modified: an 802.1Q/802.1ad tag sits after the two MACs, so tagged frames are
switched on their MACs (shared VLAN learning, as Linux's vxlan does) and pass through intact.  To give each
VLAN of a trunk its own segment, map VLANs to VNIs with :class:`~vpn.l2.ethernet.VlanMap` and run one
:class:`Switch` per VNI.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, Literal, Never, TypeVar

from crypto.ratelimiter import TokenBucket

from .ethernet import ETH_HEADER_SIZE, VLAN_TPIDS, VNI_MAX, ZERO_MAC
from .mactable import (
    DEFAULT_AGE,
    DEFAULT_MAC_MOVE_LIMIT,
    DEFAULT_MAC_MOVE_WINDOW,
    DEFAULT_MAX_ENTRIES,
    LOCAL,
    MacTable,
)

__all__ = ["DROP", "LOCAL_ONLY", "Forward", "Switch"]

P = TypeVar("P", bound=Hashable)
P_co = TypeVar("P_co", bound=Hashable, covariant=True)


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
