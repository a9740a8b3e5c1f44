"""In-memory stand-ins for the TUN device and the UDP socket, for tests that need no root.

Shaped like wireguard-go's ``tun/tuntest`` (a TUN whose kernel side is a pair of queues) and ``conn/bindtest``
(endpoints that deliver to each other in memory).  Both satisfy the same Protocols as the real adapters
(:class:`tunnel.tun.TunDevice`, :class:`tunnel.udp.UdpEndpoint`) and both own a real file descriptor (one end of
an ``os.pipe``) that is readable exactly while packets are queued, so ``loop.add_reader`` works with the default
asyncio loop and with uvloop.

* :class:`MemoryTun`: :meth:`MemoryTun.inject` queues packets "from the kernel" for
  :meth:`~MemoryTun.read_batch`; packets the application writes land in :attr:`MemoryTun.written` (and go to an
  optional ``on_write`` callback).
* :class:`MemoryNetwork` connects any number of :class:`MemoryUdp` endpoints by address; an optional *hook*
  ``(src, dst, datagrams) -> datagrams`` sees every send and may drop, duplicate or reorder
  (:func:`impairment` builds a seeded one).  :class:`MemoryUdpPair` is two endpoints on a fresh network.

Thread safety: :meth:`MemoryTun.inject` and deliveries take a lock, so another thread may feed them; everything
else is meant for one thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Self

from tunnel.offload import VIRTIO_NET_HDR_LEN
from tunnel.udpaddr import Addr, AddressError

if TYPE_CHECKING:
    from tunnel.tun import PytunDevice, TunDevice
    from tunnel.udp import UdpEndpoint, UdpSocket

__all__ = [
    "DEFAULT_QUEUE_LIMIT",
    "DeliveryHook",
    "MemoryNetwork",
    "MemoryTun",
    "MemoryUdp",
    "MemoryUdpPair",
    "impairment",
]

#: Packets or datagrams a fake queues before it drops more (like a full socket buffer or tun txqueue).
DEFAULT_QUEUE_LIMIT = 4096

#: ``hook(src, dst, datagrams)`` returns the datagrams that actually arrive, in arrival order.
DeliveryHook = Callable[[Addr, Addr, list[bytes]], list[bytes]]


class _Doorbell:
    """A pipe that holds one byte while something is queued: a real fd for ``add_reader``."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self.rung = False

    def ring(self) -> None:
        if not self.rung:
            os.write(self.wfd, b"\x01")
            self.rung = True

    def clear(self) -> None:
        if self.rung:
            try:
                os.read(self.rfd, 64)
            except BlockingIOError:
                pass
            self.rung = False

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


