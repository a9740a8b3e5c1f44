"""Two cores and a fake clock: rekeying, retransmission, giving up, keepalives, expiry, zeroing,
and the message-count limits (whitepaper §6; wireguard-go ``timers.go``, ``send.go``;
PROTOCOL-NOTES §1.7)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from crypto.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from crypto.errors import UsageError
from crypto.messages import MESSAGE_KEEPALIVE_SIZE
from crypto.session import Keypair
from crypto.tunnel import Core, HandshakeCompleted, HandshakeGaveUp, HandshakeInitiated, KeysZeroed
from vpn.testlab.packets import ipv4_packet, seq_of
from vpn.testlab.pair import Pair, drop_all, seeded_rng


def events_of(core_events: list[Any], kind: type) -> list[Any]:
    return [e for e in core_events if isinstance(e, kind)]


class Recorder:
    """A filter that records (time, datagram) and optionally drops."""

    def __init__(self, p: Pair, *, drop: bool = False) -> None:
        self.p = p
        self.drop = drop
        self.seen: list[tuple[float, bytes]] = []

    def __call__(self, datagrams: list[bytes]) -> list[bytes]:
        self.seen += [(self.p.now, d) for d in datagrams]
        return [] if self.drop else datagrams

    def of_type(self, t: int) -> list[tuple[float, bytes]]:
        return [(when, d) for when, d in self.seen if d[0] == t]


# -- rekeying ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(2))
def test_rekey_after_time_with_steady_traffic_loses_nothing(seed: int) -> None:
    p = Pair(seed=20 + seed)
    p.handshake()
    first_a = p.a.tunnel.current
    sent_a, sent_b = [], []
    for i in range(400):  # 200 s of traffic both ways, every 0.5 s
        pa, pb = ipv4_packet(64, i), ipv4_packet(80, 100_000 + i)
        sent_a.append(pa)
        sent_b.append(pb)
        p.send(p.a, [pa])
        p.send(p.b, [pb])
        p.advance(0.5)
    p.roundtrip()
    assert p.b.received == sent_a
    assert p.a.received == sent_b
    # a (the initiator) rekeyed once, just after REKEY_AFTER_TIME; the next rekey is due at ~240 s
    assert p.a.tunnel.handshakes == 2 and p.b.tunnel.handshakes == 2
    assert p.a.tunnel.current is not first_a
    assert not p.a.core.drops and not p.b.core.drops


def test_rekey_happens_when_data_is_sent_after_rekey_after_time() -> None:
    p = Pair(seed=22)
    p.handshake()
    p.jump(REKEY_AFTER_TIME - 1)
    p.send(p.a, [ipv4_packet(64, 1)])
    assert [d[0] for d in p.take(p.a)] == [4]  # young enough: data only
    p.jump(2)
    p.a.core.take_events()
    p.send(p.a, [ipv4_packet(64, 2)])
    assert [d[0] for d in p.take(p.a)] == [4, 1]  # data on the old keys, then an initiation
    assert events_of(p.a.core.take_events(), HandshakeInitiated)


def test_shortened_rekey_after_time_is_a_constructor_argument() -> None:
    """Core(rekey_after_time=...) (the hostile tests' PYVPN_TEST_REKEY_AFTER_TIME, via vpn.daemon) makes the
    initiator rekey that much sooner; it can only shorten REKEY_AFTER_TIME, to no less than a second."""
    p = Pair(seed=25, rekey_after_time=2.0)
    p.handshake()
    p.jump(1.5)
    p.send(p.a, [ipv4_packet(64, 1)])
    assert [d[0] for d in p.take(p.a)] == [4]
    p.jump(REKEY_TIMEOUT)  # past 2 s, and past REKEY_TIMEOUT since the last initiation
    p.send(p.a, [ipv4_packet(64, 2)])
    assert [d[0] for d in p.take(p.a)] == [4, 1]  # data on the old keys, then an initiation
    for bad in (0.5, REKEY_AFTER_TIME + 1, float("nan")):
        with pytest.raises(UsageError):
            Core(p.a_private, rng=seeded_rng(1), rekey_after_time=bad)


def test_responder_does_not_rekey_on_time() -> None:
    """Only the initiator rekeys after REKEY_AFTER_TIME (kernel send.c keep_key_fresh)."""
    p = Pair(seed=23)
    p.handshake()
    p.jump(REKEY_AFTER_TIME + 1)
    p.send(p.b, [ipv4_packet(64, 1)])
    assert [d[0] for d in p.take(p.b)] == [4]


def test_previous_keypair_accepted_for_in_flight_packets() -> None:
    p = Pair(seed=24)
    p.handshake()
    old_a, old_b = p.a.tunnel.current, p.b.tunnel.current
    p.jump(REKEY_AFTER_TIME + 1)
    # in flight on the old session, both ways
    p.send(p.b, [ipv4_packet(64, 1)])
    late_from_b = p.take(p.b)
    p.send(p.a, [ipv4_packet(64, 2)])  # also sends the initiation
    out = p.take(p.a)
    late_from_a, initiation = [d for d in out if d[0] == 4], [d for d in out if d[0] == 1]
    assert late_from_a and initiation
    p.deliver(p.b, initiation)
    p.roundtrip()  # response, keepalive: both sides rotate
    assert p.a.tunnel.current is not old_a and p.a.tunnel.previous is old_a
    assert p.b.tunnel.current is not old_b and p.b.tunnel.previous is old_b
    assert [seq_of(x) for x in p.deliver(p.a, late_from_b)] == [1]
    assert [seq_of(x) for x in p.deliver(p.b, late_from_a)] == [2]
    # the next rotation retires it
    p.jump(REKEY_AFTER_TIME + 1)
    p.send(p.a, [ipv4_packet(64, 3)])
    p.roundtrip()
    assert p.a.tunnel.previous is not old_a
    again = old_a.seal_batch([ipv4_packet(64, 4)], 1420)  # type: ignore[union-attr]
    assert p.deliver(p.b, again) == []
    assert p.b.core.drops["unknown_index"] == 1


def test_initiator_rekeys_once_when_receiving_near_reject_time() -> None:
    """Receiving on a session older than REJECT − KEEPALIVE − REKEY_TIMEOUT (165 s) makes the
    initiator start one handshake (kernel receive.c keep_key_fresh)."""
    p = Pair(seed=25)
    p.handshake()
    p.a.core.take_events()
    p.jump(REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + 1)
    p.send(p.b, [ipv4_packet(64, 1)])
    p.transfer(p.b)
    assert [d[0] for d in p.take(p.a)] == [1]
    assert p.a.tunnel.sent_last_minute_handshake
    p.jump(REKEY_TIMEOUT + 1)
    p.send(p.b, [ipv4_packet(64, 2)])
    p.transfer(p.b)
    assert [d[0] for d in p.take(p.a)] == []  # only once


# -- retransmission and giving up -----------------------------------------------------------------

def test_initiation_is_retransmitted_after_rekey_timeout_with_jitter() -> None:
    p = Pair(seed=26)
    t0 = p.now
    p.a.tunnel.initiate(now=p.now)
    p.transfer(p.a)  # b answers ...
    p.take(p.b)  # ... but the response is lost
    deadline = p.a.core.next_timer()
    assert deadline is not None
    assert t0 + REKEY_TIMEOUT <= deadline <= t0 + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    p.a.core.take_events()
    p.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 0.01)
    assert events_of(p.a.core.take_events(), HandshakeInitiated) == [
        HandshakeInitiated(p.b.core.public_key, True)]
    assert p.a.tunnel.current is not None and p.b.tunnel.current is not None
    assert p.a.tunnel.handshake_attempts == 0


def test_retransmit_jitter_varies() -> None:
    gaps = set()
    for seed in range(6):
        p = Pair(seed=100 + seed)
        p.a.tunnel.initiate(now=p.now)
        gaps.add(round(p.a.core.next_timer() - p.now, 6))  # type: ignore[operator]
    assert len(gaps) > 1


def test_timer_jitter_draws_on_the_rng_once() -> None:
    """Every lone packet sent arms the new-handshake timer with a jitter.  The jitter comes from a PRNG seeded
    once from the core's rng (``os.urandom`` in production), not a ``getrandom`` system call per packet."""
    p = Pair(seed=41)
    p.handshake()
    assert p.a.core._jitter_source is not None
    calls: list[int] = []
    rng = p.a.core._rng
    p.a.core._rng = lambda n: calls.append(n) or rng(n)  # type: ignore[func-returns-value]
    deadlines = set()
    for i in range(20):  # a ping: a sends, b answers, which disarms a's new-handshake timer
        p.send(p.a, [ipv4_packet(64, i)])
        deadlines.add(round(p.a.tunnel._new_handshake_at - p.now, 9))  # type: ignore[operator]
        p.transfer(p.a)
        p.send(p.b, [ipv4_packet(64, i)])
        p.transfer(p.b)
        assert p.a.tunnel._new_handshake_at is None
        p.advance(0.05)
    assert calls == []  # the PRNG was seeded when the handshake's retransmit timer was armed
    assert len(deadlines) > 10
    low = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert all(low < d < low + REKEY_TIMEOUT_JITTER_MAX for d in deadlines)


def test_gives_up_after_rekey_attempt_time() -> None:
    p = Pair(seed=27)
    t0 = p.now
    p.send(p.a, [ipv4_packet(64, 1)])  # staged; starts the handshake
    rec = Recorder(p, drop=True)
    p.advance(REKEY_ATTEMPT_TIME + 30, filter_ab=rec)
    events = p.a.core.take_events()
    initiated = events_of(events, HandshakeInitiated)
    assert len(initiated) == MAX_TIMER_HANDSHAKES + 2 == 20
    assert [e.retry for e in initiated] == [False] + [True] * (MAX_TIMER_HANDSHAKES + 1)
    assert events_of(events, HandshakeGaveUp) == [HandshakeGaveUp(p.b.core.public_key)]
    times = [when for when, _ in rec.of_type(1)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 1e-9 for g in gaps)
    assert times[-1] - t0 >= REKEY_ATTEMPT_TIME
    assert p.a.core.drops["handshake_gave_up"] == 1 and not p.a.tunnel.staged
    assert p.a.tunnel.handshake is None
    # silence afterwards (until new data)
    p.advance(60, filter_ab=rec)
    assert len(rec.of_type(1)) == 20


# -- keepalives -----------------------------------------------------------------------------------

def test_keepalive_after_keepalive_timeout_when_only_receiving() -> None:
    p = Pair(seed=28)
    p.handshake()
    t0 = p.now
    p.send(p.a, [ipv4_packet(64, 1)])
    rec = Recorder(p)
    p.advance(KEEPALIVE_TIMEOUT + 1, filter_ba=rec)
    keepalives = [(when, d) for when, d in rec.seen if len(d) == MESSAGE_KEEPALIVE_SIZE]
    assert len(keepalives) == 1
    assert keepalives[0][0] == pytest.approx(t0 + KEEPALIVE_TIMEOUT)


def test_no_keepalive_when_replying_with_data() -> None:
    p = Pair(seed=29)
    p.handshake()
    p.send(p.a, [ipv4_packet(64, 1)])
    p.roundtrip()
    p.jump(1)
    p.send(p.b, [ipv4_packet(64, 2)])
    rec = Recorder(p)
    p.advance(KEEPALIVE_TIMEOUT + 5, filter_ba=rec)
    assert [len(d) for _, d in rec.seen if len(d) == MESSAGE_KEEPALIVE_SIZE] == []


def test_new_handshake_when_sent_data_gets_no_answer() -> None:
    """Data sent, nothing received for KEEPALIVE + REKEY_TIMEOUT (+ jitter): new handshake."""
    p = Pair(seed=30)
    p.handshake()
    t0 = p.now
    p.a.core.take_events()
    p.send(p.a, [ipv4_packet(64, 1)])
    rec = Recorder(p)
    p.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 1, filter_ab=rec, filter_ba=drop_all)
    inits = rec.of_type(1)
    assert len(inits) == 1
    assert t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT <= inits[0][0] <= (
        t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)


