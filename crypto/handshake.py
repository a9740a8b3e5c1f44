"""Handshakes: sending initiations, answering them, consuming responses and cookie replies.

Initiator (:meth:`PeerHandshake.initiate`, then :meth:`CoreHandshake._on_response`):

1. At most one initiation per REKEY_TIMEOUT; a new one replaces the handshake in flight.
2. Its index enters the index table with the :class:`Handshake` state until the response comes.
3. The response derives a keypair that becomes ``current`` at once; staged data (or a keepalive)
   confirms it to the responder.

Responder (:meth:`CoreHandshake._on_initiation`): mac1 and the load checks
(:meth:`CoreHandshake._check_macs`), then the static key says which peer it is, the timestamp must be
newer than the last, and the response goes out; the new keypair waits in ``next``.

Cookie replies (:meth:`CoreHandshake._on_cookie_reply`) only store a cookie for the next mac2.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from typing import TYPE_CHECKING

from .constants import HANDSHAKE_INITIATION_RATE, REKEY_TIMEOUT, UNDER_LOAD_HANDSHAKES_PER_SECOND, UNDER_LOAD_HOLD
from .drops import Drop
from .errors import DecryptFailed, HandshakeFlood, InvalidMac, ProtocolError, StaleTimestamp, UnknownIndex, UnknownPeer
from .events import CookieReceived, Endpoint, EndpointChanged, HandshakeCompleted, HandshakeInitiated
from .messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
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
from .primitives import KEY_SIZE
from .ratelimiter import source_key
from .session import Keypair

if TYPE_CHECKING:
    from .tunnel import Core, Tunnel

_INIT_BODY = struct.Struct("<II32s48s28s")
_RESP_BODY = struct.Struct("<III32s16s")


class Handshake:
    """Initiator state between sending an initiation and consuming its response."""

    __slots__ = ("ephemeral_private", "local_index", "state")

    def __init__(self, local_index: int, state: SymmetricState, ephemeral_private: bytes) -> None:
        self.local_index = local_index
        self.state = state
        self.ephemeral_private = ephemeral_private


class PeerHandshake:
    """The initiator half of :class:`crypto.tunnel.Tunnel` (a mixin)."""

    # the state this concern owns (Tunnel.__init__ sets it)
    handshake: Handshake | None
    handshake_attempts: int
    last_sent_handshake: float
    tx_bytes: int

    def initiate(self: Tunnel, *, now: float, retry: bool = False) -> None:
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
        local_index = core._indices.allocate(core._rng)
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
        hs = Handshake(local_index, state, e_priv)
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


class CoreHandshake:
    """Handshake and cookie messages received by :class:`crypto.tunnel.Core` (a mixin)."""

    # the state this concern owns (Core.__init__ sets it)
    _load_window: float
    _load_count: int
    under_load_until: float
    cookie_replies_sent: int

    def _receive_control(self: Core, d: bytes, endpoint: Endpoint, now: float) -> None:
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

    def under_load(self: Core, *, now: float) -> bool:
        return self.force_under_load or now < self.under_load_until

    def _note_handshake(self: Core, now: float) -> bool:
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

    def _check_macs(self: Core, d: bytes, off1: int, off2: int, sender: int, endpoint: Endpoint, now: float) -> bool:
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

    def _on_initiation(self: Core, d: bytes, endpoint: Endpoint, now: float) -> None:
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
        local_index = self._indices.allocate(self._rng)
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

    def _on_response(self: Core, d: bytes, endpoint: Endpoint, now: float) -> None:
        msg = unpack_response(d)
        entry = self._indices.get(msg.receiver)
        if entry is None or not isinstance(entry[1], Handshake):
            # Checked before the MACs are: an unknown index costs us nothing.
            raise UnknownIndex("response to no handshake of ours")
        if not self._check_macs(d, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET, msg.sender, endpoint, now):
            return
        tunnel, hs = entry
        assert isinstance(hs, Handshake)
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

    def _on_cookie_reply(self: Core, d: bytes, now: float) -> None:
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
