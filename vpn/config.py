"""wg-quick configuration files, parsed once at the edge into frozen dataclasses.

The format is the one ``wg-quick`` and ``wg setconf`` read: ``[Interface]`` and ``[Peer]``
sections of ``Key = Value`` lines, keys case-insensitive, ``#`` comments.  An existing wg-quick
file parses unchanged.

pyvpn's own settings
--------------------
They live in comment lines that start with ``#pyvpn`` (exactly that, then a space or ``[``;
``# pyvpn`` is an ordinary comment), which wg-quick and ``wg`` ignore, so one file serves both:

- ``#pyvpn Key = Value`` inside ``[Interface]`` or ``[Peer]`` sets a pyvpn key there.
  Interface: ``Name`` (interface name; default the file's stem, as wg-quick), ``Namespace``
  (put the tun into this netns), ``User`` (drop privileges to it), ``Forward`` (on/off:
  peer-to-peer forwarding inside the daemon, bypassing the host's firewall; default off, as
  WireGuard: the kernel routes such packets), ``Offload`` (on/off/auto),
  ``LogLevel``, ``Metrics`` (host:port), and for ``pyvpn server add-client``: ``Pool4`` and
  ``Pool6`` (the networks client addresses are drawn from) and ``PublicEndpoint`` (host:port
  that clients connect to).  Peer: ``Name``, ``Vtep`` (the peer's VXLAN tunnel endpoint
  address for L2 segments; default: the first host address of its AllowedIPs), and the
  per-client policy of :mod:`vpn.policy`: ``Allow`` and ``Deny`` (access rules
  ``PREFIX [PROTO [PORT|LO-HI]]``, comma-separated, repeatable), ``RateLimit`` (``50mbit``),
  ``Expires`` (``2027-01-05T00:00:00Z``) and ``Disabled`` (true/false).
- ``#pyvpn [Segment]`` opens a pyvpn-only section (an L2 segment); its lines are all
  ``#pyvpn Key = Value``: ``VNI`` (required), ``Tap`` (required), ``Bridge``, ``MTU``,
  ``Port`` (VXLAN UDP port, 4789), ``Peers`` (names or public keys; default all), ``VLAN``,
  ``Mode`` (``tunnel``, or ``plain`` = unencrypted RFC 7348 over the underlay, with ``Local``
  and ``Remote`` = ``ip``, ``ip:port`` or ``[v6]:port``), ``MacAge`` (300), ``MacLimit`` (4096),
  and the limits for untrusted members: ``MacLimitPerPeer`` (256), ``BroadcastRatePerPeer``
  (200 flooded frames/s per peer, on the hub; 0 = off), ``BroadcastBurstPerPeer`` (twice the rate),
  ``BroadcastRate`` (1000 flooded frames/s from all peers together; 0 = off), ``BroadcastBurst``.
  A normal section header ends it.  :mod:`vpn.l2` runs the segments.

Every error is a :class:`ConfigError` naming the file, the line and the key, e.g.
``wg0.conf:7: AllowedIPs: '10.0.0.300/32' is not a valid IP network``.  Unknown keys are errors
(with a hint when the key belongs in another section or needs ``#pyvpn``), and so are a key given
twice in a section (except the list keys ``Address``, ``DNS``, ``AllowedIPs``, ``Allow``, ``Deny``, the
hooks, and the segment's ``Peers``/``Remote``), duplicate peers and peer names, and VNIs used twice.  Private
keys never appear in messages or reprs; a token long enough to be a key is never echoed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crypto.errors import KeyFormatError
from crypto.keys import decode_key, encode_key

from .policy import ClientPolicy, Rule, format_rate, format_time, parse_rate, parse_rules, parse_time
from .util import format_endpoint, write_private

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


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


_redacted_repr = redacted_repr


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
        return _redacted_repr(self)

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
        return _redacted_repr(self)


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


# -- value parsers (each raises ValueError with a short reason) --------------------------------
def _key(v: str, what: str) -> bytes:
    try:
        return decode_key(v, what=what)
    except KeyFormatError as e:
        raise ValueError(str(e)) from None


_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]+")  # ASCII only: int() would also take "٣" and "1_0"


def _int(v: str, lo: int, hi: int) -> int:
    if not _NUMBER.fullmatch(v):
        raise ValueError(f"{v!r} is not a number")
    n = int(v, 0) if v[:2].lower() == "0x" else int(v)
    if not lo <= n <= hi:
        raise ValueError(f"{n} is out of range ({lo}..{hi})")
    return n


def _bool(v: str) -> bool:
    lv = v.lower()
    if lv in ("true", "on", "yes", "1"):
        return True
    if lv in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"{v!r} is not on/off (or true/false)")


def _strict_bool(v: str) -> bool:
    """wg-quick's ``read_bool``: exactly ``true`` or ``false`` (it refuses anything else)."""
    lv = v.lower()
    if lv not in ("true", "false"):
        raise ValueError(f"{v!r} is neither true nor false (wg-quick accepts only these)")
    return lv == "true"


