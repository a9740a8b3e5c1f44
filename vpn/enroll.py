"""Enrolling clients into a server: ``pyvpn server init|add-client|remove-client|list-clients``.

Theory of operation
-------------------
The server's wg-quick file is the single source of truth.  ``init`` writes it with fresh keys,
``ListenPort``, the first address of each pool as ``Address``, and pyvpn's own keys
``#pyvpn Pool4``, ``#pyvpn Pool6`` and ``#pyvpn PublicEndpoint`` (what clients connect to).

``add-client NAME``:

1. Under an exclusive lock on the config's directory, read and parse the server file.
2. Refuse a name that is already used; take the lowest free host address of each pool (not
   the network or broadcast address, not the server's, not any peer's allowed IPs).
3. Append a ``[Peer]`` section (``#pyvpn Name = NAME``, public key, preshared key, the
   client's /32 and /128) to the file's text, so comments and layout survive; check that the
   new text parses to exactly the old peers plus the new one; write it atomically (0600).
4. If a pyvpn server with this interface name (and this public key) is running, add the peer
   through its control socket (op ``add_peer``): other sessions are untouched.
5. The caller writes the client's wg-quick file (:func:`client_config_text`) and, on request,
   a QR code of it for the WireGuard phone apps (:func:`qr_terminal`, :func:`write_qr_png`).

``remove-client`` does the reverse: it cuts the section from the text (or rewrites the file
from the parsed config if the cut does not parse back as expected) and removes the peer from
the running server.

``set-client``, ``disable-client`` and ``enable-client`` change a client's policy
(:mod:`vpn.policy`: access rules, rate limit, expiry, disabled): the section's policy lines
are replaced in the text, the same check and atomic write follow, and the running server gets
the new policy through its control socket (op ``set_policy``), other sessions untouched.
``add-client`` takes the same policy options.

The pure steps (:func:`new_server_config`, :func:`allocate`, :func:`enroll`,
:func:`unenroll`, :func:`client_config_text`) take keys as arguments and touch no file.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import ipaddress
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crypto.keys import encode_key, private_from_random, public_from_private

from .config import (
    Config,
    ConfigError,
    InterfaceConfig,
    PeerConfig,
    format_config,
    format_peer,
    format_policy,
    load_config,
    parse_config,
    redacted_repr,
)
from .policy import ClientPolicy
from .util import write_private

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


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One line of ``list-clients``.

    :ivar latest_handshake: UNIX time, 0 for never, None when the server is not running or
        does not know the peer.
    :ivar policy: the client's policy in the file.
    :ivar state: ``active``, ``disabled`` or ``expired`` (from the file and the clock).
    :ivar denied: packets the running server denied by the access rules (None: not running).
    :ivar ratelimited: packets it dropped over the rate limit, both directions (None: not running).
    """

    name: str | None
    addresses: tuple[str, ...]
    public_key: str
    latest_handshake: float | None
    endpoint: str | None = None
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    state: str = "active"
    denied: int | None = None
    ratelimited: int | None = None


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


def append_peer_text(text: str, peer: PeerConfig) -> str:
    """``text`` with ``peer``'s section appended after one blank line."""
    body = text.rstrip("\n")
    return f"{body}\n\n{format_peer(peer)}" if body else format_peer(peer)


_SECTION = re.compile(r"\s*(#\s*pyvpn\s*)?\[", re.IGNORECASE)
_PLAIN_COMMENT = re.compile(r"\s*(#(?!\s*pyvpn\b).*)?$", re.IGNORECASE)


def _section_span(lines: list[str], peer: PeerConfig) -> tuple[int, int]:
    """``(start, end)``: ``peer``'s section in ``lines``, from its header line to its last line that
    is neither blank nor a plain comment (those just before the next section stay with it)."""
    start = peer.line - 1
    if not 0 <= start < len(lines) or not _SECTION.match(lines[start]):
        raise EnrollError("the config changed while it was being edited; try again")
    end = start + 1
    while end < len(lines) and not _SECTION.match(lines[end]):
        end += 1
    while end - 1 > start and _PLAIN_COMMENT.fullmatch(lines[end - 1].rstrip("\n")):
        end -= 1
    return start, end


