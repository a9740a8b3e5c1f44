"""The pure steps of enrolling clients: names, endpoints, pools, address allocation, the new ``[Peer]`` and
the client's own file.  They take keys as arguments and touch no file."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from crypto.keys import encode_key, public_from_private

from ..config import Config, InterfaceConfig, PeerConfig, format_config
from ..policy import ClientPolicy, parse_expiry, parse_rate, parse_rules

# -- implementation constants ------------------------------------------------------------------
#: The comment ``server init`` puts at the top of a new server file.
SERVER_HEADER = (
    "# pyvpn server (pyvpn server add-client NAME adds clients).  Clients reach each other through this\n"
    "# host's kernel, as with WireGuard: net.ipv4.ip_forward / net.ipv6.conf.all.forwarding and the\n"
    "# FORWARD chain decide.  A '#pyvpn Forward = on' line in [Interface] forwards between clients inside\n"
    "# the daemon instead, bypassing this host's firewall.\n"
)
DEFAULT_CONFIG = "/etc/pyvpn/wg0.conf"
DEFAULT_PORT = 51820
DEFAULT_POOL4 = "100.64.0.0/24"  # RFC 6598 shared address space
DEFAULT_POOL6 = "fd00:64::/64"  # RFC 4193 unique local
CLIENT_KEEPALIVE = 25  # seconds: keeps NAT mappings open, as the WireGuard apps suggest
MAX_SCAN = 1 << 20  # addresses examined per pool before giving up (a /12 of IPv4, bounded for /64s)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,62}")

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


class EnrollError(ValueError):
    """An enrollment request that cannot be carried out, with a message for the operator."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    """The result of :func:`enroll`.

    :ivar server: the server config with the new peer appended.
    :ivar peer: the new ``[Peer]`` as the server sees it.
    :ivar client: the client's own config (its interface and the server as its one peer).
    """

    server: Config
    peer: PeerConfig
    client: Config



# -- pure steps --------------------------------------------------------------------------------
def check_name(name: str) -> str:
    """A client name: 1-63 of ``A-Z a-z 0-9 _ . @ + -``, starting with a letter or digit."""
    if not _NAME.fullmatch(name):
        raise EnrollError(f"client name {name!r} is not valid (1-63 of A-Z a-z 0-9 _ . @ + -, "
                          "starting with a letter or digit)")
    return name


def parse_public_endpoint(value: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT`` or a bare IPv6 address → ``(host, port)``."""
    v = value.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\](?::(\d+))?", v)
    if m:
        host, port_s = m.group(1), m.group(2)
        if ":" not in host:
            raise EnrollError(f"endpoint {value!r}: only IPv6 addresses go in brackets")
    elif v.count(":") > 1:
        host, port_s = v, None
    elif ":" in v:
        host, port_s = v.split(":", 1)
    else:
        host, port_s = v, None
    if not host or not re.fullmatch(r"[A-Za-z0-9_.:%-]+", host):
        raise EnrollError(f"endpoint {value!r} is not HOST[:PORT] or [IPv6][:PORT]")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise EnrollError(f"endpoint {value!r}: {host!r} is not an IPv6 address") from None
    port = default_port
    if port_s is not None:
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise EnrollError(f"endpoint {value!r}: the port must be 1..65535")
        port = int(port_s)
    return host, port


