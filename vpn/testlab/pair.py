"""Helpers for state-machine pair tests: two :class:`crypto.tunnel.Core` objects, a seeded rng and
a fake clock, wired by hand.

Shaped after aioquic's ``tests/test_connection.py`` (``transfer``/``roundtrip``) and boringtun's
``create_two_tuns_and_handshake`` with a mock clock: nothing here touches a socket or the real
clock; datagrams move from one core's outbox into the other's ``decapsulate`` only when a test
says so, which is where loss, reordering, duplication and address changes are injected.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crypto.constants import REKEY_AFTER_TIME
from crypto.keys import private_from_random
from crypto.tunnel import Core, Tunnel

A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)

Filter = Callable[[list[bytes]], list[bytes]]


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """``rng(n) -> bytes`` from a seeded PRNG: every run makes the same keys, indices and jitter."""
    return random.Random(seed).randbytes


# -- the pair ------------------------------------------------------------------------------------

@dataclass
class Clock:
    now: float = 1000.0


@dataclass
class Node:
    name: str
    core: Core
    addr: Any
    peer: Tunnel | None = None
    received: list[bytes] = field(default_factory=list)
    sent_datagrams: list[bytes] = field(default_factory=list)

    @property
    def tunnel(self) -> Tunnel:
        assert self.peer is not None
        return self.peer

    def drops_total(self) -> int:
        return sum(self.core.drops.values())


class Pair:
    """Two nodes that know each other's public keys.

    ``a`` knows ``b``'s endpoint (a client); ``b`` learns ``a``'s from authenticated packets
    (a server), unless ``b_knows_a`` is set.
    """

    def __init__(self, seed: int = 0, *, psk: bytes | None = None, mtu: int = 1420,
                 b_knows_a: bool = False, start: float = 1000.0, rekey_after_time: float = REKEY_AFTER_TIME) -> None:
        rnd = random.Random(seed)
        self.clock = Clock(start)
        self.seed = seed
        self.a_private = private_from_random(rnd.randbytes(32))
        self.b_private = private_from_random(rnd.randbytes(32))
        self.psk = psk
        self.a = Node("a", Core(self.a_private, rng=seeded_rng(seed * 1000 + 1), mtu=mtu,
                                rekey_after_time=rekey_after_time), A_ADDR)
        self.b = Node("b", Core(self.b_private, rng=seeded_rng(seed * 1000 + 2), mtu=mtu,
                                rekey_after_time=rekey_after_time), B_ADDR)
        self.a.peer = self.a.core.add_peer(self.b.core.public_key, preshared_key=psk, endpoint=B_ADDR)
        self.b.peer = self.b.core.add_peer(self.a.core.public_key, preshared_key=psk,
                                           endpoint=A_ADDR if b_knows_a else None)
        self.nodes = {A_ADDR: self.a, B_ADDR: self.b}

    @property
    def now(self) -> float:
        return self.clock.now

    def other(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    # -- moving datagrams --------------------------------------------------------------------
    def take(self, sender: Node) -> list[bytes]:
        """Everything ``sender`` wants to send, checked to be addressed to the other node."""
        out: list[bytes] = []
        for endpoint, datagrams in sender.core.take_outbox():
            assert endpoint == self.other(sender).addr, f"{sender.name} sent to unexpected {endpoint}"
            out.extend(datagrams)
        sender.sent_datagrams.extend(out)
        return out

    def deliver(self, receiver: Node, datagrams: Iterable[bytes], *, src: Any = None) -> list[bytes]:
        """Feed datagrams to ``receiver`` as one batch from ``src`` (default: the other node)."""
        batch = list(datagrams)
        if not batch:
            return []
        source = self.other(receiver).addr if src is None else src
        got: list[bytes] = []
        for tunnel, packets in receiver.core.decapsulate(source, batch, now=self.clock.now):
            assert tunnel is receiver.peer
            got.extend(packets)
        receiver.received.extend(got)
        return got

    def transfer(self, sender: Node, *, filter: Filter | None = None, src: Any = None) -> int:
        """Move ``sender``'s outbox into the other node (through ``filter`` if given).

        :returns: the number of datagrams taken from the outbox (before filtering).
        """
        datagrams = self.take(sender)
        n = len(datagrams)
        if filter is not None:
            datagrams = filter(datagrams)
        self.deliver(self.other(sender), datagrams, src=src)
        return n

    def roundtrip(self, *, max_rounds: int = 50, filter_ab: Filter | None = None,
                  filter_ba: Filter | None = None) -> int:
        """Transfer both ways until both outboxes stay empty.  Returns datagrams moved."""
        total = 0
        for _ in range(max_rounds):
            n = self.transfer(self.a, filter=filter_ab) + self.transfer(self.b, filter=filter_ba)
            total += n
            if n == 0:
                return total
        raise AssertionError("pair did not go quiet")

    def handshake(self) -> None:
        """a initiates; after the round trip both sides hold a confirmed current keypair."""
        self.a.tunnel.initiate(now=self.clock.now)
        self.roundtrip()
        assert self.a.tunnel.current is not None and self.b.tunnel.current is not None
        assert self.a.tunnel.next is None and self.b.tunnel.next is None

    def send(self, sender: Node, packets: list[bytes]) -> None:
        sender.tunnel.encapsulate(packets, now=self.clock.now)

    # -- time ------------------------------------------------------------------------------
    def run_timers(self, *, deliver: bool = True, filter_ab: Filter | None = None,
                   filter_ba: Filter | None = None) -> None:
        """Run the timers due at the current time on both nodes (then exchange what they sent)."""
        for node in (self.a, self.b):
            t = node.core.next_timer()
            if t is not None and t <= self.clock.now:
                node.core.handle_timer(now=self.clock.now)
        if deliver:
            self.roundtrip(filter_ab=filter_ab, filter_ba=filter_ba)

    def advance(self, dt: float, *, deliver: bool = True, filter_ab: Filter | None = None,
                filter_ba: Filter | None = None, max_steps: int = 10_000) -> None:
        """Move the clock forward by ``dt``, stopping at every timer deadline on the way."""
        target = self.clock.now + dt
        if deliver:
            self.roundtrip(filter_ab=filter_ab, filter_ba=filter_ba)
        for _ in range(max_steps):
            deadlines = [t for t in (self.a.core.next_timer(), self.b.core.next_timer()) if t is not None]
            due = [t for t in deadlines if t <= target]
            if not due:
                break
            self.clock.now = max(self.clock.now, min(due))
            self.run_timers(deliver=deliver, filter_ab=filter_ab, filter_ba=filter_ba)
        else:
            raise AssertionError("timers kept firing")
        self.clock.now = target

    def jump(self, dt: float) -> None:
        """Move the clock without running any timer."""
        self.clock.now += dt


def drop_all(datagrams: list[bytes]) -> list[bytes]:
    return []


def msg_type(d: bytes) -> int:
    return d[0]