def cut_peer_text(text: str, peer: PeerConfig) -> str:
    """``text`` without ``peer``'s section (from its header line to the next section).

    Blank and plain comment lines just before the next section stay (they are more likely
    about that section).
    """
    lines = text.splitlines(keepends=True)
    start, end = _section_span(lines, peer)
    if start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank line that separated this section from the one before
    return "".join(lines[:start] + lines[end:])


_POLICY_LINE = re.compile(r"\s*#pyvpn\s+(allow|deny|ratelimit|expires|disabled)\s*=", re.IGNORECASE)


def set_policy_text(text: str, peer: PeerConfig, new: PeerConfig) -> str:
    """``text`` with the policy lines of ``peer``'s section replaced by ``new``'s (:func:`format_policy`),
    written where the first old one was, else at the end of the section; every other line stays."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start, end = _section_span(lines, peer)
    body = lines[start:end]
    kept = [ln for ln in body if not _POLICY_LINE.match(ln)]
    at = next((i for i, ln in enumerate(body) if _POLICY_LINE.match(ln)), None)
    at = len(kept) if at is None else sum(1 for ln in body[:at] if not _POLICY_LINE.match(ln))
    fresh = [ln + "\n" for ln in format_policy(new)]
    return "".join(lines[:start] + kept[:at] + fresh + kept[at:] + lines[end:])


def _same(a: Config, b: Config) -> bool:
    """Equal but for path and line numbers."""
    def strip(c: Config) -> Config:
        return replace(c, path="", peers=tuple(replace(p, line=0) for p in c.peers),
                       segments=tuple(replace(s, line=0) for s in c.segments))

    return strip(a) == strip(b)


def edited_text(old_text: str, new_cfg: Config, edit: str) -> str:
    """The new file text: ``edit`` applied to ``old_text`` if it parses to ``new_cfg``, else a rewrite."""
    try:
        if _same(parse_config(edit, new_cfg.path), new_cfg):
            return edit
    except ConfigError:
        pass
    return format_config(new_cfg)


# -- QR codes ----------------------------------------------------------------------------------
def _qr(text: str, **kw: Any) -> Any:
    """A ``qrcode.QRCode`` holding ``text`` at the lowest error correction (the smallest code)."""
    try:
        import qrcode  # type: ignore[import-untyped]
        from qrcode.constants import ERROR_CORRECT_L  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a dependency; say what to install
        raise EnrollError("QR codes need the qrcode package: pip install 'qrcode[pil]'") from None
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_L, **kw)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    return qr


def qr_terminal(text: str, *, color: bool = True) -> str:
    """A QR code of ``text`` in half-block characters, two modules per character cell.

    :param color: wrap each line in ANSI black-on-white so the code scans on dark terminals
        too; without it dark modules are drawn as blocks (right for a light background).
    """
    m: list[list[bool]] = [list(row) for row in _qr(text, border=2).get_matrix()]
    if len(m) % 2:
        m.append([False] * len(m[0]))
    glyph = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584", (True, True): "\u2588"}
    rows = []
    for top, bottom in zip(m[0::2], m[1::2], strict=True):
        line = "".join(glyph[(t, b)] for t, b in zip(top, bottom, strict=True))
        rows.append(f"\x1b[30;47m{line}\x1b[0m" if color else line)
    return "\n".join(rows) + "\n"


def qr_png(text: str, *, box_size: int = 8) -> bytes:
    """A PNG of the QR code of ``text`` (needs pillow: ``qrcode[pil]``)."""
    try:
        from qrcode.image.pil import PilImage  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - pillow missing
        raise EnrollError("writing a PNG needs pillow: pip install 'qrcode[pil]'") from None
    buf = io.BytesIO()
    _qr(text, box_size=box_size, border=4, image_factory=PilImage).make_image().save(buf)
    return buf.getvalue()


# -- files -------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the config's directory (serialises concurrent add-clients)."""
    d = Path(path).resolve().parent
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: str) -> tuple[str, Config]:
    cfg = load_config(path)
    return Path(path).read_text(encoding="utf-8"), cfg


