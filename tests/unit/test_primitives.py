"""Known-answer tests for :mod:`crypto.primitives`, :mod:`crypto.keys` and ``crypto.messages.tai64n``.

Every vector names its source next to it.  Where no published vector exists (keyed BLAKE2s with
a 16-byte digest, RFC 2104 HMAC over BLAKE2s) the test builds the value a second, independent
way instead.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import shutil
import struct
import subprocess

import pytest

from crypto import keys, primitives
from crypto.errors import CryptoError, DecryptFailed, KeyFormatError, ProtocolError, UsageError
from crypto.messages import TAI64_BASE, tai64n

# -- KDF: wireguard-go device/kdf_test.go (TestKDF), 3 vectors --------------------------------
# (key, input, t0, t1, t2), all hex
KDF_VECTORS = [
    (
        "746573742d6b6579",  # "test-key"
        "746573742d696e707574",  # "test-input"
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",  # "wireguard"
        "776972656775617264",  # "wireguard"
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize("key,data,t0,t1,t2", KDF_VECTORS, ids=["test-key", "wireguard", "empty"])
def test_kdf_wireguard_go_vectors(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    k, x = bytes.fromhex(key), bytes.fromhex(data)
    assert primitives.kdf1(k, x).hex() == t0
    assert tuple(v.hex() for v in primitives.kdf2(k, x)) == (t0, t1)
    assert tuple(v.hex() for v in primitives.kdf3(k, x)) == (t0, t1, t2)


# -- HASH / MAC / HMAC -----------------------------------------------------------------------

def test_hash_blake2s_rfc7693_abc() -> None:
    # RFC 7693 Appendix B: BLAKE2s-256("abc")
    assert primitives.hash_(b"abc").hex() == "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    # HASH(a ‖ b) over several parts is the hash of the concatenation
    assert primitives.hash_(b"a", b"", b"bc") == primitives.hash_(b"abc")


def test_mac_is_keyed_blake2s_128_not_hmac() -> None:
    key, data = bytes(range(32)), b"message"
    m = primitives.mac(key, data)
    assert len(m) == 16
    assert m == hashlib.blake2s(data, key=key, digest_size=16).digest()
    assert m != primitives.hmac(key, data)[:16]


def _hmac_by_hand(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 with BLAKE2s (block size 64) written out, to check primitives.hmac independently."""
    if len(key) > 64:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in key) + msg).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in key) + inner).digest()


@pytest.mark.parametrize("key", [b"", b"k", bytes(32), bytes(range(64)), bytes(range(100))])
def test_hmac_rfc2104_by_hand(key: bytes) -> None:
    assert primitives.hmac(key, b"data") == _hmac_by_hand(key, b"data")


# -- AEAD ------------------------------------------------------------------------------------

def test_aead_nonce_layout() -> None:
    # 4 zero bytes then the counter as LE64 (PROTOCOL-NOTES §1.3; kernel zinc passes u64 nonce)
    assert primitives.aead_nonce(0) == bytes(12)
    assert primitives.aead_nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")
    assert primitives.aead_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


def test_aead_round_trip_and_tamper() -> None:
    key = bytes(range(32))
    ct = primitives.aead_encrypt(key, 7, b"hello", b"ad")
    assert len(ct) == 5 + 16
    assert primitives.aead_decrypt(key, 7, ct, b"ad") == b"hello"
    bad: list[tuple[bytes, int, bytes, bytes]] = [
        (key, 8, ct, b"ad"),  # wrong counter
        (key, 7, ct, b"AD"),  # wrong AD
        (key, 7, ct[:-1] + bytes([ct[-1] ^ 1]), b"ad"),  # tag flipped
        (bytes(32), 7, ct, b"ad"),  # wrong key
    ]
    for args in bad:
        with pytest.raises(DecryptFailed):
            primitives.aead_decrypt(*args)


# -- HChaCha20 / XChaCha20-Poly1305 ------------------------------------------------------------

def test_hchacha20_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 §2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert primitives.hchacha20(key, nonce).hex() == expected


@pytest.mark.parametrize("key,nonce", [(bytes(31), bytes(16)), (bytes(32), bytes(15)), (bytes(33), bytes(16))])
def test_hchacha20_rejects_bad_sizes(key: bytes, nonce: bytes) -> None:
    with pytest.raises(ValueError):
        primitives.hchacha20(key, nonce)


