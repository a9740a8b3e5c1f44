"""Transport keypairs: sealing type-4 messages in batches (the receive path opens them).

One :class:`Keypair` per completed handshake.  Sealing a batch costs, per packet, one AEAD
call, one counter encoding and a concatenation; there are no per-packet Python objects
beyond the output ``bytes`` (which ``cryptography`` allocates anyway).

Padding (whitepaper §5.4.6, PROTOCOL-NOTES §1.9): plaintext is zero-padded to a multiple of
16 bytes, but never beyond the MTU.  The receiver recovers the true length from the inner
IPv4 total length or IPv6 payload length (:func:`inner_length`).
"""

from __future__ import annotations

import struct
from itertools import repeat
from operator import add as _concat

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import BULK_MIN
from .messages import MESSAGE_TRANSPORT
from .replay import ReplayWindow

_PADS = [bytes(i) for i in range(16)]
_PREFIX = struct.Struct("<II")
#: type ‖ receiver index ‖ counter (all little-endian): the 16-byte transport header.
TRANSPORT_HEADER = struct.Struct("<IIQ")
#: The AEAD nonce of a transport message: 4 zero bytes ‖ counter (LE u64).
NONCE = struct.Struct("<4xQ")


class Keypair:
    """The send and receive halves of one session, with its counters.

    :ivar local_index: our index, which the peer puts in the messages it sends us.
    :ivar remote_index: the peer's index, which we put in the messages we send.
    :ivar created: the ``now`` at which the handshake completed.
    :ivar initiator: whether we initiated the handshake that made it.
    """

    __slots__ = (
        "_header",
        "_prefix",
        "created",
        "initiator",
        "local_index",
        "recv_aead",
        "remote_index",
        "replay",
        "send_aead",
        "send_counter",
    )

    def __init__(self, send_key: bytes, recv_key: bytes, *, initiator: bool, local_index: int,
                 remote_index: int, created: float) -> None:
        self.send_aead = ChaCha20Poly1305(send_key)
        self.recv_aead = ChaCha20Poly1305(recv_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.created = created
        self.initiator = initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self._prefix = _PREFIX.pack(MESSAGE_TRANSPORT, remote_index)
        self._header = TRANSPORT_HEADER.pack

    def seal_batch(self, packets: list[bytes], mtu: int, *, bulk: bool = True) -> list[bytes]:
        """Seal each packet as a type-4 message, consuming one counter each.

        Packets of equal length give messages of equal length (so a run of them leaves in one UDP GSO
        send); padding only rounds up to 16 and never past ``mtu``.

        :param mtu: padding never takes a packet beyond this many bytes.
        :param bulk: take the one-size branch (:data:`~crypto.constants.BULK_MIN` packets or more, all of one
            length); ``False`` runs the general loop alone (tests compare both).
        """
        encrypt = self.send_aead.encrypt
        header = self._header
        remote_index = self.remote_index
        nonce = NONCE.pack
        counter = self.send_counter
        pads = _PADS
        n = len(packets)
        if bulk and n >= BULK_MIN:
            size = len(packets[0])
            if list(map(len, packets)).count(size) == n:
                # one size (a GSO burst, a UDP stream): pad once, then C-level loops (map) only
                pad = -size & 15
                if size + pad > mtu:
                    pad = mtu - size if mtu > size else 0
                src = list(map(_concat, packets, repeat(pads[pad]))) if pad else packets
                counters = range(counter, counter + n)
                self.send_counter = counter + n
                return list(map(_concat, map(header, repeat(MESSAGE_TRANSPORT), repeat(remote_index), counters),
                                map(encrypt, map(nonce, counters), src, repeat(None))))
        out: list[bytes] = []
        append = out.append
        for p in packets:
            pad = -len(p) & 15
            if pad:
                n = len(p)
                if n + pad > mtu:
                    pad = mtu - n if mtu > n else 0
                if pad:
                    p = p + pads[pad]
            append(header(MESSAGE_TRANSPORT, remote_index, counter) + encrypt(nonce(counter), p, None))
            counter += 1
        self.send_counter = counter
        return out


def inner_length(plaintext: bytes) -> int:
    """The true length of an IP packet whose tail may be padding, or -1 if it is not one.

    IPv4: the total-length field (at least a 20-byte header); IPv6: 40 + payload length.
    A length beyond the plaintext, or another version nibble, gives -1.
    """
    n = len(plaintext)
    if n < 20:
        return -1
    v = plaintext[0] >> 4
    if v == 4:
        total = (plaintext[2] << 8) | plaintext[3]
        if total < 20 or total > n:
            return -1
        return total
    if v == 6:
        if n < 40:
            return -1
        total = 40 + ((plaintext[4] << 8) | plaintext[5])
        if total > n:
            return -1
        return total
    return -1
