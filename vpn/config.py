"""wg-quick configuration files, parsed once at the edge into frozen dataclasses.

The format is the one ``wg-quick`` and ``wg setconf`` read: ``[Interface]`` and ``[Peer]``
sections of ``Key = Value`` lines, keys case-insensitive, ``#`` comments.  An existing wg-quick
file parses unchanged.

pyvpn's own settings
--------------------
They live in comment lines that start with ``#pyvpn``, which wg-quick and ``wg`` ignore, so
one file serves both:

- ``#pyvpn Key = Value`` inside ``[Interface]`` or ``[Peer]`` sets a pyvpn key there.
  Interface: ``Name`` (interface name; default the file's stem, as wg-quick), ``Namespace``
  (put the tun into this netns), ``User`` (drop privileges to it), ``Forward`` (on/off:
  client-to-client forwarding inside the daemon, default on), ``Offload`` (on/off/auto),
  ``LogLevel``, ``Metrics`` (host:port), and for ``pyvpn server add-client``: ``Pool4`` and
  ``Pool6`` (the networks client addresses are drawn from) and ``PublicEndpoint`` (host:port
  that clients connect to).  Peer: ``Name``, ``Vtep`` (the peer's VXLAN tunnel endpoint
  address for L2 segments; default: the first host address of its AllowedIPs).
- ``#pyvpn [Segment]`` opens a pyvpn-only section (an L2 segment); its lines are all
  ``#pyvpn Key = Value``: ``VNI`` (required), ``Tap`` (required), ``Bridge``, ``MTU``,
  ``Port`` (VXLAN UDP port, 4789), ``Peers`` (names or public keys; default all), ``VLAN``,
  ``Mode`` (``tunnel``, or ``plain`` = unencrypted RFC 7348 over the underlay, with ``Local``
  and ``Remote`` = ``ip``, ``ip:port`` or ``[v6]:port``), ``MacAge`` (300), ``MacLimit`` (4096).
  A normal section header ends it.  :mod:`vpn.l2` runs the segments.

Every error is a :class:`ConfigError` naming the file, the line and the key.  Private keys never
appear in messages or reprs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from crypto.errors import KeyFormatError
from crypto.keys import decode_key, encode_key

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class ConfigError(ValueError):
    """``file:line: Key: what is wrong``."""

    def __init__(self, path: str, line: int | None, key: str | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")
        self.path, self.line, self.key = path, line, key


def _redacted(cls: type) -> type:
    def __repr__(self: Any) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("private_key", "preshared_key") and v is not None:
                v = "(hidden)"
            parts.append(f"{f.name}={v!r}")
        return f"{cls.__name__}({', '.join(parts)})"

    cls.__repr__ = __repr__  # type: ignore[method-assign]
    return cls


@_redacted
@dataclass(frozen=True, slots=True, repr=False)
class PeerConfig:
    """One ``[Peer]``.

    :ivar public_key: 32 bytes.
    :ivar preshared_key: 32 bytes or None.
    :ivar allowed_ips: networks (host bits cleared).
    :ivar endpoint: ``(host, port)`` as written (resolved when the daemon starts), or None.
    :ivar persistent_keepalive: seconds, 0 = off.
    :ivar name: ``#pyvpn Name``, or None.
    :ivar vtep: ``#pyvpn Vtep``: the peer's VXLAN tunnel endpoint address (L2 segments), or None
        for the first host address of its AllowedIPs.
    :ivar line: where the section starts.
    """

    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: tuple[Net, ...] = ()
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    name: str | None = None
    vtep: str | None = None
    line: int = 0


@_redacted
@dataclass(frozen=True, slots=True, repr=False)
class InterfaceConfig:
    """The ``[Interface]`` section (wg-quick keys, then pyvpn's ``#pyvpn`` keys)."""

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
    forward: bool = True
    offload: str = "auto"
    log_level: str | None = None
    metrics: str | None = None
    pool4: ipaddress.IPv4Network | None = None
    pool6: ipaddress.IPv6Network | None = None
    public_endpoint: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """One L2 segment (``#pyvpn [Segment]``)."""

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
    line: int = 0


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...] = ()
    segments: tuple[SegmentConfig, ...] = ()


