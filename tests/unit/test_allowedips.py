"""AllowedIPs: table cases and a randomized comparison with a naive reference (allowedips_rand_test.go idea)."""

from __future__ import annotations

import ipaddress
import random

from vpn.allowedips import AllowedIPs


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


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
    assert t.lookup(ip("2001:db8::1")) is None
    assert t.lookup(b"\x01\x02") is None
    assert len(t) == 6


def test_host_bits_masked_and_moves_between_values() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("198.19.1.77/24", "a")  # host bits cleared, as wg does
    assert t.entries("a") == ["198.19.1.0/24"]
    t.insert("198.19.1.0/24", "b")  # the prefix moves to b
    assert t.entries("a") == [] and t.entries("b") == ["198.19.1.0/24"]
    assert t.lookup(ip("198.19.1.5")) == "b"
    t.insert("100.64.0.0/10", "b")
    t.remove_value("b")
    assert t.lookup(ip("198.19.1.5")) is None and len(t) == 0
    t.insert("100.64.0.1/32", "x")
    t.remove("100.64.0.1/32")
    assert t.lookup(ip("100.64.0.1")) is None


def _naive(routes: list[tuple[ipaddress._BaseNetwork, int]], addr: ipaddress._BaseAddress) -> int | None:
    best: tuple[int, int] | None = None
    for net, v in routes:
        if addr.version == net.version and addr in net and (best is None or net.prefixlen >= best[0]):
            best = (net.prefixlen, v)
    return None if best is None else best[1]


def test_random_against_naive_reference() -> None:
    rnd = random.Random(20261128)
    for bits, ctor in ((32, ipaddress.IPv4Address), (128, ipaddress.IPv6Address)):
        t: AllowedIPs[int] = AllowedIPs()
        latest: dict[ipaddress._BaseNetwork, int] = {}
        for i in range(600):
            plen = rnd.choice([0, 1, 8, 12, 16, 20, 24, 28, 31, bits]) if rnd.random() < 0.5 else rnd.randint(0, bits)
            net = ipaddress.ip_network((ctor(rnd.getrandbits(bits)), plen), strict=False)
            v = rnd.randrange(40)
            t.insert(net, v)
            latest[net] = v  # a re-inserted prefix belongs to its last owner
        routes = list(latest.items())
        for _ in range(1500):
            a = ctor(rnd.getrandbits(bits))
            if rnd.random() < 0.5:  # aim inside a known prefix half the time
                net = rnd.choice(routes)[0]
                a = ctor(int(net.network_address) | (rnd.getrandbits(bits) & int(net.hostmask)))
            assert t.lookup(a.packed) == _naive(routes, a), a