def parse_pool(value: str | None, version: int) -> Net | None:
    """A pool network (``none``/empty → None); at least 2 client addresses in it."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        return None
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise EnrollError(f"{value!r} is not an IP network") from None
    if net.version != version:
        raise EnrollError(f"{value!r} is not an IPv{version} network")
    hosts = net.num_addresses - (2 if version == 4 else 1)
    if hosts < 2:
        raise EnrollError(f"pool {net} is too small (it needs room for the server and a client)")
    return net


def _first_host(net: Net) -> Addr:
    return net.network_address + 1


def new_server_config(path: str, *, private_key: bytes, port: int = DEFAULT_PORT, pool4: Net | None = None,
                      pool6: Net | None = None, endpoint: tuple[str, int] | None = None) -> Config:
    """A fresh server: ``ListenPort``, the first host of each pool as ``Address``, the pools recorded.

    :param path: the file it will be written to (only recorded in the result).
    :param private_key: 32 bytes (clamped by the caller or not; X25519 clamps anyway).
    :param endpoint: ``(host, port)`` clients connect to, or None to give it at add-client.
    :raises EnrollError: no pool at all.
    """
    if pool4 is None and pool6 is None:
        raise EnrollError("give at least one address pool (IPv4 or IPv6)")
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for net in (pool4, pool6):
        if net is not None:
            addresses.append(ipaddress.ip_interface(f"{_first_host(net)}/{net.prefixlen}"))
    iface = InterfaceConfig(private_key=private_key, listen_port=port, addresses=tuple(addresses),
                            pool4=pool4 if isinstance(pool4, ipaddress.IPv4Network) else None,
                            pool6=pool6 if isinstance(pool6, ipaddress.IPv6Network) else None,
                            public_endpoint=endpoint)
    return Config(path=path, interface=iface)


def pools(cfg: Config) -> tuple[Net, ...]:
    """The server's pools: ``#pyvpn Pool4``/``Pool6``, else the networks of its addresses."""
    i = cfg.interface
    found: list[Net] = [n for n in (i.pool4, i.pool6) if n is not None]
    if not found:
        found = [a.network for a in i.addresses if a.network.num_addresses > 2]
    return tuple(found)


def used_addresses(cfg: Config) -> set[Addr]:
    """The server's addresses and every address of each small (up to 256 addresses) peer prefix."""
    used: set[Addr] = {a.ip for a in cfg.interface.addresses}
    for p in cfg.peers:
        for net in p.allowed_ips:
            if net.num_addresses <= 256:
                used.update(net)
    return used


def next_free(pool: Net, used: set[Addr], blocked: Sequence[Net] = ()) -> Addr:
    """The lowest host address of ``pool`` not in ``used`` nor inside a ``blocked`` prefix.

    :raises EnrollError: the pool is full (or its first :data:`MAX_SCAN` addresses are).
    """
    last = pool.broadcast_address if pool.version == 4 else None
    big = [n for n in blocked if n.version == pool.version and n.overlaps(pool)]
    addr = pool.network_address + 1
    for _ in range(min(MAX_SCAN, pool.num_addresses)):
        if addr not in pool or addr == last:
            break
        if addr not in used and not any(addr in n for n in big):
            return addr
        addr += 1
    raise EnrollError(f"address pool {pool} is full")


def allocate(cfg: Config) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
    """The next free address of each pool, as /32 and /128 host prefixes."""
    nets = pools(cfg)
    if not nets:
        raise EnrollError(f"{cfg.path}: no address pool: set '#pyvpn Pool4 = ...' or '#pyvpn Pool6 = ...' in "
                          "[Interface] (pyvpn server init does)")
    used = used_addresses(cfg)
    blocked = [n for p in cfg.peers for n in p.allowed_ips if n.num_addresses > 256]
    out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for net in nets:
        addr = next_free(net, used, blocked)
        out.append(ipaddress.ip_interface(f"{addr}/{addr.max_prefixlen}"))
    return tuple(out)


def find_peer(cfg: Config, name: str) -> PeerConfig | None:
    """The peer called ``name``, or whose base64 public key is ``name``."""
    for p in cfg.peers:
        if p.name == name or encode_key(p.public_key) == name:
            return p
    return None


