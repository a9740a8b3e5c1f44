"""One error hierarchy for the protocol core.

Following h11's split, :class:`UsageError` means *we* called the API wrong (a bad key in a
config, a bad argument) while :class:`ProtocolError` means *the network* sent something we
cannot accept.  Every parse of network bytes raises a :class:`ProtocolError` subclass or
nothing; the core catches them at its receive boundary and counts the drop by ``reason``.
"""

from __future__ import annotations


class CryptoError(ValueError):
    """Base class of every error raised by :mod:`crypto`."""


class UsageError(CryptoError):
    """The caller passed something invalid (a malformed key, a bad argument)."""


class KeyFormatError(UsageError):
    """A key is not 32 bytes, or not the 44-character base64 form that ``wg genkey`` prints."""


class ProtocolError(CryptoError):
    """The peer (or an attacker) sent bytes that must be dropped.

    :ivar reason: a short stable identifier used as the drop-counter key.
    """

    reason = "malformed"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if reason is not None:
            self.reason = reason


class MalformedMessage(ProtocolError):
    reason = "malformed"


class UnknownMessageType(ProtocolError):
    reason = "unknown_type"


class InvalidMac(ProtocolError):
    reason = "invalid_mac1"


class DecryptFailed(ProtocolError):
    reason = "decrypt_failed"


class ReplayedCounter(ProtocolError):
    reason = "replayed_counter"


class UnknownIndex(ProtocolError):
    reason = "unknown_index"


class UnknownPeer(ProtocolError):
    reason = "unknown_peer"


class StaleTimestamp(ProtocolError):
    reason = "stale_timestamp"


class HandshakeFlood(ProtocolError):
    reason = "handshake_flood"


class ExpiredKeypair(ProtocolError):
    reason = "expired_keypair"


class InvalidInnerPacket(ProtocolError):
    reason = "invalid_inner_packet"
