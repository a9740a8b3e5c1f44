"""Token buckets for handshakes under load (kernel ``ratelimiter.c``, wireguard-go ``ratelimiter/``).

Sans-IO like the rest of ``crypto/``: every call takes ``now`` (seconds, monotonic).

- :func:`source_key` says who a source is: an IPv4 address, or the /64 of an IPv6 address
  (as the kernel does: one host normally owns a whole /64, so limiting per /128 would let it
  take 2^64 buckets).
- :class:`TokenBucket` is one bucket (``rate`` tokens a second, at most ``burst``).
- :class:`RateLimiter` is a bucket per source, :class:`QuietSources` a last-seen time per
  source, each in a bounded :class:`LruTable`: one float per source in an ``OrderedDict`` in
  least-recently-used order, so every operation is O(1).  Each call forgets at most
  :data:`GC_PER_CALL` expired entries at the front (incremental, like the kernel's
  once-a-second sweep but without a pause); a new source in a full table evicts the least
  recently used entry.  Memory: at most ``max_sources`` entries (benchmarks/results-by-commit.md).
- A bucket is kept as its *theoretical arrival time* (GCRA, the cell-rate form of a token
  bucket): ``tat`` advances by ``1/rate`` per packet allowed, and a packet is allowed while
  ``tat - now ≤ (burst - 1) / rate``.  Once ``tat ≤ now`` the bucket is full, the same as
  absent, so forgetting it changes no decision.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Hashable
from itertools import accumulate

from .constants import RATELIMIT_BURST, RATELIMIT_MAX_SOURCES, RATELIMIT_PACKETS_PER_SECOND
from .drops import Drop

GC_PER_CALL = 2  # expired entries forgotten per call at most: amortised O(1), never a long pause


def source_key(host: object) -> Hashable:
    """The rate-limiting identity of a source host: the IPv4 address itself, or the /64 of an
    IPv6 address (``("v6", upper 64 bits)``; a ``%scope`` suffix is ignored).  Anything else (tests
    use opaque endpoints) is its own key.

    :param host: the host part of an endpoint, as the UDP adapter gives it (IPv4-mapped
        addresses already turned into IPv4).
    """
    if isinstance(host, str) and ":" in host:
        # Fast path for the common case: the first four groups are written out (the kernel's
        # canonical form compresses zeros with "::" only where they are).
        g = host.split(":", 4)
        if len(g) == 5 and g[0] and g[1] and g[2] and g[3] and max(map(len, g[:4])) <= 4:
            try:
                return ("v6", int(g[0], 16) << 48 | int(g[1], 16) << 32 | int(g[2], 16) << 16 | int(g[3], 16))
            except ValueError:
                pass
        try:
            return ("v6", int(ipaddress.IPv6Address(host.split("%", 1)[0])) >> 64)
        except ValueError:
            return host
    return host


class TokenBucket:
    """One token bucket: ``rate`` tokens a second, at most ``burst`` saved up; starts full.  Used for
    handshakes here, and by vpn/ for per-peer rate limits (:mod:`vpn.policy`) and L2 storm control
    (:class:`vpn.l2.switch.Switch`).

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


class LruTable:
    """A float per source, in least-recently-used order, at most ``max_sources`` of them."""

    def __init__(self, max_sources: int) -> None:
        if max_sources < 1:
            raise ValueError("a table needs max_sources >= 1")
        self._max_sources = max_sources
        self._table: OrderedDict[Hashable, float] = OrderedDict()
        self.evicted = 0  # entries pushed out of a full table

    def _expire(self, horizon: float, limit: int | None = GC_PER_CALL) -> None:
        """Forget entries at the front whose value is at most ``horizon`` (``limit`` at most)."""
        table = self._table
        n = 0
        while table and (limit is None or n < limit):
            key, value = next(iter(table.items()))
            if value > horizon:
                return
            del table[key]
            n += 1

    def _get(self, source: Hashable) -> float | None:
        value = self._table.get(source)
        if value is not None:
            self._table.move_to_end(source)
        return value

    def _put(self, source: Hashable, value: float) -> None:
        table = self._table
        if source not in table and len(table) >= self._max_sources:
            table.popitem(last=False)
            self.evicted += 1
        table[source] = value

    def __len__(self) -> int:
        return len(self._table)


