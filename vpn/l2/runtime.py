"""The running L2 segments of one device: taps and plain sockets in, one switch per VNI, VXLAN out.

Outbound (tap → peers), in :meth:`L2Runtime._on_tap`:

1. Read a batch of Ethernet frames from the tap.  With ``VLAN =`` on the tap's segments, the outer 802.1Q
   tag picks the VNI and is removed (:class:`vpn.l2.ethernet.VlanMap`); without it the tap is a trunk and tagged
   frames pass unchanged.
2. ``Switch.from_local`` learns the source MAC and decides the peers (head-end replication for floods).
3. Tunnel mode: each copy becomes ``IP(our VTEP → peer VTEP) ‖ UDP(→ Port) ‖ VXLAN(VNI) ‖ frame``
   (:func:`tunnel.encap.vxlan.encap_ip`), an ordinary IP packet that the peer's WireGuard session carries
   in type-4 messages (:meth:`vpn.device.Device.send_packets`).  Plain mode: ``VXLAN ‖ frame`` is the
   payload of a UDP datagram from ``Local:Port`` to each ``Remote`` on the underlay, **unencrypted**.

Inbound (peer → tap), through the device's one hook (:meth:`L2Runtime.take`, called by
``Device._route_inbound`` for decrypted packets that already passed the AllowedIPs source check and are
addressed to one of our VTEP addresses):

4. A UDP packet to a segment's port is ours: :func:`~tunnel.encap.vxlan.decap_ip` gives ``(vni, frame)``.
   Anything else (another protocol or port, a non-first IPv4 fragment) goes to the tun as before.
5. An unknown VNI, or a VNI the sending peer is not a member of, is dropped and counted
   (``l2_unknown_vni``, ``l2_vni_not_member``): a frame never crosses from one VNI to another, so segments
   of different tenants stay apart even over the same peers and sessions.
6. ``Switch.from_peer`` learns the source MAC on the peer and decides: the local tap and, on a hub, other
   member peers.  Writes and relays are batched and flushed once per event-loop iteration.

Housekeeping (once a second, from the device): membership follows the device's peers, MAC tables are swept
every :data:`EXPIRE_INTERVAL`, and MAC events are logged (:mod:`vpn.l2.status`).

Tap offloads
------------
Taps are opened with ``IFF_VNET_HDR`` (:func:`vpn.l2.start.open_segments`) and configured like the tun
(:func:`tunnel.tunmode.configure_tun`, in :class:`vpn.l2.ports.TapPort`): the kernel segments and checksums before
a read unless :data:`TAP_TSO_READS_DEFAULT` (then :func:`tunnel.tunmode.read_packets` cuts super-frames into
MTU-sized frames, which is all a peer ever sees), and the frames for a tap are written as GRO super-frames
(:func:`tunnel.offload.gro_frames`), frame by frame from the first ``EINVAL`` on
(:func:`tunnel.tunmode.write_packets`).  Frames of one flow read or received together take the bulk branches: one
switch decision per run of equal Ethernet headers (``count=``), one outer header per length
(:func:`~tunnel.encap.vxlan.encap_ip_batch`), one decapsulation pass
(:func:`~tunnel.encap.vxlan.decap_ip_batch`, through :meth:`L2Runtime.take_batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crypto.keys import encode_key
from tunnel.encap.vxlan import VxlanError, decap_ip, decap_ip_batch, encap_ip, encap_ip_batch, unpack_header
from tunnel.tunmode import read_packets, write_packets

from ..util import format_endpoint
from . import status
from .ethernet import same_head_runs
from .plan import L2ConfigError, TapPlan, choose_vtep, local_vteps
from .ports import Member, PlainPort, PlainSocket, PortKey, Segment, TapDevice, TapPort
from .switch import Switch

if TYPE_CHECKING:
    from crypto.tunnel import Tunnel

    from ..device import Device

__all__ = ["BATCH", "EXPIRE_INTERVAL", "TAP_TSO_READS_DEFAULT", "L2Runtime"]

log = logging.getLogger("pyvpn.l2")

# -- implementation constants ---------------------------------------------------------------------------------
BATCH = 256  # frames per wakeup and tap/socket
EXPIRE_INTERVAL = 10.0  # seconds between MAC-table sweeps (Linux's vxlan and bridge gc run about this often)
#: Let the kernel hand taps TSO super-frames to cut here (``PYVPN_TAP_TSO_READS=1``); off by default, as for
#: the tun (measured: benchmarks/l2-offloads.md).
TAP_TSO_READS_DEFAULT = os.environ.get("PYVPN_TAP_TSO_READS", "") == "1"
_IPPROTO_UDP = 17


class L2Runtime:
    """The running segments of one :class:`~vpn.device.Device`.

    :param device: the device whose peers and sessions carry tunnel-mode segments.
    :param plans: from :func:`plan_segments`.
    :param taps: an open tap device per :attr:`TapPlan.name` (real, or ``MemoryTun(tap=True)``).
    :param plain_sockets: a bound UDP socket per plain ``(Local, Port)``.
    :param interface_addresses: the interface's addresses (our VTEPs).
    :param peer_vteps: explicit VTEP addresses by public key (``#pyvpn Vtep``).
    :param on_close: called once by :meth:`close` after everything is closed (e.g. to delete bridges).
    :param tso_reads: keep the TSO/checksum offloads of vnet-hdr taps on, so that reads may be super-frames
        (cut by :func:`tunnel.offload.segment`); otherwise the kernel segments before the read.
    """

    def __init__(self, device: Device, plans: Sequence[TapPlan], *, taps: Mapping[str, TapDevice],
                 plain_sockets: Mapping[tuple[str, int], PlainSocket] | None = None,
                 interface_addresses: Iterable[str] = (), peer_vteps: Mapping[bytes, str] | None = None,
                 on_close: Callable[[], None] | None = None, tso_reads: bool = TAP_TSO_READS_DEFAULT) -> None:
        self.device = device
        self.drops: Counter[str] = Counter()
        self._local = local_vteps(interface_addresses)
        self._local_packed = {v: a.packed for v, a in self._local.items()}
        self._peer_vteps = dict(peer_vteps or {})
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taps: list[TapPort] = []
        self._plain: dict[tuple[str, int], PlainPort] = {}
        self._segments: list[Segment] = []
        self._by_port: dict[int, dict[int, Segment]] = {}  # tunnel mode: UDP port → VNI → segment
        self._pending_tunnels: dict[Tunnel, list[bytes]] = {}
        self._flush_scheduled = False
        self._peer_signature: tuple[Any, ...] | None = None
        self._known_keys: set[bytes] = set()
        self._warned: set[tuple[int, bytes]] = set()
        self._last_expire = 0.0
        self._closed = False
        for tp in plans:
            port = TapPort(tp, taps[tp.name], tso_reads)
            self._taps.append(port)
            for sp in tp.segments:
                plain = None
                if sp.plain:
                    assert sp.local is not None
                    key = (sp.local, sp.port)
                    plain = self._plain.get(key)
                    if plain is None:
                        if plain_sockets is None or key not in plain_sockets:
                            raise L2ConfigError(f"segment VNI {sp.vni}: no socket for {sp.local}:{sp.port}")
                        plain = self._plain[key] = PlainPort(key, plain_sockets[key])
                seg = Segment(sp, port, plain)
                self._segments.append(seg)
                port.segments[sp.vni] = seg
                if plain is not None:
                    plain.segments[sp.vni] = seg
                else:
                    self._by_port.setdefault(sp.port, {})[sp.vni] = seg
            if tp.trunk:
                port.only = port.segments[tp.segments[0].vni]
        #: Our VTEP addresses (packed) that the device checks before calling :meth:`take`; empty without
        #: tunnel-mode segments, so the device's hook costs one set lookup then.
        self.vteps: frozenset[bytes] = frozenset(
            ipaddress.ip_interface(a).ip.packed for a in interface_addresses) if self._by_port else frozenset()

    # -- lifecycle -------------------------------------------------------------------------------------------
    @property
    def segments(self) -> tuple[int, ...]:
        """The VNIs, in config order."""
        return tuple(s.vni for s in self._segments)

    def switch(self, vni: int) -> Switch[PortKey]:
        """The switch of segment ``vni`` (for tests and status).

        :raises KeyError: no such segment.
        """
        for s in self._segments:
            if s.vni == vni:
                return s.switch
        raise KeyError(vni)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach tap and plain-socket readers to ``loop``, hook into the device, resolve members."""
        loop = loop or asyncio.get_running_loop()
        self._loop = loop
        self._last_expire = loop.time()
        self.sync_peers()
        for tp in self._taps:
            loop.add_reader(tp.tap.fileno(), self._on_tap, tp)
        for ps in self._plain.values():
            loop.add_reader(ps.sock.fileno(), self._on_plain, ps)
        self.device.l2 = self
        self.device.on_housekeeping.append(self._housekeeping)
        for seg in self._segments:
            p = seg.plan
            if p.plain:
                log.warning("segment VNI %d on %s: plain VXLAN %s <-> %s is NOT encrypted or authenticated; "
                            "anyone on the path can read and inject frames", p.vni, p.tap,
                            format_endpoint((p.local or "?", p.port)),
                            ", ".join(format_endpoint(r) for r in p.remotes))
            else:
                log.info("segment VNI %d on %s%s: MTU %d, %d member peer(s)%s", p.vni, p.tap,
                         f" (bridge {seg.port.plan.bridge})" if seg.port.plan.bridge else "", seg.port.plan.mtu,
                         len(seg.members), ", hub" if p.hub else "")

    def stop(self) -> None:
        """Detach from the loop and the device (taps and sockets stay open)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            for tp in self._taps:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(tp.tap.fileno())
            for ps in self._plain.values():
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(ps.sock.fileno())
        if getattr(self.device, "l2", None) is self:
            self.device.l2 = None
        with contextlib.suppress(ValueError):
            self.device.on_housekeeping.remove(self._housekeeping)

    def close(self) -> None:
        """Stop, close every tap (which removes it) and socket, then run ``on_close``.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        for tp in self._taps:
            with contextlib.suppress(OSError):
                tp.tap.close()
        for ps in self._plain.values():
            with contextlib.suppress(OSError):
                ps.sock.close()
        if self._on_close is not None:
            self._on_close()

    # -- membership ------------------------------------------------------------------------------------------
    def sync_peers(self) -> None:
        """Bring each tunnel segment's members in line with the device's peers (added/removed via UAPI too)."""
        peers = self.device.peers
        signature = tuple((k, id(p.tunnel), tuple(p.allowed_ips)) for k, p in peers.items())
        if signature == self._peer_signature:
            return
        self._peer_signature = signature
        self._known_keys = set(peers)
        for seg in self._segments:
            if seg.plan.plain:
                continue
            refs = set(seg.plan.members)
            wanted: dict[bytes, Member] = {}
            for key, peer in peers.items():
                if refs and encode_key(key) not in refs and (peer.name is None or peer.name not in refs):
                    continue
                try:
                    vtep = choose_vtep(peer.allowed_ips, self._peer_vteps.get(key), self._local)
                except ValueError:
                    vtep = None
                if vtep is None:
                    if (seg.vni, key) not in self._warned:
                        self._warned.add((seg.vni, key))
                        peer.log.warning("has no VTEP address for segment VNI %d (no usable AllowedIPs of an IP "
                                         "version we have an Address of); set '#pyvpn Vtep = ...'", seg.vni)
                    continue
                wanted[key] = Member(key, peer.tunnel, self._local_packed[vtep.version], vtep.packed)
            for gone in [k for k in seg.members if k not in wanted]:
                seg.switch.remove_peer(gone)
            for key in wanted:
                seg.switch.add_peer(key)
            seg.members = wanted

    # -- inbound: the device hook ----------------------------------------------------------------------------
    def take(self, tunnel: Tunnel, packet: bytes) -> bool:
        """Consume ``packet`` if it is VXLAN for one of our tunnel segments; False = not ours (to the tun).

        Called by the device for decrypted packets from ``tunnel`` that passed the AllowedIPs source check
        and whose destination is in :attr:`vteps`.

        :param tunnel: the peer it came from.
        :param packet: the whole inner IP packet.
        """
        n = len(packet)
        version = packet[0] >> 4
        if version == 4:
            if n < 28 or packet[9] != _IPPROTO_UDP or (packet[6] & 0x1F or packet[7]):
                return False  # not UDP, or a non-first fragment (no UDP header in it)
            l4 = (packet[0] & 0x0F) * 4
        elif version == 6:
            if n < 48 or packet[6] != _IPPROTO_UDP:
                return False
            l4 = 40
        else:
            return False
        if n < l4 + 8:
            return False
        dport = (packet[l4 + 2] << 8) | packet[l4 + 3]
        by_vni = self._by_port.get(dport)
        if by_vni is None:
            return False
        try:
            vni, frame, _src = decap_ip(packet, dst_port=dport)
        except VxlanError:
            self.drops["l2_bad_vxlan"] += 1
            return True
        seg = by_vni.get(vni)
        if seg is None:
            self.drops["l2_unknown_vni"] += 1
            return True
        self._from_member(tunnel, seg, [frame])
        return True

    def take_batch(self, tunnel: Tunnel, packets: list[bytes]) -> list[bytes]:
        """:meth:`take` for a batch from ``tunnel`` (same checks by the device); returns what is not ours.

        A batch that is all VXLAN of one VNI to one port (:func:`~tunnel.encap.vxlan.decap_ip_batch`, what
        a GRO batch of one tunnelled flow is) is decapsulated with C-level loops, and each run of frames
        with the same Ethernet header gets one switch decision; anything else goes packet by packet.
        """
        if len(packets) > 1:
            for port, by_vni in self._by_port.items():
                r = decap_ip_batch(packets, dst_port=port)
                if r is None:
                    continue
                vni, frames = r
                seg = by_vni.get(vni)
                if seg is None:
                    self.drops["l2_unknown_vni"] += len(frames)
                else:
                    self._from_member(tunnel, seg, frames)
                return []
        return [p for p in packets if not self.take(tunnel, p)]

    def _from_member(self, tunnel: Tunnel, seg: Segment, frames: list[bytes]) -> None:
        """Frames of segment ``seg`` decapsulated from ``tunnel``: membership, switch, tap and relays."""
        key = tunnel.public_key
        if key not in seg.members:
            if key not in self._known_keys:
                self.sync_peers()
            if key not in seg.members:
                self.drops["l2_vni_not_member"] += len(frames)
                return
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        switch = seg.switch
        for run in same_head_runs(frames):
            if len(run) > 1 and switch.floods(run[0], now=now):
                # floods pass storm control frame by frame
                for frame in run:
                    fwd = switch.from_peer(frame, key, now=now)
                    if fwd.deliver_local:
                        self._to_tap(seg, [frame])
                    for dst in fwd.to_peers:
                        self._to_peer(seg, dst, [frame])
                continue
            fwd = switch.from_peer(run[0], key, now=now, count=len(run))
            if fwd.deliver_local:
                self._to_tap(seg, run)
            for dst in fwd.to_peers:
                self._to_peer(seg, dst, run)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    # -- outbound --------------------------------------------------------------------------------------------
    def _on_tap(self, tp: TapPort) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            frames = tp.tap.read_batch(BATCH)
        except OSError as e:
            log.error("tap %s: read failed (%s); no longer reading it", tp.plan.name, e)
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(tp.tap.fileno())
            return
        if not frames:
            return
        frames, short, bad = read_packets(frames, tp.mode, l2=True)
        if short or bad:
            self.drops["l2_tap_bad_offload"] += short + bad
        now = loop.time()
        only, vlans = tp.only, tp.vlans
        if only is not None:
            for run in same_head_runs(frames):
                fwd = only.switch.from_local(run[0], now=now, count=len(run))
                for dst in fwd.to_peers:
                    self._to_peer(only, dst, run)
        else:
            for frame in frames:
                mapped = vlans.to_vni(frame) if vlans is not None else None
                if mapped is None:
                    self.drops["l2_unmapped_vlan"] += 1
                    continue
                vni, frame = mapped
                seg = tp.segments[vni]
                fwd = seg.switch.from_local(frame, now=now)
                for dst in fwd.to_peers:
                    self._to_peer(seg, dst, [frame])
        self._flush()

    def _on_plain(self, ps: PlainPort) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        touched = False
        for datagrams, addr in ps.sock.recv_batch(BATCH):
            ip = addr[0]
            for d in datagrams:
                try:
                    vni, frame = unpack_header(d)
                except VxlanError:
                    self.drops["l2_bad_vxlan"] += 1
                    continue
                seg = ps.segments.get(vni)
                if seg is None:
                    self.drops["l2_unknown_vni"] += 1
                    continue
                if ip not in seg.remotes:
                    self.drops["l2_plain_unknown_source"] += 1
                    continue
                fwd = seg.switch.from_peer(frame, ip, now=now)
                if fwd.deliver_local:
                    self._to_tap(seg, [frame])
                for dst in fwd.to_peers:
                    self._to_peer(seg, dst, [frame])
                touched = True
        if touched:
            self._flush()

    def _to_tap(self, seg: Segment, frames: list[bytes]) -> None:
        tp = seg.port
        if tp.vlans is None:
            tp.pending += frames
            return
        for frame in frames:
            tagged = tp.vlans.from_vni(seg.vni, frame)
            if tagged is None:
                self.drops["l2_unmapped_vlan"] += 1
            else:
                tp.pending.append(tagged)

    def _to_peer(self, seg: Segment, dst: PortKey, frames: list[bytes]) -> None:
        if seg.plain is not None:
            addr = seg.remotes.get(dst) if isinstance(dst, str) else None
            if addr is not None:
                seg.plain.pending.setdefault(addr, []).extend(map(seg.header.__add__, frames))
            return
        m = seg.members.get(dst) if isinstance(dst, bytes) else None
        if m is None:
            return
        try:
            packets = encap_ip_batch(frames, vni=seg.vni, src_ip=m.src, dst_ip=m.dst, dst_port=seg.plan.port)
        except ValueError:  # one frame too big for a datagram: the others still go
            packets = []
            for frame in frames:
                try:
                    packets.append(encap_ip(frame, vni=seg.vni, src_ip=m.src, dst_ip=m.dst,
                                            dst_port=seg.plan.port))
                except ValueError:
                    self.drops["l2_frame_too_big"] += 1
        lst = self._pending_tunnels.get(m.tunnel)
        if lst is None:
            self._pending_tunnels[m.tunnel] = packets
        else:
            lst += packets

    def _flush(self) -> None:
        self._flush_scheduled = False
        for tp in self._taps:
            if tp.pending:
                frames, tp.pending = tp.pending, []
                try:
                    tp.mode = write_packets(tp.tap, frames, tp.mode, l2=True)
                except OSError as e:
                    self.drops["l2_tap_write_error"] += len(frames)
                    log.debug("tap %s: write failed: %s", tp.plan.name, e)
        for ps in self._plain.values():
            if ps.pending:
                pending, ps.pending = ps.pending, {}
                for addr, datagrams in pending.items():
                    ps.sock.send_batch(addr, datagrams)
        if self._pending_tunnels:
            pending_t, self._pending_tunnels = self._pending_tunnels, {}
            peers = self.device.peers
            for tunnel, packets in pending_t.items():
                peer = peers.get(tunnel.public_key)
                if peer is None or peer.tunnel is not tunnel:  # removed since the last sync
                    self.drops["l2_peer_gone"] += len(packets)
                    continue
                self.device.send_packets(tunnel, packets)

    # -- housekeeping and status -----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self.sync_peers()
        now = loop.time()
        if now - self._last_expire >= EXPIRE_INTERVAL:
            self._last_expire = now
            for seg in self._segments:
                seg.switch.expire(now=now)
        for seg in self._segments:
            status.log_mac_events(self.device, seg)

    def drop_counts(self) -> Counter[str]:
        """Drops by reason: the runtime's own, each switch's ``drop_*`` as ``l2_*``, tap write refusals."""
        return status.drop_counts(self.drops, self._segments, self._taps)

    def snapshot(self) -> list[dict[str, Any]]:
        """One entry per segment for ``pyvpn show`` (``vni``, ``tap``, ``macs``, ``plain``, ...)."""
        return status.snapshot(self.device, self._segments, self._loop.time() if self._loop is not None else None)
