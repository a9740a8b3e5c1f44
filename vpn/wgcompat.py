"""``pyvpn-wg [-f] IFACE``: pyvpn as a WireGuard userspace implementation (wireguard.com/xplatform).

It behaves like ``wireguard-go``, so ``WG_QUICK_USERSPACE_IMPLEMENTATION=pyvpn-wg wg-quick up
FILE`` works and ``wg`` configures it:

1. Create the tun device ``IFACE`` (MTU 1420) and a UDP socket on a random port, then the UAPI
   socket ``/var/run/wireguard/IFACE.sock`` (a live one is refused, a stale one replaced).
2. Without ``-f`` (and without ``WG_PROCESS_FOREGROUND=1``) fork: the parent returns only now,
   when the interface and the socket both exist, because ``wg setconf`` follows at once.
3. Serve ``get=1``/``set=1`` (and pyvpn's control socket, for ``pyvpn show``) until SIGINT/SIGTERM,
   the interface being deleted (``ip link del``, as ``wg-quick down`` does) or the socket file being
   removed; then remove the sockets.  Moving the interface to another network namespace (``ip link
   set IFACE netns NS``, WireGuard's namespace integration) is not a deletion: the tun fd is asked,
   not the name.

``LOG_LEVEL`` (debug, verbose, error, silent) sets the log level, as for wireguard-go;
``PYVPN_OFFLOAD=off`` switches every offload off (tun vnet_hdr, UDP GSO and GRO).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from tunnel.tun import TunError, open_tun, set_txqueuelen
from tunnel.udp import UdpSocket

from . import OUR_LOGGERS
from .config import check_ifname
from .control import ControlError, ControlServer
from .daemon import DEFAULT_MTU, interface_alive, run_loop, wait_any
from .device import Device
from .uapi_server import UapiServer, UapiSocketInUse, bind_uapi_socket

log = logging.getLogger("pyvpn")

USAGE = "usage: pyvpn-wg [-f/--foreground] INTERFACE-NAME"


def _log_level() -> int:
    level = os.environ.get("LOG_LEVEL", "error").lower()
    return {"debug": logging.DEBUG, "verbose": logging.INFO, "info": logging.INFO, "error": logging.ERROR,
            "silent": logging.CRITICAL + 10}.get(level, logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    foreground = os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    if args and args[0] in ("-f", "--foreground"):
        foreground = True
        args = args[1:]
    if len(args) != 1 or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    name = args[0]
    level = _log_level()
    # pyvpn's loggers at LOG_LEVEL; libraries (pyroute2 logs every netlink message at DEBUG) at INFO or above.
    logging.basicConfig(level=max(level, logging.INFO), stream=sys.stderr,
                        format=f"%(levelname)s: ({name}) %(asctime)s %(message)s")
    for logger in OUR_LOGGERS:
        logging.getLogger(logger).setLevel(level)
    try:
        check_ifname(name)
    except ValueError as e:
        print(f"pyvpn-wg: {e}", file=sys.stderr)
        return 1
    offload = os.environ.get("PYVPN_OFFLOAD", "auto") != "off"  # off: no tun vnet_hdr, no UDP GSO/GRO
    try:
        # The same data path as `pyvpn server`: vnet_hdr for GRO writes (falls back when refused).
        tun = open_tun(name, mtu=DEFAULT_MTU, vnet_hdr=offload)
        set_txqueuelen(tun.name)
    except TunError as e:
        print(f"pyvpn-wg: failed to create TUN device {name}: {e}", file=sys.stderr)
        return 1
    try:
        udp = UdpSocket.bind(None, 0, family="dual", gso=offload, gro=offload)
        uapi_sock = bind_uapi_socket(name)
    except (OSError, UapiSocketInUse) as e:
        tun.close()
        print(f"pyvpn-wg: {e}", file=sys.stderr)
        return 1
    if not foreground:
        pid = os.fork()
        if pid:
            # The parent: interface and socket exist; wg setconf may follow at once.
            return 0
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    try:
        return int(run_loop(_serve(name, tun, udp, uapi_sock, offload=offload)))
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _owned(uapi_sock):
                Path(uapi_sock.getsockname()).unlink()


async def _control_server(device: Device) -> ControlServer | None:
    """pyvpn's control socket, so that ``pyvpn show`` lists this interface too (None if it cannot start)."""
    control = ControlServer(device, {"mode": "l3", "role": "pyvpn-wg", "offloads": sorted(device.offloads())})
    try:
        await control.start()
    except (OSError, ControlError) as e:
        log.warning("no control socket for `pyvpn show`: %s", e)
        return None
    return control


def _owned(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockname())
    except OSError:
        return False


async def _serve(name: str, tun: object, udp: UdpSocket, uapi_sock: socket.socket, *, offload: bool) -> int:
    loop = asyncio.get_running_loop()
    device = Device(tun=tun, udp=udp, private_key=None, mtu=DEFAULT_MTU,  # type: ignore[arg-type]
                    udp_offload=offload)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    device.start(loop)
    server = UapiServer(device, sock=uapi_sock)
    await server.start()
    control = await _control_server(device)
    path = server.path
    ino = os.stat(path).st_ino

    def check() -> None:
        if not interface_alive(tun, name):
            log.info("interface deleted; exiting")
            stop.set()
            return
        try:
            if os.stat(path).st_ino != ino:
                log.info("UAPI socket replaced by another process; exiting")
                stop.set()
        except FileNotFoundError:
            log.info("UAPI socket removed; exiting")
            stop.set()

    device.on_housekeeping.append(check)
    log.info("device started")
    try:
        await wait_any(stop, device.stopped)
    finally:
        if control is not None:
            await control.close()
        await server.close()
        device.close()
    log.info("device closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
