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

Timer hooks, after wireguard-go ``timers.go`` (each says when it is called):

- ``_t_data_sent``: after sending data (not a keepalive): start the new-handshake timer.
- ``_t_data_received``: after receiving data: start the keepalive timer.
- ``_t_any_sent``: after sending any authenticated packet: stop the keepalive timer.
- ``_t_any_received``: after receiving any authenticated packet: stop the new-handshake timer.
- ``_t_traversal``: after any authenticated packet in either direction: push back the
  persistent keepalive.
- ``_t_handshake_initiated``: after sending an initiation: arm the retransmit timer.
- ``_t_handshake_complete``: after a handshake completes (initiator: response consumed;
  responder: first data on the new keys): stop retransmits.
- ``_t_session_derived``: after deriving a session: arm zeroing in 3 × REJECT_AFTER_TIME.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from itertools import repeat
from operator import add, itemgetter
from typing import Any

from cryptography.exceptions import InvalidTag

from .drops import Drop
from .constants import (
    HANDSHAKE_INITIATION_RATE,
    HANDSHAKES_QUIET_PER_SECOND,
    HANDSHAKES_SHARED_PER_SECOND,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    QUIET_SOURCE_INTERVAL,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
    UNDER_LOAD_HOLD,
)
from .cookie import CookieChecker, CookieGenerator
from .errors import (
    DecryptFailed,
    HandshakeFlood,
    InvalidMac,
    ProtocolError,
    StaleTimestamp,
    UnknownIndex,
    UnknownPeer,
    UsageError,
)
from .messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_MIN_SIZE,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    message_type,
    tai64n,
    unpack_cookie_reply,
    unpack_initiation,
    unpack_response,
)
from .noise import (
    SymmetricState,
    consume_initiation_payload,
    consume_initiation_static,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
)
from .primitives import KEY_SIZE, dh, public_key
from .ratelimiter import HandshakeLimiter, QuietSources, RateLimiter, source_key
from .session import NONCE, TRANSPORT_HEADER, Keypair, inner_length

Endpoint = Any
_INF = float("inf")
_ZERO4 = bytes(4)
_INIT_BODY = struct.Struct("<II32s48s28s")
_INITIATION_TYPE = bytes([MESSAGE_INITIATION])  # first byte of an initiation (type is little-endian)
_RESP_BODY = struct.Struct("<III32s16s")


# -- events -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A session was derived with ``peer`` (a public key); ``initiator`` says who started."""

    peer: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeInitiated:
    peer: bytes
    retry: bool


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """No response after MAX_TIMER_HANDSHAKES + 2 attempts; staged packets were dropped."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    """Every key of ``peer`` was discarded after 3 × REJECT_AFTER_TIME without a new session."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    peer: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class CookieReceived:
    peer: bytes


Event = HandshakeCompleted | HandshakeInitiated | HandshakeGaveUp | KeysZeroed | EndpointChanged | CookieReceived


class _Handshake:
    """Initiator state between sending an initiation and consuming its response."""

    __slots__ = ("ephemeral_private", "local_index", "state")

    def __init__(self, local_index: int, state: SymmetricState, ephemeral_private: bytes) -> None:
        self.local_index = local_index
        self.state = state
        self.ephemeral_private = ephemeral_private


