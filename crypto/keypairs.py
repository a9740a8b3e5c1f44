"""A peer's keypairs: ``previous``, ``current`` and ``next`` (wireguard-go ``keypair.go``).

1. A session derived as initiator becomes ``current`` at once (the response confirmed it).
2. One derived as responder waits in ``next`` until the first transport message on it arrives
   (key confirmation, :meth:`PeerKeypairs._rotate_to_next`); ``previous`` is dropped meanwhile.
3. The keypair pushed out of ``current`` stays one generation as ``previous``, for packets in flight.

Every keypair dropped leaves the index table.  Python cannot wipe key bytes; dropping the last
reference is the best it can do (as wireguard-go admits for Go).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import HandshakeCompleted
from .session import Keypair

if TYPE_CHECKING:
    from .handshake import Handshake
    from .tunnel import Tunnel


class PeerKeypairs:
    """The keypair half of :class:`crypto.tunnel.Tunnel` (a mixin)."""

    # the state this concern owns (Tunnel.__init__ sets it)
    current: Keypair | None
    previous: Keypair | None
    next: Keypair | None
    handshake: Handshake | None

    def _install(self: Tunnel, kp: Keypair) -> None:
        core = self.core
        if kp.initiator:
            if self.next is not None:
                core._indices.free(self.previous)
                self.previous = self.next
                self.next = None
                core._indices.free(self.current)
            else:
                core._indices.free(self.previous)
                self.previous = self.current
            self.current = kp
        else:
            core._indices.free(self.next)
            self.next = kp
            core._indices.free(self.previous)
            self.previous = None

    def _rotate_to_next(self: Tunnel, now: float) -> None:
        """The first message on ``next`` confirms it (responder key confirmation)."""
        core = self.core
        core._indices.free(self.previous)
        self.previous = self.current
        self.current = self.next
        self.next = None
        self._t_handshake_complete(now)
        core.events.append(HandshakeCompleted(self.public_key, False))
        if self.staged:
            self.encapsulate([], now=now)

    def _drop_handshake(self: Tunnel) -> None:
        hs = self.handshake
        if hs is not None:
            self.core._indices.pop(hs.local_index, None)
            self.handshake = None

    def zero_keys(self: Tunnel) -> None:
        """Forget every session and handshake.  Python cannot wipe the key bytes themselves;
        dropping the last references is the best it can do (as wireguard-go admits for Go)."""
        core = self.core
        for kp in (self.current, self.previous, self.next):
            core._indices.free(kp)
        self.current = self.previous = self.next = None
        self._drop_handshake()
