"""TUN/TAP devices: the kernel side of pyvpn's data path.

Theory of operation
-------------------

1. :func:`open_tun` opens ``/dev/net/tun`` through python-pytun (the only module of pyvpn that imports
   ``pytun``) with ``IFF_NO_PI`` always, so a read returns a bare IP packet (tun) or Ethernet frame (tap).
2. With ``vnet_hdr=True`` it also asks for ``IFF_VNET_HDR``, sets the header size with ``TUNSETVNETHDRSZ`` and
   enables offloads with ``TUNSETOFFLOAD``: checksum, TSO for IPv4 and IPv6, and USO when the kernel accepts it.
   The kernel may then hand us TCP/UDP *super-packets* of up to 64 KiB, each behind a ``virtio_net_hdr``
   (``tunnel/offload/`` parses and segments those), and accepts super-packets back.  If the kernel refuses
   any of it, the device is closed (which removes it) and opened again without the header:
   :attr:`PytunDevice.vnet_hdr` and :attr:`PytunDevice.offloads` say what is really on.
3. The fd is non-blocking.  :meth:`PytunDevice.read_batch` drains it until ``EAGAIN`` (or a bound);
   :meth:`PytunDevice.write_batch` writes a list and counts, rather than raises, per-packet refusals.
4. Bring-up (link up, addresses, routes) belongs to :mod:`tunnel.netconf`; only the MTU and the transmit
   queue length (:func:`set_txqueuelen`) are set here.
5. :meth:`PytunDevice.close` closes the fd, which removes the (never persistent) device.

How the data path uses the offloads (decided once per device by :func:`configure_tun`, as a :class:`TunMode`):

* **Reads** (:func:`read_packets`): with a vnet header, plain buffers lose it and super-packets (only with
  TSO reads) are cut by :func:`tunnel.offload.segment`, so the caller sees plain IP packets or frames.
  TSO reads are off by default: ``TUNSETOFFLOAD(0)`` after open makes the kernel segment and checksum in C,
  which measured cheaper than segmenting in Python (benchmarks/results-by-commit.md); ``PYVPN_TSO_READS=1``
  turns them back on.
* **Writes** (:func:`write_packets`): plain packets or frames go in; runs of TCP segments (and UDP datagrams
  when the kernel took USO) leave as GSO super-packets (:func:`tunnel.offload.gro`,
  :func:`tunnel.offload.gro_frames`), everything else behind the all-zero header.  If the kernel refuses
  GSO writes with ``EINVAL``, GRO is switched off for good and the returned mode says so.

virtio_net_hdr size: **10 bytes** (``struct virtio_net_hdr``: flags u8, gso_type u8, hdr_len u16, gso_size
u16, csum_start u16, csum_offset u16, all little-endian on x86/arm).  The 12-byte variant adds ``num_buffers``,
which only matters for mergeable receive buffers in virtio devices and is always 1 for us; wireguard-go and the
kernel's own default (``TUNSETVNETHDRSZ`` unset) use 10, so we set 10 explicitly and export it as
:data:`VNET_HDR_SIZE`.

``TUN_F_TSO_ECN`` is deliberately not requested: it would hand us super-packets with CWR set that need special
segmentation rules; without it the kernel segments those itself before they reach us.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import platform
import select
import struct
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Protocol, Self, runtime_checkable

import pytun  # type: ignore[import-not-found, unused-ignore]  # C extension without stubs

from tunnel.offload import VIRTIO_NET_HDR_LEN, gro, gro_frames, split_reads

__all__ = [
    "MAX_PACKET_SIZE",
    "TSO_READS_DEFAULT",
    "TUN_TXQUEUELEN",
    "OFFLOAD_CSUM",
    "OFFLOAD_TSO4",
    "OFFLOAD_TSO6",
    "OFFLOAD_USO",
    "VNET_HDR_SIZE",
    "PytunDevice",
    "TunDevice",
    "TunError",
    "TunMode",
    "configure_tun",
    "open_tun",
    "read_packets",
    "set_txqueuelen",
    "tun_buffers",
    "tune_allocator",
    "write_packets",
]

log = logging.getLogger(__name__)

# -- implementation constants -------------------------------------------------------------------------------

#: Size of the ``struct virtio_net_hdr`` in front of every packet when ``vnet_hdr`` is on (see module docstring).
VNET_HDR_SIZE = VIRTIO_NET_HDR_LEN
#: Largest IP packet (or super-packet) a read can return, without the vnet header.
MAX_PACKET_SIZE = 65535
#: Room for an Ethernet header plus one VLAN tag on tap devices.
_L2_ROOM = 14 + 4
#: Linux IFNAMSIZ - 1.
_IFNAME_MAX = 15

#: Names used in :attr:`TunDevice.offloads`.
OFFLOAD_CSUM = "csum"
OFFLOAD_TSO4 = "tso4"
OFFLOAD_TSO6 = "tso6"
OFFLOAD_USO = "uso"

# -- kernel constants (include/uapi/linux/if_tun.h) ---------------------------------------------------------

_IFF_TUN = 0x0001
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_IFF_MULTI_QUEUE = 0x0100

_TUN_F_CSUM = 0x01
_TUN_F_TSO4 = 0x02
_TUN_F_TSO6 = 0x04
_TUN_F_USO4 = 0x20
_TUN_F_USO6 = 0x40


def _ioc(direction: str, nr: int, size: int) -> int:
    """Encode a ``'T'`` ioctl number the way ``_IOR``/``_IOW`` do on this architecture.

    Most architectures (x86, arm, riscv, s390) use 2 direction bits (write=1, read=2) above 14 size bits;
    alpha, mips, powerpc and sparc use 3 direction bits (none=1, read=2, write=4) above 13 size bits.

    :param direction: ``"r"`` (``_IOR``) or ``"w"`` (``_IOW``).
    :param nr: command number.
    :param size: size of the argument type in bytes.
    """
    machine = platform.machine()
    if machine.startswith(("mips", "ppc", "powerpc", "sparc", "alpha")):
        bits = 2 if direction == "r" else 4
        return (bits << 29) | (size << 16) | (ord("T") << 8) | nr
    bits = 2 if direction == "r" else 1
    return (bits << 30) | (size << 16) | (ord("T") << 8) | nr


_TUNGETFEATURES = _ioc("r", 207, 4)
_TUNSETOFFLOAD = _ioc("w", 208, 4)
_TUNSETVNETHDRSZ = _ioc("w", 216, 4)
_TUNGETIFF = _ioc("r", 210, 4)
_IFREQ_SIZE = 40  # struct ifreq: IFNAMSIZ name + a 24-byte union

#: Errors from a single tun write that drop that packet only (counted in ``write_errors``).
_WRITE_DROP_ERRNOS = frozenset(
    {errno.ENOBUFS, errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.EFAULT, errno.EAGAIN, errno.ENOMEM}
)


class TunError(OSError):
    """A TUN/TAP device could not be opened or configured (missing ``/dev/net/tun``, no permission, ...)."""


@runtime_checkable
class TunDevice(Protocol):
    """What the data path needs from a TUN/TAP device (modelled on wireguard-go's ``tun.Device``).

    Buffers are whole packets: IP packets for tun, Ethernet frames for tap, each preceded by a
    :data:`VNET_HDR_SIZE`-byte ``virtio_net_hdr`` when :attr:`vnet_hdr` is true.
    """

    @property
    def name(self) -> str:
        """Interface name as the kernel knows it."""

    @property
    def mtu(self) -> int:
        """Interface MTU at open time (or as last set through this object)."""

    @property
    def vnet_hdr(self) -> bool:
        """True when every read/write buffer starts with a virtio_net_hdr."""

    @property
    def offloads(self) -> frozenset[str]:
        """Offloads that are on: a subset of ``{"csum", "tso4", "tso6", "uso"}``; empty without vnet_hdr."""

    def fileno(self) -> int:
        """File descriptor to wait on for readability (``loop.add_reader``)."""

    def read_batch(self, max_packets: int) -> list[bytes]:
        """Read up to ``max_packets`` buffers without blocking; ``[]`` when nothing is queued.

        :param max_packets: upper bound on the number of buffers returned.
        """

    def write_batch(self, packets: list[bytes]) -> int:
        """Write each buffer; return how many the kernel accepted (refusals are counted, not raised).

        :param packets: buffers in the same format :meth:`read_batch` returns.
        """

    def close(self) -> None:
        """Close the device; a non-persistent device disappears.  Calling it twice is harmless."""


class PytunDevice:
    """A TUN/TAP device opened by :func:`open_tun`; implements :class:`TunDevice`.

    Extra attributes: ``tap`` (bool), ``multi_queue`` (bool), ``write_errors`` (a :class:`Counter` keyed by
    errno name, one per refused packet) and ``fallback_reason`` (why vnet_hdr was switched off, or ``None``).
    """

    def __init__(
        self,
        dev: pytun.TunTapDevice,
        *,
        tap: bool,
        vnet_hdr: bool,
        offloads: frozenset[str],
        multi_queue: bool,
        fallback_reason: str | None = None,
    ) -> None:
        """Wrap an open pytun device; use :func:`open_tun` instead of calling this.

        :param dev: the open pytun device (its fd must already be non-blocking).
        :param tap: True for a tap (Ethernet) device.
        :param vnet_hdr: True when IFF_VNET_HDR is on.
        :param offloads: offload names that were accepted.
        :param multi_queue: True when IFF_MULTI_QUEUE is on.
        :param fallback_reason: why a requested vnet_hdr was dropped, if it was.
        """
        self._dev: pytun.TunTapDevice | None = dev
        self._fd: int = dev.fileno()
        self._readable = select.poll()  # read_batch: is more queued after the first read?
        self._readable.register(self._fd, select.POLLIN)
        self._name: str = dev.name
        self._mtu: int = dev.mtu
        self._vnet_hdr = vnet_hdr
        self._offloads = offloads
        self.tap = tap
        self.multi_queue = multi_queue
        self.fallback_reason = fallback_reason
        self.write_errors: Counter[str] = Counter()
        self._bufsize = MAX_PACKET_SIZE + (_L2_ROOM if tap else 0) + (VNET_HDR_SIZE if vnet_hdr else 0)

    def __repr__(self) -> str:
        kind = "tap" if self.tap else "tun"
        return f"<PytunDevice {kind} {self._name} mtu={self._mtu} vnet_hdr={self._vnet_hdr} fd={self._fd}>"

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu(self) -> int:
        return self._mtu

    @mtu.setter
    def mtu(self, value: int) -> None:
        _check_mtu(value)
        dev = self._require_open()
        try:
            dev.mtu = value
        except OSError as exc:
            raise TunError(exc.errno, f"cannot set MTU {value} on {self._name}: {exc.strerror}") from exc
        self._mtu = value

    @property
    def vnet_hdr(self) -> bool:
        return self._vnet_hdr

    @property
    def offloads(self) -> frozenset[str]:
        return self._offloads

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._dev is None

    def fileno(self) -> int:
        self._require_open()
        return self._fd

    def attached(self) -> bool:
        """Whether the interface behind our fd still exists, in whatever network namespace it is now.

        Asks the fd itself (``TUNGETIFF``), not the name: a tun moved to another namespace (``ip link set
        IFACE netns NS``, WireGuard's namespace integration) vanishes from ours but keeps working, while a
        deleted one (``ip link del``) detaches the fd, and the ioctl then fails with ``EBADFD``.
        """
        if self._dev is None:
            return False
        try:
            fcntl.ioctl(self._fd, _TUNGETIFF, bytes(_IFREQ_SIZE))
        except OSError as exc:
            if exc.errno in (errno.EBADFD, errno.EBADF, errno.ENODEV):
                return False
            raise
        return True

    def read_batch(self, max_packets: int) -> list[bytes]:
        self._require_open()
        fd, size = self._fd, self._bufsize
        try:
            out = [os.read(fd, size)]
        except BlockingIOError:
            return []
        # A lone packet (a ping) is common: ask poll(0) whether more is queued instead of ending every drain
        # with an EAGAIN exception, which costs 3 times a poll on a cold start (benchmarks/latency-results.md).
        if max_packets > 1 and self._readable.poll(0):
            try:
                # the loop runs in C: list.extend keeps what was read before EAGAIN ends the map
                out.extend(map(os.read, repeat(fd, max_packets - 1), repeat(size)))
            except BlockingIOError:
                pass
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        self._require_open()
        fd, write = self._fd, os.write
        written = 0
        for pkt in packets:
            try:
                write(fd, pkt)
                written += 1
            except OSError as exc:
                if exc.errno not in _WRITE_DROP_ERRNOS:
                    raise
                self.write_errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
        return written

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            dev.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> pytun.TunTapDevice:
        if self._dev is None:
            raise TunError(errno.EBADF, f"tun device {self._name} is closed")
        return self._dev


def _check_mtu(mtu: int) -> None:
    if not isinstance(mtu, int) or not 68 <= mtu <= MAX_PACKET_SIZE:
        raise ValueError(f"MTU must be an int in 68..{MAX_PACKET_SIZE}, got {mtu!r}")


def _as_tun_error(exc: OSError, what: str, name: str, dev_path: str = "/dev/net/tun") -> TunError:
    code = exc.errno
    if code == errno.ENOENT:
        msg = f"{what} {name!r}: {dev_path} does not exist (load the 'tun' module or create the node)"
    elif code in (errno.EPERM, errno.EACCES):
        msg = f"{what} {name!r}: permission denied (needs root or CAP_NET_ADMIN)"
    elif code == errno.EBUSY:
        msg = f"{what} {name!r}: a tun/tap device with that name exists and is in use"
    elif code == errno.EINVAL:
        msg = f"{what} {name!r}: invalid argument (a non-tun interface has that name, or a flag was refused)"
    else:
        msg = f"{what} {name!r}: {exc.strerror or exc}"
    return TunError(code, msg)


def _features(fd: int) -> int:
    buf = fcntl.ioctl(fd, _TUNGETFEATURES, b"\0\0\0\0")
    return int(struct.unpack("I", buf)[0])


def _enable_vnet_hdr(fd: int) -> frozenset[str]:
    """Set the header size and the offloads on an IFF_VNET_HDR fd; raise OSError if refused."""
    fcntl.ioctl(fd, _TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
    base = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6
    names = {OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6}
    try:
        fcntl.ioctl(fd, _TUNSETOFFLOAD, base | _TUN_F_USO4 | _TUN_F_USO6)
        names.add(OFFLOAD_USO)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fcntl.ioctl(fd, _TUNSETOFFLOAD, base)  # kernels before 6.2 have no USO
    return frozenset(names)


def _create(name: str, flags: int, dev_path: str) -> pytun.TunTapDevice:
    try:
        dev = pytun.TunTapDevice(name=name, flags=flags, dev=dev_path)
    except OSError as exc:
        raise _as_tun_error(exc, "cannot create tun/tap device", name, dev_path) from exc
    return dev


def open_tun(
    name: str,
    *,
    tap: bool = False,
    mtu: int = 1420,
    vnet_hdr: bool = False,
    multi_queue: bool = False,
    dev_path: str = "/dev/net/tun",
) -> PytunDevice:
    """Create (or attach to) a TUN or TAP device with a non-blocking fd.

    The device is not persistent: closing it removes it.  On any failure after creation the fd is closed, so
    no device is left behind.  Link state and addresses are left to :mod:`tunnel.netconf`.

    :param name: interface name (1..15 bytes); a ``%d`` pattern lets the kernel pick a number.
    :param tap: True for a TAP (Ethernet frames) device, False for TUN (IP packets).
    :param mtu: MTU to set on the interface.
    :param vnet_hdr: ask for a virtio_net_hdr on every buffer plus checksum/TSO/USO offloads; falls back to
        plain buffers when the kernel refuses (check :attr:`PytunDevice.vnet_hdr`).
    :param multi_queue: open with IFF_MULTI_QUEUE (calling this again with the same name adds a queue).
    :param dev_path: the clone device; only tests change it.
    :raises TunError: /dev/net/tun missing, permission denied, name busy, MTU refused.
    :raises ValueError: a bad name or MTU.
    """
    if not name or len(name.encode()) > _IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"bad interface name {name!r} (1..{_IFNAME_MAX} bytes, no '/' or spaces)")
    _check_mtu(mtu)
    flags = (_IFF_TAP if tap else _IFF_TUN) | _IFF_NO_PI | (_IFF_MULTI_QUEUE if multi_queue else 0)

    offloads: frozenset[str] = frozenset()
    fallback: str | None = None
    dev: pytun.TunTapDevice | None = None
    if vnet_hdr:
        dev = _create(name, flags | _IFF_VNET_HDR, dev_path)
        try:
            if not _features(dev.fileno()) & _IFF_VNET_HDR:
                raise OSError(errno.EOPNOTSUPP, "kernel reports no IFF_VNET_HDR support")
            offloads = _enable_vnet_hdr(dev.fileno())
        except OSError as exc:
            fallback = f"vnet_hdr refused: {exc.strerror or exc}"
            log.info("tun %s: %s; reopening without offloads", name, fallback)
            dev.close()  # removes the device, so the plain open below starts clean
            dev = None
            offloads = frozenset()
    if dev is None:
        dev = _create(name, flags, dev_path)
    try:
        os.set_blocking(dev.fileno(), False)
        if dev.mtu != mtu:
            dev.mtu = mtu
    except OSError as exc:
        actual = dev.name
        dev.close()
        raise _as_tun_error(exc, f"cannot configure (mtu={mtu})", actual) from exc
    return PytunDevice(
        dev,
        tap=tap,
        vnet_hdr=vnet_hdr and fallback is None,
        offloads=offloads,
        multi_queue=multi_queue,
        fallback_reason=fallback,
    )


# -- how the data path uses a device's offloads -------------------------------------------------------------

#: Whether the tun hands us TSO super-packets to segment in Python (see :func:`configure_tun`).  Off by
#: default: measured, cutting them here costs more than the kernel's software GSO plus one read per packet.
#: ``PYVPN_TSO_READS=1`` turns it on (benchmarks and tests compare both).
TSO_READS_DEFAULT = os.environ.get("PYVPN_TSO_READS", "") == "1"
_VNET_NONE = bytes(VNET_HDR_SIZE)  # GSO_NONE, no flags: the kernel checks the checksums itself


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

    :param tun: a :class:`PytunDevice` (the ioctl is only tried on a real tun) or a fake.
    :param tso_reads: keep the kernel's TSO/CSUM offloads on the read side.
    """
    if not getattr(tun, "vnet_hdr", False):
        return TunMode()
    offloads = frozenset(getattr(tun, "offloads", ()) or ())
    uso = OFFLOAD_USO in offloads
    if not tso_reads and isinstance(tun, PytunDevice):
        try:
            fcntl.ioctl(tun.fileno(), _TUNSETOFFLOAD, 0)
        except OSError as e:  # keep whatever the kernel gave us; segment() copes with all of it
            log.info("%s: cannot switch read offloads off (%s); segmenting in Python", tun.name, e)
            tso_reads = True
    return TunMode(vnet_hdr=True, tso_reads=tso_reads and bool(offloads), gro_tcp=True, gro_udp=uso)


def read_packets(bufs: list[bytes], mode: TunMode, *, l2: bool = False) -> tuple[list[bytes], int, int]:
    """The plain IP packets (or Ethernet frames, ``l2``) in a batch of reads from a device in ``mode``.

    :param bufs: what :meth:`TunDevice.read_batch` returned.
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


#: The tun's transmit queue (packets the kernel queues for us to read).  The default, 500, overflows when the
#: daemon is off-CPU for a moment during a TCP burst (every drop there is a TCP loss, since the tun gives no
#: backpressure to the qdisc); 2000 measured without retransmits (benchmarks/results-by-commit.md).
TUN_TXQUEUELEN = 2000
_SIOCSIFTXQLEN = 0x8943  # linux/sockios.h


def set_txqueuelen(name: str, qlen: int = TUN_TXQUEUELEN) -> bool:
    """Set the transmit queue length of interface ``name`` in this network namespace (best effort).

    :returns: False (logged at debug level) when the kernel refuses or the interface is not here.
    """
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), _SIOCSIFTXQLEN, struct.pack("16si12x", name.encode(), qlen))
    except (OSError, ValueError) as e:
        log.debug("%s: cannot set txqueuelen %d: %s", name, qlen, e)
        return False
    return True


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
