"""A refused peer (a disabled or expired client, decided by the application): its handshakes are
refused, its session ends at once, and it gets one again when taken back."""

from __future__ import annotations

from vpn.testlab.packets import ipv4_packet
from vpn.testlab.pair import Pair


def test_refused_peer_gets_no_session_and_loses_its_own() -> None:
    p = Pair(seed=41)
    p.handshake()
    p.send(p.a, [ipv4_packet(60, 1)])
    p.roundtrip()
    assert p.b.received == [ipv4_packet(60, 1)]

    # b (the server) refuses a: the session is gone at once, data from a is dropped
    p.b.tunnel.set_refused(True)
    assert p.b.tunnel.current is None and p.b.tunnel.next is None and p.b.tunnel.previous is None
    assert p.b.tunnel.next_deadline() == float("inf")  # no timer left for it
    p.send(p.a, [ipv4_packet(60, 2)])
    p.roundtrip()
    assert p.b.received == [ipv4_packet(60, 1)]
    assert p.b.core.drops["unknown_index"] >= 1
    # b sends nothing to a refused peer, and never initiates to it
    p.send(p.b, [ipv4_packet(60, 3)])
    assert p.b.core.outbox == [] and p.b.core.drops["refused_peer"] == 1
    p.b.tunnel.initiate(now=p.now)
    assert p.b.core.outbox == []

    # a's handshakes are refused (counted per peer and by reason), so a holds no new session
    p.jump(6.0)
    p.a.tunnel.initiate(now=p.now)
    p.roundtrip()
    assert p.b.core.drops["refused_handshake"] == 1 and p.b.tunnel.refused_handshakes == 1
    assert p.a.tunnel.handshake is not None  # still waiting for a response that never comes

    # taken back: the next initiation succeeds and data flows again
    p.b.tunnel.set_refused(False)
    p.jump(6.0)
    p.a.tunnel.initiate(now=p.now)
    p.roundtrip()
    assert p.b.tunnel.current is not None
    p.send(p.a, [ipv4_packet(60, 4)])
    p.roundtrip()
    assert p.b.received[-1] == ipv4_packet(60, 4)


def test_expiry_is_checked_at_the_handshake_on_the_wall_clock() -> None:
    p = Pair(seed=42)
    p.b.core.wall_offset = 1_800_000_000.0 - p.now  # the wall clock: now is 1.8e9
    p.b.tunnel.expires_at = 1_800_000_010.0
    p.handshake()  # before the expiry: accepted
    p.jump(11.0)  # past it, though nobody called set_refused (the application's timer has not run yet)
    p.a.tunnel.initiate(now=p.now)
    p.roundtrip()
    assert p.b.core.drops["refused_handshake"] == 1
    assert p.b.tunnel.refuses(now=p.now) and not p.b.tunnel.refuses(now=p.now - 5.0)
