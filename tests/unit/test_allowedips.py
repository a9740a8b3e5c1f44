"""AllowedIPs: table cases and a randomized comparison with a naive reference (allowedips_rand_test.go idea)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from vpn.allowedips import AllowedIPs, Network, parse_network


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


class Peer:
    """Values are compared by identity, like peer pointers: two equal-looking peers stay distinct."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:  # deliberately equal to every Peer
        return isinstance(other, Peer)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def test_longest_prefix_and_families() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("0.0.0.0/0", "default")
    t.insert("198.19.0.0/16", "a")
    t.insert("198.19.1.0/24", "b")
    t.insert("198.19.1.7/32", "c")
    t.insert("fd00::/8", "v6")
    t.insert("fd00:19::2/128", "v6host")
    assert t.lookup(ip("198.19.1.7")) == "c"
    assert t.lookup(ip("198.19.1.8")) == "b"
    assert t.lookup(ip("198.19.2.1")) == "a"
    assert t.lookup(ip("100.64.0.1")) == "default"
    assert t.lookup(ip("fd00:19::2")) == "v6host"
    assert t.lookup(ip("fd00:19::3")) == "v6"
    assert t.lookup(ip("2001:db8::1")) is None  # an IPv4 /0 does not cover IPv6
    assert t.lookup(b"\x01\x02") is None and t.lookup(b"") is None and t.lookup(bytes(20)) is None
    assert t.lookup_v4(int(ipaddress.IPv4Address("198.19.1.9"))) == "b"
    assert t.lookup_v6(int(ipaddress.IPv6Address("fd00:19::2"))) == "v6host"
    assert len(t) == 6


# (inserts in order, address, expected owner): a numbered table in the spirit of allowedips_test.go.
TABLE: list[tuple[list[tuple[str, str]], str, str | None]] = [
    ([("198.19.0.0/16", "a")], "198.19.255.255", "a"),
    ([("198.19.0.0/16", "a")], "198.20.0.0", None),
    ([("198.19.0.0/16", "a"), ("198.19.0.0/17", "b")], "198.19.127.1", "b"),
    ([("198.19.0.0/16", "a"), ("198.19.0.0/17", "b")], "198.19.128.1", "a"),
    ([("198.19.0.0/16", "a"), ("198.19.0.0/16", "b")], "198.19.3.3", "b"),  # moved
    ([("0.0.0.0/0", "d"), ("198.19.0.1/32", "h")], "198.19.0.1", "h"),
    ([("0.0.0.0/0", "d"), ("198.19.0.1/32", "h")], "198.19.0.2", "d"),
    ([("0.0.0.0/0", "d")], "0.0.0.0", "d"),
    ([("0.0.0.0/0", "d")], "255.255.255.255", "d"),
    ([("128.0.0.0/1", "hi"), ("0.0.0.0/1", "lo")], "127.255.255.255", "lo"),
    ([("128.0.0.0/1", "hi"), ("0.0.0.0/1", "lo")], "128.0.0.0", "hi"),
    ([("100.64.0.0/10", "c")], "100.127.255.255", "c"),
    ([("100.64.0.0/10", "c")], "100.128.0.0", None),
    ([("::/0", "d6"), ("fd00::/8", "u")], "fd12::1", "u"),
    ([("::/0", "d6"), ("fd00::/8", "u")], "fe80::1", "d6"),
    ([("fd00:19::/64", "n"), ("fd00:19::/65", "h1")], "fd00:19::1", "h1"),
    ([("fd00:19::/64", "n"), ("fd00:19::/65", "h1")], "fd00:19:0:0:8000::1", "n"),
    ([("::ffff:0:0/96", "mapped")], "198.19.0.1", None),  # families never mix
    ([("198.19.0.1", "bare")], "198.19.0.1", "bare"),  # a bare address is a /32
    ([("fd00::1", "bare6")], "fd00::1", "bare6"),
]


@pytest.mark.parametrize("n", range(len(TABLE)))
def test_table(n: int) -> None:
    inserts, addr, want = TABLE[n]
    t: AllowedIPs[str] = AllowedIPs()
    for net, v in inserts:
        t.insert(net, v)
    assert t.lookup(ip(addr)) == want


def test_host_bits_masked_and_moves_between_values() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("198.19.1.77/24", "a")  # host bits cleared, as wg does
    assert t.entries("a") == ["198.19.1.0/24"]
    t.insert("fd00:19::77/64", "a")
    assert t.entries("a") == ["198.19.1.0/24", "fd00:19::/64"]
    t.insert("198.19.1.0/24", "b")  # the prefix moves to b
    assert t.entries("a") == ["fd00:19::/64"] and t.entries("b") == ["198.19.1.0/24"]
    assert t.lookup(ip("198.19.1.5")) == "b"
    t.insert("100.64.0.0/10", "b")
    t.remove_value("b")
    assert t.lookup(ip("198.19.1.5")) is None and len(t) == 1
    t.insert("100.64.0.1/32", "x")
    assert t.remove("100.64.0.1/32")
    assert not t.remove("100.64.0.1/32")
    assert t.lookup(ip("100.64.0.1")) is None and t.entries("x") == []


