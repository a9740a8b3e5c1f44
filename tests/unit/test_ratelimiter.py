"""The handshake rate limiters (:mod:`crypto.ratelimiter`).

Modelled on the kernel's ``selftest/ratelimiter.c`` (``timings_test``: a scripted burst/refill
table where, after every step, a *different* IPv4 address and a *different* IPv6 /64 are still
allowed, while varying the low 64 bits of the IPv6 address stays in the same bucket;
``capacity_test``: a full table) and wireguard-go ``ratelimiter_test.go`` (the same script over
14 addresses).  PROTOCOL-NOTES §1.5, §1.13.
"""

from __future__ import annotations

import ipaddress

import pytest

from crypto.constants import RATELIMIT_BURST, RATELIMIT_PACKETS_PER_SECOND
from crypto.ratelimiter import (
    GC_PER_CALL,
    HandshakeLimiter,
    QuietSources,
    RateLimiter,
    TokenBucket,
    source_key,
)

IPS = [
    "127.0.0.1", "192.168.1.1", "172.167.2.3", "97.231.252.215", "248.97.91.167", "188.208.233.47",
    "104.2.183.179", "72.129.46.120", "2001:0db8:0a0b:12f0:0000:0000:0000:0001",
    "f5c2:818f:c052:655a:9860:b136:6894:25f0", "b2d7:15ab:48a7:b07c:a541:f144:a9fe:54fc",
    "a47b:786e:1671:a22b:d6f9:4ab0:abc7:c918", "ea1e:d155:7f7a:98fb:2bf5:9483:80f6:5445",
    "3f0e:54a2:f5b4:cd19:a21d:58e1:3746:84c4",
]
TICK = 1.0 / RATELIMIT_PACKETS_PER_SECOND
NS = 1e-9
# (allowed, wait before this step, text) — each wait also adds 1 ns, as timeSleep does there
SCRIPT = (
    [(True, 0.0, "initial burst")] * RATELIMIT_BURST
    + [
        (False, 0.0, "after burst"),
        (True, TICK, "filling tokens for single packet"),
        (False, 0.0, "not having refilled enough"),
        (True, 2 * TICK, "filling tokens for two packet burst"),
        (True, 0.0, "second packet in 2 packet burst"),
        (False, 0.0, "packet following 2 packet burst"),
    ]
)


def test_ratelimiter_script() -> None:
    """wireguard-go TestRatelimiter: the script holds for each of 14 addresses at once."""
    assert (RATELIMIT_PACKETS_PER_SECOND, RATELIMIT_BURST) == (20, 5)  # kernel ratelimiter.c
    rl = RateLimiter()
    now = 1000.0
    for i, (allowed, wait, text) in enumerate(SCRIPT, 1):
        now += wait + NS
        for ip in IPS:
            assert rl.allow(source_key(ip), now=now) == allowed, f"step {i}: {text}: {ip}"


def _v6(words: list[int]) -> str:
    return str(ipaddress.IPv6Address(b"".join(w.to_bytes(4, "big") for w in words)))


def test_kernel_timings_shape_ipv4_and_ipv6_per_64() -> None:
    """kernel selftest timings_test: after each scripted step another IPv4 address and another
    IPv6 /64 are allowed; the IPv6 source changes its low 64 bits every step and still follows
    the script, because the bucket is per /64."""
    rl = RateLimiter()
    now = 50.0
    v4 = int(ipaddress.IPv4Address("198.18.0.1"))
    v6 = [0xFD000000, 0x12345678, 0, 0]
    for i, (allowed, wait, text) in enumerate(SCRIPT):
        now += wait + NS
        assert rl.allow(source_key(str(ipaddress.IPv4Address(v4))), now=now) == allowed, text
        assert rl.allow(source_key(str(ipaddress.IPv4Address(v4 + i + 1))), now=now), text
        v6[2] = v6[3] = i
        assert rl.allow(source_key(_v6(v6)), now=now) == allowed, text
        assert rl.allow(source_key(_v6([v6[0] + i + 1, *v6[1:]])), now=now), text


def test_source_key() -> None:
    assert source_key("198.18.0.1") == "198.18.0.1"
    a = source_key("fd00:1:2:3::1")
    assert a == source_key("fd00:1:2:3:ffff:ffff:ffff:ffff") == source_key("fd00:1:2:3::9%eth0")
    assert a != source_key("fd00:1:2:4::1")
    # written-out and "::"-compressed forms of one /64 (fast and slow paths) agree
    assert source_key("fd00::1") == source_key("fd00:0:0:0:1::") == source_key("FD00:0000:0:0::2")
    assert source_key("::ffff:1.2.3.4") == source_key("::ffff:5.6.7.8")  # a mapped address that slipped through
    assert source_key("not:an:address") == "not:an:address"  # opaque endpoints stay themselves
    assert source_key(None) is None


def test_ratelimiter_sources_are_independent() -> None:
    rl = RateLimiter()
    for _ in range(RATELIMIT_BURST):
        assert rl.allow(b"a", now=0.0)
    assert not rl.allow(b"a", now=0.0)
    assert rl.allow(b"b", now=0.0)


