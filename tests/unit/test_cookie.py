"""MAC1/MAC2 and cookie replies (:mod:`crypto.cookie`; the rate limiter is in test_ratelimiter.py).

Modelled on wireguard-go ``device/cookie_test.go`` (TestCookieMAC1: mac1 round trip, no mac2
before a cookie, cookie reply exchange, then mac2).  Values are recomputed independently with
hashlib / crypto.primitives where the code under test derives them (PROTOCOL-NOTES §1.5).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest

from crypto.constants import COOKIE_REFRESH_TIME
from crypto.cookie import CookieChecker, CookieGenerator
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


def test_cookie_reply_nonces_are_unique_and_decrypt(keys: tuple[bytes, bytes]) -> None:
    """Replies share a nonce prefix (one HChaCha20) with a counter after it; a new secret brings
    a new prefix.  Every reply still decrypts independently and no nonce repeats."""
    _, pk = keys
    gen = CookieGenerator(pk)
    chk = CookieChecker(pk, rng_from(5))
    ckey = hashlib.blake2s(b"cookie--" + pk).digest()
    msg = gen.add_macs(bytes(116), now=0.0)
    ad = msg[INITIATION_MAC1_OFFSET:INITIATION_MAC2_OFFSET]
    nonces = []
    for now in [0.0] * 50 + [COOKIE_REFRESH_TIME + 1.0] * 50:
        reply = unpack_cookie_reply(chk.create_reply(msg, INITIATION_MAC1_OFFSET, 1, SRC, now=now))
        assert len(xaead_decrypt(ckey, reply.nonce, reply.encrypted_cookie, ad)) == 16
        nonces.append(reply.nonce)
    assert len(set(nonces)) == 100
    assert len({n[:16] for n in nonces}) == 2  # one prefix per secret
    assert [int.from_bytes(n[16:], "little") for n in nonces[:3]] == [0, 1, 2]
