"""A peer's timers: absolute deadlines in the caller's clock, fired by :meth:`crypto.tunnel.Core.handle_timer`.

Nothing here reads a clock: each hook takes ``now`` and sets or clears a deadline, and
:meth:`PeerTimers.fire_timers` runs those that have passed.  ``Core.next_timer`` is the earliest
deadline of any peer.

Timer hooks, after wireguard-go ``timers.go`` (each says when it is called):

- ``_t_data_sent``: after sending data (not a keepalive): start the new-handshake timer.
- ``_t_data_received``: after receiving data: start the keepalive timer.
- ``_t_any_sent``: after sending any authenticated packet: stop the keepalive timer.
- ``_t_any_received``: after receiving any authenticated packet: stop the new-handshake timer.
- ``_t_traversal``: after any authenticated packet in either direction: push back the
  persistent keepalive.
- ``_t_handshake_initiated``: after sending an initiation: arm the retransmit timer.
- ``_t_handshake_complete``: after a handshake completes (initiator: response consumed;
  responder: first data on the new keys): stop retransmits.
- ``_t_session_derived``: after deriving a session: arm zeroing in 3 × REJECT_AFTER_TIME.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from .drops import Drop
from .events import HandshakeGaveUp, KeysZeroed

if TYPE_CHECKING:
    from .tunnel import Tunnel

_INF = float("inf")


class PeerTimers:
    """The timer half of :class:`crypto.tunnel.Tunnel` (a mixin; its state lives in ``Tunnel.__init__``)."""

    # the state this concern owns (Tunnel.__init__ sets it): deadlines, or None when stopped
    _retransmit_at: float | None
    _keepalive_at: float | None
    _new_handshake_at: float | None
    _zero_at: float | None
    _persistent_at: float | None
    persistent_keepalive: int
    handshake_attempts: int
    sent_last_minute_handshake: bool
    need_another_keepalive: bool
    handshakes: int
    last_handshake_wall: float

    def _arm(self: Tunnel, t: float) -> float:
        self.core._next_deadline = min(self.core._next_deadline, t)
        return t

    def _jitter(self: Tunnel) -> float:
        # In (0, REKEY_TIMEOUT_JITTER_MAX), never 0: with a zero jitter the retransmit deadline
        # t0 + REKEY_TIMEOUT can give (deadline - t0) < REKEY_TIMEOUT in floating point, and
        # initiate()'s rate check would then refuse the retry and leave no timer running.
        # Timer jitter needs no secrecy: a PRNG seeded once from the core's rng, so that arming a timer (once per
        # lone packet sent) costs no getrandom system call.
        source = self.core._jitter_source
        if source is None:
            source = self.core._jitter_source = random.Random(self.core._rng(16))
        return (source.getrandbits(16) + 1) / 65537 * REKEY_TIMEOUT_JITTER_MAX

    def _t_data_sent(self: Tunnel, now: float) -> None:
        if self._new_handshake_at is None:
            self._new_handshake_at = self._arm(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter())

    def _t_data_received(self: Tunnel, now: float) -> None:
        if self._keepalive_at is None:
            self._keepalive_at = self._arm(now + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def _t_any_sent(self: Tunnel) -> None:
        self._keepalive_at = None

    def _t_any_received(self: Tunnel) -> None:
        self._new_handshake_at = None

    def _t_traversal(self: Tunnel, now: float) -> None:
        if self.persistent_keepalive:
            self._persistent_at = self._arm(now + self.persistent_keepalive)

    def _t_handshake_initiated(self: Tunnel, now: float) -> None:
        self._retransmit_at = self._arm(now + REKEY_TIMEOUT + self._jitter())

    def _t_handshake_complete(self: Tunnel, now: float) -> None:
        self._retransmit_at = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.handshakes += 1
        self.last_handshake_wall = now + self.core.wall_offset

    def _t_session_derived(self: Tunnel, now: float) -> None:
        self._zero_at = self._arm(now + 3 * REJECT_AFTER_TIME)

    def next_deadline(self: Tunnel) -> float:
        return min(self._retransmit_at or _INF, self._keepalive_at or _INF, self._new_handshake_at or _INF,
                   self._zero_at or _INF, self._persistent_at or _INF)

    def fire_timers(self: Tunnel, *, now: float) -> None:
        """Run every timer of this peer whose deadline has passed."""
        core = self.core
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit_at = None
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # Give up: drop staged packets, and make sure keys get zeroed eventually.
                core.events.append(HandshakeGaveUp(self.public_key))
                self._keepalive_at = None
                if self.staged:
                    core.drops[Drop.HANDSHAKE_GAVE_UP] += len(self.staged)
                    self.staged.clear()
                self._drop_handshake()
                if self._zero_at is None:
                    self._zero_at = self._arm(now + 3 * REJECT_AFTER_TIME)
            else:
                self.handshake_attempts += 1
                self.initiate(now=now, retry=True)
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._keepalive_at = None
            self.send_keepalive(now=now)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self._keepalive_at = self._arm(now + KEEPALIVE_TIMEOUT)
        if self._new_handshake_at is not None and now >= self._new_handshake_at:
            # Data sent, nothing heard for KEEPALIVE + REKEY_TIMEOUT: try a new handshake.
            self._new_handshake_at = None
            self.initiate(now=now)
        if self._zero_at is not None and now >= self._zero_at:
            self._zero_at = None
            self.zero_keys()
            core.events.append(KeysZeroed(self.public_key))
        if self._persistent_at is not None and now >= self._persistent_at:
            self._persistent_at = None
            if self.persistent_keepalive:
                self.send_keepalive(now=now)

    def set_persistent_keepalive(self: Tunnel, interval: int, *, now: float) -> None:
        """Change the interval; a non-zero interval sends a keepalive (and so a handshake) at once."""
        self.persistent_keepalive = interval
        if interval:
            self.send_keepalive(now=now)
        else:
            self._persistent_at = None
