"""The lab's keys (:mod:`vpn.testlab.keys`): ``wg genkey``/``pubkey``/``genpsk`` in pure Python, checked against
RFC 7748 and, when it is installed, against ``wg`` itself."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from crypto.errors import KeyFormatError
from vpn.testlab.keys import Keys, genpsk, pubkey

needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wireguard-tools (wg)")


def test_keys() -> None:
    private, public = Keys.new()
    assert len(private) == len(public) == len(genpsk()) == 44
    assert pubkey(private) == public
    assert Keys.new().private != private
    assert genpsk() != genpsk()
    # RFC 7748 section 6.1: Alice's X25519 key pair.
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert base64.b64decode(pubkey(base64.b64encode(alice).decode())).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    with pytest.raises(KeyFormatError):
        pubkey("not a key")


def test_keys_repr_hides_the_private_key() -> None:
    keys = Keys.new()
    assert keys.private not in repr(keys) and keys.public in repr(keys)


@needs_wg
def test_keys_agree_with_wg() -> None:
    """A lab key pair is what ``wg genkey | wg pubkey`` would give: clamped, and ``wg`` derives the same
    public key."""
    for _ in range(3):
        keys = Keys.new()
        raw = base64.b64decode(keys.private)
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40  # clamped, as wg genkey
        wg = subprocess.run(["wg", "pubkey"], input=keys.private + "\n", capture_output=True, text=True,
                            check=True, timeout=10)
        assert wg.stdout.strip() == keys.public
