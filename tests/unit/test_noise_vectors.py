"""Known-answer and consistency tests for the Noise_IKpsk2 handshake steps in :mod:`crypto.noise`.

Source of the vector: the ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` entry of the cacophony test
vectors as shipped in github.com/mcginty/snow ``tests/vectors/cacophony.txt`` (commit 8ac60f51),
stored unchanged as data in ``tests/vectors/cacophony_ikpsk2.json``.

WireGuard *is* Noise_IKpsk2 with its IDENTIFIER as the prologue, a TAI64N payload in message 1
and an empty payload in message 2 (whitepaper §5.4; PROTOCOL-NOTES §1.4 and §1.13).  So running
crypto.noise's steps with the vector's prologue, keys, psk and payloads must reproduce every byte
of the vector: message 1 = e ‖ enc(s) ‖ enc(payload), message 2 = e ‖ enc(payload), the final
handshake hash, and the transport messages after ``Split()`` (both directions, nonce = message
number in that direction, ChaCha20-Poly1305 with empty AD).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto import noise
from crypto.errors import DecryptFailed, ProtocolError
from crypto.primitives import aead_decrypt, aead_encrypt, dh, kdf2, public_key

VECTOR_PATH = Path(__file__).resolve().parent.parent / "vectors" / "cacophony_ikpsk2.json"


@dataclass(frozen=True)
class Vector:
    prologue: bytes
    psk: bytes
    init_static: bytes
    init_ephemeral: bytes
    resp_static: bytes
    resp_ephemeral: bytes
    init_remote_static: bytes
    handshake_hash: bytes
    messages: list[tuple[bytes, bytes]]  # (payload, ciphertext)


def load_vector() -> Vector:
    raw = json.loads(VECTOR_PATH.read_text())
    assert raw["protocol_name"] == "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    h = bytes.fromhex
    assert raw["init_prologue"] == raw["resp_prologue"]
    assert raw["init_psks"] == raw["resp_psks"] and len(raw["init_psks"]) == 1
    return Vector(
        prologue=h(raw["init_prologue"]),
        psk=h(raw["init_psks"][0]),
        init_static=h(raw["init_static"]),
        init_ephemeral=h(raw["init_ephemeral"]),
        resp_static=h(raw["resp_static"]),
        resp_ephemeral=h(raw["resp_ephemeral"]),
        init_remote_static=h(raw["init_remote_static"]),
        handshake_hash=h(raw["handshake_hash"]),
        messages=[(h(m["payload"]), h(m["ciphertext"])) for m in raw["messages"]],
    )


@pytest.fixture(scope="module")
def vec() -> Vector:
    return load_vector()


def test_vector_file_is_the_ikpsk2_entry(vec: Vector) -> None:
    assert vec.prologue == b"John Galt"
    assert len(vec.messages) == 6
    # The vector gives the responder's public key to the initiator (IK pre-message).
    assert public_key(vec.resp_static) == vec.init_remote_static


def _initiation(vec: Vector) -> tuple[noise.InitiationParts, noise.SymmetricState]:
    return noise.create_initiation(
        local_static_private=vec.init_static,
        local_static_public=public_key(vec.init_static),
        remote_static=vec.init_remote_static,
        ephemeral_private=vec.init_ephemeral,
        payload=vec.messages[0][0],
        prologue=vec.prologue,
    )


def test_message1_initiator_bytes(vec: Vector) -> None:
    parts, _ = _initiation(vec)
    payload, expected = vec.messages[0]
    assert len(expected) == 32 + 48 + len(payload) + 16
    assert parts.ephemeral_public == expected[:32]
    assert parts.encrypted_static == expected[32:80]
    assert parts.encrypted_payload == expected[80:]


def test_message1_with_precomputed_static_static(vec: Vector) -> None:
    """The ``static_static`` shortcut (DH(S_i, S_r) precomputed per peer) changes nothing."""
    parts, state = _initiation(vec)
    parts2, state2 = noise.create_initiation(
        local_static_private=vec.init_static,
        local_static_public=public_key(vec.init_static),
        remote_static=vec.init_remote_static,
        ephemeral_private=vec.init_ephemeral,
        payload=vec.messages[0][0],
        prologue=vec.prologue,
        static_static=dh(vec.init_static, vec.init_remote_static),
    )
    assert (parts2, state2) == (parts, state)


def _responder_consumes(vec: Vector) -> tuple[bytes, bytes, noise.SymmetricState]:
    ct = vec.messages[0][1]
    remote_static, state = noise.consume_initiation_static(
        local_static_private=vec.resp_static,
        local_static_public=public_key(vec.resp_static),
        ephemeral_public=ct[:32],
        encrypted_static=ct[32:80],
        prologue=vec.prologue,
    )
    payload, state = noise.consume_initiation_payload(
        state, static_static=dh(vec.resp_static, remote_static), encrypted_payload=ct[80:]
    )
    return remote_static, payload, state


def test_message1_responder_decrypts(vec: Vector) -> None:
    remote_static, payload, state = _responder_consumes(vec)
    assert remote_static == public_key(vec.init_static)
    assert payload == vec.messages[0][0]
    _, init_state = _initiation(vec)
    # Both sides agree on C and H after message 1 (wireguard-go noise_test.go checks the same).
    assert state == init_state


def _response(vec: Vector) -> tuple[bytes, bytes, noise.SymmetricState]:
    remote_static, _, state = _responder_consumes(vec)
    return noise.create_response(
        state,
        remote_ephemeral=vec.messages[0][1][:32],
        remote_static=remote_static,
        ephemeral_private=vec.resp_ephemeral,
        preshared_key=vec.psk,
        payload=vec.messages[1][0],
    )


def test_message2_responder_bytes(vec: Vector) -> None:
    e_pub, enc, _ = _response(vec)
    payload, expected = vec.messages[1]
    assert len(expected) == 32 + len(payload) + 16
    assert e_pub == expected[:32]
    assert enc == expected[32:]


def test_handshake_hash_both_sides(vec: Vector) -> None:
    _, _, resp_final = _response(vec)
    _, init_state = _initiation(vec)
    ct = vec.messages[1][1]
    payload, init_final = noise.consume_response(
        init_state,
        local_static_private=vec.init_static,
        local_ephemeral_private=vec.init_ephemeral,
        remote_ephemeral=ct[:32],
        encrypted_payload=ct[32:],
        preshared_key=vec.psk,
    )
    assert payload == vec.messages[1][0]
    assert resp_final.hash == vec.handshake_hash
    assert init_final.hash == vec.handshake_hash
    assert init_final.chain_key == resp_final.chain_key


def test_transport_keys_and_messages(vec: Vector) -> None:
    """Split(): (k1, k2) = KDF2(C, ε); k1 protects initiator→responder, k2 the other way.

    Messages 2..5 alternate direction, starting with the initiator; each direction's nonce is
    its own message number (0, 1, ...).  AD is empty after the handshake.
    """
    _, _, final = _response(vec)
    i_send, i_recv = noise.derive_transport_keys(final, initiator=True)
    r_send, r_recv = noise.derive_transport_keys(final, initiator=False)
    assert (i_send, i_recv) == kdf2(final.chain_key, b"")
    assert (r_send, r_recv) == (i_recv, i_send)
    assert i_send != i_recv
    for i, (payload, ct) in enumerate(vec.messages[2:]):
        from_initiator = i % 2 == 0
        nonce = i // 2
        send_key, recv_key = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        assert aead_encrypt(send_key, nonce, payload, b"") == ct, f"transport message {i + 2}"
        assert aead_decrypt(recv_key, nonce, ct, b"") == payload


def test_wrong_psk_fails_on_the_initiator(vec: Vector) -> None:
    _, init_state = _initiation(vec)
    ct = vec.messages[1][1]
    with pytest.raises(DecryptFailed):
        noise.consume_response(
            init_state,
            local_static_private=vec.init_static,
            local_ephemeral_private=vec.init_ephemeral,
            remote_ephemeral=ct[:32],
            encrypted_payload=ct[32:],
            preshared_key=None,
        )


def test_wrong_prologue_fails_on_the_responder(vec: Vector) -> None:
    ct = vec.messages[0][1]
    with pytest.raises(DecryptFailed):
        noise.consume_initiation_static(
            local_static_private=vec.resp_static,
            local_static_public=public_key(vec.resp_static),
            ephemeral_public=ct[:32],
            encrypted_static=ct[32:80],
        )  # WireGuard's IDENTIFIER instead of "John Galt"


def test_tampered_message1_fails(vec: Vector) -> None:
    ct = bytearray(vec.messages[0][1])
    ct[40] ^= 1
    with pytest.raises(DecryptFailed):
        noise.consume_initiation_static(
            local_static_private=vec.resp_static,
            local_static_public=public_key(vec.resp_static),
            ephemeral_public=bytes(ct[:32]),
            encrypted_static=bytes(ct[32:80]),
            prologue=vec.prologue,
        )


# -- WireGuard mode (IDENTIFIER prologue) ----------------------------------------------------

def _keys(rnd: random.Random) -> tuple[bytes, bytes]:
    sk = rnd.randbytes(32)
    return sk, public_key(sk)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("psk", [None, bytes(range(32))])
def test_wireguard_handshake_states_agree(seed: int, psk: bytes | None) -> None:
    """After every message both sides hold the same C and H; transport keys are mirrored.

    Mirrors wireguard-go device/noise_test.go TestNoiseHandshake (there with whole devices).
    """
    rnd = random.Random(seed)
    i_sk, i_pk = _keys(rnd)
    r_sk, r_pk = _keys(rnd)
    ie, re_ = rnd.randbytes(32), rnd.randbytes(32)
    ts = bytes(12)
    parts, i_state = noise.create_initiation(local_static_private=i_sk, local_static_public=i_pk,
                                             remote_static=r_pk, ephemeral_private=ie, payload=ts)
    assert len(parts.encrypted_static) == 48 and len(parts.encrypted_payload) == 28
    peer, r_state = noise.consume_initiation_static(local_static_private=r_sk, local_static_public=r_pk,
                                                    ephemeral_public=parts.ephemeral_public,
                                                    encrypted_static=parts.encrypted_static)
    assert peer == i_pk
    got_ts, r_state = noise.consume_initiation_payload(r_state, static_static=dh(r_sk, i_pk),
                                                       encrypted_payload=parts.encrypted_payload)
    assert got_ts == ts and r_state == i_state
    e_pub, enc, r_final = noise.create_response(r_state, remote_ephemeral=parts.ephemeral_public,
                                                remote_static=i_pk, ephemeral_private=re_, preshared_key=psk)
    assert len(enc) == 16
    empty, i_final = noise.consume_response(i_state, local_static_private=i_sk, local_ephemeral_private=ie,
                                            remote_ephemeral=e_pub, encrypted_payload=enc, preshared_key=psk)
    assert empty == b"" and i_final == r_final
    i_keys = noise.derive_transport_keys(i_final, initiator=True)
    r_keys = noise.derive_transport_keys(r_final, initiator=False)
    assert i_keys == (r_keys[1], r_keys[0])


def test_initial_constants() -> None:
    """Ci and Hi in hex from PROTOCOL-NOTES §1.2 (also hard-coded by other implementations)."""
    assert noise.INITIAL_CHAIN_KEY.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    assert noise.INITIAL_HASH.hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
    assert noise.initial_hash() == noise.INITIAL_HASH
    assert len(noise.CONSTRUCTION) == 37 and len(noise.IDENTIFIER) == 34
    assert noise.LABEL_MAC1 == b"mac1----" and noise.LABEL_COOKIE == b"cookie--"


LOW_ORDER_POINTS = [
    bytes(32),  # u = 0
    (1).to_bytes(32, "little"),  # u = 1
    # order-8 point (listed among the "blacklisted" points of libsodium / Bernstein's curve25519 page)
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["zero", "one", "order8"])
def test_low_order_ephemeral_is_refused(point: bytes) -> None:
    """An all-zero DH result is refused (wireguard-go noise-helpers.go): typed error, not ValueError."""
    rnd = random.Random(7)
    r_sk, r_pk = _keys(rnd)
    with pytest.raises(ProtocolError) as info:
        noise.consume_initiation_static(local_static_private=r_sk, local_static_public=r_pk,
                                        ephemeral_public=point, encrypted_static=bytes(48))
    assert info.value.reason == "invalid_public_key"
