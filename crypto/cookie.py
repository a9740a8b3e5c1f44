"""MAC1, MAC2, cookie replies and the per-source rate limit (whitepaper §5.4.4, §5.4.7).

- :class:`CookieChecker` is the receiving side of one interface: it checks mac1 with
  ``HASH(LABEL_MAC1 ‖ our public key)``, checks mac2 against the cookie it would give the
  source address, and builds cookie replies (XChaCha20-Poly1305 under
  ``HASH(LABEL_COOKIE ‖ our public key)``, with the answered message's mac1 as AD).
- :class:`CookieGenerator` is the sending side, one per peer: it adds mac1, and mac2 while
  it holds a cookie younger than :data:`COOKIE_REFRESH_TIME`.

The responder's cookie is ``MAC(secret, source address)``; the initiator treats it as opaque,
so the encoding of the source is ours to choose.  The secret is 32 random bytes rotated every
two minutes.

A cookie reply's 24-byte nonce is a random 16-byte prefix, chosen again with each secret, then
a little-endian 64-bit counter: unique under the key, which is all XChaCha20-Poly1305 needs,
and the HChaCha20 subkey is then derived once per prefix rather than per reply, which makes a
reply cheaper than receiving the datagram it answers (the per-source limits of
:mod:`crypto.ratelimiter` apply; there is no global cap that a flood could exhaust).
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Callable

from .constants import COOKIE_REFRESH_TIME
from .drops import Drop
from .errors import MalformedMessage
from .messages import CookieReply, pack_cookie_reply
from .noise import LABEL_COOKIE, LABEL_MAC1
from .primitives import XAeadSealer, hash_, mac, xaead_decrypt

_ZERO_MAC = bytes(16)

class CookieChecker:
    """Checks mac1/mac2 of messages sent to us and makes cookie replies."""

    def __init__(self, local_public: bytes, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self.mac1_key = hash_(LABEL_MAC1, local_public)
        self._encryption_key = hash_(LABEL_COOKIE, local_public)
        self._secret = rng(32)
        self._secret_time: float | None = None
        self._sealer = XAeadSealer(self._encryption_key, rng(16))
        self._nonce_counter = 0

    def check_mac1(self, msg: bytes | memoryview, mac1_offset: int) -> bool:
        expected = mac(self.mac1_key, bytes(msg[:mac1_offset]))
        return _hmac.compare_digest(expected, bytes(msg[mac1_offset : mac1_offset + 16]))

    def cookie(self, source: bytes, *, now: float) -> bytes:
        """The cookie we give ``source`` now (rotating the secret every two minutes)."""
        if self._secret_time is None or now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_time = now
            self._sealer = XAeadSealer(self._encryption_key, self._rng(16))
            self._nonce_counter = 0
        return mac(self._secret, source)

    def check_mac2(self, msg: bytes | memoryview, mac2_offset: int, source: bytes, *, now: float,
                   cookie: bytes | None = None) -> bool:
        """Whether ``msg`` carries mac2 under ``source``'s cookie (pass ``cookie`` if already
        computed with :meth:`cookie` at the same ``now``)."""
        expected = mac(cookie or self.cookie(source, now=now), bytes(msg[:mac2_offset]))
        return _hmac.compare_digest(expected, bytes(msg[mac2_offset : mac2_offset + 16]))

    def create_reply(self, msg: bytes | memoryview, mac1_offset: int, receiver: int, source: bytes, *,
                     now: float, cookie: bytes | None = None) -> bytes:
        """A 64-byte cookie reply answering ``msg`` (whose sender index is ``receiver``); ``cookie``
        as for :meth:`check_mac2`."""
        if cookie is None:
            cookie = self.cookie(source, now=now)  # first: it may rotate the secret and the nonce prefix
        suffix = self._nonce_counter.to_bytes(8, "little")
        self._nonce_counter += 1
        ad = bytes(msg[mac1_offset : mac1_offset + 16])
        enc = self._sealer.seal(suffix, cookie, ad)
        return pack_cookie_reply(CookieReply(receiver, self._sealer.prefix + suffix, enc))

class CookieGenerator:
    """Adds mac1/mac2 to the handshake messages we send to one peer."""

    __slots__ = ("_cookie", "_cookie_time", "_encryption_key", "_last_mac1", "mac1_key")

    def __init__(self, remote_public: bytes) -> None:
        self.mac1_key = hash_(LABEL_MAC1, remote_public)
        self._encryption_key = hash_(LABEL_COOKIE, remote_public)
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        self._last_mac1: bytes | None = None

    def add_macs(self, body: bytes, *, now: float) -> bytes:
        """``body ‖ mac1 ‖ mac2`` where mac2 is zero unless we hold a fresh cookie."""
        mac1 = mac(self.mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie is not None and now - self._cookie_time < COOKIE_REFRESH_TIME:
            return body + mac1 + mac(self._cookie, body + mac1)
        return body + mac1 + _ZERO_MAC

    def consume_reply(self, reply: CookieReply, *, now: float) -> None:
        """Store the cookie in ``reply``.

        :raises MalformedMessage: we sent nothing that this could answer.
        :raises DecryptFailed: the reply does not decrypt with our last mac1 as AD.
        """
        if self._last_mac1 is None:
            raise MalformedMessage("cookie reply without a message to answer", reason=Drop.UNEXPECTED_COOKIE)
        self._cookie = xaead_decrypt(self._encryption_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        self._cookie_time = now

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None