def _list(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def _network(v: str) -> Net:
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IP network") from None


def _interface(v: str) -> Iface:
    try:
        return ipaddress.ip_interface(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a valid address with prefix (like 198.19.0.1/24)") from None


def parse_endpoint(v: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``; the host is kept as written (resolved later).

    :raises ValueError: another form (an IPv6 address needs brackets), or a port outside 1..65535.
    """
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]:([0-9]+)", v) or re.fullmatch(r"([^:\[\]\s]+):([0-9]+)", v)
    if not m:
        hint = " (put an IPv6 address in brackets)" if v.count(":") > 1 and "[" not in v else ""
        raise ValueError(f"{v!r} is not host:port or [v6]:port{hint}")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1..65535)")
    return m.group(1), port


def parse_remote(v: str) -> tuple[str, int | None]:
    """A plain-VXLAN ``Remote``: ``ip``, ``ip:port`` or ``[v6]:port`` → ``(ip, port or None)``.

    :raises ValueError: anything else (host names are not accepted).
    """
    try:
        return str(ipaddress.ip_address(v)), None
    except ValueError:
        pass
    host, port = parse_endpoint(v)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address, ip:port or [v6]:port") from None


def _keepalive(v: str) -> int:
    return 0 if v.lower() == "off" else _int(v, 0, 65535)


_IFNAME = re.compile(r"[A-Za-z0-9_=+.-]{1,15}", re.ASCII)
_PEER_NAME = re.compile(r"[A-Za-z0-9_.@+-][A-Za-z0-9_.@+ -]{0,62}")
_NETNS = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?")
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")


def check_ifname(v: str) -> str:
    """``v`` if it is a valid interface name as the kernel and wg-quick take it (``^[a-zA-Z0-9_=+.-]{1,15}$``,
    not ``.`` or ``..``), for the tun, taps and bridges.  Names reach shell hooks (``%i``) and nft scripts,
    so nothing else may pass.

    :raises ValueError: anything else (the name is shown with ``repr``, so control characters are escaped).
    """
    if not _IFNAME.fullmatch(v) or v in (".", ".."):
        raise ValueError(f"{v!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _=+.-)")
    return v


_ifname = check_ifname


def _peer_name(v: str) -> str:
    if not _PEER_NAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid peer name (1-63 of letters, digits, space and _.@+-; no commas)")
    return v


def _netns_name(v: str) -> str:
    if not _NETNS.fullmatch(v) or v in (".", ".."):
        raise ValueError(f"{v!r} is not a valid network namespace name (A-Z a-z 0-9 _.-)")
    return v


def _user(v: str) -> str:
    if not _USER.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid user name or uid")
    return v


def _dns(v: str) -> list[str]:
    """wg-quick's rule: an item of digits and dots, or with a colon, is a server; anything else a search domain."""
    out = []
    for item in _list(v):
        if re.fullmatch(r"[0-9.]+", item) or ":" in item:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a valid DNS server address") from None
        elif not _DOMAIN.fullmatch(item):
            raise ValueError(f"{item!r} is neither an IP address nor a search domain")
        out.append(item)
    return out


def _table(v: str) -> str:
    """wg-quick's Table: ``off``, ``auto``, ``main`` or a numeric table id (kept as decimal text)."""
    lv = v.lower()
    if lv in ("off", "auto", "main"):
        return lv
    try:
        return str(_int(v, 1, 0xFFFFFFFF))
    except ValueError:
        raise ValueError(f"{v!r} is not off, auto, main or a table number") from None


# -- the parser ------------------------------------------------------------------------------
_INTERFACE_KEYS = {
    "privatekey": "private_key", "listenport": "listen_port", "fwmark": "fwmark", "address": "addresses",
    "mtu": "mtu", "dns": "dns", "table": "table", "preup": "pre_up", "postup": "post_up",
    "predown": "pre_down", "postdown": "post_down", "saveconfig": "save_config",
}
_INTERFACE_PYVPN = {"name": "name", "namespace": "namespace", "user": "user", "forward": "forward",
                    "offload": "offload", "loglevel": "log_level", "metrics": "metrics",
                    "pool4": "pool4", "pool6": "pool6", "publicendpoint": "public_endpoint"}
_PEER_KEYS = {"publickey": "public_key", "presharedkey": "preshared_key", "allowedips": "allowed_ips",
              "endpoint": "endpoint", "persistentkeepalive": "persistent_keepalive"}
_PEER_PYVPN = {"name": "name", "vtep": "vtep", "allow": "allow", "deny": "deny", "ratelimit": "rate_limit",
               "expires": "expires", "disabled": "disabled"}
_SEGMENT_KEYS = {"vni": "vni", "tap": "tap", "bridge": "bridge", "mtu": "mtu", "port": "port", "peers": "peers",
                 "vlan": "vlan", "mode": "mode", "local": "local", "remote": "remote", "macage": "mac_age",
                 "maclimit": "mac_limit", "maclimitperpeer": "mac_limit_per_peer",
                 "broadcastrateperpeer": "broadcast_rate_per_peer", "broadcastburstperpeer": "broadcast_burst_per_peer",
                 "broadcastrate": "broadcast_rate", "broadcastburst": "broadcast_burst"}
_REPEATABLE = {"addresses", "dns", "pre_up", "post_up", "pre_down", "post_down", "allowed_ips", "remote", "peers",
               "allow", "deny"}


def _convert(section: str, attr: str, raw: str) -> Any:
    if attr == "private_key":
        return _key(raw, "private key")
    if attr == "public_key":
        return _key(raw, "public key")
    if attr == "preshared_key":
        return _key(raw, "preshared key")
    if attr == "listen_port":
        return _int(raw, 0, 65535)
    if attr == "fwmark":
        return 0 if raw.lower() == "off" else _int(raw, 0, 0xFFFFFFFF)
    if attr == "addresses":
        return [_interface(x) for x in _list(raw)]
    if attr == "allowed_ips":
        return [_network(x) for x in _list(raw)]
    if attr == "dns":
        return _dns(raw)
    if attr == "peers":
        return _list(raw)
    if attr == "remote":
        items = _list(raw)
        for item in items:
            parse_remote(item)
        return items
    if attr == "mtu":
        return _int(raw, 576 if section != "segment" else 68, 65535)
    if attr == "table":
        return _table(raw)
    if attr == "save_config":
        return _strict_bool(raw)
    if attr in ("forward", "disabled"):
        return _bool(raw)
    if attr in ("allow", "deny"):
        return parse_rules(raw)
    if attr == "rate_limit":
        return parse_rate(raw)
    if attr == "expires":
        return parse_time(raw)
    if attr in ("endpoint", "public_endpoint"):
        return parse_endpoint(raw)
    if attr in ("pool4", "pool6"):
        net = _network(raw)
        if net.version != (4 if attr == "pool4" else 6):
            raise ValueError(f"{raw!r} is not an IPv{4 if attr == 'pool4' else 6} network")
        return net
    if attr == "persistent_keepalive":
        return _keepalive(raw)
    if attr == "offload":
        if raw.lower() not in ("on", "off", "auto"):
            raise ValueError(f"{raw!r} is not on, off or auto")
        return raw.lower()
    if attr == "log_level":
        if raw.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"{raw!r} is not debug, info, warning or error")
        return raw.lower()
    if attr == "metrics":
        parse_endpoint(raw)
        return raw
    if attr == "name" and section == "peer":
        return _peer_name(raw)
    if attr in ("name", "tap", "bridge"):
        return _ifname(raw)
    if attr == "namespace":
        return _netns_name(raw)
    if attr == "user":
        return _user(raw)
    if attr == "vni":
        return _int(raw, 1, (1 << 24) - 1)
    if attr == "port":
        return _int(raw, 1, 65535)
    if attr == "vlan":
        return _int(raw, 1, 4094)
    if attr == "mode":
        if raw.lower() not in ("tunnel", "plain"):
            raise ValueError(f"{raw!r} is not tunnel or plain")
        return raw.lower()
    if attr in ("local", "vtep"):
        try:
            return str(ipaddress.ip_address(raw))
        except ValueError:
            raise ValueError(f"{raw!r} is not an IP address") from None
    if attr == "mac_age":
        return float(_int(raw, 1, 86400 * 365))
    if attr in ("mac_limit", "mac_limit_per_peer"):
        return _int(raw, 1, 1 << 20)
    if attr in ("broadcast_rate", "broadcast_rate_per_peer"):
        return _int(raw, 0, 1_000_000)
    if attr in ("broadcast_burst", "broadcast_burst_per_peer"):
        return _int(raw, 1, 10_000_000)
    return raw


_TABLES = {
    ("interface", False): _INTERFACE_KEYS, ("interface", True): _INTERFACE_PYVPN,
    ("peer", False): _PEER_KEYS, ("peer", True): _PEER_PYVPN, ("segment", True): _SEGMENT_KEYS,
}
_SECTION_TITLE = {"interface": "[Interface]", "peer": "[Peer]", "segment": "#pyvpn [Segment]"}
_HOOKS = ("pre_up", "post_up", "pre_down", "post_down")
_MAY_BE_EMPTY = {"addresses", "dns", "allowed_ips", *_HOOKS}  # as wg / wg-quick: an empty list
_PYVPN_LINE = re.compile(r"#pyvpn(?=\s|\[|$)\s*(.*)$", re.IGNORECASE)
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _shown(token: str) -> str:
    """``token`` quoted for an error message, unless it is long enough to be a (private) key (44 characters)."""
    return repr(token) if len(token) <= 24 else f"(a {len(token)}-character token, not shown)"


def _misplaced(kind: str, pyvpn: bool, lkey: str) -> str:
    """A hint for a key that exists, but not here."""
    if kind == "segment" and not pyvpn:
        return "; every line of a '#pyvpn [Segment]' starts with '#pyvpn' (a normal section header ends it)"
    if lkey in _TABLES.get((kind, not pyvpn), {}):
        return ("; pyvpn's own keys are written '#pyvpn Key = Value' so that wg-quick ignores them" if not pyvpn
                else "; this is a wg-quick key: write it without '#pyvpn'")
    for (other, opy), table in _TABLES.items():
        if other != kind and lkey in table:
            return f"; it belongs in {'#pyvpn ' if opy and other != 'segment' else ''}{_SECTION_TITLE[other]}"
    return ""


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse the text of a wg-quick file (with pyvpn's ``#pyvpn`` lines).

    :param text: the whole file.
    :param path: used in error messages and as :attr:`Config.path`.
    :raises ConfigError: with the file, the line and the key.
    """
    sections: list[tuple[str, int, dict[str, Any], dict[str, int]]] = []
    current: tuple[str, int, dict[str, Any], dict[str, int]] | None = None
    for lineno, raw_line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        body = raw_line.strip()
        m = _PYVPN_LINE.match(body)
        pyvpn = m is not None
        # Everything after '#' is a comment, as for wg and wg-quick (which also cut PostUp = ... # x).
        body = (m.group(1) if m else body).split("#", 1)[0].strip()
        if not body:
            continue
        if body.startswith("["):
            title = body.lower()
            if pyvpn:
                if title != "[segment]":
                    raise ConfigError(path, lineno, None, f"unknown pyvpn section {_shown(body)} "
                                      "(expected '#pyvpn [Segment]')")
                current = ("segment", lineno, {}, {})
            elif title == "[interface]":
                current = ("interface", lineno, {}, {})
            elif title == "[peer]":
                current = ("peer", lineno, {}, {})
            else:
                raise ConfigError(path, lineno, None,
                                  f"unknown section {_shown(body)} (expected [Interface] or [Peer])")
            sections.append(current)
            continue
        if "=" not in body:
            raise ConfigError(path, lineno, None, f"expected 'Key = Value', got {_shown(body.split()[0])}")
        key, value = (x.strip() for x in body.split("=", 1))
        if not _KEY.fullmatch(key) or len(key) > 24:
            raise ConfigError(path, lineno, None, f"expected 'Key = Value', got the key {_shown(key)}")
        if current is None:
            raise ConfigError(path, lineno, key, "comes before any section ([Interface] first)")
        kind, _, values, lines = current
        lkey = key.lower()
        attr = _TABLES.get((kind, pyvpn), {}).get(lkey)
        if attr is None:
            where = ("#pyvpn " if pyvpn and kind != "segment" else "") + _SECTION_TITLE[kind]
            raise ConfigError(path, lineno, key, f"unknown key in {where}{_misplaced(kind, pyvpn, lkey)}")
        if not value and attr not in _MAY_BE_EMPTY:
            raise ConfigError(path, lineno, key, "empty value")
        try:
            converted = _convert(kind, attr, value) if value else []
        except ValueError as e:
            raise ConfigError(path, lineno, key, str(e)) from None
        if attr in _HOOKS:
            converted = [value] if value else []
        if attr in _REPEATABLE:
            values.setdefault(attr, []).extend(converted)
        else:
            if attr in values:
                raise ConfigError(path, lineno, key, f"given twice in this section (first on line {lines[attr]})")
            values[attr] = converted
        lines[attr] = lineno

    def frozen(values: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}

    interfaces = [s for s in sections if s[0] == "interface"]
    if not interfaces:
        raise ConfigError(path, None, None, "no [Interface] section")
    if len(interfaces) > 1:
        raise ConfigError(path, interfaces[1][1], None, f"a second [Interface] section (the first is on line "
                          f"{interfaces[0][1]})")
    _, iline, ivalues, _ = interfaces[0]
    if "private_key" not in ivalues:
        raise ConfigError(path, iline, "PrivateKey", "missing from [Interface]")
    iface = InterfaceConfig(**frozen(ivalues))
    own_public = _public(iface.private_key)

    peers: list[PeerConfig] = []
    seen: dict[bytes, int] = {}
    names: dict[str, int] = {}
    for kind, line, values, lines in sections:
        if kind != "peer":
            continue
        if "public_key" not in values:
            raise ConfigError(path, line, "PublicKey", "missing from [Peer]")
        pk = values["public_key"]
        at = lines["public_key"]
        if pk in seen:
            raise ConfigError(path, at, "PublicKey", f"the same peer is already defined on line {seen[pk]}")
        if pk == own_public:
            raise ConfigError(path, at, "PublicKey", "is the interface's own public key")
        seen[pk] = line
        name = values.get("name")
        if name is not None:
            if name in names:
                raise ConfigError(path, lines["name"], "Name", f"peer name {name!r} is already used by the peer "
                                  f"on line {names[name]}")
            names[name] = line
        peers.append(PeerConfig(line=line, **frozen(values)))

    segments: list[SegmentConfig] = []
    vnis: dict[int, int] = {}
    taps: dict[str, list[tuple[int | None, int]]] = {}
    known = set(names) | {encode_key(p.public_key) for p in peers}
    for kind, line, values, lines in sections:
        if kind != "segment":
            continue
        for req, key in (("vni", "VNI"), ("tap", "Tap")):
            if req not in values:
                raise ConfigError(path, line, key, "missing from #pyvpn [Segment]")
        vni, tap, vlan = values["vni"], values["tap"], values.get("vlan")
        if vni in vnis:
            raise ConfigError(path, lines["vni"], "VNI", f"{vni} is already used by the segment on line {vnis[vni]}")
        vnis[vni] = line
        for other_vlan, other_line in taps.get(tap, []):
            if vlan is None or other_vlan is None or vlan == other_vlan:
                what = f"VLAN {vlan}" if vlan is not None and vlan == other_vlan else "untagged frames"
                raise ConfigError(path, lines["tap"], "Tap", f"{tap} already carries {what} for the segment on "
                                  f"line {other_line}; segments can share a tap only with distinct VLANs")
        taps.setdefault(tap, []).append((vlan, line))
        plain = values.get("mode") == "plain"
        for ref in values.get("peers", []):
            if ref not in known:
                raise ConfigError(path, lines["peers"], "Peers", f"{ref!r} is neither a peer name nor a peer's "
                                  "public key")
        if plain:
            if "peers" in values:
                raise ConfigError(path, lines["peers"], "Peers", "a plain segment talks to its Remote addresses, "
                                  "not to peers")
            if not values.get("local") or not values.get("remote"):
                raise ConfigError(path, lines.get("mode", line), "Mode", "plain (unencrypted) VXLAN needs Local "
                                  "and Remote addresses")
            local_version = ipaddress.ip_address(values["local"]).version
            for r in values["remote"]:
                if ipaddress.ip_address(parse_remote(r)[0]).version != local_version:
                    raise ConfigError(path, lines["remote"], "Remote", f"{r!r} is not of the same IP version as "
                                      f"Local {values['local']}")
        else:
            for attr, key in (("local", "Local"), ("remote", "Remote")):
                if attr in values:
                    raise ConfigError(path, lines[attr], key, "only applies to 'Mode = plain' (a tunnel segment "
                                      "reaches its peers through the tunnel)")
        per_peer, limit = values.get("mac_limit_per_peer"), values.get("mac_limit", 4096)
        if per_peer is not None and per_peer > limit:
            raise ConfigError(path, lines["mac_limit_per_peer"], "MacLimitPerPeer", f"{per_peer} is larger than "
                              f"MacLimit ({limit})")
        for burst, rate, bkey, rkey in (("broadcast_burst", "broadcast_rate", "BroadcastBurst", "BroadcastRate"),
                                        ("broadcast_burst_per_peer", "broadcast_rate_per_peer",
                                         "BroadcastBurstPerPeer", "BroadcastRatePerPeer")):
            if burst in values and values.get(rate, 1) == 0:
                raise ConfigError(path, lines[burst], bkey, f"has no effect with {rkey} = 0 (no limit)")
        segments.append(SegmentConfig(line=line, **frozen(values)))
    return Config(path=path, interface=iface, peers=tuple(peers), segments=tuple(segments))


def _public(private: bytes) -> bytes:
    from crypto.keys import public_from_private

    return public_from_private(private)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a file; a missing or unreadable file is a :class:`ConfigError` too."""
    p = str(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(p, None, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(p, None, None, "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(p, None, None, "permission denied (run as root?)") from None
    except UnicodeDecodeError:
        raise ConfigError(p, None, None, "is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(p, None, None, e.strerror or str(e)) from None
    return parse_config(text, p)


def check_permissions(path: str | os.PathLike[str]) -> str | None:
    """A warning if the file (which holds a private key) is readable or writable by group or others.

    :returns: the warning text, or None if the mode is fine or the file cannot be stat'ed.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH):
        return (f"{path}: is accessible by group or others (mode {stat.S_IMODE(mode):04o}); it holds a private "
                f"key: chmod 600 {path}")
    return None


# -- writing -----------------------------------------------------------------------------------
def format_config(cfg: Config) -> str:
    """A wg-quick compatible file; ``parse_config(format_config(c)) == c`` (but for path/lines)."""
    i = cfg.interface
    out = ["[Interface]", f"PrivateKey = {encode_key(i.private_key)}"]
    if i.listen_port is not None:
        out.append(f"ListenPort = {i.listen_port}")
    if i.fwmark is not None:
        out.append(f"FwMark = {i.fwmark:#x}" if i.fwmark else "FwMark = off")
    if i.addresses:
        out.append(f"Address = {', '.join(str(a) for a in i.addresses)}")
    if i.mtu is not None:
        out.append(f"MTU = {i.mtu}")
    if i.dns:
        out.append(f"DNS = {', '.join(i.dns)}")
    if i.table is not None:
        out.append(f"Table = {i.table}")
    for key, cmds in (("PreUp", i.pre_up), ("PostUp", i.post_up), ("PreDown", i.pre_down), ("PostDown", i.post_down)):
        out.extend(f"{key} = {c}" for c in cmds)
    if i.save_config:
        out.append("SaveConfig = true")
    for key, attr in (("Name", "name"), ("Namespace", "namespace"), ("User", "user"), ("LogLevel", "log_level"),
                      ("Metrics", "metrics")):
        v = getattr(i, attr)
        if v is not None:
            out.append(f"#pyvpn {key} = {v}")
    for key, attr in (("Pool4", "pool4"), ("Pool6", "pool6")):
        v = getattr(i, attr)
        if v is not None:
            out.append(f"#pyvpn {key} = {v}")
    if i.public_endpoint is not None:
        out.append(f"#pyvpn PublicEndpoint = {format_endpoint(i.public_endpoint)}")
    if i.forward:
        out.append("#pyvpn Forward = on")
    if i.offload != "auto":
        out.append(f"#pyvpn Offload = {i.offload}")
    for p in cfg.peers:
        out += ["", *format_peer(p).splitlines()]
    for s in cfg.segments:
        out += ["", "#pyvpn [Segment]", f"#pyvpn VNI = {s.vni}", f"#pyvpn Tap = {s.tap}"]
        for key, attr in (("Bridge", "bridge"), ("MTU", "mtu"), ("VLAN", "vlan"), ("Local", "local")):
            v = getattr(s, attr)
            if v is not None:
                out.append(f"#pyvpn {key} = {v}")
        if s.port != 4789:
            out.append(f"#pyvpn Port = {s.port}")
        if s.peers:
            out.append(f"#pyvpn Peers = {', '.join(s.peers)}")
        if s.mode != "tunnel":
            out.append(f"#pyvpn Mode = {s.mode}")
        if s.remote:
            out.append(f"#pyvpn Remote = {', '.join(s.remote)}")
        if s.mac_age != 300.0:
            out.append(f"#pyvpn MacAge = {int(s.mac_age)}")
        if s.mac_limit != 4096:
            out.append(f"#pyvpn MacLimit = {s.mac_limit}")
        if s.mac_limit_per_peer is not None:
            out.append(f"#pyvpn MacLimitPerPeer = {s.mac_limit_per_peer}")
        for key, attr, default in (("BroadcastRatePerPeer", "broadcast_rate_per_peer", 200),
                                   ("BroadcastBurstPerPeer", "broadcast_burst_per_peer", None),
                                   ("BroadcastRate", "broadcast_rate", 1000),
                                   ("BroadcastBurst", "broadcast_burst", None)):
            if getattr(s, attr) != default:
                out.append(f"#pyvpn {key} = {getattr(s, attr)}")
    return "\n".join(out) + "\n"


def format_peer(p: PeerConfig) -> str:
    """One ``[Peer]`` section, header included, as :func:`format_config` writes it."""
    out = ["[Peer]"]
    if p.name:
        out.append(f"#pyvpn Name = {p.name}")
    out.append(f"PublicKey = {encode_key(p.public_key)}")
    if p.preshared_key is not None:
        out.append(f"PresharedKey = {encode_key(p.preshared_key)}")
    if p.allowed_ips:
        out.append(f"AllowedIPs = {', '.join(str(n) for n in p.allowed_ips)}")
    if p.endpoint:
        out.append(f"Endpoint = {format_endpoint(p.endpoint)}")
    if p.persistent_keepalive:
        out.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    if p.vtep:
        out.append(f"#pyvpn Vtep = {p.vtep}")
    out.extend(format_policy(p))
    return "\n".join(out) + "\n"


def format_policy(p: PeerConfig) -> list[str]:
    """The ``#pyvpn`` lines of ``p``'s per-client policy (none for the default policy)."""
    out = []
    if p.allow:
        out.append(f"#pyvpn Allow = {', '.join(str(r) for r in p.allow)}")
    if p.deny:
        out.append(f"#pyvpn Deny = {', '.join(str(r) for r in p.deny)}")
    if p.rate_limit is not None:
        out.append(f"#pyvpn RateLimit = {format_rate(p.rate_limit)}")
    if p.expires is not None:
        out.append(f"#pyvpn Expires = {format_time(p.expires)}")
    if p.disabled:
        out.append("#pyvpn Disabled = true")
    return out


def save_runtime_config(cfg: Config, device: Any) -> None:
    """``SaveConfig = true``: write back the running peers (endpoints, allowed IPs) like wg-quick."""
    peers = []
    by_key = {p.public_key: p for p in cfg.peers}
    for pub, peer in device.peers.items():
        old = by_key.get(pub)
        t = peer.tunnel
        ep = t.endpoint if isinstance(t.endpoint, tuple) else (old.endpoint if old else None)
        peers.append(PeerConfig(public_key=pub, preshared_key=t.preshared_key,
                                allowed_ips=tuple(ipaddress.ip_network(a) for a in peer.allowed_ips),
                                endpoint=(str(ep[0]), int(ep[1])) if ep else None,
                                persistent_keepalive=t.persistent_keepalive, name=peer.name,
                                vtep=old.vtep if old else None).with_policy(peer.policy))
    new = replace(cfg, peers=tuple(peers))
    write_private(cfg.path, format_config(new))


__all__ = ["SECRET_FIELDS", "Config", "ConfigError", "InterfaceConfig", "PeerConfig", "SegmentConfig", "check_ifname",
           "check_permissions", "format_config", "format_endpoint", "format_peer", "format_policy", "load_config",
           "parse_config", "parse_endpoint", "parse_remote", "redacted_repr"]
