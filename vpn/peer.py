"""A configured peer: the protocol :class:`~crypto.tunnel.Tunnel` plus what the application adds."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from crypto.keys import abbreviate
from crypto.ratelimiter import TokenBucket
from crypto.tunnel import Tunnel

from .policy import AccessRules, ClientPolicy


class PeerLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with ``peer(AbCd…wxyz)`` as wireguard-go does."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{self.extra['prefix'] if self.extra else ''} {msg}", kwargs


@dataclass(eq=False, slots=True)
class Peer:
    """One peer of a :class:`~vpn.device.Device`.

    :ivar tunnel: the sans-IO protocol state (sessions, timers, byte counters).
    :ivar allowed_ips: the CIDRs this peer owns, in the order they were given.
    :ivar name: a human name (from ``#pyvpn Name =``), or None.
    :ivar drops: drops attributed to this peer, by reason (for example ``spoofed_source``,
        ``policy_denied``, ``ratelimit_in``, ``ratelimit_out``).
    :ivar config_endpoint: the ``Endpoint`` as written in the config, ``(host, port)``, or None (no
        Endpoint, or one set through UAPI).  A host name is looked up again when handshakes keep
        failing (:mod:`vpn.endpoints`); a reload compares it with the file's.
    :ivar policy: the per-client policy (:mod:`vpn.policy`); set it with
        :meth:`vpn.device.Device.set_policy`, which also sets the three fields below.
    :ivar access: the compiled access rules, or None when the client has none.
    :ivar bucket_in: the rate limit on packets from this peer, or None.
    :ivar bucket_out: the rate limit on packets to this peer, or None.
    :ivar policed: ``access`` or ``bucket_in`` is set: the receive path checks this once per batch.
    """

    tunnel: Tunnel
    allowed_ips: list[str]
    name: str | None = None
    drops: Counter[str] = None  # type: ignore[assignment]
    log: PeerLog = None  # type: ignore[assignment]
    config_endpoint: tuple[str, int] | None = None
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    access: AccessRules | None = None
    bucket_in: TokenBucket | None = None
    bucket_out: TokenBucket | None = None
    policed: bool = False

    def __post_init__(self) -> None:
        if self.drops is None:
            self.drops = Counter()
        self.log = PeerLog(logging.getLogger("pyvpn.peer"), {"prefix": f"peer({abbreviate(self.public_key)})"})

    @property
    def public_key(self) -> bytes:
        return self.tunnel.public_key

    @property
    def label(self) -> str:
        return self.name or f"peer({abbreviate(self.public_key)})"

    def police_in(self, packets: list[bytes], now: float, device_drops: Counter[str], *,
                  bulk: bool = True) -> list[bytes]:
        """The packets from this peer that its access rules allow and its inbound rate admits, in order;
        the rest are counted (``policy_denied``, ``ratelimit_in``) for the peer and in ``device_drops``.
        ``bulk`` is :meth:`vpn.policy.AccessRules.split`'s."""
        access = self.access
        if access is not None:
            packets, denied = access.split(packets, bulk=bulk)
            if denied:
                self.drops["policy_denied"] += denied
                device_drops["policy_denied"] += denied
        if self.bucket_in is not None and packets:
            packets = self._rate_limit(self.bucket_in, packets, now, "ratelimit_in", device_drops)
        return packets

    def police_out(self, packets: list[bytes], now: float, device_drops: Counter[str]) -> list[bytes]:
        """The packets for this peer that its outbound rate admits; the rest are counted (``ratelimit_out``)."""
        if self.bucket_out is None:
            return packets
        return self._rate_limit(self.bucket_out, packets, now, "ratelimit_out", device_drops)

    def _rate_limit(self, bucket: TokenBucket, packets: list[bytes], now: float, reason: str,
                    device_drops: Counter[str]) -> list[bytes]:
        n = bucket.admit(packets, now=now)
        if n < len(packets):
            over = len(packets) - n
            self.drops[reason] += over
            device_drops[reason] += over
            packets = packets[:n]
        return packets
