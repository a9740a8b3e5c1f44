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
more (:meth:`vpn.interface.Interface.clean_stale`).  A live instance of the interface is refused first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import stat
from collections import Counter
from typing import Any

from crypto.constants import REKEY_AFTER_TIME
from tunnel import netconf
from tunnel.tun import TunError, open_tun, set_txqueuelen
from tunnel.udp import UdpSocket

from .device import Device
from .endpoints import EndpointResolver, ResolveError, resolve
from .interface import DaemonError, Interface, run_hooks, set_dns, unset_dns
from .reload import Reloader
from .systemd import notify

log = logging.getLogger("pyvpn")

DEFAULT_MTU = 1420


def rekey_after_time_from_env() -> float:
    """TEST ONLY: ``PYVPN_TEST_REKEY_AFTER_TIME`` (seconds, 1..REKEY_AFTER_TIME; anything else is ignored)
    shortens REKEY_AFTER_TIME so that tests/hostile can force rekeys of real daemons in seconds.
    Never set it outside tests.  Read here, at start-up, and passed on as ``Device(rekey_after_time=)``."""
    raw = os.environ.get("PYVPN_TEST_REKEY_AFTER_TIME", "")
    try:
        value = float(raw)
    except ValueError:
        return REKEY_AFTER_TIME
    return value if 1.0 <= value <= REKEY_AFTER_TIME else REKEY_AFTER_TIME  # NaN and out-of-range: ignored


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
                        udp_offload=offload != "off", rekey_after_time=rekey_after_time_from_env())
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
            from .l2.plan import L2ConfigError
            from .l2.start import open_segments

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
    from .uapi_server import uapi_path
    from .util import socket_is_live

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
    blocked the event loop on a netlink round trip every second (benchmarks/results-by-commit.md).  Only a
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
