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

How the data path reads and writes a device under its offloads (:class:`TunMode`,
:func:`configure_tun`, :func:`read_packets`, :func:`write_packets`) is in :mod:`tunnel.tunmode`.

virtio_net_hdr size: **10 bytes** (``struct virtio_net_hdr``: flags u8, gso_type u8, hdr_len u16, gso_size
u16, csum_start u16, csum_offset u16, all little-endian on x86/arm).  The 12-byte variant adds ``num_buffers``,
which only matters for mergeable receive buffers in virtio devices and is always 1 for us; wireguard-go and the
kernel's own default (``TUNSETVNETHDRSZ`` unset) use 10, so we set 10 explicitly
(:data:`tunnel.offload.VIRTIO_NET_HDR_LEN`).

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
from itertools import repeat
from typing import Protocol, Self, runtime_checkable

import pytun  # type: ignore[import-not-found, unused-ignore]  # C extension without stubs

from tunnel.offload import VIRTIO_NET_HDR_LEN
from tunnel.tunmode import OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_USO

__all__ = [
    "MAX_PACKET_SIZE",
    "TUN_TXQUEUELEN",
    "PytunDevice",
    "TunDevice",
    "TunError",
    "open_tun",
    "set_txqueuelen",
]

log = logging.getLogger(__name__)

# -- implementation constants -------------------------------------------------------------------------------

#: Largest IP packet (or super-packet) a read can return, without the vnet header.
MAX_PACKET_SIZE = 65535
#: Room for an Ethernet header plus one VLAN tag on tap devices.
_L2_ROOM = 14 + 4
#: Linux IFNAMSIZ - 1.
_IFNAME_MAX = 15

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
    :data:`~tunnel.offload.VIRTIO_NET_HDR_LEN`-byte ``virtio_net_hdr`` when :attr:`vnet_hdr` is true.
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
        self._bufsize = MAX_PACKET_SIZE + (_L2_ROOM if tap else 0) + (VIRTIO_NET_HDR_LEN if vnet_hdr else 0)

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

    def read_offloads_off(self) -> None:
        """``TUNSETOFFLOAD(0)``: the kernel segments and checksums before each read (GSO writes still work).

        :raises OSError: the kernel refused.
        """
        fcntl.ioctl(self.fileno(), _TUNSETOFFLOAD, 0)

    def read_batch(self, max_packets: int) -> list[bytes]:
        self._require_open()
        fd, size = self._fd, self._bufsize
        try:
            out = [os.read(fd, size)]
        except BlockingIOError:
            return []
        # A lone packet (a ping) is common: ask poll(0) whether more is queued instead of ending every drain
        # with an EAGAIN exception, which costs more than a poll on a cold start (benchmarks/latency-results.md).
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
    fcntl.ioctl(fd, _TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR_LEN))
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


