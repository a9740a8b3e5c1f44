"""The WireGuard cross-platform UAPI socket (``/var/run/wireguard/IFACE.sock``) for a Device.

The text protocol is parsed and formatted by :mod:`vpn.uapi`; this module serves it on an
asyncio UNIX server and applies ``set=1`` requests to the :class:`~vpn.device.Device`, so that
``wg show``, ``wg set``, ``wg setconf`` and ``wg syncconf`` work against pyvpn.  A socket path
in use by a live process is refused; a stale one is replaced.  The path is global, not per
network namespace, as for wireguard-go.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from . import uapi
from .util import socket_is_live as _live

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger("pyvpn.uapi")

WG_RUN_DIR = Path(os.environ.get("WG_RUN_DIR", "/var/run/wireguard"))
MAX_REQUEST = 1 << 20


class UapiSocketInUse(Exception):
    pass


def uapi_path(iface: str) -> Path:
    return WG_RUN_DIR / f"{iface}.sock"


def bind_uapi_socket(iface: str) -> socket.socket:
    """Create and listen on the UAPI socket (mode 0600 in a 0755 directory, as wireguard-go)."""
    path = uapi_path(iface)
    WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _live(path):
            raise UapiSocketInUse(f"UAPI socket {path} is in use by a running process")
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UapiSocketInUse(f"{path} exists and is not a socket")
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        s.bind(str(path))
    finally:
        os.umask(old)
    s.listen(16)
    s.setblocking(False)
    return s


class UapiServer:
    def __init__(self, device: Device, sock: socket.socket | None = None) -> None:
        self.device = device
        self.path = uapi_path(device.name)
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self._sock is None:
            self._sock = bind_uapi_socket(self.device.name)
        self._server = await asyncio.start_unix_server(self._handle, sock=self._sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Remove the socket file unless another live instance has replaced it meanwhile.
        with contextlib.suppress(OSError):
            if not _live(self.path):
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                op_line = await reader.readline()
                if not op_line:
                    break
                lines: list[str] = []
                total = 0
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    total += len(line)
                    if total > MAX_REQUEST:
                        writer.write(uapi.format_errno(errno.ENOMEM).encode())
                        return
                    text = line.decode("utf-8", "replace").rstrip("\n")
                    if text == "":
                        break
                    lines.append(text)
                op = op_line.decode("utf-8", "replace").strip()
                writer.write(self.dispatch(op, lines).encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Shutdown with a client still connected.  Ending normally, not cancelled: Python
            # 3.11's stream callback calls task.exception() on its handler task, which raises for
            # a cancelled task and logs a traceback ("Exception in callback ...").
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def dispatch(self, op: str, lines: list[str]) -> str:
        try:
            if op == "get=1":
                return uapi.format_get(device_state(self.device))
            if op == "set=1":
                req = uapi.parse_set(lines)
                apply_set(self.device, req)
                return "errno=0\n\n"
            return uapi.format_errno(errno.EINVAL)
        except uapi.UapiError as e:
            log.warning("%s: UAPI request refused: %s", self.device.name, e)
            return f"errno={e.errno}\n\n"


def device_state(device: Device) -> uapi.DeviceState:
    peers = []
    for p in device.peers.values():
        t = p.tunnel
        wall = t.last_handshake_wall
        peers.append(uapi.PeerState(
            public_key=t.public_key,
            preshared_key=t.preshared_key,
            endpoint=t.endpoint,
            persistent_keepalive=t.persistent_keepalive,
            allowed_ips=list(p.allowed_ips),
            last_handshake_time_sec=int(wall),
            last_handshake_time_nsec=int((wall - int(wall)) * 1e9),
            rx_bytes=t.rx_bytes,
            tx_bytes=t.tx_bytes,
        ))
    core = device.core
    return uapi.DeviceState(
        private_key=core.private_key if core.has_private_key else None,
        listen_port=device.listen_port,
        fwmark=device.fwmark,
        peers=peers,
    )


def apply_set(device: Device, req: uapi.SetRequest) -> None:
    """Apply one ``set=1`` request in order, as wireguard-go's IpcSetOperation does."""
    if req.private_key is not None:
        device.set_private_key(req.private_key)
    if req.listen_port is not None and req.listen_port != device.listen_port:
        try:
            device.rebind(req.listen_port)
        except OSError as e:
            raise uapi.UapiError(errno.EADDRINUSE, f"cannot listen on port {req.listen_port}: {e}") from None
    if req.fwmark is not None:
        device.set_fwmark(req.fwmark)
    # pyvpn's per-client policy is not part of the UAPI: a peer that `wg setconf` removes and adds
    # again keeps it (a disabled client stays disabled).
    kept = {}
    if req.replace_peers:
        kept = {pub: p.policy for pub, p in device.peers.items()}
        for pub in list(device.peers):
            device.remove_peer(pub)
    for ps in req.peers:
        existing = device.peers.get(ps.public_key)
        if ps.remove:
            device.remove_peer(ps.public_key)
            continue
        if existing is None:
            if ps.update_only:
                continue
            if device.core.has_private_key and ps.public_key == device.core.public_key:
                continue  # wireguard-go ignores a peer with our own public key
            existing = device.add_peer(ps.public_key, policy=kept.get(ps.public_key))
        t = existing.tunnel
        if ps.preshared_key is not None:
            t.preshared_key = ps.preshared_key if any(ps.preshared_key) else None
        if ps.endpoint is not None:
            t.endpoint = ps.endpoint
            existing.config_endpoint = None  # set by hand: no longer the config's host name to look up
        if ps.replace_allowed_ips:
            device.set_allowed_ips(existing, [], replace=True)
        if ps.allowed_ips:
            device.set_allowed_ips(existing, [str(a) for a in ps.allowed_ips], replace=False)
        if ps.persistent_keepalive is not None and ps.persistent_keepalive != t.persistent_keepalive:
            device.set_persistent_keepalive(existing, ps.persistent_keepalive)
