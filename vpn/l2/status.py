"""Status of the running L2 segments: the MAC-event log lines, drop counters and the ``pyvpn show`` entries."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crypto.keys import abbreviate, encode_key

from ..util import format_endpoint
from .mactable import LOCAL

if TYPE_CHECKING:
    from ..device import Device
    from .ports import Segment, TapPort

__all__ = ["MAX_EVENT_LINES", "drop_counts", "log_mac_events", "port_label", "snapshot"]

log = logging.getLogger("pyvpn.l2")

MAX_EVENT_LINES = 5  # MAC move / claim log lines per segment and housekeeping tick (1 s)


def port_label(device: Device, port: object) -> str:
    """How a log line names a switch port: the local tap, a peer (by name if it has one) or a plain remote."""
    if port == LOCAL:
        return "the local tap"
    if isinstance(port, bytes):
        peer = device.peers.get(port)
        if peer is not None and peer.name:
            return f"peer {peer.name}"
        return peer.label if peer is not None else f"peer({abbreviate(port)})"
    return f"remote {port}"


def log_mac_events(device: Device, seg: Segment) -> None:
    """Log what the switch recorded since the last tick: MAC moves and refused claims (rate-limited:
    at most :data:`MAX_EVENT_LINES` lines per segment a second, each event with its count)."""
    events = seg.switch.table.take_events()
    for event, n in events[:MAX_EVENT_LINES]:
        mac = event.mac.hex(":")
        old, new = port_label(device, event.old), port_label(device, event.new)
        times = f" ({n} times)" if n > 1 else ""
        if event.kind == "local_claim":
            log.warning("segment VNI %d: %s claimed MAC %s of the local LAN%s; frames dropped (local MACs "
                        "are sticky)", seg.vni, new, mac, times)
        elif event.kind == "move_limited":
            log.warning("segment VNI %d: MAC %s moves too often (over %d in %.0f s); %s claimed it from %s%s; "
                        "frames dropped", seg.vni, mac, seg.switch.table.move_limit, seg.switch.table.move_window,
                        new, old, times)
        elif event.new == LOCAL:
            log.info("segment VNI %d: MAC %s moved from %s to the local tap%s", seg.vni, mac, old, times)
        else:
            log.warning("segment VNI %d: MAC %s moved from %s to %s%s", seg.vni, mac, old, new, times)
    if len(events) > MAX_EVENT_LINES:
        log.warning("segment VNI %d: and %d more MAC events", seg.vni, len(events) - MAX_EVENT_LINES)


def drop_counts(drops: Counter[str], segments: Iterable[Segment], taps: Iterable[TapPort]) -> Counter[str]:
    """Drops by reason: the runtime's own, each switch's ``drop_*`` as ``l2_*``, tap write refusals."""
    c = Counter(drops)
    for seg in segments:
        for reason, n in seg.switch.counters.items():
            if reason.startswith("drop_") and n:
                c["l2_" + reason[5:]] += n
    for tp in taps:
        for err, n in (getattr(tp.tap, "write_errors", None) or {}).items():
            c[f"l2_tap_write_{err}"] += n
    return c


def snapshot(device: Device, segments: Iterable[Segment], now: float | None) -> list[dict[str, Any]]:
    """One entry per segment for ``pyvpn show`` (``vni``, ``tap``, ``macs``, ``plain``, ...)."""
    out = []
    for seg in segments:
        p = seg.plan
        peers: list[str]
        table = seg.switch.table
        if p.plain:
            peers = [format_endpoint(r) for r in p.remotes]
            by_peer = {format_endpoint(r): table.count(r[0]) for r in p.remotes}
        else:
            peers, by_peer = [], {}
            for key in seg.members:
                peer = device.peers.get(key)
                # a name, else the whole key (never abbreviated: `pyvpn show` cuts no key)
                peers.append(peer.name if peer is not None and peer.name else encode_key(key))
                by_peer[peers[-1]] = table.count(key)
        out.append({
            "vni": p.vni,
            "tap": p.tap,
            "offloads": seg.port.mode.names(),
            "bridge": seg.port.plan.bridge,
            "mtu": seg.port.plan.mtu,
            "vlan": p.vlan,
            "port": p.port,
            "plain": p.plain,
            "local": p.local,
            "hub": p.hub,
            "macs": len(seg.switch.table) if now is None else len(seg.switch.table.entries(now=now)),
            "mac_limit": p.mac_limit,
            "mac_limit_per_peer": p.mac_limit_per_peer,
            "macs_by_peer": by_peer,
            "broadcast_rate_per_peer": p.broadcast_rate_per_peer if p.hub else 0,
            "broadcast_rate": p.broadcast_rate,
            "untagged_only": seg.switch.untagged_only,
            "peers": peers,
            "counters": dict(seg.switch.counters),
            "table": dict(seg.switch.table.counters),
        })
    return out

