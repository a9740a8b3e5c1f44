"""Two cores, no timers: handshake, data, loss/reordering/duplication, padding, staging, unknown
peers, restarts and roaming."""

from __future__ import annotations

import random

import pytest

from crypto.constants import HANDSHAKE_INITIATION_RATE, MAX_STAGED_PACKETS
from crypto.messages import (
    MESSAGE_INITIATION_SIZE,
    MESSAGE_KEEPALIVE_SIZE,
    MESSAGE_RESPONSE_SIZE,
    pack_cookie_reply,
    unpack_cookie_reply,
)
from crypto.replay import WINDOW_SIZE
from crypto.tunnel import CookieReceived, Core, EndpointChanged, HandshakeCompleted, HandshakeInitiated
from vpn.testlab.packets import ipv4_packet, ipv6_packet, seq_of
from vpn.testlab.pair import A_ADDR, B_ADDR, Pair, seeded_rng


def test_handshake_message_sizes_and_events() -> None:
    p = Pair(seed=1)
    p.a.tunnel.initiate(now=p.now)
    init = p.take(p.a)
    assert [len(d) for d in init] == [MESSAGE_INITIATION_SIZE] and init[0][:4] == b"\x01\0\0\0"
    assert p.a.core.take_events() == [HandshakeInitiated(p.b.core.public_key, False)]
    p.deliver(p.b, init)
    resp = p.take(p.b)
    assert [len(d) for d in resp] == [MESSAGE_RESPONSE_SIZE] and resp[0][:4] == b"\x02\0\0\0"
    # b learned a's endpoint from the authenticated initiation; its session is not confirmed yet
    assert p.b.tunnel.endpoint == A_ADDR
    assert p.b.tunnel.current is None and p.b.tunnel.next is not None
    assert EndpointChanged(p.a.core.public_key, A_ADDR) in p.b.core.take_events()
    p.deliver(p.a, resp)
    assert p.a.tunnel.current is not None
    assert HandshakeCompleted(p.b.core.public_key, True) in p.a.core.take_events()
    keepalive = p.take(p.a)  # the initiator confirms the session at once
    assert [len(d) for d in keepalive] == [MESSAGE_KEEPALIVE_SIZE] and keepalive[0][:4] == b"\x04\0\0\0"
    assert p.deliver(p.b, keepalive) == []
    assert p.b.tunnel.current is not None and p.b.tunnel.next is None
    assert HandshakeCompleted(p.a.core.public_key, False) in p.b.core.take_events()
    assert p.a.tunnel.handshakes == p.b.tunnel.handshakes == 1
    assert not p.a.core.drops and not p.b.core.drops


@pytest.mark.parametrize("psk", [None, bytes(range(32))])
def test_data_both_ways(psk: bytes | None) -> None:
    p = Pair(seed=2, psk=psk)
    p.handshake()
    out_a = [ipv4_packet(100 + i, i) for i in range(20)]
    out_b = [ipv6_packet(200 + i, 1000 + i) for i in range(20)]
    p.send(p.a, out_a)
    p.send(p.b, out_b)
    p.roundtrip()
    assert p.b.received == out_a
    assert p.a.received == out_b
    assert p.a.tunnel.tx_packets == 21 and p.b.tunnel.rx_packets == 21  # + the keepalive
    assert not p.a.core.drops and not p.b.core.drops


def test_psk_mismatch_gives_no_session() -> None:
    p = Pair(seed=3)
    p.a.tunnel.preshared_key = bytes(range(32))
    p.a.tunnel.initiate(now=p.now)
    p.roundtrip()
    assert p.a.tunnel.current is None
    assert p.a.core.drops["decrypt_failed"] == 1
    assert p.b.tunnel.current is None  # never confirmed


def test_responder_with_unconfirmed_session_stages_and_does_not_initiate() -> None:
    """After answering an initiation the responder must wait for key confirmation.

    wireguard-go ``SendHandshakeResponse`` sets ``lastSentHandshake``, so data the responder
    wants to send in that window is staged without a handshake initiation of its own (which would
    make the two handshakes cross); the staged data goes out on the first packet from the
    initiator.
    """
    p = Pair(seed=4)
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)  # initiation → b
    data = [ipv4_packet(60, 1)]
    p.jump(0.01)
    p.send(p.b, data)
    sent = p.take(p.b)
    assert [d[0] for d in sent] == [2], "the responder sent something besides its response"
    p.deliver(p.a, sent)
    p.transfer(p.a)  # keepalive → b: confirms, and b flushes what it staged
    p.transfer(p.b)
    assert p.a.received == data
    assert p.a.tunnel.handshakes == 1 and p.b.tunnel.handshakes == 1


