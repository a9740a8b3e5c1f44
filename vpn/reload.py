"""SIGHUP: read the config file again and apply it to the running interface, as ``wg syncconf``.

OpenVPN and tinc reload on SIGHUP; so does ``pyvpn server|client`` (closing the terminal or the
SSH session no longer kills it without cleanup).  One reload:

1. Parse the file again (:func:`vpn.config.load_config`).  Any error (a bad line, a name that
   does not resolve, a port in use) is logged as one line and the running configuration stays
   as it is: nothing is applied before everything has been checked.
2. Resolve the Endpoint of each new peer and of each peer whose Endpoint as written changed
   (:func:`vpn.endpoints.resolve`: off the loop, bounded).
3. :func:`sync_request` turns the differences between the running device and the file into one
   UAPI ``set=1`` request, holding only what changed (removed peers, new peers, and for the
   others their preshared key, endpoint, keepalive and AllowedIPs); the private key, ListenPort
   and FwMark are included when they changed.  :func:`vpn.uapi_server.apply_set` applies it:
   the code that serves ``wg set`` and ``wg syncconf``.  A peer that did not change is not
   touched, so its session and its traffic go on.
4. Then what UAPI has no word for: peer names, the Endpoints as written (for
   :mod:`vpn.endpoints`), each peer's per-client policy (:mod:`vpn.policy`: applied to the peers
   whose policy changed, which counts as a change), ``Forward``, and a kernel route for each
   AllowedIPs prefix that was added or removed (not for a /0, whose policy routing needs a restart).
5. Other ``[Interface]`` settings and ``#pyvpn [Segment]`` sections that changed are logged as
   needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from . import uapi
from .config import Config, ConfigError, load_config
from .endpoints import ResolveError, resolve
from .uapi_server import apply_set

if TYPE_CHECKING:
    from .device import Device
    from .interface import Interface

log = logging.getLogger("pyvpn")

Endpoint = tuple[str, int]

#: [Interface] settings a reload applies; any other that changed is reported as needing a restart.
LIVE_SETTINGS = frozenset({"private_key", "listen_port", "fwmark", "forward", "save_config", "log_level",
                           "pool4", "pool6", "public_endpoint"})


@dataclass(frozen=True, slots=True)
class ReloadSummary:
    """What a reload did (for the log line and tests)."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    restart_needed: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (f"{self.added} peer(s) added, {self.removed} removed, {self.changed} changed, "
                f"{self.unchanged} unchanged")
        return text


def sync_request(device: Device, cfg: Config, endpoints: dict[bytes, Endpoint], *,
                 fwmark: int = 0) -> uapi.SetRequest:
    """The ``set=1`` request that makes ``device`` match ``cfg`` (step 3 above).

    :param endpoints: resolved endpoints of the peers whose Endpoint is new or changed.
    :param fwmark: the mark the socket should carry when the file sets none (the /0 policy mark).
    """
    icfg = cfg.interface
    wanted = {p.public_key for p in cfg.peers}
    peers = [uapi.PeerSet(pub, remove=True) for pub in device.peers if pub not in wanted]
    for p in cfg.peers:
        allowed = tuple(str(n) for n in p.allowed_ips)
        cur = device.peers.get(p.public_key)
        ep = endpoints.get(p.public_key)
        if cur is None:
            peers.append(uapi.PeerSet(p.public_key, preshared_key=p.preshared_key, endpoint=ep,
                                      persistent_keepalive=p.persistent_keepalive or None,
                                      replace_allowed_ips=True, allowed_ips=allowed))
            continue
        t = cur.tunnel
        change: dict[str, Any] = {}
        if t.preshared_key != p.preshared_key:
            change["preshared_key"] = p.preshared_key or bytes(32)  # all zero: remove it
        if ep is not None:
            change["endpoint"] = ep
        if t.persistent_keepalive != p.persistent_keepalive:
            change["persistent_keepalive"] = p.persistent_keepalive
        if set(cur.allowed_ips) != set(allowed):
            change.update(replace_allowed_ips=True, allowed_ips=allowed)
        if change:
            peers.append(uapi.PeerSet(p.public_key, update_only=True, **change))
    core = device.core
    mark = icfg.fwmark or fwmark
    return uapi.SetRequest(
        private_key=icfg.private_key if not core.has_private_key or core.private_key != icfg.private_key else None,
        listen_port=icfg.listen_port if icfg.listen_port and icfg.listen_port != device.listen_port else None,
        fwmark=mark if mark != device.fwmark else None,
        peers=tuple(peers),
    )