def init_server(path: str, *, port: int = DEFAULT_PORT, pool4: str | None = DEFAULT_POOL4,
                pool6: str | None = DEFAULT_POOL6, endpoint: str | None = None, force: bool = False,
                random: bytes | None = None) -> Config:
    """Write a new server config to ``path`` (0600; the directory is made 0700 if missing).

    :param random: 32 random bytes for the private key (tests); default ``os.urandom``.
    :raises EnrollError: the file exists (without ``force``), bad pools or endpoint.
    """
    if not 1 <= port <= 65535:
        raise EnrollError(f"port {port} is out of range (1..65535)")
    net4, net6 = parse_pool(pool4, 4), parse_pool(pool6, 6)
    ep = parse_public_endpoint(endpoint, port) if endpoint else None
    p = Path(path)
    if p.exists() and not force:
        raise EnrollError(f"{path} already exists; not overwriting it (use --force to replace it and its keys)")
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg = new_server_config(str(p), private_key=private_from_random(random or os.urandom(32)), port=port,
                            pool4=net4, pool6=net6, endpoint=ep)
    with locked(p):
        write_private(p, SERVER_HEADER + format_config(cfg))
    return cfg


@dataclass(frozen=True, slots=True, repr=False)
class AddResult:
    """What :func:`add_client` did.

    :ivar client_text: the client's wg-quick file.
    :ivar running: the running interface that got the peer, or None (not running).
    :ivar error: why the running server could not be updated, or None.
    """

    enrollment: Enrollment
    client_text: str
    running: str | None
    error: str | None

    def __repr__(self) -> str:  # the client's file holds its private key
        return redacted_repr(self, ("client_text",))


def add_client(path: str, name: str, *, endpoint: str | None = None, dns: Sequence[str] = (),
               psk: bool = True, live: bool = True, policy: ClientPolicy | None = None) -> AddResult:
    """Enroll ``name``: edit the server file, then update the running server if there is one.

    :param endpoint: ``HOST[:PORT]`` overriding ``#pyvpn PublicEndpoint``.
    :param psk: give the client a preshared key (default; post-quantum hedge).
    :param policy: the client's policy (access rules, rate limit, expiry).
    :param live: try the running server's control socket.
    :raises EnrollError: see :func:`enroll`; a missing or broken file is a :class:`ConfigError`.
    """
    with locked(path):
        text, cfg = _read(path)
        ep = parse_public_endpoint(endpoint, cfg.interface.listen_port or DEFAULT_PORT) if endpoint else None
        e = enroll(cfg, name, private_key=private_from_random(os.urandom(32)),
                   preshared_key=os.urandom(32) if psk else None, endpoint=ep, dns=dns, policy=policy)
        new_text = edited_text(text, e.server, append_peer_text(text, e.peer))
        write_private(path, new_text)
    iface = interface_name(cfg)
    running, error = None, None
    if live:
        running, error = push_peer(cfg, iface, e.peer)
    return AddResult(enrollment=e, client_text=client_config_text(e.client, server_name=iface),
                     running=running, error=error)


