"""Writing a :class:`~vpn.config.model.Config` back as a wg-quick file (``#pyvpn`` lines for pyvpn's keys).

``parse_config(format_config(c)) == c`` for every config the parser accepts (but for path and line numbers).
"""

from __future__ import annotations

from crypto.keys import encode_key

from ..policy import format_rate, format_time
from ..util import format_endpoint
from .model import Config, PeerConfig


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
