"""Why the protocol core dropped a datagram or a packet: the keys of ``Core.drops``.

:class:`Drop` is a :class:`~enum.StrEnum`, so each member *is* its string (``Drop.SHORT == "short"``,
same hash): counters keyed by members read the same as counters keyed by the strings, and
``vpn/drops.py`` explains each one for ``pyvpn show`` and the metrics.
"""

from __future__ import annotations

from enum import StrEnum


class Drop(StrEnum):
    # malformed or unexpected datagrams
    MALFORMED = "malformed"
    SHORT = "short"
    BAD_SIZE = "bad_size"
    UNKNOWN_TYPE = "unknown_type"
    # handshakes
    INVALID_MAC1 = "invalid_mac1"
    UNKNOWN_PEER = "unknown_peer"
    STALE_TIMESTAMP = "stale_timestamp"
    HANDSHAKE_FLOOD = "handshake_flood"
    INVALID_PUBLIC_KEY = "invalid_public_key"
    NO_PRIVATE_KEY = "no_private_key"
    REFUSED_HANDSHAKE = "refused_handshake"
    BAD_COOKIE_REPLY = "bad_cookie_reply"
    UNEXPECTED_COOKIE = "unexpected_cookie"
    # handshakes under load (see Core._check_macs)
    COOKIE_REPLY_SENT = "cookie_reply_sent"
    COOKIE_REPLY_LIMITED = "cookie_reply_limited"
    RATE_LIMITED = "rate_limited"
    HANDSHAKE_BUDGET = "handshake_budget"
    HANDSHAKE_SHED = "handshake_shed"
    # transport messages
    DECRYPT_FAILED = "decrypt_failed"
    REPLAYED_COUNTER = "replayed_counter"
    UNKNOWN_INDEX = "unknown_index"
    EXPIRED_KEYPAIR = "expired_keypair"
    INVALID_INNER_PACKET = "invalid_inner_packet"
    # the send side
    NO_ENDPOINT = "no_endpoint"
    HANDSHAKE_NO_ENDPOINT = "handshake_no_endpoint"
    STAGED_OVERFLOW = "staged_overflow"
    HANDSHAKE_GAVE_UP = "handshake_gave_up"
    REFUSED_PEER = "refused_peer"