def remove_client(path: str, name: str, *, live: bool = True) -> tuple[PeerConfig, str | None, str | None]:
    """Remove ``name`` from the file and the running server: ``(peer, running iface, error)``."""
    with locked(path):
        text, cfg = _read(path)
        new, peer = unenroll(cfg, name)
        write_private(path, edited_text(text, new, cut_peer_text(text, peer)))
    iface = interface_name(cfg)
    running, error = None, None
    if live:
        running, error = pull_peer(cfg, iface, peer)
    return peer, running, error


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What :func:`set_client` did.

    :ivar before: the client's ``[Peer]`` before the change.
    :ivar after: the client's ``[Peer]`` now in the file.
    :ivar running: the running interface that got the new policy, or None (not running).
    :ivar error: why the running server could not be updated, or None.
    """

    before: PeerConfig
    after: PeerConfig
    running: str | None
    error: str | None


def set_client(path: str, name: str, change: Callable[[ClientPolicy], ClientPolicy], *,
               live: bool = True) -> PolicyResult:
    """Change the policy of client ``name``: ``change(old policy)`` is the new one.  The file is
    edited (its other lines kept) and written atomically, then the running server is updated.

    :raises EnrollError: no such client; a missing or broken file is a :class:`ConfigError`.
    """
    with locked(path):
        text, cfg = _read(path)
        peer = find_peer(cfg, name)
        if peer is None:
            raise EnrollError(f"{cfg.path}: no client named {name!r}")
        new_peer = peer.with_policy(change(peer.policy))
        new_cfg = replace(cfg, peers=tuple(new_peer if p is peer else p for p in cfg.peers))
        write_private(path, edited_text(text, new_cfg, set_policy_text(text, peer, new_peer)))
    running, error = None, None
    if live:
        running, error = push_policy(cfg, interface_name(cfg), new_peer)
    return PolicyResult(before=peer, after=new_peer, running=running, error=error)


def list_clients(path: str, *, live: bool = True) -> tuple[Config, list[ClientRow], bool]:
    """The file's peers with their policy and state, and handshakes and policy counters from the
    running server: ``(config, rows, running)``."""
    cfg = load_config(path)
    snap = running_snapshot(cfg) if live else None
    by_key: dict[bytes, dict[str, Any]] = {}
    if snap is not None:
        by_key = {p["public_key"]: p for p in snap.get("peers", [])}
    rows = []
    wall = time.time()
    for p in cfg.peers:
        live_peer = by_key.get(p.public_key)
        rows.append(ClientRow(name=p.name, addresses=tuple(str(n) for n in p.allowed_ips),
                              public_key=encode_key(p.public_key),
                              latest_handshake=float(live_peer.get("latest_handshake") or 0) if live_peer else None,
                              endpoint=live_peer.get("endpoint") if live_peer else None,
                              policy=p.policy, state=p.policy.state(wall),
                              denied=int(live_peer.get("denied", 0)) if live_peer else None,
                              ratelimited=int(live_peer.get("ratelimited", 0)) if live_peer else None))
    return cfg, rows, snap is not None


# -- the running server ------------------------------------------------------------------------
def interface_name(cfg: Config) -> str:
    """The interface a daemon runs this config as: ``#pyvpn Name`` or the file's stem.

    :raises ConfigError: the stem is not a valid interface name.
    """
    return cfg.interface_name


def running_snapshot(cfg: Config) -> dict[str, Any] | None:
    """The snapshot of the running server for ``cfg``, or None when it is not running.

    A daemon with the same interface name but another key is some other server: None.
    """
    from .control import ControlError, query, socket_path
    from .util import socket_is_live

    iface = interface_name(cfg)
    if not socket_is_live(socket_path(iface)):
        return None
    try:
        snap = query(iface)
    except ControlError:
        return None
    if snap.get("public_key") != public_from_private(cfg.interface.private_key):
        return None
    return snap


def _request_running(cfg: Config, iface: str, req: dict[str, Any]) -> tuple[str | None, str | None]:
    """Send ``req`` to the running server of ``cfg``: ``(iface, None)``, ``(None, None)`` if it is not
    running, or ``(None, error)``."""
    from .control import ControlError, request

    if running_snapshot(cfg) is None:
        return None, None
    try:
        request(iface, req)
    except ControlError as e:
        return None, str(e)
    return iface, None


def push_peer(cfg: Config, iface: str, peer: PeerConfig) -> tuple[str | None, str | None]:
    """Add ``peer`` (with its policy) to the running server (results as :func:`_request_running`)."""
    return _request_running(cfg, iface, {
        "op": "add_peer", "public_key": peer.public_key, "preshared_key": peer.preshared_key,
        "allowed_ips": [str(n) for n in peer.allowed_ips], "name": peer.name,
        "persistent_keepalive": peer.persistent_keepalive, "policy": peer.policy.to_wire()})


def push_policy(cfg: Config, iface: str, peer: PeerConfig) -> tuple[str | None, str | None]:
    """Give the running server ``peer``'s policy."""
    return _request_running(cfg, iface, {"op": "set_policy", "public_key": peer.public_key,
                                         "policy": peer.policy.to_wire()})


def pull_peer(cfg: Config, iface: str, peer: PeerConfig) -> tuple[str | None, str | None]:
    """Remove ``peer`` from the running server."""
    return _request_running(cfg, iface, {"op": "remove_peer", "public_key": peer.public_key})


__all__ = [
    "AddResult",
    "ClientRow",
    "EnrollError",
    "Enrollment",
    "PolicyResult",
    "add_client",
    "allocate",
    "client_config_text",
    "enroll",
    "init_server",
    "list_clients",
    "new_server_config",
    "parse_public_endpoint",
    "qr_png",
    "qr_terminal",
    "remove_client",
    "set_client",
    "set_policy_text",
    "unenroll",
]
