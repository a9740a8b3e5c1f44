"""Running an interface from a config file: `pyvpn server`, `pyvpn client` and `pyvpn-wg`.

Start-up, in wg-quick's order:

1. PreUp hooks; open the tun device (its name is the config's ``#pyvpn Name`` or the file's
   stem, as wg-quick does) and, with ``Namespace``, move it into that network namespace
   (the UDP socket stays here: WireGuard's namespace integration).
2. Addresses, MTU, link up, and a route per AllowedIPs prefix unless ``Table = off``; a /0
   gets wg-quick's policy routing (fwmark on our socket, a rule and a separate table) so the
   underlay keeps its own route.
3. Bind the UDP socket, build the :class:`~vpn.device.Device` and its peers, open the
   WireGuard UAPI socket and the control socket, run PostUp hooks.
4. Run until SIGINT/SIGTERM, the interface being deleted, or the UAPI socket being removed.
   Then PreDown, close everything (closing the tun removes the device and its routes),
   remove the rules, PostDown.  SIGHUP reloads the peers from the file (:mod:`vpn.reload`).

Before step 1, what an earlier run of the same interface left behind when it was killed
without cleanup (kill -9, a crash) is removed and logged: its socket files if nothing listens
on them, its nft tables, and the /0 policy rules of table 51820 if no route uses that table any
more (:meth:`Interface.clean_stale`).  A live instance of the interface is refused first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunnel import netconf
from tunnel.netconf import PolicyRule
from tunnel.tun import TunError, open_tun, set_txqueuelen
from tunnel.udp import UdpSocket

from .device import Device
from .endpoints import EndpointResolver, ResolveError, resolve
from .reload import Reloader
from .systemd import notify

log = logging.getLogger("pyvpn")

DEFAULT_MTU = 1420
DEFAULT_TABLE = 51820  # wg-quick's default table and fwmark for /0 routes
RULE_PRIORITY = 32764  # "not fwmark 51820 lookup 51820"; "lookup main suppress_prefixlen 0" one before it


class DaemonError(Exception):
    """A start-up failure with a message for the operator (no traceback)."""


def run_hooks(kind: str, commands: Iterable[str], iface: str) -> None:
    for cmd in commands:
        cmd = cmd.replace("%i", iface)
        log.info("%s: %s", kind, cmd)
        r = subprocess.run(["/bin/sh", "-c", cmd], check=False)
        if r.returncode != 0 and kind in ("PreUp", "PostUp"):
            raise DaemonError(f"{kind} command failed with exit code {r.returncode}: {cmd}")


def default_rules(family: int) -> tuple[PolicyRule, PolicyRule]:
    """wg-quick's two rules for a /0: every packet without our fwmark looks up table 51820 (the
    tunnel's default route), and the main table is used except for its default routes."""
    return (PolicyRule(family, RULE_PRIORITY, DEFAULT_TABLE, fwmark=DEFAULT_TABLE, invert=True),
            PolicyRule(family, RULE_PRIORITY - 1, netconf.RT_TABLE_MAIN, suppress_prefixlen=0))