def test_persistent_keepalive_handshakes_at_once_then_ticks() -> None:
    p = Pair(seed=31)
    p.a.tunnel.set_persistent_keepalive(25, now=p.now)
    out = p.take(p.a)
    assert [d[0] for d in out] == [1]
    p.deliver(p.b, out)
    p.roundtrip()
    assert p.a.tunnel.current is not None and p.b.tunnel.current is not None
    rec = Recorder(p)
    t0 = p.now
    p.advance(80, filter_ab=rec)
    ticks = [when - t0 for when, d in rec.seen if len(d) == MESSAGE_KEEPALIVE_SIZE]
    assert ticks == pytest.approx([25, 50, 75])
    p.a.tunnel.set_persistent_keepalive(0, now=p.now)
    rec.seen.clear()
    p.advance(80, filter_ab=rec)
    assert rec.seen == []


# -- expiry and zeroing --------------------------------------------------------------------------

def test_expired_session_stages_and_handshakes() -> None:
    p = Pair(seed=32)
    p.handshake()
    a_kp = p.a.tunnel.current
    assert isinstance(a_kp, Keypair)
    p.jump(REJECT_AFTER_TIME + 1)
    data = [ipv4_packet(64, 7)]
    p.send(p.b, data)  # b's session is too old to use
    out = p.take(p.b)
    assert [d[0] for d in out] == [1]
    assert list(p.b.tunnel.staged) == data
    # a message on the expired keypair is refused, even if it decrypts
    forged_late = a_kp.seal_batch([ipv4_packet(64, 8)], 1420)
    assert p.deliver(p.b, forged_late) == []
    assert p.b.core.drops["expired_keypair"] == 1
    p.deliver(p.a, out)
    p.roundtrip()
    assert p.a.received == data