# -- loss, reordering, duplication ---------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_loss_reordering_duplication(seed: int) -> None:
    p = Pair(seed=10 + seed)
    p.handshake()
    rnd = random.Random(seed)
    packets = [ipv4_packet(rnd.randrange(32, 1400), i) for i in range(300)]
    p.send(p.a, packets)
    wire = p.take(p.a)
    kept = [i for i in range(len(wire)) if rnd.random() > 0.1]
    dups = rnd.sample(kept, 40)
    order = kept + dups
    rnd.shuffle(order)
    drops_before = p.b.drops_total()
    got: list[bytes] = []
    for start in range(0, len(order), 17):  # in batches of varying provenance
        got += p.deliver(p.b, [wire[i] for i in order[start : start + 17]])
    assert sorted(seq_of(x) for x in got) == sorted(kept), "every kept packet exactly once"
    assert sorted(got, key=seq_of) == [packets[i] for i in sorted(kept)]
    assert p.b.core.drops["replayed_counter"] == len(dups)
    assert p.b.drops_total() - drops_before == len(dups)


def test_reordered_beyond_the_window_is_dropped() -> None:
    p = Pair(seed=5)
    p.handshake()  # a has sent counter 0 (its keepalive)
    n = WINDOW_SIZE + 100
    p.send(p.a, [ipv4_packet(28, i) for i in range(n)])
    wire = p.take(p.a)
    assert p.deliver(p.b, [wire[-1]]) != []  # counter n (the keepalive used 0)
    assert p.deliver(p.b, [wire[0]]) == []  # more than WINDOW_SIZE behind: refused
    assert p.b.core.drops["replayed_counter"] == 1
    # a packet just inside the window is still good
    inside = wire[len(wire) - WINDOW_SIZE]
    assert len(p.deliver(p.b, [inside])) == 1


# -- padding -------------------------------------------------------------------------------------

