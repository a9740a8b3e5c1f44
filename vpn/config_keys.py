"""Every config key, spelled and explained, for ``pyvpn config-keys`` and the daemons' ``--help``.

What the parser accepts is decided by its own key tables (:data:`vpn.config.parser._TABLES`): the listing
walks them, so a key the parser takes is always listed.  This module only adds the usual spelling and
one line of meaning; ``tests/unit/test_cli.py`` checks that no accepted key lacks them.
"""

from __future__ import annotations

from .config.parser import _SECTION_TITLE, _TABLES

# (section, pyvpn line?) → lower-case key → (spelling, meaning)
KEY_DOCS: dict[tuple[str, bool], dict[str, tuple[str, str]]] = {
    ("interface", False): {
        "privatekey": ("PrivateKey", "base64 private key (pyvpn genkey / wg genkey)"),
        "listenport": ("ListenPort", "UDP port to listen on (default: a random one)"),
        "fwmark": ("FwMark", "mark for the UDP socket's packets (off or a number)"),
        "address": ("Address", "tunnel address with prefix (repeatable, comma-separated)"),
        "mtu": ("MTU", "tunnel MTU (default 1420)"),
        "dns": ("DNS", "DNS servers and search domains set through resolvconf while up"),
        "table": ("Table", "routing table for AllowedIPs routes: auto, off, main or a number"),
        "preup": ("PreUp", "shell command before the interface is created (%i: its name)"),
        "postup": ("PostUp", "shell command after it is up"),
        "predown": ("PreDown", "shell command before it goes down"),
        "postdown": ("PostDown", "shell command after it is gone"),
        "saveconfig": ("SaveConfig", "true: write the running peers back to the file on shutdown"),
    },
    ("interface", True): {
        "name": ("Name", "interface name (default: the file's stem, as wg-quick)"),
        "namespace": ("Namespace", "move the tunnel interface into this network namespace"),
        "user": ("User", "drop privileges to this user once the interface is up"),
        "forward": ("Forward", "on: forward between peers in the daemon, bypassing the host firewall (default off)"),
        "offload": ("Offload", "on/off/auto: TUN and UDP segmentation offloads (default auto)"),
        "loglevel": ("LogLevel", "debug, info, warning or error (--log-level overrides)"),
        "metrics": ("Metrics", "HOST:PORT to serve Prometheus metrics on"),
        "pool4": ("Pool4", "server: IPv4 network that enrolled clients' addresses come from"),
        "pool6": ("Pool6", "server: IPv6 network that enrolled clients' addresses come from"),
        "publicendpoint": ("PublicEndpoint", "server: HOST:PORT that enrolled clients connect to"),
    },
    ("peer", False): {
        "publickey": ("PublicKey", "the peer's base64 public key"),
        "presharedkey": ("PresharedKey", "optional base64 preshared key (pyvpn genpsk)"),
        "allowedips": ("AllowedIPs", "prefixes routed to this peer and accepted from it (repeatable)"),
        "endpoint": ("Endpoint", "HOST:PORT of the peer (resolved at start)"),
        "persistentkeepalive": ("PersistentKeepalive", "seconds between keepalives (off or 1-65535)"),
    },
    ("peer", True): {
        "name": ("Name", "a name for the peer (pyvpn show NAME, segment Peers)"),
        "vtep": ("Vtep", "the peer's VXLAN tunnel endpoint address (default: first AllowedIPs host)"),
        "allow": ("Allow", "server: destinations this client may reach, PREFIX [PROTO [PORT|LO-HI]] (repeatable)"),
        "deny": ("Deny", "server: destinations this client may never reach (checked before Allow)"),
        "ratelimit": ("RateLimit", "server: token bucket per direction for this client, e.g. 50mbit"),
        "expires": ("Expires", "server: refuse this client from this UTC time on, e.g. 2027-01-05T00:00:00Z"),
        "disabled": ("Disabled", "server: true refuses this client's handshakes"),
    },
    ("segment", True): {
        "vni": ("VNI", "VXLAN network identifier, 1-16777215 (required)"),
        "tap": ("Tap", "tap device carrying the segment's frames (required)"),
        "bridge": ("Bridge", "Linux bridge to create or join with the tap"),
        "mtu": ("MTU", "the tap's MTU (default: what fits in the tunnel)"),
        "port": ("Port", "VXLAN UDP port (default 4789)"),
        "peers": ("Peers", "peer names or keys on the segment (default: all)"),
        "vlan": ("VLAN", "802.1Q VLAN on the tap that carries this VNI"),
        "mode": ("Mode", "tunnel (VXLAN inside WireGuard, default) or plain (unencrypted RFC 7348)"),
        "local": ("Local", "plain mode: local underlay address"),
        "remote": ("Remote", "plain mode: remote VTEP ip, ip:port or [v6]:port (repeatable)"),
        "macage": ("MacAge", "seconds before a learned MAC is forgotten (default 300)"),
        "maclimit": ("MacLimit", "most MACs learned on the segment (default 4096)"),
        "maclimitperpeer": ("MacLimitPerPeer", "most MACs learned behind one peer (default 256)"),
        "broadcastrateperpeer": ("BroadcastRatePerPeer", "flooded frames/s relayed from one peer (hub; 0: no limit)"),
        "broadcastburstperpeer": ("BroadcastBurstPerPeer", "its burst in frames (default: twice the rate)"),
        "broadcastrate": ("BroadcastRate", "flooded frames/s from all peers together (default 1000; 0: no limit)"),
        "broadcastburst": ("BroadcastBurst", "its burst in frames (default: twice the rate)"),
    },
}


def config_keys() -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(section heading, [(key as written, meaning), ...]), ...]`` for every key the parser accepts."""
    out = []
    for (kind, pyvpn), table in _TABLES.items():
        docs = KEY_DOCS.get((kind, pyvpn), {})
        prefix = "#pyvpn " if pyvpn else ""
        title = _SECTION_TITLE[kind] if kind == "segment" else f"{_SECTION_TITLE[kind]}, {prefix or 'wg-quick '}lines"
        rows = [(prefix + docs.get(lkey, (lkey, ""))[0], docs.get(lkey, (lkey, ""))[1]) for lkey in table]
        out.append((title, rows))
    return out


def keys_text() -> str:
    """The listing ``pyvpn config-keys`` prints: a heading per section, one key a line."""
    lines = []
    for title, rows in config_keys():
        lines.append(f"{title}:")
        width = max(len(k) for k, _ in rows)
        lines.extend(f"  {k:<{width}}  {doc}".rstrip() for k, doc in rows)
    return "\n".join(lines) + "\n"


def keys_summary() -> str:
    """One paragraph per section naming every key (for the daemons' ``--help``)."""
    return "\n\n".join(f"{title}: " + ", ".join(k.removeprefix("#pyvpn ") for k, _ in rows)
                       for title, rows in config_keys())