# (name, key, nonce24, ad, plaintext, ciphertext ‖ tag), hex
XAEAD_VECTORS = [
    (
        # draft-irtf-cfrg-xchacha-03 §A.3.1 (AEAD_XChaCha20_Poly1305)
        "draft-A.3.1",
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
        "404142434445464748494a4b4c4d4e4f5051525354555657",
        "50515253c0c1c2c3c4c5c6c7",
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it.".hex(),
        ("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"),
    ),
    (
        # WireGuard/wireguard-linux-compat src/crypto/zinc/selftest/chacha20poly1305.c,
        # xenc_*001 (the same bytes are xdec_*001 the other way round)
        "zinc-xenc001",
        "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
        "000102030405060708090a0b0c0d0e0f1011121314151617",
        "f33388860000000000004e91",
        ("496e7465726e65742d4472616674732061726520647261667420646f63756d656e74732076616c696420666f7220"
        "61206d6178696d756d206f6620736978206d6f6e74687320616e64206d617920626520757064617465642c207265"
        "706c616365642c206f72206f62736f6c65746564206279206f7468657220646f63756d656e747320617420616e79"
        "2074696d652e20497420697320696e617070726f70726961746520746f2075736520496e7465726e65742d447261"
        "667473206173207265666572656e6365206d6174657269616c206f7220746f2063697465207468656d206f746865"
        "72207468616e206173202fe2809c776f726b20696e2070726f67726573732e2fe2809d"),
        ("1a6e3ad9fd413f7754720a709aa029922eed93cf0f7188187a9d2d24e0f5ea3d5564d7ad2a1a1f7e866db0ce8041"
        "728626ee84d7ef829ee2609d5afcf0e41985ea09c6fbb3a95009ec5e1190a1c54e49ef50d88fe078d7fdb93bc9f2"
        "91c825c8a76360ce10cdc67ff816f8e10ad9de795033f2160f17bab85dd8df4e51a839d085ca466a10a7a388ef79"
        "b9f824f3e0717b7628463a3a1b91b6d43e23e54415bf60439da4bbd55f89ebef8efdddb40d46f0692363ae94f55e"
        "a5ad131c4176e690d66da28f974ca80bcf8d432b9c9bc558a5b6959abf81c654c9660ce54f6a53a1e50cba31de34"
        "64738a3bbd9201db7169f35899bcd1cb4a05e2589c2517cddc83b7fffb0961adbf135b5eed46826f22d893a6855b"
        "40395cc59c"),
    ),
]


@pytest.mark.parametrize("name,key,nonce,ad,pt,ct", XAEAD_VECTORS, ids=[v[0] for v in XAEAD_VECTORS])
def test_xchacha20poly1305_vectors(name: str, key: str, nonce: str, ad: str, pt: str, ct: str) -> None:
    k, n, a, p, c = (bytes.fromhex(x) for x in (key, nonce, ad, pt, ct))
    assert primitives.xaead_encrypt(k, n, p, a) == c
    assert primitives.XAeadSealer(k, n[:16]).seal(n[16:], p, a) == c  # the cached-subkey form
    assert primitives.xaead_decrypt(k, n, c, a) == p
    with pytest.raises(DecryptFailed):
        primitives.xaead_decrypt(k, n, c[:-1] + bytes([c[-1] ^ 0x80]), a)
    with pytest.raises(DecryptFailed):
        primitives.xaead_decrypt(k, n[:-1] + bytes([n[-1] ^ 1]), c, a)  # the last 8 nonce bytes matter
    with pytest.raises(DecryptFailed):
        primitives.xaead_decrypt(k, bytes([n[0] ^ 1]) + n[1:], c, a)  # so do the first 16 (HChaCha20)


# -- X25519 ----------------------------------------------------------------------------------

def test_x25519_rfc7748_section_6_1() -> None:
    # RFC 7748 §6.1 (Diffie-Hellman on Curve25519)
    a_sk = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    a_pk = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    b_sk = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    b_pk = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert primitives.public_key(a_sk).hex() == a_pk
    assert primitives.public_key(b_sk).hex() == b_pk
    assert primitives.dh(a_sk, bytes.fromhex(b_pk)).hex() == shared
    assert primitives.dh(b_sk, bytes.fromhex(a_pk)).hex() == shared


def test_dh_all_zero_result_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as info:
        primitives.dh(bytes(range(32)), bytes(32))
    assert info.value.reason == "invalid_public_key"


def test_clamp() -> None:
    # noise-helpers.go:80-83: sk[0] &= 248; sk[31] = (sk[31] & 127) | 64
    assert primitives.clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert primitives.clamp(bytes(32)) == bytes(31) + b"\x40"
    c = primitives.clamp(bytes(range(200, 232)))
    assert primitives.clamp(c) == c


def test_public_key_wrong_length_is_a_key_format_error() -> None:
    with pytest.raises(KeyFormatError):
        primitives.public_key(bytes(31))


# -- TAI64N (PROTOCOL-NOTES §1.6; wireguard-go tai64n/tai64n.go) -------------------------------

def test_tai64n_layout() -> None:
    assert TAI64_BASE == 0x400000000000000A
    assert tai64n(0.0) == bytes.fromhex("400000000000000a") + bytes(4)
    label = tai64n(1_700_000_000.0)
    secs, nanos = struct.unpack(">QI", label)
    assert len(label) == 12
    assert secs == 0x400000000000000A + 1_700_000_000 and nanos == 0


def test_tai64n_whitens_nanoseconds() -> None:
    # wireguard-go masks the low 24 bits of the nanoseconds (whitenerMask = 0x1000000 - 1)
    secs, nanos = struct.unpack(">QI", tai64n(1.5))
    assert secs == TAI64_BASE + 1
    assert nanos == 500_000_000 & ~0xFFFFFF
    assert nanos & 0xFFFFFF == 0


