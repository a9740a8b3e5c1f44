"""A configured peer: the protocol :class:`~crypto.tunnel.Tunnel` plus what the application adds."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from crypto.keys import abbreviate
from crypto.tunnel import Tunnel

from .policy import AccessRules, ClientPolicy
from .tokenbucket import TokenBucket


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
