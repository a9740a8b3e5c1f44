"""The transport fast path of ``Core.decapsulate`` and ``Keypair.seal_batch`` against reference models.

* :meth:`crypto.replay.ReplayWindow.mark_increasing` must leave a replay window exactly as ``accept`` called once per
  counter would (random windows, random increasing runs, block jumps past the whole ring).
* ``Core.decapsulate`` opens in-order counters without a window call and marks them afterwards: for any
  order of delivery (duplicates, reordering, stale counters, forged tags, unknown indices, keepalives,
  short and control messages mixed in, random batch cuts), the packets delivered and the drop counts must
  equal a one-message-at-a-time reference that checks, opens and accepts each message in order.
* The bulk path (``Core._decapsulate_run``, one GRO batch of one peer opened with C-level loops) gives
  the reference result on clean batches and declines, changing nothing, on anything else.
* ``seal_batch`` keeps equal-length packets equal-length on the wire (UDP GSO runs) and pads as WireGuard.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.constants import REJECT_AFTER_TIME
from crypto.replay import RING_BLOCKS, WINDOW_SIZE, ReplayWindow
from crypto.session import NONCE, Keypair
from crypto.tunnel import Core
from vpn.testlab.differential import check_bulk_matches_loop, random_batches
from vpn.testlab.packets import ipv4_packet, ipv6_packet, seq_of
from vpn.testlab.pair import A_ADDR, Pair


def _window_from(counters: list[int]) -> ReplayWindow:
    w = ReplayWindow()
    for c in counters:
        w.accept(c)
    return w


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 40_000), max_size=30),
    st.lists(st.integers(1, 3 * 64), min_size=1, max_size=80),
    st.booleans(),
)
def test_mark_increasing_equals_accept(history: list[int], steps: list[int], jump: bool) -> None:
    ref = _window_from(history)
    fast = _window_from(history)
    c = ref.last
    counters = []
    for i, s in enumerate(steps):
        c += s + (RING_BLOCKS * 64 * 2 if jump and i == len(steps) // 2 else 0)
        counters.append(c)
    for x in counters:
        assert ref.accept(x)
    fast.mark_increasing(counters)
    assert fast == ref


def test_mark_increasing_empty_is_a_no_op() -> None:
    w = _window_from([1, 5, 9])
    before = w.copy()
    w.mark_increasing([])
    assert w == before


# -- decapsulate against a one-message-at-a-time reference ------------------------------------------------


def _reference(kp: Keypair, datagrams: list[bytes], known: set[int]) -> tuple[list[int], Counter[str]]:
    """Check, open, accept each message in order with a copy of the window: delivered seqs, drops."""
    window = kp.replay.copy()
    delivered: list[int] = []
    drops: Counter[str] = Counter()
    for d in datagrams:
        if len(d) < 32 or d[0] != 4 or d[1:4] != b"\0\0\0":
            drops["short" if len(d) < 32 and d[:1] == b"\x04" else "other"] += 1
            continue
        if int.from_bytes(d[4:8], "little") not in known:
            drops["unknown_index"] += 1
            continue
        counter = int.from_bytes(d[8:16], "little")
        if not window.check(counter):
            drops["replayed_counter"] += 1
            continue
        try:
            pt = kp.recv_aead.decrypt(NONCE.pack(counter), d[16:], None)
        except InvalidTag:
            drops["decrypt_failed"] += 1
            continue
        if not window.accept(counter):
            drops["replayed_counter"] += 1
            continue
        if pt:
            delivered.append(seq_of(pt))
    return delivered, drops


def _mutate(rng: random.Random, msgs: list[bytes]) -> list[bytes]:
    """Reorder, duplicate, drop, forge and sprinkle junk over a list of transport messages."""
    out = list(msgs)
    if rng.random() < 0.2:
        rng.shuffle(out)
    for _ in range(rng.randrange(0, 8)):  # local swaps: reordering within a few packets
        i = rng.randrange(len(out))
        j = min(len(out) - 1, i + rng.randrange(1, 5))
        out[i], out[j] = out[j], out[i]
    for _ in range(rng.randrange(0, 6)):  # duplicates, often of old messages
        out.insert(rng.randrange(len(out) + 1), rng.choice(msgs))
    for _ in range(rng.randrange(0, 4)):  # losses
        if out:
            out.pop(rng.randrange(len(out)))
    for _ in range(rng.randrange(0, 3)):  # forged tags (counter may be fresh: must not mark it)
        m = bytearray(rng.choice(msgs))
        m[-1] ^= 1
        out.insert(rng.randrange(len(out) + 1), bytes(m))
    for _ in range(rng.randrange(0, 3)):  # unknown receiver index
        m = bytearray(rng.choice(msgs))
        m[4:8] = (int.from_bytes(m[4:8], "little") ^ 0x5A5A5A5A).to_bytes(4, "little")
        out.insert(rng.randrange(len(out) + 1), bytes(m))
    if rng.random() < 0.3:
        out.insert(rng.randrange(len(out) + 1), b"\x04\0\0\0" + bytes(20))  # short type 4
    return out


def test_decapsulate_matches_reference_on_random_orders() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        pair = Pair(seed)
        pair.handshake()
        a, b = pair.a, pair.b
        kp = b.tunnel.current
        assert kp is not None
        # some history so the window is not empty
        a.tunnel.encapsulate([ipv4_packet(100, i) for i in range(rng.randrange(1, 300))], now=pair.now)
        pair.transfer(a)
        sizes = [rng.choice((60, 100, 1420, 333)) for _ in range(rng.randrange(5, 200))]
        packets = [ipv4_packet(sz, 10_000 + i) if i % 3 else ipv6_packet(sz, 10_000 + i)
                   for i, sz in enumerate(sizes)]
        a.tunnel.encapsulate(packets, now=pair.now)
        msgs = pair.take(a)
        if rng.random() < 0.3:
            a.tunnel.send_keepalive(now=pair.now)
            msgs += pair.take(a)
        wire = _mutate(rng, msgs)
        expect, expect_drops = _reference(kp, wire, {kp.local_index})
        before = Counter(b.core.drops)
        got: list[int] = []
        i = 0
        while i < len(wire):  # random batch cuts
            j = i + rng.randrange(1, 64)
            for t, pkts in b.core.decapsulate(A_ADDR, wire[i:j], now=pair.now):
                assert t is b.tunnel
                assert pkts, "no empty groups"
                got.extend(seq_of(p) for p in pkts)
            i = j
        assert got == expect, seed
        drops = Counter(b.core.drops)
        drops.subtract(before)
        for reason in ("replayed_counter", "decrypt_failed", "unknown_index"):
            assert drops[reason] == expect_drops[reason], (seed, reason, dict(drops), dict(expect_drops))
        # every counter the fast path opened was marked: nothing is delivered twice
        again = [seq_of(p) for _, ps in b.core.decapsulate(A_ADDR, msgs, now=pair.now) for p in ps]
        assert not set(again) & set(got), seed


def test_decapsulate_strips_padding_and_counts_bytes() -> None:
    pair = Pair(3)
    pair.handshake()
    a, b = pair.a, pair.b
    rx0 = b.tunnel.rx_bytes
    pkts = [ipv4_packet(61, 1), ipv6_packet(77, 2), ipv4_packet(1420, 3)]
    a.tunnel.encapsulate(pkts, now=pair.now)
    msgs = pair.take(a)
    assert [len(m) for m in msgs] == [32 + 64, 32 + 80, 32 + 1420]
    out = b.core.decapsulate(A_ADDR, msgs, now=pair.now)
    assert [p for _, ps in out for p in ps] == pkts
    assert b.tunnel.rx_bytes - rx0 == sum(map(len, msgs))


def test_seal_batch_equal_sizes_for_gso_runs() -> None:
    kp = Keypair(bytes(32), bytes(32), initiator=True, local_index=1, remote_index=7, created=0.0)
    segs = [ipv4_packet(1420, i) for i in range(45)] + [ipv4_packet(1000, 45)]
    msgs = kp.seal_batch(segs, 1420)
    assert {len(m) for m in msgs[:-1]} == {1452}
    assert len(msgs[-1]) == 32 + 1008
    assert [int.from_bytes(m[8:16], "little") for m in msgs] == list(range(46))
    assert all(m[:8] == b"\x04\0\0\0\x07\0\0\0" for m in msgs)
    # padding never passes the MTU
    assert len(kp.seal_batch([ipv4_packet(1419, 0)], 1420)[0]) == 32 + 1420
    assert len(kp.seal_batch([ipv4_packet(1500, 0)], 1420)[0]) == 32 + 1500
    assert WINDOW_SIZE > 0


# -- the bulk path: one GRO batch of one peer (Core._decapsulate_run) -------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 40_000), max_size=30),
    st.integers(1, 3 * 64 * RING_BLOCKS),
    st.integers(1, 300),
)
def test_mark_run_equals_accept(history: list[int], gap: int, count: int) -> None:
    ref = _window_from(history)
    fast = _window_from(history)
    first = ref.last + gap
    for c in range(first, first + count):
        assert ref.accept(c)
    fast.mark_run(first, count)
    assert fast == ref


class _RunSpy:
    """Counts how often the bulk path answered (not None) for a Core."""

    def __init__(self, core: Core) -> None:
        self.taken = 0
        inner = core._decapsulate_run

        def spy(*args: Any) -> Any:
            r = inner(*args)
            self.taken += r is not None
            return r

        core._decapsulate_run = spy  # type: ignore[method-assign]


def _decap_all(pair: Pair, batches: list[list[bytes]]) -> list[bytes]:
    b = pair.b
    return [p for batch in batches for _, ps in b.core.decapsulate(A_ADDR, batch, now=pair.now) for p in ps]


def test_bulk_path_equals_reference_on_clean_batches() -> None:
    """In-order GRO-like batches (one size, mixed sizes, IPv4, IPv6, padded): same packets, counters and
    window as the one-at-a-time reference, and the bulk path was the one that answered."""
    cases = [
        [ipv4_packet(1420, i) for i in range(44)],
        [ipv6_packet(1420, i) for i in range(30)] + [ipv6_packet(700, 30)],
        [ipv4_packet(92, i) for i in range(40)],  # padded to 96: trimmed on the slow loop
        [ipv4_packet(sz, i) for i, sz in enumerate((60, 1420, 333, 1420, 41, 1000))],
        [ipv4_packet(1420, 0), ipv6_packet(1420, 1), ipv4_packet(100, 2), ipv6_packet(61, 3)],
    ]
    for n, packets in enumerate(cases):
        pair = Pair(100 + n)
        pair.handshake()
        a, b = pair.a, pair.b
        kp = b.tunnel.current
        assert kp is not None
        spy = _RunSpy(b.core)
        a.tunnel.encapsulate(packets, now=pair.now)
        msgs = pair.take(a)
        expect, _ = _reference(kp, msgs, {kp.local_index})
        ref_window = kp.replay.copy()
        for m in msgs:
            ref_window.accept(int.from_bytes(m[8:16], "little"))
        rx0, drops0 = (b.tunnel.rx_bytes, b.tunnel.rx_packets), Counter(b.core.drops)
        got = _decap_all(pair, [msgs])
        assert got == packets, n
        assert [seq_of(p) for p in got] == expect
        assert spy.taken == 1, n
        assert kp.replay == ref_window
        assert (b.tunnel.rx_bytes - rx0[0], b.tunnel.rx_packets - rx0[1]) == (sum(map(len, msgs)), len(msgs))
        assert Counter(b.core.drops) == drops0
        assert _decap_all(pair, [msgs]) == [], "replays are refused afterwards"
        assert b.core.drops["replayed_counter"] - drops0["replayed_counter"] == len(msgs)


def test_bulk_path_declines_and_changes_nothing() -> None:
    """A forged tag, a counter gap, a duplicate, a keepalive, an unknown or mixed index: the bulk path
    returns None without touching the window, and the general path gives the reference result.  An
    inner packet whose IP length is wrong is dropped and counted by the bulk path itself."""

    def forged(msgs: list[bytes]) -> list[bytes]:
        m = bytearray(msgs[5])
        m[-1] ^= 1
        return msgs[:5] + [bytes(m)] + msgs[6:]

    def mixed_index(msgs: list[bytes]) -> list[bytes]:
        m = bytearray(msgs[3])
        m[4:8] = (int.from_bytes(m[4:8], "little") ^ 1).to_bytes(4, "little")
        return msgs[:3] + [bytes(m)] + msgs[4:]

    def inner_runt(msgs: list[bytes], pair: Pair) -> list[bytes]:
        pair.a.tunnel.encapsulate([ipv4_packet(1420, 99)[:19] + bytes(13)], now=pair.now)
        return msgs + pair.take(pair.a)  # a 32-byte plaintext whose IPv4 length says 1420

    edits: list[Callable[[list[bytes], Pair], list[bytes]]] = [
        lambda m, p: forged(m),
        lambda m, p: m[:4] + m[5:],  # a gap (a loss upstream)
        lambda m, p: m[:4] + [m[3]] + m[4:],  # a duplicate
        lambda m, p: list(reversed(m)),
        lambda m, p: mixed_index(m),
        inner_runt,
    ]
    for n, edit in enumerate(edits):
        pair = Pair(200 + n)
        pair.handshake()
        a, b = pair.a, pair.b
        kp = b.tunnel.current
        assert kp is not None
        spy = _RunSpy(b.core)
        a.tunnel.encapsulate([ipv4_packet(1420, i) for i in range(20)], now=pair.now)
        msgs = edit(pair.take(a), pair)
        expect, expect_drops = _reference(kp, msgs, {kp.local_index})
        drops0 = Counter(b.core.drops)
        got = [seq_of(p) for p in _decap_all(pair, [msgs])]
        drops = Counter(b.core.drops)
        drops.subtract(drops0)
        assert spy.taken == (edit is inner_runt), n
        assert got == (expect[:-1] if edit is inner_runt else expect), n  # the runt is the last message
        assert drops["invalid_inner_packet"] == (edit is inner_runt), n
        for reason in ("replayed_counter", "decrypt_failed", "unknown_index"):
            assert drops[reason] == expect_drops[reason], (n, reason)
    # a keepalive inside a batch
    pair = Pair(300)
    pair.handshake()
    spy = _RunSpy(pair.b.core)
    pair.a.tunnel.encapsulate([ipv4_packet(1420, i) for i in range(6)], now=pair.now)
    pair.a.tunnel.send_keepalive(now=pair.now)
    msgs = pair.take(pair.a)
    assert [seq_of(p) for p in _decap_all(pair, [msgs])] == list(range(6))
    assert spy.taken == 0


def test_bulk_path_refuses_an_expired_keypair() -> None:
    pair = Pair(301)
    pair.handshake()
    spy = _RunSpy(pair.b.core)
    pair.a.tunnel.encapsulate([ipv4_packet(1420, i) for i in range(8)], now=pair.now)
    msgs = pair.take(pair.a)
    before = pair.b.core.drops["expired_keypair"]
    out = pair.b.core.decapsulate(A_ADDR, msgs, now=pair.now + REJECT_AFTER_TIME + 1)
    assert out == [] and spy.taken == 0
    assert pair.b.core.drops["expired_keypair"] - before == 8


def test_seal_batch_one_size_equals_one_at_a_time() -> None:
    """The one-size branch of seal_batch (map over counters) seals exactly as sealing one packet at a
    time: same headers, counters, padding (up to 16, never past the MTU) and ciphertexts."""
    for size, n, mtu in ((1420, 45, 1420), (92, 40, 1420), (1419, 4, 1420), (1, 5, 1420), (0, 4, 1420),
                         (1500, 6, 1420), (100, 4, 110), (1420, 3, 1420)):
        bulk = Keypair(bytes(range(32)), bytes(32), initiator=True, local_index=1, remote_index=9, created=0.0)
        ref = Keypair(bytes(range(32)), bytes(32), initiator=True, local_index=1, remote_index=9, created=0.0)
        bulk.send_counter = ref.send_counter = 77
        packets = [bytes([i]) * size for i in range(n)]
        assert bulk.seal_batch(packets, mtu) == [ref.seal_batch([p], mtu)[0] for p in packets], size
        assert bulk.send_counter == ref.send_counter == 77 + n


# -- bulk against loop (vpn.testlab.differential) ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_decapsulate_bulk_equals_the_loop_on_random_batches(seed: int) -> None:
    """Twin receivers (same keys, same history), one with the bulk path and one without, given the same
    batches (clean GRO-like runs, reordered, duplicated, forged, cut at random): the same packets per peer,
    receive counters, replay windows and drop counters after every batch."""
    twins = {bulk: Pair(400 + seed) for bulk in (True, False)}
    for p in twins.values():
        p.handshake()
    sender = twins[True]  # its messages open on both receivers: the twins hold the same keys
    next_seq = 0

    def batch(r: random.Random) -> list[bytes]:
        nonlocal next_seq
        sizes = [r.choice((1420, 1420, 700, 61))] * r.randrange(1, 60)
        if r.random() < 0.3:
            sizes = [r.choice((60, 100, 1420, 333)) for _ in sizes]
        make = ipv4_packet if r.random() < 0.7 else ipv6_packet
        packets = [make(sz, next_seq + i) for i, sz in enumerate(sizes)]
        next_seq += len(packets)
        sender.a.tunnel.encapsulate(packets, now=sender.now)
        msgs = sender.take(sender.a)
        return msgs if r.random() < 0.5 else _mutate(r, msgs)

    def run(datagrams: list[bytes], bulk: bool) -> tuple[Any, ...]:
        b = twins[bulk].b
        out = b.core.decapsulate(A_ADDR, datagrams, now=twins[bulk].now, bulk=bulk)
        kp = b.tunnel.current
        assert kp is not None
        delivered = [[seq_of(p) for p in ps] for _, ps in out]
        return delivered, b.tunnel.rx_bytes, b.tunnel.rx_packets, kp.replay.copy()

    spies = {bulk: _RunSpy(twins[bulk].b.core) for bulk in (True, False)}
    n = check_bulk_matches_loop(run, random_batches(batch, random.Random(seed), 40),
                                drops=lambda bulk: twins[bulk].b.core.drops)
    assert n == 40
    assert twins[True].b.tunnel.rx_packets > 500
    assert spies[True].taken >= 5  # the bulk path did answer: the comparison is not vacuous
    assert spies[False].taken == 0  # and bulk=False kept it out


def test_seal_batch_bulk_equals_the_loop_on_random_batches() -> None:
    """Twin keypairs: batches of one size (the bulk branch) and of mixed sizes, around the MTU and below
    BULK_MIN, seal to the same messages with the one-size branch on and off."""
    twins = {bulk: Keypair(bytes(range(32)), bytes(32), initiator=True, local_index=1, remote_index=9,
                           created=0.0) for bulk in (True, False)}
    mtu = 1420

    def batch(r: random.Random) -> list[bytes]:
        n = r.randrange(0, 50)
        if r.random() < 0.7:
            size = r.choice((0, 1, 92, 1000, 1419, 1420, 1421, 1500))
            return [bytes([i & 0xFF]) * size for i in range(n)]
        return [r.randbytes(r.randrange(0, 1500)) for _ in range(n)]

    def run(packets: list[bytes], bulk: bool) -> tuple[list[bytes], int]:
        kp = twins[bulk]
        return kp.seal_batch(packets, mtu, bulk=bulk), kp.send_counter

    assert check_bulk_matches_loop(run, random_batches(batch, random.Random(3), 300)) == 300
