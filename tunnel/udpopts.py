"""UDP socket options and limits: the ``UDP_SEGMENT``/``UDP_GRO`` constants, GSO limits, socket buffers and
which errors mean what.

The stdlib has no ``UDP_SEGMENT`` (103) or ``UDP_GRO`` (104); they are plain integers on ``SOL_UDP``
(include/uapi/linux/udp.h).  One GSO send carries at most :data:`GSO_MAX_SEGMENTS` segments and
:data:`GSO_MAX_PAYLOAD` bytes (:func:`gso_max_segs` turns that into transport messages per send for a
tunnel MTU).  The errno sets say which receive and send errors :class:`tunnel.udp.UdpSocket` counts and
skips, and which switch GSO off.  The socket itself and its drain and send loops are :mod:`tunnel.udp`.
"""

from __future__ import annotations

import errno
import socket

__all__ = [
    "GSO_MAX_PAYLOAD",
    "GSO_MAX_SEGMENTS",
    "SOL_UDP",
    "TRANSPORT_OVERHEAD",
    "UDP_GRO",
    "UDP_SEGMENT",
    "gso_max_segs",
]

# -- kernel constants (include/uapi/linux/udp.h; the stdlib has none of them) -------------------------------

SOL_UDP = 17
UDP_SEGMENT = 103  # cmsg/sockopt: u16 segment size for a GSO send
UDP_GRO = 104  # sockopt: int, 1 = deliver coalesced buffers; cmsg on receive: int segment size

_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # u32 array; [0] = SK_MEMINFO_RMEM_ALLOC

# -- implementation constants -------------------------------------------------------------------------------

#: Most segments the kernel accepts in one GSO send (UDP_MAX_SEGMENTS).
GSO_MAX_SEGMENTS = 64
#: Largest UDP payload of one send (65535 - 8 UDP - 20 IPv4 header).
GSO_MAX_PAYLOAD = 65507
#: WireGuard transport overhead on top of the padded plaintext: 16-byte header + 16-byte tag.
TRANSPORT_OVERHEAD = 32
#: Receive buffer: the largest UDP payload, also the largest coalesced GRO buffer.
_RECV_BUFSIZE = 65535
#: Default SO_RCVBUF/SO_SNDBUF request (wireguard-go uses 7 MiB too).
_SOCKET_BUFSIZE = 7 << 20
#: Receive errors that say something about a past send (ICMP) or a transient state: swallowed and counted.
_SOFT_RECV_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ECONNRESET,
        errno.EMSGSIZE,
        errno.ENOPROTOOPT,
        errno.EPROTO,
        errno.ENOMEM,
        errno.ENOBUFS,
    }
)
#: Send errors that drop the datagram(s) and are counted.
_SOFT_SEND_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EPERM,
        errno.EACCES,
        errno.EMSGSIZE,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
        errno.EINVAL,
    }
)
#: Send errors that mean "this socket cannot do UDP GSO".
_GSO_UNSUPPORTED_ERRNOS = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


def gso_max_segs(mtu: int) -> int:
    """Most full-size transport messages that fit one UDP GSO ``sendmsg`` for a tunnel of ``mtu`` bytes.

    :param mtu: the tunnel MTU (largest plaintext packet).
    """
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_PAYLOAD // (mtu + TRANSPORT_OVERHEAD)))


def _try_setsockopt(sock: socket.socket, level: int, opt: int, value: int) -> bool:
    try:
        sock.setsockopt(level, opt, value)
    except OSError:
        return False
    return True


def _kernel_knows_gso(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _set_bufsize(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of socket buffer each way, forcing past the sysctl limit when allowed."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if not _try_setsockopt(sock, socket.SOL_SOCKET, force, size):
            _try_setsockopt(sock, socket.SOL_SOCKET, plain, size)