# -- value parsers (each raises ValueError with a short reason) --------------------------------
def _key(v: str, what: str) -> bytes:
    try:
        return decode_key(v, what=what)
    except KeyFormatError as e:
        raise ValueError(str(e)) from None


def _int(v: str, lo: int, hi: int) -> int:
    try:
        n = int(v, 0) if v.lower().startswith("0x") else int(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a number") from None
    if not lo <= n <= hi:
        raise ValueError(f"{n} is out of range ({lo}..{hi})")
    return n


def _bool(v: str) -> bool:
    lv = v.lower()
    if lv in ("true", "on", "yes", "1"):
        return True
    if lv in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"{v!r} is not true/false")


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
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d+)", v) or re.fullmatch(r"([^:\[\]\s]+):(\d+)", v)
    if not m:
        raise ValueError(f"{v!r} is not host:port or [v6]:port")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1..65535)")
    return m.group(1), port


def format_endpoint(ep: tuple[str, int]) -> str:
    """``host:port``, or ``[v6]:port``: what :func:`parse_endpoint` reads back."""
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


_IFNAME = re.compile(r"[A-Za-z0-9_=+.-]{1,15}")


def _ifname(v: str) -> str:
    if not _IFNAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid interface name (1-15 of A-Z a-z 0-9 _=+.-)")
    return v


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
_PEER_PYVPN = {"name": "name", "vtep": "vtep"}
_SEGMENT_KEYS = {"vni": "vni", "tap": "tap", "bridge": "bridge", "mtu": "mtu", "port": "port", "peers": "peers",
                 "vlan": "vlan", "mode": "mode", "local": "local", "remote": "remote", "macage": "mac_age",
                 "maclimit": "mac_limit"}
