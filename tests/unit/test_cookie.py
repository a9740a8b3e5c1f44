"""MAC1/MAC2, cookie replies and the rate limiter (:mod:`crypto.cookie`).

Modelled on wireguard-go ``device/cookie_test.go`` (TestCookieMAC1: mac1 round trip, no mac2
before a cookie, cookie reply exchange, then mac2) and ``ratelimiter/ratelimiter_test.go``
(the scripted burst/refill table over 14 addresses).  Values are recomputed independently with
hashlib / crypto.primitives where the code under test derives them (PROTOCOL-NOTES §1.5).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest

from crypto.constants import COOKIE_REFRESH_TIME, RATELIMIT_BURST, RATELIMIT_PACKETS_PER_SECOND
from crypto.cookie import CookieChecker, CookieGenerator, RateLimiter
from crypto.errors import DecryptFailed, MalformedMessage
from crypto.messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY_SIZE,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    unpack_cookie_reply,
)
from crypto.primitives import public_key, xaead_decrypt


def rng_from(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    sk = random.Random(1).randbytes(32)
    return sk, public_key(sk)


SRC = b"('198.18.0.1', 51820)"
OTHER_SRC = b"('198.18.0.2', 51820)"


@pytest.mark.parametrize("body_len,off1,off2", [(116, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET),
                                                (60, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET)])
def test_mac1_round_trip_and_independent_value(keys: tuple[bytes, bytes], body_len: int, off1: int,
                                               off2: int) -> None:
    _, pk = keys
    gen = CookieGenerator(pk)
    chk = CookieChecker(pk, rng_from(2))
    body = random.Random(body_len).randbytes(body_len)
    msg = gen.add_macs(body, now=0.0)
    assert len(msg) == off2 + 16 and msg[:off1] == body
    mac1_key = hashlib.blake2s(b"mac1----" + pk).digest()
    assert msg[off1:off2] == hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
    assert msg[off2:] == bytes(16)  # no cookie yet: mac2 is zero
    assert chk.check_mac1(msg, off1)
    assert not chk.check_mac2(msg, off2, SRC, now=0.0)
    for i in (0, off1 - 1, off1, off2 - 1):
        bad = bytearray(msg)
        bad[i] ^= 0x01
        assert not chk.check_mac1(bytes(bad), off1), i
    # a MAC for somebody else's key does not pass
    other = CookieGenerator(public_key(bytes(range(32))))
    assert not chk.check_mac1(other.add_macs(body, now=0.0), off1)


def test_cookie_exchange_then_mac2(keys: tuple[bytes, bytes]) -> None:
    _, pk = keys
    gen = CookieGenerator(pk)
    chk = CookieChecker(pk, rng_from(3))
    msg = gen.add_macs(bytes(116), now=10.0)
    reply_bytes = chk.create_reply(msg, INITIATION_MAC1_OFFSET, 0xDEADBEEF, SRC, now=10.0)
    assert len(reply_bytes) == MESSAGE_COOKIE_REPLY_SIZE
    reply = unpack_cookie_reply(reply_bytes)
    assert reply.receiver == 0xDEADBEEF
    # Independently: XChaCha20-Poly1305 under HASH("cookie--" ‖ pk), AD = the answered mac1,
    # plaintext a 16-byte cookie.
    cookie = xaead_decrypt(hashlib.blake2s(b"cookie--" + pk).digest(), reply.nonce, reply.encrypted_cookie,
                           msg[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET])
    assert len(cookie) == 16
    assert not gen.has_cookie
    gen.consume_reply(reply, now=10.5)
    assert gen.has_cookie
    msg2 = gen.add_macs(bytes(116), now=11.0)
    assert msg2[INITIATION_MAC2_OFFSET:] == hashlib.blake2s(msg2[:INITIATION_MAC2_OFFSET], key=cookie,
                                                            digest_size=16).digest()
    assert chk.check_mac1(msg2, INITIATION_MAC1_OFFSET)
    assert chk.check_mac2(msg2, INITIATION_MAC2_OFFSET, SRC, now=11.0)
    # the cookie is bound to the source address
    assert not chk.check_mac2(msg2, INITIATION_MAC2_OFFSET, OTHER_SRC, now=11.0)
    bad = bytearray(msg2)
    bad[-1] ^= 1
    assert not chk.check_mac2(bytes(bad), INITIATION_MAC2_OFFSET, SRC, now=11.0)


def test_cookie_expires_after_refresh_time(keys: tuple[bytes, bytes]) -> None:
    _, pk = keys
    gen = CookieGenerator(pk)
    chk = CookieChecker(pk, rng_from(4))
    msg = gen.add_macs(bytes(116), now=0.0)
    gen.consume_reply(unpack_cookie_reply(chk.create_reply(msg, INITIATION_MAC1_OFFSET, 1, SRC, now=0.0)),
                      now=0.0)
    assert gen.add_macs(bytes(116), now=COOKIE_REFRESH_TIME - 1)[INITIATION_MAC2_OFFSET:] != bytes(16)
    assert gen.add_macs(bytes(116), now=COOKIE_REFRESH_TIME)[INITIATION_MAC2_OFFSET:] == bytes(16)


def test_checker_secret_rotates(keys: tuple[bytes, bytes]) -> None:
    """The responder's secret lives COOKIE_REFRESH_TIME; after it, old cookies stop verifying."""
    _, pk = keys
    gen = CookieGenerator(pk)
    chk = CookieChecker(pk, rng_from(5))
    msg = gen.add_macs(bytes(116), now=0.0)
    gen.consume_reply(unpack_cookie_reply(chk.create_reply(msg, INITIATION_MAC1_OFFSET, 1, SRC, now=0.0)),
                      now=0.0)
    m = gen.add_macs(bytes(116), now=100.0)
    assert chk.check_mac2(m, INITIATION_MAC2_OFFSET, SRC, now=100.0)
    assert not chk.check_mac2(m, INITIATION_MAC2_OFFSET, SRC, now=COOKIE_REFRESH_TIME + 1)


