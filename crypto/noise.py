"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it (whitepaper §5.4.2–5.4.4).

The functions here are the handshake *steps*, pure and deterministic: ephemeral keys and
payloads come in as arguments, so the same code checks against the cacophony test vector
(with its prologue in place of WireGuard's IDENTIFIER) and runs WireGuard handshakes (whose
initiation payload is a TAI64N timestamp and whose response payload is empty).
Message framing, MACs and peer bookkeeping live in :mod:`crypto.messages`,
:mod:`crypto.cookie` and :mod:`crypto.tunnel`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .primitives import (
    ZERO_KEY,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    public_key,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Ci = HASH(CONSTRUCTION); Hi = HASH(Ci ‖ IDENTIFIER)  (PROTOCOL-NOTES §1.2 gives both in hex)
INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)


def initial_hash(prologue: bytes = IDENTIFIER) -> bytes:
    return hash_(INITIAL_CHAIN_KEY, prologue)


INITIAL_HASH = initial_hash()


@dataclass(slots=True, repr=False)
class SymmetricState:
    """The running chaining key ``C`` and transcript hash ``H`` of one handshake (never shown by ``repr``:
    the chaining key derives the session keys)."""

    chain_key: bytes
    hash: bytes

    def __repr__(self) -> str:
        return "SymmetricState(chain_key=(hidden), hash=(hidden))"


@dataclass(frozen=True, slots=True)
class InitiationParts:
    ephemeral_public: bytes
    encrypted_static: bytes
    encrypted_payload: bytes


def create_initiation(
    *,
    local_static_private: bytes,
    local_static_public: bytes,
    remote_static: bytes,
    ephemeral_private: bytes,
    payload: bytes,
    static_static: bytes | None = None,
    prologue: bytes = IDENTIFIER,
) -> tuple[InitiationParts, SymmetricState]:
    """Initiator, message 1 (tokens ``e, es, s, ss``).

    :param static_static: ``DH(S_i_priv, S_r_pub)`` if precomputed (it is per peer).
    :returns: the three encrypted parts and the symmetric state to keep for the response.
    """
    # C = Ci ; H = Hi ; H = HASH(H ‖ S_r_pub)
    c = INITIAL_CHAIN_KEY
    h = hash_(initial_hash(prologue) if prologue != IDENTIFIER else INITIAL_HASH, remote_static)
    # E_i = DH_generate() ; C = KDF1(C, E_i_pub) ; H = HASH(H ‖ E_i_pub)
    e_pub = public_key(ephemeral_private)
    c = kdf1(c, e_pub)
    h = hash_(h, e_pub)
    # (C, k) = KDF2(C, DH(E_i_priv, S_r_pub))
    c, k = kdf2(c, dh(ephemeral_private, remote_static))
    # msg.static = AEAD(k, 0, S_i_pub, H) ; H = HASH(H ‖ msg.static)
    enc_static = aead_encrypt(k, 0, local_static_public, h)
    h = hash_(h, enc_static)
    # (C, k) = KDF2(C, DH(S_i_priv, S_r_pub))
    ss = static_static if static_static is not None else dh(local_static_private, remote_static)
    c, k = kdf2(c, ss)
    # msg.timestamp = AEAD(k, 0, TAI64N(), H) ; H = HASH(H ‖ msg.timestamp)
    enc_payload = aead_encrypt(k, 0, payload, h)
    h = hash_(h, enc_payload)
    return InitiationParts(e_pub, enc_static, enc_payload), SymmetricState(c, h)