def _padded_len(n: int, mtu: int) -> int:
    return min(mtu, -(-n // 16) * 16) if n <= mtu else n


@pytest.mark.parametrize("mtu", [1420, 1280])
def test_padding_is_removed_exactly(mtu: int) -> None:
    p = Pair(seed=6, mtu=mtu)
    p.handshake()
    sizes4 = [28, 29, 31, 33, 47, 63, 65, 99, 101, 577, 1001, mtu - 17, mtu - 1, mtu]
    sizes6 = [44, 45, 47, 59, 61, 1023, 1233, mtu - 15, mtu - 1, mtu]
    packets = [ipv4_packet(s, i) for i, s in enumerate(sizes4)]
    packets += [ipv6_packet(s, 100 + i) for i, s in enumerate(sizes6)]
    p.send(p.a, packets)
    wire = p.take(p.a)
    for pkt, dgram in zip(packets, wire, strict=True):
        assert len(dgram) == 32 + _padded_len(len(pkt), mtu), len(pkt)
    assert p.deliver(p.b, wire) == packets


def test_non_ip_plaintext_is_dropped() -> None:
    p = Pair(seed=7)
    p.handshake()
    too_long4 = bytearray(ipv4_packet(40))
    too_long4[2:4] = (49).to_bytes(2, "big")  # claims more than the 48 bytes the padding gives
    too_short4 = bytearray(ipv4_packet(40))
    too_short4[2:4] = (19).to_bytes(2, "big")  # shorter than an IPv4 header
    too_long6 = bytearray(ipv6_packet(60))
    too_long6[4:6] = (25).to_bytes(2, "big")  # 40 + 25 > 64
    bad = [b"\x00" * 40, b"\x45" + bytes(10), bytes(too_long4), bytes(too_short4), bytes(too_long6),
           b"\x60" + bytes(30), b"\x50" + bytes(40)]
    p.send(p.a, bad)
    assert p.deliver(p.b, p.take(p.a)) == []
    assert p.b.core.drops["invalid_inner_packet"] == len(bad)
    # Padding makes a packet whose length field is short of its real length ambiguous: the
    # receiver trusts the header (as wireguard-go does), so the tail is cut, not the packet.
    cut = bytearray(ipv4_packet(40))
    cut[2:4] = (36).to_bytes(2, "big")
    p.send(p.a, [bytes(cut)])
    assert p.deliver(p.b, p.take(p.a)) == [bytes(cut[:36])]


# -- staging -------------------------------------------------------------------------------------

def test_staged_queue_is_bounded() -> None:
    p = Pair(seed=8)
    packets = [ipv4_packet(40, i) for i in range(200)]
    for i in range(0, 200, 10):
        p.send(p.a, packets[i : i + 10])
    assert len(p.a.tunnel.staged) == MAX_STAGED_PACKETS == 128
    assert p.a.core.drops["staged_overflow"] == 200 - 128
    assert [len(d) for d in p.take(p.a)] == [MESSAGE_INITIATION_SIZE]  # one initiation only
    p.a.tunnel.initiate(now=p.now)  # within REKEY_TIMEOUT: nothing
    assert p.take(p.a) == []
    p.a.tunnel.last_sent_handshake = -1e9
    p.a.tunnel.initiate(now=p.now)
    p.roundtrip()
    assert p.b.received == packets[-128:]  # the oldest were dropped, the rest in order


# -- unknown peers, restarts ---------------------------------------------------------------------

def test_unknown_peer_gets_nothing() -> None:
    p = Pair(seed=9)
    stranger = Core(p.b_private, rng=seeded_rng(99))  # b's key, but it knows no peers
    p.a.tunnel.initiate(now=p.now)
    init = p.take(p.a)
    assert stranger.decapsulate(A_ADDR, init, now=p.now) == []
    assert stranger.take_outbox() == []
    assert stranger.drops == {"unknown_peer": 1}


def test_peer_restart_and_replayed_initiation() -> None:
    p = Pair(seed=11)
    p.handshake()
    old_initiation = next(d for d in p.a.sent_datagrams if d[0] == 1)
    p.send(p.a, [ipv4_packet(50, 1)])
    p.roundtrip()
    # a restarts: a new Core with the same private key (new indices, new ephemeral keys)
    p.jump(3.0)
    a2 = Core(p.a_private, rng=seeded_rng(12345))
    t2 = a2.add_peer(p.b.core.public_key, endpoint=B_ADDR)
    p.a.core, p.a.peer, p.a.received = a2, t2, []
    p.handshake()
    p.send(p.a, [ipv4_packet(50, 2)])
    p.send(p.b, [ipv4_packet(50, 3)])
    p.roundtrip()
    assert [seq_of(x) for x in p.b.received] == [1, 2] and [seq_of(x) for x in p.a.received] == [3]
    # an attacker replays the first initiation: refused by its timestamp, no response
    before = p.b.tunnel.current
    p.jump(1.0)
    p.deliver(p.b, [old_initiation])
    assert p.b.core.drops["stale_timestamp"] == 1
    assert p.b.core.take_outbox() == []
    assert p.b.tunnel.current is before and p.b.tunnel.next is None


def test_initiation_flood_is_dropped() -> None:
    """Two initiations with increasing timestamps closer than 20 ms: the second is a flood."""
    p = Pair(seed=13)
    p.a.tunnel.initiate(now=p.now)
    first = p.take(p.a)
    p.a.tunnel.last_sent_handshake = -1e9
    p.a.core.wall_offset += 1.0  # a later TAI64N label, sent almost at once
    p.a.tunnel.initiate(now=p.now)
    second = p.take(p.a)
    p.deliver(p.b, first)
    p.take(p.b)
    p.jump(HANDSHAKE_INITIATION_RATE / 2)
    p.deliver(p.b, second)
    assert p.b.core.drops["handshake_flood"] == 1
    assert p.b.core.take_outbox() == []


# -- roaming -------------------------------------------------------------------------------------

def test_endpoint_roams_on_transport_not_on_cookie_reply_or_garbage() -> None:
    p = Pair(seed=14)
    p.handshake()
    p.a.core.take_events()
    p.b.core.take_events()
    new_a = ("198.18.0.77", 40000)
    # a garbage transport with a valid receiver index from a new address: no roaming
    idx = p.b.tunnel.current.local_index  # type: ignore[union-attr]
    forged = b"\x04\0\0\0" + idx.to_bytes(4, "little") + (5).to_bytes(8, "little") + bytes(32)
    p.deliver(p.b, [forged], src=new_a)
    assert p.b.tunnel.endpoint == A_ADDR and p.b.core.drops["decrypt_failed"] == 1
    # a cookie reply (not authenticated by a session) from a new address: a does not move b
    p.a.tunnel.last_sent_handshake = -1e9
    p.a.tunnel.initiate(now=p.now)
    init = p.take(p.a)[0]
    reply = p.b.core.cookie_checker.create_reply(init, 116, int.from_bytes(init[4:8], "little"),
                                                 b"x", now=p.now)
    p.deliver(p.a, [reply], src=("198.18.0.99", 1))
    assert p.a.tunnel.endpoint == B_ADDR
    assert CookieReceived(p.b.core.public_key) in p.a.core.take_events()
    assert unpack_cookie_reply(reply) == unpack_cookie_reply(pack_cookie_reply(unpack_cookie_reply(reply)))
    # an authenticated transport packet from a new address moves the endpoint
    p.send(p.a, [ipv4_packet(60, 1)])
    p.deliver(p.b, p.take(p.a), src=new_a)
    assert p.b.tunnel.endpoint == new_a
    assert EndpointChanged(p.a.core.public_key, new_a) in p.b.core.take_events()
    p.send(p.b, [ipv4_packet(60, 2)])
    assert [ep for ep, _ in p.b.core.take_outbox()] == [new_a]
