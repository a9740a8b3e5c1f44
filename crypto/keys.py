"""Keys in the base64 form that ``wg genkey``, ``wg pubkey`` and ``wg genpsk`` use.

Randomness is injected (``random`` is 32 bytes from the caller), so this module stays pure.
Python cannot reliably zero memory: key material lives in immutable ``bytes`` that the
garbage collector frees when the last reference goes.  Zeroing here is best-effort, as
wireguard-go's ``keypair.go`` admits for Go.
"""

from __future__ import annotations

import base64
import binascii

from .errors import KeyFormatError
from .primitives import KEY_SIZE, clamp, public_key

__all__ = ["abbreviate", "decode_key", "encode_key", "private_from_random", "public_from_private"]


def decode_key(text: str, *, what: str = "key") -> bytes:
    """Decode a 44-character base64 key into 32 bytes.

    :param text: the base64 text (surrounding white space is ignored).
    :param what: a word for the error message ("private key", "public key", ...).
    :raises KeyFormatError: the text is not base64 or does not decode to 32 bytes. The
        message never contains the text itself, since it may be a private key.
    """
    t = text.strip()
    if len(t) != 44 or not t.endswith("="):
        raise KeyFormatError(f"{what} must be 44 characters of base64 (as `wg genkey` prints), got {len(t)}")
    try:
        raw = base64.b64decode(t, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise KeyFormatError(f"{what} must decode to 32 bytes")
    if base64.b64encode(raw).decode("ascii") != t:
        # wg(8)'s key_from_base64 refuses non-zero padding bits in the last character.
        raise KeyFormatError(f"{what} is not canonical base64 (its last character before '=' is wrong)")
    return raw


def encode_key(raw: bytes) -> str:
    """Encode 32 key bytes as base64, the inverse of :func:`decode_key`."""
    if len(raw) != KEY_SIZE:
        raise KeyFormatError("a key is 32 bytes")
    return base64.b64encode(raw).decode("ascii")


def decode_hex_key(text: str, *, what: str = "key") -> bytes:
    """Decode a 64-character hex key (the form the UAPI uses)."""
    t = text.strip()
    if len(t) != 64:
        raise KeyFormatError(f"{what} must be 64 hex characters")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise KeyFormatError(f"{what} is not valid hex") from None


def private_from_random(random: bytes) -> bytes:
    """A clamped X25519 private key from 32 random bytes (what ``wg genkey`` does)."""
    if len(random) != KEY_SIZE:
        raise KeyFormatError("need 32 random bytes")
    return clamp(random)


def public_from_private(private: bytes) -> bytes:
    return public_key(private)


def abbreviate(public: bytes) -> str:
    """``AbCd…wxyz``: the short form of a public key used in log prefixes (as wireguard-go)."""
    b64 = base64.b64encode(public).decode("ascii")
    return f"{b64[:4]}…{b64[39:43]}"
