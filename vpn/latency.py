"""What the daemon asks of the scheduler so that a lone packet is handled at once on a busy machine.

A lone packet (a ping, a DNS query, a keystroke) costs the daemon a wake-up at each hop: the loop thread
sleeps in ``epoll_wait``, the kernel wakes it, and it then waits for a CPU before it runs a few hundred
microseconds of Python.  On a busy CPU that wait dominated: with Linux's EEVDF scheduler (6.6+) a woken
task runs before the current one only if its virtual deadline is earlier, and with the default slice
(0.75 ms x (1 + log2 CPUs), 1.4 ms on 2 CPUs) it often is not, so the wake-up waited for the rest of
another task's slice (measured: ``benchmarks/latency-results.md``).

Since Linux 6.12 a normal (``SCHED_OTHER``) thread can ask for a shorter slice with ``sched_setattr``
(``sched_runtime``).  That gives no more CPU (the share still follows the nice weight) but an earlier
deadline, so the thread is picked as soon as it wakes.  :func:`request_slice` asks for
:data:`SLICE_DEFAULT`; ``PYVPN_SLICE_US`` overrides it (microseconds, ``0`` keeps the kernel's default).
Older kernels accept the call and ignore the runtime of a normal task; others refuse it (logged at debug).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct

__all__ = ["SLICE_DEFAULT", "request_slice", "slice_from_env"]

log = logging.getLogger("pyvpn.latency")

#: Scheduler slice requested for the daemon's loop thread, seconds (the kernel's minimum is 0.1 ms).
SLICE_DEFAULT = 100e-6
#: ``sched_setattr`` system call numbers (asm/unistd.h); the stdlib has no wrapper.
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "armv7l": 380, "riscv64": 274, "ppc64le": 355, "s390x": 345}
_SCHED_OTHER = 0
#: ``struct sched_attr`` (linux/sched/types.h), SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority,
#: runtime, deadline, period (ns), util_min, util_max.  Host byte order.
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")


def slice_from_env(default: float = SLICE_DEFAULT) -> float:
    """The slice from ``PYVPN_SLICE_US`` (microseconds, 0-100000), or ``default`` when unset or not a number."""
    text = os.environ.get("PYVPN_SLICE_US", "").strip()
    if not text:
        return default
    try:
        us = float(text)
    except ValueError:
        return default
    return max(0.0, min(us, 100_000.0)) / 1e6


def request_slice(seconds: float) -> bool:
    """Ask the scheduler for a custom slice for the calling thread (threads it creates later inherit it).

    ``sched_setattr(0, attr, 0)`` with ``SCHED_OTHER``, the thread's own nice value and ``sched_runtime``.

    :param seconds: the slice (the kernel clamps it to 0.1-100 ms); 0 or less does nothing.
    :returns: whether the kernel accepted the call (False on an unknown architecture too).
    """
    nr = _SYS_SCHED_SETATTR.get(platform.machine())
    if seconds <= 0 or nr is None:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        attr = ctypes.create_string_buffer(_SCHED_ATTR.pack(_SCHED_ATTR.size, _SCHED_OTHER, 0,
                                                            os.getpriority(os.PRIO_PROCESS, 0), 0,
                                                            int(seconds * 1e9), 0, 0, 0, 0))
        if int(libc.syscall(nr, 0, attr, 0)) == 0:
            return True
        err = ctypes.get_errno()
    except (OSError, AttributeError) as e:
        err = getattr(e, "errno", None) or 0
    log.debug("sched_setattr(slice %.0f us) refused: %s", seconds * 1e6, os.strerror(err) if err else "?")
    return False
