"""Planning the L2 segments of a config, pure: validation, taps, MTUs, hubs, VLAN maps and VTEP addresses.

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
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crypto.keys import encode_key
from tunnel.encap.vxlan import VXLAN_PORT, mtu_for_tap

from .ethernet import VlanMap

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "PLAIN_UNDERLAY_MTU",
    "Address",
    "L2ConfigError",
    "SegmentPlan",
    "TapPlan",
    "choose_vtep",
    "local_vteps",
    "plan_segments",
]

log = logging.getLogger("pyvpn.l2")

PLAIN_UNDERLAY_MTU = 1500  # assumed underlay MTU for plain segments without MTU =

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    from ..config import parse_remote

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
