"""The cookie path under load (whitepaper §5.3, §5.4.7; PROTOCOL-NOTES §1.5).

Under load, a handshake message with a valid mac1 but no valid mac2 is answered with a cookie
reply and not processed; the sender retries (on its retransmit timer) with mac2 set.  Invalid
mac1 gets nothing at all.  Handshakes with a valid mac2 are rate-limited per source address.
"""

from __future__ import annotations

import pytest
from wgpair import B_ADDR, Pair

from crypto.constants import (
    COOKIE_REFRESH_TIME,
    RATELIMIT_BURST,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
    UNDER_LOAD_HOLD,
)
from crypto.messages import INITIATION_MAC2_OFFSET, MESSAGE_COOKIE_REPLY_SIZE, RESPONSE_MAC2_OFFSET
from crypto.tunnel import CookieReceived

RETRY = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 0.01


def test_initiation_under_load_gets_a_cookie_then_succeeds_with_mac2() -> None:
    p = Pair(seed=40)
    p.b.core.force_under_load = True
    p.a.tunnel.initiate(now=p.now)
    init1 = p.take(p.a)
    assert init1[0][INITIATION_MAC2_OFFSET:] == bytes(16)
    p.deliver(p.b, init1)
    reply = p.take(p.b)
    assert [len(d) for d in reply] == [MESSAGE_COOKIE_REPLY_SIZE] and reply[0][0] == 3
    assert p.b.core.drops == {"cookie_reply_sent": 1}
    assert p.b.tunnel.next is None and p.b.tunnel.endpoint is None  # not processed, no roaming
    p.deliver(p.a, reply)
    assert p.a.tunnel.cookies.has_cookie
    assert CookieReceived(p.b.core.public_key) in p.a.core.take_events()
    assert p.a.tunnel.current is None
    # the retransmit timer sends a new initiation, now with mac2
    p.advance(RETRY, deliver=False)
    init2 = p.take(p.a)
    assert [d[0] for d in init2] == [1] and init2[0][INITIATION_MAC2_OFFSET:] != bytes(16)
    p.deliver(p.b, init2)
    resp = p.take(p.b)
    assert [d[0] for d in resp] == [2]
    p.deliver(p.a, resp)
    p.roundtrip()
    assert p.a.tunnel.current is not None and p.b.tunnel.current is not None
    assert p.b.core.cookie_replies_sent == 1


def test_invalid_mac1_under_load_gets_no_reply() -> None:
    p = Pair(seed=41)
    p.b.core.force_under_load = True
    p.a.tunnel.initiate(now=p.now)
    init = bytearray(p.take(p.a)[0])
    init[120] ^= 1  # inside mac1
    p.deliver(p.b, [bytes(init)])
    assert p.b.core.take_outbox() == []
    assert p.b.core.drops == {"invalid_mac1": 1}
    assert p.b.core.cookie_replies_sent == 0


def test_rate_limit_per_source_under_load() -> None:
    p = Pair(seed=42)
    p.b.core.force_under_load = True
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)
    p.transfer(p.b)  # cookie reply
    p.jump(RETRY)
    p.a.tunnel.last_sent_handshake = -1e9
    p.a.tunnel.initiate(now=p.now)
    init = p.take(p.a)[0]
    n = RATELIMIT_BURST + 3
    for _ in range(n):  # the same valid initiation, replayed from the same address
        p.deliver(p.b, [init])
    out = [d for _, ds in p.b.core.take_outbox() for d in ds]
    assert [d[0] for d in out] == [2]  # one response
    drops = p.b.core.drops
    assert drops["stale_timestamp"] == RATELIMIT_BURST - 1  # passed the limiter, refused later
    assert drops["rate_limited"] == n - RATELIMIT_BURST
    # another address: the cookie (bound to the address) does not fit, so a cookie reply, not a
    # rate-limit drop
    p.deliver(p.b, [init], src=("198.18.0.66", 51820))
    assert [d[0] for _, ds in p.b.core.take_outbox() for d in ds] == [3]
    assert drops["rate_limited"] == n - RATELIMIT_BURST
    # tokens come back with time
    p.jump(1.0)
    p.deliver(p.b, [init])
    assert drops["stale_timestamp"] == RATELIMIT_BURST


