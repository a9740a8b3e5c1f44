"""L2 segments in the running daemon: tap devices, one learning switch per VNI, VXLAN inside the tunnel.

Theory of operation
-------------------
A segment (``#pyvpn [Segment]`` in the config, :class:`vpn.config.SegmentConfig`) is one VXLAN network
(VNI) with a local port, a tap device (usually a port of a Linux bridge), and one port per member peer.
Each VNI is a :class:`vpn.switch.Switch`; ``pyvpn server`` is the hub of its star (``hub=True``: it relays
frames between clients), clients are spokes (they never relay).  One daemon carries its L3 traffic and any
number of segments over the same peers and sessions.

Outbound (tap → peers), in :meth:`L2Runtime._on_tap`:

1. Read a batch of Ethernet frames from the tap.  With ``VLAN =`` on the tap's segments, the outer 802.1Q
   tag picks the VNI and is removed (:class:`vpn.switch.VlanMap`); without it the tap is a trunk and tagged
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

Addresses and MTU
-----------------
* **VTEPs.**  Ours is the interface ``Address`` of the same family as the peer's.  A peer's is its
  ``#pyvpn Vtep`` if set, else the first host address of its AllowedIPs (the address itself for a /32 or
  /128, the network address + 1 otherwise, so a client whose server peer has ``AllowedIPs = 198.19.0.0/24``
  uses ``198.19.0.1``); IPv4 is preferred when both sides have it.  Prefixes of length 0 are never used:
  set ``Vtep`` for a peer with ``AllowedIPs = 0.0.0.0/0``.  The peer must accept our VTEP address as a
  source (it is in its AllowedIPs for us), which holds for the usual interface addresses.
* **A stock peer joins** with a kernel ``vxlan`` device over its WireGuard interface, for instance
  ``ip link add vx100 type vxlan id 100 dstport 4789 local <its wg address> remote <our address>`` and
  ``mtu <tap MTU>``, enslaved to a bridge.
* **Tap MTU** = tunnel MTU − 50 with IPv4 VTEPs, − 70 with IPv6 ones (:func:`~tunnel.encap.vxlan.mtu_for_tap`,
  Linux's ``VXLAN_HEADROOM``): 1370 / 1350 over the default 1420; − 70 as soon as one member peer of the
  segment (at start-up) has an IPv6 VTEP.  Plain mode assumes a 1500-byte underlay
  (1450 / 1430).  ``MTU =`` overrides it (a warning is logged when it is larger).  Hosts on the segment
  must use an MTU no larger than the tap's, or the bridge drops their large frames at the tap.  As with
  Linux's vxlan, an 802.1Q tag passing through a trunk is not counted in the MTU.
* **Plain mode** (``Mode = plain``) is standard RFC 7348: one UDP socket per ``Local:Port`` (shared by the
  plain segments that name the same pair, demultiplexed by VNI), datagrams sent to every ``Remote`` and
  accepted only from the ``Remote`` addresses.  It interoperates with the kernel ``vxlan`` device
  (``dstport 4789``).  Plain segments never relay (a full mesh, like the kernel's).  Start-up logs a
  warning, and ``pyvpn show`` marks them, because nothing is encrypted or authenticated.

Untrusted members
-----------------
Every member of a segment may be hostile; the switch (:mod:`vpn.switch`) enforces the rules: MACs of the
local tap are sticky (``l2_local_mac_claim``), MAC moves between peers are damped (``l2_mac_move_limited``)
and logged (each housekeeping tick, at most :data:`MAX_EVENT_LINES` lines per segment), each peer holds
at most ``MacLimitPerPeer`` MACs (``l2_mac_quota``), flooded frames are rate-limited per peer on the hub
and per segment (``l2_broadcast_rate_peer``, ``l2_broadcast_rate_segment``), and on a tap that maps VLANs
peers' tagged frames are dropped (``l2_peer_vlan_tag``).

Counters: device-level drops (merged into ``Device.drop_counts``, so ``pyvpn show`` lists them) are
``l2_bad_vxlan``, ``l2_unknown_vni``, ``l2_vni_not_member``, ``l2_unmapped_vlan``,
``l2_plain_unknown_source``, ``l2_tap_bad_offload``, ``l2_tap_write_<errno>`` and each switch's ``drop_*``
reasons as ``l2_*``.

Tap offloads
------------
Taps are opened with ``IFF_VNET_HDR`` and configured like the tun (:func:`tunnel.tun.configure_tun`): the
kernel segments and checksums before a read unless :data:`TAP_TSO_READS_DEFAULT` (then
:func:`tunnel.tun.read_packets` cuts super-frames into MTU-sized frames, which is all a peer ever
sees), and the frames for a tap are written as GRO super-frames (:func:`tunnel.offload.gro_frames`), frame
by frame from the first ``EINVAL`` on (:func:`tunnel.tun.write_packets`).  Frames of one flow read or
received together take the bulk branches: one switch decision per run of equal Ethernet headers
(``count=``), one outer header per length (:func:`~tunnel.encap.vxlan.encap_ip_batch`), one decapsulation
pass (:func:`~tunnel.encap.vxlan.decap_ip_batch`, through :meth:`L2Runtime.take_batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from crypto.keys import abbreviate, encode_key
from tunnel.encap.vxlan import (
    VXLAN_PORT,
    VxlanError,
    decap_ip,
    decap_ip_batch,
    encap_ip,
    encap_ip_batch,
    mtu_for_tap,
    pack_header,
    unpack_header,
)
from tunnel.tun import TunMode, configure_tun, read_packets, write_packets

from .switch import LOCAL, Switch, VlanMap
from .util import format_endpoint

if TYPE_CHECKING:
    from crypto.tunnel import Tunnel
    from tunnel.udp import Family

    from .config import Config
    from .device import Device

__all__ = [
    "BATCH",
    "L2ConfigError",
    "L2Runtime",
    "PlainSocket",
    "SegmentPlan",
    "TapDevice",
    "TapPlan",
    "choose_vtep",
    "local_vteps",
    "open_segments",
    "plan_segments",
]

log = logging.getLogger("pyvpn.l2")

# -- implementation constants ---------------------------------------------------------------------------------
BATCH = 256  # frames per wakeup and tap/socket
EXPIRE_INTERVAL = 10.0  # seconds between MAC-table sweeps (Linux's vxlan and bridge gc run about this often)
MAX_EVENT_LINES = 5  # MAC move / claim log lines per segment and housekeeping tick (1 s)
PLAIN_UNDERLAY_MTU = 1500  # assumed underlay MTU for plain segments without MTU =
#: Let the kernel hand taps TSO super-frames to cut here (``PYVPN_TAP_TSO_READS=1``); off by default, as for
#: the tun (measured: benchmarks/l2-offloads.md).
TAP_TSO_READS_DEFAULT = os.environ.get("PYVPN_TAP_TSO_READS", "") == "1"
_IPPROTO_UDP = 17
_ETH_HEAD = itemgetter(slice(0, 14))  # MACs and EtherType (or TPID): what a switch decision depends on

PortKey = bytes | str  # a switch port: a peer's public key (tunnel mode) or a remote's IP (plain mode)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TapDevice(Protocol):
    """What a segment needs from its tap: :class:`tunnel.tun.PytunDevice` or ``MemoryTun(tap=True)``."""

    @property
    def name(self) -> str: ...
    def fileno(self) -> int: ...
    def read_batch(self, max_packets: int) -> list[bytes]: ...
    def write_batch(self, packets: list[bytes]) -> int: ...
    def close(self) -> None: ...


class PlainSocket(Protocol):
    """What a plain segment needs from its UDP socket: :class:`tunnel.udp.UdpSocket` or ``MemoryUdp``."""

    def fileno(self) -> int: ...
    def recv_batch(self, max_datagrams: int) -> list[tuple[list[bytes], tuple[str, int]]]: ...
    def send_batch(self, addr: tuple[str, int], datagrams: list[bytes]) -> None: ...
    def close(self) -> None: ...


class L2ConfigError(ValueError):
    """The segments of a config cannot run together (a tap shared inconsistently, no VTEP address, ...)."""


# -- the plan (pure) ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One segment, validated and with defaults resolved.

    :param vni: the VXLAN Network Identifier.
    :param tap: its tap device's name.
    :param port: VXLAN UDP destination port.
    :param plain: unencrypted RFC 7348 over the underlay instead of VXLAN inside the tunnel.
    :param members: peer names or base64 public keys; empty = every peer (tunnel mode only).
    :param vlan: the VLAN ID that carries this VNI on the tap, or None (untagged / trunk).
    :param local: plain mode: the underlay address to bind.
    :param remotes: plain mode: ``(ip, port)`` of every remote VTEP.
    :param mac_age: MAC entry lifetime in seconds.
    :param mac_limit: MAC table bound.
    :param mac_limit_per_peer: MAC quota of each peer.
    :param broadcast_rate_per_peer: / :param broadcast_burst_per_peer: storm control per peer (hub only;
        frames/s and frames; rate 0 = off).
    :param broadcast_rate: / :param broadcast_burst: storm control for all peers together.
    :param hub: relay frames between peers (the server of a star).
    :param ipv6_vteps: whether any outer (VTEP) address is IPv6 (decides the default MTU).
    """

    vni: int
    tap: str
    port: int = VXLAN_PORT
    plain: bool = False
    members: tuple[str, ...] = ()
    vlan: int | None = None
    local: str | None = None
    remotes: tuple[tuple[str, int], ...] = ()
    mac_age: float = 300.0
    mac_limit: int = 4096
    mac_limit_per_peer: int = 256
    broadcast_rate_per_peer: int = 200
    broadcast_burst_per_peer: int = 400
    broadcast_rate: int = 1000
    broadcast_burst: int = 2000
    hub: bool = False
    ipv6_vteps: bool = False


