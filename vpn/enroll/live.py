"""The running server of a config, through its control socket (:mod:`vpn.control`): its snapshot, and
peers and policies added, changed or removed without touching other sessions."""

from __future__ import annotations

from typing import Any

from crypto.keys import public_from_private

from ..config import Config, PeerConfig


def interface_name(cfg: Config) -> str:
    """The interface a daemon runs this config as: ``#pyvpn Name`` or the file's stem.

    :raises ConfigError: the stem is not a valid interface name.
    """
    return cfg.interface_name


def running_snapshot(cfg: Config) -> dict[str, Any] | None:
    """The snapshot of the running server for ``cfg``, or None when it is not running.

    A daemon with the same interface name but another key is some other server: None.
    """
    from ..control import ControlError, query, socket_path
    from ..util import socket_is_live

    iface = interface_name(cfg)
    if not socket_is_live(socket_path(iface)):
        return None
    try:
        snap = query(iface)
    except ControlError:
        return None
    if snap.get("public_key") != public_from_private(cfg.interface.private_key):
        return None
    return snap


def _request_running(cfg: Config, iface: str, req: dict[str, Any]) -> tuple[str | None, str | None]:
    """Send ``req`` to the running server of ``cfg``: ``(iface, None)``, ``(None, None)`` if it is not
    running, or ``(None, error)``."""
    from ..control import ControlError, request

    if running_snapshot(cfg) is None:
        return None, None
    try:
        request(iface, req)
    except ControlError as e:
        return None, str(e)
    return iface, None


def push_peer(cfg: Config, iface: str, peer: PeerConfig) -> tuple[str | None, str | None]:
    """Add ``peer`` (with its policy) to the running server (results as :func:`_request_running`)."""
    return _request_running(cfg, iface, {
        "op": "add_peer", "public_key": peer.public_key, "preshared_key": peer.preshared_key,
        "allowed_ips": [str(n) for n in peer.allowed_ips], "name": peer.name,
        "persistent_keepalive": peer.persistent_keepalive, "policy": peer.policy.to_wire()})


def push_policy(cfg: Config, iface: str, peer: PeerConfig) -> tuple[str | None, str | None]:
    """Give the running server ``peer``'s policy."""
    return _request_running(cfg, iface, {"op": "set_policy", "public_key": peer.public_key,
                                         "policy": peer.policy.to_wire()})


def pull_peer(cfg: Config, iface: str, peer: PeerConfig) -> tuple[str | None, str | None]:
    """Remove ``peer`` from the running server."""
    return _request_running(cfg, iface, {"op": "remove_peer", "public_key": peer.public_key})