def consume_initiation_static(
    *,
    local_static_private: bytes,
    local_static_public: bytes,
    ephemeral_public: bytes,
    encrypted_static: bytes,
    prologue: bytes = IDENTIFIER,
) -> tuple[bytes, SymmetricState]:
    """Responder, message 1 up to the initiator's static key (tokens ``e, es, s``).

    The responder learns *who* is calling only here, so peer lookup happens between this
    step and :func:`consume_initiation_payload`.

    :raises DecryptFailed: the static key does not decrypt (not for us, or forged).
    :raises ProtocolError: the ephemeral key is a low-order point.
    """
    c = INITIAL_CHAIN_KEY
    h = hash_(initial_hash(prologue) if prologue != IDENTIFIER else INITIAL_HASH, local_static_public)
    c = kdf1(c, ephemeral_public)
    h = hash_(h, ephemeral_public)
    c, k = kdf2(c, dh(local_static_private, ephemeral_public))
    remote_static = aead_decrypt(k, 0, encrypted_static, h)
    h = hash_(h, encrypted_static)
    return remote_static, SymmetricState(c, h)


def consume_initiation_payload(
    state: SymmetricState, *, static_static: bytes, encrypted_payload: bytes
) -> tuple[bytes, SymmetricState]:
    """Responder, message 1, token ``ss`` and the payload (the timestamp)."""
    c, k = kdf2(state.chain_key, static_static)
    payload = aead_decrypt(k, 0, encrypted_payload, state.hash)
    h = hash_(state.hash, encrypted_payload)
    return payload, SymmetricState(c, h)


def create_response(
    state: SymmetricState,
    *,
    remote_ephemeral: bytes,
    remote_static: bytes,
    ephemeral_private: bytes,
    preshared_key: bytes | None,
    payload: bytes = b"",
) -> tuple[bytes, bytes, SymmetricState]:
    """Responder, message 2 (tokens ``e, ee, se, psk``).

    :returns: ``(ephemeral_public, encrypted_payload, final_state)``.
    """
    # E_r = DH_generate() ; C = KDF1(C, E_r_pub) ; H = HASH(H ‖ E_r_pub)
    e_pub = public_key(ephemeral_private)
    c = kdf1(state.chain_key, e_pub)
    h = hash_(state.hash, e_pub)
    # C = KDF1(C, DH(E_r_priv, E_i_pub)) ; C = KDF1(C, DH(E_r_priv, S_i_pub))
    c = kdf1(c, dh(ephemeral_private, remote_ephemeral))
    c = kdf1(c, dh(ephemeral_private, remote_static))
    # (C, τ, k) = KDF3(C, Q) ; H = HASH(H ‖ τ)
    c, tau, k = kdf3(c, preshared_key or ZERO_KEY)
    h = hash_(h, tau)
    # msg.empty = AEAD(k, 0, ε, H) ; H = HASH(H ‖ msg.empty)
    enc = aead_encrypt(k, 0, payload, h)
    h = hash_(h, enc)
    return e_pub, enc, SymmetricState(c, h)


def consume_response(
    state: SymmetricState,
    *,
    local_static_private: bytes,
    local_ephemeral_private: bytes,
    remote_ephemeral: bytes,
    encrypted_payload: bytes,
    preshared_key: bytes | None,
) -> tuple[bytes, SymmetricState]:
    """Initiator, message 2 (mirrors :func:`create_response`).

    :raises DecryptFailed: wrong keys or a forged response.
    """
    c = kdf1(state.chain_key, remote_ephemeral)
    h = hash_(state.hash, remote_ephemeral)
    c = kdf1(c, dh(local_ephemeral_private, remote_ephemeral))
    c = kdf1(c, dh(local_static_private, remote_ephemeral))
    c, tau, k = kdf3(c, preshared_key or ZERO_KEY)
    h = hash_(h, tau)
    payload = aead_decrypt(k, 0, encrypted_payload, h)
    h = hash_(h, encrypted_payload)
    return payload, SymmetricState(c, h)


def derive_transport_keys(state: SymmetricState, *, initiator: bool) -> tuple[bytes, bytes]:
    """``(send_key, receive_key)``: ``(T_i, T_r) = KDF2(C, ε)``, swapped for the responder."""
    t1, t2 = kdf2(state.chain_key, b"")
    return (t1, t2) if initiator else (t2, t1)
