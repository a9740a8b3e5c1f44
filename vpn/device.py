"""The device: wires a tun, a UDP socket and the protocol core together on an asyncio loop.

Flow (one wakeup each, level-triggered readers, bounded batches so neither direction starves):

1. tun readable → read a batch → look up each destination in AllowedIPs → group by peer →
   ``Tunnel.encapsulate(batch)`` → send the core's outbox (one ``send_batch`` per endpoint).
2. UDP readable → receive a batch per source → ``Core.decapsulate`` → for each inner packet,
   the source must route back to the same peer (the cryptokey ACL; otherwise dropped as
   ``spoofed_source``) → everything is written to the tun in one batch, so that a packet for
   another peer goes through the host's routing and firewall like any routed packet (as with
   WireGuard: ``ip_forward``, the FORWARD chain, conntrack and NAT decide) → send the outbox.
   Only with ``forward`` (``#pyvpn Forward = on``, an explicit opt-in for a hub) is a packet for
   another peer sent there directly, with its TTL or hop limit decremented
   (:func:`vpn.routing.forward_hop`), bypassing the host's firewall.
3. Timer → ``Core.handle_timer`` → send the outbox; the timer is re-armed at the core's
   next deadline.
4. Housekeeping, once a second: hooks, and the stall check (:mod:`vpn.stall`): input queued on
   the tun or the UDP socket while nothing was taken in for ``stall_after`` seconds is logged as a
   WARNING and shown in the snapshot; a thread warns, with the loop's stack, if the loop itself
   stops running.

Per-client policy (:mod:`vpn.policy`, set with :meth:`Device.set_policy`): a peer with access rules or a
rate limit has ``Peer.policed`` set, checked once per batch; its packets from the tunnel pass
:meth:`vpn.peer.Peer.police_in` (access rules, then its inbound token bucket) before step 2 routes them, so the
verdict covers what is written to the tun and what is forwarded; packets to it (from the tun in step 1,
forwarded from other peers, or from the L2 runtime) pass its outbound bucket.  A disabled or expired
peer is refused in the core (``Tunnel.set_refused``); the housekeeping timer refuses a peer the second
its ``Expires`` passes.  Peers without a policy take the same paths as before, bulk paths included.

Every drop is counted by reason in :attr:`Device.drops` (device-level), ``Core.drops``
(protocol-level) or ``Peer.drops``; :meth:`Device.drop_counts` merges them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from crypto.constants import REKEY_AFTER_TIME
from crypto.tunnel import Core, Tunnel
from tunnel.tunmode import configure_tun, read_packets, tune_allocator, write_packets

from .allowedips import AllowedIPs
from .latency import request_slice, slice_from_env
from .peer import Peer
from .policy import AccessRules, ClientPolicy, bucket_for_rate
from .report import device_snapshot, log_core_events, log_stall
from .routing import InboundRoutes, L2Hook, forward_hop, route_reads
from .stall import STALL_AFTER, LoopWatchdog, StallDetector, readable

log = logging.getLogger("pyvpn.device")

BATCH = 256  # packets per wakeup and direction
# Receive-queue memory above which, under load, the core sheds handshakes from busy sources:
# ~1,000 small datagrams (each costs ~1 KiB of socket memory), a fraction of a second of work.
BEHIND_BACKLOG_BYTES = 1 << 20
TSO_BATCH = 16  # tun reads per wakeup with offloads (each may be a 64 KiB super-packet)
Endpoint = tuple[str, int]


class PacketDevice(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def mtu(self) -> int: ...

    def fileno(self) -> int: ...
    def read_batch(self, max_packets: int) -> list[bytes]: ...
    def write_batch(self, packets: list[bytes]) -> int: ...
    def close(self) -> None: ...


class DatagramSocket(Protocol):
    @property
    def port(self) -> int: ...

    def fileno(self) -> int: ...
    def recv_batch(self, max_datagrams: int) -> list[tuple[list[bytes], Any]]: ...
    def backlog_bytes(self) -> int: ...
    def send_batch(self, addr: Any, datagrams: list[bytes]) -> None: ...
    def close(self) -> None: ...


class Device(InboundRoutes):
    """One pyvpn interface.

    :param tun: the L3 packet device (a real tun, or :mod:`tunnel.testing`'s fake).
    :param udp: the UDP socket (real or fake).
    :param private_key: our static key, or None until set (``pyvpn-wg`` before ``wg setconf``).
    :param forward: forward peer-to-peer packets inside the daemon (``#pyvpn Forward = on``, hub mode),
        decrementing their TTL but bypassing the host's firewall.  Off (the default, as WireGuard):
        they go to the tun, and the kernel routes (or refuses) them.
    :param rng: source of randomness for the core.
    :param stall_after: seconds of queued input without progress before a stall is reported.
    :param udp_offload: UDP GSO/GRO on sockets made by :meth:`rebind` (``Offload = off`` turns it off).
    :param rekey_after_time: REKEY_AFTER_TIME, or shorter for tests (passed to :class:`crypto.tunnel.Core`,
        which refuses anything below a second or above REKEY_AFTER_TIME).
    """

    #: Seconds between housekeeping ticks (hooks, stall check).
    housekeeping_interval = 1.0

    def __init__(self, *, tun: PacketDevice, udp: DatagramSocket, private_key: bytes | None,
                 mtu: int | None = None, forward: bool = False,
                 rng: Callable[[int], bytes] = os.urandom, stall_after: float = STALL_AFTER,
                 udp_offload: bool = True, rekey_after_time: float = REKEY_AFTER_TIME) -> None:
        self.tun = tun
        self.tun_mode = configure_tun(tun)
        self.udp = udp
        self.name = tun.name
        self.core = Core(private_key, rng=rng, mtu=mtu or tun.mtu, rekey_after_time=rekey_after_time)
        self.allowed: AllowedIPs[Tunnel] = AllowedIPs()
        self.peers: dict[bytes, Peer] = {}
        self.forward = forward
        #: Let the data path's bulk branches take the batches they fit (route_reads, Core.decapsulate, the
        #: policy's one-verdict batch, :meth:`_route_flow`); ``False`` runs their general loops alone, with
        #: the same results (tests compare both).
        self.bulk = True
        self.drops: Counter[str] = Counter()
        self.forwarded_packets = 0  # peer-to-peer packets forwarded inside the daemon (never on the tun)
        self.fwmark = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self.slice = slice_from_env()  # the scheduler slice the loop thread asks for (vpn/latency.py)
        self.stopped: asyncio.Event | None = None  # created in start()
        self.on_housekeeping: list[Callable[[], None]] = []
        self.l2: L2Hook | None = None  # set by vpn.l2.runtime.L2Runtime.start() when L2 segments run
        self.started_wall = time.time()
        self.udp_offload = udp_offload
        self.progress = 0  # tun buffers read + datagrams received since start (the stall check's counter)
        self.stall = StallDetector(stall_after)
        self.watchdog = LoopWatchdog(self.name, log, after=stall_after)
        self._expiring: dict[bytes, Peer] = {}  # peers with an Expires, checked by housekeeping

    # -- peers -----------------------------------------------------------------------------
    @property
    def listen_port(self) -> int:
        return self.udp.port

    def add_peer(self, public_key: bytes, *, preshared_key: bytes | None = None,
                 allowed_ips: Iterable[str] = (), endpoint: Endpoint | None = None,
                 persistent_keepalive: int = 0, name: str | None = None,
                 policy: ClientPolicy | None = None) -> Peer:
        t = self.core.add_peer(public_key, preshared_key=preshared_key, endpoint=endpoint,
                               persistent_keepalive=persistent_keepalive)
        peer = Peer(t, [], name)
        t.user = peer
        self.peers[public_key] = peer
        self.set_allowed_ips(peer, allowed_ips)
        if policy is not None:
            self.set_policy(peer, policy)
        if persistent_keepalive and self._loop is not None:
            t.set_persistent_keepalive(persistent_keepalive, now=self._loop.time())
            self._flush()
        peer.log.info("added%s", f" ({name})" if name else "")
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed.remove_value(peer.tunnel)
        self.core.remove_peer(public_key)
        self._expiring.pop(public_key, None)
        peer.log.info("removed")

    def set_policy(self, peer: Peer, policy: ClientPolicy) -> None:
        """Apply ``policy`` to ``peer`` now, leaving every other peer alone.

        Access rules and rate limits take effect with the next batch (a changed rate starts with a full
        bucket); a disabled or expired peer is refused at once (its session dropped), and a peer taken
        back is sent a handshake initiation when its endpoint is known, so it need not wait for its own
        retry.
        """
        old = peer.policy
        peer.policy = policy
        peer.access = AccessRules(policy.allow, policy.deny) if policy.allow or policy.deny else None
        if policy.rate_limit is None:
            peer.bucket_in = peer.bucket_out = None
        elif peer.bucket_in is None or policy.rate_limit != old.rate_limit:
            peer.bucket_in = bucket_for_rate(policy.rate_limit)
            peer.bucket_out = bucket_for_rate(policy.rate_limit)
        peer.policed = peer.access is not None or peer.bucket_in is not None
        t = peer.tunnel
        t.expires_at = float(policy.expires) if policy.expires is not None else None
        if policy.expires is not None:
            self._expiring[t.public_key] = peer
        else:
            self._expiring.pop(t.public_key, None)
        self._apply_refusal(peer, time.time())

    def _apply_refusal(self, peer: Peer, wall: float) -> None:
        """Refuse ``peer`` if its policy says disabled or expired at ``wall``; take it back if not."""
        t = peer.tunnel
        state = peer.policy.state(wall)
        refuse = state != "active"
        if refuse == t.refused:
            return
        t.set_refused(refuse)
        if refuse:
            peer.log.info("%s: handshakes refused, session dropped", state)
            return
        peer.log.info("enabled again")
        loop = self._loop
        if loop is not None and t.endpoint is not None:
            t.send_keepalive(now=loop.time())  # a handshake initiation, then the keepalive
            self._flush()

    def set_allowed_ips(self, peer: Peer, networks: Iterable[str], *, replace: bool = True) -> None:
        if replace:
            self.allowed.remove_value(peer.tunnel)
            peer.allowed_ips = []
        for net in networks:
            self.allowed.insert(net, peer.tunnel)
        # Another peer may have taken one of these prefixes; keep every peer's list in step.
        for p in self.peers.values():
            p.allowed_ips = self.allowed.entries(p.tunnel)

    def set_persistent_keepalive(self, peer: Peer, interval: int) -> None:
        now = self._loop.time() if self._loop is not None else time.monotonic()
        peer.tunnel.set_persistent_keepalive(interval, now=now)
        self._flush()

    def set_private_key(self, key: bytes) -> None:
        self.core.set_private_key(key)
        self.peers = {k: p for k, p in self.peers.items() if k in self.core.peers}

    def rebind(self, port: int) -> None:
        """Listen on another UDP port (UAPI ``listen_port``); the old socket closes."""
        from tunnel.udp import UdpSocket

        new = UdpSocket.bind(None, port, family="dual", gso=self.udp_offload, gro=self.udp_offload)
        old = self.udp
        if self._loop is not None:
            self._loop.remove_reader(old.fileno())
            self._loop.add_reader(new.fileno(), self._on_udp)
        self.udp = new
        if self.fwmark:
            self.set_fwmark(self.fwmark)
        old.close()

    def set_fwmark(self, mark: int) -> None:
        import socket as _socket

        self.fwmark = mark
        with _socket.socket(fileno=os.dup(self.udp.fileno())) as s:
            try:
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_MARK, mark)
            except OSError as e:
                log.warning("%s: cannot set fwmark %#x: %s", self.name, mark, e)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach the readers and timers to ``loop`` (the running loop by default)."""
        loop = loop or asyncio.get_running_loop()
        self._loop = loop
        tune_allocator()  # no page faults per batch (tunnel/tun.py)
        if self.slice > 0:
            request_slice(self.slice)  # woken for a lone packet, run at once on a busy CPU (vpn/latency.py)
        self.stopped = asyncio.Event()
        self.core.wall_offset = time.time() - loop.time()
        loop.add_reader(self.tun.fileno(), self._on_tun)
        loop.add_reader(self.udp.fileno(), self._on_udp)
        now = loop.time()
        for peer in self.peers.values():
            if peer.tunnel.persistent_keepalive:
                peer.tunnel.set_persistent_keepalive(peer.tunnel.persistent_keepalive, now=now)
        self._flush()
        self._housekeeping = loop.call_later(self.housekeeping_interval, self._on_housekeeping)
        self.watchdog.start()

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        for fd in (self.tun.fileno(), self.udp.fileno()):
            try:
                loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
        for h in (self._timer, self._housekeeping):
            if h is not None:
                h.cancel()
        self._timer = self._housekeeping = None
        self._loop = None
        self.watchdog.stop()
        if self.stopped is not None:
            self.stopped.set()

    def close(self) -> None:
        self.stop()
        self.udp.close()
        self.tun.close()

    # -- data path -------------------------------------------------------------------------
    def _on_tun(self) -> None:
        loop = self._loop
        if loop is None:
            return
        tun = self.tun
        try:
            bufs = tun.read_batch(TSO_BATCH if self.tun_mode.tso_reads else BATCH)
        except OSError as e:
            if e.errno in (errno.EBADFD, errno.ENODEV, errno.EIO):
                # The interface was deleted (ip link del, wg-quick down): a normal way to stop.
                log.info("%s: the tun device is gone; stopping", self.name)
            else:
                log.error("%s: reading the tun device failed (%s); stopping", self.name, e)
            self.stop()
            return
        if not bufs:
            return
        self.progress += len(bufs)
        now = loop.time()
        packets, short, bad = read_packets(bufs, self.tun_mode)
        if short:
            self.drops["tun_short_packet"] += short
        if bad:
            self.drops["tun_bad_offload"] += bad
        for t, lst in route_reads(packets, self.allowed.lookup, self.drops, bulk=self.bulk).items():
            if t.user.bucket_out is not None:
                lst = t.user.police_out(lst, now, self.drops)
                if not lst:
                    continue
            t.encapsulate(lst, now=now)
        self._flush()

    def _on_udp(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        core = self.core
        # Under a handshake flood, a deep receive queue means we are behind: the core then sheds
        # handshakes from busy sources until it drains (one getsockopt per wakeup, under load only).
        core.behind = core.under_load(now=now) and self.udp.backlog_bytes() > BEHIND_BACKLOG_BYTES
        to_tun: list[bytes] = []
        forwarded: dict[Tunnel, list[bytes]] = {}
        for datagrams, addr in self.udp.recv_batch(BATCH):
            self.progress += len(datagrams)
            for t, packets in core.decapsulate(addr, datagrams, now=now, bulk=self.bulk):
                peer = t.user
                if peer.policed:
                    packets = peer.police_in(packets, now, self.drops, bulk=self.bulk)
                    if not packets:
                        continue
                self._route_inbound(t, packets, to_tun, forwarded)
        if to_tun:
            self.tun_mode = write_packets(self.tun, to_tun, self.tun_mode)
        for t, lst in forwarded.items():
            lst = forward_hop(lst, self.drops)
            if lst and t.user.bucket_out is not None:
                lst = t.user.police_out(lst, now, self.drops)
            if lst:
                self.forwarded_packets += len(lst)
                t.encapsulate(lst, now=now)
        self._flush()

    def send_packets(self, tunnel: Tunnel, packets: list[bytes]) -> None:
        """Encrypt whole IP packets for ``tunnel`` and send them now (the L2 runtime's way out).

        :param tunnel: the peer's tunnel (``peer.tunnel``).
        :param packets: IPv4/IPv6 packets, e.g. VXLAN-encapsulated frames.
        """
        loop = self._loop
        if loop is None or not packets:
            return
        now = loop.time()
        if tunnel.user.bucket_out is not None:
            packets = tunnel.user.police_out(packets, now, self.drops)
            if not packets:
                return
        tunnel.encapsulate(packets, now=now)
        self._flush()

    # -- outputs and timers ----------------------------------------------------------------
    def _flush(self) -> None:
        core = self.core
        if core.outbox:
            send = self.udp.send_batch
            for endpoint, datagrams in core.take_outbox():
                send(endpoint, datagrams)
        if core.events:
            log_core_events(core.take_events(), self.peers)
        loop = self._loop
        if loop is None:
            return
        nt = core.next_timer()
        if nt is not None and (self._timer_at is None or nt < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = nt
            self._timer = loop.call_at(nt, self._on_timer)

    def _on_timer(self) -> None:
        loop = self._loop
        self._timer = None
        self._timer_at = None
        if loop is None:
            return
        self.core.handle_timer(now=loop.time())
        self._flush()

    def _on_housekeeping(self) -> None:
        loop = self._loop
        if loop is None:
            return
        wall = time.time()
        self.core.wall_offset = wall - loop.time()
        self.watchdog.beat()
        self._check_stall(loop.time())
        if self._expiring:
            for peer in list(self._expiring.values()):
                self._apply_refusal(peer, wall)
        for cb in list(self.on_housekeeping):
            try:
                cb()
            except Exception:  # a housekeeping hook must never kill the data path
                log.exception("%s: housekeeping hook failed", self.name)
        if self._loop is not None:
            self._housekeeping = loop.call_later(self.housekeeping_interval, self._on_housekeeping)

    def queued(self) -> list[str]:
        """Which inputs have something waiting right now: ``"tun"`` and/or ``"udp"`` (a zero-timeout poll)."""
        return readable((("tun", self.tun), ("udp", self.udp)))

    def _check_stall(self, now: float) -> None:
        log_stall(self.name, self.stall.update(now=now, queued=self.queued(), progress=self.progress))

    # -- reporting -------------------------------------------------------------------------
    def offloads(self) -> list[str]:
        """Offloads in use, e.g. ``tun:vnet_hdr``, ``tun:gro``, ``udp:gso`` (for `pyvpn show`).

        ``tun:vnet_hdr``: buffers carry a virtio_net_hdr; ``tun:gro``/``tun:gro-udp``: decrypted TCP
        segments (UDP datagrams) are written as super-packets; ``tun:tso``: the tun hands us TSO
        super-packets that we segment; ``udp:gso``/``udp:gro``: UDP segmentation/coalescing offload.
        """
        out = self.tun_mode.names()
        for flag in ("gso", "gro"):
            if getattr(self.udp, flag, False):
                out.append(f"udp:{flag}")
        return out

    def drop_counts(self) -> Counter[str]:
        c = Counter(self.drops)
        c.update(self.core.drops)
        if self.l2 is not None:
            c.update(self.l2.drop_counts())
        return c

    def snapshot(self) -> dict[str, Any]:
        """Everything ``pyvpn show`` and the metrics endpoint report (no private keys; :mod:`vpn.report`)."""
        wall = time.time()
        for peer in list(self._expiring.values()):  # so that a reported "expired" is already enforced
            self._apply_refusal(peer, wall)
        return device_snapshot(self, wall=wall, now=self._loop.time() if self._loop else None)
