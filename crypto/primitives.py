"""The WireGuard primitives (whitepaper §5.4, PROTOCOL-NOTES §1.3), on ``hashlib`` and ``cryptography``.

- ``HASH`` = BLAKE2s-256; ``MAC`` = keyed BLAKE2s-128; ``HMAC`` = RFC 2104 HMAC over BLAKE2s-256.
- ``KDFn`` = HKDF-style extraction with HMAC-BLAKE2s, *n* 32-byte outputs.
- ``AEAD`` = ChaCha20-Poly1305 (RFC 8439) with the nonce ``0x00000000 ‖ LE64(counter)``.
- ``XAEAD`` = XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03), built from HChaCha20, which
  ``cryptography`` lacks, and ChaCha20-Poly1305.
- ``DH`` = X25519; an all-zero shared secret is rejected.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .drops import Drop
from .errors import DecryptFailed, KeyFormatError, ProtocolError

KEY_SIZE = 32
TAG_SIZE = 16
ZERO_KEY = bytes(32)
_ZERO4 = bytes(4)
_ZERO_BLOCK = bytes(64)
# "expand 32-byte k" as four little-endian words: the ChaCha20 constants (RFC 8439 §2.3).
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


def hash_(*parts: bytes) -> bytes:
    """``HASH(parts[0] ‖ parts[1] ‖ …)``: BLAKE2s with a 32-byte digest."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """``MAC(key, data)``: keyed BLAKE2s with a 16-byte digest (not HMAC)."""
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """``HMAC(key, data)``: RFC 2104 HMAC with BLAKE2s-256."""
    return _hmac.new(key, data, hashlib.blake2s).digest()


def kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    """``KDFn(key, data)``: ``τ0 = HMAC(key, data)``, ``τi = HMAC(τ0, τ(i-1) ‖ i)``."""
    prk = hmac(key, data)
    out: list[bytes] = []
    t = b""
    for i in range(1, n + 1):
        t = hmac(prk, t + bytes((i,)))
        out.append(t)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    return kdf(key, data, 1)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = kdf(key, data, 2)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = kdf(key, data, 3)
    return a, b, c


def aead_nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20-Poly1305 nonce for a 64-bit counter: 4 zero bytes then LE64."""
    return _ZERO4 + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise DecryptFailed("authentication tag did not verify") from None


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2).

    ``cryptography`` exposes raw ChaCha20 with a 16-byte "nonce" that fills state words
    12–15, which is exactly HChaCha20's input.  Encrypting a zero block yields
    ``rounds(state) + state``; subtracting the known constant and nonce words recovers words
    0–3 and 12–15 of ``rounds(state)``, which are HChaCha20's output.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    enc = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = struct.unpack("<16I", enc.update(_ZERO_BLOCK))
    nwords = struct.unpack("<4I", nonce16)
    out = [(block[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(block[12 + i] - nwords[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 seal with a 24-byte nonce."""
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(_ZERO4 + nonce24[16:24], plaintext, ad)


class XAeadSealer:
    """XChaCha20-Poly1305 seals under one key for nonces that share a 16-byte prefix.

    XChaCha20's subkey is ``HChaCha20(key, nonce[:16])``: with the prefix fixed, it is derived
    once, and each seal costs one ChaCha20-Poly1305 call (HChaCha20 is most of what a one-off
    :func:`xaead_encrypt` costs; benchmarks/results-by-commit.md).  The caller supplies the last 8 nonce bytes and must
    never repeat them under one prefix.

    :param key: the 32-byte XAEAD key.
    :param prefix: the first 16 bytes of every nonce.
    """

    __slots__ = ("_aead", "prefix")

    def __init__(self, key: bytes, prefix: bytes) -> None:
        self.prefix = prefix
        self._aead = ChaCha20Poly1305(hchacha20(key, prefix))

    def seal(self, suffix: bytes, plaintext: bytes, ad: bytes) -> bytes:
        """Seal with the nonce ``prefix ‖ suffix`` (``suffix``: 8 bytes)."""
        return self._aead.encrypt(_ZERO4 + suffix, plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 open; raises :class:`DecryptFailed` on a bad tag."""
    sub = hchacha20(key, nonce24[:16])
    try:
        return ChaCha20Poly1305(sub).decrypt(_ZERO4 + nonce24[16:24], ciphertext, ad)
    except InvalidTag:
        raise DecryptFailed("cookie tag did not verify") from None


def clamp(private: bytes) -> bytes:
    """Curve25519 clamping, as ``wg genkey`` applies it."""
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    if len(private) != KEY_SIZE:
        raise KeyFormatError("a private key is 32 bytes")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def dh(private: bytes, public: bytes) -> bytes:
    """X25519; an all-zero result (a low-order point) raises :class:`ProtocolError`."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise ProtocolError("X25519 produced the all-zero shared secret", reason=Drop.INVALID_PUBLIC_KEY) from None
