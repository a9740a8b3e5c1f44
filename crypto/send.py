"""The send path of one peer (wireguard-go ``send.go``).

1. :meth:`PeerSend.encapsulate` takes a batch of IP packets for the peer.
2. Without a usable session they are staged (at most MAX_STAGED_PACKETS, oldest dropped) and a
   handshake initiation goes out (:meth:`crypto.handshake.PeerHandshake.initiate`).
3. With one, staged packets go first, then the batch, each sealed with the next counter
   (:meth:`crypto.session.Keypair.seal_batch`), into ``Core.outbox``.
4. The send-side timer hooks run, and the initiator rekeys a session that is getting old.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import (
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
)
from .drops import Drop

if TYPE_CHECKING:
    from .tunnel import Tunnel


class PeerSend:
    """The send half of :class:`crypto.tunnel.Tunnel` (a mixin)."""

    # the state this concern owns (Tunnel.__init__ sets it)
    tx_bytes: int
    tx_packets: int

    def encapsulate(self: Tunnel, packets: list[bytes], *, now: float, keepalive: bool = False) -> None:
        """Seal ``packets`` for this peer into :attr:`Core.outbox`, or stage them.

        1. With no usable session (none, too old, or out of counters) the packets join the
           staged queue (oldest dropped beyond MAX_STAGED_PACKETS) and a handshake starts.
        2. Otherwise staged packets go first, then these, each sealed with the next counter.
        3. The send-side timers run and the session is rekeyed if it is getting old.
        """
        if self.refused:
            self.core.drops[Drop.REFUSED_PEER] += len(packets)
            return
        kp = self.current
        if (kp is None or kp.send_counter + len(packets) + len(self.staged) >= REJECT_AFTER_MESSAGES
                or now - kp.created >= REJECT_AFTER_TIME):
            self._stage(packets)
            self.initiate(now=now)
            return
        if self.staged:
            packets = [*self.staged, *packets]
            self.staged.clear()
        if not packets:
            return
        msgs = kp.seal_batch(packets, self.core.mtu)
        self.tx_packets += len(msgs)
        self.tx_bytes += sum(map(len, msgs))
        self.core._emit(self, self.endpoint, msgs)
        self._t_any_sent()
        self._t_traversal(now)
        if not keepalive:
            self._t_data_sent(now)
        # keep_key_fresh (sending): rekey after REKEY_AFTER_MESSAGES, or as initiator after REKEY_AFTER_TIME
        # (Core.rekey_after_time)
        if kp.send_counter > REKEY_AFTER_MESSAGES or (kp.initiator and now - kp.created > self.core.rekey_after_time):
            self.initiate(now=now)

    def send_keepalive(self: Tunnel, *, now: float) -> None:
        """Send an empty transport message (or stage one and start a handshake).

        Staged packets go instead when there are any; they are data, so they start the
        new-handshake timer like any other data (wireguard-go calls timersDataSent for every
        non-keepalive packet it sends, staged ones included).
        """
        if self.staged:
            self.encapsulate([], now=now, keepalive=not any(self.staged))
        else:
            self.encapsulate([b""], now=now, keepalive=True)

    def _stage(self: Tunnel, packets: list[bytes]) -> None:
        staged = self.staged
        staged.extend(packets)
        over = len(staged) - MAX_STAGED_PACKETS
        if over > 0:
            for _ in range(over):
                staged.popleft()
            self.core.drops[Drop.STAGED_OVERFLOW] += over