def test_tai64n_is_monotonic_and_coarse() -> None:
    base = 1_700_000_000.0
    stamps = [tai64n(base + i * 0.017) for i in range(200)]  # 17 ms > 2**24 ns ≈ 16.8 ms
    assert all(a < b for a, b in itertools.pairwise(stamps))
    # two instants inside one 2**24 ns bucket give the same label (replays of it are refused)
    assert tai64n(base + 0.001) == tai64n(base + 0.002)


# -- keys: interoperation with wg(8) -----------------------------------------------------------

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="wg(8) (wireguard-tools) not installed")


def _wg(*args: str, stdin: str | None = None) -> str:
    assert WG is not None
    return subprocess.run([WG, *args], input=stdin, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


@needs_wg
def test_wg_genkey_pubkey_interop() -> None:
    for _ in range(5):
        private_b64 = _wg("genkey")
        sk = keys.decode_key(private_b64, what="private key")
        assert len(sk) == 32
        assert primitives.clamp(sk) == sk  # wg genkey clamps
        assert keys.encode_key(sk) == private_b64
        assert keys.encode_key(keys.public_from_private(sk)) == _wg("pubkey", stdin=private_b64 + "\n")


@needs_wg
def test_wg_pubkey_of_unclamped_key_matches() -> None:
    """``wg pubkey`` clamps an unclamped private key; so does X25519 here."""
    raw = bytes(range(1, 33))
    assert primitives.clamp(raw) != raw
    expected = _wg("pubkey", stdin=keys.encode_key(raw) + "\n")
    assert keys.encode_key(keys.public_from_private(raw)) == expected


@needs_wg
def test_private_from_random_matches_wg_clamping() -> None:
    random32 = bytes(range(255, 223, -1))
    sk = keys.private_from_random(random32)
    assert sk == primitives.clamp(random32)
    assert sk[0] & 7 == 0 and sk[31] & 0x80 == 0 and sk[31] & 0x40
    assert keys.encode_key(keys.public_from_private(sk)) == _wg("pubkey", stdin=keys.encode_key(sk))


@needs_wg
def test_wg_genpsk_decodes() -> None:
    psk = _wg("genpsk")
    assert len(keys.decode_key(psk, what="preshared key")) == 32


@needs_wg
def test_decode_key_agrees_with_wg_on_non_canonical_base64() -> None:
    """wg(8)'s key_from_base64 refuses a key whose last character carries non-zero padding bits;
    decode_key must refuse it too rather than silently accept a key wg would reject."""
    good = keys.encode_key(bytes(range(32)))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    odd = good[:42] + alphabet[alphabet.index(good[42]) | 1] + "="
    assert odd != good and base64.b64decode(odd) == base64.b64decode(good)
    wg = subprocess.run([str(WG), "pubkey"], check=False, input=odd, capture_output=True, text=True, timeout=10)
    assert wg.returncode != 0
    with pytest.raises(KeyFormatError):
        keys.decode_key(odd)


SECRET = keys.encode_key(bytes(range(100, 132)))
BAD_KEYS = [
    "",
    "short",
    SECRET[:-1],  # 43 characters
    SECRET + "A",  # 45 characters
    SECRET[:-1] + "A",  # no padding
    SECRET[:10] + "!" + SECRET[11:],  # not base64
    SECRET[:10] + " " + SECRET[11:],  # space inside
    keys.encode_key(bytes(32))[:40] + "====",  # decodes to fewer than 32 bytes
    SECRET.encode().hex(),  # hex is the UAPI form, not this one
]


@pytest.mark.parametrize("text", BAD_KEYS)
def test_bad_keys_raise_key_format_error_without_echoing_the_key(text: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        keys.decode_key(text, what="private key")
    message = str(info.value)
    assert isinstance(info.value, UsageError) and isinstance(info.value, CryptoError)
    assert isinstance(info.value, ValueError)
    if len(text) >= 8:
        for i in range(len(text) - 7):
            assert text[i : i + 8] not in message
    assert "private key" in message


def test_decode_key_ignores_surrounding_white_space() -> None:
    assert keys.decode_key(f"  {SECRET}\n") == bytes(range(100, 132))


def test_hex_keys_and_encode_errors() -> None:
    raw = bytes(range(32))
    assert keys.decode_hex_key(raw.hex()) == raw
    for bad in ("zz" * 32, raw.hex()[:-2]):
        with pytest.raises(KeyFormatError) as info:
            keys.decode_hex_key(bad)
        assert bad not in str(info.value)
    with pytest.raises(KeyFormatError):
        keys.encode_key(bytes(31))
    with pytest.raises(KeyFormatError):
        keys.private_from_random(bytes(16))


def test_abbreviate() -> None:
    pub = bytes(range(32))
    b64 = keys.encode_key(pub)
    assert keys.abbreviate(pub) == f"{b64[:4]}…{b64[39:43]}"
