"""pyvpn at both ends: ``pyvpn server CONFIG`` in one namespace and ``pyvpn client CONFIG`` in the other.

L3 (:class:`PyvpnL3Path`):

1. Keys come from ``wg genkey`` / ``wg pubkey``; the configs are standard wg-quick files
   (``[Interface] PrivateKey/ListenPort/Address``, ``[Peer] PublicKey/AllowedIPs/Endpoint/
   PersistentKeepalive``).  pyvpn names the interface after the file's stem, and the UAPI socket is
   global, so the files get random names (``nbp<6 hex>.conf``).
2. Each daemon runs inside its namespace (``ip netns exec``), so its tun and its UDP socket are both
   there; pyvpn adds the addresses and routes itself.
3. The path is ready when a ping crosses the tunnel.

The command is ``<python> -m vpn.cli`` with the repository on ``PYTHONPATH`` by default (the same Python
that runs the benchmark), or whatever ``--pyvpn-cmd`` says (e.g. ``pyvpn`` from a venv).

L2 (:class:`PyvpnL2Path`) is a slot: pyvpn's tap + VXLAN mode is not wired in yet, and the path reports
"not available".  To wire it, implement ``setup`` like the L3 one with the L2 config (a tap in each
namespace, addresses on the taps or on bridges over them) and return ``unavailable() -> None``.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .base import BenchPath, Endpoints, wait_reachable
from .lab import Lab, LabError, Netns, poll, sh
from .wggo import free_ifname, remove_stale_socket, wg_keypair, write_private

REPO_ROOT = Path(__file__).resolve().parents[2]
PYVPN_PORT = 51820
PYVPN_MTU = 1420  # pyvpn's default (like wg-quick's)
START_TIMEOUT = 20.0  # Python start-up + handshake on a loaded 2-core machine


def default_command() -> list[str]:
    """``<this python> -m vpn.cli``: runs the checkout the benchmark belongs to."""
    return [sys.executable, "-m", "vpn.cli"]


def server_config(*, private_key: str, address: Sequence[str], client_public: str, client_ips: Sequence[str],
                  listen_port: int = PYVPN_PORT) -> str:
    """wg-quick text for the server end."""
    return "\n".join([
        "[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {listen_port}",
        f"Address = {', '.join(address)}", "",
        "[Peer]", f"PublicKey = {client_public}", f"AllowedIPs = {', '.join(client_ips)}", "",
    ])


def client_config(*, private_key: str, address: Sequence[str], server_public: str, server_nets: Sequence[str],
                  endpoint: str, keepalive: int = 25) -> str:
    """wg-quick text for the client end."""
    return "\n".join([
        "[Interface]", f"PrivateKey = {private_key}", f"Address = {', '.join(address)}", "",
        "[Peer]", f"PublicKey = {server_public}", f"AllowedIPs = {', '.join(server_nets)}",
        f"Endpoint = {endpoint}", f"PersistentKeepalive = {keepalive}", "",
    ])


class PyvpnL3Path(BenchPath):
    key = "pyvpn"
    title = "pyvpn L3"

    def __init__(self, command: Sequence[str] | None = None) -> None:
        super().__init__()
        self.command = list(command) if command else default_command()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if x)
        env.setdefault("PYVPN_LOG_LEVEL", "warning")
        return env

    def unavailable(self) -> str | None:
        r = sh([*self.command, "--help"], check=False, timeout=30.0, env=self._env(), cwd=str(REPO_ROOT))
        if r.returncode != 0:
            why = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [f"exit {r.returncode}"]
            return f"{shlex.join(self.command)} --help failed: {why[0]}"
        if " server " not in r.stdout or " client " not in r.stdout:
            return f"{shlex.join(self.command)} has no server/client commands"
        return None

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        (spriv, spub), (cpriv, cpub) = wg_keypair(), wg_keypair()
        v4, v6 = f"198.19.{slot}", f"fd00:{slot:x}:"
        sname, cname = free_ifname("nbp"), free_ifname("nbp")
        for name in (sname, cname):
            lab.on_close(functools.partial(remove_stale_socket, name))
        sconf, cconf = lab.dir / f"{sname}.conf", lab.dir / f"{cname}.conf"
        write_private(sconf, server_config(private_key=spriv, address=[f"{v4}.2/24", f"{v6}:2/64"],
                                           client_public=cpub, client_ips=[f"{v4}.1/32", f"{v6}:1/128"]))
        write_private(cconf, client_config(private_key=cpriv, address=[f"{v4}.1/24", f"{v6}:1/64"],
                                           server_public=spub, server_nets=[f"{v4}.0/24", f"{v6}:/64"],
                                           endpoint=f"{pair.server_ip}:{PYVPN_PORT}"))
        env = self._env()
        for ns, role, conf, ifname in ((pair.server, "server", sconf, sname), (pair.client, "client", cconf, cname)):
            log = lab.dir / f"pyvpn-{slot}-{role}.log"
            proc = lab.popen(ns, [*self.command, role, str(conf)], log=log, env=env, cwd=str(REPO_ROOT))
            self.procs.append(proc)
            self.logs.append(log)

            def link_up(p: subprocess.Popen[bytes] = proc, n: str = ifname, where: Netns = ns) -> bool:
                if p.poll() is not None:
                    return True
                return has_link(where, n)

            poll(link_up, START_TIMEOUT, interval=0.1)
            if (dead := self.alive()) is not None:
                raise LabError(f"pyvpn {role}: {dead}")
            if not has_link(ns, ifname):
                raise LabError(f"pyvpn {role} made no interface {ifname} within {START_TIMEOUT:g}s")
        server_addr = f"{v4}.2"
        try:
            wait_reachable(pair.client, server_addr, timeout=START_TIMEOUT, what="pyvpn")
        except LabError as e:
            raise LabError(f"{e}; {self.alive() or 'daemons still running'}") from None
        return Endpoints(pair.client, pair.server, server_addr, PYVPN_MTU, offloads,
                         f"{shlex.join(self.command)} server/client, udp {PYVPN_PORT}, wg-quick configs")

    def version(self) -> str:
        rev = sh(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], check=False, timeout=5.0)
        from importlib.metadata import PackageNotFoundError, version

        try:
            dist = f"pyvpn-userspace {version('pyvpn-userspace')}"
        except PackageNotFoundError:
            dist = "pyvpn (source tree)"
        return f"{dist}, git {rev.stdout.strip() or '?'}"


def has_link(ns: Netns, ifname: str) -> bool:
    """True when ``ifname`` exists in namespace ``ns``."""
    return ns.run(["ip", "link", "show", "dev", ifname], check=False, timeout=5.0).returncode == 0


class PyvpnL2Path(BenchPath):
    """Hook for pyvpn's L2 mode (tap + VXLAN inside the tunnel); reported as "not available" for now."""

    key = "pyvpn-l2"
    title = "pyvpn L2"

    def __init__(self, command: Sequence[str] | None = None) -> None:
        super().__init__()
        self.command = list(command) if command else default_command()

    def unavailable(self) -> str | None:
        return "pyvpn L2 (tap + VXLAN) is not wired into the benchmark yet"

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        raise LabError(self.unavailable() or "not implemented")

    def version(self) -> str:
        return PyvpnL3Path(self.command).version()
