"""WireGuard wire formats (whitepaper §5.4, wireguard-go ``device/noise-protocol.go``).

Every integer field is **little-endian**; the message type is a u32 whose upper three bytes
must be zero (the kernel's "u8 type, u8 reserved_zero[3]").  ``unpack_*`` functions accept
any bytes-like object and raise :class:`~crypto.errors.MalformedMessage` (or
:class:`~crypto.errors.UnknownMessageType`) for anything else; nothing else escapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .drops import Drop
from .errors import MalformedMessage, UnknownMessageType

# -- specification ------------------------------------------------------------------------
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
MESSAGE_TRANSPORT_HEADER_SIZE = 16  # type(4) ‖ receiver(4) ‖ counter(8, LE)
MESSAGE_TRANSPORT_MIN_SIZE = 32  # header + Poly1305 tag: a keepalive
MESSAGE_KEEPALIVE_SIZE = MESSAGE_TRANSPORT_MIN_SIZE

# mac1 covers everything before it; mac2 everything before mac2.
INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76

TRANSPORT_PREFIX = struct.Struct("<II")  # type, receiver index (LE)
_U32 = struct.Struct("<I")

_INIT = struct.Struct("<II32s48s28s16s16s")
_RESP = struct.Struct("<III32s16s16s16s")
_COOKIE = struct.Struct("<II24s32s")


@dataclass(frozen=True, slots=True)
class Initiation:
    """Type 1, 148 bytes: ``sender ‖ ephemeral ‖ enc(static) ‖ enc(timestamp) ‖ mac1 ‖ mac2``."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """Type 2, 92 bytes: ``sender ‖ receiver ‖ ephemeral ‖ enc(ε) ‖ mac1 ‖ mac2``."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Type 3, 64 bytes: ``receiver ‖ nonce(24) ‖ XAEAD(cookie)(32)``."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The type of a datagram (1–4), or raise.

    :raises MalformedMessage: shorter than 4 bytes.
    :raises UnknownMessageType: any other value, including non-zero reserved bytes.
    """
    if len(data) < 4:
        raise MalformedMessage("datagram shorter than a message type", reason=Drop.SHORT)
    t: int = _U32.unpack_from(data, 0)[0]
    if t < 1 or t > 4:
        raise UnknownMessageType(f"unknown message type {t:#x}")
    return t


def _check(data: bytes | bytearray | memoryview, kind: int, size: int, name: str) -> None:
    if len(data) != size:
        raise MalformedMessage(f"{name} must be {size} bytes, got {len(data)}", reason=Drop.BAD_SIZE)
    if _U32.unpack_from(data, 0)[0] != kind:
        raise UnknownMessageType(f"not a {name}")


def pack_initiation(m: Initiation) -> bytes:
    return _INIT.pack(MESSAGE_INITIATION, m.sender, m.ephemeral, m.encrypted_static,
                      m.encrypted_timestamp, m.mac1, m.mac2)


def unpack_initiation(data: bytes | bytearray | memoryview) -> Initiation:
    _check(data, MESSAGE_INITIATION, MESSAGE_INITIATION_SIZE, "handshake initiation")
    _, sender, eph, static, ts, mac1, mac2 = _INIT.unpack_from(data, 0)
    return Initiation(sender, eph, static, ts, mac1, mac2)


def pack_response(m: Response) -> bytes:
    return _RESP.pack(MESSAGE_RESPONSE, m.sender, m.receiver, m.ephemeral, m.encrypted_nothing, m.mac1, m.mac2)


def unpack_response(data: bytes | bytearray | memoryview) -> Response:
    _check(data, MESSAGE_RESPONSE, MESSAGE_RESPONSE_SIZE, "handshake response")
    _, sender, receiver, eph, empty, mac1, mac2 = _RESP.unpack_from(data, 0)
    return Response(sender, receiver, eph, empty, mac1, mac2)


def pack_cookie_reply(m: CookieReply) -> bytes:
    return _COOKIE.pack(MESSAGE_COOKIE_REPLY, m.receiver, m.nonce, m.encrypted_cookie)


def unpack_cookie_reply(data: bytes | bytearray | memoryview) -> CookieReply:
    _check(data, MESSAGE_COOKIE_REPLY, MESSAGE_COOKIE_REPLY_SIZE, "cookie reply")
    _, receiver, nonce, enc = _COOKIE.unpack_from(data, 0)
    return CookieReply(receiver, nonce, enc)


def unpack_transport_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(receiver_index, counter)`` of a type-4 message."""
    if len(data) < MESSAGE_TRANSPORT_MIN_SIZE:
        raise MalformedMessage("transport message shorter than 32 bytes", reason=Drop.SHORT)
    t, receiver, counter = struct.unpack_from("<IIQ", data, 0)
    if t != MESSAGE_TRANSPORT:
        raise UnknownMessageType("not a transport message")
    return receiver, counter


# -- TAI64N (PROTOCOL-NOTES §1.6) -----------------------------------------------------------
TAI64_BASE = 0x400000000000000A
TIMESTAMP_SIZE = 12
_WHITENER_MASK = 0x1000000 - 1  # wireguard-go rounds nanoseconds down to hide timer precision


def tai64n(wall: float) -> bytes:
    """The 12-byte big-endian TAI64N label for a Unix time in seconds."""
    secs = int(wall)
    nanos = int((wall - secs) * 1e9) & ~_WHITENER_MASK
    return struct.pack(">QI", TAI64_BASE + secs, max(0, nanos))
