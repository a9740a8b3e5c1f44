"""The configuration model: frozen dataclasses for a parsed file, and :class:`ConfigError`.

Built by :mod:`vpn.config.parser`, written back by :mod:`vpn.config.writer`.  Keys are already ``bytes``;
private keys never show in a ``repr``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crypto.keys import encode_key

from ..policy import ClientPolicy, Rule
from .values import Iface, Net, check_ifname


class ConfigError(ValueError):
    """``file:line: Key: what is wrong``, e.g. ``wg0.conf:7: AllowedIPs: '10.0.0.300/32' is not a valid IP network``.

    :ivar path: the file (as given).
    :ivar line: 1-based line number, or None for whole-file problems (missing file, no [Interface]).
    :ivar key: the key as written in the file, or None.
    :ivar reason: what is wrong, without the location.
    """

    def __init__(self, path: str, line: int | None, key: str | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")
        self.path, self.line, self.key, self.reason = path, line, key, message


SECRET_FIELDS = ("private_key", "preshared_key")


def redacted_repr(obj: Any, hidden: tuple[str, ...] = SECRET_FIELDS) -> str:
    """A dataclass repr with the fields named in ``hidden`` (secret keys, texts holding them) shown as
    ``(hidden)`` unless they are None."""
    parts = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        parts.append(f"{f.name}={'(hidden)' if f.name in hidden and v is not None else repr(v)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class PeerConfig:
    """One ``[Peer]``.

    :ivar public_key: 32 bytes.
    :ivar preshared_key: 32 bytes or None.
    :ivar allowed_ips: networks (host bits cleared).
    :ivar endpoint: ``(host, port)`` as written (resolved when the daemon starts or reloads, and a
        host name again when handshakes keep failing: :mod:`vpn.endpoints`), or None.
    :ivar persistent_keepalive: seconds, 0 = off.
    :ivar name: ``#pyvpn Name``, or None.
    :ivar vtep: ``#pyvpn Vtep``: the peer's VXLAN tunnel endpoint address (L2 segments), or None
        for the first host address of its AllowedIPs.
    :ivar allow: ``#pyvpn Allow``: destinations the client may reach (none: all); see :mod:`vpn.policy`.
    :ivar deny: ``#pyvpn Deny``: destinations the client may not reach.
    :ivar rate_limit: ``#pyvpn RateLimit`` in bits per second (each direction), or None.
    :ivar expires: ``#pyvpn Expires`` as UNIX seconds, or None.
    :ivar disabled: ``#pyvpn Disabled``.
    :ivar line: where the section starts (1-based; not part of equality).
    """

    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: tuple[Net, ...] = ()
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    name: str | None = None
    vtep: str | None = None
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    rate_limit: int | None = None
    expires: int | None = None
    disabled: bool = False
    line: int = field(default=0, compare=False)

    def __repr__(self) -> str:
        return redacted_repr(self)

    @property
    def policy(self) -> ClientPolicy:
        """The per-client policy these fields make up."""
        return ClientPolicy(allow=self.allow, deny=self.deny, rate_limit=self.rate_limit, expires=self.expires,
                            disabled=self.disabled)

    def with_policy(self, policy: ClientPolicy) -> PeerConfig:
        """This peer with ``policy`` instead of its own."""
        return replace(self, allow=policy.allow, deny=policy.deny, rate_limit=policy.rate_limit,
                       expires=policy.expires, disabled=policy.disabled)


@dataclass(frozen=True, slots=True, repr=False)
class InterfaceConfig:
    """The ``[Interface]`` section (wg-quick keys, then pyvpn's ``#pyvpn`` keys).

    :ivar private_key: 32 bytes (never shown by ``repr``).
    :ivar listen_port: UDP port, or None for a random one.
    :ivar fwmark: mark on the UDP socket's packets (0 = off), or None.
    :ivar addresses: ``Address`` entries (address with prefix), all lines together.
    :ivar mtu: the tunnel MTU, or None for the default.
    :ivar dns: DNS servers and search domains, as written.
    :ivar table: ``off``, ``auto``, ``main`` or a table number (as decimal text), or None (auto).
    :ivar pre_up: ``PreUp`` commands in order (likewise ``post_up``, ``pre_down``, ``post_down``).
    :ivar save_config: write the running peers back on shutdown.
    :ivar name: ``#pyvpn Name``: the interface name (default: the file's stem).
    :ivar namespace: ``#pyvpn Namespace``: move the tun into this network namespace.
    :ivar user: ``#pyvpn User``: drop privileges to this user after set-up.
    :ivar forward: ``#pyvpn Forward``: forward packets between peers inside the daemon (TTL decremented;
        the host's FORWARD chain, conntrack, NAT and ``ip_forward`` are bypassed).  Off by default: such
        packets go to the tun and the kernel routes or refuses them, as with WireGuard.
    :ivar offload: ``#pyvpn Offload``: ``on``, ``off`` or ``auto`` (TSO/USO/GRO on tun and UDP).
    :ivar log_level: ``#pyvpn LogLevel``: ``debug``, ``info``, ``warning`` or ``error``.
    :ivar metrics: ``#pyvpn Metrics``: ``host:port`` for Prometheus metrics, as written.
    :ivar pool4: ``#pyvpn Pool4``: the network client addresses are drawn from (enrollment).
    :ivar pool6: ``#pyvpn Pool6``: likewise for IPv6.
    :ivar public_endpoint: ``#pyvpn PublicEndpoint``: what enrolled clients connect to.
    """

    private_key: bytes
    listen_port: int | None = None
    fwmark: int | None = None
    addresses: tuple[Iface, ...] = ()
    mtu: int | None = None
    dns: tuple[str, ...] = ()
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False
    # pyvpn
    name: str | None = None
    namespace: str | None = None
    user: str | None = None
    forward: bool = False
    offload: str = "auto"
    log_level: str | None = None
    metrics: str | None = None
    pool4: ipaddress.IPv4Network | None = None
    pool6: ipaddress.IPv6Network | None = None
    public_endpoint: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return redacted_repr(self)


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """One L2 segment (``#pyvpn [Segment]``).

    :ivar vni: VXLAN network identifier, 1..16777215, unique in the file.
    :ivar tap: the tap device carrying the segment's frames.
    :ivar bridge: a bridge to create (or join) with the tap in it, or None.
    :ivar mtu: the tap's MTU, or None for the default.
    :ivar port: VXLAN UDP port (4789, RFC 7348).
    :ivar peers: peer names or base64 public keys on the segment; empty = all peers
        (see :meth:`Config.segment_peers`).
    :ivar vlan: map this 802.1Q VLAN on the tap to this VNI, or None for untagged frames.
    :ivar mode: ``tunnel`` (VXLAN inside the WireGuard tunnel) or ``plain`` (unencrypted
        RFC 7348 VXLAN over the underlay, to ``remote`` from ``local``).
    :ivar local: plain mode: the local underlay address.
    :ivar remote: plain mode: ``ip``, ``ip:port`` or ``[v6]:port`` of each remote VTEP.
    :ivar mac_age: seconds before a learned MAC address is forgotten.
    :ivar mac_limit: the most MAC addresses learned on the segment.
    :ivar mac_limit_per_peer: the most MAC addresses learned behind one peer (frames from more source
        MACs of that peer are dropped), at most ``mac_limit``; None = 256 (or ``mac_limit`` if smaller).
    :ivar broadcast_rate_per_peer: flooded frames (broadcast, multicast, unknown unicast) per second that
        the hub accepts from each peer; 0 = no limit.
    :ivar broadcast_burst_per_peer: the burst allowed on top of it (frames), or None for twice the rate.
    :ivar broadcast_rate: flooded frames per second accepted from all peers together; 0 = no limit.
    :ivar broadcast_burst: its burst (frames), or None for twice the rate.
    :ivar line: where ``#pyvpn [Segment]`` is (1-based; not part of equality).
    """

    vni: int
    tap: str
    bridge: str | None = None
    mtu: int | None = None
    port: int = 4789
    peers: tuple[str, ...] = ()  # names or base64 public keys; empty = all peers
    vlan: int | None = None
    mode: str = "tunnel"  # or "plain": unencrypted VXLAN over the underlay
    local: str | None = None
    remote: tuple[str, ...] = ()
    mac_age: float = 300.0
    mac_limit: int = 4096
    mac_limit_per_peer: int | None = None
    broadcast_rate_per_peer: int = 200
    broadcast_burst_per_peer: int | None = None
    broadcast_rate: int = 1000
    broadcast_burst: int | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole file.

    :ivar path: where it was read from (``<string>`` for text); not part of equality, so
        ``parse_config(format_config(c)) == c``.
    :ivar interface: the ``[Interface]`` section.
    :ivar peers: the ``[Peer]`` sections in file order (public keys and names unique).
    :ivar segments: the ``#pyvpn [Segment]`` sections in file order (VNIs unique).
    """

    path: str = field(compare=False)
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...] = ()
    segments: tuple[SegmentConfig, ...] = ()

    @property
    def interface_name(self) -> str:
        """``#pyvpn Name``, else the file's stem (``wg0`` for ``/etc/wireguard/wg0.conf``), as wg-quick.

        :raises ConfigError: the stem is not a valid interface name (see :func:`check_ifname`); it would
            reach the shell in hooks (``%i``) and nft scripts.
        """
        if self.interface.name:
            return self.interface.name
        stem = Path(self.path).stem
        try:
            return check_ifname(stem)
        except ValueError as e:
            raise ConfigError(self.path, None, None, f"{e}: the interface is named after the file (as wg-quick "
                              "does); rename the file or set '#pyvpn Name = ...' in [Interface]") from None

    def segment_peers(self, segment: SegmentConfig) -> tuple[PeerConfig, ...]:
        """The peers of ``segment``: those its ``Peers`` names (by name or public key), else all."""
        if not segment.peers:
            return self.peers
        refs = set(segment.peers)
        return tuple(p for p in self.peers if p.name in refs or encode_key(p.public_key) in refs)
