"""Sliding-window replay protection (RFC 6479), the window of wireguard-go and the kernel.

A ring of 128 blocks of 64 bits; the window is (128 − 1) × 64 = 8128 counters.  The data
path calls :meth:`ReplayWindow.check` *before* decrypting (cheap rejection of replays) and
:meth:`ReplayWindow.accept` only *after* the tag has verified, so a forged packet can never
mark a counter as seen (wireguard-go ``receive.go``; boringtun ``session.rs``).
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES

BLOCK_BITS = 64
RING_BLOCKS = 128
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128
_BLOCK_MASK = RING_BLOCKS - 1
_BIT_MASK = BLOCK_BITS - 1


class ReplayWindow:
    __slots__ = ("_last", "_ring", "limit")

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self._last = 0
        self._ring = [0] * RING_BLOCKS
        self.limit = limit

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
        return not (self._ring[(counter >> 6) & _BLOCK_MASK] >> (counter & _BIT_MASK)) & 1

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
                ring[i & _BLOCK_MASK] = 0
            self._last = counter
        elif self._last - counter > WINDOW_SIZE:
            return False
        slot = index_block & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[slot]
        if old & bit:
            return False
        ring[slot] = old | bit
        return True