def test_capacity_full_table_evicts_least_recently_used() -> None:
    """kernel capacity_test, with one difference: a new source in a full table is not refused
    (a flood of spoofed sources could otherwise keep every new client out) but evicts the least
    recently used entry.  Memory stays at ``max_sources`` entries."""
    rl = RateLimiter(max_sources=4)
    for i in range(4):
        assert rl.allow(bytes([i]), now=0.0)
    assert rl.allow(bytes([0]), now=0.01)  # 0 is now the most recently used, 1 the least
    assert rl.allow(b"new", now=0.02)
    assert len(rl) == 4 and rl.evicted == 1
    # 0 kept its bucket (3 tokens left), 1 was forgotten and starts full again
    assert [rl.allow(bytes([0]), now=0.02) for _ in range(4)] == [True] * 3 + [False]
    assert [rl.allow(bytes([1]), now=0.02) for _ in range(6)] == [True] * 5 + [False]
    assert len(rl) == 4 and rl.evicted == 2


def test_gc_is_incremental_and_forgets_only_full_buckets() -> None:
    """Each call looks at the front of the LRU order only: at most GC_PER_CALL expired entries
    go per call, whatever the table holds (the old table rescanned every entry when full)."""
    n = 1000
    rl = RateLimiter(max_sources=n)
    for i in range(n):
        rl.allow(i, now=0.0)
    rl.allow(n, now=0.001)  # full table of fresh entries: one eviction, nothing scanned
    assert len(rl) == n and rl.evicted == 1
    rl.allow("x", now=5.0)  # everything is idle now, but one call forgets at most GC_PER_CALL
    assert len(rl) == n + 1 - GC_PER_CALL
    for k in range(10):
        rl.allow("x", now=5.0 + k * 0.01)
    assert len(rl) == n + 1 - 11 * GC_PER_CALL
    rl.gc(now=5.2)
    assert len(rl) == 1  # only "x" is not full again yet
    # an entry is never forgotten before its bucket is full again
    rl2 = RateLimiter()
    for _ in range(RATELIMIT_BURST):
        assert rl2.allow("a", now=0.0)
    rl2.allow("b", now=TICK)
    assert len(rl2) == 2
    assert rl2.allow("a", now=TICK) and not rl2.allow("a", now=TICK)
    rl2.allow("b", now=RATELIMIT_BURST * TICK + 2 * TICK)  # "a" is full again: forgotten
    assert len(rl2) == 1


def test_token_bucket() -> None:
    b = TokenBucket(10, 3)
    assert [b.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(now=0.05)
    assert b.take(now=0.1) and not b.take(now=0.1)
    assert [b.take(now=100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(now=99.0)  # time going backwards adds nothing
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_handshake_limiter_quiet_source_passes_when_busy_sources_spent_the_budget() -> None:
    """A thousand busy sources with cookies (10,000 handshakes/s) exhaust the shared budget; a
    source that sent nothing for quiet_interval still gets its handshake through (the quiet
    budget), once per interval; the DH total stays bounded."""
    hl = HandshakeLimiter(shared_rate=100, quiet_rate=100, quiet_interval=4.0)
    passed = 0
    refused: dict[str, int] = {}
    step = 0

    def flood_until(t: float) -> float:  # each of 1000 sources sends 10 handshakes a second
        nonlocal passed, step
        while 10.0 + step * 0.01 <= t + 1e-9:
            now = 10.0 + step * 0.01
            for s in range(1000):
                if step % 10 == s % 10:
                    r = hl.check(f"10.0.{s // 250}.{s % 250}", now=now)
                    if r is None:
                        passed += 1
                    else:
                        refused[r] = refused.get(r, 0) + 1
            step += 1
        return t

    now = flood_until(13.0)
    # the quiet budget went to first packets only (burst 100, then 100/s for the first 0.1 s);
    # the shared budget is its burst plus 100/s
    assert passed <= (100 + 10 + 1) + (100 + 300 + 1), passed
    assert refused["handshake_budget"] > 25_000
    assert hl.check("192.0.2.7", now=now) is None  # a legitimate client's first try with mac2
    assert hl.check("192.0.2.7", now=now) == "handshake_budget"  # it is busy now
    assert hl.check(source_key("fd00:1:2:3::1"), now=now) is None
    assert hl.check(source_key("fd00:1:2:3::2"), now=now) == "handshake_budget"  # the same /64
    now = flood_until(16.0)
    assert hl.check("192.0.2.7", now=now) == "handshake_budget"  # quiet for 3 s only
    now = flood_until(20.1)
    assert hl.check("192.0.2.7", now=now) is None  # its retry after REKEY_TIMEOUT
    assert passed <= (100 + 10 + 1) + (100 + 1010 + 1), passed


def test_quiet_sources() -> None:
    q = QuietSources(4.0, max_sources=2)
    assert q.seen("a", now=0.0) and not q.seen("a", now=3.9) and not q.seen("a", now=7.8)
    assert q.seen("a", now=11.8)
    assert q.seen("b", now=12.0) and q.seen("c", now=12.0)  # "a" evicted (LRU) to keep 2 entries
    assert len(q) == 2 and q.seen("a", now=12.0)


def test_handshake_limiter_per_source_first() -> None:
    hl = HandshakeLimiter(shared_rate=1000, quiet_rate=1000, quiet_interval=5.0)
    got = [hl.check("a", now=0.0) for _ in range(RATELIMIT_BURST + 2)]
    assert got == [None] * RATELIMIT_BURST + ["rate_limited"] * 2
