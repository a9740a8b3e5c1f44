"""wireguard-go at both ends, configured with ``wg`` and ``ip``: two paths, one per Debian release.

:class:`WireguardGoPath` (``wireguard-go``) runs the installed package, bookworm's 0.0.20220316.
:class:`WireguardGoTrixiePath` (``wireguard-go-trixie``) runs trixie's 0.0.20231211 (TUN TSO/GRO, UDP
GSO/GRO), unpacked by :mod:`.trixie` into ``benchmarks/.cache/trixie`` and never installed.  Both are set up
the same way:

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
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from vpn.testlab.files import write_private
from vpn.testlab.netns import LabError, Netns, sh, wait_for
from vpn.util import socket_is_live

from . import trixie
from .base import BenchPath, Endpoints, address_link, first_line
from .lab import Lab

WG_RUN_DIR = Path("/var/run/wireguard")
WG_PORT = 51820
WG_MTU = 1420
START_TIMEOUT = 10.0


def wg_keypair() -> tuple[str, str]:
    """``(private, public)`` base64 keys from ``wg genkey`` / ``wg pubkey``."""
    private = sh(["wg", "genkey"]).stdout.strip()
    public = sh(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return private, public


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


def sweep_stale_sockets() -> list[str]:
    """Unlink UAPI sockets of netbench interfaces (``nbw``/``nbp`` + 6 hex) that nothing listens on."""
    removed = []
    for sock in WG_RUN_DIR.glob("nb[wp]*.sock"):
        if re.fullmatch(r"nb[wp][0-9a-f]{6}\.sock", sock.name) and not socket_is_live(sock):
            remove_stale_socket(sock.name.removesuffix(".sock"))
            removed.append(str(sock))
    return removed


def tun_tso(ns: Netns, ifname: str) -> str:
    """``on``/``off`` from ``ethtool -k``'s ``tcp-segmentation-offload`` line (whether the daemon enabled TUN
    offloads: trixie's wireguard-go does, bookworm's does not), ``?`` when ethtool cannot say."""
    r = ns.run(["ethtool", "-k", ifname], check=False, timeout=5.0)
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "tcp-segmentation-offload":
            return value.split()[0] if value.split() else "?"
    return "?"


def _started_or_dead(proc: subprocess.Popen[bytes], sock: Path) -> bool:
    return proc.poll() is not None or sock.exists()


class WireguardGoPath(BenchPath):
    key = "wireguard-go"
    title = "wireguard-go (bookworm)"
    requires: ClassVar[tuple[str, ...]] = ("wireguard-go", "wg")

    def binary(self) -> str | None:
        """The wireguard-go executable this path runs, or None when there is none."""
        return shutil.which("wireguard-go")

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        binary = self.binary()
        if binary is None:
            raise LabError(f"{self.title}: no binary")
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        keys = [wg_keypair(), wg_keypair()]
        ends = [(pair.client, pair.server_ip, 1, 2), (pair.server, pair.client_ip, 2, 1)]
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        tso: list[str] = []
        for i, (ns, peer_ip, me, other) in enumerate(ends):
            ifname = free_ifname("nbw")
            lab.on_close(functools.partial(remove_stale_socket, ifname))
            log = lab.dir / f"{self.key}-{slot}-{me}.log"
            proc = lab.popen(ns, [binary, "-f", ifname], log=log, env=env)
            self.procs.append(proc)
            self.logs.append(log)
            sock = WG_RUN_DIR / f"{ifname}.sock"
            wait_for(functools.partial(_started_or_dead, proc, sock), START_TIMEOUT)
            if not sock.exists():
                raise LabError(f"wireguard-go made no UAPI socket within {START_TIMEOUT:g}s: {self.alive()}")
            keyfile = lab.dir / f"wg-{slot}-{me}.key"
            write_private(keyfile, keys[i][0] + "\n")
            ns.run(["wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(WG_PORT),
                    "peer", keys[1 - i][1], "endpoint", f"{peer_ip}:{WG_PORT}",
                    "allowed-ips", f"198.19.{slot}.{other}/32,fd00:{slot:x}::{other}/128",
                    *(["persistent-keepalive", "25"] if me == 1 else [])])
            address_link(ns, ifname, slot=slot, host=me, mtu=WG_MTU)
            tso.append(tun_tso(ns, ifname))
        server_addr = f"198.19.{slot}.2"
        self.wait_ready(pair.client, server_addr, timeout=15.0, what=self.title)
        return Endpoints(pair.client, pair.server, server_addr, WG_MTU, offloads,
                         f"{binary} -f, udp {WG_PORT}, mtu {WG_MTU}, tun TSO {'/'.join(tso)} (client/server)")

    def version(self) -> str:
        binary = self.binary()
        said = first_line([binary, "--version"]) if binary else ""
        pkg = first_line(["dpkg-query", "-W", "-f", "${Version}", "wireguard-go"])
        return "; ".join(x for x in (said, f"Debian package {pkg}" if pkg else "", _wg_version()) if x)


class WireguardGoTrixiePath(WireguardGoPath):
    """Debian trixie's wireguard-go 0.0.20231211, from ``benchmarks/.cache/trixie`` (see :mod:`.trixie`)."""

    key = "wireguard-go-trixie"
    title = "wireguard-go (trixie)"
    requires = ("wg",)  # the binary is checked above

    def binary(self) -> str | None:
        found = trixie.find_binary()
        return str(found) if found is not None else None

    def unavailable(self) -> str | None:
        found = trixie.find_binary()
        if found is None:
            return f"not fetched: no wireguard-go under {trixie.ROOT_DIR} (run benchmarks/setup.sh)"
        if trixie.binary_version(found) is None:
            return f"{found} --version does not run here"
        return super().unavailable()

    def version(self) -> str:
        found = trixie.find_binary()
        said = trixie.binary_version(found) if found is not None else None
        pkg = trixie.package_version()
        return "; ".join(x for x in (f"Debian trixie package {pkg or '?'}", f"binary says {said or '?'}",
                                     _wg_version()) if x)


def _wg_version() -> str:
    """``wireguard-tools v1.0.20210914`` (the ``wg`` that configures both wireguard-go paths)."""
    return first_line(["wg", "--version"]).split(" - ")[0]
