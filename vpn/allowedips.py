"""Cryptokey routing: longest-prefix match from IP addresses to peers (whitepaper §2).

"It's a routing table on the way out and an ACL on the way in" (Jason Donenfeld): the same
table picks the peer for an outgoing packet's destination and checks that an incoming
packet's source routes back to the peer it came from.

The data path looks up raw address bytes sliced straight out of IP headers, so the table is a
dict per prefix length keyed by the masked address as an int, and a lookup tries only the
lengths present, longest first: at most a few dict probes per packet, all in C.  Pure: no
sockets, no clocks.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, TypeVar

V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Family(Generic[V]):
    __slots__ = ("bits", "by_len", "lengths")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, V]] = {}
        self.lengths: list[int] = []  # prefix lengths present, longest first

    def mask(self, plen: int) -> int:
        return ((1 << plen) - 1) << (self.bits - plen) if plen else 0

    def insert(self, key: int, plen: int, value: V) -> V | None:
        table = self.by_len.get(plen)
        if table is None:
            table = self.by_len[plen] = {}
            self.lengths = sorted(self.by_len, reverse=True)
        old = table.get(key)
        table[key] = value
        return old

    def remove(self, key: int, plen: int) -> V | None:
        table = self.by_len.get(plen)
        if table is None:
            return None
        old = table.pop(key, None)
        if not table:
            del self.by_len[plen]
            self.lengths = sorted(self.by_len, reverse=True)
        return old

    def lookup(self, addr: int) -> V | None:
        by_len = self.by_len
        bits = self.bits
        for plen in self.lengths:
            v = by_len[plen].get((addr >> (bits - plen)) << (bits - plen) if plen else 0)
            if v is not None:
                return v
        return None


class AllowedIPs(Generic[V]):
    """A longest-prefix-match table from IPv4/IPv6 prefixes to values (peers).

    Inserting a prefix that another value owns moves it (WireGuard semantics); host bits of an
    inserted prefix are cleared, as ``wg`` does.
    """

    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        self._owned: dict[int, dict[Network, None]] = {}  # id(value) -> its prefixes, in order
        self._values: dict[int, V] = {}

    @staticmethod
    def _parse(network: str | Network) -> Network:
        if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return network
        return ipaddress.ip_network(str(network).strip(), strict=False)

    def _family(self, net: Network) -> _Family[V]:
        return self._v4 if net.version == 4 else self._v6

    def insert(self, network: str | Network, value: V) -> None:
        """Route ``network`` to ``value`` (replacing any previous owner of exactly this prefix)."""
        net = self._parse(network)
        old = self._family(net).insert(int(net.network_address), net.prefixlen, value)
        if old is not None and old is not value:
            self._owned.get(id(old), {}).pop(net, None)
        self._owned.setdefault(id(value), {})[net] = None
        self._values[id(value)] = value

    def remove(self, network: str | Network) -> None:
        net = self._parse(network)
        old = self._family(net).remove(int(net.network_address), net.prefixlen)
        if old is not None:
            self._owned.get(id(old), {}).pop(net, None)

    def remove_value(self, value: V) -> None:
        """Remove every prefix of ``value``."""
        for net in list(self._owned.pop(id(value), {})):
            self._family(net).remove(int(net.network_address), net.prefixlen)
        self._values.pop(id(value), None)

    def entries(self, value: V) -> list[str]:
        """The CIDRs of ``value`` in insertion order."""
        return [str(n) for n in self._owned.get(id(value), {})]

    def lookup(self, addr: bytes) -> V | None:
        """The value of the longest prefix containing ``addr`` (4 or 16 raw bytes), or None."""
        if len(addr) == 4:
            return self._v4.lookup(int.from_bytes(addr, "big"))
        if len(addr) == 16:
            return self._v6.lookup(int.from_bytes(addr, "big"))
        return None

    def lookup_v4(self, addr: int) -> V | None:
        return self._v4.lookup(addr)

    def lookup_v6(self, addr: int) -> V | None:
        return self._v6.lookup(addr)

    def __len__(self) -> int:
        return sum(len(t) for f in (self._v4, self._v6) for t in f.by_len.values())