@dataclass(frozen=True, slots=True)
class TapPlan:
    """One tap device and the segments on it (several only when they are told apart by ``VLAN``).

    :param name: tap interface name.
    :param bridge: Linux bridge to join (created when missing), or None.
    :param mtu: the tap MTU.
    :param segments: the segments on this tap.
    """

    name: str
    bridge: str | None
    mtu: int
    segments: tuple[SegmentPlan, ...]

    @property
    def trunk(self) -> bool:
        """One segment without ``VLAN``: every frame, tagged or not, belongs to it unchanged."""
        return len(self.segments) == 1 and self.segments[0].vlan is None

    def vlan_map(self) -> VlanMap | None:
        """The VLAN ↔ VNI map of the tap, or None for a trunk."""
        if self.trunk:
            return None
        untagged = [s.vni for s in self.segments if s.vlan is None]
        return VlanMap({s.vlan: s.vni for s in self.segments if s.vlan is not None},
                       untagged=untagged[0] if untagged else None)


def local_vteps(addresses: Iterable[str | ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> dict[int, Address]:
    """Our VTEP address per IP version: the first interface address of each family.

    :param addresses: the interface's ``Address`` values (with or without prefix length).
    """
    out: dict[int, Address] = {}
    for a in addresses:
        ip = ipaddress.ip_interface(a).ip
        out.setdefault(ip.version, ip)
    return out


def choose_vtep(allowed_ips: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network],
                explicit: str | None, local: Mapping[int, Address]) -> Address | None:
    """A peer's VTEP address: ``explicit`` or the first host address of its AllowedIPs (see module docstring).

    Only families we have a local VTEP for count; IPv4 is preferred.  Returns None when nothing fits.

    :param allowed_ips: the peer's AllowedIPs, in order.
    :param explicit: its ``#pyvpn Vtep``, or None.
    :param local: our VTEP per IP version (:func:`local_vteps`).
    """
    if explicit is not None:
        ip = ipaddress.ip_address(explicit)
        return ip if ip.version in local else None
    nets = [ipaddress.ip_network(n, strict=False) for n in allowed_ips]
    for version in (4, 6):
        if version not in local:
            continue
        for net in nets:
            if net.version != version or net.prefixlen == 0:
                continue
            if net.prefixlen >= net.max_prefixlen - 1:  # /32, /31 (RFC 3021), /128, /127
                return net.network_address
            return net.network_address + 1
    return None


def _plain_remotes(seg: Any) -> tuple[tuple[str, int], ...]:
    from .config import parse_remote

    out = []
    for r in seg.remote:
        ip, port = parse_remote(r)
        out.append((ip, port or seg.port))
    return tuple(out)


def plan_segments(cfg: Config, *, role: str, tunnel_mtu: int) -> tuple[TapPlan, ...]:
    """Validate the config's segments and work out taps, MTUs, hubs and VLAN maps (no I/O).

    :param cfg: the parsed config.
    :param role: ``"server"`` (hub of its tunnel segments) or ``"client"``.
    :param tunnel_mtu: the WireGuard interface MTU.
    :raises L2ConfigError: see :class:`L2ConfigError`.
    """
    local = local_vteps(cfg.interface.addresses)
    peer_cfg = {encode_key(p.public_key): p for p in cfg.peers}
    by_name = {p.name: p for p in cfg.peers if p.name}
    by_tap: dict[str, list[tuple[Any, SegmentPlan, int]]] = {}
    for seg in cfg.segments:
        where = f"segment VNI {seg.vni} (line {seg.line})"
        plain = seg.mode == "plain"
        if plain:
            if seg.local is None or not seg.remote:
                raise L2ConfigError(f"{where}: plain mode needs Local and Remote")
            try:
                remotes = _plain_remotes(seg)
            except ValueError as e:
                raise L2ConfigError(f"{where}: Remote: {e}") from None
            lv = ipaddress.ip_address(seg.local).version
            if any(ipaddress.ip_address(ip).version != lv for ip, _ in remotes):
                raise L2ConfigError(f"{where}: Local and every Remote must be the same IP version")
            ipv6 = lv == 6
            base_mtu = PLAIN_UNDERLAY_MTU
        else:
            if not local:
                raise L2ConfigError(f"{where}: tunnel mode needs an interface Address (our VTEP address)")
            remotes = ()
            refs = seg.peers or tuple(peer_cfg)
            members = [peer_cfg.get(r) or by_name.get(r) for r in refs]
            versions = set()
            for p in members:
                if p is None:
                    continue
                vtep = choose_vtep(p.allowed_ips, p.vtep, local)
                if vtep is not None:
                    versions.add(vtep.version)
            ipv6 = 6 in versions or (not versions and 4 not in local)  # the larger headroom wins
            base_mtu = tunnel_mtu
        try:
            limit = mtu_for_tap(base_mtu, ipv6)
        except ValueError as e:
            raise L2ConfigError(f"{where}: {e}") from None
        mtu = seg.mtu or limit
        if seg.mtu and seg.mtu > limit:
            log.warning("%s: MTU %d is larger than %d (%s - %d bytes of VXLAN headroom); large frames will "
                        "not fit", where, seg.mtu, limit, "underlay 1500" if plain else f"tunnel {base_mtu}",
                        base_mtu - limit)
        plan = SegmentPlan(vni=seg.vni, tap=seg.tap, port=seg.port, plain=plain,
                           members=tuple(seg.peers), vlan=seg.vlan, local=seg.local if plain else None,
                           remotes=remotes, mac_age=float(seg.mac_age), mac_limit=seg.mac_limit,
                           mac_limit_per_peer=min(seg.mac_limit, seg.mac_limit_per_peer or 256),
                           broadcast_rate_per_peer=seg.broadcast_rate_per_peer,
                           broadcast_burst_per_peer=seg.broadcast_burst_per_peer or 2 * seg.broadcast_rate_per_peer,
                           broadcast_rate=seg.broadcast_rate,
                           broadcast_burst=seg.broadcast_burst or 2 * seg.broadcast_rate,
                           hub=role == "server" and not plain, ipv6_vteps=ipv6)
        by_tap.setdefault(seg.tap, []).append((seg, plan, mtu))

    taps = []
    for name, entries in by_tap.items():
        bridges = {s.bridge for s, _, _ in entries if s.bridge}
        if len(bridges) > 1:
            raise L2ConfigError(f"tap {name}: its segments name different bridges {sorted(bridges)}")
        plans = tuple(p for _, p, _ in entries)
        if len(plans) > 1:
            untagged = [p.vni for p in plans if p.vlan is None]
            vids = [p.vlan for p in plans if p.vlan is not None]
            if len(untagged) > 1:
                raise L2ConfigError(f"tap {name}: segments {untagged} share it without VLAN; give all but one "
                                    "a VLAN")
            if len(set(vids)) != len(vids):
                raise L2ConfigError(f"tap {name}: a VLAN is mapped to two segments")
        taps.append(TapPlan(name=name, bridge=bridges.pop() if bridges else None,
                            mtu=min(m for _, _, m in entries), segments=plans))
    return tuple(taps)


# -- the runtime -------------------------------------------------------------------------------------------------
class _Member:
    """A peer of a tunnel-mode segment: where its copies go and with which outer addresses."""

    __slots__ = ("dst", "key", "src", "tunnel")

    def __init__(self, key: bytes, tunnel: Tunnel, src: bytes, dst: bytes) -> None:
        self.key = key
        self.tunnel = tunnel
        self.src = src  # our VTEP, packed
        self.dst = dst  # its VTEP, packed


class _TapPort:
    """A tap device, its segments and the frames waiting to be written to it."""

    def __init__(self, plan: TapPlan, tap: TapDevice, tso_reads: bool) -> None:
        self.plan = plan
        self.tap = tap
        self.vlans = plan.vlan_map()
        self.segments: dict[int, _Segment] = {}
        self.only: _Segment | None = None
        self.pending: list[bytes] = []
        #: the tap's offloads, as for the tun: vnet header, TSO reads or not, GRO writes
        self.mode: TunMode = configure_tun(tap, tso_reads=tso_reads)


class _PlainSocket:
    """One UDP socket on ``Local:Port`` for the plain segments that share it."""

    def __init__(self, key: tuple[str, int], sock: PlainSocket) -> None:
        self.key = key
        self.sock = sock
        self.segments: dict[int, _Segment] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}