class MemoryTun:
    """A TUN (or TAP) device whose kernel side is two queues; implements :class:`tunnel.tun.TunDevice`.

    Like the real device it refuses (and counts in :attr:`write_errors`) empty buffers, and for a tun without
    vnet_hdr any buffer that is not IPv4/IPv6; it never checks more than that.
    """

    def __init__(
        self,
        name: str = "memtun0",
        mtu: int = 1420,
        *,
        tap: bool = False,
        vnet_hdr: bool = False,
        offloads: Iterable[str] = (),
        on_write: Callable[[list[bytes]], object] | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        """Create the fake.

        :param name: reported interface name.
        :param mtu: reported MTU.
        :param tap: Ethernet frames instead of IP packets (only changes the write check).
        :param vnet_hdr: pretend buffers carry a virtio_net_hdr (reported; writes must be longer than it).
        :param offloads: offload names to report (empty unless ``vnet_hdr``).
        :param on_write: called with each list of accepted packets after :meth:`write_batch`.
        :param queue_limit: most packets :meth:`inject` keeps queued; the rest count as ``dropped_inbound``.
        """
        self._name = name
        self._mtu = mtu
        self.tap = tap
        self._vnet_hdr = vnet_hdr
        self._offloads = frozenset(offloads) if vnet_hdr else frozenset()
        self.on_write = on_write
        self.queue_limit = queue_limit
        self.written: list[bytes] = []
        self.write_errors: Counter[str] = Counter()
        self.dropped_inbound = 0
        self._inbound: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._bell: _Doorbell | None = _Doorbell()

    def __repr__(self) -> str:
        return f"<MemoryTun {self._name} queued={len(self._inbound)} written={len(self.written)}>"

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def vnet_hdr(self) -> bool:
        return self._vnet_hdr

    @property
    def offloads(self) -> frozenset[str]:
        return self._offloads

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._bell is None

    def _require(self) -> _Doorbell:
        if self._bell is None:
            raise OSError(errno.EBADF, f"memory tun {self._name} is closed")
        return self._bell

    # -- the "kernel" side ---------------------------------------------------------------------------------

    def inject(self, packets: Iterable[bytes]) -> None:
        """Queue packets for :meth:`read_batch`, as if the kernel routed them into the device.

        :param packets: buffers, in the same format :meth:`read_batch` returns.
        """
        bell = self._require()
        with self._lock:
            for pkt in packets:
                if len(self._inbound) >= self.queue_limit:
                    self.dropped_inbound += 1
                    continue
                self._inbound.append(bytes(pkt))
            if self._inbound:
                bell.ring()

    def take_written(self) -> list[bytes]:
        """Return and forget everything written so far."""
        out, self.written = self.written, []
        return out

    @property
    def queued(self) -> int:
        """Packets injected but not read yet."""
        return len(self._inbound)

    # -- the application side (TunDevice) ------------------------------------------------------------------

    def fileno(self) -> int:
        return self._require().rfd

    def read_batch(self, max_packets: int) -> list[bytes]:
        bell = self._require()
        with self._lock:
            q = self._inbound
            out = [q.popleft() for _ in range(min(max_packets, len(q)))]
            if not q:
                bell.clear()
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        self._require()
        accepted: list[bytes] = []
        hdr = VIRTIO_NET_HDR_LEN if self._vnet_hdr else 0
        for pkt in packets:
            if len(pkt) <= hdr or (not self.tap and pkt[hdr] >> 4 not in (4, 6)):
                self.write_errors["EINVAL"] += 1
                continue
            accepted.append(bytes(pkt))
        self.written.extend(accepted)
        if accepted and self.on_write is not None:
            self.on_write(accepted)
        return len(accepted)

    def close(self) -> None:
        bell, self._bell = self._bell, None
        if bell is not None:
            bell.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryNetwork:
    """A switch for :class:`MemoryUdp` endpoints, keyed by ``(host, port)``.

    Datagrams to an address nobody holds vanish (as UDP does) and are counted in :attr:`undeliverable`.
    """

    def __init__(self, hook: DeliveryHook | None = None) -> None:
        """:param hook: optional ``(src, dst, datagrams) -> datagrams`` applied to every send."""
        self.hook = hook
        self.undeliverable = 0
        self.sent = 0
        self._endpoints: dict[Addr, MemoryUdp] = {}
        self._next_port = 40000
        self._lock = threading.Lock()

    def endpoint(
        self,
        host: str = "198.18.0.1",
        port: int = 0,
        *,
        gso: bool = False,
        gro: bool = False,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> MemoryUdp:
        """Create an endpoint bound to ``(host, port)``; port 0 picks a free one.

        :param host: address literal the endpoint is reachable at.
        :param port: port, or 0.
        :param gso: reported by the endpoint's ``gso``.
        :param gro: reported by the endpoint's ``gro``.
        :param queue_limit: receive queue size in datagrams.
        :raises OSError: ``EADDRINUSE`` when taken.
        """
        with self._lock:
            if port == 0:
                while (host, self._next_port) in self._endpoints:
                    self._next_port += 1
                port = self._next_port
                self._next_port += 1
            if (host, port) in self._endpoints:
                raise OSError(errno.EADDRINUSE, f"memory address {(host, port)} in use")
            ep = MemoryUdp(self, (host, port), gso=gso, gro=gro, queue_limit=queue_limit)
            self._endpoints[(host, port)] = ep
        return ep

    def _unbind(self, addr: Addr) -> None:
        with self._lock:
            self._endpoints.pop(addr, None)

    def deliver(self, src: Addr, dst: Addr, datagrams: list[bytes]) -> None:
        """Carry ``datagrams`` from ``src`` to ``dst`` through the hook.

        :param src: sender address.
        :param dst: destination address.
        :param datagrams: what was sent, in order.
        """
        self.sent += len(datagrams)
        arriving = self.hook(src, dst, list(datagrams)) if self.hook is not None else datagrams
        target = self._endpoints.get(dst)
        if target is None:
            self.undeliverable += len(arriving)
            return
        target._receive(src, arriving)


class MemoryUdp:
    """An in-memory UDP endpoint on a :class:`MemoryNetwork`; implements :class:`tunnel.udp.UdpEndpoint`."""

    def __init__(
        self,
        network: MemoryNetwork,
        addr: Addr,
        *,
        gso: bool = False,
        gro: bool = False,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        """Use :meth:`MemoryNetwork.endpoint` rather than this.

        :param network: the network it is attached to.
        :param addr: its address.
        :param gso: value reported by :attr:`gso` (nothing else changes).
        :param gro: value reported by :attr:`gro` (nothing else changes).
        :param queue_limit: receive queue size in datagrams; overflow counts as ``recv:ENOBUFS``.
        """
        self.network = network
        self.addr: Addr = addr
        self._gso = gso
        self._gro = gro
        self.queue_limit = queue_limit
        self.errors: Counter[str] = Counter()
        self.dropped = 0
        self._inbound: deque[tuple[bytes, Addr]] = deque()
        self._lock = threading.Lock()
        self._bell: _Doorbell | None = _Doorbell()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<MemoryUdp {self.addr[0]}:{self.addr[1]} queued={len(self._inbound)}>"

    @property
    def port(self) -> int:
        return self.addr[1]

    @property
    def gso(self) -> bool:
        return self._gso

    @property
    def gro(self) -> bool:
        return self._gro

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._bell is None

    @property
    def queued(self) -> int:
        """Datagrams received but not read yet."""
        return len(self._inbound)

    def _require(self) -> _Doorbell:
        if self._bell is None:
            raise OSError(errno.EBADF, f"memory UDP endpoint {self.addr} is closed")
        return self._bell

    def _receive(self, src: Addr, datagrams: list[bytes]) -> None:
        with self._lock:
            if self._bell is None:
                self.network.undeliverable += len(datagrams)
                return
            for d in datagrams:
                if len(self._inbound) >= self.queue_limit:
                    self.errors["recv:ENOBUFS"] += 1
                    continue
                self._inbound.append((bytes(d), src))
            if self._inbound:
                self._bell.ring()

    def fileno(self) -> int:
        return self._require().rfd

    def backlog_bytes(self) -> int:
        """Bytes received but not read yet (payload only)."""
        with self._lock:
            return sum(len(d) for d, _ in self._inbound)

    def recv_batch(self, max_datagrams: int) -> list[tuple[list[bytes], Addr]]:
        bell = self._require()
        out: list[tuple[list[bytes], Addr]] = []
        with self._lock:
            q = self._inbound
            for _ in range(min(max_datagrams, len(q))):
                data, src = q.popleft()
                if out and out[-1][1] == src:
                    out[-1][0].append(data)
                else:
                    out.append(([data], src))
            if not q:
                bell.clear()
        return out

    def send_batch(self, addr: Addr, datagrams: list[bytes]) -> None:
        self._require()
        try:
            host, port = addr
        except (TypeError, ValueError):
            raise AddressError(f"bad address {addr!r}") from None
        if not isinstance(host, str) or type(port) is not int or not 0 < port <= 65535:
            raise AddressError(f"bad address {addr!r}")
        if datagrams:
            self.network.deliver(self.addr, (host, port), datagrams)

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        fd = self._require().rfd
        self.detach()
        loop.add_reader(fd, callback)
        self._loop = loop

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._bell is not None and not loop.is_closed():
            loop.remove_reader(self._bell.rfd)

    def close(self) -> None:
        self.detach()
        self.network._unbind(self.addr)
        with self._lock:
            bell, self._bell = self._bell, None
            self._inbound.clear()
        if bell is not None:
            bell.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryUdpPair:
    """Two endpoints, :attr:`a` at ``198.18.0.1`` and :attr:`b` at ``198.18.0.2``, on a fresh network.

    Unpacks as ``a, b = MemoryUdpPair()``.
    """

    def __init__(
        self, hook: DeliveryHook | None = None, *, port: int = 51820, queue_limit: int = DEFAULT_QUEUE_LIMIT
    ) -> None:
        """:param hook: delivery hook for the network (see :class:`MemoryNetwork`).
        :param port: port of both endpoints.
        :param queue_limit: receive queue size of each endpoint.
        """
        self.network = MemoryNetwork(hook)
        self.a = self.network.endpoint("198.18.0.1", port, queue_limit=queue_limit)
        self.b = self.network.endpoint("198.18.0.2", port, queue_limit=queue_limit)

    def __iter__(self) -> Iterator[MemoryUdp]:
        return iter((self.a, self.b))

    def close(self) -> None:
        """Close both endpoints."""
        self.a.close()
        self.b.close()


def impairment(
    *, drop: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0, seed: int = 0
) -> DeliveryHook:
    """Build a seeded delivery hook that drops, duplicates and reorders datagrams.

    Each datagram is dropped with probability ``drop``, else duplicated with probability ``duplicate``; then
    with probability ``reorder`` per send the surviving list is shuffled.  Deterministic for a given seed.

    :param drop: probability of losing each datagram.
    :param duplicate: probability of delivering a datagram twice.
    :param reorder: probability of shuffling one send's datagrams.
    :param seed: random seed.
    """
    for name, p in (("drop", drop), ("duplicate", duplicate), ("reorder", reorder)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability, got {p!r}")
    rng = random.Random(seed)

    def hook(src: Addr, dst: Addr, datagrams: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for d in datagrams:
            if rng.random() < drop:
                continue
            out.append(d)
            if rng.random() < duplicate:
                out.append(d)
        if len(out) > 1 and rng.random() < reorder:
            rng.shuffle(out)
        return out

    return hook


if TYPE_CHECKING:
    # Static proof that fakes and real adapters satisfy the same Protocols (mypy checks these lines).
    def _conforms(t: MemoryTun, p: PytunDevice, u: MemoryUdp, s: UdpSocket) -> tuple[TunDevice, ...]:
        tuns: tuple[TunDevice, TunDevice] = (t, p)
        udps: tuple[UdpEndpoint, UdpEndpoint] = (u, s)
        del udps
        return tuns
