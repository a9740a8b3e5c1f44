"""The UDP endpoint: one unconnected, non-blocking socket with GSO/GRO batching.

Theory of operation
-------------------

1. :meth:`UdpSocket.bind` creates one socket: AF_INET (``"v4"``), AF_INET6 with ``IPV6_V6ONLY=1`` (``"v6"``) or
   AF_INET6 with ``IPV6_V6ONLY=0`` (``"dual"``, where IPv4 peers appear as ``::ffff:a.b.c.d``).  It is never
   connected: a connected UDP socket receives ICMP errors, and one port-unreachable makes uvloop stop polling it
   for good (PROTOCOL-NOTES §3).  Buffers are made large (``SO_RCVBUFFORCE`` as root, else ``SO_RCVBUF``).
2. Receive: the event loop calls back when the fd is readable (:meth:`UdpSocket.attach`);
   :meth:`UdpSocket.recv_batch` then drains with ``recvmsg`` until ``EAGAIN`` or a bound.  With ``UDP_GRO``
   the kernel may hand us several same-size datagrams from one source glued together, with the segment size in
   a control message; we cut them apart.  Consecutive datagrams from one source form one batch entry.
   Addresses are normalized (:func:`normalize_addr`) so the rest of pyvpn always sees ``("198.18.0.1", port)``
   for IPv4 peers, whatever the socket family.
3. Send: :meth:`UdpSocket.send_batch` sends a list of datagrams to one destination.  Runs of equal-size datagrams
   (the last of a run may be shorter) go out in one ``sendmsg`` with a ``UDP_SEGMENT`` control message (at most
   :data:`GSO_MAX_SEGMENTS` segments and :data:`GSO_MAX_PAYLOAD` bytes a call); the kernel cuts them.
   Without GSO each datagram gets its own ``sendto``.
4. Errors stop here: a full buffer (``EAGAIN``/``ENOBUFS``), an unreachable destination, a firewall refusal ...
   are counted in :attr:`UdpSocket.errors` (and :attr:`UdpSocket.dropped` for lost outgoing datagrams), never
   raised.  Only programming errors (closed socket, bad address) raise.

GSO detection: ``getsockopt(UDP_SEGMENT)`` tells whether the kernel knows the option.  A send that fails with
``EIO`` (device without checksum offload) or ``ENOPROTOOPT`` switches GSO off for the socket's life, as does
``EINVAL`` before any GSO send has succeeded (old kernels).  Once GSO has worked, ``EINVAL`` means "this run is
not valid" (for instance segments larger than the route MTU), so that run alone falls back to ``sendto``.
In every case the run that failed is re-sent datagram by datagram, so nothing is lost by the detection.

The socket options, GSO limits and errno classes are in :mod:`tunnel.udpopts`, the address forms in
:mod:`tunnel.udpaddr`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, Self, runtime_checkable

from tunnel.udpaddr import _MAPPED_PREFIX, Addr, AddressError, Family, _host_family, normalize_addr, sockaddr
from tunnel.udpopts import (
    _GSO_UNSUPPORTED_ERRNOS,
    _RECV_BUFSIZE,
    _SO_MEMINFO,
    _SOCKET_BUFSIZE,
    _SOFT_RECV_ERRNOS,
    _SOFT_SEND_ERRNOS,
    GSO_MAX_PAYLOAD,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    _kernel_knows_gso,
    _set_bufsize,
    _try_setsockopt,
)

__all__ = ["UdpEndpoint", "UdpError", "UdpSocket"]

log = logging.getLogger(__name__)

_SOCKADDR_CACHE_MAX = 4096


class UdpError(OSError):
    """The UDP socket could not be created or bound."""


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


@runtime_checkable
class UdpEndpoint(Protocol):
    """What the data path needs from a UDP endpoint (modelled on wireguard-go's ``conn.Bind``).

    Implemented by :class:`UdpSocket` and by ``tunnel.testing.MemoryUdp``.
    """

    @property
    def port(self) -> int:
        """Local port."""

    @property
    def gso(self) -> bool:
        """True while send-side segmentation offload is used."""

    @property
    def gro(self) -> bool:
        """True when receive-side coalescing is on."""

    @property
    def errors(self) -> Counter[str]:
        """Counted, swallowed errors keyed ``"recv:ERRNO"`` / ``"send:ERRNO"``."""

    @property
    def dropped(self) -> int:
        """Outgoing datagrams that were dropped (buffer full, unreachable, refused)."""

    def fileno(self) -> int:
        """File descriptor to wait on for readability."""

    def recv_batch(self, max_datagrams: int) -> list[tuple[list[bytes], Addr]]:
        """Drain received datagrams, grouped by consecutive source.

        :param max_datagrams: stop once at least this many datagrams were collected.
        """

    def backlog_bytes(self) -> int:
        """Bytes the kernel holds for us, received but not read (0 if unknown)."""

    def send_batch(self, addr: Addr, datagrams: list[bytes]) -> None:
        """Send datagrams to one destination; failures are counted, not raised.

        :param addr: destination ``(host, port)``.
        :param datagrams: payloads, in order.
        """

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        """Call ``callback()`` from ``loop`` whenever the endpoint is readable."""

    def detach(self) -> None:
        """Undo :meth:`attach`; harmless when not attached."""

    def close(self) -> None:
        """Detach and release the endpoint; harmless twice."""


class UdpSocket:
    """An unconnected, non-blocking UDP socket with batched receive and send.  Implements :class:`UdpEndpoint`.

    Public attributes: :attr:`family`, :attr:`errors` (Counter), :attr:`dropped` (int), and two plain
    statistics: ``gso_sends`` (``sendmsg`` calls that carried a segment run) and ``gro_buffers`` (received
    buffers that held more than one datagram).
    """

    def __init__(self, sock: socket.socket, *, family: Family, gso: bool = True, gro: bool = True) -> None:
        """Take over an already bound, unconnected UDP socket; most callers want :meth:`bind`.

        :param sock: the socket (made non-blocking here).
        :param family: ``"v4"``, ``"v6"`` or ``"dual"``, matching how the socket was made.
        :param gso: try UDP GSO on send.
        :param gro: try UDP GRO on receive.
        """
        if family not in ("v4", "v6", "dual"):
            raise ValueError(f"family must be 'v4', 'v6' or 'dual', not {family!r}")
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self.family: Family = family
        self.errors: Counter[str] = Counter()
        self.dropped = 0
        self.gso_sends = 0
        self.gro_buffers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockaddr_cache: dict[tuple[str, int], tuple[Any, ...]] = {}
        self._gso_proven = False
        sock.setblocking(False)
        self._gro = gro and _try_setsockopt(sock, SOL_UDP, UDP_GRO, 1)
        self._ancsize = socket.CMSG_SPACE(4) if self._gro else 0
        self._gso = gso and _kernel_knows_gso(sock)
        self._port: int = sock.getsockname()[1]
        self._readable = select.poll()  # recv_batch: is more queued after the first buffer?
        self._readable.register(self._fd, select.POLLIN)

    # -- construction --------------------------------------------------------------------------------------

    @classmethod
    def bind(
        cls,
        host: str | None,
        port: int,
        *,
        family: Family = "dual",
        gso: bool = True,
        gro: bool = True,
        bufsize: int = _SOCKET_BUFSIZE,
    ) -> Self:
        """Create and bind the socket.

        :param host: local address literal, or ``None`` for all addresses of the family.  With ``"dual"`` an
            IPv4 literal binds its mapped form (only IPv4 traffic to it then).
        :param port: local port; 0 picks an ephemeral one (see :attr:`port`).
        :param family: ``"v4"``, ``"v6"`` or ``"dual"`` (one AF_INET6 socket with ``IPV6_V6ONLY=0``).
        :param gso: try UDP GSO on send.
        :param gro: try UDP GRO on receive.
        :param bufsize: requested SO_RCVBUF and SO_SNDBUF (forced past ``rmem_max`` when permitted).
        :raises UdpError: the kernel refused (address in use, not local, ...).
        :raises AddressError: ``host`` is not an address literal of the family.
        """
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise AddressError(f"bad port {port!r}")
        if family == "v4":
            af, bind_host = socket.AF_INET, host or "0.0.0.0"
            if _host_family(bind_host) != socket.AF_INET:
                raise AddressError(f"{bind_host!r} is not an IPv4 address")
        elif family in ("v6", "dual"):
            af, bind_host = socket.AF_INET6, host or "::"
            hf = _host_family(bind_host)
            if hf == socket.AF_INET:
                if family == "v6":
                    raise AddressError(f"{bind_host!r} is not an IPv6 address (use family='dual' or 'v4')")
                bind_host = _MAPPED_PREFIX + bind_host
        else:
            raise ValueError(f"family must be 'v4', 'v6' or 'dual', not {family!r}")
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if family == "v6" else 0)
            _set_bufsize(sock, bufsize)
            try:
                sock.bind((bind_host, port) if af == socket.AF_INET else (bind_host, port, 0, 0))
            except OSError as exc:
                raise UdpError(exc.errno, f"cannot bind UDP {bind_host!r} port {port}: {exc.strerror}") from exc
            return cls(sock, family=family, gso=gso, gro=gro)
        except BaseException:
            sock.close()
            raise

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def gso(self) -> bool:
        return self._gso

    @property
    def gro(self) -> bool:
        return self._gro

    @property
    def local_addr(self) -> Addr:
        """Bound address, normalized."""
        return normalize_addr(self._require().getsockname())

    def fileno(self) -> int:
        self._require()
        return self._fd

    # -- addresses -----------------------------------------------------------------------------------------

    def normalize_addr(self, addr: tuple[Any, ...]) -> Addr:
        """Same as the module-level :func:`normalize_addr`.

        :param addr: a raw socket address.
        """
        return normalize_addr(addr)

    def to_sockaddr(self, addr: Addr) -> tuple[Any, ...]:
        """Turn ``(host, port)`` into the socket address this socket's family needs.

        On a dual-stack socket IPv4 hosts become ``::ffff:a.b.c.d``.  Results are cached.

        :param addr: destination with an address literal (no name resolution here).
        :raises AddressError: not a literal, wrong family for the socket, bad port.
        """
        try:
            return self._sockaddr_cache[addr]
        except KeyError:
            pass
        except TypeError:
            raise AddressError(f"bad address {addr!r}") from None
        out = sockaddr(self.family, addr)
        if len(self._sockaddr_cache) >= _SOCKADDR_CACHE_MAX:
            self._sockaddr_cache.clear()
        self._sockaddr_cache[(addr[0], addr[1])] = out
        return out

    # -- receive -------------------------------------------------------------------------------------------

    def recv_batch(self, max_datagrams: int) -> list[tuple[list[bytes], Addr]]:
        """Drain the socket until ``EAGAIN`` or at least ``max_datagrams`` datagrams.

        A GRO buffer is split into its datagrams, so a batch may exceed ``max_datagrams`` by up to
        :data:`GSO_MAX_SEGMENTS` - 1.  ICMP-induced and transient errors are counted in :attr:`errors` under
        ``"recv:ERRNO"`` and skipped (at most ``max_datagrams`` of them per call).

        :param max_datagrams: bound on datagrams collected in this call.
        :returns: entries ``(datagrams, (host, port))``, consecutive datagrams of one source in one entry.
        """
        sock = self._require()
        recvmsg, bufsize, ancsize = sock.recvmsg, _RECV_BUFSIZE, self._ancsize
        mapped = self.family != "v4"
        out: list[tuple[list[bytes], Addr]] = []
        last_raw: Any = None
        last: list[bytes] = []
        count = 0
        budget = max_datagrams  # bounds the number of swallowed errors as well
        while count < max_datagrams:
            try:
                data, anc, flags, raw = recvmsg(bufsize, ancsize)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _SOFT_RECV_ERRNOS:
                    raise
                self.errors["recv:" + _errname(exc.errno)] += 1
                budget -= 1
                if budget <= 0:
                    break
                continue
            if flags & socket.MSG_TRUNC:
                self.errors["recv:truncated"] += 1
                continue
            segment = 0
            for level, kind, cdata in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) in (2, 4):
                    segment = int.from_bytes(cdata, sys.byteorder)
            if segment and len(data) > segment:
                dgrams = [data[i:i + segment] for i in range(0, len(data), segment)]
                self.gro_buffers += 1
            else:
                dgrams = [data]
            count += len(dgrams)
            if raw == last_raw:
                last.extend(dgrams)
            else:
                last_raw, last = raw, dgrams
                out.append((last, normalize_addr(raw) if mapped else (raw[0], raw[1])))
                if len(out) == 1 and not self._readable.poll(0):
                    break  # a lone datagram: no EAGAIN exception to end the drain (tunnel/tun.py read_batch)
        return out

    # -- send ----------------------------------------------------------------------------------------------

    def backlog_bytes(self) -> int:
        """Memory of the datagrams waiting in the kernel's receive queue (``SO_MEMINFO``
        ``RMEM_ALLOC``: payload plus per-packet overhead), one system call; 0 if unknown."""
        sock = self._sock
        if sock is None:
            return 0
        try:
            return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4)[:4], sys.byteorder)
        except OSError:
            return 0

    def send_batch(self, addr: Addr, datagrams: list[bytes], *, bulk: bool = True) -> None:
        """Send ``datagrams`` in order to ``addr``; see the module docstring for GSO runs and errors.

        :param addr: destination ``(host, port)``; IPv4 or IPv6 literal as the socket family allows.
        :param datagrams: UDP payloads (at most 65507 bytes each).
        :param bulk: cut a batch of one size into GSO runs without looking at each datagram; ``False`` runs
            the general loop alone, which sends the same runs (tests compare both).
        :raises AddressError: ``addr`` is not usable with this socket.
        """
        sock = self._require()
        sa = self.to_sockaddr(addr)
        n = len(datagrams)
        if bulk and n > 1 and self._gso:
            size = len(datagrams[0])
            if size and list(map(len, datagrams)).count(size) == n:  # one size: no per-datagram scan
                per = min(GSO_MAX_SEGMENTS, GSO_MAX_PAYLOAD // size)
                for i in range(0, n, per):
                    run = datagrams[i:i + per]
                    if len(run) > 1 and self._gso:
                        self._send_gso(sock, run, size, sa)
                    else:
                        for d in run:
                            self._sendto(sock, d, sa)
                return
        i = 0
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            if self._gso and size:
                total = size
                limit = min(n, i + GSO_MAX_SEGMENTS)
                while j < limit:
                    length = len(datagrams[j])
                    if length == 0 or length > size or total + length > GSO_MAX_PAYLOAD:
                        break
                    total += length
                    j += 1
                    if length < size:
                        break
            if j - i > 1:
                self._send_gso(sock, datagrams[i:j], size, sa)
            else:
                self._sendto(sock, datagrams[i], sa)
            i = j

    def _sendto(self, sock: socket.socket, data: bytes, sa: tuple[Any, ...]) -> None:
        try:
            sock.sendto(data, sa)
        except OSError as exc:
            if exc.errno not in _SOFT_SEND_ERRNOS:
                raise
            self.errors["send:" + _errname(exc.errno)] += 1
            self.dropped += 1

    def _send_gso(self, sock: socket.socket, run: list[bytes], size: int, sa: tuple[Any, ...]) -> None:
        try:
            sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, sa)
            self._gso_proven = True
            self.gso_sends += 1
            return
        except OSError as exc:
            code = exc.errno
            if code in _GSO_UNSUPPORTED_ERRNOS or (code == errno.EINVAL and not self._gso_proven):
                log.info("UDP GSO switched off on port %d: %s", self._port, exc.strerror)
                self._gso = False
                self.errors["send:gso_disabled"] += 1
            elif code == errno.EINVAL:
                self.errors["send:gso_einval"] += 1
            elif code in _SOFT_SEND_ERRNOS:
                self.errors["send:" + _errname(code)] += 1
                self.dropped += len(run)
                return
            else:
                raise
        for data in run:
            self._sendto(sock, data, sa)

    # -- event loop ----------------------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        """Register ``callback`` (no arguments) for readability with ``loop.add_reader``.

        Works with the default asyncio loop and uvloop.  Attaching again replaces the callback.

        :param loop: the running (or to-be-run) event loop.
        :param callback: called from the loop; it should call :meth:`recv_batch`.
        """
        self._require()
        self.detach()
        loop.add_reader(self._fd, callback)
        self._loop = loop

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)

    def close(self) -> None:
        self.detach()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._sock is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UdpSocket {self.family} port={self._port} gso={self._gso} gro={self._gro} fd={self._fd}>"

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise UdpError(errno.EBADF, "UDP socket is closed")
        return self._sock