class RateLimiter(LruTable):
    """A token bucket per source (kernel ``ratelimiter.c``: 20 packets/s, burst 5), O(1) per call.

    :param rate: tokens a second per source.
    :param burst: bucket size; a new source starts with a full bucket.
    :param max_sources: table bound; a new source in a full table evicts the least recently
        used one (counted in :attr:`evicted`).  Memory is O(max_sources) whatever arrives.
    """

    def __init__(self, rate: float = RATELIMIT_PACKETS_PER_SECOND, burst: int = RATELIMIT_BURST,
                 max_sources: int = RATELIMIT_MAX_SOURCES) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        super().__init__(max_sources)
        self._cost = 1.0 / rate
        self._tolerance = (burst - 1) * self._cost + 1e-9  # 1 ns of slack for float rounding

    def allow(self, source: Hashable, *, now: float) -> bool:
        """Count one packet from ``source``; whether its bucket had a token for it."""
        self._expire(now)  # full buckets
        tat = self._get(source)
        if tat is None or tat < now:
            tat = now
        if tat - now <= self._tolerance:
            self._put(source, tat + self._cost)
            return True
        return False

    def gc(self, *, now: float) -> None:
        """Forget every full bucket at the front at once (tests; :meth:`allow` does it incrementally)."""
        self._expire(now, limit=None)


class QuietSources(LruTable):
    """Which sources have been silent for ``interval`` seconds (a last-seen time per source).

    A source evicted from a full table looks quiet early; the caller's budget still bounds it.
    """

    def __init__(self, interval: float, max_sources: int = RATELIMIT_MAX_SOURCES) -> None:
        if interval <= 0:
            raise ValueError("QuietSources needs interval > 0")
        super().__init__(max_sources)
        self._interval = interval

    def seen(self, source: Hashable, *, now: float) -> bool:
        """Record one packet from ``source``; whether it was quiet (unseen for ``interval``) before it."""
        horizon = now - self._interval
        self._expire(horizon)
        last = self._get(source)
        self._put(source, now if last is None else max(last, now))
        return last is None or last <= horizon


class HandshakeLimiter:
    """Which handshakes with a valid mac2 may cost a DH while the interface is under load.

    1. Per source (IPv4 address / IPv6 /64), the kernel's bucket: 20/s, burst 5.  A flood's
       sources are each held to that.
    2. In total, so that many sources together cannot take the CPU: a handshake from a source
       that sent none for ``quiet_interval`` seconds (a client's try with its new cookie, or
       its retry after REKEY_TIMEOUT) uses the *quiet* budget; every other one uses the
       *shared* budget.  A flood's sources keep sending, so they are never quiet and exhaust
       only the shared budget, while a legitimate client still gets through.  To compete for
       the quiet budget, an attacker must receive cookies on more than
       ``quiet_rate × quiet_interval`` addresses and send from each no more often than a
       client does; the DH work stays bounded either way.

    :param rate: / :param burst: per-source bucket.
    :param shared_rate: handshakes a second for busy sources together (burst: one second's).
    :param quiet_rate: handshakes a second for quiet sources together (burst: one second's).
    :param quiet_interval: how long a source must have sent no handshake to count as quiet.
    """

    def __init__(self, *, rate: float = RATELIMIT_PACKETS_PER_SECOND, burst: int = RATELIMIT_BURST,
                 shared_rate: float, quiet_rate: float, quiet_interval: float,
                 max_sources: int = RATELIMIT_MAX_SOURCES) -> None:
        self.per_source = RateLimiter(rate, burst, max_sources)
        self.quiet = QuietSources(quiet_interval, max_sources)
        self.shared_budget = TokenBucket(shared_rate, shared_rate)
        self.quiet_budget = TokenBucket(quiet_rate, quiet_rate)

    def check(self, source: Hashable, *, now: float) -> Drop | None:
        """``None`` if a handshake from ``source`` may go on now, else the drop reason
        (``Drop.RATE_LIMITED``: its own bucket is empty; ``Drop.HANDSHAKE_BUDGET``: the total is spent)."""
        was_quiet = self.quiet.seen(source, now=now)  # every attempt counts, refused ones too
        if not self.per_source.allow(source, now=now):
            return Drop.RATE_LIMITED
        if was_quiet and self.quiet_budget.take(now=now):
            return None
        if self.shared_budget.take(now=now):
            return None
        return Drop.HANDSHAKE_BUDGET
