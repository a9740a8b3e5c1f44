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

The package: :mod:`~vpn.config.model` (the frozen dataclasses, :class:`ConfigError`),
:mod:`~vpn.config.values` (one converter per kind of value), :mod:`~vpn.config.parser` (the key tables and
:func:`parse_config`) and :mod:`~vpn.config.writer` (:func:`format_config`).  Writing the running peers back
(``SaveConfig``) belongs to the daemon: :func:`vpn.daemon.save_runtime_config`.
"""


from __future__ import annotations

from ..util import format_endpoint
from .model import SECRET_FIELDS, Config, ConfigError, InterfaceConfig, PeerConfig, SegmentConfig, redacted_repr
from .parser import check_permissions, load_config, parse_config
from .values import check_ifname, parse_endpoint, parse_remote
from .writer import format_config, format_peer, format_policy

__all__ = ["SECRET_FIELDS", "Config", "ConfigError", "InterfaceConfig", "PeerConfig",
           "SegmentConfig", "check_ifname", "check_permissions", "format_config", "format_endpoint", "format_peer",
           "format_policy", "load_config", "parse_config", "parse_endpoint", "parse_remote", "redacted_repr"]