def test_entries_order_and_reinsert_keeps_place() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    for net in ("198.19.0.2/32", "fd00:19::2/128", "100.64.0.0/24", "198.19.8.0/24"):
        t.insert(net, "p")
    t.insert("fd00:19::2/128", "p")  # same owner: no change of order
    assert t.entries("p") == ["198.19.0.2/32", "fd00:19::2/128", "100.64.0.0/24", "198.19.8.0/24"]
    t.insert("fd00:19::2/128", "q")
    t.insert("fd00:19::2/128", "p")  # moved away and back: now last
    assert t.entries("p") == ["198.19.0.2/32", "100.64.0.0/24", "198.19.8.0/24", "fd00:19::2/128"]
    assert [str(n) for n in t.networks("p")] == t.entries("p")
    assert t.entries("q") == []
    assert sorted(str(n) for n, _ in t.items()) == sorted(t.entries("p"))


def test_values_by_identity() -> None:
    a, b = Peer("a"), Peer("b")
    assert a == b  # equal, but distinct owners
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("198.19.0.0/24", a)
    t.insert("198.19.1.0/24", b)
    assert t.lookup(ip("198.19.0.1")) is a and t.lookup(ip("198.19.1.1")) is b
    assert t.entries(a) == ["198.19.0.0/24"] and t.entries(b) == ["198.19.1.0/24"]
    t.insert("198.19.0.0/24", b)
    assert t.lookup(ip("198.19.0.1")) is b and t.entries(a) == []
    assert not t.remove("198.19.0.0/24", a)  # only the owner's prefix is removed
    assert t.remove("198.19.0.0/24", b)
    t.remove_value(a)  # owns nothing: no-op
    assert len(t) == 1


def test_bad_input() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    for bad in ("", "198.19.0.300/32", "198.19.0.0/33", "fd00::/129", "nonsense", "198.19.0.0/-1"):
        with pytest.raises(ValueError):
            t.insert(bad, "x")
    with pytest.raises(ValueError):
        t.insert("198.19.0.0/24", None)  # type: ignore[arg-type]
    assert len(t) == 0
    assert parse_network(" 198.19.0.9/24 ") == ipaddress.ip_network("198.19.0.0/24")
    t.insert("198.19.0.0/24", "x")
    t.clear()
    assert len(t) == 0 and t.lookup(ip("198.19.0.1")) is None and t.entries("x") == []


def _naive(routes: dict[Network, int], addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    best: tuple[int, int] | None = None
    for net, v in routes.items():
        if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, v)
    return None if best is None else best[1]


@pytest.mark.parametrize("bits", [32, 128])
def test_random_against_naive_reference(bits: int) -> None:
    ctor = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    rnd = random.Random(20261128 + bits)
    values = [Peer(str(i)) for i in range(40)]
    t: AllowedIPs[Peer] = AllowedIPs()
    routes: dict[Network, int] = {}  # a re-inserted prefix belongs to its last owner

    def check(n: int) -> None:
        known = list(routes)
        for _ in range(n):
            a = ctor(rnd.getrandbits(bits))
            if known and rnd.random() < 0.6:  # aim inside a known prefix most of the time
                net = rnd.choice(known)
                a = ctor(int(net.network_address) | (rnd.getrandbits(bits) & int(net.hostmask)))
            want = _naive(routes, a)
            got = t.lookup(a.packed)
            assert got is (None if want is None else values[want]), a
            assert (t.lookup_v4(int(a)) if bits == 32 else t.lookup_v6(int(a))) is got

    for step in range(8):
        for _ in range(50):
            # Clustered prefixes (a shared high part) make nesting likely.
            plen = rnd.choice([0, 1, 8, 12, 16, 20, 24, 28, 31, bits - 1, bits]) if rnd.random() < 0.5 \
                else rnd.randint(0, bits)
            base = (0xC613 << (bits - 16)) | rnd.getrandbits(bits - 16) if rnd.random() < 0.7 else rnd.getrandbits(bits)
            net = ipaddress.ip_network((ctor(base), plen), strict=False)
            v = rnd.randrange(len(values))
            t.insert(net, values[v])
            routes[net] = v
        check(200)
        if step % 2:  # remove some prefixes and one whole owner
            for net in rnd.sample(list(routes), min(30, len(routes))):
                assert t.remove(net)
                del routes[net]
            gone = rnd.randrange(len(values))
            t.remove_value(values[gone])
            routes = {n: v for n, v in routes.items() if v != gone}
            check(200)
        assert len(t) == len(routes)
        for i, peer in enumerate(values):
            assert set(t.entries(peer)) == {str(n) for n, v in routes.items() if v == i}
