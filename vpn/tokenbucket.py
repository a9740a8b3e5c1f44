"""A token bucket, pure (time comes in as ``now=``): per-peer rate limits (:mod:`vpn.policy`) and L2 storm
control (:class:`vpn.l2.switch.Switch`)."""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

__all__ = ["TokenBucket"]


class TokenBucket:
    """One token bucket: ``rate`` tokens a second, at most ``burst`` saved up; starts full.  Pure.

    :param rate: tokens per second (> 0).
    :param burst: bucket size (>= 1).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> float:
        """The tokens at ``now`` (a clock going back adds none)."""
        tokens = self._tokens
        last = self._last
        if last is not None and now > last:
            tokens = min(self.burst, tokens + (now - last) * self.rate)
        self._last = now if last is None or now > last else last
        return tokens

    def take(self, *, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens if there are that many (all or none).

        :param now: monotonic time in seconds.
        :param n: tokens to take.
        """
        tokens = self._refill(now)
        if tokens >= n:
            self._tokens = tokens - n
            return True
        self._tokens = tokens
        return False

    def admit(self, packets: list[bytes], *, now: float) -> int:
        """With one token a byte (a rate limit in bytes, :mod:`vpn.policy`): how many packets from the
        start of ``packets`` fit; their bytes are taken, the rest are over the limit.  C-level loops.

        :param now: monotonic time in seconds.
        """
        tokens = self._refill(now)
        sums = list(accumulate(map(len, packets)))
        n = bisect_right(sums, tokens)
        self._tokens = tokens - sums[n - 1] if n else tokens
        return n