def restart_needed(old: Config, new: Config) -> tuple[str, ...]:
    """The settings that changed but that a reload does not apply (step 5)."""
    out = [f.name for f in fields(old.interface)
           if f.name not in LIVE_SETTINGS and getattr(old.interface, f.name) != getattr(new.interface, f.name)]
    if old.segments != new.segments:
        out.append("segments")
    if _defaults(old) != _defaults(new):
        out.append("AllowedIPs /0 (policy routing)")
    return tuple(out)


def _defaults(cfg: Config) -> set[int]:
    return {n.version for p in cfg.peers for n in p.allowed_ips if n.prefixlen == 0}


class Reloader:
    """Holds the running config of one daemon and applies the file to it on :meth:`request`.

    :param cfg: the config the daemon started from (:attr:`cfg` follows each good reload).
    :param iface: the interface's kernel state (for routes).
    """

    def __init__(self, device: Device, cfg: Config, iface: Interface) -> None:
        self.device = device
        self.cfg = cfg
        self.iface = iface
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """The SIGHUP handler: reload now, or once more after the reload that is running."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # a reload must never take the daemon down
                log.exception("%s: reload failed; keeping the running configuration", self.device.name)
            if not self._again:
                return

    async def reload(self) -> ReloadSummary | None:
        """One reload (steps 1-5); returns what it did, or None when it kept the running config."""
        name = self.device.name
        path = self.cfg.path
        log.info("%s: SIGHUP: reloading %s", name, path)
        try:
            new = load_config(path)
        except ConfigError as e:
            log.error("%s: reload failed, keeping the running configuration: %s", name, e)
            return None
        if new.interface_name != self.cfg.interface_name:
            log.error("%s: reload failed, keeping the running configuration: %s: Name: the interface name "
                      "changed (to %s); restart to rename it", name, path, new.interface_name)
            return None
        endpoints: dict[bytes, Endpoint] = {}
        for p in new.peers:
            cur = self.device.peers.get(p.public_key)
            if p.endpoint is not None and (cur is None or cur.config_endpoint != p.endpoint):
                try:
                    endpoints[p.public_key] = await resolve(*p.endpoint)
                except ResolveError as e:
                    log.error("%s: reload failed, keeping the running configuration: %s:%d: Endpoint: %s", name,
                              path, p.line, e)
                    return None
        req = sync_request(self.device, new, endpoints, fwmark=self.iface.fwmark)
        if req.listen_port is not None and not self._port_free(req.listen_port):
            log.error("%s: reload failed, keeping the running configuration: %s: ListenPort: port %d is in use",
                      name, path, req.listen_port)
            return None
        summary = self._apply(new, req)
        self.cfg = new
        self.reloads += 1
        log.info("%s: reloaded %s: %s", name, path, summary)
        if summary.restart_needed:
            log.warning("%s: changed settings that apply only after a restart: %s", name,
                        ", ".join(summary.restart_needed))
        return summary

    def _apply(self, new: Config, req: uapi.SetRequest) -> ReloadSummary:
        device = self.device
        removed = sum(1 for ps in req.peers if ps.remove)
        added_keys = {ps.public_key for ps in req.peers if not ps.remove and ps.public_key not in device.peers}
        changed_keys = {ps.public_key for ps in req.peers if not ps.remove and ps.public_key in device.peers}
        apply_set(device, req)
        for p in new.peers:
            peer = device.peers.get(p.public_key)
            if peer is None:
                continue
            if peer.name != p.name:
                peer.name = p.name
            peer.config_endpoint = p.endpoint
            if peer.policy != p.policy:
                if p.public_key not in added_keys:
                    changed_keys.add(p.public_key)
                device.set_policy(peer, p.policy)
        added, changed = len(added_keys), len(changed_keys)
        device.forward = new.interface.forward
        self._update_routes(new)
        return ReloadSummary(added=added, removed=removed, changed=changed,
                             unchanged=len(new.peers) - added - changed, restart_needed=restart_needed(self.cfg, new))

    def _update_routes(self, new: Config) -> None:
        icfg = self.cfg.interface
        addresses = [str(a) for a in icfg.addresses]
        old_routes = self.iface.plain_routes(addresses, _routes(self.cfg), icfg.table)
        new_routes = self.iface.plain_routes(addresses, _routes(new), icfg.table)
        self.iface.update_routes(old_routes, new_routes, icfg.table)

    @staticmethod
    def _port_free(port: int) -> bool:
        from tunnel.udp import UdpSocket

        try:
            s = UdpSocket.bind(None, port, family="dual")
        except OSError:
            return False
        with contextlib.suppress(OSError):
            s.close()
        return True

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _routes(cfg: Config) -> list[str]:
    return [str(n) for p in cfg.peers for n in p.allowed_ips]