class _Segment:
    """Runtime state of one VNI."""

    def __init__(self, plan: SegmentPlan, port: _TapPort, plain: _PlainSocket | None) -> None:
        self.plan = plan
        self.vni = plan.vni
        self.port = port
        self.plain = plain
        self.switch: Switch[PortKey] = Switch(
            plan.vni, max_entries=plan.mac_limit, age=plan.mac_age, hub=plan.hub,
            max_per_peer=plan.mac_limit_per_peer, flood_rate_per_peer=plan.broadcast_rate_per_peer,
            flood_burst_per_peer=max(1, plan.broadcast_burst_per_peer), flood_rate=plan.broadcast_rate,
            flood_burst=max(1, plan.broadcast_burst),
            untagged_only=not port.plan.trunk)  # the tap maps VLANs: peers' own tags would cross into them
        self.header = pack_header(plan.vni)
        self.members: dict[bytes, _Member] = {}  # tunnel mode
        self.remotes: dict[str, tuple[str, int]] = {ip: (ip, p) for ip, p in plan.remotes}  # plain mode
        for ip in self.remotes:
            self.switch.add_peer(ip)


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
        self._taps: list[_TapPort] = []
        self._plain: dict[tuple[str, int], _PlainSocket] = {}
        self._segments: list[_Segment] = []
        self._by_port: dict[int, dict[int, _Segment]] = {}  # tunnel mode: UDP port → VNI → segment
        self._pending_tunnels: dict[Tunnel, list[bytes]] = {}
        self._flush_scheduled = False
        self._peer_signature: tuple[Any, ...] | None = None
        self._known_keys: set[bytes] = set()
        self._warned: set[tuple[int, bytes]] = set()
        self._last_expire = 0.0
        self._closed = False
        for tp in plans:
            port = _TapPort(tp, taps[tp.name], tso_reads)
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
                        plain = self._plain[key] = _PlainSocket(key, plain_sockets[key])
                seg = _Segment(sp, port, plain)
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
            wanted: dict[bytes, _Member] = {}
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
                wanted[key] = _Member(key, peer.tunnel, self._local_packed[vtep.version], vtep.packed)
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

    def _from_member(self, tunnel: Tunnel, seg: _Segment, frames: list[bytes]) -> None:
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
        for run in self._runs(frames):
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

    @staticmethod
    def _runs(frames: list[bytes]) -> list[list[bytes]]:
        """Consecutive frames with the same first 14 bytes (MACs and EtherType or TPID), in order."""
        if len(frames) == 1:
            return [frames]
        heads = list(map(_ETH_HEAD, frames))
        if heads.count(heads[0]) == len(heads):
            return [frames]
        return [list(g) for _, g in groupby(frames, _ETH_HEAD)]

    # -- outbound --------------------------------------------------------------------------------------------
    def _on_tap(self, tp: _TapPort) -> None:
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
            for run in self._runs(frames):
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

    def _on_plain(self, ps: _PlainSocket) -> None:
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

    def _to_tap(self, seg: _Segment, frames: list[bytes]) -> None:
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

    def _to_peer(self, seg: _Segment, dst: PortKey, frames: list[bytes]) -> None:
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
            self._log_mac_events(seg)

    def _port_label(self, port: object) -> str:
        if port == LOCAL:
            return "the local tap"
        if isinstance(port, bytes):
            peer = self.device.peers.get(port)
            if peer is not None and peer.name:
                return f"peer {peer.name}"
            return peer.label if peer is not None else f"peer({abbreviate(port)})"
        return f"remote {port}"

    def _log_mac_events(self, seg: _Segment) -> None:
        """Log what the switch recorded since the last tick: MAC moves and refused claims (rate-limited:
        at most :data:`MAX_EVENT_LINES` lines per segment a second, each event with its count)."""
        events = seg.switch.table.take_events()
        for event, n in events[:MAX_EVENT_LINES]:
            mac = event.mac.hex(":")
            old, new = self._port_label(event.old), self._port_label(event.new)
            times = f" ({n} times)" if n > 1 else ""
            if event.kind == "local_claim":
                log.warning("segment VNI %d: %s claimed MAC %s of the local LAN%s; frames dropped (local MACs "
                            "are sticky)", seg.vni, new, mac, times)
            elif event.kind == "move_limited":
                log.warning("segment VNI %d: MAC %s moves too often (over %d in %.0f s); %s claimed it from %s%s; "
                            "frames dropped", seg.vni, mac, seg.switch.table.move_limit, seg.switch.table.move_window,
                            new, old, times)
            elif event.new == LOCAL:
                log.info("segment VNI %d: MAC %s moved from %s to the local tap%s", seg.vni, mac, old, times)
            else:
                log.warning("segment VNI %d: MAC %s moved from %s to %s%s", seg.vni, mac, old, new, times)
        if len(events) > MAX_EVENT_LINES:
            log.warning("segment VNI %d: and %d more MAC events", seg.vni, len(events) - MAX_EVENT_LINES)

    def drop_counts(self) -> Counter[str]:
        """Drops by reason: the runtime's own, each switch's ``drop_*`` as ``l2_*``, tap write refusals."""
        c = Counter(self.drops)
        for seg in self._segments:
            for reason, n in seg.switch.counters.items():
                if reason.startswith("drop_") and n:
                    c["l2_" + reason[5:]] += n
        for tp in self._taps:
            for err, n in (getattr(tp.tap, "write_errors", None) or {}).items():
                c[f"l2_tap_write_{err}"] += n
        return c

    def snapshot(self) -> list[dict[str, Any]]:
        """One entry per segment for ``pyvpn show`` (``vni``, ``tap``, ``macs``, ``plain``, ...)."""
        out = []
        now = self._loop.time() if self._loop is not None else None
        for seg in self._segments:
            p = seg.plan
            peers: list[str]
            table = seg.switch.table
            if p.plain:
                peers = [format_endpoint(r) for r in p.remotes]
                by_peer = {format_endpoint(r): table.count(r[0]) for r in p.remotes}
            else:
                peers, by_peer = [], {}
                for key in seg.members:
                    peer = self.device.peers.get(key)
                    # a name, else the whole key (never abbreviated: `pyvpn show` cuts no key)
                    peers.append(peer.name if peer is not None and peer.name else encode_key(key))
                    by_peer[peers[-1]] = table.count(key)
            out.append({
                "vni": p.vni,
                "tap": p.tap,
                "offloads": seg.port.mode.names(),
                "bridge": seg.port.plan.bridge,
                "mtu": seg.port.plan.mtu,
                "vlan": p.vlan,
                "port": p.port,
                "plain": p.plain,
                "local": p.local,
                "hub": p.hub,
                "macs": len(seg.switch.table) if now is None else len(seg.switch.table.entries(now=now)),
                "mac_limit": p.mac_limit,
                "mac_limit_per_peer": p.mac_limit_per_peer,
                "macs_by_peer": by_peer,
                "broadcast_rate_per_peer": p.broadcast_rate_per_peer if p.hub else 0,
                "broadcast_rate": p.broadcast_rate,
                "untagged_only": seg.switch.untagged_only,
                "peers": peers,
                "counters": dict(seg.switch.counters),
                "table": dict(seg.switch.table.counters),
            })
        return out


