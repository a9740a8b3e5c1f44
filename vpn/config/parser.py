"""The parser: wg-quick text (with ``#pyvpn`` lines) to a :class:`~vpn.config.model.Config`.

The keys are data: :data:`_TABLES` maps each section's lower-case keys to ``(field, converter)``, the
converters (:mod:`vpn.config.values`) turn the text into the field's value or raise ``ValueError`` with a
reason, and :func:`parse_config` adds the place (``file:line: Key: reason``).  Checks that need more than
one line (missing keys, duplicates, segment rules) follow the line loop.  ``pyvpn config-keys``
(:mod:`vpn.config_keys`) lists the same tables.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypto.keys import encode_key, public_from_private

from ..policy import parse_rate, parse_rules, parse_time
from . import values as v
from .model import Config, ConfigError, InterfaceConfig, PeerConfig, SegmentConfig

#: A key's field in the section's dataclass and the converter of its text.
KeySpec = tuple[str, Callable[[str], Any]]

_INTERFACE_KEYS: dict[str, KeySpec] = {
    "privatekey": ("private_key", lambda s: v.key(s, "private key")),
    "listenport": ("listen_port", v.ranged(0, 65535)),
    "fwmark": ("fwmark", v.fwmark),
    "address": ("addresses", v.each(v.interface_address)),
    "mtu": ("mtu", v.ranged(576, 65535)),
    "dns": ("dns", v.dns),
    "table": ("table", v.route_table),
    "preup": ("pre_up", v.verbatim),
    "postup": ("post_up", v.verbatim),
    "predown": ("pre_down", v.verbatim),
    "postdown": ("post_down", v.verbatim),
    "saveconfig": ("save_config", v.true_false),
}
_INTERFACE_PYVPN: dict[str, KeySpec] = {
    "name": ("name", v.check_ifname),
    "namespace": ("namespace", v.netns_name),
    "user": ("user", v.user_name),
    "forward": ("forward", v.on_off),
    "offload": ("offload", v.choice("on", "off", "auto")),
    "loglevel": ("log_level", v.choice("debug", "info", "warning", "error")),
    "metrics": ("metrics", v.host_port),
    "pool4": ("pool4", v.pool(4)),
    "pool6": ("pool6", v.pool(6)),
    "publicendpoint": ("public_endpoint", v.parse_endpoint),
}
_PEER_KEYS: dict[str, KeySpec] = {
    "publickey": ("public_key", lambda s: v.key(s, "public key")),
    "presharedkey": ("preshared_key", lambda s: v.key(s, "preshared key")),
    "allowedips": ("allowed_ips", v.each(v.network)),
    "endpoint": ("endpoint", v.parse_endpoint),
    "persistentkeepalive": ("persistent_keepalive", v.keepalive),
}
_PEER_PYVPN: dict[str, KeySpec] = {
    "name": ("name", v.peer_name),
    "vtep": ("vtep", v.ip_address),
    "allow": ("allow", parse_rules),
    "deny": ("deny", parse_rules),
    "ratelimit": ("rate_limit", parse_rate),
    "expires": ("expires", parse_time),
    "disabled": ("disabled", v.on_off),
}
_SEGMENT_KEYS: dict[str, KeySpec] = {
    "vni": ("vni", v.ranged(1, (1 << 24) - 1)),
    "tap": ("tap", v.check_ifname),
    "bridge": ("bridge", v.check_ifname),
    "mtu": ("mtu", v.ranged(68, 65535)),
    "port": ("port", v.ranged(1, 65535)),
    "peers": ("peers", v.comma_list),
    "vlan": ("vlan", v.ranged(1, 4094)),
    "mode": ("mode", v.choice("tunnel", "plain")),
    "local": ("local", v.ip_address),
    "remote": ("remote", v.remotes),
    "macage": ("mac_age", v.seconds(1, 86400 * 365)),
    "maclimit": ("mac_limit", v.ranged(1, 1 << 20)),
    "maclimitperpeer": ("mac_limit_per_peer", v.ranged(1, 1 << 20)),
    "broadcastrateperpeer": ("broadcast_rate_per_peer", v.ranged(0, 1_000_000)),
    "broadcastburstperpeer": ("broadcast_burst_per_peer", v.ranged(1, 10_000_000)),
    "broadcastrate": ("broadcast_rate", v.ranged(0, 1_000_000)),
    "broadcastburst": ("broadcast_burst", v.ranged(1, 10_000_000)),
}
#: (section, on a ``#pyvpn`` line?) → lower-case key → (field, converter).
_TABLES: dict[tuple[str, bool], dict[str, KeySpec]] = {
    ("interface", False): _INTERFACE_KEYS, ("interface", True): _INTERFACE_PYVPN,
    ("peer", False): _PEER_KEYS, ("peer", True): _PEER_PYVPN, ("segment", True): _SEGMENT_KEYS,
}
#: Fields whose lines add up (every other key may be given once per section).
_REPEATABLE = {"addresses", "dns", "pre_up", "post_up", "pre_down", "post_down", "allowed_ips", "remote", "peers",
               "allow", "deny"}
#: Fields that may be empty (an empty list), as with wg / wg-quick.
_MAY_BE_EMPTY = {"addresses", "dns", "allowed_ips", "pre_up", "post_up", "pre_down", "post_down"}
_SECTION_TITLE = {"interface": "[Interface]", "peer": "[Peer]", "segment": "#pyvpn [Segment]"}
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
        spec = _TABLES.get((kind, pyvpn), {}).get(lkey)
        if spec is None:
            where = ("#pyvpn " if pyvpn and kind != "segment" else "") + _SECTION_TITLE[kind]
            raise ConfigError(path, lineno, key, f"unknown key in {where}{_misplaced(kind, pyvpn, lkey)}")
        attr, convert = spec
        if not value and attr not in _MAY_BE_EMPTY:
            raise ConfigError(path, lineno, key, "empty value")
        try:
            converted = convert(value) if value else []
        except ValueError as e:
            raise ConfigError(path, lineno, key, str(e)) from None
        if attr in _REPEATABLE:
            values.setdefault(attr, []).extend(converted)
        else:
            if attr in values:
                raise ConfigError(path, lineno, key, f"given twice in this section (first on line {lines[attr]})")
            values[attr] = converted
        lines[attr] = lineno

    def frozen(values: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(x) if isinstance(x, list) else x for k, x in values.items()}

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
    own_public = public_from_private(iface.private_key)

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
                if ipaddress.ip_address(v.parse_remote(r)[0]).version != local_version:
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