_REPEATABLE = {"addresses", "dns", "pre_up", "post_up", "pre_down", "post_down", "allowed_ips", "remote", "peers"}


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
    if attr in ("dns", "peers"):
        return _list(raw)
    if attr == "remote":
        items = _list(raw)
        for item in items:
            parse_remote(item)
        return items
    if attr == "mtu":
        return _int(raw, 576 if section != "segment" else 68, 65535)
    if attr == "table":
        if raw.lower() in ("off", "auto", "main"):
            return raw.lower()
        _int(raw, 1, 0xFFFFFFFF)
        return raw
    if attr in ("save_config", "forward"):
        return _bool(raw)
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
    if attr in ("name", "tap", "bridge") and section != "peer":
        return _ifname(raw)
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
    if attr == "mac_limit":
        return _int(raw, 1, 1 << 20)
    return raw


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse the text of a wg-quick file.

    :raises ConfigError: with the file, the line and the key.
    """
    sections: list[tuple[str, int, dict[str, Any], dict[str, int]]] = []
    current: tuple[str, int, dict[str, Any], dict[str, int]] | None = None
    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        pyvpn = False
        m = re.match(r"#\s*pyvpn\b\s*(.*)$", line, re.IGNORECASE)
        if m:
            pyvpn = True
            line = m.group(1).strip()
        else:
            line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.strip().lower()
            if pyvpn:
                if name != "[segment]":
                    raise ConfigError(path, lineno, None, f"unknown pyvpn section {line!r} (expected [Segment])")
                current = ("segment", lineno, {}, {})
            elif name == "[interface]":
                current = ("interface", lineno, {}, {})
            elif name == "[peer]":
                current = ("peer", lineno, {}, {})
            else:
                raise ConfigError(path, lineno, None, f"unknown section {line!r} (expected [Interface] or [Peer])")
            sections.append(current)
            continue
        if "=" not in line:
            raise ConfigError(path, lineno, None, f"expected 'Key = Value', got {line.split()[0]!r}")
        key, value = (x.strip() for x in line.split("=", 1))
        if current is None:
            raise ConfigError(path, lineno, key, "key outside of any section")
        kind, _, values, lines = current
        if kind == "segment" and not pyvpn:
            raise ConfigError(path, lineno, key, "lines inside '#pyvpn [Segment]' must start with '#pyvpn'")
        table = {
            ("interface", False): _INTERFACE_KEYS, ("interface", True): _INTERFACE_PYVPN,
            ("peer", False): _PEER_KEYS, ("peer", True): _PEER_PYVPN, ("segment", True): _SEGMENT_KEYS,
        }[(kind, pyvpn)]
        attr = table.get(key.lower().replace("_", ""))
        if attr is None:
            where = f"{'#pyvpn ' if pyvpn else ''}[{kind.capitalize()}]"
            raise ConfigError(path, lineno, key, f"unknown key in {where}")
        if not value and attr not in ("dns", "pre_up", "post_up", "pre_down", "post_down"):
            raise ConfigError(path, lineno, key, "empty value")
        try:
            converted = _convert(kind, attr, value)
        except ValueError as e:
            raise ConfigError(path, lineno, key, str(e)) from None
        if attr in _REPEATABLE:
            if attr in ("pre_up", "post_up", "pre_down", "post_down"):
                converted = [value]
            values.setdefault(attr, []).extend(converted)
        else:
            if attr in values:
                raise ConfigError(path, lineno, key, f"given twice (first on line {lines[attr]})")
            values[attr] = converted
        lines[attr] = lineno

    interfaces = [s for s in sections if s[0] == "interface"]
    if not interfaces:
        raise ConfigError(path, None, None, "no [Interface] section")
    if len(interfaces) > 1:
        raise ConfigError(path, interfaces[1][1], None, "a second [Interface] section")
    _, iline, ivalues, _ = interfaces[0]
    if "private_key" not in ivalues:
        raise ConfigError(path, iline, "PrivateKey", "missing from [Interface]")
    iface = InterfaceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ivalues.items()})

    peers: list[PeerConfig] = []
    seen: dict[bytes, int] = {}
    names: set[str] = set()
    for kind, line, values, _ in sections:
        if kind != "peer":
            continue
        if "public_key" not in values:
            raise ConfigError(path, line, "PublicKey", "missing from [Peer]")
        pk = values["public_key"]
        if pk in seen:
            raise ConfigError(path, line, "PublicKey", f"the same peer is already defined on line {seen[pk]}")
        if pk == _public(iface.private_key):
            raise ConfigError(path, line, "PublicKey", "is the interface's own public key")
        seen[pk] = line
        if values.get("name"):
            if values["name"] in names:
                raise ConfigError(path, line, "Name", f"peer name {values['name']!r} is used twice")
            names.add(values["name"])
        peers.append(PeerConfig(line=line, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}))

    segments: list[SegmentConfig] = []
    vnis: dict[int, int] = {}
    known = names | {encode_key(p.public_key) for p in peers}
    for kind, line, values, _ in sections:
        if kind != "segment":
            continue
        for req in ("vni", "tap"):
            if req not in values:
                raise ConfigError(path, line, req.upper() if req == "vni" else "Tap", "missing from #pyvpn [Segment]")
        if values["vni"] in vnis:
            raise ConfigError(path, line, "VNI", f"{values['vni']} is already used by the segment on line "
                              f"{vnis[values['vni']]}")
        vnis[values["vni"]] = line
        for ref in values.get("peers", []):
            if ref not in known:
                raise ConfigError(path, line, "Peers", f"{ref!r} is neither a peer name nor a peer's public key")
        if values.get("mode") == "plain" and (not values.get("local") or not values.get("remote")):
            raise ConfigError(path, line, "Mode", "plain (unencrypted) VXLAN needs Local and Remote addresses")
        if "mac_age" in values:
            values["mac_age"] = float(values["mac_age"])
        segments.append(SegmentConfig(line=line, **{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in values.items()}))
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
    """A warning if the file (which holds a private key) is readable or writable by others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
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
        out.append(f"FwMark = {i.fwmark:#x}")
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
    if not i.forward:
        out.append("#pyvpn Forward = off")
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
    return "\n".join(out) + "\n"


def write_config_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write with mode 0600 through a temporary file and rename: a crash never leaves half a file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


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
                                vtep=old.vtep if old else None))
    new = replace(cfg, peers=tuple(peers))
    write_config_atomic(cfg.path, format_config(new))


__all__ = ["Config", "ConfigError", "InterfaceConfig", "PeerConfig", "SegmentConfig", "check_permissions",
           "format_config", "format_endpoint", "format_peer", "load_config", "parse_config", "parse_endpoint",
           "parse_remote", "write_config_atomic"]