def test_keys_zeroed_after_three_reject_after_time() -> None:
    p = Pair(seed=33)
    p.handshake()
    old = p.a.tunnel.current
    assert isinstance(old, Keypair)
    p.a.core.take_events()
    p.b.core.take_events()
    p.advance(3 * REJECT_AFTER_TIME - 1)
    assert p.a.tunnel.current is not None
    p.advance(2)
    for node, other in ((p.a, p.b), (p.b, p.a)):
        assert KeysZeroed(other.core.public_key) in node.core.take_events()
        t = node.tunnel
        assert t.current is None and t.previous is None and t.next is None and t.handshake is None
        assert node.core._indices == {}
    assert p.deliver(p.b, old.seal_batch([ipv4_packet(64, 1)], 1420)) == []
    assert p.b.core.drops["unknown_index"] == 1
    # and a new handshake works afterwards
    p.send(p.a, [ipv4_packet(64, 2)])
    p.roundtrip()
    assert [seq_of(x) for x in p.b.received] == [2]


# -- message-count limits ------------------------------------------------------------------------

def test_rekey_after_messages() -> None:
    p = Pair(seed=34)
    p.handshake()
    kp = p.a.tunnel.current
    assert isinstance(kp, Keypair)
    kp.send_counter = REKEY_AFTER_MESSAGES
    p.jump(REKEY_TIMEOUT + 1)  # initiations are at most one per REKEY_TIMEOUT
    p.send(p.a, [ipv4_packet(64, 1)])
    out = p.take(p.a)
    assert [d[0] for d in out] == [4, 1]
    assert int.from_bytes(out[0][8:16], "little") == REKEY_AFTER_MESSAGES
    p.deliver(p.b, out)
    p.roundtrip()
    assert [seq_of(x) for x in p.b.received] == [1]
    assert p.a.tunnel.current is not kp


