"""The index table: our 32-bit receiver indices and what each one names (wireguard-go ``indextable.go``).

Every message a peer sends us carries one of our indices: a response names the handshake we started,
a transport message the keypair it was sealed with.  The table maps each index to its peer and to a
:class:`~crypto.handshake.Handshake` in flight or a :class:`~crypto.session.Keypair`.  Indices are
random (from the core's injected ``rng``), never 0 and never reused while in the table.

It is a ``dict`` so the receive path's lookup stays one C-level ``get``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handshake import Handshake
    from .session import Keypair
    from .tunnel import Tunnel


class IndexTable(dict[int, "tuple[Tunnel, Keypair | Handshake]"]):
    __slots__ = ()

    def allocate(self, rng: Callable[[int], bytes]) -> int:
        """A fresh index, not 0 and not in the table (the caller enters it)."""
        while True:
            idx = int.from_bytes(rng(4), "little")
            if idx and idx not in self:
                return idx

    def free(self, kp: Keypair | None) -> None:
        """Forget ``kp``'s index, if there is a ``kp``."""
        if kp is not None:
            self.pop(kp.local_index, None)
