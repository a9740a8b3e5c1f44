"""Data-path stall detection: packets are waiting, yet nothing moves.

Theory of operation:

1. Once per housekeeping tick the device reports two things to :class:`StallDetector`: which of its inputs
   have something queued (``"tun"`` when the tun fd is readable, ``"udp"`` when the UDP socket is) and a
   progress counter (buffers read from the tun plus datagrams received, since start).  The detector is
   sans-IO: no clock, no fds; ``now`` comes in.
2. While the loop works, a readable fd is drained within milliseconds, so the counter moves between two
   ticks.  Queued input with a counter that has not moved for ``after`` seconds means the data path is stuck
   (a reader no longer registered or always failing, an fd the loop no longer polls): :meth:`update` returns
   a :class:`Stalled` once.  Idle (nothing queued) is never a stall.
3. When the counter moves again, or the queue empties, :meth:`update` returns :class:`Recovered` once.
4. A loop that does not run at all runs no ticks either; :class:`LoopWatchdog` covers that from a thread.

The device logs each transition (a WARNING for a stall) and reports :meth:`StallDetector.status` in its
snapshot, so ``pyvpn show`` says so too.
"""

from __future__ import annotations

import logging
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["STALL_AFTER", "LoopWatchdog", "Recovered", "StallDetector", "Stalled"]

#: Seconds of "queued but nothing moved" before the data path is reported as stalled.
STALL_AFTER = 5.0


@dataclass(frozen=True, slots=True)
class Stalled:
    """The data path has not moved for ``seconds`` while ``queued`` inputs had packets waiting."""

    queued: tuple[str, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class Recovered:
    """A stall ended after ``seconds``; ``moved`` is False when the queue emptied without progress."""

    seconds: float
    moved: bool


class StallDetector:
    """Decides, from periodic observations, when the data path is stalled (see the module docstring).

    :param after: seconds of queued-but-unmoved input before :class:`Stalled` is returned.
    """

    def __init__(self, after: float = STALL_AFTER) -> None:
        if after <= 0:
            raise ValueError(f"after must be positive, not {after!r}")
        self.after = after
        self.stalls = 0  # stalls reported since start
        self._progress: int | None = None
        self._stuck_since: float | None = None  # first tick that saw queued input and no progress
        self._stalled_at: float | None = None  # when Stalled was returned
        self._queued: tuple[str, ...] = ()

    @property
    def stalled(self) -> bool:
        return self._stalled_at is not None

    def update(self, *, now: float, queued: Iterable[str], progress: int) -> Stalled | Recovered | None:
        """Feed one observation; return a transition, or None.

        :param now: monotonic seconds.
        :param queued: names of the inputs that have packets waiting right now.
        :param progress: a counter that grows whenever the data path takes packets in.
        """
        waiting = tuple(sorted(set(queued)))
        moved = self._progress is not None and progress != self._progress
        first = self._progress is None
        self._progress = progress
        self._queued = waiting
        if moved or not waiting or first:
            self._stuck_since = None if (moved or not waiting) else now
            if self._stalled_at is not None:
                seconds, self._stalled_at = now - self._stalled_at, None
                return Recovered(seconds=seconds, moved=moved)
            return None
        if self._stuck_since is None:
            self._stuck_since = now
            return None
        stuck = now - self._stuck_since
        if self._stalled_at is None and stuck >= self.after:
            self._stalled_at = now
            self.stalls += 1
            return Stalled(queued=waiting, seconds=stuck)
        return None

    def status(self, now: float) -> dict[str, Any]:
        """For the snapshot: ``state`` ("ok" or "stalled"), ``seconds`` without progress while something was
        queued, ``queued`` inputs, ``stalls`` so far and the ``after`` threshold."""
        stuck = now - self._stuck_since if self._stuck_since is not None else 0.0
        return {"state": "stalled" if self.stalled else "ok", "seconds": round(stuck, 1),
                "queued": list(self._queued) if self._stuck_since is not None else [],
                "stalls": self.stalls, "after": self.after}


class LoopWatchdog:
    """A thread that notices when the event loop stops running altogether (blocked in a call).

    The loop calls :meth:`beat` from its housekeeping tick.  When no beat came for ``after`` seconds, the
    thread logs a WARNING with the loop thread's current stack (where it is stuck), once per blockage, and an
    INFO line when beats resume.

    :param name: interface name for the log lines.
    :param log: the logger.
    :param after: seconds without a beat before warning.
    :param clock: monotonic clock (tests may pass their own).
    """

    def __init__(self, name: str, log: logging.Logger, *, after: float = STALL_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.log, self.after, self.clock = name, log, after, clock
        self.blocked = 0  # blockages reported
        self._last = clock()
        self._warned = False
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self._last = self.clock()

    def start(self) -> None:
        """Start watching; the calling thread is the loop's thread."""
        self._loop_thread = threading.get_ident()
        self._last = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"pyvpn-watchdog-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(2.0)

    def _run(self) -> None:
        interval = min(1.0, self.after / 4)
        while not self._stop.wait(interval):
            idle = self.clock() - self._last
            if idle >= self.after and not self._warned:
                self._warned = True
                self.blocked += 1
                frame = sys._current_frames().get(self._loop_thread)
                where = "".join(traceback.format_stack(frame, limit=8)) if frame is not None else "(unknown)\n"
                self.log.warning("%s: data path stalled: the event loop has not run for %.0f s; it is in:\n%s",
                                 self.name, idle, where.rstrip())
            elif idle < self.after and self._warned:
                self._warned = False
                self.log.info("%s: the event loop runs again", self.name)


def readable(inputs: Iterable[tuple[str, Any]]) -> list[str]:
    """The labels of ``inputs`` (``(label, anything with fileno())``) with something waiting to be read right
    now, sorted (one zero-timeout poll); a closed one is skipped."""
    fds = {}
    for label, dev in inputs:
        try:
            fds[dev.fileno()] = label
        except (OSError, ValueError):
            continue
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return sorted(fds[fd] for fd, ev in poller.poll(0) if ev & select.POLLIN and fd in fds)
