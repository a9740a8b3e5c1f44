"""Keys for lab daemons and reference peers, in the base64 form ``wg genkey``/``wg pubkey``/``wg genpsk`` print.

The lab's one way to make keys: pure Python through :mod:`crypto.keys` (the production code), not a ``wg``
process per key.  That ``crypto.keys`` agrees with ``wg`` itself (clamping, public keys, base64) is checked
against the real tool in ``tests/unit/test_primitives.py`` and ``tests/unit/test_testlab_keys.py``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from crypto.keys import decode_key, encode_key, private_from_random, public_from_private
from crypto.primitives import KEY_SIZE


class Keys(NamedTuple):
    """A key pair (base64); unpacks as ``private, public``; its repr shows only the public key."""

    private: str
    public: str

    @classmethod
    def new(cls) -> Keys:
        """A fresh clamped private key and its public key (what ``wg genkey | wg pubkey`` gives)."""
        private = encode_key(private_from_random(os.urandom(KEY_SIZE)))
        return cls(private, pubkey(private))

    def __repr__(self) -> str:
        return f"Keys(public={self.public!r})"


def pubkey(private_key: str) -> str:
    """The base64 public key of a base64 private key (as ``wg pubkey``, which clamps it too).

    :raises crypto.errors.KeyFormatError: when ``private_key`` is not a 32-byte key in base64.
    """
    return encode_key(public_from_private(decode_key(private_key, what="private key")))


def genpsk() -> str:
    """A fresh base64 preshared key (as ``wg genpsk``)."""
    return encode_key(os.urandom(KEY_SIZE))
