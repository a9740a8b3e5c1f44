"""Peer endpoints written as host names: looked up at start-up and on reload, and again when
handshakes keep failing, so a client follows a server whose address changes without a restart.

wireguard-tools' ``reresolve-dns.sh`` does this for the kernel from a timer: every 30 s it sets
each peer's Endpoint from the config file again when the peer's latest handshake is older than
135 s.  pyvpn does it inside the daemon, sooner, and only while handshakes fail:

1. A peer qualifies when its Endpoint as written in the config (:attr:`Peer.config_endpoint`)
   is a host name; IP literals are never looked up again.
2. Once a second (device housekeeping) each such peer is checked.  It is *failing* when a
   handshake initiation has been retransmitted :data:`RERESOLVE_AFTER_RETRIES` times without a
   response: about 10 s after the first unanswered initiation (one attempt per REKEY_TIMEOUT =
   5 s).  A client that was sending data notices a dead session after KEEPALIVE + REKEY_TIMEOUT
   = 15 s and then initiates, so a moved server is looked up about 25 s after it went away.
3. A failing peer's name is looked up at once, then at most once per
   :data:`RERESOLVE_INTERVAL` (15 s) while it keeps failing, one lookup per peer at a time.
4. The lookup is ``getaddrinfo`` on the loop's resolver thread (never on the loop itself),
   bounded by :data:`RESOLVE_TIMEOUT`.  When the answer does not contain the current endpoint
   address, the endpoint switches to the first answer (IPv4 first, as ``wg`` does) and the next
   retransmission goes there.  A failed lookup is logged once per failure streak; the endpoint
   stays as it was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crypto.tunnel import Tunnel

    from .device import Device
    from .peer import Peer

log = logging.getLogger("pyvpn.endpoints")

# -- implementation constants -------------------------------------------------------------------------
RERESOLVE_AFTER_RETRIES = 2  # unanswered retransmissions of an initiation (≈ 2 × REKEY_TIMEOUT = 10 s)
RERESOLVE_INTERVAL = 15.0  # seconds between two lookups of one failing peer (3 × REKEY_TIMEOUT)
RESOLVE_TIMEOUT = 5.0  # seconds one getaddrinfo may take before it counts as failed

Endpoint = tuple[str, int]


class ResolveError(OSError):
    """A host name that did not resolve (or not in time); the message names it."""


def is_address(host: str) -> bool:
    """Whether ``host`` is an IP literal (an IPv6 one may carry a ``%zone``)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def pick(infos: Sequence[tuple[Any, ...]], current: str | None = None) -> str:
    """The address to use from ``getaddrinfo`` results: ``current`` if it is among them, else
    the first IPv4 one, else the first.

    :raises ResolveError: ``infos`` is empty.
    """
    addrs = [str(i[4][0]) for i in infos]
    if not addrs:
        raise ResolveError("no addresses")
    if current is not None and current in addrs:
        return current
    v4 = [a for a, i in zip(addrs, infos, strict=True) if i[0] == socket.AF_INET]
    return (v4 or addrs)[0]


async def resolve(host: str, port: int, *, current: str | None = None,
                  timeout: float = RESOLVE_TIMEOUT) -> Endpoint:
    """``(ip, port)`` for an Endpoint as written; names are looked up off the event loop, bounded.

    :param current: the address in use; kept if the name still resolves to it.
    :raises ResolveError: the name does not resolve, or not within ``timeout`` seconds.
    """
    if is_address(host):
        return host, port
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), timeout)
    except TimeoutError:
        raise ResolveError(f"cannot resolve {host}: no answer within {timeout:g} s") from None
    except OSError as e:  # socket.gaierror
        raise ResolveError(f"cannot resolve {host}: {e.strerror or e}") from None
    try:
        return pick(infos, current), port
    except ResolveError:
        raise ResolveError(f"cannot resolve {host}: no addresses") from None


def handshake_failing(tunnel: Tunnel) -> bool:
    """Whether an initiation to this peer is outstanding and was retransmitted
    :data:`RERESOLVE_AFTER_RETRIES` times without a response."""
    return tunnel.handshake is not None and tunnel.handshake_attempts >= RERESOLVE_AFTER_RETRIES


def host_name(peer: Peer) -> Endpoint | None:
    """The peer's configured Endpoint if its host is a name (not an IP literal), else None."""
    ep = peer.config_endpoint
    return ep if ep is not None and not is_address(ep[0]) else None


class EndpointResolver:
    """Re-resolves failing peers' host-name endpoints (steps 2-4 above) for one device.

    :meth:`attach` hooks it into the device's once-a-second housekeeping; :meth:`close` cancels
    lookups still running.
    """

    def __init__(self, device: Device, *, interval: float = RERESOLVE_INTERVAL,
                 timeout: float = RESOLVE_TIMEOUT) -> None:
        self.device = device
        self.interval = interval
        self.timeout = timeout
        self.lookups = 0  # lookups started (for tests and logs)
        self._last: dict[bytes, float] = {}  # public key -> loop time of the last lookup
        self._failed: set[bytes] = set()  # peers whose last lookup failed (logged once)
        self._tasks: dict[bytes, asyncio.Task[None]] = {}

    def attach(self) -> None:
        self.device.on_housekeeping.append(self.check)

    def check(self) -> None:
        """Start a lookup for each failing peer with a host name that is due for one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pub, peer in self.device.peers.items():
            ep = host_name(peer)
            if ep is None or pub in self._tasks or not handshake_failing(peer.tunnel):
                continue
            if now - self._last.get(pub, -self.interval) < self.interval:
                continue
            self._last[pub] = now
            self.lookups += 1
            task = loop.create_task(self._reresolve(peer, ep))
            self._tasks[pub] = task
            task.add_done_callback(lambda _t, pub=pub: self._tasks.pop(pub, None))  # type: ignore[misc]

    async def _reresolve(self, peer: Peer, ep: Endpoint) -> None:
        host, port = ep
        current = peer.tunnel.endpoint
        cur_host = str(current[0]) if isinstance(current, tuple) else None
        peer.log.debug("handshakes keep failing; looking up %s again", host)
        try:
            new = await resolve(host, port, current=cur_host, timeout=self.timeout)
        except ResolveError as e:
            if peer.public_key not in self._failed:
                peer.log.warning("%s; keeping endpoint %s", e, _show(current))
                self._failed.add(peer.public_key)
            return
        self._failed.discard(peer.public_key)
        if self.device.peers.get(peer.public_key) is not peer or peer.config_endpoint != ep:
            return  # removed or reconfigured meanwhile
        if isinstance(current, tuple) and (cur_host, current[1]) == new:
            peer.log.debug("%s still resolves to %s", host, _show(current))
            return
        peer.tunnel.endpoint = new
        peer.log.info("%s now resolves to %s (was %s); endpoint changed", host, _show(new), _show(current))

    def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()


def _show(ep: Any) -> str:
    from .util import format_endpoint

    return format_endpoint(ep) if ep is not None else "(none)"