class Interface:
    """The kernel-facing state of one running interface, undone by :meth:`teardown`."""

    def __init__(self, name: str, netns: str | None) -> None:
        self.name = name
        self.netns = netns
        self.rules: list[PolicyRule] = []
        self.nft_tables: list[str] = []  # "ip pyvpn-IFACE", "ip6 pyvpn-IFACE"
        self.fwmark = 0

    def configure(self, addresses: Iterable[str], mtu: int, routes: Iterable[str], table: str | None) -> None:
        ns = self.netns
        addresses = [str(a) for a in addresses]
        netconf.set_mtu(self.name, mtu, netns=ns)
        for a in addresses:
            netconf.add_address(self.name, a, netns=ns)
        netconf.set_up(self.name, netns=ns)
        table_id = _table_id(table)
        if table_id == -1:
            return
        routes = list(routes)
        for prefix in self.plain_routes(addresses, routes, table):
            netconf.add_route(self.name, prefix, table=table_id, netns=ns)
        if table_id is None:
            for net in sorted({ipaddress.ip_network(r, strict=False) for r in routes if _is_default(r)},
                              key=lambda n: n.version):
                self._add_default(net)
                self._add_firewall(net.version, [ipaddress.ip_interface(a) for a in addresses])

    @staticmethod
    def plain_routes(addresses: Iterable[str], routes: Iterable[str], table: str | None) -> list[str]:
        """The AllowedIPs prefixes that get an ordinary route (``ip route add PREFIX dev IFACE``),
        longest first: not those inside an address's own prefix, not a /0 in the main table (that
        is policy routing), none with ``Table = off``."""
        table_id = _table_id(table)
        if table_id == -1:
            return []
        own = [ipaddress.ip_interface(a).network for a in addresses]
        out = []
        for net in sorted({ipaddress.ip_network(r, strict=False) for r in routes}, key=lambda n: -n.prefixlen):
            if net.prefixlen == 0 and table_id is None:
                continue
            if any(net.version == o.version and net.subnet_of(o) for o in own):  # type: ignore[arg-type]
                continue  # already routed through the address's own prefix
            out.append(str(net))
        return out

    def update_routes(self, old: list[str], new: list[str], table: str | None) -> None:
        """Add the routes in ``new`` but not in ``old`` and remove the others (a reload), logging each."""
        table_id = _table_id(table)
        if table_id == -1:
            return
        changes = [(netconf.del_route, "remove", n) for n in old if n not in new]
        changes += [(netconf.add_route, "add", n) for n in new if n not in old]
        for op, verb, net in changes:
            try:
                op(self.name, net, table=table_id, netns=self.netns)
                log.info("%s: %s route to %s", self.name, "added a" if verb == "add" else "removed the", net)
            except OSError as e:
                log.warning("%s: could not %s the route to %s: %s", self.name, verb, net, e)

    def _add_default(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        """wg-quick's trick: default route in table 51820, used by every packet without our fwmark.

        Through netconf's runner: we are inside the running (uv)loop here, where pyroute2's
        synchronous API cannot run its own loop.
        """
        self.fwmark = DEFAULT_TABLE
        netconf.add_route(self.name, str(net), table=DEFAULT_TABLE, netns=self.netns)
        for rule in default_rules(socket.AF_INET if net.version == 4 else socket.AF_INET6):
            try:
                netconf.add_policy_rule(rule, netns=self.netns)
            except OSError as e:  # keep going without the rule
                log.warning("%s: could not add policy rule %s: %s", self.name, rule, e)
                continue
            self.rules.append(rule)

    def clean_stale(self) -> list[str]:
        """Remove what an earlier run of this interface left when it was killed without cleanup.

        Call it when the interface does not exist (so nothing live owns its state): the nft
        tables ``pyvpn-IFACE``, and per IP family the /0 rules of :func:`default_rules` when
        table 51820 holds no route any more (the tun that had them is gone; a live /0 interface
        in this namespace would still have its default route there).  Each removal is logged.

        :returns: what was removed, one description each.
        """
        removed = []
        if self.netns is None and shutil.which("nft") is not None:
            for pf in ("ip", "ip6"):
                table = f"pyvpn-{self.name}"
                r = subprocess.run(["nft", "delete", "table", pf, table], capture_output=True, check=False)
                if r.returncode == 0:
                    removed.append(f"nft table {pf} {table}")
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                if netconf.table_routes(DEFAULT_TABLE, family, netns=self.netns):
                    continue
                ours = default_rules(family)
                for rule in netconf.policy_rules(family, netns=self.netns):
                    if rule in ours:
                        netconf.del_policy_rule(rule, netns=self.netns)
                        removed.append(f"policy rule '{rule}'")
            except OSError as e:
                log.warning("%s: could not look for stale policy rules: %s", self.name, e)
        for what in removed:
            log.info("%s: removed the stale %s left by an earlier run", self.name, what)
        return removed

    def _add_firewall(self, version: int, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> None:
        """wg-quick's nft rules for a /0 (its ``add_default``), in table ``pyvpn-IFACE``.

        Replies from the peer arrive without our fwmark, so a strict reverse-path filter
        (``rp_filter=1``) would look their source up in table 51820, find the tunnel, and drop
        them.  Like wg-quick: remember the mark of our outgoing UDP flows in conntrack, restore it
        on their replies, and let the reverse-path lookup use it (``src_valid_mark=1``).  Also
        drop packets for our tunnel addresses that arrive on another interface.  Only without
        ``Namespace``: there our UDP socket is in another namespace and cannot loop.
        """
        if self.netns is not None:
            return
        if shutil.which("nft") is None:
            log.warning("%s: nft is not installed; replies from the peer may be dropped by a strict "
                        "reverse-path filter (rp_filter=1)", self.name)
            return
        pf = "ip" if version == 4 else "ip6"
        table = f"{pf} pyvpn-{self.name}"
        mark = DEFAULT_TABLE
        lines = [f"add table {table}", f"delete table {table}", f"add table {table}",
                 f"add chain {table} preraw {{ type filter hook prerouting priority -300; }}",
                 f"add chain {table} premangle {{ type filter hook prerouting priority -150; }}",
                 f"add chain {table} postmangle {{ type filter hook postrouting priority -150; }}"]
        for a in addresses:
            if a.version == version:
                lines.append(f'add rule {table} preraw iifname != "{self.name}" {pf} daddr {a.ip} '
                             "fib saddr type != local drop")
        lines += [f"add rule {table} postmangle meta l4proto udp mark {mark} ct mark set mark",
                  f"add rule {table} premangle meta l4proto udp meta mark set ct mark"]
        r = subprocess.run(["nft", "-f", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            log.warning("%s: could not add nft table %s: %s", self.name, table, r.stderr.strip())
            return
        self.nft_tables.append(table)
        if version == 4:
            try:
                Path("/proc/sys/net/ipv4/conf/all/src_valid_mark").write_text("1\n")
            except OSError as e:
                log.warning("%s: could not set net.ipv4.conf.all.src_valid_mark=1: %s", self.name, e)

    def teardown(self) -> None:
        for table in self.nft_tables:
            subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True, check=False)
        self.nft_tables = []
        for rule in self.rules:
            try:
                netconf.del_policy_rule(rule, netns=self.netns)
            except OSError as e:
                log.warning("%s: could not remove policy rule %s: %s", self.name, rule, e)
        self.rules = []


def _table_id(table: str | None) -> int | None:
    """``Table =``: None for the main table (auto, main, unset), -1 for ``off``, else the number."""
    if table is None or table.lower() in ("auto", "main"):
        return None
    if table.lower() == "off":
        return -1
    return int(table)


def _is_default(route: str) -> bool:
    return ipaddress.ip_network(route, strict=False).prefixlen == 0


def set_dns(iface: str, servers: list[str], search: list[str]) -> bool:
    if not servers and not search:
        return False
    if shutil.which("resolvconf") is None:
        log.warning("DNS is set in the config but resolvconf is not installed; leaving DNS alone")
        return False
    text = "".join(f"nameserver {s}\n" for s in servers)
    if search:
        text += f"search {' '.join(search)}\n"
    subprocess.run(["resolvconf", "-a", f"tun.{iface}", "-m", "0", "-x"], input=text.encode(), check=False)
    return True


def unset_dns(iface: str) -> None:
    if shutil.which("resolvconf") is not None:
        subprocess.run(["resolvconf", "-d", f"tun.{iface}", "-f"], check=False)


def run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop without installing its policy globally.

    pyroute2 (netlink) runs its own asyncio loop internally and needs a stock one: uvloop
    cannot open AF_NETLINK sockets ("invalid family 16"), so only our loop is uvloop.
    """
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; the stock loop works too
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


async def wait_any(*events: asyncio.Event | None) -> None:
    """Return as soon as one of ``events`` is set (None entries are ignored).

    The daemons wait for their stop event *or* ``Device.stopped``: the device stops on its own
    when the tun fails, e.g. with EBADFD after ``ip link del`` (``wg-quick down``), and then no
    housekeeping runs any more to notice the deletion.
    """
    waiters = [asyncio.ensure_future(e.wait()) for e in events if e is not None]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def interface_name(cfg: Any) -> str:
    """The interface name for ``cfg`` (:attr:`vpn.config.Config.interface_name`), validated as wg-quick does.

    :raises DaemonError: not a valid name (before any hook or nft script could see it).
    """
    from .config import ConfigError, check_ifname

    try:
        name = str(cfg.interface_name)
        return check_ifname(name)  # also for configs built without the parser
    except (ConfigError, ValueError) as e:
        raise DaemonError(str(e) if isinstance(e, ConfigError) else f"{cfg.path}: {e}") from None


def run_daemon(cfg: Any, *, role: str, netns: str | None = None, metrics: str | None = None,
               user: str | None = None) -> int:
    """Run the interface described by ``cfg`` until a signal; return the exit code."""
    return int(run_loop(_main(cfg, role=role, netns=netns, metrics=metrics, user=user)))


async def _main(cfg: Any, *, role: str, netns: str | None, metrics: str | None, user: str | None) -> int:
    from .config import check_permissions

    icfg = cfg.interface
    name = interface_name(cfg)
    # Until the reload handler is in place, a SIGHUP must not kill us half set up (no cleanup).
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, log.info, "%s: SIGHUP during start-up ignored", name)
    warning = check_permissions(cfg.path)
    if warning:
        log.warning("%s", warning)
    netns = netns or getattr(icfg, "namespace", None)
    metrics = metrics or getattr(icfg, "metrics", None)
    user = user or getattr(icfg, "user", None)
    if user:
        from .privileges import lookup_user

        lookup_user(user)  # an unknown user fails before anything is set up
    if role == "client" and not any(p.endpoint for p in cfg.peers):
        log.warning("%s: no peer has an Endpoint; this client can only answer, not connect", cfg.path)
    if role == "server" and not icfg.listen_port:
        log.warning("%s: no ListenPort; the server listens on a random port", cfg.path)
    mtu = icfg.mtu or DEFAULT_MTU
    claim_sockets(name)
    run_hooks("PreUp", icfg.pre_up, name)
    if netconf.link_exists(name, netns=netns) if netns else netconf.link_exists(name):
        raise DaemonError(f"interface {name} already exists{' in netns ' + netns if netns else ''}")
    try:
        offload = getattr(icfg, "offload", "auto")  # vnet_hdr + GRO writes (tunnel/tun.py) unless off
        tun = open_tun(name, mtu=mtu, vnet_hdr=offload != "off")
        if offload == "on" and not tun.vnet_hdr:
            log.warning("%s: Offload = on, but the tun refused: %s", name, tun.fallback_reason)
        set_txqueuelen(tun.name)  # before any move to another netns (tunnel.tun.TUN_TXQUEUELEN)
    except TunError as e:
        raise DaemonError(str(e)) from None
    iface = Interface(name, netns)
    device: Device | None = None
    l2: Any = None
    servers: list[Any] = []
    dns_set = False
    resolver: EndpointResolver | None = None
    reloader: Reloader | None = None
    helper: Any = None  # vpn.cleanup.CleanupHelper after a privilege drop
    try:
        if netns:
            netconf.move_to_netns(name, netns)
        iface.clean_stale()
        routes = [str(n) for p in cfg.peers for n in p.allowed_ips]
        iface.configure([str(a) for a in icfg.addresses], mtu, routes, icfg.table)
        fwmark = icfg.fwmark or iface.fwmark
        try:
            udp = UdpSocket.bind(None, icfg.listen_port or 0, family="dual", gso=offload != "off",
                                 gro=offload != "off")
        except OSError as e:
            raise DaemonError(f"cannot listen on UDP port {icfg.listen_port or 0}: {e.strerror or e}") from None
        forward = bool(getattr(icfg, "forward", False))
        if forward:
            log.warning("%s: Forward = on: packets between peers are forwarded inside the daemon (TTL "
                        "decremented), bypassing this host's firewall (FORWARD chain, conntrack, NAT) and "
                        "ip_forward", name)
        device = Device(tun=tun, udp=udp, private_key=icfg.private_key, mtu=mtu, forward=forward,
                        udp_offload=offload != "off")
        if fwmark:
            device.set_fwmark(fwmark)
        for p in cfg.peers:
            try:
                ep = await resolve(*p.endpoint) if p.endpoint else None
            except ResolveError as e:
                raise DaemonError(f"{cfg.path}:{p.line}: Endpoint: {e}") from None
            peer = device.add_peer(p.public_key, preshared_key=p.preshared_key,
                                   allowed_ips=[str(n) for n in p.allowed_ips], endpoint=ep,
                                   persistent_keepalive=p.persistent_keepalive or 0, name=getattr(p, "name", None),
                                   policy=p.policy)
            peer.config_endpoint = p.endpoint
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloader = Reloader(device, cfg, iface)
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        device.start(loop)
        resolver = EndpointResolver(device)
        resolver.attach()
        if getattr(cfg, "segments", ()):
            from .l2 import L2ConfigError, open_segments

            try:
                l2 = open_segments(cfg, device, role=role, netns=netns)
            except (L2ConfigError, OSError) as e:
                raise DaemonError(f"L2 segments: {e}") from None
        servers = await start_servers(device, role=role, metrics=metrics)
        dns_set = set_dns(name, [str(d) for d in getattr(icfg, "dns", [])], [])
        watch_interface(device, netns, stop)
        watch_udp_errors(device)
        run_hooks("PostUp", icfg.post_up, name)
        log.info("%s: %s up: listening on UDP port %d, %d peer(s)", name, role, device.listen_port,
                 len(device.peers))
        if user:
            helper = drop_root(user, name, netns, icfg, iface, dns_set)
        notify(f"READY=1\nSTATUS={role} {name} up, UDP port {device.listen_port}")  # Type=notify units
        await wait_any(stop, device.stopped)
        log.info("%s: shutting down", name)
        notify("STOPPING=1")
        if helper is not None:
            helper.step("predown")
        else:
            run_hooks("PreDown", icfg.pre_down, name)
        if getattr(reloader.cfg.interface, "save_config", False):
            if helper is not None or (user and os.geteuid() != 0):
                log.warning("%s: SaveConfig skipped: privileges were dropped (the configuration is root's)", name)
            else:
                save_config(reloader.cfg, device)
        return 0
    finally:
        if reloader is not None:
            reloader.close()
        if resolver is not None:
            resolver.close()
        for s in reversed(servers):
            with contextlib.suppress(Exception):
                await s.close()
        if l2 is not None:
            l2.close()
        if device is not None:
            device.close()
        else:
            tun.close()
        if helper is not None:  # root's part of the cleanup, by the helper kept for it
            helper.close()
        else:
            iface.teardown()
            if dns_set:
                unset_dns(name)
            with contextlib.suppress(DaemonError):
                run_hooks("PostDown", icfg.post_down, name)


def drop_root(user: str, name: str, netns: str | None, icfg: Any, iface: Interface, dns_set: bool) -> Any:
    """Drop privileges to ``user`` (:func:`vpn.privileges.drop_privileges`), first starting the root helper
    (:class:`vpn.cleanup.CleanupHelper`) that will run what the exit needs root for: PreDown/PostDown hooks,
    policy rules, nft tables, DNS, socket files.  Says in the log what it kept.

    :returns: the helper, or None when nothing at exit needs root or we are not root.
    :raises DaemonError: the drop failed (the caller's cleanup then runs as root, without a helper).
    """
    from .cleanup import CleanupHelper
    from .control import socket_path
    from .privileges import drop_privileges, lookup_user
    from .uapi_server import uapi_path

    helper = None
    acct = lookup_user(user)
    if os.geteuid() == 0 and acct.uid != 0:
        plan = {"iface": name, "netns": netns, "pre_down": list(icfg.pre_down), "post_down": list(icfg.post_down),
                "rules": [dataclasses.asdict(r) for r in iface.rules], "nft_tables": iface.nft_tables, "dns": dns_set,
                "sockets": [str(uapi_path(name)), str(socket_path(name))],
                "log_level": logging.getLogger("pyvpn").getEffectiveLevel()}
        try:
            helper = CleanupHelper.start(plan)
        except OSError as e:
            log.warning("%s: cannot start the cleanup helper (%s): after dropping privileges, PreDown/PostDown, "
                        "policy rules, nft tables and DNS will not be cleaned up at exit", name, e)
        else:
            what = [w for w, on in (("PreDown/PostDown hooks", icfg.pre_down or icfg.post_down),
                                    (f"{len(iface.rules)} policy rule(s)", iface.rules),
                                    ("nft tables " + ", ".join(iface.nft_tables), iface.nft_tables),
                                    ("DNS", dns_set)) if on]
            log.info("%s: a root helper process (pid %d) stays for the cleanup at exit: %s", name, helper.pid,
                     ", ".join([*what, "socket files"]))
    try:
        drop_privileges(user)
    except DaemonError:
        if helper is not None:
            helper.proc.kill()  # we are still root: the normal cleanup runs
            helper.proc.wait()
        raise
    return helper


def claim_sockets(name: str) -> None:
    """Refuse to start when a live process serves this interface's UAPI or control socket (the
    same name in another namespace: the socket paths are global); remove the socket files that
    nothing listens on any more (a run killed without cleanup), logging each."""
    from .control import socket_path
    from .util import socket_is_live
    from .uapi_server import uapi_path

    for path in (uapi_path(name), socket_path(name)):
        if not (path.exists() or path.is_symlink()):
            continue
        if socket_is_live(path):
            raise DaemonError(f"{path} is in use by a running process ({name} runs already, maybe in "
                              "another network namespace)")
        if stat.S_ISSOCK(path.lstat().st_mode):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            log.info("%s: removed the stale socket %s left by an earlier run", name, path)


async def start_servers(device: Device, *, role: str, metrics: str | None) -> list[Any]:
    """The UAPI socket, the control socket and optionally the metrics endpoint."""
    from .control import ControlServer
    from .uapi_server import UapiServer

    servers: list[Any] = []
    try:
        uapi = UapiServer(device)
        await uapi.start()
        servers.append(uapi)
        ctl = ControlServer(device, control_extra(device, role))
        await ctl.start()
        servers.append(ctl)
        if metrics:
            from .metrics import MetricsServer

            m = MetricsServer(device, metrics)
            await m.start()
            servers.append(m)
    except Exception as e:  # noqa: BLE001 - any start-up failure becomes one clear DaemonError
        for s in reversed(servers):
            with contextlib.suppress(Exception):
                await s.close()
        raise DaemonError(str(e)) from None
    return servers


def interface_alive(tun: object, name: str, netns: str | None = None) -> bool:
    """Whether our interface still exists, wherever it is now.

    The tun fd is asked (:meth:`tunnel.tun.PytunDevice.attached`, one ioctl): the interface may have been
    moved to another network namespace (WireGuard's namespace integration: ``ip link set IFACE netns NS``
    right after ``pyvpn-wg`` created it), where its name is invisible from here but it works on.  Looking
    the name up instead made ``pyvpn-wg`` take such a move for a deletion and exit within a second, and it
    blocked the event loop on a netlink round trip (2-20 ms, up to 170 ms measured) every second.  Only a
    device without that query (a fake) is looked up by name.
    """
    attached = getattr(tun, "attached", None)
    if callable(attached):
        try:
            return bool(attached())
        except OSError:
            return True  # an unexpected ioctl error is not a deletion: look again next second
    try:
        return netconf.link_exists(name, netns=netns)
    except (OSError, ValueError):  # a netlink hiccup: look again next second
        return True


def control_extra(device: Device, role: str) -> dict[str, Any]:
    """What the control socket's ``show`` adds to :meth:`Device.snapshot` (docs/show-json.md)."""
    return {"mode": "l3+l2" if device.l2 is not None else "l3", "role": role, "offloads": sorted(device.offloads())}


def watch_interface(device: Device, netns: str | None, stop: asyncio.Event) -> None:
    """Stop when the interface is deleted (``ip link del``, as ``wg-quick down`` does)."""
    name = device.name

    def check() -> None:
        if not interface_alive(device.tun, name, netns):
            log.info("%s: interface was deleted; exiting", name)
            stop.set()

    device.on_housekeeping.append(check)


def watch_udp_errors(device: Device, *, every: int = 30) -> None:
    """Log failing UDP sends and receives (underlay address gone, link down, firewall, full buffers).

    The socket counts such errors instead of raising (``tunnel/udp.py``), so without this the
    tunnel would just fall silent.  A warning at the first failure, a reminder every ``every``
    seconds while it lasts, and a line when it stops.
    """
    name = device.name
    state: dict[str, Any] = {"sock": device.udp, "seen": Counter(getattr(device.udp, "errors", None) or ()),
                             "failing": 0, "quiet": 0}

    def check() -> None:
        udp = device.udp
        errors = getattr(udp, "errors", None)
        if not isinstance(errors, Counter):
            return
        if udp is not state["sock"]:  # rebound to a new port (UAPI listen_port)
            state.update(sock=udp, seen=Counter(errors), failing=0, quiet=0)
            return
        new = errors - state["seen"]
        state["seen"] = Counter(errors)
        if new:
            if state["failing"] % every == 0:
                log.warning("%s: UDP socket errors (datagrams lost): %s", name,
                            ", ".join(f"{k} x{v}" for k, v in sorted(new.items())))
            state["failing"] += 1
            state["quiet"] = 0
        elif state["failing"]:
            state["quiet"] += 1
            if state["quiet"] >= 2:
                log.info("%s: no more UDP socket errors", name)
                state["failing"] = 0

    device.on_housekeeping.append(check)


def save_runtime_config(cfg: Any, device: Device) -> None:
    """``SaveConfig = true``: write back the running peers (endpoints, allowed IPs) like wg-quick."""
    import ipaddress
    from dataclasses import replace

    from .config import PeerConfig, format_config
    from .util import write_private

    peers = []
    by_key = {p.public_key: p for p in cfg.peers}
    for pub, peer in device.peers.items():
        old = by_key.get(pub)
        t = peer.tunnel
        ep = t.endpoint if isinstance(t.endpoint, tuple) else (old.endpoint if old else None)
        peers.append(PeerConfig(public_key=pub, preshared_key=t.preshared_key,
                                allowed_ips=tuple(ipaddress.ip_network(a) for a in peer.allowed_ips),
                                endpoint=(str(ep[0]), int(ep[1])) if ep else None,
                                persistent_keepalive=t.persistent_keepalive, name=peer.name,
                                vtep=old.vtep if old else None).with_policy(peer.policy))
    new = replace(cfg, peers=tuple(peers))
    write_private(cfg.path, format_config(new))


def save_config(cfg: Any, device: Device) -> None:
    try:
        save_runtime_config(cfg, device)
        log.info("%s: saved the running configuration (SaveConfig = true)", cfg.path)
    except (OSError, ValueError) as e:
        log.warning("%s: could not save the configuration: %s", cfg.path, e)
