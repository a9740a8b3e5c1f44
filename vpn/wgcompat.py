"""``pyvpn-wg [-f] IFACE``: pyvpn as a WireGuard userspace implementation (wireguard.com/xplatform).

It behaves like ``wireguard-go``, so ``WG_QUICK_USERSPACE_IMPLEMENTATION=pyvpn-wg wg-quick up
FILE`` works and ``wg`` configures it:

1. Create the tun device ``IFACE`` (MTU 1420) and a UDP socket on a random port, then the UAPI
   socket ``/var/run/wireguard/IFACE.sock`` (a live one is refused, a stale one replaced).
2. Without ``-f`` (and without ``WG_PROCESS_FOREGROUND=1``) fork: the parent returns only now,
   when the interface and the socket both exist, because ``wg setconf`` follows at once.
3. Serve ``get=1``/``set=1`` until SIGINT/SIGTERM, the interface being deleted (``ip link del``,
   as ``wg-quick down`` does) or the socket file being removed; then remove the socket.

``LOG_LEVEL`` (debug, verbose, error, silent) sets the log level, as for wireguard-go.
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

from tunnel import netconf
from tunnel.tun import TunError, open_tun
from tunnel.udp import UdpSocket

from .config import check_ifname
from .daemon import DEFAULT_MTU, run_loop, wait_any
from .datapath import set_txqueuelen
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
    logging.basicConfig(level=_log_level(), stream=sys.stderr,
                        format=f"%(levelname)s: ({name}) %(asctime)s %(message)s")
    try:
        check_ifname(name)
    except ValueError as e:
        print(f"pyvpn-wg: {e}", file=sys.stderr)
        return 1
    try:
        # The same data path as `pyvpn server`: vnet_hdr for GRO writes (falls back when refused).
        tun = open_tun(name, mtu=DEFAULT_MTU, vnet_hdr=os.environ.get("PYVPN_OFFLOAD", "auto") != "off")
        set_txqueuelen(tun.name)
    except TunError as e:
        print(f"pyvpn-wg: failed to create TUN device {name}: {e}", file=sys.stderr)
        return 1
    try:
        udp = UdpSocket.bind(None, 0, family="dual")
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
        return int(run_loop(_serve(name, tun, udp, uapi_sock)))
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _owned(uapi_sock):
                Path(uapi_sock.getsockname()).unlink()


def _owned(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockname())
    except OSError:
        return False


async def _serve(name: str, tun: object, udp: UdpSocket, uapi_sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    device = Device(tun=tun, udp=udp, private_key=None, mtu=DEFAULT_MTU)  # type: ignore[arg-type]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    device.start(loop)
    server = UapiServer(device, sock=uapi_sock)
    await server.start()
    path = server.path
    ino = os.stat(path).st_ino

    def check() -> None:
        try:
            if not netconf.link_exists(name):
                log.info("interface deleted; exiting")
                stop.set()
                return
        except Exception:  # noqa: BLE001, S110  # a netlink hiccup: check again next second
            pass
        try:
            if os.stat(path).st_ino != ino:
                stop.set()
        except FileNotFoundError:
            log.info("UAPI socket removed; exiting")
            stop.set()

    device.on_housekeeping.append(check)
    log.info("device started")
    try:
        await wait_any(stop, device.stopped)
    finally:
        await server.close()
        device.close()
    log.info("device closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