def enroll(cfg: Config, name: str, *, private_key: bytes, preshared_key: bytes | None,
           endpoint: tuple[str, int] | None = None, dns: Sequence[str] = (),
           policy: ClientPolicy | None = None) -> Enrollment:
    """Add client ``name`` to the server config ``cfg`` (pure: keys come in, nothing is written).

    :param endpoint: overrides the server's ``#pyvpn PublicEndpoint``.
    :param dns: DNS servers for the client file (wg-quick's ``DNS``), optional.
    :param policy: the client's policy (access rules, rate limit, expiry), default none.
    :raises EnrollError: bad or duplicate name, no endpoint, no pool, a full pool.
    """
    check_name(name)
    if any(p.name == name for p in cfg.peers):
        raise EnrollError(f"{cfg.path}: a client named {name!r} already exists (remove-client it first, "
                          "or pick another name)")
    public = public_from_private(private_key)
    if any(p.public_key == public for p in cfg.peers):
        raise EnrollError("the generated key is already in use (this should never happen)")
    ep = endpoint or cfg.interface.public_endpoint
    if ep is None:
        raise EnrollError(f"{cfg.path}: no public endpoint: give --endpoint HOST[:PORT], or set "
                          "'#pyvpn PublicEndpoint = host:port' in [Interface]")
    addresses = allocate(cfg)
    peer = PeerConfig(public_key=public, preshared_key=preshared_key,
                      allowed_ips=tuple(a.network for a in addresses), name=name)
    if policy is not None:
        peer = peer.with_policy(policy)
    server = replace(cfg, peers=(*cfg.peers, peer))
    server_pub = public_from_private(cfg.interface.private_key)
    client_iface = InterfaceConfig(private_key=private_key, addresses=addresses, dns=tuple(dns),
                                   mtu=cfg.interface.mtu)
    server_peer = PeerConfig(public_key=server_pub, preshared_key=preshared_key, allowed_ips=pools(cfg),
                             endpoint=ep, persistent_keepalive=CLIENT_KEEPALIVE)
    client = Config(path=f"{name}.conf", interface=client_iface, peers=(server_peer,))
    return Enrollment(server=server, peer=peer, client=client)


def unenroll(cfg: Config, name: str) -> tuple[Config, PeerConfig]:
    """``cfg`` without the peer called ``name`` (or with that base64 public key).

    :raises EnrollError: no such client.
    """
    peer = find_peer(cfg, name)
    if peer is None:
        raise EnrollError(f"{cfg.path}: no client named {name!r}")
    return replace(cfg, peers=tuple(p for p in cfg.peers if p is not peer)), peer


def client_config_text(client: Config, *, server_name: str | None = None) -> str:
    """The client's wg-quick file: works with ``wg-quick up``, ``pyvpn client`` and the phone apps."""
    # Not "# pyvpn ...": the parser reads comment lines that start so as pyvpn settings.
    head = (f"# WireGuard client of {server_name or 'a pyvpn server'}, made by pyvpn server add-client; "
            "keep it secret (it holds a private key)\n")
    return head + format_config(client)


def policy_change(expires: str | None, rate_limit: str | None, allow: list[str] | None, deny: list[str] | None,
                   clear_rules: bool = False) -> Callable[[ClientPolicy], ClientPolicy] | None:
    """What the policy options of ``add-client`` and ``set-client`` ask for, as a function of the old
    policy (None: nothing asked).

    ``--allow``/``--deny`` replace that list of rules; ``--clear-rules`` empties both first.

    :raises ValueError: a malformed value, naming the option.
    """
    changes: dict[str, Any] = {}
    if clear_rules:
        changes["allow"] = changes["deny"] = ()
    for opt, values in (("allow", allow), ("deny", deny)):
        if values:
            try:
                changes[opt] = tuple(r for v in values for r in parse_rules(v))
            except ValueError as e:
                raise ValueError(f"--{opt}: {e}") from None
    if rate_limit is not None:
        try:
            changes["rate_limit"] = parse_rate(rate_limit)
        except ValueError as e:
            raise ValueError(f"--rate-limit: {e}") from None
    if expires is not None:
        try:
            changes["expires"] = parse_expiry(expires, now=time.time())
        except ValueError as e:
            raise ValueError(f"--expires: {e}") from None
    if not changes:
        return None
    return lambda old: replace(old, **changes)
