"""The sans-IO WireGuard core: one :class:`Core` per interface, one :class:`Tunnel` per peer.

Theory of operation
-------------------
The core has three inputs and two outputs, like aioquic's ``QuicConnection``:

1. :meth:`Tunnel.encapsulate` takes a batch of IP packets for one peer.  With a valid
   session they are sealed at once; otherwise they wait in a bounded queue and a handshake
   initiation is sent.
2. :meth:`Core.decapsulate` takes a batch of datagrams from one source address.  Handshake
   messages are answered, cookie replies stored, transport messages opened.  It returns the
   inner packets grouped by peer.  The inner-source ACL (AllowedIPs) belongs to the caller.
3. :meth:`Core.handle_timer` runs the timers whose deadline has passed;
   :meth:`Core.next_timer` says when to call it next.

Outputs: datagrams to send, which collect in :attr:`Core.outbox` as ``(endpoint, [bytes])``
and are taken with :meth:`Core.take_outbox`; and :attr:`Core.events` (handshakes completed,
keys zeroed, endpoints changed) for logs and metrics.  Every dropped datagram increments
``Core.drops[reason]``; nothing raised by bad input escapes :meth:`Core.decapsulate`.

Time is the caller's monotonic ``now`` (seconds).  Wall-clock time is needed only for
TAI64N timestamps and for reporting, and is ``now + wall_offset``.  Randomness (indices,
ephemeral keys, cookie secrets, jitter) comes from the injected ``rng(n) -> bytes``.

Endpoints are opaque to the core (the adapter uses ``(host, port)`` tuples).  A peer's
endpoint changes only on authenticated messages: initiations, responses and transport
data, never on cookie replies (PROTOCOL-NOTES §1.10).

The code is split by concern, like wireguard-go's ``device/``: :mod:`crypto.send`,
:mod:`crypto.receive`, :mod:`crypto.handshake`, :mod:`crypto.keypairs`, :mod:`crypto.timers`,
:mod:`crypto.indextable`, with the events in :mod:`crypto.events` and drop reasons in
:mod:`crypto.drops`.  :class:`Tunnel` and :class:`Core` gather those pieces (as mixins) and own
the state; this module is where the application imports them from.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .constants import (
    HANDSHAKES_QUIET_PER_SECOND,
    HANDSHAKES_SHARED_PER_SECOND,
    QUIET_SOURCE_INTERVAL,
    REKEY_AFTER_TIME,
)
from .cookie import CookieChecker, CookieGenerator
from .drops import Drop
from .errors import ProtocolError, UsageError
from .events import (
    CookieReceived,
    Endpoint,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    KeysZeroed,
)
from .handshake import CoreHandshake, Handshake, PeerHandshake
from .indextable import IndexTable
from .keypairs import PeerKeypairs
from .messages import MESSAGE_INITIATION
from .primitives import KEY_SIZE, dh, public_key
from .ratelimiter import HandshakeLimiter, QuietSources, RateLimiter
from .receive import CoreReceive
from .send import PeerSend
from .session import Keypair
from .timers import PeerTimers

__all__ = [
    "CookieReceived",
    "Core",
    "Endpoint",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeGaveUp",
    "HandshakeInitiated",
    "KeysZeroed",
    "Tunnel",
]

_INF = float("inf")
_INITIATION_TYPE = bytes([MESSAGE_INITIATION])  # first byte of an initiation (type is little-endian)


class Tunnel(PeerSend, PeerHandshake, PeerKeypairs, PeerTimers):
    """One peer: its keys, sessions, staged packets, timers and counters.

    Create through :meth:`Core.add_peer`.
    """

    def __init__(self, core: Core, public_key: bytes, *, preshared_key: bytes | None,
                 persistent_keepalive: int, endpoint: Endpoint) -> None:
        self.core = core
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.persistent_keepalive = persistent_keepalive
        self.endpoint: Endpoint = endpoint
        self.cookies = CookieGenerator(public_key)
        self.static_static: bytes | None = None
        self.recompute_static_static()
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.handshake: Handshake | None = None
        self.staged: deque[bytes] = deque()
        # replay protection for initiations (whitepaper §5.1)
        self.last_timestamp = b""
        self.last_initiation_consumed = -_INF
        self.last_sent_handshake = -_INF
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.need_another_keepalive = False
        # timers: absolute deadlines in the caller's clock, or None when stopped
        self._retransmit_at: float | None = None
        self._keepalive_at: float | None = None
        self._new_handshake_at: float | None = None
        self._zero_at: float | None = None
        self._persistent_at: float | None = None
        # counters
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0
        self.handshakes = 0
        self.last_handshake_wall = 0.0
        self.refused_handshakes = 0
        # refusal (a disabled or expired client, decided by the application): see set_refused()
        self.refused = False
        self.expires_at: float | None = None  # wall-clock time from which handshakes are refused
        self.user: Any = None  # free for the application (its Peer object)

    # -- keys ------------------------------------------------------------------------------
    def recompute_static_static(self) -> None:
        if not self.core.has_private_key:
            self.static_static = None
            return
        try:
            self.static_static = dh(self.core.private_key, self.public_key)
        except ProtocolError:
            self.static_static = None

    @property
    def has_session(self) -> bool:
        kp = self.current
        return kp is not None

    # -- refusal ---------------------------------------------------------------------------
    def refuses(self, *, now: float) -> bool:
        """Whether this peer's handshakes are refused at ``now``: :attr:`refused` is set, or the
        wall-clock time (``now + Core.wall_offset``) has reached :attr:`expires_at`."""
        return self.refused or (self.expires_at is not None and now + self.core.wall_offset >= self.expires_at)

    def set_refused(self, refused: bool) -> None:
        """Refuse this peer (a disabled or expired client) or take it back.

        Refusing drops its sessions and staged packets at once and stops its timers: initiations from
        it are dropped (``refused_handshake``), we never initiate to it, and packets for it are dropped
        (``refused_peer``).  Taking it back only clears the flag; the next handshake starts a session.
        """
        self.refused = refused
        if refused:
            self.zero_keys()
            self.staged.clear()
            self._retransmit_at = self._keepalive_at = self._new_handshake_at = None
            self._zero_at = self._persistent_at = None
            self.last_sent_handshake = -_INF  # taken back later, it may initiate at once

    def __repr__(self) -> str:
        from .keys import abbreviate

        return f"<Tunnel peer({abbreviate(self.public_key)})>"


class Core(CoreReceive, CoreHandshake):
    """The protocol state of one WireGuard interface.

    :param private_key: our 32-byte static private key.
    :param rng: ``rng(n)`` returns ``n`` random bytes (``os.urandom`` in production, seeded in tests).
    :param mtu: the tunnel MTU, which bounds padding.
    :param rekey_after_time: REKEY_AFTER_TIME unless a test shortens it (``PYVPN_TEST_REKEY_AFTER_TIME``
        of the daemons in tests/hostile, so that real daemons rekey within seconds).  It can only be
        shortened, and to no less than a second: anything else is a :class:`UsageError`.
    """

    def __init__(self, private_key: bytes | None, *, rng: Callable[[int], bytes], mtu: int = 1420,
                 rekey_after_time: float = REKEY_AFTER_TIME) -> None:
        if private_key is not None and len(private_key) != KEY_SIZE:
            raise UsageError("a private key is 32 bytes")
        if not 1.0 <= rekey_after_time <= REKEY_AFTER_TIME:  # NaN fails too
            raise UsageError(f"rekey_after_time must be between 1 and {REKEY_AFTER_TIME:g} seconds")
        self.rekey_after_time = rekey_after_time
        self._rng = rng
        self._jitter_source: random.Random | None = None  # timers' PRNG, seeded from rng on first use
        self.mtu = mtu
        # Without a private key (a `pyvpn-wg` interface before `wg setconf`) peers can be
        # configured but every handshake is dropped under Drop.NO_PRIVATE_KEY.
        self.private_key: bytes = private_key or bytes(KEY_SIZE)
        self.has_private_key = private_key is not None
        self.public_key = public_key(self.private_key) if private_key is not None else bytes(KEY_SIZE)
        self.cookie_checker = CookieChecker(self.public_key, rng)
        # Under load (see _check_macs): cookie replies are limited per source only (a reply costs
        # less than receiving the datagram it answers); DH work per source and in total.
        self.cookie_limiter = RateLimiter()
        # Sources of handshakes with a valid mac1, for shedding while the adapter is behind.
        self._handshake_sources = QuietSources(QUIET_SOURCE_INTERVAL)
        self.behind = False  # set by the adapter: its receive queue is deep (see _check_macs)
        self.handshake_limiter = HandshakeLimiter(shared_rate=HANDSHAKES_SHARED_PER_SECOND,
                                                  quiet_rate=HANDSHAKES_QUIET_PER_SECOND,
                                                  quiet_interval=QUIET_SOURCE_INTERVAL)
        self.peers: dict[bytes, Tunnel] = {}
        self._indices = IndexTable()
        self.outbox: list[tuple[Endpoint, list[bytes]]] = []
        self.events: list[Event] = []
        self.drops: Counter[str] = Counter()  # keyed by Drop members (which are strs)
        self.wall_offset = 0.0
        self._next_deadline = _INF
        self._load_window = -_INF
        self._load_count = 0
        self.under_load_until = -_INF
        self.force_under_load = False
        self.cookie_replies_sent = 0

    # -- configuration ---------------------------------------------------------------------
    def add_peer(self, public_key: bytes, *, preshared_key: bytes | None = None,
                 persistent_keepalive: int = 0, endpoint: Endpoint = None) -> Tunnel:
        if len(public_key) != KEY_SIZE:
            raise UsageError("a public key is 32 bytes")
        if preshared_key is not None and len(preshared_key) != KEY_SIZE:
            raise UsageError("a preshared key is 32 bytes")
        if public_key in self.peers:
            raise UsageError("peer already present")
        if self.has_private_key and public_key == self.public_key:
            raise UsageError("a peer cannot have the interface's own public key")
        t = Tunnel(self, public_key, preshared_key=preshared_key or None,
                   persistent_keepalive=persistent_keepalive, endpoint=endpoint)
        self.peers[public_key] = t
        return t

    def remove_peer(self, public_key: bytes) -> None:
        """Remove a peer; its sessions stop working at once."""
        t = self.peers.pop(public_key, None)
        if t is not None:
            t.zero_keys()
            t.staged.clear()

    def set_private_key(self, private_key: bytes) -> None:
        """Change our static key: every session ends, and a peer with the new public key goes."""
        if len(private_key) != KEY_SIZE:
            raise UsageError("a private key is 32 bytes")
        if self.has_private_key and private_key == self.private_key:
            return
        self.private_key = private_key
        self.has_private_key = True
        self.public_key = public_key(private_key)
        self.cookie_checker = CookieChecker(self.public_key, self._rng)
        self.peers.pop(self.public_key, None)
        for t in self.peers.values():
            t.zero_keys()
            t.recompute_static_static()

    # -- outputs ---------------------------------------------------------------------------
    def _emit(self, tunnel: Tunnel | None, endpoint: Endpoint, datagrams: list[bytes]) -> None:
        if endpoint is None:
            # An initiation to a peer that never contacted us (a server's roaming client) is expected:
            # that peer initiates when it comes; anything else is a packet lost (vpn/drops.py).
            initiation = datagrams[0][:1] == _INITIATION_TYPE
            self.drops[Drop.HANDSHAKE_NO_ENDPOINT if initiation else Drop.NO_ENDPOINT] += len(datagrams)
            return
        outbox = self.outbox
        if outbox and outbox[-1][0] == endpoint:
            outbox[-1][1].extend(datagrams)
        else:
            outbox.append((endpoint, datagrams))

    def take_outbox(self) -> list[tuple[Endpoint, list[bytes]]]:
        out, self.outbox = self.outbox, []
        return out

    def take_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    # -- timers ----------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """The earliest deadline of any peer, or None if no timer is running."""
        return None if self._next_deadline == _INF else self._next_deadline

    def handle_timer(self, *, now: float) -> None:
        """Run every expired timer and recompute :meth:`next_timer`."""
        self._next_deadline = _INF
        for t in list(self.peers.values()):
            t.fire_timers(now=now)
        nxt = _INF
        for t in self.peers.values():
            d = t.next_deadline()
            nxt = min(nxt, d)
        self._next_deadline = nxt