def test_responder_rekeys_after_messages_too() -> None:
    p = Pair(seed=35)
    p.handshake()
    kp = p.b.tunnel.current
    assert isinstance(kp, Keypair)
    kp.send_counter = REKEY_AFTER_MESSAGES + 1
    p.jump(REKEY_TIMEOUT + 1)
    p.send(p.b, [ipv4_packet(64, 1)])
    assert [d[0] for d in p.take(p.b)] == [4, 1]


def test_reject_after_messages_never_sends_a_counter_at_the_limit() -> None:
    p = Pair(seed=36)
    p.handshake()
    kp = p.a.tunnel.current
    assert isinstance(kp, Keypair)
    kp.send_counter = REJECT_AFTER_MESSAGES - 2
    p.send(p.a, [ipv4_packet(64, 1)])
    out = p.take(p.a)
    counters = [int.from_bytes(d[8:16], "little") for d in out if d[0] == 4]
    assert counters == [REJECT_AFTER_MESSAGES - 2]
    assert [seq_of(x) for x in p.deliver(p.b, out)] == [1]
    # The next packet would need counter REJECT_AFTER_MESSAGES - 1.  wireguard-go would still
    # send that one (it refuses nonce >= RejectAfterMessages); this core stops one earlier,
    # which is harmless.  Either way nothing at or above the limit goes out: it is staged and
    # a handshake starts (or is already under way).
    p.jump(REKEY_TIMEOUT + 1)
    p.send(p.a, [ipv4_packet(64, 2)])
    out = p.take(p.a)
    assert all(int.from_bytes(d[8:16], "little") < REJECT_AFTER_MESSAGES - 1 for d in out if d[0] == 4)
    assert [d[0] for d in out] == [1]
    assert [seq_of(x) for x in p.a.tunnel.staged] == [2]
    p.deliver(p.b, out)
    p.roundtrip()
    assert [seq_of(x) for x in p.b.received] == [1, 2]
    assert p.a.tunnel.current is not kp


