"""Cryptokey routing: longest-prefix match from IP addresses to peers (whitepaper §2).

"It's a routing table on the way out and an ACL on the way in": the same table picks the peer
for an outgoing packet's destination and checks that an incoming packet's source routes back
to the peer it came from.

Theory of operation
-------------------
The data path looks up raw address bytes sliced straight out of IP headers.  wireguard-go and
the kernel use a bit trie; in Python a trie walk costs one interpreted step per level, so here
each family keeps one dict per prefix length present, keyed by ``address & mask`` as an int,
and a lookup probes only the lengths present, longest first.  A typical table has a handful
of lengths (/32 hosts, a /24, maybe a /0), so a lookup is a handful of C-level dict probes.

Semantics follow WireGuard's:

1. Host bits of an inserted prefix are cleared (``wg`` prints ``198.19.1.0/24`` for
   ``198.19.1.77/24``).
2. A prefix has one owner.  Inserting a prefix that another value owns moves it.
3. :meth:`AllowedIPs.entries` lists a value's prefixes in the order they were first given
   (a prefix re-inserted for the same owner keeps its place).

Values are compared by identity (like peer pointers in wireguard-go) and must not be None.
Pure: no sockets, no clocks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["AllowedIPs", "Network", "parse_network"]


def parse_network(network: str | Network) -> Network:
    """A network from ``"198.19.1.77/24"`` (host bits cleared) or a bare address (a /32 or /128).

    :raises ValueError: the text is not an IPv4 or IPv6 network.
    """
    if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return network
    return ipaddress.ip_network(str(network).strip(), strict=False)


class _Family(Generic[V]):
    """One address family: a dict per prefix length, and the probe order for lookups."""

    __slots__ = ("bits", "full", "probe", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.full = (1 << bits) - 1
        self.tables: dict[int, dict[int, V]] = {}  # prefix length -> {masked address: value}
        self.probe: tuple[tuple[int, dict[int, V]], ...] = ()  # (mask, table), longest first

    def _reprobe(self) -> None:
        full = self.full
        self.probe = tuple((full ^ (full >> plen), self.tables[plen]) for plen in sorted(self.tables, reverse=True))

    def insert(self, key: int, plen: int, value: V) -> V | None:
        table = self.tables.get(plen)
        if table is None:
            table = self.tables[plen] = {}
            self._reprobe()
        old = table.get(key)
        table[key] = value
        return old

    def get(self, key: int, plen: int) -> V | None:
        table = self.tables.get(plen)
        return None if table is None else table.get(key)

    def remove(self, key: int, plen: int) -> V | None:
        table = self.tables.get(plen)
        if table is None:
            return None
        old = table.pop(key, None)
        if not table:
            del self.tables[plen]
            self._reprobe()
        return old

    def lookup(self, addr: int) -> V | None:
        for mask, table in self.probe:
            v = table.get(addr & mask)
            if v is not None:
                return v
        return None

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables.values())


class AllowedIPs(Generic[V]):
    """A longest-prefix-match table from IPv4/IPv6 prefixes to values (peers).

    Inserting a prefix that another value owns moves it (WireGuard semantics); host bits of an
    inserted prefix are cleared, as ``wg`` does.
    """

    __slots__ = ("_owned", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        # id(value) -> (value, its prefixes in insertion order); the value is kept so its id stays unique.
        self._owned: dict[int, tuple[V, dict[Network, None]]] = {}

    def _family(self, net: Network) -> _Family[V]:
        return self._v4 if net.version == 4 else self._v6

    def _disown(self, value: V, net: Network) -> None:
        entry = self._owned.get(id(value))
        if entry is not None:
            entry[1].pop(net, None)
            if not entry[1]:
                del self._owned[id(value)]

    def insert(self, network: str | Network, value: V) -> None:
        """Route ``network`` to ``value``, taking the prefix from any previous owner.

        :param network: a CIDR (host bits are cleared), a bare address, or a network object.
        :param value: the owner (a peer); not None.
        :raises ValueError: ``network`` is not an IP network, or ``value`` is None.
        """
        if value is None:
            raise ValueError("AllowedIPs values must not be None")
        net = parse_network(network)
        old = self._family(net).insert(int(net.network_address), net.prefixlen, value)
        if old is not None and old is not value:
            self._disown(old, net)
        entry = self._owned.get(id(value))
        if entry is None:
            entry = self._owned[id(value)] = (value, {})
        entry[1][net] = None

    def remove(self, network: str | Network, value: V | None = None) -> bool:
        """Remove exactly this prefix (only if ``value`` owns it, when ``value`` is given).

        :returns: whether a prefix was removed.
        :raises ValueError: ``network`` is not an IP network.
        """
        net = parse_network(network)
        fam = self._family(net)
        key = int(net.network_address)
        owner = fam.get(key, net.prefixlen)
        if owner is None or (value is not None and owner is not value):
            return False
        fam.remove(key, net.prefixlen)
        self._disown(owner, net)
        return True

    def remove_value(self, value: V) -> None:
        """Remove every prefix of ``value`` (``RemoveByPeer``)."""
        entry = self._owned.pop(id(value), None)
        if entry is None:
            return
        for net in entry[1]:
            self._family(net).remove(int(net.network_address), net.prefixlen)

    def clear(self) -> None:
        self._v4 = _Family(32)
        self._v6 = _Family(128)
        self._owned.clear()

    def entries(self, value: V) -> list[str]:
        """The CIDRs of ``value`` in insertion order, e.g. ``["198.19.0.2/32", "fd00:19::2/128"]``."""
        entry = self._owned.get(id(value))
        return [] if entry is None else [str(n) for n in entry[1]]

    def networks(self, value: V) -> list[Network]:
        """Like :meth:`entries`, as network objects."""
        entry = self._owned.get(id(value))
        return [] if entry is None else list(entry[1])

    def items(self) -> Iterator[tuple[Network, V]]:
        """Every ``(network, value)``, grouped by value in insertion order."""
        for value, nets in list(self._owned.values()):
            for net in nets:
                yield net, value

    def lookup(self, addr: bytes) -> V | None:
        """The value of the longest prefix containing ``addr``, or None.

        :param addr: 4 (IPv4) or 16 (IPv6) raw bytes, network order, as sliced from a header;
            any other length finds nothing.
        """
        n = len(addr)
        if n == 4:
            return self._v4.lookup(int.from_bytes(addr, "big"))
        if n == 16:
            return self._v6.lookup(int.from_bytes(addr, "big"))
        return None

    def lookup_v4(self, addr: int) -> V | None:
        """:meth:`lookup` for an IPv4 address given as an int."""
        return self._v4.lookup(addr)

    def lookup_v6(self, addr: int) -> V | None:
        """:meth:`lookup` for an IPv6 address given as an int."""
        return self._v6.lookup(addr)

    def __len__(self) -> int:
        """The number of prefixes (both families)."""
        return len(self._v4) + len(self._v6)

    def __repr__(self) -> str:
        return f"<AllowedIPs {len(self._v4)} IPv4 + {len(self._v6)} IPv6 prefixes, {len(self._owned)} owners>"