def test_reply_without_a_sent_message(keys: tuple[bytes, bytes]) -> None:
    _, pk = keys
    chk = CookieChecker(pk, rng_from(6))
    reply = unpack_cookie_reply(chk.create_reply(bytes(148), INITIATION_MAC1_OFFSET, 1, SRC, now=0.0))
    with pytest.raises(MalformedMessage) as info:
        CookieGenerator(pk).consume_reply(reply, now=0.0)
    assert info.value.reason == "unexpected_cookie"


def test_reply_to_an_older_message_fails(keys: tuple[bytes, bytes]) -> None:
    """The AD is the *last* mac1 sent: a reply to an earlier message no longer decrypts."""
    _, pk = keys
    gen = CookieGenerator(pk)
    chk = CookieChecker(pk, rng_from(7))
    first = gen.add_macs(bytes(116), now=0.0)
    gen.add_macs(b"\1" * 116, now=0.0)
    reply = unpack_cookie_reply(chk.create_reply(first, INITIATION_MAC1_OFFSET, 1, SRC, now=0.0))
    with pytest.raises(DecryptFailed):
        gen.consume_reply(reply, now=0.0)
    assert not gen.has_cookie


def test_reply_from_another_responder_fails(keys: tuple[bytes, bytes]) -> None:
    _, pk = keys
    gen = CookieGenerator(pk)
    impostor = CookieChecker(public_key(bytes(range(32))), rng_from(8))
    msg = gen.add_macs(bytes(116), now=0.0)
    reply = unpack_cookie_reply(impostor.create_reply(msg, INITIATION_MAC1_OFFSET, 1, SRC, now=0.0))
    with pytest.raises(DecryptFailed):
        gen.consume_reply(reply, now=0.0)


# -- rate limiter: wireguard-go ratelimiter_test.go TestRatelimiter --------------------------

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
    assert (RATELIMIT_PACKETS_PER_SECOND, RATELIMIT_BURST) == (20, 5)  # kernel ratelimiter.c
    rl = RateLimiter()
    now = 1000.0
    for i, (allowed, wait, text) in enumerate(SCRIPT, 1):
        now += wait + NS
        for ip in IPS:
            assert rl.allow(ip.encode(), now=now) == allowed, f"step {i}: {text}: {ip}"


def test_ratelimiter_sources_are_independent() -> None:
    rl = RateLimiter()
    for _ in range(RATELIMIT_BURST):
        assert rl.allow(b"a", now=0.0)
    assert not rl.allow(b"a", now=0.0)
    assert rl.allow(b"b", now=0.0)


def test_ratelimiter_memory_is_bounded() -> None:
    rl = RateLimiter(max_sources=4)
    for i in range(4):
        assert rl.allow(bytes([i]), now=0.0)
    assert not rl.allow(b"new", now=0.5)  # full, and nobody idle for more than a second
    assert len(rl) == 4
    assert rl.allow(b"new", now=2.0)  # idle entries are collected to make room
    assert len(rl) == 1
    rl.gc(now=10.0)
    assert len(rl) == 0
