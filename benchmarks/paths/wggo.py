"""wireguard-go (Debian's package) at both ends, configured with ``wg`` and ``ip``.

1. Each end runs ``wireguard-go -f <if>`` in its namespace.  The UAPI socket
   ``/var/run/wireguard/<if>.sock`` is global, so interface names are random (``nbw<6 hex>``).
2. Once the socket exists, ``wg set`` gives the private key, listen port and the peer (endpoint on the
   veth, allowed IPs = the other end's tunnel addresses), and ``ip`` adds addresses and MTU 1420.
3. The client keeps the tunnel alive with a 25 s persistent keepalive; the path is ready when a ping
   crosses it.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import socket
import subprocess
from pathlib import Path

from .base import BenchPath, Endpoints, wait_reachable
from .lab import Lab, LabError, have, poll, sh

WG_RUN_DIR = Path("/var/run/wireguard")
WG_PORT = 51820
WG_MTU = 1420
START_TIMEOUT = 10.0


def wg_keypair() -> tuple[str, str]:
    """``(private, public)`` base64 keys from ``wg genkey`` / ``wg pubkey``."""
    private = sh(["wg", "genkey"]).stdout.strip()
    public = sh(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return private, public


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new 0600 file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def free_ifname(prefix: str) -> str:
    """``<prefix><6 hex>`` whose UAPI socket does not exist (prefix at most 9 characters)."""
    for _ in range(100):
        name = prefix + secrets.token_hex(3)
        if not (WG_RUN_DIR / f"{name}.sock").exists():
            return name
    raise LabError("no free interface name")


def remove_stale_socket(ifname: str) -> None:
    """Unlink ``/var/run/wireguard/<ifname>.sock`` if its daemon was killed before removing it."""
    try:
        (WG_RUN_DIR / f"{ifname}.sock").unlink()
    except OSError:
        pass


def socket_live(path: Path) -> bool:
    """True when a process accepts connections on the UNIX socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def sweep_stale_sockets() -> list[str]:
    """Unlink UAPI sockets of netbench interfaces (``nbw``/``nbp`` + 6 hex) that nothing listens on."""
    removed = []
    for sock in WG_RUN_DIR.glob("nb[wp]*.sock"):
        if re.fullmatch(r"nb[wp][0-9a-f]{6}\.sock", sock.name) and not socket_live(sock):
            remove_stale_socket(sock.name.removesuffix(".sock"))
            removed.append(str(sock))
    return removed


def _started_or_dead(proc: subprocess.Popen[bytes], sock: Path) -> bool:
    return proc.poll() is not None or sock.exists()


class WireguardGoPath(BenchPath):
    key = "wireguard-go"
    title = "wireguard-go"

    def unavailable(self) -> str | None:
        missing = [t for t in ("wireguard-go", "wg") if not have(t)]
        return f"not installed: {', '.join(missing)} (run benchmarks/setup.sh)" if missing else None

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        keys = [wg_keypair(), wg_keypair()]
        ends = [(pair.client, pair.server_ip, 1, 2), (pair.server, pair.client_ip, 2, 1)]
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        for i, (ns, peer_ip, me, other) in enumerate(ends):
            ifname = free_ifname("nbw")
            lab.on_close(functools.partial(remove_stale_socket, ifname))
            log = lab.dir / f"wireguard-go-{slot}-{me}.log"
            proc = lab.popen(ns, ["wireguard-go", "-f", ifname], log=log, env=env)
            self.procs.append(proc)
            self.logs.append(log)
            sock = WG_RUN_DIR / f"{ifname}.sock"
            poll(functools.partial(_started_or_dead, proc, sock), START_TIMEOUT)
            if not sock.exists():
                raise LabError(f"wireguard-go made no UAPI socket within {START_TIMEOUT:g}s: {self.alive()}")
            keyfile = lab.dir / f"wg-{slot}-{me}.key"
            write_private(keyfile, keys[i][0] + "\n")
            ns.run(["wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(WG_PORT),
                    "peer", keys[1 - i][1], "endpoint", f"{peer_ip}:{WG_PORT}",
                    "allowed-ips", f"198.19.{slot}.{other}/32,fd00:{slot:x}::{other}/128",
                    *(["persistent-keepalive", "25"] if me == 1 else [])])
            ns.run(["ip", "addr", "add", f"198.19.{slot}.{me}/24", "dev", ifname])
            ns.run(["ip", "-6", "addr", "add", f"fd00:{slot:x}::{me}/64", "dev", ifname, "nodad"])
            ns.run(["ip", "link", "set", ifname, "mtu", str(WG_MTU), "up"])
        server_addr = f"198.19.{slot}.2"
        wait_reachable(pair.client, server_addr, timeout=15.0, what="wireguard-go")
        return Endpoints(pair.client, pair.server, server_addr, WG_MTU, offloads,
                         f"wireguard-go, udp {WG_PORT}, mtu {WG_MTU}")

    def version(self) -> str:
        out = sh(["wireguard-go", "--version"], check=False).stdout.strip().splitlines()[:1]
        wg = sh(["wg", "--version"], check=False).stdout.strip().split(" - ")[:1]
        return "; ".join(x for x in (*out, *wg) if x)