def test_receiver_refuses_counters_at_the_limit() -> None:
    p = Pair(seed=37)
    p.handshake()
    kp = p.a.tunnel.current
    assert isinstance(kp, Keypair)
    kp.send_counter = REJECT_AFTER_MESSAGES
    forged = kp.seal_batch([ipv4_packet(64, 1)], 1420)  # bypassing encapsulate's own check
    assert p.deliver(p.b, forged) == []
    assert p.b.core.drops["replayed_counter"] == 1


def test_handshake_completed_events_on_rekey() -> None:
    p = Pair(seed=38)
    p.handshake()
    p.a.core.take_events()
    p.b.core.take_events()
    p.jump(REKEY_AFTER_TIME + 1)
    p.send(p.a, [ipv4_packet(64, 1)])
    p.roundtrip()
    assert events_of(p.a.core.take_events(), HandshakeCompleted) == [HandshakeCompleted(p.b.core.public_key, True)]
    assert events_of(p.b.core.take_events(), HandshakeCompleted) == [
        HandshakeCompleted(p.a.core.public_key, False)]


def test_staged_data_flushed_by_the_handshake_arms_the_new_handshake_timer() -> None:
    """Staged packets that go out when the handshake completes are data, not a keepalive.

    wireguard-go calls timersDataSent for every non-keepalive packet the sequential sender sends,
    staged ones included; so if the peer vanishes right after the handshake, the initiator starts
    a new handshake after KEEPALIVE + REKEY_TIMEOUT.
    """
    p = Pair(seed=39)
    p.send(p.a, [ipv4_packet(64, 1)])  # staged; initiation
    p.transfer(p.a)
    p.transfer(p.b)  # response: a completes and flushes the staged packet
    t0 = p.now
    flushed = p.take(p.a)
    assert [len(d) > MESSAGE_KEEPALIVE_SIZE for d in flushed] == [True]
    p.a.core.take_events()
    rec = Recorder(p, drop=True)
    p.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 1, filter_ab=rec, filter_ba=drop_all)
    inits = rec.of_type(1)
    assert len(inits) == 1, "no new handshake after the peer went silent"
    assert inits[0][0] >= t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT


def test_retransmit_survives_zero_jitter_and_float_rounding() -> None:
    """With a jitter of exactly 0 the retransmit deadline is ``t0 + 5.0``, and for some ``t0``
    ``(t0 + 5.0) - t0 < 5.0`` in floating point (1019.1 is one).  The timer then fired, the
    REKEY_TIMEOUT guard in ``initiate`` refused, and no timer was left: the handshake stalled.
    (Go's monotonic nanoseconds make this impossible in wireguard-go.)"""
    t0 = 1019.1
    assert (t0 + REKEY_TIMEOUT) - t0 < REKEY_TIMEOUT
    class SmallestJitter(random.Random):
        def getrandbits(self, k: int) -> int:
            return 0

    p = Pair(seed=40)
    a = Core(p.a_private, rng=random.Random(3).randbytes)
    a._jitter_source = SmallestJitter()
    t = a.add_peer(p.b.core.public_key, endpoint=p.b.addr)
    t.initiate(now=t0)
    a.take_outbox()
    a.take_events()
    deadline = a.next_timer()
    assert deadline is not None
    a.handle_timer(now=deadline)
    assert events_of(a.take_events(), HandshakeInitiated) == [HandshakeInitiated(p.b.core.public_key, True)]
    assert a.next_timer() is not None
