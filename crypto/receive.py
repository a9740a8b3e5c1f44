"""The receive path (wireguard-go ``receive.go``): :meth:`CoreReceive.decapsulate`.

1. A batch of datagrams from one source comes in.  A GRO batch of one peer (the common case) tries
   the bulk path first (:meth:`CoreReceive._decapsulate_run`), which either handles all of it or
   changes nothing.
2. Otherwise each datagram in turn: handshake and cookie messages go to
   :meth:`crypto.handshake.CoreHandshake._receive_control`; transport messages are opened in runs of
   one receiver index, checked against the replay window and trimmed of their padding.
3. Drops are counted by :class:`crypto.drops.Drop`; nothing raised by bad input escapes.
4. Per peer, :meth:`CoreReceive._received` books the counters, roaming, key confirmation, the
   receiving side of rekeying and the timer hooks.
"""

from __future__ import annotations

import struct
from itertools import repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from .constants import BULK_MIN, KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT
from .drops import Drop
from .errors import ProtocolError
from .events import Endpoint, EndpointChanged
from .messages import MESSAGE_TRANSPORT, MESSAGE_TRANSPORT_MIN_SIZE
from .session import NONCE, TRANSPORT_HEADER, Keypair, inner_length

if TYPE_CHECKING:
    from .tunnel import Core, Tunnel

_RUN_HEADER = struct.Struct("<QQ")  # type + reserved + receiver index as one LE64, then the LE64 counter
_INNER_HEAD = struct.Struct(">BxHH")  # first byte, IPv4 total length, IPv6 payload length (big-endian)
_after_header = itemgetter(slice(16, None))  # the ciphertext and tag of a transport message


def _tally(touched: dict[Tunnel, list[Any]], tunnel: Tunnel, kp: Keypair | None, saw_data: bool,
           nbytes: int, npkts: int) -> None:
    """Add one run of authenticated messages from ``tunnel`` (on ``kp``) to its ``touched`` entry:
    ``[saw_next, saw_data, bytes, packets]``, which :meth:`CoreReceive._received` books afterwards."""
    st = touched.get(tunnel)
    if st is None:
        st = touched[tunnel] = [False, False, 0, 0]
    if kp is tunnel.next:
        st[0] = True
    st[1] = st[1] or saw_data
    st[2] += nbytes
    st[3] += npkts