def test_both_sides_under_load() -> None:
    """The worst case (wireguard-rs handshake tests, ``handshake_under_load``): initiation →
    cookie → initiation with mac2 → response → cookie → initiation (retransmit) → response with
    mac2 → keepalive."""
    p = Pair(seed=43)
    p.a.core.force_under_load = True
    p.b.core.force_under_load = True
    trace: list[str] = []

    def hop(sender: str) -> None:
        node = p.a if sender == "a" else p.b
        datagrams = p.take(node)
        trace.extend(f"{sender}{d[0]}" for d in datagrams)
        p.deliver(p.other(node), datagrams)

    p.a.tunnel.initiate(now=p.now)
    hop("a")  # init
    hop("b")  # cookie
    p.advance(RETRY, deliver=False)
    hop("a")  # init + mac2
    hop("b")  # response without mac2 (b holds no cookie from a)
    assert trace[-1] == "b2"
    hop("a")  # a is under load too: cookie reply to b
    assert trace[-1] == "a3" and p.b.tunnel.cookies.has_cookie
    p.advance(RETRY, deliver=False)
    hop("a")  # retransmitted initiation
    hop("b")  # response, now with mac2
    hop("a")  # keepalive
    assert trace == ["a1", "b3", "a1", "b2", "a3", "a1", "b2", "a4"]
    assert p.a.tunnel.current is not None and p.b.tunnel.current is not None
    resp = [d for d in p.b.sent_datagrams if d[0] == 2]
    assert resp[0][RESPONSE_MAC2_OFFSET:] == bytes(16) and resp[1][RESPONSE_MAC2_OFFSET:] != bytes(16)


def test_load_is_detected_from_the_handshake_rate_and_held() -> None:
    p = Pair(seed=44)
    junk = bytearray(148)
    junk[0] = 1
    for _ in range(UNDER_LOAD_HANDSHAKES_PER_SECOND + 1):
        p.deliver(p.b, [bytes(junk)], src=("198.18.0.200", 1))
    assert p.b.core.drops["invalid_mac1"] == UNDER_LOAD_HANDSHAKES_PER_SECOND + 1
    assert p.b.core.under_load(now=p.now)
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)
    assert [d[0] for d in p.take(p.b)] == [3]
    p.jump(UNDER_LOAD_HOLD + 1.0)
    assert not p.b.core.under_load(now=p.now)


def test_expired_cookie_is_not_used() -> None:
    p = Pair(seed=45)
    p.b.core.force_under_load = True
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)
    p.transfer(p.b)
    assert p.a.tunnel.cookies.has_cookie
    p.jump(COOKIE_REFRESH_TIME + 1)
    p.a.tunnel.initiate(now=p.now)
    init = p.take(p.a)[0]
    assert init[INITIATION_MAC2_OFFSET:] == bytes(16)
    p.deliver(p.b, [init])
    assert [d[0] for d in p.take(p.b)] == [3]


@pytest.mark.parametrize("mutate", ["receiver", "nonce", "cookie", "unsolicited"])
def test_bad_cookie_replies_are_dropped(mutate: str) -> None:
    p = Pair(seed=46)
    p.b.core.force_under_load = True
    if mutate != "unsolicited":
        p.a.tunnel.initiate(now=p.now)
        p.transfer(p.a)
        reply = bytearray(p.take(p.b)[0])
    else:
        reply = bytearray(64)
        reply[0] = 3
    if mutate == "receiver":
        reply[4] ^= 1
    elif mutate == "nonce":
        reply[10] ^= 1
    elif mutate == "cookie":
        reply[40] ^= 1
    p.deliver(p.a, [bytes(reply)], src=B_ADDR)
    assert not p.a.tunnel.cookies.has_cookie
    assert sum(p.a.core.drops.values()) == 1
    expected = "bad_cookie_reply" if mutate in ("nonce", "cookie") else "unknown_index"
    assert p.a.core.drops[expected] == 1
