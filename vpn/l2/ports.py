"""What the L2 runtime (:mod:`vpn.l2.runtime`) holds per tap, plain socket, segment and member peer: plain
state, no logic; the tap's offloads are set up here (:class:`TapPort`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tunnel.encap.vxlan import pack_header
from tunnel.tunmode import TunMode, configure_tun

from .switch import Switch

if TYPE_CHECKING:
    from crypto.tunnel import Tunnel

    from .plan import SegmentPlan, TapPlan

__all__ = ["Member", "PlainPort", "PlainSocket", "PortKey", "Segment", "TapDevice", "TapPort"]

PortKey = bytes | str  # a switch port: a peer's public key (tunnel mode) or a remote's IP (plain mode)


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



class Member:
    """A peer of a tunnel-mode segment: where its copies go and with which outer addresses."""

    __slots__ = ("dst", "key", "src", "tunnel")

    def __init__(self, key: bytes, tunnel: Tunnel, src: bytes, dst: bytes) -> None:
        self.key = key
        self.tunnel = tunnel
        self.src = src  # our VTEP, packed
        self.dst = dst  # its VTEP, packed


class TapPort:
    """A tap device, its segments and the frames waiting to be written to it."""

    def __init__(self, plan: TapPlan, tap: TapDevice, tso_reads: bool) -> None:
        self.plan = plan
        self.tap = tap
        self.vlans = plan.vlan_map()
        self.segments: dict[int, Segment] = {}
        self.only: Segment | None = None
        self.pending: list[bytes] = []
        #: the tap's offloads, as for the tun: vnet header, TSO reads or not, GRO writes
        self.mode: TunMode = configure_tun(tap, tso_reads=tso_reads)


class PlainPort:
    """One UDP socket on ``Local:Port`` for the plain segments that share it."""

    def __init__(self, key: tuple[str, int], sock: PlainSocket) -> None:
        self.key = key
        self.sock = sock
        self.segments: dict[int, Segment] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}


class Segment:
    """Runtime state of one VNI."""

    def __init__(self, plan: SegmentPlan, port: TapPort, plain: PlainPort | None) -> None:
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
        self.members: dict[bytes, Member] = {}  # tunnel mode
        self.remotes: dict[str, tuple[str, int]] = {ip: (ip, p) for ip, p in plan.remotes}  # plain mode
        for ip in self.remotes:
            self.switch.add_peer(ip)