class CoreReceive:
    """The receive path of :class:`crypto.tunnel.Core` (a mixin)."""

    def decapsulate(self: Core, endpoint: Endpoint, datagrams: list[bytes], *, now: float,
                    bulk: bool = True) -> list[tuple[Tunnel, list[bytes]]]:
        """Process datagrams from ``endpoint``; return inner packets grouped by peer.

        Handshake messages are handled and answered through :attr:`outbox`.  Inner packets
        come back with their padding removed.  Every datagram that is not delivered or
        consumed is counted in :attr:`drops` under a reason.

        Transport messages are handled in runs of one receiver index (what a GRO batch from
        one peer is): the keypair is looked up once per run, and a counter above every
        counter seen so far is opened without a replay-window call; those counters are
        marked afterwards in one pass (:meth:`~crypto.replay.ReplayWindow.mark_increasing`), before
        anything else looks at the window.  Any other counter takes the checked path
        (check, open, accept), so the result equals checking each message in order.

        :param bulk: try the bulk path (:meth:`_decapsulate_run`) for batches of
            :data:`~crypto.constants.BULK_MIN` or more; ``False`` runs the general loop alone (tests compare both).
        """
        if bulk and len(datagrams) >= BULK_MIN:
            fast = self._decapsulate_run(endpoint, datagrams, now)
            if fast is not None:
                return fast
        out: list[tuple[Tunnel, list[bytes]]] = []
        touched: dict[Tunnel, list[Any]] = {}  # [saw_next, saw_data, bytes, packets]
        drops = self.drops
        indices = self._indices
        unpack = TRANSPORT_HEADER.unpack_from
        nonce = NONCE.pack
        # the current run: one receiver index, and so one keypair
        run_index = -1
        tunnel: Tunnel | None = None
        kp: Keypair | None = None
        kp_drop = Drop.UNKNOWN_INDEX  # why the run's datagrams are dropped when kp is None
        replay: Any = None
        decrypt: Any = None
        last = limit = 0
        pending: list[int] = []  # opened on the fast path, not yet marked in the window
        cur: list[bytes] = []
        cur_tunnel: Tunnel | None = None
        nbytes = npkts = 0
        saw_data = False
        for d in datagrams:
            if len(d) >= MESSAGE_TRANSPORT_MIN_SIZE:
                typ, idx, counter = unpack(d)
            else:
                typ = idx = counter = -1
            if typ != MESSAGE_TRANSPORT or idx != run_index:
                # end of a run: mark its counters, account for it
                if pending:
                    replay.mark_increasing(pending)
                    pending = []
                if npkts:
                    assert tunnel is not None
                    _tally(touched, tunnel, kp, saw_data, nbytes, npkts)
                    nbytes = npkts = 0
                    saw_data = False
                if typ != MESSAGE_TRANSPORT:
                    run_index = -1
                    try:
                        self._receive_control(d, endpoint, now)
                    except ProtocolError as e:
                        drops[e.reason] += 1
                    continue
                # start of a run
                run_index = idx
                entry = indices.get(idx)
                kp = None
                found = entry[1] if entry is not None else None
                if not isinstance(found, Keypair):
                    kp_drop = Drop.UNKNOWN_INDEX
                elif now - found.created >= REJECT_AFTER_TIME:
                    kp_drop = Drop.EXPIRED_KEYPAIR
                else:
                    assert entry is not None
                    tunnel, kp = entry[0], found
                    replay = kp.replay
                    decrypt = kp.recv_aead.decrypt
                    last = replay.last  # the window's highest counter (see ReplayWindow.mark_increasing)
                    limit = replay.limit
                    if tunnel is not cur_tunnel:
                        cur = []
                        out.append((tunnel, cur))
                        cur_tunnel = tunnel
            if kp is None:
                drops[kp_drop] += 1
                continue
            if last < counter < limit:
                try:
                    pt = decrypt(nonce(counter), d[16:], None)
                except InvalidTag:
                    drops[Drop.DECRYPT_FAILED] += 1
                    continue
                pending.append(counter)
                last = counter
            else:
                if pending:
                    replay.mark_increasing(pending)
                    pending = []
                if not replay.check(counter):
                    drops[Drop.REPLAYED_COUNTER] += 1
                    continue
                try:
                    pt = decrypt(nonce(counter), d[16:], None)
                except InvalidTag:
                    drops[Drop.DECRYPT_FAILED] += 1
                    continue
                if not replay.accept(counter):
                    drops[Drop.REPLAYED_COUNTER] += 1
                    continue
                last = replay.last
            nbytes += len(d)
            npkts += 1
            if not pt:
                continue  # keepalive
            # the true length from the inner IP header (session.inner_length, inlined)
            n = len(pt)
            v = pt[0] >> 4
            if v == 4 and n >= 20:
                total = (pt[2] << 8) | pt[3]
                ok = 20 <= total <= n
            elif v == 6 and n >= 40:
                total = 40 + ((pt[4] << 8) | pt[5])
                ok = total <= n
            else:
                ok = False
            if not ok:
                drops[Drop.INVALID_INNER_PACKET] += 1
                continue
            saw_data = True
            cur.append(pt if total == n else pt[:total])
        if pending:
            replay.mark_increasing(pending)
        if npkts:
            assert tunnel is not None
            _tally(touched, tunnel, kp, saw_data, nbytes, npkts)
        if len(out) > 1 or (out and not out[0][1]):
            out = [(t, pkts) for t, pkts in out if pkts]
        for tunnel, (saw_next, saw_data, nbytes, npkts) in touched.items():
            self._received(tunnel, endpoint, saw_next, saw_data, nbytes, npkts, now)
        return out

    def _decapsulate_run(self: Core, endpoint: Endpoint, datagrams: list[bytes],
                         now: float) -> list[tuple[Tunnel, list[bytes]]] | None:
        """The bulk path of :meth:`decapsulate`: one GRO batch of one peer, done with C-level loops.

        It applies when every datagram is a transport message for one receiver index whose keypair
        is usable, the counters are consecutive, all above the replay window and below its limit, every
        tag verifies and every plaintext holds an IP packet.  That is what a GRO buffer from one peer
        normally is.  Headers are unpacked, nonces packed and messages opened with ``map`` (no
        per-message bytecode), and the counters are marked as one range.  The result is what the
        general path returns for the same datagrams.  In any other case nothing has changed (the
        window is only marked at the end) and it returns ``None``: the general path then handles the
        batch, message by message, so drops are counted there exactly as before.
        """
        n = len(datagrams)
        lens = list(map(len, datagrams))
        if min(lens) < MESSAGE_TRANSPORT_MIN_SIZE:
            return None
        heads, counters = zip(*map(_RUN_HEADER.unpack_from, datagrams), strict=True)
        h0 = heads[0]
        if h0 & 0xFFFFFFFF != MESSAGE_TRANSPORT or heads.count(h0) != n:
            return None
        entry = self._indices.get(h0 >> 32)
        kp = entry[1] if entry is not None else None
        if not isinstance(kp, Keypair) or now - kp.created >= REJECT_AFTER_TIME:
            return None
        replay = kp.replay
        c0 = counters[0]
        if not replay.last < c0 or c0 + n > replay.limit or counters != tuple(range(c0, c0 + n)):
            return None
        try:
            pts = list(map(kp.recv_aead.decrypt, map(NONCE.pack, counters),
                           map(_after_header, datagrams), repeat(None)))
        except InvalidTag:
            return None
        plens = list(map(len, pts))
        if min(plens) < 20:  # a keepalive or a runt: the general path
            return None
        b0s, len4, len6 = zip(*map(_INNER_HEAD.unpack_from, pts), strict=True)
        lo, hi = min(b0s), max(b0s)
        if 0x40 <= lo and hi <= 0x4F and list(len4) == plens:
            packets = pts  # IPv4, no padding
        elif 0x60 <= lo and hi <= 0x6F and list(map(add, len6, repeat(40))) == plens:
            packets = pts  # IPv6, no padding
        else:
            packets = []
            append = packets.append
            bad = 0
            for pt in pts:
                m = inner_length(pt)
                if m < 0:
                    bad += 1
                elif m == len(pt):
                    append(pt)
                else:
                    append(pt[:m])
            if bad:
                self.drops[Drop.INVALID_INNER_PACKET] += bad
        replay.mark_run(c0, n)
        tunnel: Tunnel = entry[0]  # type: ignore[index]
        self._received(tunnel, endpoint, kp is tunnel.next, bool(packets), sum(lens), n, now)
        return [(tunnel, packets)] if packets else []

    def _received(self: Core, tunnel: Tunnel, endpoint: Endpoint, saw_next: bool, saw_data: bool,
                  nbytes: int, npkts: int, now: float) -> None:
        """Book-keeping after authenticated transport messages from ``tunnel`` (wireguard-go
        ``RoutineSequentialReceiver``): counters, roaming, key confirmation, rekey and timers."""
        tunnel.rx_bytes += nbytes
        tunnel.rx_packets += npkts
        if tunnel.endpoint != endpoint:
            tunnel.endpoint = endpoint
            self.events.append(EndpointChanged(tunnel.public_key, endpoint))
        if saw_next and tunnel.next is not None:
            tunnel._rotate_to_next(now)
        # keep_key_fresh (receiving): the initiator rekeys once when the session nears its end
        ck = tunnel.current
        if (ck is not None and ck.initiator and not tunnel.sent_last_minute_handshake
                and now - ck.created > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT):
            tunnel.sent_last_minute_handshake = True
            tunnel.initiate(now=now)
        tunnel._t_any_received()
        tunnel._t_traversal(now)
        if saw_data:
            tunnel._t_data_received(now)
