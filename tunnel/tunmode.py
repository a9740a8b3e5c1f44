"""How the data path reads and writes a tun or tap under its offloads, decided once per device.

* **Mode** (:func:`configure_tun`): decided once per device, what the data path does with its offloads
  (a :class:`TunMode`); the read-side offloads are switched off unless asked for.
* **Reads** (:func:`read_packets`): with a vnet header, plain buffers lose it and super-packets (only with
  TSO reads) are cut by :func:`tunnel.offload.segment`, so the caller sees plain IP packets or frames.
  TSO reads are off by default: ``TUNSETOFFLOAD(0)`` after open makes the kernel segment and checksum in C,
  which measured cheaper than segmenting in Python (benchmarks/results-by-commit.md); ``PYVPN_TSO_READS=1``
  turns them back on.
* **Writes** (:func:`write_packets`): plain packets or frames go in; runs of TCP segments (and UDP datagrams
  when the kernel took USO) leave as GSO super-packets (:func:`tunnel.offload.gro`,
  :func:`tunnel.offload.gro_frames`), everything else behind the all-zero header.  If the kernel refuses
  GSO writes with ``EINVAL``, GRO is switched off for good and the returned mode says so.
* **Allocator** (:func:`tune_allocator`): 64 KiB reads and GRO writes churn glibc's heap; tuning
  ``mallopt`` once per process keeps those pages mapped.

The device itself (open, ioctls, batch ``read``/``write``) is :mod:`tunnel.tun`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from tunnel.offload import VIRTIO_NET_HDR_LEN, gro, gro_frames, split_reads

__all__ = [
    "OFFLOAD_CSUM",
    "OFFLOAD_TSO4",
    "OFFLOAD_TSO6",
    "OFFLOAD_USO",
    "TSO_READS_DEFAULT",
    "TunMode",
    "configure_tun",
    "read_packets",
    "tun_buffers",
    "tune_allocator",
    "write_packets",
]

log = logging.getLogger(__name__)

#: Names used in :attr:`tunnel.tun.TunDevice.offloads` (what the kernel accepted at open).
OFFLOAD_CSUM = "csum"
OFFLOAD_TSO4 = "tso4"
OFFLOAD_TSO6 = "tso6"
OFFLOAD_USO = "uso"

#: Whether the tun hands us TSO super-packets to segment in Python (see :func:`configure_tun`).  Off by
#: default: measured, cutting them here costs more than the kernel's software GSO plus one read per packet.
#: ``PYVPN_TSO_READS=1`` turns it on (benchmarks and tests compare both).
TSO_READS_DEFAULT = os.environ.get("PYVPN_TSO_READS", "") == "1"
_VNET_NONE = bytes(VIRTIO_NET_HDR_LEN)  # GSO_NONE, no flags: the kernel checks the checksums itself


@dataclass(frozen=True, slots=True)
class TunMode:
    """What the data path does with a tun's (or tap's) offloads (decided once, by :func:`configure_tun`).

    :param vnet_hdr: every read and write carries a virtio_net_hdr.
    :param tso_reads: the kernel may hand us TSO/USO super-packets and packets that need their checksum
        finished (``TUN_F_CSUM|TSO4|TSO6[|USO]``); otherwise it segments and checksums itself and every
        read is one finished packet.
    :param gro_tcp: merge TCP segments into super-packets on write.
    :param gro_udp: merge UDP datagrams into USO packets on write (the kernel knows USO).
    """

    vnet_hdr: bool = False
    tso_reads: bool = False
    gro_tcp: bool = False
    gro_udp: bool = False

    def names(self) -> list[str]:
        """Labels for ``pyvpn show``: ``tun:vnet_hdr``, ``tun:tso``, ``tun:gro``, ``tun:gro-udp``."""
        out = ["tun:vnet_hdr"] if self.vnet_hdr else []
        for flag, name in ((self.tso_reads, "tun:tso"), (self.gro_tcp, "tun:gro"), (self.gro_udp, "tun:gro-udp")):
            if flag:
                out.append(name)
        return out


def configure_tun(tun: Any, *, tso_reads: bool = TSO_READS_DEFAULT) -> TunMode:
    """Decide and apply how the data path uses ``tun``'s offloads.

    A tun without a vnet header gets plain reads and writes.  With one, writes always coalesce (the kernel
    takes GSO writes whatever ``TUNSETOFFLOAD`` says), UDP too when the kernel accepted USO at open time.
    Unless ``tso_reads``, the read-side offloads are switched off again with ``TUNSETOFFLOAD(0)``, so the
    kernel segments and checksums in C before the packets reach us.

    :param tun: a :class:`tunnel.tun.PytunDevice` (the ioctl is only tried on a real tun) or a fake.
    :param tso_reads: keep the kernel's TSO/CSUM offloads on the read side.
    """
    if not getattr(tun, "vnet_hdr", False):
        return TunMode()
    offloads = frozenset(getattr(tun, "offloads", ()) or ())
    uso = OFFLOAD_USO in offloads
    read_offloads_off = getattr(tun, "read_offloads_off", None)  # a PytunDevice's TUNSETOFFLOAD(0)
    if not tso_reads and read_offloads_off is not None:
        try:
            read_offloads_off()
        except OSError as e:  # keep whatever the kernel gave us; segment() copes with all of it
            log.info("%s: cannot switch read offloads off (%s); segmenting in Python", tun.name, e)
            tso_reads = True
    return TunMode(vnet_hdr=True, tso_reads=tso_reads and bool(offloads), gro_tcp=True, gro_udp=uso)


def read_packets(bufs: list[bytes], mode: TunMode, *, l2: bool = False) -> tuple[list[bytes], int, int]:
    """The plain IP packets (or Ethernet frames, ``l2``) in a batch of reads from a device in ``mode``.

    :param bufs: what :meth:`tunnel.tun.TunDevice.read_batch` returned.
    :returns: ``(packets, short, bad)`` as :func:`tunnel.offload.split_reads` counts them: buffers that held
        no more than a vnet header, and super-packets that could not be segmented (both dropped).
    """
    if not mode.vnet_hdr:
        return bufs, 0, 0
    return split_reads(bufs, l2=l2)


def tun_buffers(packets: list[bytes], mode: TunMode, *, l2: bool = False) -> list[bytes]:
    """What to write to the tun for ``packets`` (plain IP packets trimmed to their length).

    :param mode: with a vnet header, TCP segments are merged into super-packets (:func:`tunnel.offload.gro`),
        UDP datagrams too with ``gro_udp``, and the rest get the all-zero header.
    :param l2: ``packets`` are Ethernet frames for a tap (:func:`tunnel.offload.gro_frames`).
    """
    if not mode.vnet_hdr:
        return packets
    if not (mode.gro_tcp or mode.gro_udp):
        return [_VNET_NONE + p for p in packets]
    return gro_frames(packets, udp=mode.gro_udp) if l2 else gro(packets, udp=mode.gro_udp)


def write_packets(tun: Any, packets: list[bytes], mode: TunMode, *, l2: bool = False) -> TunMode:
    """Write ``packets`` (plain IP packets, or Ethernet frames to a tap with ``l2``) to ``tun`` as
    :func:`tun_buffers` says; return the mode to keep.

    If the kernel refuses writes with ``EINVAL`` while GRO is on (a kernel that does not take our GSO
    headers), GRO is switched off for good: the caller keeps the returned mode, the refused buffers are
    lost once (TCP retransmits them) and every later packet goes out plain, behind a zero header.

    :param tun: the device (``write_batch``, and ``write_errors`` counted by errno name).
    :param mode: the current mode.
    """
    if not (mode.gro_tcp or mode.gro_udp):
        tun.write_batch([_VNET_NONE + p for p in packets] if mode.vnet_hdr else packets)
        return mode
    errors = getattr(tun, "write_errors", None)
    before = errors["EINVAL"] if errors is not None else 0
    bufs = tun_buffers(packets, mode, l2=l2)
    if tun.write_batch(bufs) < len(bufs) and errors is not None and errors["EINVAL"] > before:
        log.warning("%s: the kernel refused GSO writes (EINVAL); writing plain packets from now on",
                    getattr(tun, "name", "tun"))
        return TunMode(vnet_hdr=True, tso_reads=mode.tso_reads)
    return mode


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_allocator` sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_TRIM_THRESHOLD = 32 << 20  # give heap memory back to the kernel only when this much is free at the top
_TOP_PAD = 8 << 20  # grow the heap in steps of at least this much
_MMAP_THRESHOLD = 1 << 20  # 64 KiB tun reads and GRO buffers come from the heap, never from fresh mmaps
_allocator_tuned = False


def tune_allocator() -> bool:
    """Stop glibc from returning and re-faulting heap pages on every batch (process-wide, once).

    Every tun read allocates a 64 KiB buffer and every GRO write joins one; with glibc's defaults the top of
    the heap is trimmed and grown again all the time, and the page faults (zeroing fresh pages) cost about
    a fifth of the receive path's CPU time (benchmarks/results-by-commit.md).  The price is up to
    ``_TRIM_THRESHOLD`` bytes of heap kept after a burst.  Does nothing (returns False) where libc has no
    ``mallopt`` (musl) or it refuses.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD), (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)))
    _allocator_tuned = ok
    return ok
