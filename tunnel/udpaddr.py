"""UDP peer addresses: pyvpn's ``(host, port)`` form and the socket addresses each socket family needs.

The rest of pyvpn sees every peer as ``(host, port)`` with IPv4 in dotted form (:data:`Addr`), whatever the
socket family.  :func:`normalize_addr` turns what ``recvmsg`` returns into that form (an IPv4-mapped
``::ffff:a.b.c.d`` on a dual-stack socket becomes ``a.b.c.d``); :func:`sockaddr` goes the other way for a
send, checking that the address is a literal of a family the socket can reach.  :class:`tunnel.udp.UdpSocket`
caches :func:`sockaddr`'s answers.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

__all__ = ["Addr", "AddressError", "Family", "normalize_addr", "sockaddr"]

#: A peer address as the rest of pyvpn sees it: (host, port), IPv4 peers always in dotted form.
Addr = tuple[str, int]
#: Socket family choice for :meth:`tunnel.udp.UdpSocket.bind`.
Family = Literal["v4", "v6", "dual"]
_MAPPED_PREFIX = "::ffff:"


class AddressError(ValueError):
    """An address given to :meth:`tunnel.udp.UdpSocket.to_sockaddr` or ``send_batch`` is not usable."""


def normalize_addr(addr: tuple[Any, ...]) -> Addr:
    """Turn a socket address from ``recvfrom``/``recvmsg`` into pyvpn's ``(host, port)`` form.

    IPv4-mapped IPv6 addresses (``::ffff:198.18.0.1``) become plain IPv4 (``198.18.0.1``); IPv6 flow info and
    scope id are dropped (a link-local scope stays in the host string as ``%ifname``).

    :param addr: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``.
    """
    host: str = addr[0]
    if host.startswith(_MAPPED_PREFIX) and "." in host:
        host = host[len(_MAPPED_PREFIX):]
    return (host, int(addr[1]))


def _host_family(host: str) -> int:
    """Return AF_INET or AF_INET6 for a literal address, or raise :class:`AddressError`."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET
    except (OSError, TypeError, ValueError):
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return socket.AF_INET6
    except (OSError, TypeError, ValueError, AttributeError):
        raise AddressError(f"not an IP address literal: {host!r}") from None


def sockaddr(family: Family, addr: Addr) -> tuple[Any, ...]:
    """The socket address a socket of ``family`` needs to send to ``addr`` (on a dual-stack socket IPv4 hosts
    become ``::ffff:a.b.c.d``); :meth:`tunnel.udp.UdpSocket.to_sockaddr` caches the answers.

    :param family: the socket's family (:data:`Family`).
    :param addr: destination ``(host, port)`` with an address literal (no name resolution here).
    :raises AddressError: not a literal, wrong family for the socket, bad port.
    """
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError, KeyError):
        raise AddressError(f"bad address {addr!r}") from None
    if not isinstance(host, str) or type(port) is not int or not 0 < port <= 65535:
        raise AddressError(f"bad address {addr!r}")
    hf = _host_family(host)
    if family == "v4":
        if hf != socket.AF_INET:
            raise AddressError(f"{host!r} is not IPv4 but the socket is v4-only")
        out: tuple[Any, ...] = (host, port)
    elif hf == socket.AF_INET:
        if family == "v6":
            raise AddressError(f"{host!r} is IPv4 but the socket is v6-only")
        out = (_MAPPED_PREFIX + host, port, 0, 0)
    else:
        if family == "v6" and host.startswith(_MAPPED_PREFIX) and "." in host:
            raise AddressError(f"{host!r} is IPv4-mapped but the socket is v6-only")
        out = (host, port, 0, 0)
    return out
