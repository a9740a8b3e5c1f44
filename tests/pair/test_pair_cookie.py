"""The cookie path under load (whitepaper §5.3, §5.4.7; PROTOCOL-NOTES §1.5).

Under load, a handshake message with a valid mac1 but no valid mac2 is answered with a cookie
reply and not processed; the sender retries (on its retransmit timer) with mac2 set.  Invalid
mac1 gets nothing at all.  Handshakes with a valid mac2 are rate-limited per source address.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from crypto.constants import (
    COOKIE_REFRESH_TIME,
    HANDSHAKES_QUIET_PER_SECOND,
    HANDSHAKES_SHARED_PER_SECOND,
    RATELIMIT_BURST,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
    UNDER_LOAD_HOLD,
)
from crypto.cookie import CookieGenerator
from crypto.errors import ProtocolError
from crypto.messages import (
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY_SIZE,
    RESPONSE_MAC2_OFFSET,
    unpack_cookie_reply,
)
from crypto.noise import LABEL_MAC1
from crypto.primitives import hash_, mac
from crypto.tunnel import CookieReceived
from vpn.testlab.pair import A_ADDR, B_ADDR, Pair

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
    """Only handshakes with a valid mac1 count towards load: random datagrams, which anyone can
    send without the server's public key, cost one MAC and never put the server in cookie mode."""
    p = Pair(seed=44)
    junk = bytearray(148)
    junk[0] = 1
    for _ in range(10 * UNDER_LOAD_HANDSHAKES_PER_SECOND):
        p.deliver(p.b, [bytes(junk)], src=("198.18.0.200", 1))
    assert p.b.core.drops["invalid_mac1"] == 10 * UNDER_LOAD_HANDSHAKES_PER_SECOND
    assert not p.b.core.under_load(now=p.now)
    # garbage bodies with a valid mac1 (the attacker knows our public key) do count
    mac1_key = hash_(LABEL_MAC1, p.b.core.public_key)
    for i in range(UNDER_LOAD_HANDSHAKES_PER_SECOND + 1):
        body = b"\x01\0\0\0" + i.to_bytes(4, "little") + bytes(108)
        p.deliver(p.b, [body + mac(mac1_key, body) + bytes(16)], src=("198.18.0.200", 1))
    assert p.b.core.under_load(now=p.now)
    assert [d[0] for _, ds in p.b.core.take_outbox() for d in ds] == [3]  # the one that tipped it
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)
    assert [d[0] for d in p.take(p.b)] == [3]
    p.jump(UNDER_LOAD_HOLD + 1.0)
    assert not p.b.core.under_load(now=p.now)


