"""One error hierarchy for the protocol core.

Following h11's split, :class:`UsageError` means *we* called the API wrong (a bad key in a
config, a bad argument) while :class:`ProtocolError` means *the network* sent something we
cannot accept.  Every parse of network bytes raises a :class:`ProtocolError` subclass or
nothing; the core catches them at its receive boundary and counts the drop by ``reason``.
"""

from __future__ import annotations

from .drops import Drop


class CryptoError(ValueError):
    """Base class of every error raised by :mod:`crypto`."""


class UsageError(CryptoError):
    """The caller passed something invalid (a malformed key, a bad argument)."""


class KeyFormatError(UsageError):
    """A key is not 32 bytes, or not the 44-character base64 form that ``wg genkey`` prints."""


class ProtocolError(CryptoError):
    """The peer (or an attacker) sent bytes that must be dropped.

    :ivar reason: the drop-counter key (:class:`crypto.drops.Drop`).
    """

    reason: Drop = Drop.MALFORMED

    def __init__(self, message: str = "", *, reason: Drop | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if reason is not None:
            self.reason = reason


class MalformedMessage(ProtocolError):
    reason = Drop.MALFORMED


class UnknownMessageType(ProtocolError):
    reason = Drop.UNKNOWN_TYPE


class InvalidMac(ProtocolError):
    reason = Drop.INVALID_MAC1


class DecryptFailed(ProtocolError):
    reason = Drop.DECRYPT_FAILED


class UnknownIndex(ProtocolError):
    reason = Drop.UNKNOWN_INDEX


class UnknownPeer(ProtocolError):
    reason = Drop.UNKNOWN_PEER


class StaleTimestamp(ProtocolError):
    reason = Drop.STALE_TIMESTAMP


class HandshakeFlood(ProtocolError):
    reason = Drop.HANDSHAKE_FLOOD
