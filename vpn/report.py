"""What a device reports: its snapshot for ``pyvpn show``, the control socket and the metrics endpoint, and its
protocol core's events and stall checks as log lines (under the device's logger).  Read-only over the device."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from crypto.tunnel import EndpointChanged, HandshakeCompleted, HandshakeGaveUp, HandshakeInitiated, KeysZeroed

from .drops import split_expected
from .stall import Recovered, Stalled
from .util import format_endpoint

if TYPE_CHECKING:
    from .device import Device
    from .peer import Peer

__all__ = ["device_snapshot", "log_core_events", "log_stall"]

log = logging.getLogger("pyvpn.device")


def device_snapshot(dev: Device, *, wall: float, now: float | None) -> dict[str, Any]:
    """Everything ``pyvpn show`` and the metrics endpoint report about ``dev`` (no private keys).

    :param wall: UNIX time (each peer's policy state).
    :param now: the device loop's time, or None when the device is not running.
    """
    peers = []
    for p in dev.peers.values():
        t = p.tunnel
        peers.append({
            "public_key": t.public_key,
            "name": p.name,
            "endpoint": format_endpoint(t.endpoint) if t.endpoint else None,
            "allowed_ips": list(p.allowed_ips),
            "latest_handshake": t.last_handshake_wall,
            "rx_bytes": t.rx_bytes,
            "tx_bytes": t.tx_bytes,
            "rx_packets": t.rx_packets,
            "tx_packets": t.tx_packets,
            "handshakes": t.handshakes,
            "persistent_keepalive": t.persistent_keepalive,
            "has_preshared_key": t.preshared_key is not None,
            "drops": {k: v for k, v in p.drops.items() if v},
            "policy": {**p.policy.to_wire(), "state": p.policy.state(wall)},
            "denied": p.drops["policy_denied"],
            "ratelimited": p.drops["ratelimit_in"] + p.drops["ratelimit_out"],
            "refused_handshakes": t.refused_handshakes,
        })
    drops, ignored = split_expected(dev.drop_counts())
    snap = {
        "interface": dev.name,
        "public_key": dev.core.public_key if dev.core.has_private_key else None,
        "listen_port": dev.listen_port,
        "mtu": dev.core.mtu,
        "forward": dev.forward,
        "forwarded_packets": dev.forwarded_packets,
        "peers": peers,
        "drops": drops,
        "ignored": ignored,
        "under_load": dev.core.under_load(now=now) if now is not None else False,
        "stall": {**dev.stall.status(now if now is not None else time.monotonic()),
                  "loop_blocked": dev.watchdog.blocked},
    }
    if dev.l2 is not None:
        snap["segments"] = dev.l2.snapshot()
    return snap


def log_core_events(events: Iterable[Any], peers: Mapping[bytes, Peer]) -> None:
    """Log the protocol core's events (``Core.take_events()``), each on its peer's logger."""
    for ev in events:
        peer = peers.get(ev.peer)
        plog: logging.LoggerAdapter[logging.Logger] | logging.Logger = peer.log if peer else log
        if isinstance(ev, HandshakeCompleted):
            plog.info("handshake completed (%s)", "we initiated" if ev.initiator else "peer initiated")
        elif isinstance(ev, HandshakeInitiated):
            plog.debug("sending handshake initiation%s", " (retry)" if ev.retry else "")
        elif isinstance(ev, HandshakeGaveUp):
            plog.warning("handshake did not complete after %d attempts; giving up for now", 20)
        elif isinstance(ev, KeysZeroed):
            plog.info("no new session for 9 minutes; keys zeroed")
        elif isinstance(ev, EndpointChanged):
            plog.info("endpoint is now %s", format_endpoint(ev.endpoint))
        else:
            plog.debug("%s", type(ev).__name__)


def log_stall(name: str, ev: Stalled | Recovered | None) -> None:
    """Log what the stall check of interface ``name`` found (:class:`vpn.stall.StallDetector`)."""
    if isinstance(ev, Stalled):
        log.warning("%s: data path stalled: packets are waiting on %s but nothing was taken in for %.0f s",
                    name, " and ".join(ev.queued), ev.seconds)
    elif isinstance(ev, Recovered):
        log.info("%s: data path %s after %.0f s", name,
                 "moving again" if ev.moved else "no longer has packets waiting", ev.seconds)
