"""pyvpn's local control socket: msgpack over a UNIX stream socket, root-only.

It lives at ``/var/run/pyvpn/IFACE.sock`` (mode 0600 in a 0700 directory), beside the
WireGuard UAPI socket at ``/var/run/wireguard/IFACE.sock``.  Each request and reply is one
msgpack map behind a 4-byte big-endian length.  Requests:

- ``{"op": "show"}`` → the device snapshot (``Device.snapshot()``);
- ``{"op": "add_peer", "public_key": bytes, "allowed_ips": [...], "preshared_key": bytes|None,
  "name": str|None, "persistent_keepalive": int, "policy": map|None}`` → ``{"ok": True}``;
- ``{"op": "remove_peer", "public_key": bytes}`` → ``{"ok": True}``;
- ``{"op": "set_policy", "public_key": bytes, "policy": map}`` → ``{"ok": True}``: a client's policy
  (:meth:`vpn.policy.ClientPolicy.to_wire`: ``allow``/``deny`` rule texts, ``rate_limit`` bits/s,
  ``expires`` UNIX seconds, ``disabled``), applied at once to that peer alone.

Errors come back as ``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from .policy import ClientPolicy
from .util import socket_is_live

if TYPE_CHECKING:
    from .device import Device

CONTROL_DIR = Path(os.environ.get("PYVPN_RUN_DIR", "/var/run/pyvpn"))
MAX_MESSAGE = 1 << 24
_LEN = struct.Struct(">I")


class ControlError(Exception):
    pass


def socket_path(iface: str) -> Path:
    return CONTROL_DIR / f"{iface}.sock"


def list_interfaces() -> list[str]:
    """The interfaces whose control socket answers (sorted).

    :raises ControlError: the socket directory cannot be read (not root): saying "none run" would be wrong.
    """
    if not CONTROL_DIR.is_dir():
        return []
    if not os.access(CONTROL_DIR, os.R_OK | os.X_OK):
        raise ControlError(f"permission denied on {CONTROL_DIR}: run as root (sudo pyvpn ...)")
    return sorted(p.stem for p in CONTROL_DIR.glob("*.sock") if socket_is_live(p))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ControlError("control socket closed the connection")
        buf += chunk
    return bytes(buf)


def request(iface: str, req: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    path = socket_path(iface)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no pyvpn interface {iface!r} is running (no {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as root") from None
        except OSError as e:
            raise ControlError(f"cannot reach {path}: {e.strerror}") from None
        body = msgpack.packb(req, use_bin_type=True)
        s.sendall(_LEN.pack(len(body)) + body)
        (n,) = _LEN.unpack(_recv_exact(s, 4))
        if n > MAX_MESSAGE:
            raise ControlError("control reply too large")
        reply = msgpack.unpackb(_recv_exact(s, n), raw=False, strict_map_key=False)
    except TimeoutError:
        raise ControlError(f"{path} did not answer in {timeout:.0f}s") from None
    finally:
        s.close()
    if not isinstance(reply, dict):
        raise ControlError("malformed control reply")
    if "error" in reply:
        raise ControlError(str(reply["error"]))
    return reply


def query(iface: str) -> dict[str, Any]:
    return request(iface, {"op": "show"})


class ControlServer:
    """Serves the control protocol for one device on the running loop."""

    def __init__(self, device: Device, extra: dict[str, Any] | None = None) -> None:
        self.device = device
        self.extra = extra if extra is not None else {}
        self.path = socket_path(device.name)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        CONTROL_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            if socket_is_live(self.path):
                raise ControlError(f"{self.path} is in use by a running pyvpn")
            self.path.unlink()
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (n,) = _LEN.unpack(await reader.readexactly(4))
            if n > MAX_MESSAGE:
                return
            req = msgpack.unpackb(await reader.readexactly(n), raw=False, strict_map_key=False)
            try:
                reply = self.dispatch(req)
            except (ValueError, KeyError, TypeError) as e:
                reply = {"error": str(e)}
            body = msgpack.packb(reply, use_bin_type=True)
            writer.write(_LEN.pack(len(body)) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, msgpack.UnpackException, ValueError):
            pass
        except asyncio.CancelledError:
            # Shutdown with a client still connected.  Ending normally, not cancelled: Python
            # 3.11's stream callback calls task.exception() on its handler task, which raises for
            # a cancelled task and logs a traceback ("Exception in callback ...").
            pass
        finally:
            writer.close()

    def dispatch(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            raise TypeError("request must be a map")
        op = req.get("op")
        dev = self.device
        if op == "show":
            snap = dev.snapshot()
            snap.update(self.extra)
            return snap
        if op == "add_peer":
            pub = req["public_key"]
            policy = ClientPolicy.from_wire(req.get("policy"))
            if pub in dev.peers:
                dev.remove_peer(pub)
            dev.add_peer(pub, preshared_key=req.get("preshared_key"), allowed_ips=req.get("allowed_ips", []),
                         persistent_keepalive=int(req.get("persistent_keepalive", 0)), name=req.get("name"),
                         policy=policy)
            return {"ok": True}
        if op == "set_policy":
            peer = dev.peers.get(req["public_key"])
            if peer is None:
                raise ValueError("no such peer on the running server")
            dev.set_policy(peer, ClientPolicy.from_wire(req.get("policy")))
            return {"ok": True}
        if op == "remove_peer":
            dev.remove_peer(req["public_key"])
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")