# -- opening the real thing (root) -----------------------------------------------------------------------------
def open_segments(cfg: Config, device: Device, *, role: str, netns: str | None = None) -> L2Runtime:
    """Open the taps (and bridges) and plain sockets for ``cfg.segments``; start and return the runtime.

    Taps are created here and moved into ``netns`` with the tun; a ``Bridge`` that does not exist is created
    (and deleted again by :meth:`L2Runtime.close`), an existing one is joined.  On any failure everything
    opened so far is closed again.

    :param cfg: the parsed config.
    :param device: the started device.
    :param role: ``"server"`` or ``"client"``.
    :param netns: the namespace that holds the tun, or None.
    :raises L2ConfigError: the segments do not fit together.
    :raises OSError: a tap, bridge or socket could not be set up (:class:`~tunnel.tun.TunError`,
        :class:`~tunnel.netconf.NetconfError`, :class:`~tunnel.udp.UdpError`).
    """
    from tunnel import netconf
    from tunnel.tun import open_tun, set_txqueuelen
    from tunnel.udp import UdpSocket

    plans = plan_segments(cfg, role=role, tunnel_mtu=device.core.mtu)
    taps: dict[str, TapDevice] = {}
    sockets: dict[tuple[str, int], PlainSocket] = {}
    created: list[str] = []

    def delete_bridges() -> None:
        for br in created:
            with contextlib.suppress(OSError):
                netconf.delete_link(br, netns=netns)

    try:
        for tp in plans:
            if netconf.link_exists(tp.name, netns=netns):
                raise L2ConfigError(f"tap {tp.name}: an interface with that name exists already")
            taps[tp.name] = open_tun(tp.name, tap=True, mtu=tp.mtu, vnet_hdr=True)
            set_txqueuelen(tp.name)  # as for the tun: a burst read late must not overflow 500 frames
            if netns:
                netconf.move_to_netns(tp.name, netns)
            if tp.bridge:
                if not netconf.link_exists(tp.bridge, netns=netns):
                    netconf.create_bridge(tp.bridge, netns=netns)
                    created.append(tp.bridge)
                netconf.enslave(tp.name, tp.bridge, netns=netns)
                netconf.set_up(tp.bridge, netns=netns)
            netconf.set_up(tp.name, netns=netns)
        for tp in plans:
            for sp in tp.segments:
                if sp.plain and sp.local is not None and (sp.local, sp.port) not in sockets:
                    family: Family = "v6" if ipaddress.ip_address(sp.local).version == 6 else "v4"
                    sockets[(sp.local, sp.port)] = UdpSocket.bind(sp.local, sp.port, family=family)
        runtime = L2Runtime(device, plans, taps=taps, plain_sockets=sockets,
                            interface_addresses=[str(a) for a in cfg.interface.addresses],
                            peer_vteps={p.public_key: p.vtep for p in cfg.peers if p.vtep},
                            on_close=delete_bridges)
    except BaseException:
        for t in taps.values():
            with contextlib.suppress(OSError):
                t.close()
        for s in sockets.values():
            with contextlib.suppress(OSError):
                s.close()
        delete_bridges()
        raise
    runtime.start()
    return runtime
