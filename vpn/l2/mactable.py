"""The MAC table of one L2 segment, pure (time comes in as ``now=``): MAC → port with aging, a hard size
bound, a per-peer quota, sticky local MACs and damped moves (the rules are in :mod:`vpn.l2.switch`).

**Bounded table.**  :class:`MacTable` holds at most ``max_entries`` MACs.  When it is full, expired entries
are reclaimed first; if none are, the new MAC is **refused** (counted), not learned, and frames to it flood.
That is what Linux does when a limit is set (vxlan ``addrmax``, bridge ``fdb_max_learned``): established,
active entries survive a flood of random source MACs, and memory stays flat.  Evicting the oldest entry
instead would let such a flood push every real host out, turning the switch into a hub.

**Aging.**  An entry lives ``age`` seconds (default 300, as Linux's vxlan and bridge) after the last frame
from its MAC; expired entries are ignored by :meth:`MacTable.lookup` and reclaimed lazily or by
:meth:`MacTable.expire`.  ``now`` must come from a monotonic clock (it must not go backwards).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

__all__ = [
    "DEFAULT_AGE",
    "DEFAULT_MAC_MOVE_LIMIT",
    "DEFAULT_MAC_MOVE_WINDOW",
    "DEFAULT_MAX_ENTRIES",
    "LOCAL",
    "MacEvent",
    "MacTable",
]

# -- implementation ----------------------------------------------------------------------------------------------
DEFAULT_MAX_ENTRIES: Final = 4096
DEFAULT_AGE: Final = 300.0  # seconds; Linux vxlan FDB_AGE_DEFAULT and bridge ageing_time
DEFAULT_MAC_MOVE_LIMIT: Final = 5  # moves of one MAC between peers ...
DEFAULT_MAC_MOVE_WINDOW: Final = 180.0  # ... per this many seconds (RFC 7432 §15.1: M = 5, N = 180)
MAX_EVENTS: Final = 64  # distinct MAC events kept between two take_events() calls
LOCAL: Final = "local"  # the port of the local tap; peers must not compare equal to it

P = TypeVar("P", bound=Hashable)
P_co = TypeVar("P_co", bound=Hashable, covariant=True)


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