def test_client_completes_handshake_during_multi_source_flood() -> None:
    """10,000 initiations/s with a valid mac1 from 1,000 sources (500 IPv4 addresses, 500 IPv6
    /64s whose low 64 bits change with every packet), 200 of which also answer their cookie
    replies and send a valid mac2 (10 a second each).  A client starting its handshake in the
    middle of it gets a cookie, retries with mac2 after REKEY_TIMEOUT and completes; the flood
    costs the server bounded DH work and one table entry per IPv4 address / IPv6 /64."""
    p = Pair(seed=47)
    server, client = p.b.core, p.a.core
    rnd = random.Random(47)
    mac1_key = hash_(LABEL_MAC1, server.public_key)
    n_sources, rate, seconds = 1000, 10_000, 8.0
    cookie_gens: dict[int, CookieGenerator] = {}
    by_endpoint: dict[tuple[str, int], int] = {}

    def endpoint(i: int) -> tuple[str, int]:
        if i < 500:
            return (f"198.18.{100 + i // 250}.{i % 250 + 1}", 1000 + i)
        low = "1" if i % 500 < 100 else f"{rnd.getrandbits(16):x}:{rnd.getrandbits(16):x}"
        return (f"fd00:18:{i:x}:0::{low}", 1000 + i)

    def flood_packet(i: int, ep: tuple[str, int], now: float) -> bytes:
        body = b"\x01\0\0\0" + rnd.getrandbits(32).to_bytes(4, "little") + rnd.randbytes(108)
        gen = cookie_gens.get(i)
        if gen is not None:
            return gen.add_macs(body, now=now)
        return body + mac(mac1_key, body) + bytes(16)

    for i in [*range(100), *range(500, 600)]:  # these read their replies
        cookie_gens[i] = CookieGenerator(server.public_key)
        by_endpoint[endpoint(i)] = i
    start = p.now
    first_try = start + 1.0
    done_at = None
    cookies_used = 0
    for ms in range(int(seconds * 1000)):
        now = start + ms / 1000
        p.clock.now = now
        for k in range(rate // 1000):
            i = (ms * (rate // 1000) + k) % n_sources
            ep = endpoint(i)
            server.decapsulate(ep, [flood_packet(i, ep, now)], now=now)
        if now >= first_try and client.peers[server.public_key].handshake is None and done_at is None \
                and p.a.tunnel.current is None:
            p.a.tunnel.initiate(now=now)
        t = client.next_timer()
        if t is not None and t <= now:
            client.handle_timer(now=now)
        for _ in range(3):  # client <-> server until quiet
            for _, ds in client.take_outbox():
                server.decapsulate(A_ADDR, ds, now=now)
            for ep, ds in server.take_outbox():
                if ep == A_ADDR:
                    client.decapsulate(B_ADDR, ds, now=now)
                elif ep in by_endpoint:
                    for d in ds:
                        with contextlib.suppress(ProtocolError):
                            cookie_gens[by_endpoint[ep]].consume_reply(unpack_cookie_reply(d), now=now)
                            cookies_used += 1
        if done_at is None and p.a.tunnel.current is not None:
            done_at = now
    drops = server.drops
    assert done_at is not None and done_at - first_try < REKEY_TIMEOUT + 2.0, (done_at, dict(drops))
    assert p.b.tunnel.current is not None  # the server saw the confirming keepalive
    assert cookies_used > 0 and drops["handshake_budget"] > 0
    # DH work for the flood is bounded by the two budgets (plus their one-second bursts)
    dh = drops["decrypt_failed"]
    budget = (HANDSHAKES_SHARED_PER_SECOND + HANDSHAKES_QUIET_PER_SECOND) * (seconds + 1)
    assert 0 < dh <= budget, (dh, dict(drops))
    # no source sends more than 10/s: every initiation without mac2 got its cookie reply
    assert drops["cookie_reply_limited"] == 0 and drops["cookie_reply_sent"] > 0.7 * rate * seconds
    # one table entry per IPv4 address / IPv6 /64, not per /128
    assert len(server.cookie_limiter) <= n_sources


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


def test_behind_sheds_busy_sources_and_serves_quiet_ones() -> None:
    """While the adapter is behind (deep receive queue) under load, handshakes from sources that
    sent one within QUIET_SOURCE_INTERVAL are shed before any cookie work; a client's first try
    and its retry after REKEY_TIMEOUT come from a quiet source and are served."""
    p = Pair(seed=48)
    server = p.b.core
    server.force_under_load = True
    mac1_key = hash_(LABEL_MAC1, server.public_key)

    def flood(now: float) -> None:
        for i in range(200):
            body = b"\x01\0\0\0" + i.to_bytes(4, "little") + bytes(108)
            server.decapsulate((f"198.18.9.{i + 1}", 7), [body + mac(mac1_key, body) + bytes(16)], now=now)

    flood(p.now)  # every flood source has now been seen
    assert server.drops["cookie_reply_sent"] == 200
    server.take_outbox()
    server.behind = True
    flood(p.now + 0.5)
    assert server.drops["handshake_shed"] == 200 and server.take_outbox() == []
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)  # the client is quiet: served (cookie reply)
    assert [d[0] for d in p.take(p.b)] == [3]
    p.jump(RETRY)
    p.a.tunnel.last_sent_handshake = -1e9
    p.b.tunnel.last_initiation_consumed = -1e9
    flood(p.now)
    assert server.drops["handshake_shed"] == 200  # quiet again after the interval: served
    flood(p.now + 0.1)
    assert server.drops["handshake_shed"] == 400
    server.take_outbox()
    # the client's retry, after REKEY_TIMEOUT, is served too
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)
    assert [d[0] for d in p.take(p.b)] == [3]
    assert server.drops["handshake_shed"] == 400
    server.behind = False
    flood(p.now + 0.2)  # not behind: busy sources are answered again
    assert server.drops["cookie_reply_sent"] == 200 + 1 + 200 + 1 + 200