class Tunnel:
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
        self.handshake: _Handshake | None = None
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

    # -- the send path ---------------------------------------------------------------------
    def encapsulate(self, packets: list[bytes], *, now: float, keepalive: bool = False) -> None:
        """Seal ``packets`` for this peer into :attr:`Core.outbox`, or stage them.

        1. With no usable session (none, too old, or out of counters) the packets join the
           staged queue (oldest dropped beyond MAX_STAGED_PACKETS) and a handshake starts.
        2. Otherwise staged packets go first, then these, each sealed with the next counter.
        3. The send-side timers run and the session is rekeyed if it is getting old.
        """
        if self.refused:
            self.core.drops[Drop.REFUSED_PEER] += len(packets)
            return
        kp = self.current
        if (kp is None or kp.send_counter + len(packets) + len(self.staged) >= REJECT_AFTER_MESSAGES
                or now - kp.created >= REJECT_AFTER_TIME):
            self._stage(packets)
            self.initiate(now=now)
            return
        if self.staged:
            packets = [*self.staged, *packets]
            self.staged.clear()
        if not packets:
            return
        msgs = kp.seal_batch(packets, self.core.mtu)
        self.tx_packets += len(msgs)
        self.tx_bytes += sum(map(len, msgs))
        self.core._emit(self, self.endpoint, msgs)
        self._t_any_sent()
        self._t_traversal(now)
        if not keepalive:
            self._t_data_sent(now)
        # keep_key_fresh (sending): rekey after REKEY_AFTER_MESSAGES, or as initiator after REKEY_AFTER_TIME
        if kp.send_counter > REKEY_AFTER_MESSAGES or (kp.initiator and now - kp.created > REKEY_AFTER_TIME):
            self.initiate(now=now)

    def send_keepalive(self, *, now: float) -> None:
        """Send an empty transport message (or stage one and start a handshake).

        Staged packets go instead when there are any; they are data, so they start the
        new-handshake timer like any other data (wireguard-go calls timersDataSent for every
        non-keepalive packet it sends, staged ones included).
        """
        if self.staged:
            self.encapsulate([], now=now, keepalive=not any(self.staged))
        else:
            self.encapsulate([b""], now=now, keepalive=True)

    def _stage(self, packets: list[bytes]) -> None:
        staged = self.staged
        staged.extend(packets)
        over = len(staged) - MAX_STAGED_PACKETS
        if over > 0:
            for _ in range(over):
                staged.popleft()
            self.core.drops[Drop.STAGED_OVERFLOW] += over

    def initiate(self, *, now: float, retry: bool = False) -> None:
        """Send a handshake initiation, at most one per REKEY_TIMEOUT."""
        if not retry:
            self.handshake_attempts = 0
        if now - self.last_sent_handshake < REKEY_TIMEOUT or self.refused:
            return
        core = self.core
        if self.static_static is None:
            core.drops[Drop.NO_PRIVATE_KEY if not core.has_private_key else Drop.INVALID_PUBLIC_KEY] += 1
            return
        self.last_sent_handshake = now
        self._drop_handshake()
        local_index = core._allocate_index()
        e_priv = core._rng(KEY_SIZE)
        # msg.sender = random index ; e, es, s, ss ; msg.timestamp = TAI64N()
        parts, state = create_initiation(
            local_static_private=core.private_key,
            local_static_public=core.public_key,
            remote_static=self.public_key,
            ephemeral_private=e_priv,
            payload=tai64n(now + core.wall_offset),
            static_static=self.static_static,
        )
        hs = _Handshake(local_index, state, e_priv)
        self.handshake = hs
        core._indices[local_index] = (self, hs)
        body = _INIT_BODY.pack(MESSAGE_INITIATION, local_index, parts.ephemeral_public,
                               parts.encrypted_static, parts.encrypted_payload)
        msg = self.cookies.add_macs(body, now=now)
        self.tx_bytes += len(msg)  # every datagram sent counts, handshakes too (as wireguard-go)
        core._emit(self, self.endpoint, [msg])
        core.events.append(HandshakeInitiated(self.public_key, retry))
        self._t_traversal(now)
        self._t_any_sent()
        self._t_handshake_initiated(now)

    # -- keypair bookkeeping ----------------------------------------------------------------
    def _install(self, kp: Keypair) -> None:
        core = self.core
        if kp.initiator:
            if self.next is not None:
                core._free(self.previous)
                self.previous = self.next
                self.next = None
                core._free(self.current)
            else:
                core._free(self.previous)
                self.previous = self.current
            self.current = kp
        else:
            core._free(self.next)
            self.next = kp
            core._free(self.previous)
            self.previous = None

    def _rotate_to_next(self, now: float) -> None:
        """The first message on ``next`` confirms it (responder key confirmation)."""
        core = self.core
        core._free(self.previous)
        self.previous = self.current
        self.current = self.next
        self.next = None
        self._t_handshake_complete(now)
        core.events.append(HandshakeCompleted(self.public_key, False))
        if self.staged:
            self.encapsulate([], now=now)

    def _drop_handshake(self) -> None:
        hs = self.handshake
        if hs is not None:
            self.core._indices.pop(hs.local_index, None)
            self.handshake = None

    def zero_keys(self) -> None:
        """Forget every session and handshake.  Python cannot wipe the key bytes themselves;
        dropping the last references is the best it can do (as wireguard-go admits for Go)."""
        core = self.core
        for kp in (self.current, self.previous, self.next):
            core._free(kp)
        self.current = self.previous = self.next = None
        self._drop_handshake()

    # -- timers ----------------------------------------------------------------------------
    def _arm(self, t: float) -> float:
        self.core._next_deadline = min(self.core._next_deadline, t)
        return t

    def _jitter(self) -> float:
        # In (0, REKEY_TIMEOUT_JITTER_MAX), never 0: with a zero jitter the retransmit deadline
        # t0 + REKEY_TIMEOUT can give (deadline - t0) < REKEY_TIMEOUT in floating point, and
        # initiate()'s rate check would then refuse the retry and leave no timer running.
        return (int.from_bytes(self.core._rng(2), "little") + 1) / 65537 * REKEY_TIMEOUT_JITTER_MAX

    def _t_data_sent(self, now: float) -> None:
        if self._new_handshake_at is None:
            self._new_handshake_at = self._arm(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter())

    def _t_data_received(self, now: float) -> None:
        if self._keepalive_at is None:
            self._keepalive_at = self._arm(now + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def _t_any_sent(self) -> None:
        self._keepalive_at = None

    def _t_any_received(self) -> None:
        self._new_handshake_at = None

    def _t_traversal(self, now: float) -> None:
        if self.persistent_keepalive:
            self._persistent_at = self._arm(now + self.persistent_keepalive)

    def _t_handshake_initiated(self, now: float) -> None:
        self._retransmit_at = self._arm(now + REKEY_TIMEOUT + self._jitter())

    def _t_handshake_complete(self, now: float) -> None:
        self._retransmit_at = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.handshakes += 1
        self.last_handshake_wall = now + self.core.wall_offset

    def _t_session_derived(self, now: float) -> None:
        self._zero_at = self._arm(now + 3 * REJECT_AFTER_TIME)

    def next_deadline(self) -> float:
        return min(self._retransmit_at or _INF, self._keepalive_at or _INF, self._new_handshake_at or _INF,
                   self._zero_at or _INF, self._persistent_at or _INF)

    def fire_timers(self, *, now: float) -> None:
        """Run every timer of this peer whose deadline has passed."""
        core = self.core
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit_at = None
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # Give up: drop staged packets, and make sure keys get zeroed eventually.
                core.events.append(HandshakeGaveUp(self.public_key))
                self._keepalive_at = None
                if self.staged:
                    core.drops[Drop.HANDSHAKE_GAVE_UP] += len(self.staged)
                    self.staged.clear()
                self._drop_handshake()
                if self._zero_at is None:
                    self._zero_at = self._arm(now + 3 * REJECT_AFTER_TIME)
            else:
                self.handshake_attempts += 1
                self.initiate(now=now, retry=True)
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._keepalive_at = None
            self.send_keepalive(now=now)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self._keepalive_at = self._arm(now + KEEPALIVE_TIMEOUT)
        if self._new_handshake_at is not None and now >= self._new_handshake_at:
            # Data sent, nothing heard for KEEPALIVE + REKEY_TIMEOUT: try a new handshake.
            self._new_handshake_at = None
            self.initiate(now=now)
        if self._zero_at is not None and now >= self._zero_at:
            self._zero_at = None
            self.zero_keys()
            core.events.append(KeysZeroed(self.public_key))
        if self._persistent_at is not None and now >= self._persistent_at:
            self._persistent_at = None
            if self.persistent_keepalive:
                self.send_keepalive(now=now)

    def set_persistent_keepalive(self, interval: int, *, now: float) -> None:
        """Change the interval; a non-zero interval sends a keepalive (and so a handshake) at once."""
        self.persistent_keepalive = interval
        if interval:
            self.send_keepalive(now=now)
        else:
            self._persistent_at = None

    def __repr__(self) -> str:
        from .keys import abbreviate

        return f"<Tunnel peer({abbreviate(self.public_key)})>"


#: Batches at least this long from one source try :meth:`Core._decapsulate_run` first.
RUN_MIN = 4
_RUN_HEADER = struct.Struct("<QQ")  # type + reserved + receiver index as one LE64, then the LE64 counter
_INNER_HEAD = struct.Struct(">BxHH")  # first byte, IPv4 total length, IPv6 payload length (big-endian)
_after_header = itemgetter(slice(16, None))  # the ciphertext and tag of a transport message


class Core:
    """The protocol state of one WireGuard interface.

    :param private_key: our 32-byte static private key.
    :param rng: ``rng(n)`` returns ``n`` random bytes (``os.urandom`` in production, seeded in tests).
    :param mtu: the tunnel MTU, which bounds padding.
    """

    def __init__(self, private_key: bytes | None, *, rng: Callable[[int], bytes], mtu: int = 1420) -> None:
        if private_key is not None and len(private_key) != KEY_SIZE:
            raise UsageError("a private key is 32 bytes")
        self._rng = rng
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
        self._indices: dict[int, tuple[Tunnel, Keypair | _Handshake]] = {}
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

    # -- indices ---------------------------------------------------------------------------
    def _allocate_index(self) -> int:
        while True:
            idx = int.from_bytes(self._rng(4), "little")
            if idx and idx not in self._indices:
                return idx

    def _free(self, kp: Keypair | None) -> None:
        if kp is not None:
            self._indices.pop(kp.local_index, None)

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

    # -- the receive path ------------------------------------------------------------------
    def decapsulate(self, endpoint: Endpoint, datagrams: list[bytes], *,
                    now: float) -> list[tuple[Tunnel, list[bytes]]]:
        """Process datagrams from ``endpoint``; return inner packets grouped by peer.

        Handshake messages are handled and answered through :attr:`outbox`.  Inner packets
        come back with their padding removed.  Every datagram that is not delivered or
        consumed is counted in :attr:`drops` under a reason.

        Transport messages are handled in runs of one receiver index (what a GRO batch from
        one peer is): the keypair is looked up once per run, and a counter above every
        counter seen so far is opened without a replay-window call; those counters are
        marked afterwards in one pass (:meth:`~crypto.replay.ReplayWindow.mark_increasing`), before
        anything else looks at the window.  Any other counter takes the checked path
        (check, open, accept), so the result equals checking each message in order.
        """
        if len(datagrams) >= RUN_MIN:
            fast = self._decapsulate_run(endpoint, datagrams, now)
            if fast is not None:
                return fast
        out: list[tuple[Tunnel, list[bytes]]] = []
        touched: dict[Tunnel, list[Any]] = {}  # [saw_next, saw_data, bytes, packets]
        drops = self.drops
        indices = self._indices
        unpack = TRANSPORT_HEADER.unpack_from
        nonce = NONCE.pack
        # the current run: one receiver index, and so one keypair
        run_index = -1
        tunnel: Tunnel | None = None
        kp: Keypair | None = None
        kp_drop = Drop.UNKNOWN_INDEX  # why the run's datagrams are dropped when kp is None
        replay: Any = None
        decrypt: Any = None
        last = limit = 0
        pending: list[int] = []  # opened on the fast path, not yet marked in the window
        cur: list[bytes] = []
        cur_tunnel: Tunnel | None = None
        nbytes = npkts = 0
        saw_data = False
        for d in datagrams:
            if len(d) >= MESSAGE_TRANSPORT_MIN_SIZE:
                typ, idx, counter = unpack(d)
            else:
                typ = idx = counter = -1
            if typ != MESSAGE_TRANSPORT or idx != run_index:
                # end of a run: mark its counters, account for it
                if pending:
                    replay.mark_increasing(pending)
                    pending = []
                if npkts:
                    assert tunnel is not None
                    st = touched.get(tunnel)
                    if st is None:
                        st = touched[tunnel] = [False, False, 0, 0]
                    if kp is tunnel.next:
                        st[0] = True
                    st[1] = st[1] or saw_data
                    st[2] += nbytes
                    st[3] += npkts
                    nbytes = npkts = 0
                    saw_data = False
                if typ != MESSAGE_TRANSPORT:
                    run_index = -1
                    try:
                        self._receive_control(d, endpoint, now)
                    except ProtocolError as e:
                        drops[e.reason] += 1
                    continue
                # start of a run
                run_index = idx
                entry = indices.get(idx)
                kp = None
                found = entry[1] if entry is not None else None
                if not isinstance(found, Keypair):
                    kp_drop = Drop.UNKNOWN_INDEX
                elif now - found.created >= REJECT_AFTER_TIME:
                    kp_drop = Drop.EXPIRED_KEYPAIR
                else:
                    assert entry is not None
                    tunnel, kp = entry[0], found
                    replay = kp.replay
                    decrypt = kp.recv_aead.decrypt
                    last = replay.last  # the window's highest counter (see ReplayWindow.mark_increasing)
                    limit = replay.limit
                    if tunnel is not cur_tunnel:
                        cur = []
                        out.append((tunnel, cur))
                        cur_tunnel = tunnel
            if kp is None:
                drops[kp_drop] += 1
                continue
            if last < counter < limit:
                try:
                    pt = decrypt(nonce(counter), d[16:], None)
                except InvalidTag:
                    drops[Drop.DECRYPT_FAILED] += 1
                    continue
                pending.append(counter)
                last = counter
            else:
                if pending:
                    replay.mark_increasing(pending)
                    pending = []
                if not replay.check(counter):
                    drops[Drop.REPLAYED_COUNTER] += 1
                    continue
                try:
                    pt = decrypt(nonce(counter), d[16:], None)
                except InvalidTag:
                    drops[Drop.DECRYPT_FAILED] += 1
                    continue
                if not replay.accept(counter):
                    drops[Drop.REPLAYED_COUNTER] += 1
                    continue
                last = replay.last
            nbytes += len(d)
            npkts += 1
            if not pt:
                continue  # keepalive
            # the true length from the inner IP header (session.inner_length, inlined)
            n = len(pt)
            v = pt[0] >> 4
            if v == 4 and n >= 20:
                total = (pt[2] << 8) | pt[3]
                ok = 20 <= total <= n
            elif v == 6 and n >= 40:
                total = 40 + ((pt[4] << 8) | pt[5])
                ok = total <= n
            else:
                ok = False
            if not ok:
                drops[Drop.INVALID_INNER_PACKET] += 1
                continue
            saw_data = True
            cur.append(pt if total == n else pt[:total])
        if pending:
            replay.mark_increasing(pending)
        if npkts:
            assert tunnel is not None
            st = touched.get(tunnel)
            if st is None:
                st = touched[tunnel] = [False, False, 0, 0]
            if kp is tunnel.next:
                st[0] = True
            st[1] = st[1] or saw_data
            st[2] += nbytes
            st[3] += npkts
        if len(out) > 1 or (out and not out[0][1]):
            out = [(t, pkts) for t, pkts in out if pkts]
        for tunnel, (saw_next, saw_data, nbytes, npkts) in touched.items():
            self._received(tunnel, endpoint, saw_next, saw_data, nbytes, npkts, now)
        return out

    def _decapsulate_run(self, endpoint: Endpoint, datagrams: list[bytes],
                         now: float) -> list[tuple[Tunnel, list[bytes]]] | None:
        """The bulk path of :meth:`decapsulate`: one GRO batch of one peer, done with C-level loops.

        It applies when every datagram is a transport message for one receiver index whose keypair
        is usable, the counters are consecutive, all above the replay window and below its limit, every
        tag verifies and every plaintext holds an IP packet.  That is what a GRO buffer from one peer
        normally is.  Headers are unpacked, nonces packed and messages opened with ``map`` (no
        per-message bytecode), and the counters are marked as one range.  The result is what the
        general path returns for the same datagrams.  In any other case nothing has changed (the
        window is only marked at the end) and it returns ``None``: the general path then handles the
        batch, message by message, so drops are counted there exactly as before.
        """
        n = len(datagrams)
        lens = list(map(len, datagrams))
        if min(lens) < MESSAGE_TRANSPORT_MIN_SIZE:
            return None
        heads, counters = zip(*map(_RUN_HEADER.unpack_from, datagrams))
        h0 = heads[0]
        if h0 & 0xFFFFFFFF != MESSAGE_TRANSPORT or heads.count(h0) != n:
            return None
        entry = self._indices.get(h0 >> 32)
        kp = entry[1] if entry is not None else None
        if not isinstance(kp, Keypair) or now - kp.created >= REJECT_AFTER_TIME:
            return None
        replay = kp.replay
        c0 = counters[0]
        if not replay.last < c0 or c0 + n > replay.limit or counters != tuple(range(c0, c0 + n)):
            return None
        try:
            pts = list(map(kp.recv_aead.decrypt, map(NONCE.pack, counters),
                           map(_after_header, datagrams), repeat(None)))
        except InvalidTag:
            return None
        plens = list(map(len, pts))
        if min(plens) < 20:  # a keepalive or a runt: the general path
            return None
        b0s, len4, len6 = zip(*map(_INNER_HEAD.unpack_from, pts))
        lo, hi = min(b0s), max(b0s)
        if 0x40 <= lo and hi <= 0x4F and list(len4) == plens:
            packets = pts  # IPv4, no padding
        elif 0x60 <= lo and hi <= 0x6F and list(map(add, len6, repeat(40))) == plens:
            packets = pts  # IPv6, no padding
        else:
            packets = []
            append = packets.append
            bad = 0
            for pt in pts:
                m = inner_length(pt)
                if m < 0:
                    bad += 1
                elif m == len(pt):
                    append(pt)
                else:
                    append(pt[:m])
            if bad:
                self.drops[Drop.INVALID_INNER_PACKET] += bad
        replay.mark_run(c0, n)
        tunnel: Tunnel = entry[0]  # type: ignore[index]
        self._received(tunnel, endpoint, kp is tunnel.next, bool(packets), sum(lens), n, now)
        return [(tunnel, packets)] if packets else []

    def _received(self, tunnel: Tunnel, endpoint: Endpoint, saw_next: bool, saw_data: bool,
                  nbytes: int, npkts: int, now: float) -> None:
        """Book-keeping after authenticated transport messages from ``tunnel`` (wireguard-go
        ``RoutineSequentialReceiver``): counters, roaming, key confirmation, rekey and timers."""
        tunnel.rx_bytes += nbytes
        tunnel.rx_packets += npkts
        if tunnel.endpoint != endpoint:
            tunnel.endpoint = endpoint
            self.events.append(EndpointChanged(tunnel.public_key, endpoint))
        if saw_next and tunnel.next is not None:
            tunnel._rotate_to_next(now)
        # keep_key_fresh (receiving): the initiator rekeys once when the session nears its end
        ck = tunnel.current
        if (ck is not None and ck.initiator and not tunnel.sent_last_minute_handshake
                and now - ck.created > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT):
            tunnel.sent_last_minute_handshake = True
            tunnel.initiate(now=now)
        tunnel._t_any_received()
        tunnel._t_traversal(now)
        if saw_data:
            tunnel._t_data_received(now)

    def _receive_control(self, d: bytes, endpoint: Endpoint, now: float) -> None:
        t = message_type(d)
        if t == MESSAGE_INITIATION:
            self._on_initiation(d, endpoint, now)
        elif t == MESSAGE_RESPONSE:
            self._on_response(d, endpoint, now)
        elif t == MESSAGE_COOKIE_REPLY:
            self._on_cookie_reply(d, now)
        else:
            # a type-4 message too short for the fast path, or with bytes the fast path refused
            raise ProtocolError("transport message shorter than 32 bytes", reason=Drop.SHORT)

    @staticmethod
    def _source_key(endpoint: Endpoint) -> Hashable:
        """Who a source is for the limits: its IPv4 address or IPv6 /64 (ports do not count)."""
        return source_key(endpoint[0] if isinstance(endpoint, tuple) and endpoint else endpoint)

    def under_load(self, *, now: float) -> bool:
        return self.force_under_load or now < self.under_load_until

    def _note_handshake(self, now: float) -> bool:
        """Count one handshake message with a valid mac1; the core is under load above a rate per
        second.  Only these count: anyone can send garbage without the public key, and it costs us
        one MAC, not a DH."""
        if now - self._load_window >= 1.0:
            self._load_window = now
            self._load_count = 0
        self._load_count += 1
        if self._load_count > UNDER_LOAD_HANDSHAKES_PER_SECOND:
            self.under_load_until = now + UNDER_LOAD_HOLD
        return self.under_load(now=now)

    def _check_macs(self, d: bytes, off1: int, off2: int, sender: int, endpoint: Endpoint, now: float) -> bool:
        """Whether a handshake message may go on to the DH (PROTOCOL-NOTES §1.5).

        1. mac1, always, before anything else; an invalid one is dropped and not counted as load.
        2. Not under load: go on.
        3. Under load, while the adapter says we are :attr:`behind` (the socket's receive queue
           is deep): only sources that sent no handshake for QUIET_SOURCE_INTERVAL are served;
           the rest are shed at once (``handshake_shed``), so the queue drains and a client's
           occasional try is neither dropped by the kernel nor answered seconds late.
        4. Under load, no valid mac2: a cookie reply (at most 20/s, burst 5, per source), no DH.
        5. Under load, valid mac2: the handshake limiter (per source, and the shared and quiet
           totals of :class:`crypto.ratelimiter.HandshakeLimiter`), then the DH.

        A flood from many sources therefore gets cookie replies, which cost less than receiving
        it, and its DH work is bounded; a legitimate client retrying with its cookie has its own
        bucket and, quiet since its last try, the quiet budget.
        """
        checker = self.cookie_checker
        if not checker.check_mac1(d, off1):
            raise InvalidMac("mac1 does not verify")
        if not self._note_handshake(now):
            return True
        key = self._source_key(endpoint)
        quiet = self._handshake_sources.seen(key, now=now)
        if self.behind and not quiet:
            self.drops[Drop.HANDSHAKE_SHED] += 1
            return False
        source = str(endpoint).encode()
        cookie = checker.cookie(source, now=now)
        if not checker.check_mac2(d, off2, source, now=now, cookie=cookie):
            if not self.cookie_limiter.allow(key, now=now):
                self.drops[Drop.COOKIE_REPLY_LIMITED] += 1
                return False
            reply = checker.create_reply(d, off1, sender, source, now=now, cookie=cookie)
            self._emit(None, endpoint, [reply])
            self.cookie_replies_sent += 1
            self.drops[Drop.COOKIE_REPLY_SENT] += 1
            return False
        refused = self.handshake_limiter.check(key, now=now)
        if refused is not None:
            self.drops[refused] += 1
            return False
        return True

    def _on_initiation(self, d: bytes, endpoint: Endpoint, now: float) -> None:
        msg = unpack_initiation(d)
        if not self.has_private_key:
            raise ProtocolError("no private key configured", reason=Drop.NO_PRIVATE_KEY)
        if not self._check_macs(d, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, msg.sender, endpoint, now):
            return
        # e, es, s: decrypt the initiator's static key, which tells us who it is
        remote_static, state = consume_initiation_static(
            local_static_private=self.private_key, local_static_public=self.public_key,
            ephemeral_public=msg.ephemeral, encrypted_static=msg.encrypted_static)
        tunnel = self.peers.get(remote_static)
        if tunnel is None:
            raise UnknownPeer("initiation from a public key that is not a peer")
        if tunnel.static_static is None:
            raise ProtocolError("peer key is a low-order point", reason=Drop.INVALID_PUBLIC_KEY)
        if tunnel.refuses(now=now):  # a disabled or expired client (the application decides)
            tunnel.refused_handshakes += 1
            raise ProtocolError("initiation from a refused peer", reason=Drop.REFUSED_HANDSHAKE)
        # ss, then the timestamp: strictly newer than the last accepted, and not a flood
        timestamp, state = consume_initiation_payload(state, static_static=tunnel.static_static,
                                                      encrypted_payload=msg.encrypted_timestamp)
        if timestamp <= tunnel.last_timestamp:
            raise StaleTimestamp("initiation timestamp is not newer than the last one")
        if now - tunnel.last_initiation_consumed < HANDSHAKE_INITIATION_RATE:
            raise HandshakeFlood("initiations from this peer come faster than 50 per second")
        tunnel.last_timestamp = timestamp
        tunnel.last_initiation_consumed = now
        # As wireguard-go's SendHandshakeResponse: a response counts as a sent handshake, so data
        # staged before the initiator confirms the session does not start a crossing initiation.
        tunnel.last_sent_handshake = now
        tunnel._drop_handshake()
        # e, ee, se, psk: the response
        local_index = self._allocate_index()
        e_priv = self._rng(KEY_SIZE)
        e_pub, enc, final = create_response(state, remote_ephemeral=msg.ephemeral, remote_static=remote_static,
                                            ephemeral_private=e_priv, preshared_key=tunnel.preshared_key)
        send_key, recv_key = derive_transport_keys(final, initiator=False)
        kp = Keypair(send_key, recv_key, initiator=False, local_index=local_index, remote_index=msg.sender,
                     created=now)
        self._indices[local_index] = (tunnel, kp)
        tunnel._install(kp)
        if tunnel.endpoint != endpoint:
            tunnel.endpoint = endpoint
            self.events.append(EndpointChanged(tunnel.public_key, endpoint))
        tunnel.rx_bytes += len(d)
        body = _RESP_BODY.pack(MESSAGE_RESPONSE, local_index, msg.sender, e_pub, enc)
        response = tunnel.cookies.add_macs(body, now=now)
        tunnel.tx_bytes += len(response)
        self._emit(tunnel, endpoint, [response])
        tunnel._t_any_received()
        tunnel._t_session_derived(now)
        tunnel._t_traversal(now)
        tunnel._t_any_sent()

    def _on_response(self, d: bytes, endpoint: Endpoint, now: float) -> None:
        msg = unpack_response(d)
        entry = self._indices.get(msg.receiver)
        if entry is None or not isinstance(entry[1], _Handshake):
            # Checked before the MACs are: an unknown index costs us nothing.
            raise UnknownIndex("response to no handshake of ours")
        if not self._check_macs(d, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET, msg.sender, endpoint, now):
            return
        tunnel, hs = entry
        assert isinstance(hs, _Handshake)
        if tunnel.refuses(now=now):
            tunnel.refused_handshakes += 1
            raise ProtocolError("response from a refused peer", reason=Drop.REFUSED_HANDSHAKE)
        _, final = consume_response(hs.state, local_static_private=self.private_key,
                                    local_ephemeral_private=hs.ephemeral_private,
                                    remote_ephemeral=msg.ephemeral, encrypted_payload=msg.encrypted_nothing,
                                    preshared_key=tunnel.preshared_key)
        send_key, recv_key = derive_transport_keys(final, initiator=True)
        kp = Keypair(send_key, recv_key, initiator=True, local_index=hs.local_index, remote_index=msg.sender,
                     created=now)
        tunnel.handshake = None
        self._indices[hs.local_index] = (tunnel, kp)
        tunnel._install(kp)
        if tunnel.endpoint != endpoint:
            tunnel.endpoint = endpoint
            self.events.append(EndpointChanged(tunnel.public_key, endpoint))
        tunnel.rx_bytes += len(d)
        tunnel._t_session_derived(now)
        tunnel._t_handshake_complete(now)
        self.events.append(HandshakeCompleted(tunnel.public_key, True))
        tunnel._t_any_received()
        tunnel._t_traversal(now)
        # Confirm the session to the responder: staged data, or a keepalive.
        tunnel.send_keepalive(now=now)

    def _on_cookie_reply(self, d: bytes, now: float) -> None:
        msg = unpack_cookie_reply(d)
        entry = self._indices.get(msg.receiver)
        if entry is None:
            raise UnknownIndex("cookie reply for no message of ours")
        tunnel = entry[0]
        try:
            tunnel.cookies.consume_reply(msg, now=now)
        except DecryptFailed:
            raise DecryptFailed("cookie reply does not decrypt", reason=Drop.BAD_COOKIE_REPLY) from None
        self.events.append(CookieReceived(tunnel.public_key))
