"""Sliding-window replay protection (RFC 6479), the window of wireguard-go and the kernel.

A ring of 128 blocks of 64 bits; the window is (128 − 1) × 64 = 8128 counters.  The data
path calls :meth:`ReplayWindow.check` *before* decrypting (cheap rejection of replays) and
:meth:`ReplayWindow.accept` only *after* the tag has verified, so a forged packet can never
mark a counter as seen (wireguard-go ``receive.go``; boringtun ``session.rs``).

The receive path's fast paths open a run of counters above :attr:`ReplayWindow.last` first and
mark them afterwards in one pass, with :meth:`ReplayWindow.mark_increasing` or
:meth:`ReplayWindow.mark_run`; both leave the window exactly as ``accept`` once per counter would.
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES

BLOCK_BITS = 64
RING_BLOCKS = 128
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128
_RING_MASK = RING_BLOCKS - 1
_BIT_MASK = BLOCK_BITS - 1


class ReplayWindow:
    __slots__ = ("_last", "_ring", "limit")

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self._last = 0
        self._ring = [0] * RING_BLOCKS
        self.limit = limit

    @property
    def last(self) -> int:
        """The highest counter marked so far (0 for a fresh window)."""
        return self._last

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReplayWindow):
            return NotImplemented
        return (self._last, self._ring, self.limit) == (other._last, other._ring, other.limit)

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> ReplayWindow:
        """An independent window in the same state."""
        w = ReplayWindow(self.limit)
        w._last = self._last
        w._ring = list(self._ring)
        return w

    def reset(self) -> None:
        self._last = 0
        self._ring = [0] * RING_BLOCKS

    def check(self, counter: int) -> bool:
        """Would ``counter`` be accepted?  Changes nothing."""
        if counter >= self.limit:
            return False
        if counter > self._last:
            return True
        if self._last - counter > WINDOW_SIZE:
            return False
        return not (self._ring[(counter >> 6) & _RING_MASK] >> (counter & _BIT_MASK)) & 1

    def accept(self, counter: int) -> bool:
        """Mark ``counter`` as seen; False if it is a replay or outside the window."""
        if counter >= self.limit:
            return False
        ring = self._ring
        index_block = counter >> 6
        if counter > self._last:
            current = self._last >> 6
            diff = min(index_block - current, RING_BLOCKS)
            for i in range(current + 1, current + diff + 1):
                ring[i & _RING_MASK] = 0
            self._last = counter
        elif self._last - counter > WINDOW_SIZE:
            return False
        slot = index_block & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[slot]
        if old & bit:
            return False
        ring[slot] = old | bit
        return True

    def mark_increasing(self, counters: list[int]) -> None:
        """Mark ``counters`` as seen: the same as ``self.accept(c)`` for each, in order.

        The data path's fast path: within a batch, a counter above everything the window has seen (and below
        its limit) needs no check, so :meth:`crypto.tunnel.Core.decapsulate` opens such messages first and marks
        their counters here afterwards, in one pass instead of two method calls per message.

        :param counters: strictly increasing, every one above the window's highest counter and below its limit
            (the caller guarantees it; nothing is checked).
        """
        if not counters:
            return
        ring = self._ring
        block = self._last >> 6
        mask = 0
        for c in counters:
            b = c >> 6
            if b != block:
                ring[block & _RING_MASK] |= mask
                mask = 0
                if b - block >= RING_BLOCKS:
                    ring[:] = [0] * RING_BLOCKS
                else:
                    for i in range(block + 1, b + 1):
                        ring[i & _RING_MASK] = 0
                block = b
            mask |= 1 << (c & _BIT_MASK)
        ring[block & _RING_MASK] |= mask
        self._last = counters[-1]

    def mark_run(self, first: int, count: int) -> None:
        """Mark the ``count`` consecutive counters from ``first`` as seen: :meth:`mark_increasing` for a range.

        Whole 64-bit blocks are set at once, so a run of 44 counters costs a few operations, not 44.

        :param first: above the window's highest counter; ``first + count - 1`` below its limit (the caller
            guarantees it; nothing is checked).
        :param count: at least 1.
        """
        ring = self._ring
        block = self._last >> 6
        last = first + count - 1
        top = last >> 6
        if top - block >= RING_BLOCKS:
            ring[:] = [0] * RING_BLOCKS
        else:
            for i in range(block + 1, top + 1):
                ring[i & _RING_MASK] = 0
        c = first
        while c <= last:
            b = c >> 6
            end = min(last, (b << 6) | _BIT_MASK)
            bits = end - c + 1
            ring[b & _RING_MASK] |= ((1 << bits) - 1) << (c & _BIT_MASK)
            c = end + 1
        self._last = last
